"""`t2i-engine status DIR`: what a dataset folder (or URL) holds and what is writing it, read
from its files alone: the manifest's recipe (planned, not materialised), one listing of the
committed shards, the run log (dataset/runlog.py) and the locks' holders. It takes no lock and
writes nothing, so it is safe beside a run, whatever runs it (one process, workers, parts on
other machines, Ray).
"""

from __future__ import annotations

import os
import re
import socket
import time
from pathlib import Path

import numpy as np

from ..dataset import manifest as dm
from ..dataset.layout import LOCK
from ..dataset.records import WorkUnit
from ..dataset.runlog import read_log
from ..dataset.shards import shard_files
from ..dataset.store import FsspecStore, LocalStore, as_store
from ..files import TMP_SUFFIX
from .plan import plan_units
from .verify import load_dataset_recipe

RECENT_SECONDS = 300  # "images/s over the last minutes"
PART_LOCK = re.compile(re.escape(LOCK) + r"\.part-(\d+)-of-(\d+)")


def dataset_status(location: str | Path | LocalStore | FsspecStore, now: float | None = None) -> dict:
    store = as_store(location, "dir")
    manifest, recipe = load_dataset_recipe(store)
    now = time.time() if now is None else now
    units = plan_units(recipe, dm.SEED_BITS[manifest["format"]])
    names = set(store.list("*"))
    done = [all(f in names for f in shard_files(u.name)) for u in units]
    sizes = np.array([u.size for u in units])
    done_mask = np.array(done, dtype=bool)
    log = read_log(store)
    total, made = int(sizes.sum()), int(sizes[done_mask].sum())
    remaining = total - made
    rates = _rates(log, remaining, now)
    recent = rates["recent_images_per_second"]
    locks = _locks(store, names, log, now)
    return {
        "dir": store.url,
        "complete": bool(manifest.get("complete")),
        "images": {"planned": total, "done": made, "remaining": remaining},
        "shards": {
            "planned": len(units),
            "done": int(done_mask.sum()),
            "in_flight": _in_flight(store, names, log, locks),
        },
        "parts": _parts(names, units, done_mask, sizes),
        "classes": _classes(recipe, units, done_mask),
        **rates,
        "eta_seconds": round(remaining / recent) if recent and remaining else (0 if not remaining else None),
        "locks": locks,
        "errors": [_brief(line) for line in log if line.get("event") == "error"][-5:],
        "log_lines": len(log),
    }


def _in_flight(store, names: set[str], log: list[dict], locks: list[dict]) -> int:
    """Shards being written now: on a local folder, their staged files beside the data; at a URL,
    where they are staged on the writers' machines, the shards the log says this run began and
    that are not committed, while some holder of the dataset's leases is alive (a run killed
    whole leaves its begun shards behind; a lost Ray actor's unit is begun again elsewhere)."""
    if not isinstance(store, FsspecStore):
        return sum(1 for n in names if n.endswith(".tar" + TMP_SUFFIX))
    if not any(lock["state"] == "live" for lock in locks):
        return 0
    starts = [line.get("time", 0) for line in log if line.get("event") == "start"]
    since = max(starts, default=0)
    begun = {line.get("shard") for line in log if line.get("event") == "begin" and line.get("time", 0) >= since}
    return sum(1 for shard in begun if shard and shard_files(shard)[2] not in names)


def _parts(names: set[str], units, done_mask: np.ndarray, sizes: np.ndarray) -> list[dict]:
    """Per part of each split found (the part locks' names): its images done and remaining."""
    splits = sorted({int(m.group(2)) for n in names if (m := PART_LOCK.match(n))})
    shard = np.arange(len(units))
    out = []
    for n in splits:
        for i in range(n):
            mine = shard % n == i
            out.append(
                {
                    "part": f"{i}/{n}",
                    "done": int(sizes[mine & done_mask].sum()),
                    "remaining": int(sizes[mine & ~done_mask].sum()),
                }
            )
    return out


