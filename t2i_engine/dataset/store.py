"""Where a dataset's files live, behind one small interface that every reader and writer of a
dataset folder goes through (issue 34): a local (or mounted) folder, `LocalStore`, or an fsspec
URL, `FsspecStore`: memory:// today (one process: tests, and a dataset made and read in one
program); s3:// and gs:// next, once their locks are lease objects (until then refused).

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

import fcntl
import hashlib
import os
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from ..errors import InputError
from ..files import TMP_SUFFIX, URL, atomic_write_bytes, check_local, check_writable, file_sha256, fsync_dir

# The URL schemes a dataset can live at; others are refused with exit 2, naming these.
STORE_SCHEMES = ("memory",)


class LocalStore:
    """A dataset in a local (or mounted network) folder: today's files, byte for byte."""

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

    def remove_tree(self, name: str) -> None:
        shutil.rmtree(self.path(name), ignore_errors=True)

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
    name counts, removing it if either differs; `move` is copy then delete. Locks: memory://
    lives in one process, so they are the process's (a lease object per lock is the plan for
    s3:// and gs://)."""

    _locks: dict[str, list[int]] = {}  # memory:// locks: name -> [exclusive holders, shared holders]
    _guard = threading.Lock()

    def __init__(self, url: str, field: str = "out"):
        import fsspec  # optional: fsspec (datasets and webdataset bring it)

        self.url, self.field = url.rstrip("/"), field
        self.fs, self.root = fsspec.core.url_to_fs(self.url)
        self.root = self.root.rstrip("/")

    def __repr__(self) -> str:
        return f"FsspecStore({self.url!r})"

    def __str__(self) -> str:
        return self.url

    @property
    def name(self) -> str:
        return self.root.rsplit("/", 1)[-1]

    def path(self, name: str = "") -> str:
        return f"{self.root}/{name}" if name else self.root

    def exists(self, name: str = "") -> bool:
        return self.fs.exists(self.path(name))

    def list(self, pattern: str) -> list[str]:
        return sorted(p.rsplit("/", 1)[-1] for p in self.fs.glob(self.path(pattern)))

    def read_bytes(self, name: str) -> bytes:
        return self.fs.cat_file(self.path(name))

    def read_text(self, name: str) -> str:
        return self.read_bytes(name).decode("utf-8")

    def open_read(self, name: str) -> BinaryIO:
        return self.fs.open(self.path(name), "rb")

    def size(self, name: str) -> int:
        return self.fs.size(self.path(name))

    def sha256(self, name: str) -> str:
        h = hashlib.sha256()
        with self.open_read(name) as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        return h.hexdigest()

    def check_writable(self) -> None:
        probe = f".t2i-engine-probe-{uuid.uuid4().hex}"
        try:
            self.write_bytes(probe, b"")
            self.remove(probe)
        except OSError as e:
            raise InputError(
                self.field, self.url, f"expected a writable location ({e.__class__.__name__}: {e})"
            ) from None

    def makedirs(self, name: str = "") -> None:
        self.fs.makedirs(self.path(name), exist_ok=True)

    def write_bytes(self, name: str, data: bytes) -> None:
        self.fs.pipe_file(self.path(name), data)

    def write_text(self, name: str, text: str) -> None:
        self.write_bytes(name, text.encode("utf-8"))

    @contextmanager
    def stage(self, name: str) -> Iterator[tuple[BinaryIO, Path]]:
        """A local file to build `name` in (the machine's temporary folder), removed when it ends
        by an exception; `publish` uploads it."""
        fd, local = tempfile.mkstemp(prefix=f"t2i-engine-{name}-", suffix=TMP_SUFFIX)
        staged = Path(local)
        try:
            with os.fdopen(fd, "wb") as f:
                yield f, staged
        except BaseException:
            staged.unlink(missing_ok=True)
            raise

    def publish(self, staged: Path, name: str, *, size: int, sha256: str) -> None:
        try:
            self.fs.put_file(str(staged), self.path(name))
            if self.size(name) != size or self.sha256(name) != sha256:
                self.remove(name)
                raise OSError(f"{self.url}/{name}: the upload does not read back as written (size or sha256)")
        finally:
            staged.unlink(missing_ok=True)

    def remove(self, name: str) -> None:
        try:
            self.fs.rm_file(self.path(name))
        except FileNotFoundError:
            pass

    def move(self, name: str, dest: str) -> None:
        self.fs.copy(self.path(name), self.path(dest))
        self.remove(name)

    def sync(self) -> None:
        return None  # a put is durable once it returns

    @contextmanager
    def lock(
        self, name: str, *, shared: bool = False, wait: bool = False, refusal: InputError | None = None
    ) -> Iterator[None]:
        key = self.path(name)
        while True:
            with self._guard:
                held = self._locks.setdefault(key, [0, 0])
                free = held[0] == 0 and (shared or held[1] == 0)
                if free:
                    held[1 if shared else 0] += 1
            if free:
                break
            if not wait:
                raise refusal
            time.sleep(0.05)
        try:
            yield None
        finally:
            with self._guard:
                self._locks[key][1 if shared else 0] -= 1


def open_store(value: str | Path | LocalStore | FsspecStore, field: str = "out") -> LocalStore | FsspecStore:
    """The store of a dataset given as a store, a local path or a URL of a scheme in
    STORE_SCHEMES; any other URL is refused (exit 2), never taken for a local folder."""
    if isinstance(value, (LocalStore, FsspecStore)):
        return value
    if isinstance(value, str) and URL.match(value):
        scheme = value.split("://", 1)[0].lower()
        if scheme not in STORE_SCHEMES:
            raise InputError(
                field,
                value,
                f"expected a local or mounted folder, or a URL of {', '.join(s + '://' for s in STORE_SCHEMES)}: "
                f"{scheme}:// is not written to yet (its locks need lease objects); write to a local folder and copy "
                "it to the store (aws s3 sync, gcloud storage rsync)",
            )
        return FsspecStore(value, field)
    return LocalStore(value, field)


def as_store(value: str | Path | LocalStore | FsspecStore, field: str = "out") -> LocalStore | FsspecStore:
    """A store for a dataset given as a store, a path or a URL (open_store)."""
    return open_store(value, field)
