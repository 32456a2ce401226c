"""Checking a dataset's shards against its plan, and moving bad ones aside, through the store.

The engine plans the units from the dataset's recipe (engine/verify.py); here, for every planned
shard: the tar exists and hashes to the sha256 in its stats file (and in the manifest, once
complete); it parses; it holds exactly the planned keys, each with an image, a .cls equal to the
planned class index and a .json agreeing with the plan; each image hashes to its index line.
Across shards every key appears once, and no unplanned shard lies in the folder. `repair` moves
the files of bad shards into `_rejected/` so that rerunning `generate` regenerates exactly those.
"""

from __future__ import annotations

import hashlib
import json
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from .layout import MANIFEST, REJECTED
from .locks import exclusive_lock
from .manifest import mark_incomplete
from .records import WorkUnit
from .scores import scores_file
from .shards import shard_files
from .store import LocalStore, as_store


@dataclass(frozen=True)
class Problem:
    shard: str | None  # "NNNNNN", or None for dataset-wide problems
    message: str

    def __str__(self) -> str:
        return f"{self.shard}.tar: {self.message}" if self.shard else self.message


def check_shards(
    out: Path | LocalStore,
    units: list[WorkUnit],
    *,
    extension: str,
    default_model: str,
    recorded: dict[str, str],
    complete: bool,
    only: set[str] | None = None,
) -> list[Problem]:
    """Every problem of the folder's shards against the planned `units`; `recorded`: the
    manifest's sha256 per tar name, `default_model`: the model a sample's JSON names outside a
    mixture; `only`: the names of the units to check (a subset's), None for all."""
    store = as_store(out)
    problems: list[Problem] = []
    seen: dict[str, str] = {}
    for unit in units if only is None else [u for u in units if u.name in only]:
        problems += _verify_unit(store, unit, extension, default_model, recorded.get(f"{unit.name}.tar"), seen)
    planned = {f"{u.name}.tar" for u in units}
    for tar in store.list("*.tar"):
        if tar not in planned:
            problems.append(Problem(tar.removesuffix(".tar"), "not a shard of this recipe's plan"))
    if complete and len(recorded) != len(units):
        problems.append(Problem(None, f"{MANIFEST} lists {len(recorded)} shards; the plan has {len(units)}"))
    return problems


def _verify_unit(
    store: LocalStore,
    unit: WorkUnit,
    extension: str,
    default_model: str,
    recorded_sha: str | None,
    seen: dict[str, str],
) -> list[Problem]:
    tar_name, index_name, stats_name = shard_files(unit.name)
    bad = lambda msg: Problem(unit.name, msg)  # noqa: E731
    if not store.exists(tar_name):
        return [bad(f"missing ({unit.size} planned samples)")]
    if not store.exists(stats_name) or not store.exists(index_name):
        return [bad(f"missing its {'stats' if not store.exists(stats_name) else 'index'} file")]
    problems = []
    sha = store.sha256(tar_name)
    try:
        stats = json.loads(store.read_text(stats_name))
        index = [json.loads(line) for line in store.read_text(index_name).splitlines() if line.strip()]
        if not isinstance(stats, dict) or not all(isinstance(row, dict) for row in index):
            raise ValueError("not JSON objects")
    except (OSError, ValueError) as e:
        return [bad(f"unreadable stats or index file ({e.__class__.__name__})")]
    if sha != stats.get("sha256"):
        problems.append(bad(f"sha256 {sha[:12]}... differs from the recorded {str(stats.get('sha256'))[:12]}..."))
    elif recorded_sha is not None and sha != recorded_sha:
        problems.append(bad(f"sha256 {sha[:12]}... differs from {MANIFEST}'s {recorded_sha[:12]}..."))

    size = store.size(tar_name)
    if stats.get("count") != unit.size or stats.get("bytes") != size:
        problems.append(
            bad(
                f"stats record {stats.get('count')} samples / {stats.get('bytes')} bytes; "
                f"planned {unit.size}, file has {size} bytes"
            )
        )
    planned_rows = [s.identity() for s in unit.samples]
    if [{k: row.get(k) for k in planned_rows[0]} for row in index] != planned_rows:
        problems.append(bad("its index disagrees with the plan (keys, labels, prompts or seeds)"))
    index_sha = {row.get("key"): row.get("sha256") for row in index}
    try:
        with store.open_read(tar_name) as raw:
            members = _read_members(raw)
    except (tarfile.TarError, EOFError, OSError) as e:
        return problems + [bad(f"unreadable tar, truncated or corrupt ({e.__class__.__name__}: {e})")]

    expected = {f"{s.key}.{ext}" for s in unit.samples for ext in (extension, "cls", "json")}
    for name in sorted(set(members) - expected):
        problems.append(bad(f"unplanned member {name}"))
    for sample in unit.samples:
        key = sample.key
        if key in seen:
            problems.append(bad(f"key {key} also in shard {seen[key]}"))
        seen[key] = unit.name
        got = {ext: members.get(f"{key}.{ext}") for ext in (extension, "cls", "json")}
        missing = [ext for ext, data in got.items() if data is None]
        if missing:
            problems.append(bad(f"sample {key} lacks {', '.join(missing)}"))
            continue
        if got["cls"] != str(sample.class_index).encode():
            problems.append(bad(f"sample {key} has label {got['cls']!r}; planned {sample.class_index}"))
        try:
            meta = json.loads(got["json"])
        except ValueError:
            meta = None
        planned = {
            "key": key,
            "class_index": sample.class_index,
            "class_id": sample.class_id,
            "class_name": sample.class_name,
            "prompt": sample.prompt,
            "seed": sample.seed,
            "model": sample.model or default_model,  # a mixture's: the generator the plan gave it
        }
        if not isinstance(meta, dict) or any(meta.get(k) != v for k, v in planned.items()):
            problems.append(bad(f"sample {key}: its json disagrees with the plan"))
        image_sha = hashlib.sha256(got[extension]).hexdigest()
        if index_sha.get(key) != image_sha:
            problems.append(bad(f"sample {key}: image sha256 differs from the index"))
    return problems


def _read_members(raw: BinaryIO) -> dict[str, bytes]:
    members: dict[str, bytes] = {}
    with tarfile.open(fileobj=raw, mode="r:") as tar:
        for info in tar:
            f = tar.extractfile(info)
            data = f.read() if f is not None else b""
            if len(data) != info.size:
                raise EOFError(f"member {info.name} is cut short")
            if info.name in members:
                raise tarfile.TarError(f"member {info.name} appears twice")
            members[info.name] = data
    return members


def repair(out: Path | LocalStore, problems: list[Problem]) -> list[str]:
    """Move every file of each bad shard into _rejected/<time>/; return the moved names (relative
    to the dataset's root)."""
    store = as_store(out)
    bad = sorted({p.shard for p in problems if p.shard is not None})
    if not bad:
        return []
    moved = []
    with exclusive_lock(store):
        dest = f"{REJECTED}/{time.strftime('%Y%m%d-%H%M%S')}"
        store.makedirs(dest)
        for name in bad:
            for file in (*shard_files(name), scores_file(name)):  # a remade shard is scored again
                if store.exists(file):
                    store.move(file, f"{dest}/{file}")
                    moved.append(f"{dest}/{file}")
        mark_incomplete(store)
    return moved
