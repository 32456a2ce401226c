"""`t2i-engine bench MODEL`: images/sec and model-FLOP utilisation of our backends, with the
baselines measured in the same process on the same device.

Paths timed (each from prompts to encoded images, paths.py):
- `engine:<backend>`: our engine, in the registry's dtype, at each `--batch`.
- `baseline:paper`: the paper's generation settings: the diffusers pipeline in fp16, batch 16,
  its default attention, one prompt list per call.
- `baseline:diffusers`: diffusers in bf16 with SDPA at its best batch of `--baseline-batch`.
On a CPU every path runs in float32 (half precision is slow or missing there); the JSON says so.

MFU = FLOPs per image (models/flops.py, counted under fake tensors) x images/sec / the dense
matmul rate measured on this device in this run (bf16 on a GPU): `mfu`. Beside it,
`mfu_published_peak`: the same over the card's dense bf16 peak as NVIDIA publishes it
(measure.PUBLISHED_BF16_PEAKS; None for a card not listed, and on a CPU), the figure papers
quote; a card held at its power cap does not reach it. The FLOP-bound ceiling is the measured
rate / FLOPs per image. Without weights (none given, none in the hub cache) the model is its
real architecture with random weights (models/architectures.py): the same FLOPs and speed, not
the same images; every result says which.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import time
from dataclasses import dataclass
from datetime import datetime, timezone

import torch

from ..dataset.encode import encode_batch, resize_flops
from ..devices import resolve_device
from ..engine.adapters import SUPPORTED_FAMILIES
from ..engine.plan import plan_units
from ..engine.recipe import build_recipe
from ..engine.runtime import (
    ATTENTION,
    check_attention,
    check_cache_runtime,
    check_conv,
    check_runtime,
    flops_countable,
)
from ..errors import InputError
from ..export.build import apply_backend, remove_backend
from ..export.specs import Profile, denoiser_spec, vae_decoder_spec
from ..export.tuning import Tuning, apply_tuning, remove_tuning, uncompile
from ..kernels import auto, install, sdpa
from ..models.architectures import PIPELINE_FAMILIES, architecture, has_config, prompt_inputs, text_length
from ..models.decoders import decoder_label, install_decoder, random_tiny_decoder
from ..models.flops import count_flops, pipeline_flops, text_shapes, uses_cfg
from ..models.pipelines import denoiser, obtain_pipeline
from ..models.registry import ModelSpec, get_model, tiny_decoder
from . import measure
from .paths import attention_processors, diffusers_path, engine_path

BACKENDS = ("eager", "onnx", "tensorrt", "compile")  # export.build; built into the artifact cache on first use
BASELINES = ("paper", "diffusers")
PAPER_BATCH = 16
AUTO_BATCH_LIMIT = 512
MAX_SAMPLES = 100_000  # batch x (warmup + reps): a benchmark, not a dataset


@dataclass(frozen=True)
class BenchOptions:
    model: str
    backends: tuple[str, ...] = ("eager",)
    batches: tuple[int | str, ...] = ()  # () = the registry's batch size; "auto" doubles while it pays
    steps: int | None = None
    resolution: int | None = None
    guidance: float | None = None
    baselines: tuple[str, ...] = BASELINES
    baseline_batches: tuple[int, ...] = (16, 32)
    warmup: int = 1
    reps: int = 3
    device: str = "auto"
    weights: str | None = None
    attention: str = "sdpa"  # the engine paths' attention (engine.runtime.ATTENTION); baselines keep diffusers' own
    norm: str | None = None  # the engine paths' GroupNorm (+ SiLU): "triton" or "torch"; None follows attention
    precision: str = "auto"  # the engine's speed switches (export.tuning); the baselines run plain diffusers
    compile: str = "none"
    fuse_qkv: bool = False
    channels_last: bool = False
    regional_compile: bool = False
    conv: str = "torch"  # or "fp8": the UNet's convolutions through our FP8 kernel
    ladder: tuple[str, ...] = ()  # engine configurations, each the switches above plus LADDER tokens
    ab: int = 0  # interleaved rounds of the headline pair (the last configuration vs diffusers' best batch)
    ab_steps: int | None = None  # their steps (default: the model's)
    # the engine's sampling settings (recipe keys, engine.sampling); the baselines keep diffusers' defaults
    sampler: str | None = None
    guidance_interval: str | None = None
    cache: str | None = None
    preset: str | None = None
    # what decodes and what is stored (recipe keys): every path, baselines included, decodes with
    # the same decoder (diffusers' own way: pipe.vae = AutoencoderTiny), so the ratios stay like for like
    decoder: str | None = None
    output_size: str | None = None


# A ladder rung: "base" (the switches as given) or '+'-joined changes to them, each measured in
# one run on one pipeline. FP8 quantises that pipeline in place: at most one rung has it, the last.
ATTENTION_TOKENS = ("sdpa", "cudnn", "flash", "efficient", "triton", "auto")
LADDER_TOKENS = (
    "base",
    *ATTENTION_TOKENS,
    "channels_last",
    "fuse_qkv",
    "compile",
    "max-autotune",
    "regional",
    "fp8conv",
    "fp8",
)


@dataclass(frozen=True)
class EngineConfig:
    label: str
    attention: str
    tuning: Tuning
    conv: str = "torch"


def parse_ladder(text: str) -> tuple[str, ...]:
    rungs = tuple(x.strip() for x in text.split(",") if x.strip())
    for rung in rungs:
        for token in rung.split("+"):
            if token not in LADDER_TOKENS:
                raise InputError(
                    "--ladder",
                    rung,
                    f"expected comma-separated rungs, each '+'-joined from {', '.join(LADDER_TOKENS)}",
                )
    with_fp8 = [i for i, rung in enumerate(rungs) if "fp8" in rung.split("+")]
    if len(with_fp8) > 1 or (with_fp8 and with_fp8[0] != len(rungs) - 1):
        raise InputError("--ladder", text, "fp8 quantises the model in place: at most one rung may have it, the last")
    if not rungs:
        raise InputError("--ladder", text, "expected at least one rung (e.g. base,cudnn,compile)")
    return rungs


def engine_configs(opts: BenchOptions) -> list[EngineConfig]:
    base = EngineConfig(
        "base", opts.attention, Tuning(opts.precision, opts.compile, opts.fuse_qkv, opts.channels_last)
    )
    configs = []
    for rung in opts.ladder or ("base",):
        attention, tuning = base.attention, base.tuning
        for token in rung.split("+"):
            if token in ATTENTION_TOKENS:
                attention = token
            elif token in ("channels_last", "fuse_qkv"):
                tuning = dataclasses.replace(tuning, **{token: True})
            elif token == "regional":
                tuning = dataclasses.replace(tuning, regional_compile=True)
            elif token in ("compile", "max-autotune"):
                tuning = dataclasses.replace(tuning, compile="default" if token == "compile" else token)
            elif token == "fp8":
                tuning = dataclasses.replace(tuning, precision="fp8")
        conv = "fp8" if "fp8conv" in rung.split("+") else opts.conv
        configs.append(EngineConfig(rung, attention, tuning, conv))
    return configs


def parse_list(text: str, field_name: str, allowed: tuple[str, ...]) -> tuple[str, ...]:
    items = tuple(x.strip() for x in text.split(",") if x.strip())
    if items == ("none",):
        return ()
    for x in items:
        if x not in allowed:
            raise InputError(field_name, x, f"expected a comma-separated list of {', '.join(allowed)} (or none)")
    return items


def parse_batches(text: str, field_name: str = "--batch", allow_auto: bool = True) -> tuple[int | str, ...]:
    out: list[int | str] = []
    for x in (x.strip() for x in text.split(",")):
        if allow_auto and x == "auto":
            out.append(x)
        elif x.isascii() and x.isdigit() and 1 <= int(x) <= 4096:
            out.append(int(x))
        else:
            raise InputError(
                field_name,
                x,
                "expected comma-separated batch sizes from 1 to 4096" + (" or auto" if allow_auto else ""),
            )
    return tuple(out)


NORM = ("triton", "torch")


def kernel_norm(opts: BenchOptions) -> str:
    """The GroupNorm the engine paths run: --norm, or what --attention implies (kernels.install)."""
    return opts.norm or ("triton" if opts.attention == "triton" else "torch")


def check_options(opts: BenchOptions) -> tuple[ModelSpec, object]:
    """Everything that can refuse the input, before a model is built."""
    spec = get_model(opts.model)
    if opts.backends and spec.family not in SUPPORTED_FAMILIES:
        raise InputError(
            "--backend",
            ",".join(opts.backends),
            f"the engine does not run the {spec.family} family yet "
            f"(families: {', '.join(SUPPORTED_FAMILIES)}); --backend none measures the diffusers baselines alone",
        )
    if spec.family not in PIPELINE_FAMILIES and not (spec.builder or spec.bundled or opts.weights):
        raise InputError(
            "model", spec.name, f"no random-weight pipeline for the {spec.family} family yet; pass --weights"
        )
    if opts.attention not in ATTENTION:
        raise InputError("--attention", opts.attention, f"expected one of {', '.join(ATTENTION)}")
    if opts.ladder and opts.backends != ("eager",):
        raise InputError(
            "--ladder", ",".join(opts.ladder), "a ladder tunes PyTorch's own modules: use it with --backend eager"
        )
    if opts.ab and not (opts.backends and "diffusers" in opts.baselines):
        raise InputError("--ab", opts.ab, "the A/B rounds pair the engine with the diffusers baseline: give both")
    if opts.norm not in (None, *NORM):
        raise InputError("--norm", opts.norm, f"expected one of {', '.join(NORM)}")
    if not opts.backends and not opts.baselines:
        raise InputError("--backend", "none", "nothing to measure: give a backend or a baseline")
    for name, value in (("--warmup", opts.warmup), ("--reps", opts.reps)):
        if not isinstance(value, int) or not (0 if name == "--warmup" else 1) <= value <= 1000:
            raise InputError(name, value, "expected an integer from 1 to 1000 (--warmup may be 0)")
    if planned_images(opts, spec) > MAX_SAMPLES:
        raise InputError(
            "--batch",
            ",".join(map(str, opts.batches)) or spec.batch_size,
            f"with --warmup {opts.warmup} and --reps {opts.reps} that plans {planned_images(opts, spec):,} images; "
            f"keep batch x (warmup + reps) within {MAX_SAMPLES:,}",
        )
    raw = {"model": spec.name, "steps": opts.steps, "guidance": opts.guidance, "images_per_class": 1}
    if opts.resolution is not None:
        raw["resolution"] = opts.resolution
    for key in ("sampler", "guidance_interval", "cache", "preset", "decoder", "output_size"):
        if getattr(opts, key) is not None:
            raw[key] = getattr(opts, key)
    recipe = build_recipe(raw)  # validates steps, guidance, resolution and sampling settings as generate does
    for backend in opts.backends:
        check_cache_runtime(recipe.cache, backend, Tuning(compile=opts.compile))
    if recipe.cache is not None and any(t in opts.ladder for t in ("compile", "max-autotune", "regional")):
        raise InputError(
            "--ladder",
            ",".join(opts.ladder),
            "a feature cache runs with --compile none: drop the compiled rungs or the cache",
        )
    return spec, recipe


def run_bench(opts: BenchOptions, log=print, checkpoint=None) -> dict:
    """`checkpoint(result)`, if given, receives the result so far after each baseline, engine
    configuration and A/B (a time limit then still leaves what ended)."""
    spec, recipe = check_options(opts)
    device = resolve_device(opts.device)
    configs = engine_configs(opts)
    for config in configs:
        check_attention(config.attention, device, "--attention" if config.label == "base" else "--ladder")
        if opts.backends:
            check_conv(config.conv, spec, device)
    if opts.backends and kernel_norm(opts) == "triton":  # the same Triton requirement as the attention kernel's
        check_attention("triton", device, field_name="--norm")
        if any(config.attention == "auto" for config in configs):
            raise InputError("--norm", "triton", "--attention auto routes attention alone; use --norm torch with it")
    dtype = configs[0].tuning.dtype(device)  # fp8 rungs are bf16 pipelines too
    for backend in opts.backends:  # installed, runnable here in this dtype, with these kernels and switches
        for config in configs if backend == "eager" else configs[:1]:
            kernels = config.attention if kernel_norm(opts) != "triton" else "triton"
            check_runtime(backend, kernels, device, dtype, spec.name, config.tuning)
            if config.tuning.dtype(device) != dtype:
                raise InputError("--ladder", config.label, f"every rung runs in the base precision ({dtype})")
    batches = opts.batches or (spec.batch_size,)
    n_samples = planned_images(opts, spec)
    recipe = dataclasses.replace(
        recipe, images_per_class=math.ceil(n_samples / len(recipe.classes)), images_per_shard=n_samples
    )
    samples = list(plan_units(recipe)[0].samples)
    height, width = recipe.resolution

    log(f"[bench] {spec.name}: building the pipeline on {device} ({str(dtype).removeprefix('torch.')})")
    pipe, weights = obtain_pipeline(spec, opts.weights, device, dtype)
    decoder = _install_decoder(pipe, spec, recipe, weights)
    result = {
        "model": spec.name,
        "family": spec.family,
        "weights": weights,
        "settings": {
            "steps": recipe.steps,
            "guidance": recipe.guidance,
            "height": height,
            "width": width,
            "negative_prompt": recipe.negative_prompt,
            "format": recipe.format,
            "decoder": decoder,
            "stored_size": list(recipe.stored_size),
            "warmup": opts.warmup,
            "reps": opts.reps,
        },
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "device": {
            "type": device.type,
            "name": measure.device_name(device),
            "cpu": measure.cpu_model(),
            "torch_threads": torch.get_num_threads(),
        },
        "versions": measure.versions(),
    }
    sampler = measure.NvmlSampler(device)
    result["device"]["nvml"] = sampler.static()

    log("[bench] counting FLOPs under fake tensors")
    flops = model_flops(pipe, spec, recipe)
    flops["decoder"] = decoder
    flops["resize"] = resize_flops(recipe.resolution, recipe.stored_size)
    rate = measure.matmul_rate(device)
    result["matmul"] = rate
    result["published_peak"] = measure.published_peak(result["device"]["name"]) if device.type == "cuda" else None
    log(
        f"[bench] {flops['denoiser_forward'] / 1e12:.4g} TFLOP per denoiser forward, "
        f"{flops['vae_decode'] / 1e12:.4g} per decode "
        f"(per image); dense {rate['dtype']} matmul {rate['flops_per_second'] / 1e12:.4g} TFLOP/s"
    )

    runs = []

    # The baselines first: they cast the pipeline to their dtypes (cast back below), and an FP8
    # rung of the engine's quantises it for good.
    def save() -> None:
        if checkpoint is not None:
            checkpoint(finish(result, runs, flops, rate))

    for name in opts.baselines:
        runs += _baseline_runs(pipe, spec, recipe, samples, name, opts, log, device)
        save()
    if pipe.dtype != dtype:
        pipe.to(dtype=dtype)
    for backend in opts.backends:
        if backend == "eager":
            references: dict[int, object] = {}  # the first configuration's images per batch: the pixel reference
            for i, config in enumerate(configs):
                last = i == len(configs) - 1
                try:
                    runs += _config_runs(
                        pipe, spec, recipe, samples, config, batches, opts, log, device, references, result
                    )
                    if last and opts.ab:
                        result["ab"] = _ab_rounds(pipe, spec, config, runs, opts, log, device, dtype)
                except Exception as e:  # noqa: BLE001 - a rung that fails (a compile error) is reported, the rest run
                    if isinstance(e, InputError):
                        raise
                    runs.append(
                        {
                            "path": "engine:eager",
                            "config": config.label,
                            "dtype": str(dtype).removeprefix("torch."),
                            "batch": ",".join(map(str, batches)),
                            "error": f"{type(e).__name__}: {e}"[:2000],
                        }
                    )
                    log(f"[bench] engine config {config.label} failed: {type(e).__name__}: {str(e)[:300]}")
                finally:
                    _release(pipe, config)
                save()
            continue
        mode = install(pipe, attention=opts.attention, norm=opts.norm)
        try:
            artifacts = _use_backend(pipe, spec, backend, device, recipe, batches, log)
            runs += [
                {**r, "artifacts": artifacts} if artifacts else r
                for r in _engine_runs(pipe, recipe, samples, backend, batches, opts, log, spec)
            ]
        finally:
            remove_backend(pipe)
            install(pipe, attention="sdpa")
        _kernel_counts(mode, result)
    return finish(result, runs, flops, rate)


def _bytes_per_image(images, recipe) -> dict:
    """A batch of the engine's images encoded as generate stores them (format, quality,
    output_size): mean bytes per image. Of the images this model made here: random weights make
    noise, which compresses far worse than pictures."""
    encoded = encode_batch(images, recipe.format, recipe.quality, recipe.output_size)
    return {
        "images": len(encoded),
        "mean": round(sum(len(data) for data, _ in encoded) / len(encoded), 1),
        "format": recipe.format,
        "quality": recipe.quality,
        "stored_size": list(recipe.stored_size),
    }


def _install_decoder(pipe, spec, recipe, weights: str) -> str:
    """The recipe's decoder in the VAE's place: its weights where they are here, else (a model on
    random weights) the tiny decoder's published architecture with random weights."""
    if recipe.decoder is None:
        return "vae"
    if weights.startswith("random: ") and "name" in recipe.decoder and tiny_decoder(spec).hub_id:
        pipe.vae = random_tiny_decoder(recipe.decoder["name"], pipe.dtype).to(pipe.device)
        return f"{recipe.decoder['name']} (random weights: its architecture, from assets/decoder-configs)"
    install_decoder(pipe, spec, recipe.decoder)
    return decoder_label(recipe.decoder)


