"""The local scheduler: one worker process per device, fed units one at a time.

`generate --devices all|0,1,3|cpu:N` starts one spawned process per device. Each loads the model
once and asks the parent for a unit whenever it has handed its last one to its writer, so a fast
device takes more units and a slow one never holds a unit another could be doing. The parent
knows which unit every worker holds: when a worker dies (killed, segfault, out of memory), its
unfinished units go back on the queue and the worker is restarted on the same device, up to
MAX_RESTARTS times per device; past that the run stops with an error naming the device and the
units. Workers ignore Ctrl-C; the parent stops them, and committed shards are kept (a partial
shard is never visible under its final name), so the next run resumes.

Each worker runs units with the one UnitRunner (units.py), which retries a batch that runs out
of GPU memory at half its size and keeps the size that worked.
"""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import time
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path

from ..dataset.records import WorkUnit
from ..dataset.shards import is_committed
from ..errors import InputError, OutOfSpace, StoreUnavailable, raise_if_stopped
from .runtime import ModelOptions
from .units import UnitRunner

MAX_RESTARTS = 3
POLL_SECONDS = 0.2


def parse_devices(text: str) -> list[str]:
    """`cpu:N` -> N CPU workers; `all` -> every CUDA device; `0,1,3` -> those CUDA devices."""
    import torch

    allowed = "expected all, a list of CUDA device numbers such as 0,1,3, or cpu:N (N CPU workers, 1-64)"
    if text.startswith("cpu:"):
        n = text[4:]
        if not (n.isascii() and n.isdigit()) or not 1 <= int(n) <= 64:
            raise InputError("--devices", text, allowed)
        return ["cpu"] * int(n)
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if text == "all":
        if count == 0:
            raise InputError("--devices", text, "this machine has no CUDA device; use cpu:N")
        return [f"cuda:{i}" for i in range(count)]
    parts = text.split(",")
    if not all(p.isascii() and p.isdigit() for p in parts) or len(set(parts)) != len(parts):
        raise InputError("--devices", text, allowed)
    missing = [p for p in parts if int(p) >= count]
    if missing:
        raise InputError("--devices", text, f"this machine has {count} CUDA device(s); no device {', '.join(missing)}")
    return [f"cuda:{p}" for p in parts]


@dataclass
class _Worker:
    device: str
    process: object = None
    inbox: object = None
    outbox: object = None  # its own: a worker killed while sending cannot jam the others' channel
    held: list[int] = field(default_factory=list)  # units handed over and not yet reported written
    images: int = 0
    ready_at: float | None = None
    done: bool = False  # said goodbye: exited on purpose
    restarts: int = 0
    failed_units: list[int] = field(default_factory=list)


