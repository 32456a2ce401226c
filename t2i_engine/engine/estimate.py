"""`t2i-engine plan RECIPE`: what a run would make and cost, before any model is loaded.

- Counts from the plan (arithmetic: no sample is made but the first K shown).
- Bytes per image: the recipe's format, quality and stored size, calibrated by encoding a few
  images of natural-image statistics (1/f noise) and adding the tar's own bytes per sample
  (three 512-byte headers, padding, the label and the JSON record). An estimate: a model's
  images compress differently (flat digits far better); a run's summary says what it wrote.
- FLOPs per image: the denoiser and decoder counted under fake tensors on the architecture
  (weights on the meta device where the package has the model's configs; the shipped and test
  models, which are small, as they load), times the denoiser calls the recipe's sampler makes at
  its steps (FLUX's shifted by resolution, as its pipeline does), CFG's doubling only inside its
  guidance interval, DeepCache's whole and shallow calls, pyramid attention broadcast's skips;
  the tiny decoder's or the VAE's decode; the resize to the stored size. The first-block cache's
  skips (they depend on the images) and a refiner or first-steps base are not counted here (said
  in `not_counted`); the run summary counts what ran.
- GPU-hours and cost on a named card: FLOPs / (its measured matmul rate x MFU), the MFU of the
  committed bench record of this model on that card (assets/bench-records.json, made by
  bench/mfu_table.py; named in the output) or `mfu`; `price` per GPU-hour.
"""

from __future__ import annotations

import json
import math
from importlib import resources

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from ..dataset.encode import encode_image, resize_flops
from ..errors import InputError
from ..models.architectures import PIPELINE_FAMILIES, architecture, build_random_pipeline, has_config
from ..models.decoders import install_decoder, random_tiny_decoder
from ..models.flops import CUSTOM, count_flops, decode_flops, denoiser_inputs, pipeline_flops, uses_cfg
from ..models.pipelines import apply_registry_settings, denoiser
from ..models.registry import get_model, tiny_decoder
from .feature_cache import DeepCache, diffusers_cache
from .guidance import _sigma, set_sampler
from .plan import plan_samples, plan_units
from .recipe import Recipe, mixture_counts
from .runtime import ModelOptions, load_generator
from .units import sample_json

TAR_BLOCK = 512


def bench_records() -> dict:
    return json.loads(resources.files("t2i_engine").joinpath("assets/bench-records.json").read_text())


def plan_report(
    recipe: Recipe, *, first: int = 10, gpu: str | None = None, mfu: float | None = None, price: float | None = None
) -> dict:
    cards = bench_records()
    if gpu is not None and gpu not in cards:
        raise InputError("--gpu", gpu, f"expected a card with a measured matmul rate: {', '.join(sorted(cards))}")
    if gpu is not None and mfu is None:
        _recorded_mfu(recipe, cards[gpu], gpu)  # refused now, before anything is counted
    units = plan_units(recipe)
    samples = plan_samples(recipe)
    per_image = bytes_per_image(recipe)
    flops = flops_per_image(recipe)
    report = {
        "model": recipe.model if not recipe.mixture else [e.model for e in recipe.mixture],
        "samples": len(samples),
        "classes": len(recipe.classes),
        "unique_prompts": unique_prompts(recipe),
        "shards": len(units),
        "images_per_shard": recipe.images_per_shard,
        "first_samples": [
            {"key": s.key, "class_id": s.class_id, "prompt": s.prompt, "seed": s.seed}
            for s in samples[: min(first, len(samples))]
        ],
        "bytes": {
            **per_image,
            "dataset": per_image["per_sample_in_shards"] * len(samples) + len(units) * 20 * TAR_BLOCK,
        },
        "flops": flops,
    }
    if gpu is not None:
        report["cost"] = gpu_cost(recipe, flops["per_image"], len(samples), cards[gpu], gpu, mfu, price)
    return report


def unique_prompts(recipe: Recipe) -> int:
    """How many distinct prompts the plan holds: from the regime's period where the prompt does not
    depend on the seed, else by making each one (the template "sample" mode)."""
    spec, classes, n = recipe.prompt, recipe.classes, recipe.images_per_class
    if spec.regime == "template" and spec.template_mode != "cycle":
        return len({s.prompt for s in plan_samples(recipe)})
    seen = set()
    for c, cls in enumerate(classes):
        period = {"class-name": 1, "template": len(spec.templates)}.get(spec.regime)
        period = period or len(spec.captions[c])
        seen.update(spec.prompt(cls, c, j, 0) for j in range(min(n, period)))
    return len(seen)