def finish(result: dict, runs: list[dict], flops: dict, rate: dict) -> dict:
    """The result with its runs' FLOPs, MFU and the headline (also for a partial result)."""
    result, flops = dict(result), dict(flops)
    ok = [r for r in runs if "images_per_second" in r]
    for run in ok:  # each run's FLOPs as counted while it ran (eager engine runs), else from its forwards
        counted = run.get("denoiser_flops_per_image")
        denoising = run["denoiser_forwards_per_image"] * flops["denoiser_forward"] if counted is None else counted
        run["flops_per_image"] = denoising + flops["vae_decode"] + flops.get("resize", 0)
        run["mfu"] = round(run["flops_per_image"] * run["images_per_second"] / rate["flops_per_second"], 4)
        peak = result.get("published_peak")
        run["mfu_published_peak"] = (
            None
            if peak is None
            else round(run["flops_per_image"] * run["images_per_second"] / peak["flops_per_second"], 4)
        )
    if ok:
        flops["forwards_per_image"] = ok[0]["denoiser_forwards_per_image"]
        flops["per_image"] = ok[0]["flops_per_image"]
    result["flops"] = {
        **flops,
        "note": "1 multiply-add = 2 FLOPs; per run: the denoiser's FLOPs per image as counted op by op on a "
        "warm-up batch (eager engine runs: a guidance interval's or a cache's savings included; its "
        "denoiser_flops_per_image), else denoiser forwards per image (counted in the run; x2 with CFG) x FLOPs of "
        "one forward; + one decode (vae_decode: the decoder that ran, VAE or tiny) + the resize to output_size; text "
        "encoding excluded (cached)",
    }
    result["ceiling_images_per_second"] = round(rate["flops_per_second"] / flops["per_image"], 4)
    result["runs"] = list(runs)
    result["headline"] = headline(runs)
    return result


