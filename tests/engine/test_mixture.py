"""Mixtures of generators (recipe key `models`): each class's images split by the shares in the
plan, every unit one model's, keys and seeds those of the same recipe without a mixture; one
process, two workers, two parts and Ray write the same samples and manifest; each sample's JSON
names its model and verify holds it to the plan; bad mixtures exit 2 with nothing written.
The mixture is of the two embedded models, so this is also digits-dit's test of the workers,
parts and Ray paths, and the suite's test of `--devices cpu:2` without a failure and of
`--ray local` (a local Ray instance of 2 CPUs, under --heavy; test_workers.py kills a worker). The README
promises byte-identical shards at one thread count: the one-process reference runs at the
thread count of a CPU worker, so runs at that count are compared byte for byte, and a run at
another (Ray's one-CPU actors on a machine of more than 2 cores) within one level."""

from __future__ import annotations

import io
import json
import tarfile
from collections import Counter
from pathlib import Path

import pytest
import yaml

from t2i_engine.engine.plan import plan_samples, plan_units
from t2i_engine.engine.recipe import build_recipe, mixture_counts
from t2i_engine.engine.run import RunOptions, generate
from t2i_engine.engine.verify import verify_dataset
from t2i_engine.engine.workers import cpu_threads_per_worker
from tests.conftest import local_ray, torch_threads
from tests.engine.test_generate import QUIET, sample_differences, shard_hashes

MIX = [{"model": "digits", "share": 0.6}, {"model": "digits-dit", "share": 0.4}]
RECIPE = {
    "models": MIX,
    "classes": ["cat", "dog"],
    "images_per_class": 5,
    "steps": 2,
    "resolution": 32,
    "batch_size": 4,
    "images_per_shard": 2,
    "format": "png",
}  # 10 samples: 6 digits, 4 digits-dit


def test_the_plan_splits_each_class_by_share_in_units_of_one_model():
    assert mixture_counts([0.6, 0.4], 5) == [3, 2] and mixture_counts([0.5, 0.25, 0.25], 3) == [1, 1, 1]
    recipe = build_recipe(RECIPE)
    samples = plan_samples(recipe)
    alone = plan_samples(build_recipe({k: v for k, v in RECIPE.items() if k != "models"}))
    assert [(s.key, s.seed, s.prompt) for s in samples] == [(s.key, s.seed, s.prompt) for s in alone]
    per_class = Counter((s.class_id, s.model) for s in samples)
    assert per_class == {
        ("cat", "digits"): 3,
        ("dog", "digits"): 3,
        ("cat", "digits-dit"): 2,
        ("dog", "digits-dit"): 2,
    }
    units = plan_units(recipe)
    assert all({s.model for s in u.samples} == {u.model} for u in units)
    assert [u.model for u in units] == ["digits"] * 3 + ["digits-dit"] * 2
    assert [u.shard for u in units] == list(range(5))
    assert recipe.for_model("digits-dit").steps == 2
    with_tiny_sd = {**RECIPE, "models": [MIX[0], {"model": "tiny-sd", "share": 0.4}], "steps": None}
    assert build_recipe(with_tiny_sd).mixture[1].steps == 20  # each model's own default steps


WORKERS = "cpu:2"
THREADS = cpu_threads_per_worker(["cpu", "cpu"])  # each worker's, and the one-process reference's


@pytest.fixture(scope="module")
def whole(tmp_path_factory):
    out = tmp_path_factory.mktemp("mix") / "whole"
    with torch_threads(THREADS):
        generate(build_recipe(RECIPE), out, QUIET)
    return out


def _metas(folder) -> dict:
    out = {}
    for shard in folder.glob("*.tar"):
        with tarfile.open(shard) as tar:
            for m in tar.getmembers():
                if m.name.endswith(".json"):
                    out[m.name] = json.loads(tar.extractfile(m).read())
    return out


def _generate_twice(cli, recipe, out, *flags) -> dict:
    """`generate --json` through the CLI, then the same command again on the finished dataset: it
    must exit 0, say there was nothing left to do, and keep every field of the first summary."""
    args = ["generate", recipe, "--out", out, *flags, "--no-progress", "--json"]
    code, first, err = cli(*args)
    assert code == 0, err
    code, again, err = cli(*args)
    assert code == 0 and "nothing left to do" in err, err
    first, again = json.loads(first), json.loads(again)
    assert set(again) == set(first) and again["shards_written"] == 0, set(first) ^ set(again)
    return first


