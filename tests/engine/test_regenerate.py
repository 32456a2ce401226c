"""`regenerate DIR KEY`: the stored sample remade from the manifest's recipe and seed, byte for
byte (same device type, backend and thread count: this process), with its JSON; keys not in the
plan refused."""

from __future__ import annotations

import io
import json
import tarfile

import pytest

from t2i_engine.engine.recipe import build_recipe
from t2i_engine.engine.run import RunOptions, generate

RAW = {"model": "digits", "classes": ["a", "b"], "images_per_class": 7, "steps": 2, "batch_size": 4,
       "images_per_shard": 6, "format": "png"}  # fmt: skip


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("regen") / "ds"
    generate(build_recipe(RAW), out, RunOptions(device="cpu", progress=False, encode_workers=0))
    return out


def _stored(out, shard: str, member: str) -> bytes:
    with tarfile.open(out / f"{shard}.tar") as tar:
        return tar.extractfile(member).read()


@pytest.mark.parametrize("key, shard", [("b_000002", "000000"), ("a_000004", "000001")])
def test_a_regenerated_sample_is_the_stored_one_with_its_json(cli, dataset, tmp_path, key, shard):
    # b_000002 is sample 5: the second batch of its unit (batches of 4 in shards of 6)
    out = tmp_path / "again.png"
    code, text, err = cli("regenerate", dataset, key, "--out", out)
    assert code == 0 and "identical to the stored image" in err, err
    assert out.read_bytes() == _stored(dataset, shard, f"{key}.png")
    assert json.loads(text) == json.loads(_stored(dataset, shard, f"{key}.json"))


@pytest.mark.parametrize("key", ["c_000000", "a_7", "a_000007", "a000001", ""])
def test_a_key_not_in_the_plan_is_refused_before_the_model_loads(cli, dataset, tmp_path, monkeypatch, key):
    monkeypatch.chdir(tmp_path)
    code, _, err = cli("regenerate", dataset, key)
    assert code == 2 and f"KEY: {key!r} is not allowed" in err and "'a_000000'" in err
    assert list(tmp_path.iterdir()) == []


def test_a_changed_image_is_reported_as_different(cli, dataset, tmp_path):
    """Against a copy whose stored image was replaced: exit 1, saying what identity needs."""
    import shutil

    copy = tmp_path / "ds"
    shutil.copytree(dataset, copy)
    tar_path = copy / "000000.tar"
    with tarfile.open(tar_path) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    with tarfile.open(tar_path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for m, data in members:
            data = data[:-1] + bytes([data[-1] ^ 1]) if m.name == "a_000000.png" else data
            tar.addfile(m, io.BytesIO(data))
    code, _, err = cli("regenerate", copy, "a_000000", "--out", tmp_path / "x.png")
    assert code == 1 and "differs from the stored image" in err