def _kernel_counts(mode, result: dict) -> None:
    if mode is not None:  # what really ran: a kernel that always fell back would otherwise go unseen
        result["kernels"] = {
            "attention_calls": mode.calls,
            "group_norm_calls": mode.norm_calls,
            "fused_group_norm_silu_calls": mode.fused_calls,
            "fallbacks": mode.fallbacks,
        }


def _config_runs(pipe, spec, recipe, samples, config, batches, opts, log, device, references, result) -> list[dict]:
    """One engine configuration at each batch: attention routed or pinned, switches applied,
    timed, and its images compared with the first configuration's at the same batch. Left
    applied: the caller releases it (the A/B rounds may still need it)."""
    mode = install(pipe, attention="triton" if config.attention == "triton" else "sdpa", norm=opts.norm)
    if config.attention in sdpa.BACKENDS:
        sdpa.pin(pipe, config.attention)
    auto_mode = auto.install(pipe, device) if config.attention == "auto" else None
    log(f"[bench] engine config {config.label}: attention {config.attention}, {config.tuning.record(device)}")
    t0 = time.perf_counter()
    done = {}
    if config.conv == "fp8":
        from ..kernels.conv import install_fp8_conv  # heavy: triton

        done["fp8_convs"] = install_fp8_conv(denoiser(pipe), device)
    done.update(apply_tuning(pipe, config.tuning, device))
    fields = {"config": config.label, "tuning": config.tuning.record(device), "conv": config.conv, **done}
    countable = flops_countable("eager", config.tuning, config.attention, config.conv, device)
    runs = _engine_runs(
        pipe, recipe, samples, "eager", batches, opts, log, spec, config.attention, fields, count_flops=countable
    )
    for run in runs:
        images = run.pop("_images", None)
        if images is None:
            continue
        if run["batch"] in references:
            run["vs_first_config"] = measure.pixel_difference(references[run["batch"]], images)
        else:
            references[run["batch"]] = images
            if "bytes_per_image" not in result:  # the first batch of images: what the stored bytes are measured on
                result["bytes_per_image"] = _bytes_per_image(images, recipe)
    if runs:
        runs[0]["config_seconds_with_first_batch"] = round(time.perf_counter() - t0, 1)  # compiles show here
    if auto_mode is not None:  # the backends auto chose, per shape, and its calls on each (all batches so far)
        for run in runs:
            run["auto_attention"] = auto_mode.record()
    _kernel_counts(mode, result)
    return runs


