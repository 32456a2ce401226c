"""`verify`: prove a dataset folder holds exactly what its recipe plans.

The plan is rebuilt from the recipe stored in `dataset.json` (no class or caption file is read
again). For every planned shard: the tar exists and hashes to the sha256 in its stats file (and
in the manifest, once complete); it parses; it holds exactly the planned keys, each with an
image, a .cls equal to the planned class index and a .json agreeing with the plan; each image
hashes to its index line. Across shards every key appears once, and no unplanned shard lies in
the folder. `repair` moves the files of bad shards into `_rejected/` so that rerunning
`generate` regenerates exactly those (bit-exact, on the same backend and device type).
"""

from __future__ import annotations

import hashlib
import json
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path

from ..dataset import manifest as dm
from ..dataset.locks import exclusive_lock
from ..dataset.records import WorkUnit
from ..dataset.shards import shard_paths
from ..errors import InputError
from ..files import file_sha256
from .plan import plan_units
from .recipe import Recipe

REJECTED = "_rejected"


@dataclass(frozen=True)
class Problem:
    shard: str | None  # "NNNNNN", or None for dataset-wide problems
    message: str

    def __str__(self) -> str:
        return f"{self.shard}.tar: {self.message}" if self.shard else self.message


def load_dataset_recipe(out_dir: Path) -> tuple[dict, Recipe]:
    """The manifest and its recipe, which must still hash to the recorded recipe hash: a damaged
    recipe would plan another dataset, and repair would then move good shards aside."""
    if not out_dir.is_dir():
        raise InputError("dir", str(out_dir), "expected a dataset folder made by `t2i-engine generate`")
    manifest = dm.read_manifest(out_dir)
    if manifest is None:
        raise InputError("dir", str(out_dir), f"expected a dataset folder holding {dm.MANIFEST}")
    try:
        recipe = Recipe.from_dict(manifest["recipe"])
        intact = recipe.content_hash() == manifest["recipe_hash"]
    except (KeyError, TypeError, ValueError, AttributeError):
        intact = False
    if not intact:
        raise InputError(
            "dir",
            str(out_dir),
            f"the recipe in its {dm.MANIFEST} is damaged (it no longer matches its recipe_hash); "
            "restore the file, or regenerate into a new folder",
        )
    return manifest, recipe


def verify_dataset(out_dir: Path) -> list[Problem]:
    out_dir = Path(out_dir)
    manifest, recipe = load_dataset_recipe(out_dir)
    units = plan_units(recipe, dm.SEED_BITS[manifest["format"]])
    recorded = {s["name"]: s["sha256"] for s in manifest.get("shards", [])}
    problems: list[Problem] = []
    seen: dict[str, str] = {}
    for unit in units:
        problems += _verify_unit(out_dir, unit, recipe, recorded.get(f"{unit.name}.tar"), seen)
    planned = {f"{u.name}.tar" for u in units}
    for tar in sorted(out_dir.glob("*.tar")):
        if tar.name not in planned:
            problems.append(Problem(tar.stem, "not a shard of this recipe's plan"))
    if manifest.get("complete") and len(recorded) != len(units):
        problems.append(Problem(None, f"{dm.MANIFEST} lists {len(recorded)} shards; the plan has {len(units)}"))
    return problems


