"""`verify`: prove a dataset folder holds exactly what its recipe plans.

The plan is rebuilt from the recipe stored in `dataset.json` (no class or caption file is read
again). For every planned shard: the tar exists and hashes to the sha256 in its stats file (and
in the manifest, once complete); it parses; it holds exactly the planned keys, each with an
image, a .cls equal to the planned class index and a .json agreeing with the plan; each image
hashes to its index line. Across shards every key appears once, and no unplanned shard lies in
the folder. The checks themselves, and `repair`, are dataset/verify.py's: they need the plan, not the recipe.
"""

from __future__ import annotations

from pathlib import Path

from ..dataset import manifest as dm
from ..dataset.store import as_store
from ..dataset.subset import open_subset
from ..dataset.verify import Problem, check_shards
from ..errors import InputError
from .plan import plan_units
from .recipe import Recipe


def load_dataset_recipe(out_dir: Path) -> tuple[dict, Recipe]:
    """The manifest and its recipe, which must still hash to the recorded recipe hash: a damaged
    recipe would plan another dataset, and repair would then move good shards aside."""
    if not as_store(out_dir, "dir").exists():
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


def verify_dataset(out_dir: Path | str, subset: Path | str | None = None) -> list[Problem]:
    """Every problem of the dataset; with `subset` (a subset file), of the shards holding its samples."""
    out_dir = as_store(out_dir, "dir")
    manifest, recipe = load_dataset_recipe(out_dir)
    units = plan_units(recipe, dm.SEED_BITS[manifest["format"]])
    only = None
    if subset is not None:
        _, keys = open_subset(subset, out_dir)
        only = {u.name for u in units if any(s.key in keys for s in u.samples)}
        found = sum(1 for u in units if u.name in only for s in u.samples if s.key in keys)
        if found != len(keys):
            raise InputError("--subset", str(subset), f"names {len(keys) - found} keys this dataset's plan lacks")
    recorded = {s["name"]: s["sha256"] for s in manifest.get("shards", [])}
    return check_shards(
        out_dir,
        units,
        extension=recipe.extension,
        default_model=recipe.model,
        recorded=recorded,
        complete=bool(manifest.get("complete")),
        only=only,
    )
