"""Where a dataset's files live, behind one small interface that every reader and writer of a
dataset folder goes through (issue 34): a local (or mounted) folder, `LocalStore`, or an fsspec
URL, `FsspecStore`: memory:// (one process: tests, and a dataset made and read in one program),
s3:// (s3fs; credentials and AWS_ENDPOINT_URL from the environment, as boto reads them) and gs://
(gcsfs; credentials as google-auth finds them, STORAGE_EMULATOR_HOST for an emulator), none of
them ever recorded. Other schemes are refused: the locks rest on conditional creates, tested for
these three only.

Names are relative to the dataset's root and flat but for `makedirs`/`move` (repair's
_rejected/ folder). What the methods promise, so that a store without renames or file locks can
keep it:

- `write_text` / `write_bytes`: atomic: a reader sees the old bytes or the new, never part.
- `stage(name)` gives a local file to build a shard in; `publish(staged, name, size, sha256)` puts
  it under its final name at once and whole (LocalStore: fsync then rename; an object store: one
  upload, checked by size and sha256 before the name counts). Until then the name does not exist.
- `sync()`: what was written so far survives a crash (LocalStore: fsync of the folder).
- `lock(name, shared, wait, refusal)`: held while the context lives (LocalStore: flock on a file
  of that name, released by the kernel if the process dies).
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import json
import logging
import os
import re
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from ..errors import SPACE_ERRNOS, InputError, OutOfSpace, StoreUnavailable
from ..files import TMP_SUFFIX, URL, atomic_write_bytes, check_local, check_writable, file_sha256, fsync_dir

# The URL schemes a dataset can live at; others are refused with exit 2, naming these.
STORE_SCHEMES = ("memory", "s3", "gs", "gcs")
# the extra that brings each scheme's fsspec backend (memory:// is fsspec's own)
_EXTRAS = {"s3": "s3", "gs": "gcs", "gcs": "gcs"}

# The packages whose exceptions mean the store failed us (no answer, a refusal, a server error),
# not our own bug: an fsspec backend and the HTTP clients under it.
_STORE_CLIENTS = frozenset(
    {"fsspec", "s3fs", "gcsfs", "botocore", "aiobotocore", "aiohttp", "urllib3", "requests", "google"}
)


def _store_failure(e: Exception) -> bool:
    if isinstance(e, (FileNotFoundError, FileExistsError)):  # answers, which the callers handle
        return False
    return isinstance(e, OSError) or type(e).__module__.split(".", 1)[0] in _STORE_CLIENTS


class _QuietClientTasks(logging.Filter):
    """asyncio's "Task exception was never retrieved" for an HTTP client's own write task, which
    aiohttp leaves behind when the store drops a connection mid-request, and gcsfs's traceback of
    a request it gives up on: the request itself fails and says so (StoreUnavailable); these
    would add a traceback to a one-line stop."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if record.name.startswith("gcsfs"):  # logged just before it raises the same error
            return not ("out of retries on exception" in message or "non-retriable exception" in message)
        return not (message.startswith("Task exception was never retrieved") and "aiohttp" in message)


