"""Subsets: a list of a dataset's keys cut by a rule over its scores, in a JSON file of its own.

The shards are never changed. A subset file records the rule, the dataset it was cut from (its
recipe hash) and the exact scores (scores.scores_hash), so a reader refuses it against another
dataset or scores that have changed since. `train`, `analyze`, `preview` and `verify` take one
with `--subset FILE`; `filter` writes one (its --out: a local file, or a URL of a store).

The rule, applied in this order (each step optional):
  drop_degenerate  samples flagged near-constant or saturated go;
  dedup            of each near-duplicate group, the best by agreement stays (ties: the lower seed);
  min_agreement    samples whose agreement is below it go;
  keep_per_class   of each class, N stay, by `keep_by`: "agreement", the N best by agreement;
                   "hardest", the N of lowest agreement (with min_agreement as a floor: images
                   of their class that the judge finds least typical); "seed", the N of lowest
                   seed, a uniform random draw (seeds are hashes) that keeps the spread of the
                   data while the steps before it clean it. Ties go to the lower seed.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..files import URL, check_writable
from .manifest import read_manifest
from .scores import complete_scores, read_all_scores, read_scores_manifest, scores_hash
from .store import FsspecStore, LocalStore, as_store, open_store

FORMAT = "t2i-engine-subset/1"
KEEP_BY = ("agreement", "hardest", "seed")


@dataclass(frozen=True)
class FilterRule:
    min_agreement: float | None = None
    dedup: bool = False
    keep_per_class: int | None = None
    drop_degenerate: bool = False
    keep_by: str = "agreement"  # or "hardest", "seed"

    def check(self) -> FilterRule:
        p = self.min_agreement
        if p is not None and (isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p <= 1):
            raise InputError("--min-agreement", p, "expected a probability in [0, 1]")
        n = self.keep_per_class
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
            raise InputError("--keep-per-class", n, "expected an integer of at least 1")
        if self.keep_by not in KEEP_BY:
            raise InputError("--keep-by", self.keep_by, f"expected one of {', '.join(KEEP_BY)}")
        if p is None and n is None and not self.dedup and not self.drop_degenerate:
            raise InputError(
                "filter",
                "no rule",
                "expected at least one of --min-agreement, --dedup, --keep-per-class, --drop-degenerate",
            )
        return self


def select(columns: dict[str, np.ndarray], rule: FilterRule) -> np.ndarray:
    """The row indices (ascending: plan order) that the rule keeps."""
    rule.check()
    agreement, seed = columns["agreement"].astype(np.float64), columns["seed"].astype(np.int64)
    keep = np.ones(len(agreement), dtype=bool)
    if rule.drop_degenerate:
        keep &= ~columns["degenerate"].astype(bool)
    # best first: highest agreement, then the lower seed (np.lexsort sorts by its last key first)
    best_first = np.lexsort((seed, -agreement))
    if rule.dedup:
        seen: set[str] = set()
        groups = columns["dup_group"]
        for i in best_first:
            if keep[i]:
                if groups[i] in seen:
                    keep[i] = False
                else:
                    seen.add(groups[i])
    if rule.min_agreement is not None:
        keep &= agreement >= rule.min_agreement
    if rule.keep_per_class is not None:
        taken: dict[str, int] = {}
        classes = columns["class_id"]
        order = {
            "agreement": best_first,
            "hardest": np.lexsort((seed, agreement)),  # lowest agreement first, then the lower seed
            "seed": np.argsort(seed, kind="stable"),
        }[rule.keep_by]
        for i in order:
            if keep[i]:
                c = classes[i]
                taken[c] = taken.get(c, 0) + 1
                keep[i] = taken[c] <= rule.keep_per_class
    return np.flatnonzero(keep)


def subset_record(
    keys: list[str],
    class_ids: list[str],
    *,
    rule: FilterRule | dict,
    dataset: dict,
    scores: dict,
    dataset_count: int,
    class_order: list[str] | None = None,
) -> dict:
    """A subset file's content: `dataset` (name, recipe_hash), `scores` (hash, judge, weights),
    the keys with their classes counted."""
    per_class: dict[str, int] = dict.fromkeys(class_order or [], 0)
    for c in class_ids:
        per_class[c] = per_class.get(c, 0) + 1
    return {
        "format": FORMAT,
        "dataset": dataset,
        "scores": scores,
        "rule": asdict(rule) if isinstance(rule, FilterRule) else rule,
        "count": len(keys),
        "dataset_count": dataset_count,
        "per_class": per_class,
        "keys": list(keys),
    }


def _file_in_store(path: str | Path, field: str) -> tuple[LocalStore | FsspecStore, str]:
    """A single file (a subset file) as (the store of its folder, its name): local or at a URL."""
    if isinstance(path, str) and URL.match(path):
        parent, _, name = path.rstrip("/").rpartition("/")
        return open_store(parent, field), name
    path = Path(path)
    return LocalStore(path.parent, field), path.name


def write_subset(dest: str | Path, record: dict) -> str:
    """`record` as JSON at `dest` (a local file, or a URL in a store), written whole."""
    if not (isinstance(dest, str) and URL.match(dest)):
        check_writable(Path(dest), "--out", kind="file")
    store, name = _file_in_store(dest, "--out")
    store.write_text(name, json.dumps(record, ensure_ascii=False) + "\n")
    return str(dest)


def read_subset(path: str | Path, field: str = "--subset") -> dict:
    """A subset file, checked to be one; whether it fits a dataset is `check_subset`'s."""
    try:
        store, name = _file_in_store(path, field)
        record = json.loads(store.read_text(name))
    except FileNotFoundError:
        raise InputError(
            field, str(path), "expected a subset file written by `t2i-engine filter`; none there"
        ) from None
    except (OSError, ValueError) as e:
        raise InputError(field, str(path), f"expected a subset file written by `t2i-engine filter` ({e})") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT or not isinstance(record.get("keys"), list):
        raise InputError(field, str(path), f"expected a subset file ({FORMAT}) written by `t2i-engine filter`")
    return record


