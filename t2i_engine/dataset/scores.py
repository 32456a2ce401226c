"""Per-sample scores beside the shards: what came out of each image, stored as columns, never acted on.

`t2i-engine score` (eval/score.py) writes, per committed shard NNNNNN, `NNNNNN.scores.parquet`:
one row per sample, in the shard's order, with the columns of `COLUMNS`. The scores manifest
`scores.json` records who scored (the judge, its weights' sha256, its settings), which tar each
scores file belongs to (its sha256: a shard remade by `verify --repair` and `generate` no longer
matches and is scored again), each scores file's own sha256, and whether the near-duplicate
groups (computed over the whole dataset, after every shard is scored) are in. Its hash names the
exact scores a subset was cut from (dataset/subset.py).

Every file goes through the dataset's store, each written whole (a local rename, an object PUT).
"""

from __future__ import annotations

import hashlib
import io
import json

import numpy as np

from ..errors import InputError
from .layout import SCORES
from .store import FsspecStore, LocalStore

FORMAT = "t2i-engine-scores/1"
# name -> what it holds; `embedding` is the judge's L2-normalised image feature (float16), kept so
# that near-duplicates can be regrouped at another threshold without scoring again.
COLUMNS = {
    "key": "the sample's key",
    "class_id": "its intended class",
    "seed": "its seed",
    "agreement": "the judge's probability of the intended class, over the dataset's classes",
    "top_class": "the judge's most probable class",
    "top_prob": "that class's probability",
    "pixel_std": "standard deviation of the pixel values, in [0, 1]",
    "clipped": "share of pixel values at 0-2 or 253-255",
    "degenerate": "near-constant (pixel_std below the threshold) or saturated (clipped above it)",
    "dup_group": "the key of the first sample (plan order) of its near-duplicate group in its class; its own if none",
    "embedding": "the judge's normalised image feature (float16)",
}


def scores_file(shard: str) -> str:
    return f"{shard}.scores.parquet"


def parquet_bytes(columns: dict) -> bytes:
    import pyarrow as pa  # heavy: pyarrow
    import pyarrow.parquet as pq  # heavy: pyarrow

    arrays = {}
    for name, values in columns.items():
        if name == "embedding":
            emb = np.asarray(values, dtype=np.float16)
            flat = pa.array(emb.reshape(-1), type=pa.float16())
            arrays[name] = pa.FixedSizeListArray.from_arrays(flat, emb.shape[1])
        else:
            arrays[name] = pa.array(values)
    buffer = io.BytesIO()
    pq.write_table(pa.table(arrays), buffer)
    return buffer.getvalue()


def read_table_bytes(data: bytes, columns: list[str] | None = None) -> dict[str, np.ndarray]:
    import pyarrow.parquet as pq  # heavy: pyarrow

    table = pq.read_table(io.BytesIO(data), columns=columns)
    out = {}
    for name in table.column_names:
        col = table.column(name).combine_chunks()
        if name == "embedding":
            width = col.type.list_size
            out[name] = col.flatten().to_numpy(zero_copy_only=False).reshape(-1, width)
        else:
            out[name] = col.to_numpy(zero_copy_only=False)
    return out


def write_shard_scores(store: LocalStore | FsspecStore, shard: str, columns: dict) -> str:
    """The scores file of `shard`, written whole; returns its sha256."""
    data = parquet_bytes(columns)
    store.write_bytes(scores_file(shard), data)
    return hashlib.sha256(data).hexdigest()


def read_shard_scores(
    store: LocalStore | FsspecStore, shard: str, sha256: str | None = None, columns: list[str] | None = None
) -> dict[str, np.ndarray]:
    """One shard's scores; with `sha256`, the file must still be the one the manifest records."""
    data = store.read_bytes(scores_file(shard))
    if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
        raise InputError(
            "dir",
            store.url,
            f"{scores_file(shard)} changed since `t2i-engine score` wrote it; run `t2i-engine score` again",
        )
    return read_table_bytes(data, columns)


def read_scores_manifest(store: LocalStore | FsspecStore) -> dict | None:
    if not store.exists(SCORES):
        return None
    try:
        manifest = json.loads(store.read_text(SCORES))
    except ValueError:
        manifest = None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise InputError(
            "dir", store.url, f"its {SCORES} is not a {FORMAT} scores manifest; rerun `t2i-engine score --replace`"
        )
    return manifest


def write_scores_manifest(store: LocalStore | FsspecStore, manifest: dict) -> None:
    store.write_text(SCORES, json.dumps(manifest, indent=1, ensure_ascii=False) + "\n")


def scores_hash(manifest: dict) -> str:
    """What a subset records: the judge, its settings and every scores file's sha256."""
    return hashlib.sha256(json.dumps(manifest, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def complete_scores(store: LocalStore | FsspecStore, dataset: dict, field: str = "dir") -> dict:
    """The scores manifest of a dataset (its `dataset.json` as `dataset`) whose every shard is
    scored and grouped; anything less is refused with the command that completes it."""
    manifest = read_scores_manifest(store)
    if manifest is None:
        raise InputError(field, store.url, "it holds no scores; run `t2i-engine score DIR --judge clip|digits` first")
    stale = [
        s["name"]
        for s in dataset["shards"]
        if manifest["shards"].get(s["name"].removesuffix(".tar"), {}).get("tar_sha256") != s["sha256"]
    ]
    if stale or not manifest.get("complete") or manifest.get("dataset") != dataset["recipe_hash"]:
        what = f"{len(stale)} shards are unscored or were remade since" if stale else "scoring did not finish"
        raise InputError(
            field, store.url, f"its scores are incomplete ({what}); run `t2i-engine score` on it again to finish them"
        )
    return manifest


def read_all_scores(
    store: LocalStore | FsspecStore, manifest: dict, columns: list[str] | None = None
) -> dict[str, np.ndarray]:
    """Every shard's scores, concatenated in shard (plan) order."""
    parts = [
        read_shard_scores(store, shard, entry["scores_sha256"], columns)
        for shard, entry in sorted(manifest["shards"].items())
    ]
    if not parts:
        return {}
    return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}