def _classes(recipe, units, done_mask: np.ndarray) -> list[dict]:
    """Per class: images done and planned, counted from each unit's run of sample indices
    (sample i is of class i mod C), so no sample is made."""
    n_classes = len(recipe.classes)
    planned, made = np.zeros(n_classes, dtype=np.int64), np.zeros(n_classes, dtype=np.int64)
    c = np.arange(n_classes)
    for unit, is_done in zip(units, done_mask):
        counts = _class_counts(unit, c, n_classes)
        planned += counts
        if is_done:
            made += counts
    return [
        {"class_id": cls.id, "done": int(d), "remaining": int(p - d)}
        for cls, d, p in zip(recipe.classes, made, planned)
    ]


def _class_counts(unit: WorkUnit, c: np.ndarray, n_classes: int) -> np.ndarray:
    if unit.start is None:  # a unit given its samples
        return np.bincount([s.class_index for s in unit.samples], minlength=n_classes)
    a, b = unit.start, unit.start + unit.size  # indices i in [a, b) with i % C == c
    return (b - c + n_classes - 1) // n_classes - (a - c + n_classes - 1) // n_classes


def _rates(log: list[dict], remaining: int, now: float) -> dict:
    """Images/s since this run's start (the log's last "start"; a resumed dataset's earlier runs
    do not dilute it) and over the last RECENT_SECONDS, and per writer (`host:worker`: images and
    images/s over the seconds it spent on its shards), from the shard lines."""
    shards = [line for line in log if line.get("event") == "shard" and "time" in line]
    writers: dict[str, dict] = {}
    for line in shards:
        key = f"{line.get('host', '?')}:{line.get('worker') or line.get('device', '?')}"
        w = writers.setdefault(key, {"device": line.get("device"), "images": 0, "seconds": 0.0, "last": 0.0})
        w["images"] += line.get("images", 0)
        w["seconds"] += line.get("seconds", 0.0)
        w["last"] = max(w["last"], line["time"])
    for w in writers.values():
        w["images_per_second"] = round(w["images"] / w["seconds"], 3) if w["seconds"] > 0 else None
        w["seconds"] = round(w["seconds"], 3)
    starts = [line["time"] for line in log if line.get("event") == "start"]
    since = max(starts) if starts else min((line["time"] - line.get("seconds", 0) for line in shards), default=now)
    run = [line for line in shards if line["time"] >= since]
    end = now if remaining else max((line["time"] for line in run), default=now)  # a finished run: its own span
    recent_from = max(now - RECENT_SECONDS, since)
    recent = sum(line.get("images", 0) for line in run if line["time"] >= recent_from)
    return {
        "images_per_second": round(sum(line.get("images", 0) for line in run) / (end - since), 3)
        if run and end > since
        else None,
        "recent_images_per_second": round(recent / (now - recent_from), 3)
        if remaining and now > recent_from
        else None,
        "writers": writers,
    }


def _locks(store, names: set[str], log: list[dict], now: float) -> list[dict]:
    """Who holds the dataset's locks now, read without taking any: at a URL the leases (live, or
    not renewed lately: a dead holder's, free once it expires); on a local folder the kernel's
    flocks on this machine (/proc/locks), and runs the log says started here whose process is gone."""
    if isinstance(store, FsspecStore):
        return _leases(store, names, now)
    held = _flock_holders(store, names)
    stopped = {(line.get("host"), line.get("pid")) for line in log if line.get("event") in ("stop", "error")}
    here = socket.gethostname()
    for line in log:
        if line.get("event") != "start" or (line.get("host"), line.get("pid")) in stopped:
            continue
        if line.get("host") == here and not _alive(line.get("pid")):
            held.append(
                {"lock": line.get("lock", LOCK), "holder": f"{here}, pid {line.get('pid')}", "state": "dead",
                 "note": "killed without a word; its lock went with it (the kernel's), rerun to resume"}
            )  # fmt: skip
    return held


def _leases(store: FsspecStore, names: set[str], now: float) -> list[dict]:
    out = []
    for name in sorted(names):
        if not name.startswith(LOCK + "."):
            continue
        tail = name[len(LOCK) + 1 :]
        if not (tail.rsplit(".", 1)[-1].isdigit() or ".shared-" in f".{tail}" or tail.startswith("shared-")):
            continue  # .parts records, not leases
        record = store.lease(name)
        if not record or "expires" not in record or "host" not in record:
            continue
        left, length = record["expires"] - now, record.get("seconds", store.lease_seconds)
        lock = name.rsplit(".shared-", 1)[0] if ".shared-" in name else name.rsplit(".", 1)[0]
        # a live holder renews every quarter of its lease: half a lease unrenewed is a silent one
        state = "live" if left > 0.5 * length else ("stale" if left > 0 else "expired")
        out.append(
            {
                "lock": lock,
                "holder": f"{record['host']}, pid {record['pid']}",
                "state": state,
                "note": {
                    "live": "renewed lately",
                    "stale": f"not renewed for {length - left:.0f} s: its holder is probably gone; "
                    f"free in {left:.0f} s",
                    "expired": "expired: the next run takes it over",
                }[state],
            }
        )
    return out


