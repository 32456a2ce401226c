"""Who may write a dataset folder at once: a whole run alone, or the parts of one split side by
side (each part once), and the parts' last look at the folder one at a time. Held through the
store's locks (LocalStore: flock, released by the kernel when a process dies)."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

from ..errors import InputError
from .layout import LOCK
from .store import LocalStore, as_store


@contextmanager
def exclusive_lock(out: Path | LocalStore):
    """Hold the folder's lock for a whole run: two runs writing one folder would race on its files."""
    store = as_store(out)
    busy = InputError(
        "out", store.url, "another t2i-engine process is writing this folder; wait for it or choose another folder"
    )
    with store.lock(LOCK, refusal=busy) as fd:
        yield fd  # forked helpers that may outlive a killed run should close their copy


@contextmanager
def part_locks(out: Path | LocalStore, part: tuple[int, int]):
    """A part shares the folder with the other parts (a whole-folder run is kept out) and holds
    its own part exclusively (the same part started twice is refused)."""
    store = as_store(out)
    i, n = part
    busy = InputError(
        "out", store.url, "a run of the whole dataset is writing this folder; wait for it, or run parts only"
    )
    with store.lock(LOCK, shared=True, refusal=busy) as fd:
        same = InputError(
            "--part", f"{i}/{n}", "this part is already running on this folder; each part runs once at a time"
        )
        with store.lock(f"{LOCK}.part-{i}-of-{n}", refusal=same):
            with finalize_lock(store):
                _check_split(store, i, n)
            yield fd


def _check_split(store: LocalStore, i: int, n: int) -> None:
    """Parts of another split (0/3 beside 0/2) would write the same shards at once: refuse while
    any of them runs. A finished split of another N is no obstacle."""
    record = f"{LOCK}.parts"
    text = store.read_text(record).strip() if store.exists(record) else ""
    other = int(text) if text.isdigit() else n
    if other != n:
        for j in range(other):
            if store.held(f"{LOCK}.part-{j}-of-{other}"):
                raise InputError(
                    "--part",
                    f"{i}/{n}",
                    f"parts of another split (part {j}/{other}) are writing this folder; "
                    f"use --part I/{other}, or wait for them",
                )
    store.write_text(record, f"{n}\n")


@contextmanager
def finalize_lock(out: Path | LocalStore):
    """Serialises the parts' last look at the folder: whoever finishes last writes the manifest."""
    with as_store(out).lock(f"{LOCK}.finalize", wait=True) as fd:
        yield fd
