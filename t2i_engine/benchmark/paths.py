"""The generation paths a benchmark times, each from prompts to encoded image files:

- `engine_path`: our engine (Generator + ShardWriter), exactly as `generate` runs it: cached
  prompt embeddings, per-sample seeded latents, denoising with guidance, VAE decode, then
  encoding in worker processes and a shard written to disk.
- `diffusers_path`: the plain loop users run today: one `pipe(prompt=[...])` call per batch
  (text encoded every call, diffusers' own latents and decode to PIL), then each image encoded
  in the same thread, as `image.save(...)` in a loop does.

Both time `reps` batches after `warmup` batches and report the median batch's images/sec, and
the time per stage per image.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from ..engine.encode import encode_image
from ..engine.plan import Sample
from ..engine.recipe import Recipe
from .measure import NvmlSampler, synchronize


def _peak_memory(device: torch.device) -> int | None:
    return torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _result(times: list[float], batch: int, wall: float, stages: dict, sampler: NvmlSampler, device: torch.device) -> dict:
    images = batch * len(times)
    return {
        "batch": batch,
        "timed_batches": len(times),
        "batch_seconds": [round(t, 4) for t in times],
        "images_per_second": round(batch / statistics.median(times), 4),
        "end_to_end_images_per_second": round(images / wall, 4),
        "stage_seconds_per_image": {k: round(v / images, 6) for k, v in stages.items()},
        "peak_memory_bytes": _peak_memory(device),
        "nvml": sampler.summary(),
    }


def engine_path(pipe, recipe: Recipe, samples: list[Sample], *, batch: int, warmup: int, reps: int, encode_workers: int | None = None) -> dict:
    from ..engine.generator import Generator
    from ..engine.plan import WorkUnit
    from ..engine.run import sample_meta
    from ..engine.writer import ShardWriter

    device = pipe.device
    generator = Generator(pipe, steps=recipe.steps, guidance=recipe.guidance, height=recipe.resolution[0],
                          width=recipe.resolution[1], negative_prompt=recipe.negative_prompt)
    if encode_workers is None:  # what `generate` uses (run.py)
        encode_workers = 0 if device.type == "cpu" else max(1, min(8, (os.cpu_count() or 2) - 1))
    unit = WorkUnit(0, tuple(samples[: batch * (warmup + reps)]))
    times: list[float] = []
    with tempfile.TemporaryDirectory(prefix="t2i-bench-") as tmp:
        writer = ShardWriter(Path(tmp), fmt=recipe.format, quality=recipe.quality, extension=recipe.extension,
                             sample_meta=sample_meta(recipe), encode_workers=encode_workers)
        sampler = NvmlSampler(device)
        try:
            for i in range(warmup + reps):
                if i == warmup:
                    writer.flush()
                    before, wait_before = dict(generator.stage_seconds), writer.wait_seconds
                    _reset_peak(device)
                    sampler.__enter__()
                    start = time.perf_counter()
                chunk = list(unit.samples[i * batch : (i + 1) * batch])
                t0 = time.perf_counter()
                writer.add(unit, chunk, generator.generate(chunk))
                if i >= warmup:
                    times.append(time.perf_counter() - t0)
            writer.commit(unit)
            writer.close()  # the last batches' encoding and the shard's write belong to the run
            wall = time.perf_counter() - start
        finally:
            sampler.__exit__(None, None, None)
            writer.close()
    stages = {k: generator.stage_seconds[k] - before[k] for k in generator.stage_seconds}
    stages["encode_and_write_wait"] = writer.wait_seconds - wait_before
    return _result(times, batch, wall, stages, sampler, device)


def diffusers_path(pipe, recipe: Recipe, samples: list[Sample], *, batch: int, warmup: int, reps: int,
                   call_kwargs=None) -> dict:
    """`call_kwargs(n)`: extra pipeline arguments for n images (prompt embeddings for pipelines
    built without text encoders); None passes the prompts as strings."""
    device = pipe.device
    times: list[float] = []
    stages = {"pipeline_call": 0.0, "encode": 0.0}
    sampler = NvmlSampler(device)
    try:
        for i in range(warmup + reps):
            if i == warmup:
                _reset_peak(device)
                stages = dict.fromkeys(stages, 0.0)
                sampler.__enter__()
                start = time.perf_counter()
            chunk = samples[i * batch : (i + 1) * batch]
            text = call_kwargs(len(chunk)) if call_kwargs else {"prompt": [s.prompt for s in chunk], "negative_prompt": [recipe.negative_prompt] * len(chunk)}
            t0 = time.perf_counter()
            out = pipe(**text, num_inference_steps=recipe.steps, guidance_scale=recipe.guidance, height=recipe.resolution[0],
                       width=recipe.resolution[1], generator=[torch.Generator(device).manual_seed(s.seed % 2**63) for s in chunk])
            synchronize(device)
            t1 = time.perf_counter()
            for image in out.images:
                encode_image(np.asarray(image), recipe.format, recipe.quality)
            t2 = time.perf_counter()
            stages["pipeline_call"] += t1 - t0
            stages["encode"] += t2 - t1
            if i >= warmup:
                times.append(t2 - t0)
        wall = time.perf_counter() - start
    finally:
        sampler.__exit__(None, None, None)
    return _result(times, batch, wall, stages, sampler, device)


def attention_processors(pipe) -> list[str]:
    denoiser = getattr(pipe, "unet", None) or pipe.transformer
    return sorted({type(p).__name__ for p in denoiser.attn_processors.values()})