def _release(pipe, config: EngineConfig) -> None:
    if config.tuning.precision == "fp8":
        uncompile(pipe)  # the quantised weights stay: the ladder's last rung
    else:
        remove_tuning(pipe)
    sdpa.unpin(pipe)
    install(pipe, attention="sdpa")
    if config.conv == "fp8":
        from ..kernels.conv import remove_fp8_conv  # heavy: triton

        remove_fp8_conv(denoiser(pipe))


def _ab_rounds(pipe, spec, config: EngineConfig, runs: list[dict], opts, log, device, dtype) -> dict:
    """The headline pair, interleaved: the last configuration at its fastest batch and plain
    diffusers bf16 (a pipeline of its own with the same weights) at its best, one timed batch
    each per round, so drift in clocks and temperature falls on both."""
    ours = [r for r in runs if r.get("config") == config.label and "images_per_second" in r]
    theirs = [r for r in runs if r.get("best_batch") and r["path"] == "baseline:diffusers"]
    if not ours or not theirs:
        return {"error": "no successful run of the pair"}
    e_batch = max(ours, key=lambda r: r["images_per_second"])["batch"]
    d_batch = theirs[0]["batch"]
    raw = {"model": spec.name, "steps": opts.ab_steps, "guidance": opts.guidance, "images_per_class": 1}
    if opts.resolution is not None:
        raw["resolution"] = opts.resolution
    recipe = build_recipe(raw)
    n = max(e_batch, d_batch) * 2
    recipe = dataclasses.replace(recipe, images_per_class=math.ceil(n / len(recipe.classes)), images_per_shard=n)
    samples = list(plan_units(recipe)[0].samples)
    log(f"[bench] A/B: {config.label} batch {e_batch} vs diffusers bf16 batch {d_batch}, {recipe.steps} steps")
    plain, _ = obtain_pipeline(spec, opts.weights, device, torch.bfloat16 if device.type == "cuda" else dtype)
    if spec.family in ("sd", "sdxl"):
        from diffusers.models.attention_processor import AttnProcessor2_0

        denoiser(plain).set_attn_processor(AttnProcessor2_0())
    call_kwargs = None
    if getattr(plain, "text_encoder", None) is None:  # as the baseline runs took them (_time_baseline)
        cfg, plain_dtype = uses_cfg(plain, spec, recipe.guidance), plain.dtype
        call_kwargs = lambda k: prompt_inputs(spec, k, device, plain_dtype, cfg)  # noqa: E731
    # The plain pipeline's first batch (allocations, cuDNN's algorithm search) at 2 steps: the
    # same shapes as the timed calls at a fraction of the cost; the engine's are warm from above.
    diffusers_path(
        plain, dataclasses.replace(recipe, steps=2), samples, batch=d_batch, warmup=0, reps=1, call_kwargs=call_kwargs
    )
    rounds = []
    for i in range(opts.ab):
        e = engine_path(pipe, recipe, samples, batch=e_batch, warmup=0, reps=1)
        d = diffusers_path(plain, recipe, samples, batch=d_batch, warmup=0, reps=1, call_kwargs=call_kwargs)
        rounds.append({"engine": e["images_per_second"], "diffusers": d["images_per_second"]})
        log(
            f"[bench] A/B round {i + 1}: engine {e['images_per_second']:.4g}, "
            f"diffusers {d['images_per_second']:.4g} images/s"
        )
    del plain
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return {
        "config": config.label,
        "steps": recipe.steps,
        "engine_batch": e_batch,
        "diffusers_batch": d_batch,
        "rounds": rounds,
        **ratio_spread(rounds),
    }


