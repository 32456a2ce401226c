"""One unit of work -> one committed shard, done the same way wherever it runs: in the `generate`
process itself, in a local worker process (workers.py) or in a Ray actor (ray_runner.py).

A `UnitRunner` holds a Generator (the model, loaded once) and a ShardWriter. `run(unit)` makes
the unit's images batch by batch and hands them to the writer, which commits the shard once
they are encoded. A batch that runs out of GPU memory is retried at half its size, down to 1,
and the size that worked is kept: batch size changes no sample (tested in test_generate.py).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import torch

from ..dataset.records import Sample, WorkUnit
from ..dataset.runlog import RunLog
from ..dataset.shards import ShardWriter
from ..dataset.store import FsspecStore, LocalStore, as_store
from ..devices import resolve_device
from ..errors import raise_if_stopped
from .diversity import sample_guidance
from .generator import Generator
from .recipe import Recipe, sample_meta
from .runtime import ModelOptions, load_generator


def default_encode_workers(device: torch.device) -> int:
    """A thread on a CPU device (measured faster on 2 cores, bench/RESULTS.md); beside a GPU, a
    process per spare core, up to 8."""
    return 0 if device.type == "cpu" else max(1, min(8, (os.cpu_count() or 2) - 1))


def shard_writer(
    recipe: Recipe, out_dir: Path | str | LocalStore | FsspecStore, encode_workers: int, log: dict | None = None
) -> ShardWriter:
    """The writer of `recipe`'s shards into `out_dir`; `log`: this writer's run-log context (part,
    worker, device), or None for no run log (a benchmark's scratch folder)."""
    store = as_store(out_dir)
    return ShardWriter(
        store,
        fmt=recipe.format,
        quality=recipe.quality,
        extension=recipe.extension,
        sample_json=sample_json(recipe),
        encode_workers=encode_workers,
        size=recipe.output_size,
        log=None if log is None else RunLog(store, **log),
    )


def sample_json(recipe: Recipe) -> Callable[[Sample], dict]:
    """What each sample's KEY.json holds: its key, label, prompt and seed, and the settings that
    made it (its generator's, in a mixture; its own guidance, drawn from a list)."""
    shared = sample_meta(recipe)
    per_model = {name: sample_meta(recipe.for_model(name)) for name in recipe.models} if recipe.mixture else {}

    def record(sample: Sample) -> dict:
        meta = {**sample.identity(), **(per_model[sample.model] if sample.model else shared)}
        if "guidance_choices" in meta:
            meta["guidance"] = sample_guidance(tuple(meta["guidance_choices"]), sample.seed)
        return meta

    return record


class UnitRunner:
    """A model on one device and a writer into one folder: generates whole units into shards. In
    a mixture, `loader(model)` gives the Generator of a unit of another model (one model held at
    a time: the one before is let go first)."""

    def __init__(
        self,
        generator: Generator,
        writer: ShardWriter,
        batch_size: int,
        loader: Callable[[str], Generator] | None = None,
        model: str = "",
    ):
        self.generator, self.writer, self.batch_size = generator, writer, batch_size
        self.loader, self.model = loader, model
        self.stage_seconds: dict[str, float] = {}  # of the generators let go (stages() adds the current one's)

    @classmethod
    def for_recipe(
        cls, recipe: Recipe, model: ModelOptions, device: torch.device, writer: ShardWriter, first: str = ""
    ) -> UnitRunner:
        """`recipe`'s runner with `writer`: a mixture's starts with the generator of `first`."""
        name = first or recipe.model
        generator = load_generator(recipe.for_model(name), model, device)
        loader = (lambda m: load_generator(recipe.for_model(m), model, device)) if recipe.mixture else None
        return cls(generator, writer, recipe.batch_size, loader, name if recipe.mixture else "")

    def stages(self) -> dict[str, float]:
        """Seconds per stage over every generator this runner has held."""
        out = dict(self.stage_seconds)
        for k, v in self.generator.stage_seconds.items():
            out[k] = out.get(k, 0.0) + v
        return out

    def _switch(self, name: str) -> None:
        self.stage_seconds = self.stages()
        self.generator = None  # let the old model go before the next loads
        _free_cuda_memory()
        self.generator, self.model = self.loader(name), name

    @classmethod
    def load(
        cls,
        device_name: str,
        recipe_dict: dict,
        out_dir: str | Path,
        model: ModelOptions,
        cpu_threads: int,
        log: dict | None = None,
    ) -> UnitRunner:
        """A worker's runner: its recipe's model loaded on `device_name` (with `cpu_threads` torch
        threads on a CPU) and its own writer, encoding on a thread. It is handed whole units."""
        if device_name == "cpu":
            torch.set_num_threads(cpu_threads)
        recipe = Recipe.from_dict(recipe_dict)
        device = resolve_device(device_name)
        if device.type == "cuda" and device.index is not None:
            torch.cuda.set_device(device)  # kernels that launch on the current device (Triton) follow the worker's
        return cls.for_recipe(recipe, model, device, shard_writer(recipe, out_dir, encode_workers=0, log=log))

    @property
    def dtype(self) -> str:
        return str(self.generator.dtype).removeprefix("torch.")

    def run(self, unit: WorkUnit, on_batch: Callable[[int], None] | None = None) -> int:
        """Generate `unit` and hand it to the writer (committed once encoded); returns its image
        count. `on_batch(n)` is told of each batch of n images handed over."""
        if unit.model and unit.model != self.model:
            self._switch(unit.model)
        self.writer.begin(unit)
        start = 0
        while start < len(unit.samples):
            batch = list(unit.samples[start : start + self.batch_size])
            try:
                images = self.generator.generate(batch)
            except Exception as e:  # noqa: BLE001 - only out-of-memory is retried
                if not _is_oom(e) or self.batch_size == 1:
                    raise
                self.batch_size = max(1, self.batch_size // 2)  # kept for the rest of this runner's life
                _free_cuda_memory()
                continue
            self.writer.add(unit, batch, images)
            start += len(batch)
            raise_if_stopped()  # a signal whose exception a finalizer swallowed (errors.py)
            if on_batch is not None:
                on_batch(len(batch))
        self.writer.commit(unit)
        return unit.size


def _is_oom(error: Exception) -> bool:
    return isinstance(error, torch.cuda.OutOfMemoryError) or "out of memory" in str(error).lower()


def _free_cuda_memory() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
