"""Files written so that a crash never leaves a half-written one under its final name.

`atomic_write_*` writes NAME.tmp, fsyncs it and renames it over NAME (a reader sees the old file
or the new one, never part of one); `fsync_dir` makes the renames in a folder durable;
`file_sha256` hashes a file of any size in blocks; `check_writable` refuses an output location
that cannot be written, before any work starts; `cache_root` is where built artifacts (and the
auto attention table) are kept between runs.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from pathlib import Path

from .errors import InputError

TMP_SUFFIX = ".tmp"  # partial files; never visible under a final name, removed by the next run


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + TMP_SUFFIX)
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def cache_root() -> Path:
    """$T2I_ENGINE_CACHE, else $XDG_CACHE_HOME/t2i-engine/artifacts (~/.cache/...)."""
    if os.environ.get("T2I_ENGINE_CACHE"):
        return Path(os.environ["T2I_ENGINE_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "t2i-engine" / "artifacts"


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# A URL's scheme (s3://, gs://, memory://): pathlib would take it for a local folder named "s3:"
URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://")
# A storage URL with one slash lost (s3:/bucket/x, as a shell variable or Path() leaves it): a
# local folder "s3:" is never what was meant; ./s3:/x still names one.
MISTYPED_URL = re.compile(r"^(s3|s3a|gs|gcs|az|abfs|abfss|memory|hdfs|https?|file):/(?!/)", re.IGNORECASE)


def check_local(value: str | Path, field: str) -> Path:
    """`value` as a local (or mounted network) path; a URL is refused, naming `field`: object
    storage is not written to yet, and Path("s3://b/x") would quietly become the local "s3:/b/x"."""
    if URL.match(str(value)):
        raise InputError(
            field,
            str(value),
            f"expected a local or mounted folder: {str(value).split('://')[0]}:// URLs are not read or written yet; "
            "write to a local folder and copy it to the store (aws s3 sync, gcloud storage rsync)",
        )
    if MISTYPED_URL.match(str(value)):
        scheme = str(value).split(":", 1)[0]
        raise InputError(
            field,
            str(value),
            f"looks like a {scheme}:// URL with a slash lost: write {scheme}://{str(value).split(':/', 1)[1]} "
            f"(or ./{value} for a local folder of that name)",
        )
    return Path(value)


def check_writable(path: Path, field: str, kind: str = "folder") -> None:
    """Refuse, naming `field`, an output `path` (a folder, or a file with kind="file") that cannot
    be created or written, before any work starts. The nearest existing folder is tried by making
    (and removing) a file in it: permission bits say nothing to root, and /proc, read-only mounts
    or a full quota refuse only when tried."""
    path = check_local(path, field)
    if path.is_symlink() and not path.exists():
        raise InputError(field, str(path), f"expected a {kind}; this is a link to nothing")
    if kind == "folder" and path.exists() and not path.is_dir():
        raise InputError(field, str(path), "expected a folder; a file of that name exists")
    if kind == "file" and path.is_dir():
        raise InputError(field, str(path), "expected a file path; this is a folder")
    existing = path if kind == "folder" else path.parent
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise InputError(field, str(path), f"cannot create it under {existing}, which is not a folder")
    try:
        fd, probe = tempfile.mkstemp(prefix=".t2i-engine-probe-", suffix=TMP_SUFFIX, dir=existing)
    except OSError as e:
        raise InputError(
            field, str(path), f"expected a writable location; {existing} refuses new files ({e.strerror})"
        ) from None
    os.close(fd)
    Path(probe).unlink(missing_ok=True)  # a run's cleanup of stale temporaries may have taken it already