def _verify_unit(
    out_dir: Path, unit: WorkUnit, recipe: Recipe, recorded_sha: str | None, seen: dict[str, str]
) -> list[Problem]:
    tar_path, index_path, stats_path = shard_paths(out_dir, unit.name)
    bad = lambda msg: Problem(unit.name, msg)  # noqa: E731
    if not tar_path.exists():
        return [bad(f"missing ({len(unit.samples)} planned samples)")]
    if not stats_path.exists() or not index_path.exists():
        return [bad(f"missing its {'stats' if not stats_path.exists() else 'index'} file")]
    problems = []
    sha = file_sha256(tar_path)
    try:
        stats = json.loads(stats_path.read_text(encoding="utf-8"))
        index = [json.loads(line) for line in index_path.read_text(encoding="utf-8").splitlines() if line.strip()]
        if not isinstance(stats, dict) or not all(isinstance(row, dict) for row in index):
            raise ValueError("not JSON objects")
    except (OSError, ValueError) as e:
        return [bad(f"unreadable stats or index file ({e.__class__.__name__})")]
    if sha != stats.get("sha256"):
        problems.append(bad(f"sha256 {sha[:12]}... differs from the recorded {str(stats.get('sha256'))[:12]}..."))
    elif recorded_sha is not None and sha != recorded_sha:
        problems.append(bad(f"sha256 {sha[:12]}... differs from {dm.MANIFEST}'s {recorded_sha[:12]}..."))

    if stats.get("count") != len(unit.samples) or stats.get("bytes") != tar_path.stat().st_size:
        problems.append(
            bad(
                f"stats record {stats.get('count')} samples / {stats.get('bytes')} bytes; "
                f"planned {len(unit.samples)}, file has {tar_path.stat().st_size} bytes"
            )
        )
    planned_rows = [
        {
            "key": s.key,
            "class_index": s.class_index,
            "class_id": s.class_id,
            "class_name": s.class_name,
            "prompt": s.prompt,
            "seed": s.seed,
        }
        for s in unit.samples
    ]
    if [{k: row.get(k) for k in planned_rows[0]} for row in index] != planned_rows:
        problems.append(bad("its index disagrees with the plan (keys, labels, prompts or seeds)"))
    index_sha = {row.get("key"): row.get("sha256") for row in index}
    try:
        members = _read_members(tar_path)
    except (tarfile.TarError, EOFError, OSError) as e:
        return problems + [bad(f"unreadable tar, truncated or corrupt ({e.__class__.__name__}: {e})")]

    expected = {f"{s.key}.{ext}" for s in unit.samples for ext in (recipe.extension, "cls", "json")}
    for name in sorted(set(members) - expected):
        problems.append(bad(f"unplanned member {name}"))
    for sample in unit.samples:
        key = sample.key
        if key in seen:
            problems.append(bad(f"key {key} also in shard {seen[key]}"))
        seen[key] = unit.name
        got = {ext: members.get(f"{key}.{ext}") for ext in (recipe.extension, "cls", "json")}
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
            "model": sample.model or recipe.model,  # a mixture's: the generator the plan gave it
        }
        if not isinstance(meta, dict) or any(meta.get(k) != v for k, v in planned.items()):
            problems.append(bad(f"sample {key}: its json disagrees with the plan"))
        image_sha = hashlib.sha256(got[recipe.extension]).hexdigest()
        if index_sha.get(key) != image_sha:
            problems.append(bad(f"sample {key}: image sha256 differs from the index"))
    return problems


def _read_members(tar_path: Path) -> dict[str, bytes]:
    members: dict[str, bytes] = {}
    with tarfile.open(tar_path, mode="r:") as tar:
        for info in tar:
            f = tar.extractfile(info)
            data = f.read() if f is not None else b""
            if len(data) != info.size:
                raise EOFError(f"member {info.name} is cut short")
            if info.name in members:
                raise tarfile.TarError(f"member {info.name} appears twice")
            members[info.name] = data
    return members


def repair(out_dir: Path, problems: list[Problem]) -> list[Path]:
    """Move every file of each bad shard into _rejected/<time>/; return the moved paths."""
    bad = sorted({p.shard for p in problems if p.shard is not None})
    if not bad:
        return []
    moved = []
    with exclusive_lock(out_dir):
        dest = out_dir / REJECTED / time.strftime("%Y%m%d-%H%M%S")
        dest.mkdir(parents=True, exist_ok=True)
        for name in bad:
            for path in shard_paths(out_dir, name):
                if path.exists():
                    path.rename(dest / path.name)
                    moved.append(dest / path.name)
        dm.mark_incomplete(out_dir)
    return moved
