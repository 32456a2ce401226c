"""Errors raised for bad input, before any expensive work starts.

Every message names the input (a recipe field, a flag, a file), the bad value, and what would be
accepted, on one line. The CLI turns them into exit code 2.
"""

from __future__ import annotations

import errno
import reprlib
import threading


class InputError(ValueError):
    """Bad user input: a recipe field, a flag, a file or an output folder."""

    def __init__(self, field: str, value: object, allowed: str):
        self.field, self.value, self.allowed = field, value, allowed
        shown = _short(value)
        super().__init__(f"{field}: {shown} is not allowed; {allowed}")

    def __reduce__(self):  # across processes (Ray actors) with its fields, not only its message
        return type(self), (self.field, self.value, self.allowed)


class ModelUnavailable(InputError):
    """The weights of a registry model are neither on disk nor reachable."""


# A full disk or quota, or a file-size limit (RLIMIT_FSIZE, with SIGXFSZ ignored as the CLI does).
SPACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


class OutOfSpace(Exception):
    """A shard could not be written for want of space. Nothing partial stays under a final name;
    the committed shards stay, and the same command rerun with space resumes. The CLI exits 1."""

    def __init__(self, folder, shard_bytes: int, shards_left: int, error: OSError):
        self.folder, self.shard_bytes, self.shards_left, self.error = folder, shard_bytes, shards_left, error
        super().__init__(
            f"{folder}: no space to write its shards ({error.strerror}); one needs about {_size(shard_bytes)}, the "
            f"{shards_left} still to write about {_size(shard_bytes * shards_left)}; free space there (or raise the "
            "file-size limit) and rerun the same command: committed shards are kept"
        )

    def __reduce__(self):
        return type(self), (self.folder, self.shard_bytes, self.shards_left, self.error)


class StoreUnavailable(Exception):
    """The store a dataset lives at (an fsspec URL) did not answer, past its client's retries, or
    refused a request mid-run (credentials expired, a server error). Nothing uncommitted counts as
    written; the committed shards stay, and the same command rerun once the store answers resumes.
    The CLI exits 1 with this one line."""

    def __init__(self, url: str, error: str):
        self.url, self.error = url, error
        super().__init__(
            f"{url}: the store failed a request ({error}); the shards committed there are kept: rerun the same "
            "command once it answers"
        )

    def __reduce__(self):
        return type(self), (self.url, self.error)


def _size(n: int) -> str:
    return f"{n / 2**20:.1f} MB" if n >= 2**20 else f"{max(1, round(n / 2**10))} KB"


_REPR = reprlib.Repr()
_REPR.maxstring, _REPR.maxother, _REPR.maxlevel = 100, 100, 3


def _short(value: object, limit: int = 120) -> str:
    # reprlib bounds the work too: a YAML alias bomb must not take minutes to print.
    text = _REPR.repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_text(value: str, field: str) -> str:
    """Text must be encodable as UTF-8 (a lone surrogate from JSON/YAML escapes is not)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InputError(field, value, "expected text encodable as UTF-8 (no lone surrogate escapes)") from None
    return value


class Terminated(KeyboardInterrupt):
    """SIGTERM (what Slurm sends at preemption and at the time limit, and `kill`'s default): the run
    stops as on Ctrl-C (workers stopped, committed shards kept) and the process exits 143."""


# A stop a signal handler asked for (SIGTERM's, and Ctrl-C's where the CLI handles it). The
# handler raises at once, but Python swallows an exception raised while a finalizer (`__del__`, a
# tqdm bar's, say) or a weakref callback runs: the flag stays, and the runner (between batches),
# the --devices parent (between polls) and the CLI (when the command returns) raise it again.
_STOP = threading.Event()
_STOP_AS: list[type[KeyboardInterrupt]] = [Terminated]


def request_stop(exception: type[KeyboardInterrupt] = Terminated) -> None:
    """Record a stop, to be raised as `exception` (Terminated, or KeyboardInterrupt for Ctrl-C);
    the first one asked for stands."""
    if not _STOP.is_set():
        _STOP_AS[0] = exception
        _STOP.set()


def raise_if_stopped() -> None:
    """Raise the stop a signal handler asked for, if one did."""
    if _STOP.is_set():
        raise _STOP_AS[0]()


def clear_stop() -> None:
    _STOP.clear()
    _STOP_AS[0] = Terminated
