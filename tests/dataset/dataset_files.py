"""What the object-store tests compare: a dataset's files at a URL, and its shards' files."""

from __future__ import annotations

import fsspec

from t2i_engine.engine.run import RunOptions

OPTIONS = RunOptions(device="cpu", progress=False, encode_workers=0)
RECIPE = "model: digits\nimages_per_class: 4\nsteps: 2\nimages_per_shard: 4\n"  # 40 samples, 10 shards


def shards_of(files: dict[str, bytes]) -> dict[str, bytes]:
    """The shards' files (a run from the CLI records its command line in the manifest and card)."""
    return {k: v for k, v in files.items() if k.endswith((".tar", ".index.jsonl", ".stats.json"))}


def files_at(url: str) -> dict[str, bytes]:
    """The dataset's files at the top of `url` (not _rejected/, not the locks' leases)."""
    fs, root = fsspec.core.url_to_fs(url)
    fs.invalidate_cache()
    names = [e["name"] for e in fs.ls(root, detail=True) if e["type"] == "file"]
    return {n.rsplit("/", 1)[-1]: fs.cat_file(n) for n in names if ".t2i-engine.lock" not in n}


def put_both(files: dict[str, bytes], url: str, local) -> None:
    """The same dataset files into a local folder and at `url`."""
    local.mkdir()
    fs, root = fsspec.core.url_to_fs(url)
    for name, data in files.items():
        (local / name).write_bytes(data)
        fs.pipe_file(f"{root}/{name}", data)