def _assert_same_mixture(whole: Path, made: Path, threads: int) -> None:
    """`made` holds what `whole` holds: the same recipe, samples and shards (and the same bytes at
    the same thread count, the README's promise)."""
    manifest, theirs = (json.loads((d / "dataset.json").read_text()) for d in (whole, made))
    assert theirs["recipe"] == manifest["recipe"] and theirs["recipe_hash"] == manifest["recipe_hash"]
    assert _metas(made) == _metas(whole) and verify_dataset(made) == []
    if threads == THREADS:
        assert shard_hashes(made) == shard_hashes(whole) and theirs["shards"] == manifest["shards"], made
    else:  # names and counts; the hash and size follow the pixels
        assert sample_differences(made, whole) == [], made
        without_hash = lambda shards: [{k: s[k] for k in ("name", "count")} for s in shards]  # noqa: E731
        assert without_hash(theirs["shards"]) == without_hash(manifest["shards"]), made


@pytest.mark.alone
@pytest.mark.slow
def test_workers_and_parts_write_the_same_mixture_as_one_process(cli, whole, tmp_path):
    recipe = tmp_path / "mixture.yaml"
    recipe.write_text(yaml.safe_dump(RECIPE))
    summary = _generate_twice(cli, recipe, tmp_path / "workers", "--devices", WORKERS)
    assert summary["worker_restarts"] == 0 and len(summary["device_images_per_second"]) == 2
    with torch_threads(THREADS):
        for part in ((0, 2), (1, 2)):
            generate(
                build_recipe(RECIPE),
                tmp_path / "parts",
                RunOptions(device="cpu", progress=False, encode_workers=0, part=part),
            )
    metas = _metas(whole)
    assert Counter(m["model"] for m in metas.values()) == {"digits": 6, "digits-dit": 4}
    assert {m["steps"] for m in metas.values()} == {2}
    for other in ("workers", "parts"):
        _assert_same_mixture(whole, tmp_path / other, THREADS)


@pytest.mark.alone
@pytest.mark.heavy  # a local Ray instance (~20 s to start here): under --heavy (CI's heavy step), make test's margin
def test_ray_writes_the_same_mixture_as_one_process(cli, whole, tmp_path):
    recipe = tmp_path / "mixture.yaml"
    recipe.write_text(yaml.safe_dump(RECIPE))
    with local_ray(num_cpus=2):
        summary = _generate_twice(cli, recipe, tmp_path / "ray", "--ray")
    assert summary["ray"] == {"ray-cpu-actors": 2} and summary["dataset_complete"]
    _assert_same_mixture(whole, tmp_path / "ray", threads=1)  # each actor holds one CPU (ray_runner)


def test_verify_holds_each_sample_to_its_planned_model(whole, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(whole, copy)
    shard = copy / "000000.tar"
    with tarfile.open(shard) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    with tarfile.open(shard, "w", format=tarfile.USTAR_FORMAT) as tar:
        for m, data in members:
            if m.name.endswith(".json"):
                data = json.dumps({**json.loads(data), "model": "digits-dit"}).encode()
                m.size = len(data)
            tar.addfile(m, io.BytesIO(data))
    problems = [str(p) for p in verify_dataset(copy)]
    disagree = sorted(p.split("sample ")[1].split(":")[0] for p in problems if "json disagrees with the plan" in p)
    assert disagree == ["cat_000000", "dog_000000"], problems  # digits' samples now claiming digits-dit


@pytest.mark.parametrize(
    "flags, needle",
    [
        (["--models", "digits=0.5,tiny-sd=0.4", "--resolution", "32"], "adding up to 1"),
        (["--models", "digits=0.5,digits=0.5"], "distinct models"),
        (["--models", "digits=1"], "a list of 2 to 8"),
        (["--models", "digits=0.5,nope=0.5"], "nope"),
        (["--models", "digits=0.5,tiny-sd=0.5"], "set resolution for the mixture"),
        (["--models", "digits=0.5,tiny-sd=0.5", "--model", "digits", "--resolution", "32"], "not both"),
        (["--models", "digits=0.5,tiny-sd=x", "--resolution", "32"], "models.share"),
    ],
)
def test_bad_mixtures_exit_2_before_anything_is_written(cli, tmp_path, flags, needle):
    code, _, err = cli("generate", "--out", tmp_path / "o", *flags, "--device", "cpu")
    assert code == 2 and needle in err and not (tmp_path / "o").exists(), err