def bytes_per_image(recipe: Recipe, count: int = 4) -> dict:
    """Encoded bytes of `count` 1/f-noise images at the generated size (stored at the recipe's
    output size), and those plus the tar's own bytes per sample."""
    h, w = recipe.resolution
    rng = np.random.default_rng(0)
    sizes = []
    for _ in range(count):
        sizes.append(len(encode_image(_pink_noise(rng, h, w), recipe.format, recipe.quality, recipe.output_size)))
    image = float(np.mean(sizes))
    meta = len(json.dumps(sample_json(recipe)(plan_samples(recipe)[0]), sort_keys=True, ensure_ascii=False))
    label = len(str(len(recipe.classes) - 1))

    def member(n: float) -> float:  # a header, the data padded to a whole block (half a block on average)
        return TAR_BLOCK + n + TAR_BLOCK / 2

    return {
        "image": round(image),
        "per_sample_in_shards": round(member(image) + member(meta) + member(label)),
        "calibration": f"{count} 1/f-noise images at {h}x{w} as {recipe.format} (an estimate: a model's differ)",
    }


def _pink_noise(rng, h: int, w: int) -> np.ndarray:
    """An RGB image with the 1/f amplitude spectrum of natural images, as uint8 HxWx3."""
    fy, fx = np.fft.fftfreq(h)[:, None], np.fft.rfftfreq(w)[None, :]
    amplitude = 1.0 / np.maximum(np.hypot(fy, fx), 1.0 / max(h, w))
    channels = []
    for _ in range(3):
        phase = np.exp(2j * np.pi * rng.random((h, w // 2 + 1)))
        x = np.fft.irfft2(amplitude * phase, s=(h, w))
        channels.append((x - x.mean()) / (x.std() + 1e-12))
    img = np.stack(channels, axis=-1) * 48 + 128
    return np.clip(img, 0, 255).astype(np.uint8)


def flops_per_image(recipe: Recipe) -> dict:
    """FLOPs per stored image (a mixture: its models' shares weighted), and what is left out."""
    if recipe.mixture:
        counts = mixture_counts([e.share for e in recipe.mixture], recipe.images_per_class)
        parts = [(_model_flops(recipe.for_model(e.model)), n) for e, n in zip(recipe.mixture, counts)]
        per = sum(p["per_image"] * n for p, n in parts) / recipe.images_per_class
        out = {"per_image": per, "models": {e.model: p for e, (p, _) in zip(recipe.mixture, parts)}}
    else:
        out = _model_flops(recipe)
    resize = resize_flops(recipe.resolution, recipe.stored_size)
    out["resize"] = resize
    out["per_image"] = out["per_image"] + resize
    out["not_counted"] = [
        what
        for what, present in (
            (
                "the feature cache's skipped calls (counted as run)",
                recipe.cache and not _deepcache(recipe, get_model(recipe.model)) and not _pyramid(recipe),
            ),
            ("the refiner", recipe.refiner),
            ("the first-steps base model", recipe.first_steps),
        )
        if present
    ]
    return out


def _model_flops(recipe: Recipe) -> dict:
    spec = get_model(recipe.model)
    if spec.family not in PIPELINE_FAMILIES:
        raise InputError(
            "model",
            spec.name,
            f"`plan` counts FLOPs for the {', '.join(PIPELINE_FAMILIES)} families; {spec.family} is not one yet",
        )
    text = None
    if has_config(spec.name):  # a real model: its architecture on the meta device, no weights
        pipe = build_random_pipeline(spec, torch.device("meta"), torch.bfloat16, text_encoders=False)
        apply_registry_settings(spec, pipe)
        if recipe.decoder and recipe.decoder.get("name"):  # the registry tiny decoder's published architecture
            pipe.vae = random_tiny_decoder(tiny_decoder(spec).name, torch.bfloat16).to("meta")
        else:
            install_decoder(pipe, spec, recipe.decoder)
        if spec.family in ("sd3", "flux"):
            text = architecture(spec.name)["text"]
    else:  # the shipped and test models are small: loaded as a run loads them, prompts encoded as it does
        generator = load_generator(recipe, ModelOptions(), torch.device("cpu"))
        pipe = generator.pipe
        if spec.family in ("sd3", "flux"):
            embeds = generator.prompt_inputs(["a prompt"])
            text = {f"{k}_shape": ["B", *embeds[k].shape[1:]] for k in ("prompt_embeds", "pooled_prompt_embeds")}
    set_sampler(pipe, recipe.sampler, recipe.steps)
    timesteps = _timesteps(pipe, recipe.steps, recipe.resolution)
    cfg = uses_cfg(pipe, spec, recipe.guidance)
    lo, hi = recipe.guidance_interval or (-math.inf, math.inf)
    batch = [2 if cfg and lo <= _sigma(pipe.scheduler, t) <= hi else 1 for t in timesteps]  # per image, per call
    h, w = recipe.resolution
    counted = pipeline_flops(pipe, spec.family, steps=1, cfg=False, height=h, width=w, text=text)
    forward = counted["denoiser_forward"]
    f = pipe.vae_scale_factor
    decode = decode_flops(pipe.vae, (h // f, w // f)) if recipe.decoder else counted["vae_decode"]
    if _deepcache(recipe, spec):
        denoising = _deepcache_flops(pipe, spec.family, (h, w), text, forward, batch, recipe.cache["interval"])
    elif _pyramid(recipe):
        denoising = _pyramid_flops(pipe, spec.family, (h, w), text, timesteps, batch, recipe.cache)
    else:
        denoising = forward * sum(batch)
    return {
        "denoiser_forward": forward,
        "denoiser_calls": len(timesteps),
        "forwards_per_image": sum(batch),
        "denoising": denoising,
        "decode": decode,
        "per_image": denoising + decode,
    }


def _timesteps(pipe, steps: int, resolution: tuple[int, int]) -> list[float]:
    """The denoiser calls' timesteps, as the pipeline sets them: a flow scheduler that shifts by
    resolution (FLUX) gets the pipeline's sigmas and its mu for this image size."""
    scheduler = pipe.scheduler
    config = scheduler.config
    if getattr(config, "use_dynamic_shifting", False) and not getattr(config, "use_flow_sigmas", False):
        f = pipe.vae_scale_factor
        seq = (resolution[0] // f // 2) * (resolution[1] // f // 2)  # FLUX's latents, packed 2x2 into tokens
        m = (config.get("max_shift", 1.15) - config.get("base_shift", 0.5)) / (
            config.get("max_image_seq_len", 4096) - config.get("base_image_seq_len", 256)
        )
        mu = config.get("base_shift", 0.5) + m * (seq - config.get("base_image_seq_len", 256))
        scheduler.set_timesteps(sigmas=np.linspace(1.0, 1 / steps, steps), mu=mu)
    else:
        scheduler.set_timesteps(steps)
    return [float(t) for t in scheduler.timesteps]


def _pyramid(recipe: Recipe) -> bool:
    return bool(recipe.cache) and recipe.cache["name"] == "pyramid"


def _pyramid_flops(pipe, family: str, size, text, timesteps: list[float], batch: list[int], setting: dict) -> int:
    """Denoising FLOPs per image under diffusers' pyramid attention broadcast, which decides from
    the call count and the pipeline's current timestep alone: the run's calls replayed under fake
    tensors with the cache installed (feature_cache.diffusers_cache, as a run installs it), each
    counted."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    module, total = denoiser(pipe), 0
    with FakeTensorMode(allow_non_fake_inputs=True), diffusers_cache(pipe, setting), torch.no_grad():
        for t, b in zip(timesteps, batch, strict=True):
            pipe._current_timestep = t  # what the pipeline's loop sets, and the cache's callback reads
            args, kwargs = denoiser_inputs(pipe, family, *size, text)
            with FlopCounterMode(display=False, custom_mapping=CUSTOM) as counter:
                module(*args, **kwargs)
            total += counter.get_total_flops() * b
    pipe._current_timestep = None
    return total


def _deepcache(recipe: Recipe, spec) -> bool:
    return bool(recipe.cache) and recipe.cache["name"] == "deepcache" and spec.family in ("sd", "sdxl")


def _deepcache_flops(pipe, family: str, size, text, forward: int, batch: list[int], interval: int) -> int:
    """Denoising FLOPs per image under DeepCache (feature_cache.DeepCache, its own rule): a call
    runs whole every `interval` calls, or when its batch is neither the kept one nor half of it
    (CFG switched on by a guidance interval); else only the shallow path. The shallow path's
    FLOPs: two calls through DeepCache under fake tensors, less one whole forward."""
    unet = pipe.unet

    def two_calls():
        def run(*args, **kwargs):
            with DeepCache(pipe, 2):
                unet(*args, **kwargs)
                unet(*args, **kwargs)

        return run

    shallow = count_flops(two_calls, lambda: denoiser_inputs(pipe, family, *size, text)) - forward
    total, kept = 0, None
    for k, b in enumerate(batch):
        whole = k % interval == 0 or kept not in (b, 2 * b)
        kept = b if whole else kept
        total += (forward if whole else shallow) * b
    return total


def _recorded_mfu(recipe: Recipe, card: dict, gpu: str) -> tuple[float, str]:
    """The MFU of the committed bench records of the recipe's model(s) on `card` (a mixture: the
    lowest of its models'), and which records; refused when one has none."""
    models = [recipe.model] if not recipe.mixture else [e.model for e in recipe.mixture]
    records = [card["models"].get(m) for m in models]
    missing = [m for m, r in zip(models, records) if not r]
    if missing:
        raise InputError(
            "--gpu",
            gpu,
            f"no committed bench record of {', '.join(missing)} on it (records: "
            f"{', '.join(sorted(card['models'])) or 'none'}); give the MFU to assume with --mfu, e.g. --mfu 0.35",
        )
    source = "; ".join(f"{m}: {r['record']} ({r['path']}, batch {r['batch']})" for m, r in zip(models, records))
    return min(r["mfu"] for r in records), source


def gpu_cost(
    recipe: Recipe, flops: float, samples: int, card: dict, gpu: str, mfu: float | None, price: float | None
) -> dict:
    used, source = (mfu, "--mfu") if mfu is not None else _recorded_mfu(recipe, card, gpu)
    seconds = samples * flops / (card["matmul_flops_per_second"] * used)
    hours = seconds / 3600
    return {
        "gpu": f"{gpu} ({card['name']})",
        "matmul_flops_per_second": card["matmul_flops_per_second"],
        "mfu": used,
        "mfu_from": source,
        "images_per_second": round(samples / seconds, 3) if seconds else math.inf,
        "gpu_hours": round(hours, 3),
        "price_per_gpu_hour": price,
        "cost": round(hours * price, 2) if price is not None else None,
    }


def format_plan(report: dict) -> str:
    """`plan` for a person (the report itself is --json)."""
    f, b = report["flops"], report["bytes"]
    lines = [
        f"{report['samples']:,} samples: {report['classes']:,} classes, {report['unique_prompts']:,} unique prompts, "
        f"{report['shards']:,} shards of up to {report['images_per_shard']:,}",
        f"bytes: about {b['image']:,} per image, {b['per_sample_in_shards']:,} per sample in the shards, "
        f"{_size(b['dataset'])} in all ({b['calibration']})",
        f"FLOPs per image: {f['per_image'] / 1e9:,.3f} G"
        + (
            f" (denoising {f['denoising'] / 1e9:,.3f} G over {f['forwards_per_image']} denoiser forwards of up to "
            f"{f['denoiser_forward'] / 1e9:,.3f} G, decode {f['decode'] / 1e9:,.3f} G, "
            f"resize {f['resize'] / 1e9:,.3f} G)"
            if "forwards_per_image" in f
            else " (a mixture: its models' shares weighted)"
        )
        + (f"; not counted: {', '.join(f['not_counted'])}" if f["not_counted"] else ""),
    ]
    if "cost" in report:
        c = report["cost"]
        price = f", {c['cost']:,.2f} at {c['price_per_gpu_hour']:g}/GPU-hour" if c["cost"] is not None else ""
        lines.append(
            f"on {c['gpu']} at MFU {c['mfu']:.3f} ({c['mfu_from']}): about {c['images_per_second']:,.1f} images/s, "
            f"{c['gpu_hours']:,.2f} GPU-hours{price}"
        )
    if report["first_samples"]:
        lines.append(f"first {len(report['first_samples'])} samples:")
        width = max(len(s["key"]) for s in report["first_samples"])
        lines += [
            f"  {s['key']:<{width}}  {s['class_id']:<12} {s['seed']:>20}  {s['prompt']}"
            for s in report["first_samples"]
        ]
    return "\n".join(lines)


def _size(n: float) -> str:
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= scale:
            return f"{n / scale:,.1f} {unit}"
    return f"{n:,.0f} B"
