"""Datasets in GCS, against a GCS JSON API server (gcp-storage-emulator on 127.0.0.1, with GCS's
documented upload preconditions added: tests/dataset/conftest.py) reached through gcsfs as a user
reaches GCS: the same files as on disk (and its status read from the bucket), a run killed
mid-upload resumed with every sample once, two parts at once, training streamed from the bucket,
a server gone mid-run, and a bucket that is not there refused."""

from __future__ import annotations

import signal
import subprocess
import time
import uuid

import fsspec
import pytest
import torch

pytest.importorskip("gcsfs")
pytest.importorskip("gcp_storage_emulator")

from t2i_engine.engine.recipe import build_recipe
from t2i_engine.engine.run import generate
from t2i_engine.engine.status import dataset_status
from t2i_engine.engine.verify import verify_dataset
from tests.conftest import CLI, subprocess_env
from tests.dataset.dataset_files import (
    OPTIONS,
    RECIPE,
    files_at,
    marked_shards_are_whole,
    put_both,
    shards_of,
    wait_for,
)


def test_a_dataset_in_gcs_is_the_same_files_as_on_disk_and_resumes(gcs_bucket, on_disk):
    url = f"{gcs_bucket}/ds"
    recipe = build_recipe({"model": "digits", "images_per_class": 4, "steps": 2, "images_per_shard": 4})
    summary = generate(recipe, url, OPTIONS)
    assert summary["dataset_complete"] and files_at(url) == on_disk and verify_dataset(url) == []
    assert generate(recipe, url, OPTIONS)["shards_skipped"] == 10
    st = dataset_status(url)  # from the manifest, one listing and the run log in the bucket
    assert st["images"]["done"] == 40 and st["shards"]["in_flight"] == 0 and st["locks"] == []


def test_a_bucket_that_is_not_there_is_refused_before_any_work(cli, gcs_bucket):
    code, _, err = cli("generate", "--out", "gs://no-such-bucket-t2i/ds", "--images-per-class", "1")
    assert code == 2 and "gs://no-such-bucket-t2i/ds" in err and len(err.strip().splitlines()) == 1


@pytest.mark.alone
@pytest.mark.heavy  # a killed process and a rerun: under --heavy (CI's heavy step), make test's margin
def test_a_run_killed_mid_upload_leaves_no_partial_shard_and_resumes(gcs_server, on_disk, tmp_path):
    """SIGKILL while shard 3's tar is being uploaded (the server gets the upload, kills the
    client and stores nothing): no file of that shard is in the bucket, every shard whose stats
    (the marker) are there has its index and a tar of the recorded sha256, the killed run's lease
    expires (2 s here), and the rerun completes the dataset with every sample once."""
    bucket = f"t2i-{uuid.uuid4().hex[:12]}"
    fsspec.filesystem("gs").mkdir(bucket)
    url = f"gs://{bucket}/killed"
    (tmp_path / "recipe.yaml").write_text(RECIPE)
    env = subprocess_env(T2I_ENGINE_LEASE_SECONDS="2")
    args = [*CLI, "generate", str(tmp_path / "recipe.yaml"), "--out", url, "--device", "cpu",
            "--encode-workers", "0", "--no-progress"]  # fmt: skip
    proc = subprocess.Popen(args, stderr=subprocess.DEVNULL, env=env)

    def kill_on_shard_3(bucket_name: str, name: str) -> bool:
        if name == "killed/000003.tar":
            proc.send_signal(signal.SIGKILL)
            return True
        return False

    gcs_server.before_upload = kill_on_shard_3
    proc.wait(timeout=180)
    gcs_server.before_upload = None
    assert proc.returncode == -signal.SIGKILL
    files = files_at(url)
    assert not [n for n in files if n.startswith("000003.")]  # nothing of the shard in flight
    # a shard's stats, its marker, stand only beside its whole, checked tar; one writer thread commits in order
    assert marked_shards_are_whole(files) == ["000000", "000001", "000002"]
    time.sleep(2.0)  # the killed run's lease expires
    done = subprocess.run(args, stderr=subprocess.PIPE, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert shards_of(files_at(url)) == shards_of(on_disk) and verify_dataset(url) == []


@pytest.mark.alone
@pytest.mark.heavy  # two processes at once: under --heavy (CI's heavy step), keeping make test under 5 minutes
def test_two_parts_at_once_write_one_dataset(gcs_bucket, on_disk, tmp_path):
    url = f"{gcs_bucket}/parts"
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


def test_train_streams_a_dataset_from_gcs_and_learns_exactly_what_it_learns_from_disk(gcs_bucket, on_disk, tmp_path):
    """`train gs://...` streams the shards from the bucket through a forked loader worker (its
    own gcsfs client): the same weights as training on the folder."""
    from safetensors.torch import load_file

    from t2i_engine.training.loop import train
    from t2i_engine.training.presets import resolve_config

    url, local = f"{gcs_bucket}/train", tmp_path / "ds"
    put_both(on_disk, url, local)
    config = resolve_config("small", {"epochs": 1, "batch_size": 8, "workers": 1})
    runs = {}
    for name, data in (("disk", local), ("gcs", url)):
        result = train(config, data, tmp_path / name, device="cpu", progress=False)
        runs[name] = load_file(tmp_path / name / "best.safetensors")
        assert result["train_images"] + result["val_images"] == 40
    assert runs["disk"].keys() == runs["gcs"].keys()
    assert all(torch.equal(runs["disk"][k], runs["gcs"][k]) for k in runs["disk"])


@pytest.mark.alone
@pytest.mark.heavy  # a run stopped (after gcsfs's ~30 s of retries) and rerun: under --heavy (CI's heavy step)
def test_a_store_that_stops_answering_stops_the_run_cleanly_and_a_rerun_completes(gcs_server, on_disk, tmp_path):
    """The GCS server goes away once some shard is committed: after gcsfs's own retries the run
    exits 1 with one line naming the URL (no client traceback); no partial shard is marked; with
    the server back (same buckets) and the stopped run's lease expired, the same command
    completes the dataset with every sample once."""
    bucket = f"t2i-{uuid.uuid4().hex[:12]}"
    fsspec.filesystem("gs").mkdir(bucket)
    url = f"gs://{bucket}/ds"
    (tmp_path / "recipe.yaml").write_text(RECIPE)
    env = subprocess_env(T2I_ENGINE_LEASE_SECONDS="2")
    args = [*CLI, "generate", str(tmp_path / "recipe.yaml"), "--out", url, "--no-progress", "--device", "cpu",
            "--encode-workers", "0"]  # fmt: skip
    proc = subprocess.Popen(args, stderr=subprocess.PIPE, text=True, env=env)
    wait_for(url, "000001.stats.json", proc)
    gcs_server.stop()
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 1, err
    assert len(err.strip().splitlines()) == 1 and url in err and "rerun" in err, err
    gcs_server.start()
    marked_shards_are_whole(files_at(url))
    time.sleep(2)  # the stopped run could not remove its lease: it expires
    done = subprocess.run(args, stderr=subprocess.PIPE, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert shards_of(files_at(url)) == shards_of(on_disk) and verify_dataset(url) == []
