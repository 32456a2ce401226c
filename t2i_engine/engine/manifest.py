"""The dataset manifest (`dataset.json`), timm's `_info.json`, and the output-folder checks.

`dataset.json` is written before the first shard (complete: false) so that a different recipe
pointed at the same folder is refused from the start, and again at the end with every shard's
sha256 and count (complete: true). It holds the resolved recipe, its hash, and the versions and
device that made the data. `_info.json` is what timm's `wds/` reader takes: one split, `train`,
with its shard file names and lengths.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ..dataset.layout import INFO, LOCK, LOG_DIR, MANIFEST, PREVIEW
from ..dataset.manifest import FORMAT, SEED_BITS, read_manifest, stored_tuning, versions
from ..dataset.preview import PER_CLASS, dataset_rows, sheet_bytes
from ..dataset.records import ShardRecord, shard_name
from ..dataset.store import LocalStore, as_store
from ..errors import InputError
from ..files import TMP_SUFFIX
from .card import write_card
from .recipe import Recipe


def check_resumable(
    out_dir: Path,
    recipe: Recipe,
    *,
    weights: str | None,
    dtype: str,
    attention: str = "sdpa",
    backend: str = "eager",
    tuning: dict | None = None,
    conv: str = "torch",
    refiner_weights: str | None = None,
) -> dict | None:
    """The folder must be new, empty (but for our own temporaries), or hold a dataset of this
    very recipe, weights (the refiner's too), dtype, attention implementation, backend and speed
    switches (export.tuning: each moves pixels). Returns its manifest."""
    store = as_store(out_dir)
    manifest = read_manifest(store) if store.exists() else None
    if manifest is None:
        names = store.list("*")
        if MANIFEST in names:  # another part of this run wrote it between the read above and this listing
            manifest = read_manifest(store)
        elif any(not n.startswith((LOCK, LOG_DIR)) and not n.endswith(TMP_SUFFIX) for n in names):
            raise InputError(
                "out",
                str(out_dir),
                f"expected a new or empty folder, or one holding a t2i-engine dataset ({MANIFEST}); this one holds "
                "other files",
            )
        if manifest is None:
            return None
    if manifest.get("recipe_hash") != recipe.content_hash():
        stored, new = manifest.get("recipe", {}), json.loads(json.dumps(recipe.to_dict()))
        differ = [k for k in new if k != "batch_size" and stored.get(k) != new[k]]
        raise InputError(
            "out",
            str(out_dir),
            f"it holds a dataset made from another recipe (differs in: {', '.join(differ) or 'content'}); "
            "rerun with the same recipe to resume, or choose a new folder",
        )
    for key, value in (
        ("weights", weights),
        ("dtype", dtype),
        ("attention", attention),
        ("backend", backend),
        ("conv", conv),
        ("refiner_weights", refiner_weights),
    ):
        if (
            manifest.get(key, {"attention": "sdpa", "backend": "eager", "conv": "torch"}.get(key)) != value
        ):  # older manifests: sdpa, eager, torch
            raise InputError(
                "out",
                str(out_dir),
                f"its shards were made with {key} {manifest.get(key)!r}, this run would use {value!r}; "
                "one dataset must come from one model and precision: resume with the same setting or choose a new "
                "folder",
            )
    if tuning is not None:
        stored = stored_tuning(manifest)
        for key, value in tuning.items():
            if stored.get(key) != value:
                raise InputError(
                    "out",
                    str(out_dir),
                    f"its shards were made with {key} {stored.get(key)!r}, this run would use {value!r}; each moves "
                    "pixels, so one dataset keeps one setting: resume with the same one (generate without that "
                    "switch and --speed takes the dataset's) or choose a new folder",
                )
    return manifest


def write_manifest(
    out_dir: Path,
    recipe: Recipe,
    *,
    records: list[ShardRecord] | None,
    device: str,
    dtype: str,
    weights: str | None,
    attention: str = "sdpa",
    backend: str = "eager",
    tuning: dict | None = None,
    conv: str = "torch",
    refiner_weights: str | None = None,
    dataset_format: str = FORMAT,
    command: str | None = None,
) -> None:
    """`dataset_format`: a dataset keeps the format it was started in (it says how its seeds were
    made). `command`: the command line that made it, for the record and the dataset card."""
    complete = records is not None
    manifest = {
        "format": dataset_format,
        "complete": complete,
        "recipe_hash": recipe.content_hash(),
        "num_samples": recipe.num_samples,
        "num_classes": len(recipe.classes),
        "shards": [r.__dict__ for r in records] if complete else [],
        "recipe": recipe.to_dict(),
        "weights": weights,
        "refiner_weights": refiner_weights,
        "device": device,
        "dtype": dtype,
        "attention": attention,
        "backend": backend,
        "tuning": tuning,
        "conv": conv,
        "command": command,
        "versions": versions(),
    }
    if complete:  # _info.json, the preview and the card first: a complete manifest promises them
        write_derived(out_dir, recipe, records, dataset_format, command)
    as_store(out_dir).write_text(MANIFEST, json.dumps(manifest, indent=1, ensure_ascii=False) + "\n")


def write_derived(
    out_dir: Path, recipe: Recipe, records: list[ShardRecord], dataset_format: str, command: str | None
) -> None:
    """timm's _info.json, the preview and the dataset card of a complete dataset. The preview is
    a courtesy: a failure to draw it is reported, and does not keep the dataset from completing."""
    store = as_store(out_dir)
    write_timm_info(store, recipe, records)
    try:
        store.write_bytes(PREVIEW, sheet_bytes(recipe_rows(store, recipe)))
    except (OSError, ValueError, KeyError) as e:  # an image PIL cannot read, a shard member missing
        print(f"t2i-engine: {store.url}/{PREVIEW} not written: {e.__class__.__name__}: {e}", file=sys.stderr)
    write_card(out_dir, recipe, shards=len(records), seed_bits=SEED_BITS[dataset_format], command=command)


def write_timm_info(out_dir: Path | LocalStore, recipe: Recipe, records: list[ShardRecord]) -> None:
    split = {
        "name": "train",
        "num_samples": sum(r.count for r in records),
        "filenames": [r.name for r in records],
        "shard_lengths": [r.count for r in records],
    }
    store = as_store(out_dir)
    # the name as given (the card's is resolved: they differ for "."; kept, so files keep their bytes)
    info = {"name": Path(store.url).name, "num_classes": len(recipe.classes), "splits": {"train": split}}
    store.write_text(INFO, json.dumps(info, indent=1) + "\n")


def recipe_rows(out_dir: Path | LocalStore, recipe: Recipe, per_class: int = PER_CLASS, seed: int = 0) -> list:
    """The preview sheet's rows of a dataset of `recipe`: its classes and its shards' names."""
    shards = [shard_name(i) for i in range(-(-recipe.num_samples // recipe.images_per_shard))]
    classes = [(c.id, c.name) for c in recipe.classes]
    return dataset_rows(out_dir, classes, shards, recipe.extension, per_class, seed)
