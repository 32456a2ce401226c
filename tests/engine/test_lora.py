"""LoRA adapters in a run (recipe key `lora`, flag --lora): each file's sha256 and scale in the
manifest and every sample's JSON, the recipe hash holding the bytes and scale (not the path), a
resume with another adapter refused, bad adapters refused before anything is written, and one
process, two workers, two parts and Ray writing the same shards (at one thread count)."""

from __future__ import annotations

import json
import shutil
import tarfile

import pytest
import yaml

from t2i_engine.engine.recipe import build_recipe
from t2i_engine.engine.run import generate
from t2i_engine.engine.workers import cpu_threads_per_worker
from t2i_engine.errors import InputError
from tests.conftest import local_ray, torch_threads
from tests.engine.test_generate import QUIET, shard_hashes
from tests.models.test_lora import make_adapter

RECIPE = {
    "model": "tiny-sd",
    "classes": ["cat", "dog"],
    "images_per_class": 2,
    "steps": 2,
    "resolution": 32,
    "batch_size": 2,
    "images_per_shard": 2,
    "format": "png",
}


@pytest.fixture(scope="module")
def adapter(tmp_path_factory):
    return make_adapter("tiny-sd", tmp_path_factory.mktemp("lora"), seed=11, text_encoder=True)


def _metas(folder) -> list[dict]:
    out = []
    for shard in sorted(folder.glob("*.tar")):
        with tarfile.open(shard) as tar:
            out += [json.loads(tar.extractfile(m).read()) for m in tar.getmembers() if m.name.endswith(".json")]
    return out


def test_the_dataset_records_each_adapter_and_a_resume_with_another_is_refused(adapter, tmp_path):
    from t2i_engine.files import file_sha256

    out = tmp_path / "d"
    recipe = build_recipe({**RECIPE, "lora": [f"{adapter}:0.5"]})
    generate(recipe, out, QUIET)
    record = [{"sha256": file_sha256(adapter), "scale": 0.5}]
    manifest = json.loads((out / "dataset.json").read_text())
    assert [{k: a[k] for k in ("sha256", "scale")} for a in manifest["recipe"]["lora"]] == record
    assert all(m["lora"] == record for m in _metas(out)) and len(_metas(out)) == 4
    plain = build_recipe(RECIPE)
    assert plain.content_hash() != recipe.content_hash()  # the adapter changes what the dataset holds
    moved = shutil.copy(adapter, tmp_path / "elsewhere.safetensors")
    assert (
        build_recipe({**RECIPE, "lora": [{"path": str(moved), "scale": 0.5}]}).content_hash() == recipe.content_hash()
    )
    for other in ([f"{adapter}:0.6"], None):
        with pytest.raises(InputError, match=r"differs in: lora"):
            generate(build_recipe({**RECIPE, "lora": other}), out, QUIET)
    from datasets import load_dataset  # the card's features hold the adapter records

    ds = load_dataset(str(out), split="train", cache_dir=str(tmp_path / "hf"))
    assert ds[0]["json"]["lora"] == record


@pytest.mark.parametrize(
    "flags, needle",
    [
        (["--lora", "missing.safetensors"], "expected an existing LoRA file"),
        (["--lora", "{bin}"], "only safetensors"),
        (["--lora", "{adapter}", "--model", "tiny-sdxl"], "does not fit tiny-sdxl: its key"),
        (["--lora", "{adapter}:nan"], "lora.scale"),
        (["--lora", "{adapter}:strong"], "lora.scale"),
        (["--lora", "{adapter}", "--model", "tiny-pixart"], "takes no adapters"),
        (["--lora", "{adapter}", "--models", "tiny-sd=0.5,tiny-sd2=0.5"], "a mixture"),
        (["--lora", "{adapter}", "--model", "tiny-sdxl", "--devices", "cpu:2"], "does not fit tiny-sdxl"),
    ],
)
def test_bad_adapters_exit_2_before_anything_is_written(cli, adapter, tmp_path, flags, needle):
    (tmp_path / "w.bin").write_bytes(b"pickle")
    flags = [f.format(adapter=adapter, bin=tmp_path / "w.bin") for f in flags]
    args = ["generate", "--out", tmp_path / "o", "--model", "tiny-sd", "--resolution", "32", "--no-progress"]
    code, _, err = cli(*args, *flags)
    assert code == 2 and needle in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "o").exists()