def ratio_spread(rounds: list[dict]) -> dict:
    """Median, least and greatest of the engine/diffusers images/sec ratio over A/B rounds."""
    ratios = [r["engine"] / r["diffusers"] for r in rounds]
    return {
        "ratio_median": round(statistics.median(ratios), 3),
        "ratio_min": round(min(ratios), 3),
        "ratio_max": round(max(ratios), 3),
    }


def model_flops(pipe, spec: ModelSpec, recipe) -> dict:
    if spec.family not in ("sd", "sdxl", "sd3", "flux"):
        return _flops_through_specs(pipe, spec, recipe)
    text = None
    if spec.family in ("sd3", "flux"):
        text = architecture(spec.name)["text"] if has_config(spec.name) else text_shapes(pipe)
    return pipeline_flops(
        pipe,
        spec.family,
        steps=recipe.steps,
        cfg=uses_cfg(pipe, spec, recipe.guidance),
        height=recipe.resolution[0],
        width=recipe.resolution[1],
        text=text,
    )


def _flops_through_specs(pipe, spec: ModelSpec, recipe) -> dict:
    """PixArt, Sana, Lumina-2, Qwen-Image: counted through the export specs' wrappers, which
    take the inputs as tensors (Lumina-2's own forward reads its mask as Python numbers, which
    fake tensors cannot give). Nominal: the caption at its full padded length (Qwen-Image 512
    tokens; Lumina-2 its 256), an upper bound for prompts that use fewer."""
    profile = Profile((1, 1, 1), recipe.resolution[0], recipe.resolution[1])
    den = denoiser_spec(pipe, profile, text_length(spec.name))
    vae = vae_decoder_spec(pipe, profile)

    def count(s):
        return count_flops(lambda: s.module, lambda: (s.sample_inputs(1, pipe.dtype, pipe.device), {}))

    forward, decode = count(den), count(vae)
    forwards = recipe.steps * (2 if uses_cfg(pipe, spec, recipe.guidance) else 1)
    return {
        "denoiser_forward": forward,
        "forwards_per_image": forwards,
        "vae_decode": decode,
        "per_image": forwards * forward + decode,
    }