def _answered(method):
    """FsspecStore's calls: a store that does not answer or refuses (past the client's own
    retries) raises StoreUnavailable naming the URL, which stops a run cleanly (exit 1)."""

    @functools.wraps(method)
    def call(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except StoreUnavailable:
            raise
        except Exception as e:
            if not _store_failure(e):
                raise
            detail = " ".join(f"{type(e).__name__}: {e}".split())  # one line, whatever the client says
            raise StoreUnavailable(self.url, detail[:300]) from e

    return call


def writer_identity() -> dict:
    """Who is writing: this machine and process (in leases and run-log lines)."""
    return {"host": socket.gethostname(), "pid": os.getpid()}


class LocalStore:
    """A dataset in a local (or mounted network) folder: today's files, byte for byte."""

    publish_first = False  # a rename makes the shard visible whole and at once: it can come last

    def __init__(self, root: str | Path, field: str = "out"):
        self.root = check_local(root, field)
        self.url = str(self.root)  # what a worker process or a Ray actor reopens
        self.field = field

    def __repr__(self) -> str:
        return f"LocalStore({self.url!r})"

    def __str__(self) -> str:
        return self.url

    @property
    def name(self) -> str:
        """The dataset's name: its folder's (resolved, so `.` names the folder it is)."""
        return self.root.resolve().name

    def path(self, name: str = "") -> Path:
        """The local path of `name`: for the local-only callers (a DataLoader, a preview --out)."""
        return self.root / name if name else self.root

    # reading
    def exists(self, name: str = "") -> bool:
        return self.path(name).exists()

    def list(self, pattern: str) -> list[str]:
        """Names in the root matching a glob, sorted; none if the root does not exist."""
        return sorted(p.name for p in self.root.glob(pattern)) if self.root.is_dir() else []

    def read_text(self, name: str) -> str:
        return self.path(name).read_text(encoding="utf-8")

    def read_bytes(self, name: str) -> bytes:
        return self.path(name).read_bytes()

    def open_read(self, name: str) -> BinaryIO:
        return open(self.path(name), "rb")

    def size(self, name: str) -> int:
        return self.path(name).stat().st_size

    def sha256(self, name: str) -> str:
        return file_sha256(self.path(name))

    # writing
    def check_writable(self) -> None:
        check_writable(self.root, self.field)

    def makedirs(self, name: str = "") -> None:
        self.path(name).mkdir(parents=True, exist_ok=True)

    def write_bytes(self, name: str, data: bytes) -> None:
        atomic_write_bytes(self.path(name), data)

    def write_text(self, name: str, text: str) -> None:
        self.write_bytes(name, text.encode("utf-8"))

    def append_text(self, name: str, text: str) -> None:
        """`text` added at the end of `name` in one write (O_APPEND): for a file only this
        process writes (a run log's), so lines never interleave."""
        fd = os.open(self.path(name), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, text.encode("utf-8"))
        finally:
            os.close(fd)

    @contextmanager
    def stage(self, name: str) -> Iterator[tuple[BinaryIO, Path]]:
        """(an open binary file, its local path) to build `name` in: NAME.tmp beside the final
        name, flushed and fsynced when the context ends; removed if it ends by an exception."""
        staged = self.path(name + TMP_SUFFIX)
        try:
            with open(staged, "wb") as f:
                yield f, staged
                f.flush()
                os.fsync(f.fileno())
        except BaseException:
            staged.unlink(missing_ok=True)
            raise

    def publish(self, staged: Path, name: str, *, size: int, sha256: str) -> None:
        """The staged file under its final name, at once (a rename). `size` and `sha256` are what
        it must hold: a local rename cannot change them, an upload is checked against them."""
        os.replace(staged, self.path(name))

    def remove(self, name: str) -> None:
        self.path(name).unlink(missing_ok=True)

    def move(self, name: str, dest: str) -> None:
        self.path(name).rename(self.path(dest))

    def held(self, name: str) -> bool:
        """Whether some process holds lock `name` now (exclusively or shared)."""
        if not self.exists(name):
            return False
        try:
            with self.lock(name, refusal=InputError(self.field, self.url, "held")):
                return False
        except InputError:
            return True

    def sync(self) -> None:
        fsync_dir(self.root)

    @contextmanager
    def lock(
        self, name: str, *, shared: bool = False, wait: bool = False, refusal: InputError | None = None
    ) -> Iterator[int]:
        """Hold the lock `name` (a file of that name, flocked) while the context lives; another
        holder makes it raise `refusal` at once, or wait for it (wait=True). Yields the file
        descriptor: a forked helper that may outlive the run must close its copy."""
        mode = (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | (0 if wait else fcntl.LOCK_NB)
        fd = os.open(self.path(name), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, mode)
            except BlockingIOError:
                raise refusal from None
            yield fd
        finally:
            os.close(fd)


class FsspecStore:
    """A dataset at an fsspec URL. No renames and no fsync: `write_*` is one whole put;
    `publish` uploads the locally staged file and reads it back (size, then sha256) before the
    name counts, removing it if either differs; `move` is copy then delete.

    Locks are lease objects beside the data, as an object store has no file locks: holding lock
    NAME exclusively is owning `NAME.<generation>`, created only if absent (fsspec's
    pipe_file mode="create": a conditional put), holding {owner, host, pid, expires} and rewritten by a thread every
    `lease_seconds / 4` while it is held. A lease past its expiry is a dead holder's: the next
    taker creates the next generation, and of two takers only the one whose conditional create
    succeeds holds it. A shared holder owns `NAME.shared-<id>`. Each side creates its own lease,
    then lists the other side's live ones and backs off if it finds any: both may back off,
    never both hold. What this rests on: conditional creates and read-after-write listing (S3
    and GCS give both), and clocks within a few seconds of each other. A killed run blocks the
    folder until its lease expires (`lease_seconds`, 60 by default); the refusal says until when."""

    publish_first = True  # an upload is visible before it is checked: the shard's marker comes after it

    def __init__(self, url: str, field: str = "out"):
        import fsspec  # optional: fsspec (datasets and webdataset bring it)

        # how long a dead holder's lease blocks others (T2I_ENGINE_LEASE_SECONDS; tests shorten it)
        self.lease_seconds = float(os.environ.get("T2I_ENGINE_LEASE_SECONDS", "60"))
        self.owner = uuid.uuid4().hex  # this store's leases (a process may open several)
        self.url, self.field = url.rstrip("/"), field
        try:
            self._fs, self.root = fsspec.core.url_to_fs(self.url)
        except ImportError as e:  # s3:// without s3fs, gs:// without gcsfs
            extra = _EXTRAS.get(self.url.split("://", 1)[0], "s3")
            raise InputError(
                field, url, f"needs {e.name or 'its fsspec backend'}: pip install 't2i-engine[{extra}]'"
            ) from None
        self.root = self.root.rstrip("/")
        self._pid = os.getpid()
        for client_log in map(logging.getLogger, ("asyncio", "gcsfs")):
            if not any(isinstance(f, _QuietClientTasks) for f in client_log.filters):
                client_log.addFilter(_QuietClientTasks())

    @property
    def fs(self):
        """The fsspec filesystem, made anew in a forked process (a DataLoader worker): an async
        one (s3fs) runs on its parent's event loop thread, which a fork does not copy."""
        if os.getpid() != self._pid:
            import fsspec

            self._fs, self._pid = fsspec.core.url_to_fs(self.url)[0], os.getpid()
        return self._fs

    def __repr__(self) -> str:
        return f"FsspecStore({self.url!r})"

    def __str__(self) -> str:
        return self.url

    @property
    def name(self) -> str:
        return self.root.rsplit("/", 1)[-1]

    def path(self, name: str = "") -> str:
        return f"{self.root}/{name}" if name else self.root

    @_answered
    def exists(self, name: str = "") -> bool:
        self.fs.invalidate_cache(self.root)  # other processes write here too: no cached listing
        return self.fs.exists(self.path(name))

    @_answered
    def list(self, pattern: str) -> list[str]:
        self.fs.invalidate_cache(self.path(pattern.rsplit("/", 1)[0]) if "/" in pattern else self.root)
        return sorted(p.rsplit("/", 1)[-1] for p in self.fs.glob(self.path(pattern)))

    @_answered
    def read_bytes(self, name: str) -> bytes:
        return self.fs.cat_file(self.path(name))

    def read_text(self, name: str) -> str:
        return self.read_bytes(name).decode("utf-8")

    @_answered
    def open_read(self, name: str) -> BinaryIO:
        # Read front to back (a tar streamed member by member): fsspec's readahead cache, one
        # request per block (5 MiB), on every backend. gcsfs's own default fetched a tar's small
        # reads separately: a finished dataset's card took 1,288 requests (6 s) per 200 images.
        return self.fs.open(self.path(name), "rb", cache_type="readahead")

    @_answered
    def size(self, name: str) -> int:
        return self.fs.size(self.path(name))

    @_answered
    def sha256(self, name: str) -> str:
        h = hashlib.sha256()
        with self.open_read(name) as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        return h.hexdigest()

    def check_writable(self) -> None:
        check_writable(Path(self.staging), "TMPDIR")  # shards are built there first
        probe = f".t2i-engine-probe-{uuid.uuid4().hex}"
        try:
            self.write_bytes(probe, b"")
            self.remove(probe)
        except StoreUnavailable as e:
            raise InputError(self.field, self.url, f"expected a writable location that answers ({e.error})") from None
        except OSError as e:
            raise InputError(
                self.field, self.url, f"expected a writable location ({e.__class__.__name__}: {e})"
            ) from None

    @_answered
    def makedirs(self, name: str = "") -> None:
        self.fs.makedirs(self.path(name), exist_ok=True)

    @_answered
    def write_bytes(self, name: str, data: bytes) -> None:
        self.fs.pipe_file(self.path(name), data)

    def write_text(self, name: str, text: str) -> None:
        self.write_bytes(name, text.encode("utf-8"))

    @contextmanager
    def stage(self, name: str) -> Iterator[tuple[BinaryIO, Path]]:
        """A local file to build `name` in (the machine's temporary folder), removed when it ends
        by an exception; `publish` uploads it."""
        fd, local = tempfile.mkstemp(prefix=f"t2i-engine-{name}-", dir=self.staging, suffix=TMP_SUFFIX)
        staged = Path(local)
        try:
            with os.fdopen(fd, "wb") as f:
                yield f, staged
        except OSError as e:
            staged.unlink(missing_ok=True)
            if e.errno in SPACE_ERRNOS:  # the staging folder is full, not the store: say which
                raise OutOfSpace(self.staging_note, 0, 1, e) from e
            raise
        except BaseException:
            staged.unlink(missing_ok=True)
            raise

    @property
    def staging(self) -> str:
        """The local folder shards are built in before upload: the machine's temporary folder."""
        return tempfile.gettempdir()

    @property
    def staging_note(self) -> str:
        return f"{self.staging} (where shards for {self.url} are built before upload; TMPDIR moves it)"

    @_answered
    def publish(self, staged: Path, name: str, *, size: int, sha256: str) -> None:
        try:
            self.fs.put_file(str(staged), self.path(name))
            if self.size(name) != size or self.sha256(name) != sha256:
                self.remove(name)
                raise StoreUnavailable(self.url, f"{name}: the upload does not read back as written (size or sha256)")
        finally:
            staged.unlink(missing_ok=True)

    @_answered
    def remove(self, name: str) -> None:
        try:
            self.fs.rm_file(self.path(name))
        except FileNotFoundError:
            pass

    @_answered
    def move(self, name: str, dest: str) -> None:
        self.fs.copy(self.path(name), self.path(dest))
        self.remove(name)

    def sync(self) -> None:
        return None  # a put is durable once it returns

    @contextmanager
    def lock(
        self, name: str, *, shared: bool = False, wait: bool = False, refusal: InputError | None = None
    ) -> Iterator[None]:
        while True:
            lease, blocker = self._take(name, shared)
            if lease is not None:
                break
            if not wait:
                raise _with_holder(refusal, blocker)
            time.sleep(min(1.0, self.lease_seconds / 8))
        stop = threading.Event()
        renewer = threading.Thread(target=self._renew, args=(lease, shared, stop), daemon=True)
        renewer.start()
        store_failed = False
        try:
            yield None
        except StoreUnavailable:
            store_failed = True
            raise
        finally:
            stop.set()
            # A store that stopped answering keeps the lease until it expires: waiting for a renewal
            # stuck in the client's retries, or a removal that would retry in turn (gcsfs: ~30 s
            # each), cannot help, and the error that stopped the run is the one to report.
            if not store_failed:
                renewer.join()
                with contextlib.suppress(StoreUnavailable):
                    self.remove(lease)

    def held(self, name: str) -> bool:
        """Whether some holder has lock `name` now (exclusively or shared)."""
        return any(self._live(n) for n in self._exclusive(name) + self.list(f"{name}.shared-*"))

    def _lease(self, shared: bool) -> bytes:
        record = {
            "owner": self.owner,
            **writer_identity(),
            "shared": shared,
            "expires": time.time() + self.lease_seconds,
            "seconds": self.lease_seconds,  # renewed every quarter of it: `status` tells a silent holder by that
        }
        return json.dumps(record).encode()

    def lease(self, name: str) -> dict | None:
        """The record of lease object `name` ({owner, host, pid, shared, expires, seconds}), or
        None if it is gone: what `status` reads, without taking anything."""
        return self._record(name)

    def _exclusive(self, name: str) -> list[str]:
        """NAME.<generation> leases, oldest first."""
        found = [n for n in self.list(f"{name}.*") if n[len(name) + 1 :].isdigit()]  # not NAME.part-0-of-2.1
        return sorted(found, key=lambda n: int(n.rsplit(".", 1)[-1]))

    @_answered
    def _record(self, lease: str) -> dict | None:
        try:
            return json.loads(self.read_bytes(lease))
        except FileNotFoundError:
            return None
        except ValueError:  # being written: count it as live
            return {"expires": float("inf")}

    def _live(self, lease: str) -> dict | None:
        record = self._record(lease)
        return record if record is not None and record.get("expires", 0) > time.time() else None

    @_answered
    def _take(self, name: str, shared: bool) -> tuple[str | None, dict | None]:
        """(the lease now held, None) or (None, the live lease in the way)."""
        if shared:
            mine = f"{name}.shared-{uuid.uuid4().hex}"
            self.fs.pipe_file(self.path(mine), self._lease(True))
            others = [r for r in map(self._live, self._exclusive(name)) if r]
        else:
            generations = self._exclusive(name)
            if generations and (current := self._live(generations[-1])):
                return None, current
            mine = f"{name}.{int(generations[-1].rsplit('.', 1)[-1]) + 1 if generations else 1}"
            try:
                # a conditional create (S3: PutObject If-None-Match: *; GCS: ifGenerationMatch=0):
                # of two takers, one wins
                self.fs.pipe_file(self.path(mine), self._lease(False), mode="create")
            except FileExistsError:
                return None, self._live(mine)
            for stale in generations:  # dead holders' leases, now superseded
                self.remove(stale)
            others = [r for r in map(self._live, self.list(f"{name}.shared-*")) if r]
        if others:
            self.remove(mine)
            return None, others[0]
        return mine, None

    def _renew(self, lease: str, shared: bool, stop: threading.Event) -> None:
        # A renewal the store does not take is tried again at the next tick: the run itself finds
        # out from its own writes whether the store still answers, and stops cleanly if not.
        while not stop.wait(self.lease_seconds / 4):
            try:
                self.write_bytes(lease, self._lease(shared))
            except StoreUnavailable:
                pass
            except Exception:
                # A renewal still in the client when the lock ended (a store that failed the run:
                # lock() does not wait for it) may fail in any way while the process exits; its
                # traceback would follow the run's one-line stop. Before the end it is a bug: raised.
                if stop.is_set():
                    return
                raise


def _with_holder(refusal: InputError, holder: dict | None) -> InputError:
    """The refusal, saying who holds the lease in the way and until when it stands unrenewed."""
    if not holder or "host" not in holder:
        return refusal
    until = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(holder["expires"]))
    return InputError(
        refusal.field,
        refusal.value,
        f"{refusal.allowed} (its lease: {holder['host']}, pid {holder['pid']}, renewed while it runs; if that "
        f"process is gone, free from {until})",
    )


def open_store(value: str | Path | LocalStore | FsspecStore, field: str = "out") -> LocalStore | FsspecStore:
    """The store of a dataset given as a store, a local path or a URL of a scheme in
    STORE_SCHEMES; any other URL is refused (exit 2), never taken for a local folder."""
    if isinstance(value, (LocalStore, FsspecStore)):
        return value
    if isinstance(value, str) and URL.match(value):
        scheme, rest = value.split("://", 1)
        scheme = scheme.lower()  # a URL's scheme is case-insensitive; fsspec's registry is not
        if scheme not in STORE_SCHEMES:
            raise InputError(
                field,
                value,
                f"expected a local or mounted folder, or a URL of {', '.join(s + '://' for s in STORE_SCHEMES)}: "
                f"{scheme}:// is not written to yet (its conditional creates, which the locks rest on, are untested); "
                "write to a local folder and copy it to the store (azcopy, rclone, ...)",
            )
        return FsspecStore(_checked_url(scheme, rest, value, field), field)
    return LocalStore(value, field)


# A bucket's name. S3: 3-63 lowercase letters, digits, dots and hyphens, beginning and ending with
# a letter or digit. GCS: the same with underscores too, and up to 222 characters if dotted, each
# dot-separated part at most 63.
_BUCKET = {
    "s3": re.compile(r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$"),
    "gs": re.compile(r"^[a-z0-9][a-z0-9._\-]{1,220}[a-z0-9]$"),
}
_BUCKET_RULE = {
    "s3": "3-63 lowercase letters, digits, dots and hyphens",
    "gs": "3-63 lowercase letters, digits, dots, hyphens and underscores (up to 222 if dotted, 63 between dots)",
}


def _bucket_ok(scheme: str, bucket: str) -> bool:
    # GCS: 63 at most between dots (and so for an undotted name); S3's pattern already caps it
    return bool(_BUCKET[scheme].match(bucket)) and all(len(part) <= 63 for part in bucket.split("."))


def _checked_url(scheme: str, rest: str, value: str, field: str) -> str:
    """SCHEME://REST with a bucket (s3, gs) or a name (memory) and no empty, `.` or `..` parts,
    checked before anything is sent: `s3://` alone would be fsspec's local "s3:" folder, and
    s3:///x would take "x" for the bucket."""
    # memory:///x and memory://x are one place (its paths are absolute)
    parts = (rest.lstrip("/") if scheme == "memory" else rest).rstrip("/").split("/")
    bucketed = scheme != "memory"
    kind = "gs" if scheme in ("gs", "gcs") else scheme
    form = f"{scheme}://BUCKET/PREFIX" if bucketed else f"{scheme}://NAME"
    if not parts[0]:
        raise InputError(field, value, f"expected {form}: no {'bucket' if bucketed else 'name'} after {scheme}://")
    if bucketed and not _bucket_ok(kind, parts[0]):
        raise InputError(
            field,
            value,
            f"expected {form} with a bucket name of {_BUCKET_RULE[kind]}, beginning and ending with a letter "
            f"or digit; {parts[0]!r} is not one",
        )
    if any(part in ("", ".", "..") for part in parts[1:]):
        raise InputError(field, value, f"expected {form} with no empty, '.' or '..' parts in its path")
    return f"{scheme}://{rest.rstrip('/')}"  # as given, but for the scheme's case and trailing slashes


def as_store(value: str | Path | LocalStore | FsspecStore, field: str = "out") -> LocalStore | FsspecStore:
    """A store for a dataset given as a store, a path or a URL (open_store)."""
    return open_store(value, field)
