"""Datasets in GCS, against a GCS JSON API server (gcp-storage-emulator on 127.0.0.1, with GCS's
documented upload preconditions added: tests/dataset/conftest.py) reached through gcsfs as a user
reaches GCS: a run killed mid-upload resumed with every sample once, and a server gone mid-run.
What S3 and GCS share (the same files as on disk, two parts, training, a missing bucket) is in
test_bucket_dataset.py."""

from __future__ import annotations

import signal
import subprocess
import time
import uuid

import fsspec
import pytest

pytest.importorskip("gcsfs")
pytest.importorskip("gcp_storage_emulator")

from t2i_engine.engine.verify import verify_dataset
from tests.conftest import CLI, subprocess_env
from tests.dataset.dataset_files import (
    RECIPE,
    files_at,
    marked_shards_are_whole,
    shards_of,
    stop_the_store_mid_run_then_rerun,
)


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
    stop_the_store_mid_run_then_rerun(url, gcs_server, args, env, on_disk, stop_seconds=300)
