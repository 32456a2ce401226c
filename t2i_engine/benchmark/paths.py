"""The generation paths a benchmark times, each from prompts to encoded image files:

- `engine_path`: our engine (Generator + ShardWriter), exactly as `generate` runs it: cached
  prompt embeddings, per-sample seeded latents, denoising with guidance, VAE decode, then
  encoding in worker processes and a shard written to disk.
- `diffusers_path`: the plain loop users run today: one `pipe(prompt=[...])` call per batch
  (text encoded every call, diffusers' own latents and decode to PIL), then each image encoded
  in the same thread, as `image.save(...)` in a loop does.

Both time `reps` batches after `warmup` untimed ones and report images/sec over the timed
window (until the last timed image is encoded, and written for the engine), the median batch's
rate beside it, the time per stage per image, and how many denoiser forwards each image took.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from ..dataset.encode import encode_image
from ..dataset.records import Sample, WorkUnit
from ..engine.generator import Generator
from ..engine.recipe import Recipe
from ..engine.units import default_encode_workers, shard_writer
from ..export.tuning import compiled_graphs
from ..models.pipelines import denoiser
from .measure import NvmlSampler, synchronize


def _peak_memory(device: torch.device) -> int | None:
    return torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


@contextmanager
def count_denoiser_images(pipe, *others):
    """Counts the images the denoiser sees (a CFG call on 2B latents counts 2B): forwards per
    image are then exact for any scheduler (PNDM runs 51 calls for 50 steps) and pipeline.
    `others`: pipelines whose denoisers count too (a first-steps base model)."""
    seen = [0]

    def hook(module, args, kwargs):
        x = args[0] if args else kwargs.get("sample", kwargs.get("hidden_states"))
        seen[0] += x.shape[0]

    handles = [denoiser(p).register_forward_pre_hook(hook, with_kwargs=True) for p in (pipe, *others)]
    try:
        yield seen
    finally:
        for handle in handles:
            handle.remove()


def _result(
    times: list[float], batch: int, wall: float, stages: dict, sampler: NvmlSampler, device: torch.device, seen: int
) -> dict:
    images = batch * len(times)
    nvml = sampler.summary()
    energy = nvml and nvml.get("energy_joules")
    return {
        "batch": batch,
        "timed_batches": len(times),
        "batch_seconds": [round(t, 4) for t in times],
        # The figure that counts: timed images over the time until the last of them is encoded
        # and written (the engine's encoding overlaps the next batch, so one batch's time alone
        # would leave it out).
        "images_per_second": round(images / wall, 4),
        "median_batch_images_per_second": round(batch / statistics.median(times), 4),
        "denoiser_forwards_per_image": seen / images,
        "stage_seconds_per_image": {k: round(v / images, 6) for k, v in stages.items()},
        "peak_memory_bytes": _peak_memory(device),
        "nvml": nvml,
        "joules_per_image": round(energy / images, 3) if energy else None,
    }


def engine_path(
    pipe,
    recipe: Recipe,
    samples: list[Sample],
    *,
    batch: int,
    warmup: int,
    reps: int,
    keep_images: bool = False,
    count_flops: bool = False,
) -> dict:
    """Warm-up batches go to a shard of their own, encoded and written before the clock starts;
    the timed batches' clock stops when their shard is on disk. `keep_images`: the first timed
    batch's images under "_images" (for pixel comparisons; not JSON). Graphs compiled while the
    clock ran are counted: a compiled run must compile during warm-up only. `count_flops`: the
    denoiser's FLOPs as run, counted on the first warm-up batch (eager PyTorch modules only)."""
    device = pipe.device
    generator = Generator.for_recipe(pipe, recipe)
    if count_flops and warmup:
        generator.count_flops()
    warm = WorkUnit(0, tuple(samples[: batch * warmup]))
    timed = WorkUnit(1, tuple(samples[batch * warmup : batch * (warmup + reps)]))
    times: list[float] = []
    with tempfile.TemporaryDirectory(prefix="t2i-bench-") as tmp:
        writer = shard_writer(recipe, Path(tmp), default_encode_workers(device))
        sampler = NvmlSampler(device)
        try:
            writer.start_encoders()
            for i in range(warmup):
                chunk = list(warm.samples[i * batch : (i + 1) * batch])
                writer.add(warm, chunk, generator.generate(chunk))
            if warmup:
                writer.commit(warm)
            writer.drain()
            before, wait_before = dict(generator.stage_seconds), writer.wait_seconds
            _reset_peak(device)
            graphs_before = compiled_graphs()
            with sampler, count_denoiser_images(pipe) as seen:
                start = time.perf_counter()
                for i in range(reps):
                    chunk = list(timed.samples[i * batch : (i + 1) * batch])
                    t0 = time.perf_counter()
                    images = generator.generate(chunk)
                    writer.add(timed, chunk, images)
                    times.append(time.perf_counter() - t0)
                    if keep_images and i == 0:
                        first = images
                writer.commit(timed)
                writer.drain()
                wall = time.perf_counter() - start
        finally:
            writer.close()
    stages = {k: generator.stage_seconds[k] - before[k] for k in generator.stage_seconds}
    stages["encode_and_write_wait"] = writer.wait_seconds - wait_before
    out = _result(times, batch, wall, stages, sampler, device, seen[0])
    out["graphs_compiled_while_timed"] = compiled_graphs() - graphs_before
    if generator.denoiser_flops_per_image is not None:
        out["denoiser_flops_per_image"] = generator.denoiser_flops_per_image
    if keep_images:
        out["_images"] = first
    return out