@pytest.mark.alone
@pytest.mark.heavy  # four runs and Ray: under --heavy (CI's heavy step); test_mixture.py runs Ray in make test
def test_one_process_workers_parts_and_ray_fuse_the_same_adapter(cli, adapter, tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({**RECIPE, "lora": [f"{adapter}:0.8"]}))
    threads = cpu_threads_per_worker(["cpu", "cpu"])  # a CPU worker's: the reference runs at it
    args = ["generate", recipe, "--no-progress", "--device", "cpu"]
    with torch_threads(threads):
        assert cli(*args, "--out", tmp_path / "one")[0] == 0
        for part in ("0/2", "1/2"):
            assert cli(*args, "--out", tmp_path / "parts", "--part", part)[0] == 0
    assert cli(*args, "--out", tmp_path / "workers", "--devices", "cpu:2")[0] == 0
    with local_ray(num_cpus=2):
        assert cli(*args, "--out", tmp_path / "ray", "--ray")[0] == 0
    reference = shard_hashes(tmp_path / "one")
    assert len(reference) == 2 and shard_hashes(tmp_path / "parts") == reference
    assert shard_hashes(tmp_path / "workers") == reference
    if threads == 1:  # Ray's actors run at one thread each: the same bytes where a worker's count is 1 too
        assert shard_hashes(tmp_path / "ray") == reference
    assert _metas(tmp_path / "ray") == _metas(tmp_path / "one")


def test_a_registry_adapter_loads_from_the_hub_cache_with_its_published_setting(cli, adapter, tmp_path, monkeypatch):
    import huggingface_hub

    from t2i_engine.models.registry import ADAPTERS

    published = ADAPTERS["lcm-lora-sd15"]
    code, _, err = cli("generate", "--out", tmp_path / "o", "--model", "tiny-sd", "--lora", published.name)
    assert (
        code == 2 and f"hf download {published.hub_id} {published.filename}" in err and not (tmp_path / "o").exists()
    )
    # a hub cache holding that file (here: a random adapter of tiny-sd's architecture, so it fits)
    cache = tmp_path / "hub"
    snapshot = cache / f"models--{published.hub_id.replace('/', '--')}" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    shutil.copy(adapter, snapshot / published.filename)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("0" * 40)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    unset = {k: v for k, v in RECIPE.items() if k != "steps"}
    recipe = build_recipe({**unset, "lora": [published.name]})
    assert (recipe.sampler, recipe.steps, recipe.guidance) == ("lcm", 4, 1.0)  # the card's setting
    assert recipe.lora[0].name == published.name and recipe.lora[0].path.endswith(published.filename)
    mine = build_recipe({**RECIPE, "lora": [f"{published.name}:0.5"], "sampler": "tcd"})
    assert (mine.sampler, mine.steps, mine.lora[0].scale) == ("tcd", 2, 0.5)  # keys set beside it win
    code, _, err = cli(
        "generate",
        "--out",
        tmp_path / "d",
        "--model",
        "tiny-sd",
        "--lora",
        published.name,
        "--steps",
        "2",
        "--resolution",
        "32",
        "--images-per-class",
        "1",
        "--no-progress",
    )
    assert code == 0, err
    code, _, err = cli("generate", "--out", tmp_path / "x", "--model", "tiny-sd", "--lora", "lcm-lora-sdxl")
    assert code == 2 and "made for sdxl" in err and not (tmp_path / "x").exists()
