"""A dataset at an fsspec URL (memory://, in this process): the same files, byte for byte, as
the same recipe on a local disk, resumed, verified, repaired and remade through the store."""

from __future__ import annotations

import uuid

import fsspec
import pytest

from t2i_engine.dataset.verify import repair
from t2i_engine.engine.recipe import build_recipe
from t2i_engine.engine.run import RunOptions, generate
from t2i_engine.engine.verify import verify_dataset

RAW = {"model": "digits", "images_per_class": 2, "steps": 2, "images_per_shard": 7}
OPTIONS = RunOptions(device="cpu", progress=False, encode_workers=0)


@pytest.fixture
def url():
    root = f"/t2i-test-{uuid.uuid4().hex}"
    yield f"memory://{root}/ds"
    if fsspec.filesystem("memory").exists(root):  # a refused run made nothing
        fsspec.filesystem("memory").rm(root, recursive=True)


def _files(url: str) -> dict[str, bytes]:
    fs, root = fsspec.core.url_to_fs(url)
    files = [e["name"] for e in fs.ls(root, detail=True) if e["type"] == "file"]  # not _rejected/
    return {p.rsplit("/", 1)[-1]: fs.cat_file(p) for p in files}


def test_a_memory_dataset_equals_the_same_recipe_on_disk_and_resumes_verifies_and_repairs(url, tmp_path):
    recipe = build_recipe(RAW)
    summary = generate(recipe, url, OPTIONS)
    generate(recipe, tmp_path / "ds", OPTIONS)
    stored = _files(url)
    local = {p.name: p.read_bytes() for p in (tmp_path / "ds").iterdir() if not p.name.startswith(".t2i-engine")}
    assert summary["out"] == url and summary["dataset_complete"] and stored == local
    assert len([n for n in stored if n.endswith(".tar")]) == 3 and verify_dataset(url) == []
    assert generate(recipe, url, OPTIONS)["shards_skipped"] == 3  # resumed: nothing left to do

    fs, root = fsspec.core.url_to_fs(url)
    fs.pipe_file(f"{root}/000001.tar", stored["000001.tar"][:-1024])  # a damaged shard
    problems = verify_dataset(url)
    assert {p.shard for p in problems} == {"000001"}
    moved = repair(url, problems)
    assert sorted(m.rsplit("/", 1)[-1] for m in moved) == ["000001.index.jsonl", "000001.stats.json", "000001.tar"]
    remade = generate(recipe, url, OPTIONS)
    assert remade["shards_written"] == 1 and verify_dataset(url) == []
    assert {k: v for k, v in _files(url).items() if k in local} == local  # remade exactly


def test_the_cli_writes_and_verifies_a_memory_dataset_and_refuses_workers_for_it(cli, url, tmp_path):
    code, _, err = cli("generate", "--out", url, "--images-per-class", "1", "--steps", "1", "--device", "cpu")
    assert code == 0, err
    assert cli("verify", url)[0] == 0
    code, text, _ = cli("status", url)  # read through the store, the run log included
    assert code == 0 and text.startswith(f"{url}: 10 of 10 images") and "writer" in text
    code, _, err = cli("regenerate", url, "3_000000", "--out", tmp_path / "again.jpg", "--device", "cpu")
    assert code == 0 and "identical to the stored image" in err, err
    fs, root = fsspec.core.url_to_fs(url)
    fs.rm_file(f"{root}/preview.jpg")
    code, _, err = cli("preview", url)  # drawn from the shards there, written beside them
    assert code == 0 and fs.cat_file(f"{root}/preview.jpg")[:2] == b"\xff\xd8", err
    code, _, err = cli("generate", "--out", url + "2", "--images-per-class", "1", "--devices", "cpu:2")
    assert code == 2 and "lives in this process" in err


def test_an_unwritable_staging_folder_is_refused_before_any_work(cli, url, monkeypatch):
    """Shards for a URL are built in the temporary folder (TMPDIR) first: it is checked like a
    local --out, exit 2 naming it."""
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", "/proc/no-such-staging")
    code, _, err = cli("generate", "--out", url, "--images-per-class", "1", "--device", "cpu")
    assert code == 2 and "TMPDIR: '/proc/no-such-staging'" in err and len(err.strip().splitlines()) == 1, err
    assert not fsspec.filesystem("memory").exists(url.removeprefix("memory://"))