def _use_backend(pipe, spec, backend: str, device, recipe, batches, log) -> dict:
    if backend == "eager":
        return {}
    sizes = [b for b in batches if b != "auto"] or [spec.batch_size]
    profile = Profile((min(sizes), max(sizes), 2 * max(sizes)), *recipe.resolution)
    log(f"[bench] engine:{backend}: building or loading its artifacts")
    return apply_backend(pipe, spec.name, backend, device, profile, log_line=log)


def _engine_runs(
    pipe,
    recipe,
    samples,
    backend,
    batches,
    opts,
    log,
    spec,
    attention: str | None = None,
    fields: dict | None = None,
    count_flops: bool = False,
) -> list[dict]:
    measured: dict[int, dict] = {}

    def measure(batch: int) -> dict:
        run = {
            "path": f"engine:{backend}",
            **(fields or {}),
            "dtype": str(pipe.dtype).removeprefix("torch."),
            "attention": attention_processors(pipe),
            "attention_kernel": attention or opts.attention,
            "norm_kernel": kernel_norm(opts),
            # the recipe's sampling settings where they are not the model's own (the baselines keep those)
            **{
                k: v
                for k, v in (
                    ("sampler", recipe.sampler if recipe.sampler != "default" else None),
                    ("guidance_interval", recipe.guidance_interval),
                    ("cache", recipe.cache),
                )
                if v is not None
            },
        }
        measured[batch] = _attempt(
            run,
            batch,
            log,
            lambda: engine_path(
                pipe,
                recipe,
                samples,
                batch=batch,
                warmup=opts.warmup,
                reps=opts.reps,
                keep_images=fields is not None,
                count_flops=count_flops,
            ),
        )
        return run

    for batch in batches:
        if batch != "auto" and batch not in measured:
            measure(batch)
    if "auto" in batches:  # double from the registry's batch while it pays (> 5% more images/sec)
        batch, best = spec.batch_size, None
        while batch <= AUTO_BATCH_LIMIT:
            run = measured.get(batch) or measure(batch)
            if "images_per_second" not in run or (
                best and run["images_per_second"] <= 1.05 * best["images_per_second"]
            ):
                break
            best, batch = run, batch * 2
        if best is not None:
            best["auto_batch"] = True
    return list(measured.values())


