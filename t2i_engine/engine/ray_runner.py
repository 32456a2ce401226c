"""`generate --ray [ADDRESS]`: the same units, run by Ray actors across machines.

One actor per GPU of the cluster (`num_gpus=1`), or one per CPU when the cluster has no GPU;
each wraps the local scheduler's UnitRunner (model loaded once, whole units written as shards)
and returns when its shard is committed. Units go to whichever actor is free, so fast machines
take more; the unit of an actor that dies goes back to the queue (run_ray). Every node must reach
`--out`: a bucket URL (s3://; credentials from each node's environment), or a folder at the same
path on every node (shared storage). The driver holds the dataset's lock and writes the manifest,
as a local run does.

Ray is an optional extra: pip install 't2i-engine[ray]'.
"""

from __future__ import annotations

import os
from collections import deque
from pathlib import Path

from ..dataset.records import WorkUnit
from ..dataset.shards import is_committed
from ..errors import InputError, OutOfSpace, StoreUnavailable, raise_if_stopped
from .runtime import ModelOptions
from .units import UnitRunner

MAX_RESTARTS = 3
# How often the driver, waiting, asks Ray which actors are restarting or dead: a call queued on an
# actor that dies before it has started (still loading its model when its node went) is not failed
# by Ray but held for a restart that may never come (ray-project/ray#15045), so the driver takes its
# unit back itself.
ACTOR_CHECK_SECONDS = 5.0


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
    part: str | None = None,
) -> tuple[int, dict, int]:
    """Generate `units` on the connected Ray cluster; returns (images written, actors, units put
    back because their actor was lost). Every actor runs in `dtype`, the precision the manifest
    records.

    The driver hands out one unit per free actor and knows which actor holds which unit, as the
    local scheduler does (workers.py): when an actor dies (its process, or its node removed by
    the autoscaler or a preemption) the unit it held goes back to the head of the queue for the
    next free actor, so a lost node costs at most the units its actors held. Ray restarts the
    actor (MAX_RESTARTS) where resources allow; it takes units again once it answers a ping."""
    import ray
    from tqdm import tqdm

    resources = ray.cluster_resources()
    gpus, cpus = int(resources.get("GPU", 0)), int(resources.get("CPU", 1))
    count = min(len(units), gpus or cpus, max_actors or len(units))
    options = {"num_gpus": 1} if gpus else {"num_cpus": 1}
    # no task retries: a unit whose actor died is the driver's to hand to another actor, at once,
    # not Ray's to hold until that same actor comes back (on a node that may never return)
    actor_cls = ray.remote(max_restarts=MAX_RESTARTS, max_task_retries=0)(_RayUnitWorker)
    device = "cuda" if gpus else "cpu"
    actors = [
        actor_cls.options(**options).remote(device, recipe.to_dict(), str(out_dir), model, dtype, part)
        for _ in range(count)
    ]
    todo, idle = deque(units), list(actors)
    running: dict = {}  # ObjectRef of a unit's run -> (its actor, the unit)
    recovering: dict = {}  # ObjectRef of a ping -> an actor whose unit was lost
    done = retried = 0
    lost: Exception | None = None
    try:
        with tqdm(
            total=sum(u.size for u in units),
            unit="img",
            desc=f"generate (ray, {count} {device} actors)",
            disable=None if progress else True,
            dynamic_ncols=True,
        ) as bar:
            while todo or running:
                raise_if_stopped()  # a signal whose exception a finalizer swallowed (errors.py)
                while todo and idle:
                    actor, unit = idle.pop(), todo.popleft()
                    running[actor.run.remote(unit)] = (actor, unit)
                if not running and not recovering:
                    raise RuntimeError(
                        f"every Ray actor was lost ({MAX_RESTARTS} restarts each; the last: {str(lost)[:400]}); "
                        f"units left: {', '.join(u.name for u in list(todo)[:10])}"
                    )
                ready, _ = ray.wait([*running, *recovering], num_returns=1, timeout=ACTOR_CHECK_SECONDS)
                if not ready:
                    for ref in _on_lost_actors(running):  # its unit goes back, whatever becomes of the call
                        actor, unit = running.pop(ref)
                        lost = RuntimeError(f"the actor holding unit {unit.name} is restarting or dead")
                        todo.appendleft(unit)
                        retried += 1
                        recovering[actor.ping.remote()] = actor
                    continue
                (ref,) = ready
                if ref in recovering:
                    actor = recovering.pop(ref)
                    try:
                        ray.get(ref)
                        idle.append(actor)
                    except ray.exceptions.RayActorError as e:  # its restarts are spent
                        lost = e
                    continue
                actor, unit = running.pop(ref)
                try:
                    n = ray.get(ref)
                except ray.exceptions.RayActorError as e:  # its process or node is gone: the unit goes back
                    lost = e
                    todo.appendleft(unit)
                    retried += 1
                    recovering[actor.ping.remote()] = actor
                    continue
                done += n
                bar.update(n)
                idle.append(actor)
    except ray.exceptions.RayTaskError as e:  # the unit failed in a live actor: no other actor would do better
        if isinstance(e.cause, OutOfSpace):  # an actor's disk or quota is full
            raise OutOfSpace(e.cause.folder, e.cause.shard_bytes, 1, e.cause.error) from None
        if isinstance(e.cause, StoreUnavailable):  # the bucket, not the actor
            raise StoreUnavailable(e.cause.url, e.cause.error) from None
        raise RuntimeError(f"a Ray actor on {device} failed: {str(e)[:400]}") from None
    finally:
        for actor in actors:  # none may keep writing once the driver lets go of the folder
            ray.kill(actor)
    return done, {f"ray-{device}-actors": count}, retried


def _on_lost_actors(running: dict) -> list:
    """The refs of units in flight on actors Ray says are restarting or dead. Ray's view of its
    actors without the dashboard is a private call: if it is gone in some Ray version, nothing is
    found here and a lost actor's unit waits for Ray to fail its call, as it mostly does."""
    try:
        from ray._private import state

        lost = [ref for ref, (actor, _) in running.items() if _state(state, actor) in ("RESTARTING", "DEAD")]
    except Exception:  # noqa: BLE001 - a private API: its absence must not stop the run
        return []
    return lost


def _state(state, actor) -> str | None:
    return (state.actors(actor._actor_id.hex()) or {}).get("State")


class _RayUnitWorker:
    """A Ray actor around UnitRunner; `run` returns once the unit's shard is committed."""

    def __init__(
        self, device: str, recipe_dict: dict, out_dir: str, model: ModelOptions, dtype: str, part: str | None = None
    ):
        import ray

        if device == "cuda":
            device = "cuda:0"  # Ray sets CUDA_VISIBLE_DEVICES to this actor's GPU
        threads = max(1, int(ray.get_runtime_context().get_assigned_resources().get("CPU", 1)))
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        actor = f"ray-{ray.get_runtime_context().get_actor_id()[:8]}"
        log = {"part": part, "worker": actor, "device": device}
        self.runner = UnitRunner.load(device, recipe_dict, out_dir, model, threads, log)
        if self.runner.dtype != dtype:
            raise RuntimeError(f"this actor runs {self.runner.dtype}, the dataset is {dtype}")

    def ping(self) -> bool:
        """Answers once the actor is (again) up: a restarted one has reloaded its model."""
        return True

    def run(self, unit: WorkUnit) -> int:
        if is_committed(self.runner.writer.store, unit.name):  # a retry after an actor died past its commit
            return unit.size
        n = self.runner.run(unit)
        self.runner.writer.flush()
        return n
