"""ShardWriter: images -> atomic, verifiable webdataset shards, off the model's critical path.

Per shard NNNNNN (one work unit) the output folder gets:

    NNNNNN.tar          per sample KEY.{jpg|png|webp}, KEY.cls (class index), KEY.json
    NNNNNN.index.jsonl  one line per sample: key, class, prompt, seed, sha256 of the image bytes
    NNNNNN.stats.json   sha256, byte size and sample count of the tar

Encoding runs in a process pool (it is CPU-bound and holds the GIL in parts); the caller hands
over each batch and goes straight back to the model, blocking only when more than
`max_pending` batches wait to be encoded (a bounded queue, so memory stays flat). Tar writing
is I/O, so it runs on one thread: the raw pixels of a whole shard never have to sit in memory,
only its encoded bytes.

Every file goes through the dataset's store (dataset/store.py). Commit protocol: the tar is
built in a staged file (locally NNNNNN.tar.tmp, fsynced). On a local disk the index and stats
are written (each whole: tmp -> rename), then the staged tar is renamed to NNNNNN.tar and the
folder fsynced. At a URL the tar is uploaded and read back (size, sha256) first, since an upload
is visible before it is checked, then the index, then the stats. A shard counts as done only
when all three files exist, so a crash at any point leaves either a complete shard or one that
the next run regenerates; a partial tar is never visible under a final name. Tar headers are
fixed (mtime 0, uid/gid 0, mode 0444), so the same samples give byte-identical shards.
"""

from __future__ import annotations

import io
import json
import signal
import tarfile
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from ..errors import SPACE_ERRNOS, OutOfSpace
from ..files import TMP_SUFFIX, file_sha256
from .encode import encode_batch
from .records import Sample, ShardRecord, WorkUnit
from .runlog import RunLog
from .store import FsspecStore, LocalStore, as_store


def shard_files(name: str) -> tuple[str, str, str]:
    """(tar, index, stats) file names of shard `name` ("NNNNNN")."""
    return f"{name}.tar", f"{name}.index.jsonl", f"{name}.stats.json"


def shard_paths(out_dir: Path, name: str) -> tuple[Path, Path, Path]:
    """(tar, index, stats) local paths of shard `name`, for readers of a local folder."""
    return tuple(Path(out_dir) / f for f in shard_files(name))


def is_committed(out: Path | LocalStore | FsspecStore, name: str) -> bool:
    """All three files exist and the stats file reads back; anything less is remade."""
    store = as_store(out)
    if not all(store.exists(f) for f in shard_files(name)):
        return False
    try:
        read_record(store, name)
    except (OSError, ValueError, TypeError):
        return False
    return True


def read_record(out: Path | LocalStore | FsspecStore, name: str) -> ShardRecord:
    return ShardRecord(**json.loads(as_store(out).read_text(shard_files(name)[2])))


def _ignore_stop_signals() -> None:
    # Ctrl-C and SIGTERM (Slurm sends it to every process of the job) are the main process's to
    # handle; encoder processes just finish or are shut down by it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _noop() -> None:
    return None