def _flock_holders(store: LocalStore, names: set[str]) -> list[dict]:
    """The flocks on the dataset's lock files held on this machine (Linux's /proc/locks)."""
    inodes = {}
    for name in names:
        if name == LOCK or name.startswith(LOCK + "."):
            try:
                st = os.stat(store.path(name))
            except OSError:
                continue
            inodes[f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"] = name
    out = []
    try:
        lines = Path("/proc/locks").read_text().splitlines()
    except OSError:
        return out
    for line in lines:
        fields = line.split()
        if len(fields) < 6 or fields[1] != "FLOCK":  # a waiter's line reads "N: -> FLOCK ..."
            continue
        mode, pid, where = fields[3], fields[4], fields[5]
        if where in inodes:
            out.append(
                {"lock": inodes[where], "holder": f"{socket.gethostname()}, pid {pid}", "state": "live",
                 "note": "shared" if mode == "READ" else "exclusive"}
            )  # fmt: skip
    return out


def _alive(pid) -> bool:
    try:
        os.kill(int(pid), 0)
    except (OSError, TypeError, ValueError):
        return False
    return True


def _brief(line: dict) -> dict:
    return {k: line.get(k) for k in ("time", "host", "pid", "part", "device", "message") if k in line}


def format_status(st: dict, now: float | None = None) -> str:
    """`status` as lines for a person (the dict itself is `--json`)."""
    now = time.time() if now is None else now
    im, sh = st["images"], st["shards"]
    share = 100.0 * im["done"] / im["planned"] if im["planned"] else 100.0
    state = (
        "complete" if st["complete"] else ("all shards written" if not im["remaining"] else "in progress or stopped")
    )
    flight = f", {sh['in_flight']} being written"
    lines = [
        f"{st['dir']}: {im['done']:,} of {im['planned']:,} images ({share:.1f}%), "
        f"{sh['done']:,} of {sh['planned']:,} shards{flight}; {state}"
    ]
    if st["images_per_second"] is not None:
        recent = st["recent_images_per_second"]
        eta = st["eta_seconds"]
        lines.append(
            f"  rate: {st['images_per_second']:.1f} images/s since this run's start"
            + ("" if recent is None else f", {recent:.1f} over the last {RECENT_SECONDS // 60} min")
            + ("" if eta is None or not im["remaining"] else f"; ETA {_duration(eta)}")
        )
    for key, w in st["writers"].items():
        rate = "" if w["images_per_second"] is None else f", {w['images_per_second']:.1f}/s"
        lines.append(
            f"  writer {key} ({w['device']}): {w['images']:,} images{rate}, last shard {_ago(now - w['last'])}"
        )
    for p in st["parts"]:
        lines.append(f"  part {p['part']}: {p['done']:,} done, {p['remaining']:,} left")
    left = [c for c in st["classes"] if c["remaining"]]
    if left:
        worst = sorted(left, key=lambda c: c["done"] / (c["done"] + c["remaining"]))[:3]
        shown = ", ".join(f"{c['class_id']} {c['done']}/{c['done'] + c['remaining']}" for c in worst)
        lines.append(f"  classes: {len(left)} of {len(st['classes'])} with images left (least done: {shown})")
    else:
        lines.append(f"  classes: all {len(st['classes'])} done")
    for lock in st["locks"]:
        lines.append(f"  lock {lock['lock']}: {lock['holder']}, {lock['state']} ({lock['note']})")
    if not st["locks"]:
        lines.append("  locks: none held")
    for e in st["errors"]:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(e.get("time", 0)))
        lines.append(f"  error {when} UTC on {e.get('host')}, pid {e.get('pid')}: {e.get('message')}")
    return "\n".join(lines)


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"


def _ago(seconds: float) -> str:
    return f"{_duration(max(0, seconds))} ago"
