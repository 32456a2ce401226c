"""`generate --ray [ADDRESS]`: the same units, run by Ray actors across machines.

One actor per GPU of the cluster (`num_gpus=1`), or one per CPU when the cluster has no GPU;
each wraps the local scheduler's UnitRunner (model loaded once, whole units written as shards)
and returns when its shard is on disk. Units go to whichever actor is free (ActorPool), so fast
machines take more. An actor that dies is restarted by Ray and its unit retried (max_restarts,
max_task_retries). Every node must see the output folder at the same path (shared storage);
the driver holds the folder's lock and writes the manifest, as a local run does.

Ray is an optional extra: pip install 't2i-engine[ray]'.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..dataset.records import WorkUnit
from ..dataset.shards import is_committed
from ..errors import InputError, OutOfSpace, StoreUnavailable
from .runtime import ModelOptions
from .units import UnitRunner

MAX_RESTARTS = 3


def connect(address: str | None) -> tuple[int, bool]:
    """Join (or start) the Ray cluster before anything is written; returns (its GPUs, whether
    this call started Ray and so must shut it down)."""
    try:
        import ray
    except ImportError:
        raise InputError("--ray", address or "local", "Ray is not installed: pip install 't2i-engine[ray]'") from None
    started = not ray.is_initialized()
    if started:
        try:
            ray.init(address=address, include_dashboard=False, log_to_driver=False)
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise InputError(
                "--ray",
                address,
                f"cannot connect to a Ray cluster there ({e}); start one with `ray start --head`, "
                "or pass no address for a local one",
            ) from None
    return int(ray.cluster_resources().get("GPU", 0)), started


def shutdown() -> None:
    import ray

    ray.shutdown()


def run_ray(
    units: list[WorkUnit],
    recipe,
    out_dir: Path,
    *,
    model: ModelOptions,
    dtype: str,
    progress: bool,
    max_actors: int | None = None,
) -> tuple[int, dict, int]:
    """Generate `units` on the connected Ray cluster; returns (images written, actors, 0). Every
    actor runs in `dtype`, the precision the manifest records."""
    import ray
    from ray.util import ActorPool
    from tqdm import tqdm

    resources = ray.cluster_resources()
    gpus, cpus = int(resources.get("GPU", 0)), int(resources.get("CPU", 1))
    count = min(len(units), gpus or cpus, max_actors or len(units))
    options = {"num_gpus": 1} if gpus else {"num_cpus": 1}
    actor_cls = ray.remote(max_restarts=MAX_RESTARTS, max_task_retries=MAX_RESTARTS)(_RayUnitWorker)
    device = "cuda" if gpus else "cpu"
    actors = [
        actor_cls.options(**options).remote(device, recipe.to_dict(), str(out_dir), model, dtype) for _ in range(count)
    ]
    done = 0
    try:
        pool = ActorPool(actors)
        with tqdm(
            total=sum(len(u.samples) for u in units),
            unit="img",
            desc=f"generate (ray, {count} {device} actors)",
            disable=None if progress else True,
            dynamic_ncols=True,
        ) as bar:
            for n in pool.map_unordered(lambda actor, unit: actor.run.remote(unit), units):
                done += n
                bar.update(n)
    except ray.exceptions.RayError as e:
        full = e.cause if isinstance(e, ray.exceptions.RayTaskError) else None
        if isinstance(full, OutOfSpace):  # an actor's disk or quota is full: no retry helps
            raise OutOfSpace(full.folder, full.shard_bytes, 1, full.error) from None
        if isinstance(full, StoreUnavailable):  # the bucket, not the actor: a restart cannot help
            raise StoreUnavailable(full.url, full.error) from None
        raise RuntimeError(f"Ray actors on {device} failed after {MAX_RESTARTS} restarts: {str(e)[:400]}") from None
    finally:
        for actor in actors:  # none may keep writing once the driver lets go of the folder
            ray.kill(actor)
    return done, {f"ray-{device}-actors": count}, 0


class _RayUnitWorker:
    """A Ray actor around UnitRunner; `run` returns once the unit's shard is committed."""

    def __init__(self, device: str, recipe_dict: dict, out_dir: str, model: ModelOptions, dtype: str):
        import ray

        if device == "cuda":
            device = "cuda:0"  # Ray sets CUDA_VISIBLE_DEVICES to this actor's GPU
        threads = max(1, int(ray.get_runtime_context().get_assigned_resources().get("CPU", 1)))
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        self.runner = UnitRunner.load(device, recipe_dict, out_dir, model, threads)
        if self.runner.dtype != dtype:
            raise RuntimeError(f"this actor runs {self.runner.dtype}, the dataset is {dtype}")

    def run(self, unit: WorkUnit) -> int:
        if is_committed(self.runner.writer.store, unit.name):  # a retry after an actor died past its commit
            return len(unit.samples)
        n = self.runner.run(unit)
        self.runner.writer.flush()
        return n