class ShardWriter:
    def __init__(
        self,
        out: Path | LocalStore | FsspecStore,
        *,
        fmt: str,
        quality: int,
        extension: str,
        sample_json: Callable[[Sample], dict],
        encode_workers: int = 1,
        max_pending: int | None = None,
        size: tuple[int, int] | None = None,
        log: RunLog | None = None,
    ):
        self.store = as_store(out)
        self.log = log  # the run log: a line per committed shard (status reads it)
        self._last_commit = time.time()  # a shard's line: the seconds since the one before (or the start)
        self.fmt, self.quality, self.extension = fmt, quality, extension
        self.size = size  # (height, width) the images are stored at (None: as generated)
        self.sample_json = sample_json  # a sample's KEY.json: its key, label, prompt, seed and how it was made
        # encode_workers=0 encodes on a thread: no process start-up, for tiny runs and tests.
        self._pool = (
            ProcessPoolExecutor(encode_workers, mp_context=get_context("spawn"), initializer=_ignore_stop_signals)
            if encode_workers > 0
            else ThreadPoolExecutor(1, thread_name_prefix="encoder")
        )
        self._tar_thread = ThreadPoolExecutor(1, thread_name_prefix="shard-writer")
        self._workers = max(encode_workers, 1)
        self._max_pending = max_pending or 2 * self._workers + 2
        self._pending: deque[Future] = deque()
        self._parts: dict[int, list[tuple[list[Sample], Future]]] = {}
        self._commits: deque[Future] = deque()  # shard writes not yet collected into records
        self.wait_seconds = 0.0  # time the caller spent blocked on this writer
        self.records: list[ShardRecord] = []

    def begin(self, unit: WorkUnit) -> None:
        """A unit's first batch is about to be made. At a URL its shard is staged on this machine,
        out of `status`'s sight, so the run log says it is in flight (a local folder shows the
        staged file itself)."""
        if self.log is not None and isinstance(self.store, FsspecStore):
            self.log.record("begin", shard=unit.name)

    def add(self, unit: WorkUnit, samples: list[Sample], images: np.ndarray) -> None:
        """Queue one batch of a unit for encoding; blocks only when the queue is full."""
        self._collect_written()
        future = self._pool.submit(encode_batch, images, self.fmt, self.quality, self.size)
        self._parts.setdefault(unit.shard, []).append((samples, future))
        self._pending.append(future)
        while len(self._pending) > self._max_pending:
            start = time.perf_counter()
            self._pending.popleft().result()
            self.wait_seconds += time.perf_counter() - start
        while self._pending and self._pending[0].done():
            self._pending.popleft()

    def start_encoders(self) -> None:
        """Start every encoder now (a process pool starts them on demand), so that start-up
        does not land in the first batches; used before timing."""
        for f in [self._pool.submit(_noop) for _ in range(self._workers)]:
            f.result()

    def drain(self) -> None:
        """Wait until every queued batch is encoded and every committed shard written."""
        start = time.perf_counter()
        while self._pending:
            self._pending.popleft().result()
        self.wait_seconds += time.perf_counter() - start
        self.flush()

    def commit(self, unit: WorkUnit) -> None:
        """All batches of `unit` were added: write its shard once they are encoded."""
        parts = self._parts.pop(unit.shard)
        self._commits.append(self._tar_thread.submit(self._write_shard, unit, parts))

    def finished(self) -> list[ShardRecord]:
        """Records of the shards written so far, without waiting for the rest."""
        self._collect_written()
        return self.records

    def flush(self) -> list[ShardRecord]:
        """Wait until every committed shard is on disk; the writer stays open."""
        while self._commits:
            self.records.append(self._commits.popleft().result())
        return self.records

    def close(self) -> list[ShardRecord]:
        """Wait for every queued shard; returns the records of shards written by this writer."""
        start = time.perf_counter()
        try:
            while self._commits:
                self.records.append(self._commits.popleft().result())
        finally:
            self._tar_thread.shutdown(wait=True, cancel_futures=True)
            self._pool.shutdown(wait=True, cancel_futures=True)
            self.wait_seconds += time.perf_counter() - start
        return self.records

    def _collect_written(self) -> None:
        """Move finished shard writes into records (raising a failed one's error), oldest first,
        so each batch looks only at the few writes still in flight."""
        while self._commits and self._commits[0].done():
            self.records.append(self._commits.popleft().result())

    def _write_shard(self, unit: WorkUnit, parts) -> ShardRecord:
        encoded = [
            (sample, data, sha)
            for samples, future in parts
            for sample, (data, sha) in zip(samples, future.result(), strict=True)
        ]
        names = shard_files(unit.name)
        # a USTAR member is a 512-byte header and its data padded to 512 bytes; three per sample
        needed = sum(len(data) + 3 * 1024 for _, data, _ in encoded) + 10240
        try:
            record = self._write_files(unit, encoded, *names)
        except OutOfSpace as e:  # the store's own staging folder (an upload's), named by the store
            raise OutOfSpace(e.folder, needed, 1, e.error) from e.error
        except OSError as e:
            # Nothing of this shard stays, not even a tar published before a failed sync of the
            # folder: this shard was not committed (only those are written), and a rerun remakes it.
            for name in names:
                self.store.remove(name + TMP_SUFFIX)
                self.store.remove(name)
            if e.errno in SPACE_ERRNOS:
                raise OutOfSpace(self.store.url, needed, 1, e) from e
            raise
        if self.log is not None:  # committed: now it is logged (a lost line costs nothing)
            now = time.time()
            seconds, self._last_commit = now - self._last_commit, now
            self.log.record(
                "shard", shard=unit.name, images=record.count, bytes=record.bytes, seconds=round(seconds, 3)
            )
        return record

    def _write_files(self, unit: WorkUnit, encoded, tar_name: str, index_name: str, stats_name: str) -> ShardRecord:
        index_lines = []
        with self.store.stage(tar_name) as (raw, staged):
            with tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as tar:
                for sample, data, sha in encoded:
                    self._add_sample(tar, sample, data)
                    index_lines.append(json.dumps({**sample.identity(), "sha256": sha}, ensure_ascii=False))
        record = ShardRecord(
            tar_name, file_sha256(staged), staged.stat().st_size, len(index_lines), sum(len(d) for _, d, _ in encoded)
        )
        if self.store.publish_first:  # an upload is visible before its check: the marker only after it
            self.store.publish(staged, tar_name, size=record.bytes, sha256=record.sha256)
        self.store.write_text(index_name, "\n".join(index_lines) + "\n")
        self.store.write_text(stats_name, json.dumps(record.__dict__, indent=1) + "\n")
        if not self.store.publish_first:
            self.store.publish(staged, tar_name, size=record.bytes, sha256=record.sha256)
        self.store.sync()
        return record

    def _add_sample(self, tar: tarfile.TarFile, sample: Sample, image: bytes) -> None:
        meta = self.sample_json(sample)
        for ext, data in (
            (self.extension, image),
            ("cls", str(sample.class_index).encode()),
            ("json", json.dumps(meta, sort_keys=True, ensure_ascii=False).encode()),
        ):
            info = tarfile.TarInfo(f"{sample.key}.{ext}")
            info.size, info.mtime, info.mode = len(data), 0, 0o444
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(data))
