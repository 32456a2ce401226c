"""Where a dataset's files live, behind one small interface that every reader and writer of a
dataset folder goes through (issue 34): today a local (or mounted) folder, `LocalStore`; an
fsspec URL (s3://, gs://, memory://) is the next implementation of the same methods.

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
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from ..errors import InputError
from ..files import TMP_SUFFIX, atomic_write_bytes, check_local, check_writable, file_sha256, fsync_dir


class LocalStore:
    """A dataset in a local (or mounted network) folder: today's files, byte for byte."""

    def __init__(self, root: str | Path, field: str = "out"):
        self.root = check_local(root, field)
        self.url = str(self.root)  # what a worker process or a Ray actor reopens
        self.field = field

    def __repr__(self) -> str:
        return f"LocalStore({self.url!r})"

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


def as_store(value: str | Path | LocalStore, field: str = "out") -> LocalStore:
    """A store for a dataset given as a store, a path or (refused until issue 34's fsspec store
    lands, by files.check_local) a URL."""
    return value if isinstance(value, LocalStore) else LocalStore(value, field)
