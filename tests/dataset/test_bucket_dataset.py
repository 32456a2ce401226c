"""What a dataset in a bucket does alike on S3 and on GCS (the `bucket` fixture: moto's S3 server
and the GCS emulator on 127.0.0.1, reached through s3fs and gcsfs): the same files as the same
recipe on disk, resumed and its status read from the bucket; two parts at once; training
streamed from the bucket; a bucket that is not there refused before any work."""

from __future__ import annotations

import subprocess

import pytest
import torch

from t2i_engine.engine.recipe import build_recipe
from t2i_engine.engine.run import generate
from t2i_engine.engine.status import dataset_status
from t2i_engine.engine.verify import verify_dataset
from tests.conftest import CLI, subprocess_env
from tests.dataset.dataset_files import OPTIONS, RECIPE, files_at, put_both, shards_of


def test_a_dataset_in_a_bucket_is_the_same_files_as_on_disk_and_resumes(bucket, on_disk):
    url = f"{bucket}/ds"
    recipe = build_recipe({"model": "digits", "images_per_class": 4, "steps": 2, "images_per_shard": 4})
    summary = generate(recipe, url, OPTIONS)
    assert summary["dataset_complete"] and files_at(url) == on_disk and verify_dataset(url) == []
    assert generate(recipe, url, OPTIONS)["shards_skipped"] == 10
    st = dataset_status(url)  # from the manifest, one listing and the run log in the bucket
    assert st["images"]["done"] == 40 and st["shards"]["in_flight"] == 0 and st["locks"] == []


def test_a_bucket_that_is_not_there_is_refused_before_any_work(cli, bucket):
    url = f"{bucket.split('://')[0]}://no-such-bucket-t2i/ds"
    code, _, err = cli("generate", "--out", url, "--images-per-class", "1")
    assert code == 2 and url in err and len(err.strip().splitlines()) == 1


@pytest.mark.alone
@pytest.mark.heavy  # two processes at once: under --heavy (CI's heavy step), keeping make test under 5 minutes
def test_two_parts_at_once_write_one_dataset(bucket, on_disk, tmp_path):
    url = f"{bucket}/parts"
    (tmp_path / "recipe.yaml").write_text(RECIPE)
    args = ["generate", str(tmp_path / "recipe.yaml"), "--out", url, "--device", "cpu", "--encode-workers", "0"]
    procs = [
        subprocess.Popen([*CLI, *args, "--part", f"{i}/2", "--no-progress"], stderr=subprocess.PIPE, text=True,
                         env=subprocess_env())
        for i in range(2)
    ]  # fmt: skip
    errors = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errors
    assert shards_of(files_at(url)) == shards_of(on_disk) and verify_dataset(url) == []


def test_train_streams_a_dataset_from_a_bucket_and_learns_exactly_what_it_learns_from_disk(bucket, on_disk, tmp_path):
    """`train s3://...` / `train gs://...` reads the shards from the bucket (listing from the
    indexes, a shard streamed when a loader worker reads it, a forked worker making its own
    client): the same weights as training on the folder."""
    from safetensors.torch import load_file

    from t2i_engine.training.loop import train
    from t2i_engine.training.presets import resolve_config

    url, local = f"{bucket}/train", tmp_path / "ds"
    put_both(on_disk, url, local)
    config = resolve_config("small", {"epochs": 1, "batch_size": 8, "workers": 1})
    runs = {}
    for name, data in (("disk", local), ("bucket", url)):
        result = train(config, data, tmp_path / name, device="cpu", progress=False)
        runs[name] = load_file(tmp_path / name / "best.safetensors")
        assert result["train_images"] + result["val_images"] == 40
    assert runs["disk"].keys() == runs["bucket"].keys()
    assert all(torch.equal(runs["disk"][k], runs["bucket"][k]) for k in runs["disk"])
