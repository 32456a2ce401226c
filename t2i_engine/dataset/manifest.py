"""The parts of a dataset's manifest (`dataset.json`) that need no recipe: its format, reading it,
the versions that made the data, the speed switches it records, what marks a dataset incomplete
again, and the partial files an interrupted run leaves. Writing it from a recipe, and checking a
resume against one, is the engine's (engine/manifest.py)."""

from __future__ import annotations

import json
import platform
from importlib import metadata
from pathlib import Path

from ..errors import InputError
from ..files import TMP_SUFFIX
from .layout import CARD, INFO, MANIFEST, PREVIEW, SHARD_FILE
from .store import LocalStore, as_store

# The manifest's format says which rule made its samples' seeds: format 1 drew them from the full
# unsigned 64-bit range, which Arrow, pandas, parquet and DuckDB cannot hold; format 2 from [0, 2^63).
# A dataset keeps its format (and its seeds) through resumes.
FORMAT = "t2i-engine-dataset/2"
SEED_BITS = {"t2i-engine-dataset/1": 64, FORMAT: 63}
DERIVED = (INFO, PREVIEW, CARD)  # what a complete dataset folder holds beside its shards and manifest


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for dist in ("t2i-engine", "torch", "diffusers", "transformers", "pillow", "numpy"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "absent"
    return out


def read_manifest(out: Path | LocalStore) -> dict | None:
    store = as_store(out)
    if not store.exists(MANIFEST):
        return None
    try:
        data = json.loads(store.read_text(MANIFEST))
    except (OSError, json.JSONDecodeError) as e:
        raise InputError(
            "out", store.url, f"its {MANIFEST} is unreadable ({e.__class__.__name__}); use another folder"
        ) from None
    if not isinstance(data, dict) or data.get("format") not in SEED_BITS:
        formats = ", ".join(SEED_BITS)
        raise InputError(
            "out", store.url, f"its {MANIFEST} is not a t2i-engine manifest ({formats}); use another folder"
        )
    return data


def stored_tuning(manifest: dict) -> dict:
    """The speed switches a dataset was made with; a manifest from before they existed ran the
    plain path in its dtype."""
    plain = {
        "precision": {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}.get(manifest.get("dtype"), "fp32"),
        "compile": "none",
        "fuse_qkv": False,
        "channels_last": False,
        "regional_compile": False,
    }
    return {**plain, **(manifest.get("tuning") or {})}


def remove_stale_temporaries(out: Path | LocalStore, shards: list[str] | None = None) -> list[str]:
    """Partial shard files of an interrupted run; never visible under a final name, safe to drop.
    A part removes only its own shards' (another part may be writing the rest right now). Other
    temporaries (a manifest's, a preview's, a writability probe's) may belong to a process at work
    right now; they are replaced by the next write of their file."""
    store = as_store(out)
    stale = [name for name in store.list(f"*{TMP_SUFFIX}") if SHARD_FILE.match(name)]
    if shards is not None:
        mine = set(shards)
        stale = [name for name in stale if name.split(".")[0] in mine]
    for name in stale:
        store.remove(name)
    return stale


def mark_incomplete(out: Path | LocalStore) -> None:
    """After shards were moved aside: the dataset needs another `generate` run."""
    store = as_store(out)
    manifest = read_manifest(store)
    if manifest is not None and manifest.get("complete"):
        manifest["complete"], manifest["shards"] = False, []
        store.write_text(MANIFEST, json.dumps(manifest, indent=1, ensure_ascii=False) + "\n")
        for derived in DERIVED:  # they describe the whole dataset; remade when it is whole again
            store.remove(derived)
