"""What the object-store tests compare: a dataset's files at a URL, and its shards' files."""

from __future__ import annotations

import hashlib
import json
import subprocess
import time

import fsspec

from t2i_engine.dataset.shards import shard_files
from t2i_engine.engine.run import RunOptions
from t2i_engine.engine.verify import verify_dataset

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


def marked_shards_are_whole(files: dict[str, bytes]) -> list[str]:
    """The shards whose stats (the marker that says a shard is done) are among `files`, sorted,
    after checking that each stands beside its index and a tar of the recorded sha256."""
    marked = sorted(n.removesuffix(".stats.json") for n in files if n.endswith(".stats.json"))
    for shard in marked:
        tar, index, stats = shard_files(shard)
        assert index in files and hashlib.sha256(files[tar]).hexdigest() == json.loads(files[stats])["sha256"], shard
    return marked


def wait_for(url: str, name: str, proc: subprocess.Popen, seconds: float = 120) -> None:
    """Until `name` exists at `url`, `proc` ends, or `seconds` pass."""
    fs, root = fsspec.core.url_to_fs(url)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and proc.poll() is None:
        fs.invalidate_cache()
        if fs.exists(f"{root}/{name}"):
            return
        time.sleep(0.05)


def stop_the_store_mid_run_then_rerun(url: str, server, args: list, env: dict, on_disk, stop_seconds: float) -> None:
    """What each store's "the server stops answering" test checks: the run of `args` exits 1 within
    `stop_seconds` of the server (S3Server, GCSServer) stopping once shard 1 is marked, with one
    line naming the URL; no partial shard is marked; with the server back and the stopped run's
    lease (T2I_ENGINE_LEASE_SECONDS=2 in `env`) expired, the same command completes the dataset
    as `on_disk`, every sample once."""
    proc = subprocess.Popen(args, stderr=subprocess.PIPE, text=True, env=env)
    wait_for(url, "000001.stats.json", proc)
    server.stop()
    _, err = proc.communicate(timeout=stop_seconds)
    assert proc.returncode == 1, err
    assert len(err.strip().splitlines()) == 1 and url in err and "rerun" in err, err
    server.start()
    marked_shards_are_whole(files_at(url))
    time.sleep(2)  # the stopped run could not remove its lease: it expires
    done = subprocess.run(args, stderr=subprocess.PIPE, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert shards_of(files_at(url)) == shards_of(on_disk) and verify_dataset(url) == []