def diffusers_path(
    pipe, recipe: Recipe, samples: list[Sample], *, batch: int, warmup: int, reps: int, call_kwargs=None
) -> dict:
    """`call_kwargs(n)`: extra pipeline arguments for n images (prompt embeddings for pipelines
    built without text encoders); None passes the prompts as strings."""
    device = pipe.device
    times: list[float] = []
    stages = {"pipeline_call": 0.0, "encode": 0.0}
    sampler = NvmlSampler(device)
    # PixArt and Sana snap the size to their aspect-ratio bins by default; the engine makes the
    # recipe's size, and so does its baseline
    fixed = {"use_resolution_binning": False} if "use_resolution_binning" in _call_parameters(pipe) else {}

    def one_batch(chunk: list[Sample]) -> None:
        text = (
            call_kwargs(len(chunk))
            if call_kwargs
            else {"prompt": [s.prompt for s in chunk], "negative_prompt": [recipe.negative_prompt] * len(chunk)}
        )
        t0 = time.perf_counter()
        out = pipe(
            **text,
            num_inference_steps=recipe.steps,
            guidance_scale=recipe.guidance,
            height=recipe.resolution[0],
            width=recipe.resolution[1],
            generator=[torch.Generator(device).manual_seed(s.seed % 2**63) for s in chunk],
            **fixed,
        )
        synchronize(device)
        t1 = time.perf_counter()
        for image in out.images:
            encode_image(np.asarray(image), recipe.format, recipe.quality)
        t2 = time.perf_counter()
        stages["pipeline_call"] += t1 - t0
        stages["encode"] += t2 - t1
        times.append(t2 - t0)

    for i in range(warmup):
        one_batch(samples[i * batch : (i + 1) * batch])
    times.clear()
    stages.update(pipeline_call=0.0, encode=0.0)
    _reset_peak(device)
    with sampler, count_denoiser_images(pipe) as seen:
        start = time.perf_counter()
        for i in range(warmup, warmup + reps):
            one_batch(samples[i * batch : (i + 1) * batch])
        wall = time.perf_counter() - start
    return _result(times, batch, wall, stages, sampler, device, seen[0])


def _call_parameters(pipe) -> set[str]:
    import inspect

    return set(inspect.signature(type(pipe).__call__).parameters)


def attention_processors(pipe) -> list[str]:
    module = denoiser(pipe)
    if not hasattr(module, "attn_processors"):  # Lumina-2's transformer has no such property
        return sorted({type(m.processor).__name__ for m in module.modules() if hasattr(m, "processor")})
    return sorted({type(p).__name__ for p in module.attn_processors.values()})