def cpu_threads_per_worker(devices: list[str]) -> int:
    """The torch threads of each CPU worker: CPU workers split the cores between them rather than
    each taking them all (so a worker's floats equal those of one process at this thread count)."""
    return max(1, (os.cpu_count() or 1) // max(1, devices.count("cpu")))


def run_workers(
    units: list[WorkUnit],
    recipe,
    out_dir: Path,
    *,
    devices: list[str],
    model: ModelOptions,
    progress: bool,
    part: str | None = None,
) -> tuple[int, dict, int]:
    """Generate `units` on `devices`; returns (images written, per-device images/sec, restarts)."""
    from tqdm import tqdm

    ctx = get_context("spawn")
    cpu_threads = cpu_threads_per_worker(devices)
    by_shard = {u.shard: u for u in units}
    todo = [u.shard for u in units]  # handed out in plan order
    workers = [_Worker(d) for d in devices]
    written: set[int] = set()
    bar = tqdm(
        total=sum(u.size for u in units),
        unit="img",
        desc="generate",
        disable=None if progress else True,
        dynamic_ncols=True,
    )

    queues = []  # every queue made, for the cleanup below

    def start(wid: int) -> None:
        w = workers[wid]
        w.inbox, w.outbox, w.done, w.ready_at = ctx.Queue(), ctx.Queue(), False, None
        queues.extend((w.inbox, w.outbox))
        w.process = ctx.Process(
            target=worker_main,
            args=(
                wid,
                w.device,
                recipe.to_dict(),
                str(out_dir),
                model,
                w.inbox,
                w.outbox,
                cpu_threads,
                os.getpid(),
                {"part": part, "worker": f"{w.device}#{wid}", "device": w.device},
            ),
            daemon=True,
            name=f"t2i-engine-worker-{wid}",
        )
        w.process.start()

    def count_written(w: _Worker, shard: int) -> None:
        if shard in w.held:
            w.held.remove(shard)
        if shard not in written:
            written.add(shard)
            n = by_shard[shard].size
            w.images += n
            bar.update(n)
            bar.set_postfix_str(_rates(workers))

    def handle(w: _Worker, msg: tuple) -> None:
        kind, *rest = msg
        if kind == "ready":
            w.ready_at = time.perf_counter()
        elif kind == "want":
            shard = todo.pop(0) if todo else None
            if shard is not None:
                w.held.append(shard)
            w.inbox.put(None if shard is None else by_shard[shard])  # the unit itself: workers do not plan
        elif kind == "written":
            count_written(w, rest[0])
        elif kind == "bye":
            w.done = True
        elif kind == "out_of_space":
            raise OutOfSpace(rest[3], rest[0], 1, OSError(rest[1], rest[2]))
        elif kind == "store_unavailable":  # the store, not the worker: a restart cannot help
            raise StoreUnavailable(*rest)
        elif kind == "fatal":
            if rest[1]:  # bad input (a missing model): the same on every device, say it once
                raise InputError("--devices", w.device, f"its worker could not start: {rest[0]}")
            raise RuntimeError(f"the worker on {w.device} failed before its model was ready: {rest[0]}")

    def drain(w: _Worker) -> bool:
        got = False
        while True:
            try:
                msg = w.outbox.get_nowait()
            except (queue.Empty, OSError, EOFError):
                return got
            handle(w, msg)
            got = True

    for wid in range(len(workers)):
        start(wid)
    graceful = False
    try:
        while len(written) < len(units):
            raise_if_stopped()  # a signal whose exception a finalizer swallowed (errors.py)
            if not any([drain(w) for w in workers]):
                time.sleep(POLL_SECONDS / 10)
            for wid, w in enumerate(workers):
                if w.process.exitcode is None:
                    continue
                drain(w)  # read what it said before it went, then judge
                if w.done and not w.held:
                    continue
                for shard in _requeue(w, todo, written, by_shard, out_dir):
                    count_written(w, shard)  # it got that shard out before it died
                w.restarts += 1
                if w.restarts > MAX_RESTARTS:
                    raise RuntimeError(
                        f"the worker on {w.device} died {w.restarts} times (last exit code {w.process.exitcode}); "
                        f"units it could not finish: {', '.join(f'{s:06d}' for s in w.failed_units) or 'none'}"
                    )
                start(wid)
        graceful = True
    except (OutOfSpace, StoreUnavailable):
        # No room or no store: the other workers fail their next write the same way, so let them
        # end their unit and close their writers (a terminated one leaves its encoders' semaphores
        # behind, which Python then reports on stderr); the 30 s below bound it.
        graceful = True
        raise
    finally:
        # Done: let each worker finish and close its writer. Interrupted or failed: stop them
        # now; their committed shards stay, and partial files are cleared by the next run.
        bar.close()
        for w in workers:
            if w.process is not None and w.process.is_alive():
                if graceful:
                    w.inbox.put(None)
                else:
                    w.process.terminate()
        deadline = time.monotonic() + 30
        for w in workers:
            if w.process is not None:
                w.process.join(timeout=max(0.1, deadline - time.monotonic()))
                if w.process.is_alive():
                    w.process.terminate()
                    w.process.join()
        # The workers are gone: nothing left in a queue is wanted. A Ctrl-C that lands in a put()
        # between its feeder thread's start and the registration of the close that ends it leaves
        # a join at interpreter exit that waits forever (seen: a run that printed nothing and never
        # exited, its main thread in Queue._finalize_join). Exit must not wait on them.
        for q in queues:
            q.cancel_join_thread()
    now = time.perf_counter()
    rates = {
        f"{w.device}#{i}": round(w.images / (now - w.ready_at), 3) if w.ready_at else 0.0
        for i, w in enumerate(workers)
    }
    return sum(w.images for w in workers), rates, sum(w.restarts for w in workers)


def _requeue(w: _Worker, todo: list[int], written: set[int], by_shard: dict, out_dir: Path) -> list[int]:
    """Put a dead worker's unfinished units back at the head of the queue; returns those it had
    committed before it died."""
    committed = []
    for shard in list(w.held):
        if shard in written or is_committed(out_dir, by_shard[shard].name):
            committed.append(shard)
            continue
        w.failed_units.append(shard)
        todo.insert(0, shard)
    w.held = list(committed)
    return committed


def _rates(workers: list[_Worker]) -> str:
    now = time.perf_counter()
    return " ".join(
        f"{w.device}:{w.images / (now - w.ready_at):.1f}/s" for w in workers if w.ready_at and now > w.ready_at
    )


def worker_main(
    wid: int,
    device_name: str,
    recipe_dict: dict,
    out_dir: str,
    model: ModelOptions,
    inbox,
    outbox,
    cpu_threads: int,
    parent_pid: int,
    log: dict | None = None,
) -> None:
    """One local device: load the model once, then generate the units the parent hands over."""
    import traceback

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop
    _die_with_parent()
    if os.getppid() != parent_pid:  # the parent went before the line above took effect
        return
    try:
        runner = UnitRunner.load(device_name, recipe_dict, out_dir, model, cpu_threads, log)
    except InputError as e:
        outbox.put(("fatal", str(e), True))
        return
    except Exception:  # noqa: BLE001 - reported to the parent, which stops the run
        outbox.put(("fatal", traceback.format_exc(limit=3)[-600:], False))
        return
    outbox.put(("ready",))
    reported, stop = 0, None
    try:
        while True:
            outbox.put(("want",))
            unit = inbox.get()
            if unit is None:
                break
            runner.run(unit)
            reported = _report_written(runner.writer, outbox, reported)
    except (OutOfSpace, StoreUnavailable) as e:  # no retry can help: the parent stops the run and says why
        stop = e
    finally:
        try:
            runner.writer.close()
        except (OutOfSpace, StoreUnavailable) as e:
            stop = stop or e
        with contextlib.suppress(StoreUnavailable):  # what it committed before the store went
            _report_written(runner.writer, outbox, reported)
    if isinstance(stop, OutOfSpace):
        outbox.put(("out_of_space", stop.shard_bytes, stop.error.errno, stop.error.strerror, str(stop.folder)))
    elif isinstance(stop, StoreUnavailable):
        outbox.put(("store_unavailable", stop.url, stop.error))
    else:
        outbox.put(("bye",))


def _die_with_parent() -> None:
    """Linux: this process gets SIGKILL when the parent dies, so no orphan keeps writing."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _report_written(writer, outbox, reported: int) -> int:
    records = writer.finished()
    for record in records[reported:]:
        outbox.put(("written", int(record.name.removesuffix(".tar"))))
    return len(records)