def _baseline_runs(pipe, spec, recipe, samples, name, opts, log, device) -> list[dict]:
    on_gpu = device.type == "cuda"
    dtype = (torch.float16 if name == "paper" else torch.bfloat16) if on_gpu else torch.float32
    if pipe.dtype != dtype:
        pipe.to(dtype=dtype)
    # restored afterwards, module by module (Lumina-2's transformer has no attn_processors): no
    # path leaks into the next
    processors = {m: m.processor for m in denoiser(pipe).modules() if hasattr(m, "set_processor")}
    if name == "diffusers" and spec.family in ("sd", "sdxl"):
        from diffusers.models.attention_processor import AttnProcessor2_0

        denoiser(pipe).set_attn_processor(AttnProcessor2_0())  # SDPA, named explicitly
    try:
        return _time_baseline(pipe, spec, recipe, samples, name, opts, log, device, dtype)
    finally:
        for module, processor in processors.items():
            module.set_processor(processor)


def _time_baseline(pipe, spec, recipe, samples, name, opts, log, device, dtype) -> list[dict]:
    call_kwargs = None
    if getattr(pipe, "text_encoder", None) is None:  # built without text encoders: embeddings of the real shapes
        cfg = uses_cfg(pipe, spec, recipe.guidance)
        call_kwargs = lambda n: prompt_inputs(spec, n, device, dtype, cfg)  # noqa: E731
    batches = (PAPER_BATCH,) if name == "paper" else opts.baseline_batches
    runs = []
    for batch in batches:
        run = {
            "path": f"baseline:{name}",
            "dtype": str(dtype).removeprefix("torch."),
            "attention": attention_processors(pipe),
        }
        runs.append(
            _attempt(
                run,
                batch,
                log,
                lambda batch=batch: diffusers_path(
                    pipe, recipe, samples, batch=batch, warmup=opts.warmup, reps=opts.reps, call_kwargs=call_kwargs
                ),
            )
        )
    if name == "diffusers":
        ok = [r for r in runs if "images_per_second" in r]
        if ok:
            max(ok, key=lambda r: r["images_per_second"])["best_batch"] = True
    return runs