def check_subset(record: dict, path: str | Path, *, recipe_hash: str, scores_hash: str | None) -> frozenset[str]:
    """The subset's keys, if it was cut from this dataset (`recipe_hash`) and from its current
    scores (`scores_hash`, None when it holds none now)."""
    if record["dataset"].get("recipe_hash") != recipe_hash:
        raise InputError(
            "--subset",
            str(path),
            f"it was cut from another dataset ({record['dataset'].get('name')}, recipe "
            f"{str(record['dataset'].get('recipe_hash'))[:12]}...); expected a subset of this one",
        )
    if record["scores"].get("hash") != scores_hash:
        raise InputError(
            "--subset",
            str(path),
            "the dataset's scores changed since it was cut (rescored, or shards remade); "
            "run `t2i-engine filter` again to cut it from the current scores",
        )
    return frozenset(record["keys"])


def open_subset(path: str | Path, store: LocalStore | FsspecStore) -> tuple[dict, frozenset[str]]:
    """The subset file at `path` and its keys, checked against the dataset in `store` as it is now."""
    record = read_subset(path)
    manifest = read_manifest(store)
    if manifest is None:
        raise InputError("--subset", str(path), "takes a dataset made by `t2i-engine generate`, not an image folder")
    scores = read_scores_manifest(store)
    keys = check_subset(
        record, path, recipe_hash=manifest["recipe_hash"], scores_hash=scores_hash(scores) if scores else None
    )
    return record, keys


def cut_subset(out: str | Path | LocalStore | FsspecStore, rule: FilterRule, dest: str | Path) -> dict:
    """`filter`: the keys of a scored dataset that `rule` keeps, written to `dest` as a subset
    file; returns the record without its keys, with the mean agreement before and after."""
    rule.check()
    if not (isinstance(dest, str) and URL.match(dest)):
        check_writable(Path(dest), "--out", kind="file")
    store = as_store(out, "dir")
    manifest = read_manifest(store)
    if manifest is None or not manifest.get("complete"):
        raise InputError("dir", store.url, "expected a complete dataset made by `t2i-engine generate`, then scored")
    scores = complete_scores(store, manifest)
    cols = read_all_scores(store, scores, ["key", "class_id", "seed", "agreement", "degenerate", "dup_group"])
    rows = select(cols, rule)
    record = subset_record(
        [str(k) for k in cols["key"][rows]],
        [str(c) for c in cols["class_id"][rows]],
        rule=rule,
        dataset={"name": store.name, "url": store.url, "recipe_hash": manifest["recipe_hash"]},
        scores={
            "hash": scores_hash(scores),
            "judge": scores["judge"],
            "weights_sha256": scores["weights_sha256"],
            "dedup_threshold": scores["dedup_threshold"],
        },
        dataset_count=len(cols["key"]),
        class_order=scores["settings"]["classes"],
    )
    write_subset(dest, record)
    summary = {k: v for k, v in record.items() if k != "keys"}
    summary["agreement_mean"] = {
        "dataset": round(float(cols["agreement"].mean()), 4),
        "subset": round(float(cols["agreement"][rows].mean()), 4) if len(rows) else None,
    }
    summary["out"] = str(dest)
    return summary
