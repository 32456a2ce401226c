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

from .errors import InputError
from .plan import WorkUnit

MAX_RESTARTS = 3


def run_ray(units: list[WorkUnit], recipe, out_dir: Path, *, address: str | None, weights: str | None,
            progress: bool, max_actors: int | None = None) -> tuple[int, dict, int]:
    """Generate `units` on a Ray cluster; returns (images written, actors per kind, 0)."""
    try:
        import ray
        from ray.util import ActorPool
    except ImportError:
        raise InputError("--ray", address or "local", "Ray is not installed: pip install 't2i-engine[ray]'") from None
    from tqdm import tqdm

    started_here = not ray.is_initialized()
    if started_here:
        try:
            ray.init(address=address, include_dashboard=False, log_to_driver=False)
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise InputError("--ray", address, f"cannot connect to a Ray cluster there ({e}); start one with `ray start --head`, "
                             "or pass no address for a local one") from None
    try:
        resources = ray.cluster_resources()
        gpus, cpus = int(resources.get("GPU", 0)), int(resources.get("CPU", 1))
        count = min(len(units), gpus or cpus, max_actors or len(units))
        options = {"num_gpus": 1} if gpus else {"num_cpus": 1}
        actor_cls = ray.remote(max_restarts=MAX_RESTARTS, max_task_retries=MAX_RESTARTS)(_RayUnitWorker)
        device = "cuda" if gpus else "cpu"
        actors = [actor_cls.options(**options).remote(device, recipe.to_dict(), str(out_dir), weights) for _ in range(count)]
        pool = ActorPool(actors)
        done = 0
        with tqdm(total=sum(len(u.samples) for u in units), unit="img", desc=f"generate (ray, {count} {device} actors)",
                  disable=None if progress else True, dynamic_ncols=True) as bar:
            for n in pool.map_unordered(lambda actor, shard: actor.run.remote(shard), [u.shard for u in units]):
                done += n
                bar.update(n)
        for actor in actors:
            ray.kill(actor)
        return done, {f"ray-{device}-actors": count}, 0
    finally:
        if started_here:
            ray.shutdown()


class _RayUnitWorker:
    """A Ray actor around UnitRunner; `run` returns once the unit's shard is committed."""

    def __init__(self, device: str, recipe_dict: dict, out_dir: str, weights: str | None):
        import ray

        if device == "cuda":
            device = "cuda:0"  # Ray sets CUDA_VISIBLE_DEVICES to this actor's GPU
        threads = max(1, int(ray.get_runtime_context().get_assigned_resources().get("CPU", 1)))
        self.runner = _make_runner(device, recipe_dict, out_dir, weights, threads)

    def run(self, shard: int) -> int:
        n = self.runner.run(shard)
        self.runner.writer.flush()
        return n


def _make_runner(device, recipe_dict, out_dir, weights, threads):
    from .workers import UnitRunner

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    return UnitRunner(device, recipe_dict, out_dir, weights, threads)