def _attempt(run: dict, batch: int, log, timed) -> dict:
    """Fill `run` with `timed()`'s figures, or with the out-of-memory it ran into."""
    try:
        run.update(timed())
        label = f" {run['config']}" if "config" in run else ""
        log(f"[bench] {run['path']}{label} batch {batch}: {run['images_per_second']:.4g} images/s")
    except torch.cuda.OutOfMemoryError:
        run.update(batch=batch, error="out of memory")
        log(f"[bench] {run['path']} batch {batch}: out of memory")
    if "error" in run:
        torch.cuda.empty_cache()  # here, not in the except block, whose traceback still holds the tensors
    return run


def planned_images(opts: BenchOptions, spec: ModelSpec) -> int:
    """Samples the runs can use: the largest batch any of them may take x (warmup + reps)."""
    batches = opts.batches or (spec.batch_size,)
    largest = max(
        [b for b in batches if b != "auto"]
        + list(opts.baseline_batches if "diffusers" in opts.baselines else ())
        + [PAPER_BATCH, AUTO_BATCH_LIMIT if "auto" in batches else spec.batch_size]
    )
    return largest * (opts.warmup + opts.reps)


def headline(runs: list[dict]) -> dict:
    """Our best run against each baseline's (the paper's one batch; diffusers' best batch)."""
    ok = [r for r in runs if "images_per_second" in r]

    def best(prefix: str) -> dict | None:
        return max((r for r in ok if r["path"].startswith(prefix)), key=lambda r: r["images_per_second"], default=None)

    ours, paper, diffusers = best("engine:"), best("baseline:paper"), best("baseline:diffusers")
    out = {
        "best_engine": None if ours is None else {k: ours[k] for k in ("path", "batch", "images_per_second", "mfu")}
    }
    for key, base in (("vs_paper_baseline", paper), ("vs_diffusers_bf16_best_batch", diffusers)):
        out[key] = round(ours["images_per_second"] / base["images_per_second"], 3) if ours and base else None
    out["best_mfu"] = max((r["mfu"] for r in ok), default=None)
    published = [r["mfu_published_peak"] for r in ok if r.get("mfu_published_peak") is not None]
    out["best_mfu_published_peak"] = max(published, default=None)
    return out
