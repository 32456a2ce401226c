"""`t2i-engine bench MODEL`: images/sec and model-FLOP utilisation of our backends, with the
baselines measured in the same process on the same device.

Paths timed (each from prompts to encoded images, paths.py):
- `engine:<backend>`: our engine, in the registry's dtype, at each `--batch`.
- `baseline:paper`: the paper's generation settings: the diffusers pipeline in fp16, batch 16,
  its default attention, one prompt list per call.
- `baseline:diffusers`: diffusers in bf16 with SDPA at its best batch of `--baseline-batch`.
On a CPU every path runs in float32 (half precision is slow or missing there); the JSON says so.

MFU = FLOPs per image (models/flops.py, counted under fake tensors) x images/sec / the dense
matmul rate measured on this device in this run (bf16 on a GPU). The FLOP-bound ceiling is
that rate / FLOPs per image. Without weights (none given, none in the hub cache) the model is its
real architecture with random weights (models/architectures.py): the same FLOPs and speed, not
the same images; every result says which.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from datetime import datetime, timezone

import torch

from ..devices import resolve_device
from ..engine.adapters import SUPPORTED_FAMILIES
from ..engine.plan import plan_units
from ..engine.recipe import build_recipe
from ..engine.runtime import ATTENTION, check_attention, check_runtime
from ..errors import InputError
from ..export.build import apply_backend, remove_backend
from ..export.specs import Profile
from ..kernels import install
from ..models.architectures import PIPELINE_FAMILIES, architecture, prompt_inputs
from ..models.flops import pipeline_flops
from ..models.pipelines import denoiser, hub_cache, obtain_pipeline, resolve_dtype
from ..models.registry import ModelSpec, get_model
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
    attention: str = "sdpa"  # the engine paths' attention (kernels.install); baselines keep diffusers' own
    norm: str | None = None  # the engine paths' GroupNorm (+ SiLU): "triton" or "torch"; None follows attention


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
    if opts.backends and spec.family in ("sd3", "flux") and not (spec.builder or opts.weights or hub_cache(spec)):
        # their random-weight architectures take prompt embeddings, with no text encoders (T5-XXL's
        # tokenizer cannot be built here), and the engine encodes its prompts itself
        raise InputError(
            "--backend",
            ",".join(opts.backends),
            f"the engine runs {spec.name} only with its weights (--weights or the hub "
            "cache); --backend none measures diffusers on its random-weight architecture",
        )
    if opts.attention not in ATTENTION:
        raise InputError("--attention", opts.attention, f"expected one of {', '.join(ATTENTION)}")
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
    return spec, build_recipe(raw)  # validates steps, guidance and resolution as generate does


def run_bench(opts: BenchOptions, log=print) -> dict:
    spec, recipe = check_options(opts)
    device = resolve_device(opts.device)
    check_attention(opts.attention, device)
    if opts.backends and kernel_norm(opts) == "triton":  # the same Triton requirement as the attention kernel's
        check_attention("triton", device, field_name="--norm")
    dtype = resolve_dtype(spec, device)
    kernels = "triton" if "triton" in (opts.attention, kernel_norm(opts)) else "sdpa"
    for backend in opts.backends:  # installed, runnable here in this dtype, compatible with the Triton kernels
        check_runtime(backend, kernels, device, dtype, spec.name)
    batches = opts.batches or (spec.batch_size,)
    n_samples = planned_images(opts, spec)
    recipe = dataclasses.replace(
        recipe, images_per_class=math.ceil(n_samples / len(recipe.classes)), images_per_shard=n_samples
    )
    samples = list(plan_units(recipe)[0].samples)
    height, width = recipe.resolution

    log(f"[bench] {spec.name}: building the pipeline on {device} ({str(dtype).removeprefix('torch.')})")
    pipe, weights = obtain_pipeline(spec, opts.weights, device, dtype)
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
    rate = measure.matmul_rate(device)
    result["matmul"] = rate
    log(
        f"[bench] {flops['denoiser_forward'] / 1e12:.4g} TFLOP per denoiser forward, "
        f"{flops['vae_decode'] / 1e12:.4g} per decode "
        f"(per image); dense {rate['dtype']} matmul {rate['flops_per_second'] / 1e12:.4g} TFLOP/s"
    )

    runs = []
    if opts.backends:
        mode = install(pipe, attention=opts.attention, norm=opts.norm)
        try:
            for backend in opts.backends:
                try:
                    artifacts = _use_backend(pipe, spec, backend, device, recipe, batches, log)
                    runs += [
                        {**r, "artifacts": artifacts} if artifacts else r
                        for r in _engine_runs(pipe, recipe, samples, backend, batches, opts, log, spec)
                    ]
                finally:
                    remove_backend(pipe)
        finally:
            install(pipe, attention="sdpa")
        if mode is not None:  # what really ran: a kernel that always fell back would otherwise go unseen
            result["kernels"] = {
                "attention_calls": mode.calls,
                "group_norm_calls": mode.norm_calls,
                "fused_group_norm_silu_calls": mode.fused_calls,
                "fallbacks": mode.fallbacks,
            }
    for name in opts.baselines:
        runs += _baseline_runs(pipe, spec, recipe, samples, name, opts, log, device)
    ok = [r for r in runs if "images_per_second" in r]
    for run in ok:  # each run's FLOPs from the forwards it really made
        run["flops_per_image"] = run["denoiser_forwards_per_image"] * flops["denoiser_forward"] + flops["vae_decode"]
        run["mfu"] = round(run["flops_per_image"] * run["images_per_second"] / rate["flops_per_second"], 4)
    if ok:
        flops["forwards_per_image"] = ok[0]["denoiser_forwards_per_image"]
        flops["per_image"] = ok[0]["flops_per_image"]
    result["flops"] = {
        **flops,
        "note": "1 multiply-add = 2 FLOPs; denoiser forwards per image (counted in the run; x2 with CFG) "
        "x FLOPs of one forward + one VAE decode; text encoding excluded (cached)",
    }
    result["ceiling_images_per_second"] = round(rate["flops_per_second"] / flops["per_image"], 4)
    result["runs"] = runs
    result["headline"] = headline(runs)
    return result


def uses_cfg(pipe, spec: ModelSpec, guidance: float) -> bool:
    """Whether the pipeline runs classifier-free guidance (two denoiser passes per step): for
    the nominal FLOPs counted before a run; runs count their real forwards."""
    if spec.family == "flux":
        return False  # distilled guidance (an embedding) or none; true CFG is not used here
    if spec.family in ("sd", "sdxl"):
        return guidance > 1.0 and pipe.unet.config.time_cond_proj_dim is None
    return guidance > 1.0


def model_flops(pipe, spec: ModelSpec, recipe) -> dict:
    text = None
    if spec.family in ("sd3", "flux"):
        text = architecture(spec.name)["text"]
    return pipeline_flops(
        pipe,
        spec.family,
        steps=recipe.steps,
        cfg=uses_cfg(pipe, spec, recipe.guidance),
        height=recipe.resolution[0],
        width=recipe.resolution[1],
        text=text,
    )


def _use_backend(pipe, spec, backend: str, device, recipe, batches, log) -> dict:
    if backend == "eager":
        return {}
    sizes = [b for b in batches if b != "auto"] or [spec.batch_size]
    profile = Profile((min(sizes), max(sizes), 2 * max(sizes)), *recipe.resolution)
    log(f"[bench] engine:{backend}: building or loading its artifacts")
    return apply_backend(pipe, spec.name, backend, device, profile, log_line=log)


def _engine_runs(pipe, recipe, samples, backend, batches, opts, log, spec) -> list[dict]:
    measured: dict[int, dict] = {}

    def measure(batch: int) -> dict:
        run = {
            "path": f"engine:{backend}",
            "dtype": str(pipe.dtype).removeprefix("torch."),
            "attention": attention_processors(pipe),
            "attention_kernel": opts.attention,
            "norm_kernel": kernel_norm(opts),
        }
        measured[batch] = _attempt(
            run,
            batch,
            log,
            lambda: engine_path(pipe, recipe, samples, batch=batch, warmup=opts.warmup, reps=opts.reps),
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
    processors = denoiser(pipe).attn_processors  # restored afterwards: no path leaks into the next
    if name == "diffusers" and spec.family in ("sd", "sdxl"):
        from diffusers.models.attention_processor import AttnProcessor2_0

        denoiser(pipe).set_attn_processor(AttnProcessor2_0())  # SDPA, named explicitly
    try:
        return _time_baseline(pipe, spec, recipe, samples, name, opts, log, device, dtype)
    finally:
        denoiser(pipe).set_attn_processor(processors)


def _time_baseline(pipe, spec, recipe, samples, name, opts, log, device, dtype) -> list[dict]:
    call_kwargs = None
    if spec.family in ("sd3", "flux"):
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
        log(f"[bench] {run['path']} batch {batch}: {run['images_per_second']:.4g} images/s")
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
    return out
