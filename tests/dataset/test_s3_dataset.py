"""Datasets in S3, against a real S3 API server (moto's, on 127.0.0.1; tests/dataset/conftest.py)
reached through s3fs as a user reaches S3: a run killed mid-upload resumed with every sample
once, workers, the store going away, a full staging folder, Ray across nodes, scores and status.
What S3 and GCS share (the same files as on disk, two parts, training, a missing bucket) is in
test_bucket_dataset.py."""

from __future__ import annotations

import json
import signal
import subprocess
import time

import fsspec
import pytest

pytest.importorskip("s3fs")
pytest.importorskip("moto")

from t2i_engine.dataset.runlog import read_log
from t2i_engine.dataset.store import as_store
from t2i_engine.engine.status import dataset_status
from t2i_engine.engine.verify import verify_dataset
from tests.conftest import CLI, ray_cluster, subprocess_env
from tests.dataset.conftest import s3_environment
from tests.dataset.dataset_files import (
    RECIPE,
    files_at,
    marked_shards_are_whole,
    put_both,
    shards_of,
    stop_the_store_mid_run_then_rerun,
    wait_for,
)


def _kill_on_put(proc, path_end: str):
    """A before_request hook: SIGKILL `proc` when its PUT of a path ending in `path_end` arrives,
    and drop that request (a client killed mid-upload)."""

    def hook(environ) -> bool:
        if environ["REQUEST_METHOD"] == "PUT" and environ["PATH_INFO"].endswith(path_end):
            proc.send_signal(signal.SIGKILL)
            return True
        return False

    return hook


@pytest.mark.alone
@pytest.mark.heavy  # a killed process and a rerun: under --heavy (CI's heavy step), make test's margin
def test_a_run_killed_mid_upload_leaves_no_partial_shard_and_resumes(s3_server, on_disk, tmp_path):
    """SIGKILL while the upload of shard 3 is in flight (the server sees its PUT, kills the
    client, and never stores it): no file of that shard is in the bucket, every shard whose stats
    (the marker) are there has its index and a tar of the recorded sha256 (at a URL the tar is
    uploaded and checked first, the marker last), the killed run's lease expires (2 s here), and
    the rerun completes the dataset with every sample once."""
    bucket = f"t2i-{time.time_ns() % 10**12}"
    fsspec.filesystem("s3").mkdir(bucket)
    url = f"s3://{bucket}/killed"
    (tmp_path / "recipe.yaml").write_text(RECIPE)
    env = subprocess_env(T2I_ENGINE_LEASE_SECONDS="2")
    args = [*CLI, "generate", str(tmp_path / "recipe.yaml"), "--out", url, "--device", "cpu",
            "--encode-workers", "0", "--no-progress"]  # fmt: skip
    proc = subprocess.Popen(args, stderr=subprocess.DEVNULL, env=env)

    s3_server.before_request = _kill_on_put(proc, "/killed/000003.tar")
    proc.wait(timeout=180)
    s3_server.before_request = None
    assert proc.returncode == -signal.SIGKILL
    files = files_at(url)
    assert not [n for n in files if n.startswith("000003.")]  # nothing of the shard in flight
    # a shard's stats, its marker, stand only beside its whole, checked tar; one writer thread commits in order
    assert marked_shards_are_whole(files) == ["000000", "000001", "000002"]
    time.sleep(1.2)  # unrenewed for over half its 2 s: `status` calls the killed run's lease stale
    st = dataset_status(url)
    assert st["images"]["done"] == 12 and st["shards"]["in_flight"] == 0  # no live holder: nothing in flight
    assert [(lock["holder"].rsplit(" ", 1)[-1], lock["state"]) for lock in st["locks"]] in (
        [(str(proc.pid), "stale")],
        [(str(proc.pid), "expired")],
    ), st["locks"]
    time.sleep(0.8)  # and now it has expired
    done = subprocess.run(args, stderr=subprocess.PIPE, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert shards_of(files_at(url)) == shards_of(on_disk) and verify_dataset(url) == []


@pytest.mark.alone
@pytest.mark.heavy  # worker processes to S3: under --heavy (CI's heavy step), keeping make test under 5 minutes
def test_worker_processes_write_to_s3_too(cli, s3_bucket, tmp_path):
    """--devices: each worker reopens the store from its URL (credentials from the environment it
    inherits) and commits its shards there; every sample once."""
    (tmp_path / "recipe.yaml").write_text(RECIPE)
    url = f"{s3_bucket}/workers"
    code, _, err = cli("generate", tmp_path / "recipe.yaml", "--out", url, "--devices", "cpu:2", "--no-progress")
    assert code == 0, err
    assert verify_dataset(url) == [] and len([n for n in files_at(url) if n.endswith(".tar")]) == 10


@pytest.mark.alone
@pytest.mark.heavy  # a run stopped and rerun in subprocesses: under --heavy (CI's heavy step), make test's margin
@pytest.mark.parametrize("scale_out", [[], ["--devices", "cpu:2"]], ids=["one-process", "two-workers"])
def test_a_store_that_stops_answering_stops_the_run_cleanly_and_a_rerun_completes(
    s3_server, on_disk, tmp_path, scale_out
):
    """The S3 server goes away once some shard is committed: the run exits 1 with one line naming
    the URL (botocore's retries cut to 2 here, as AWS_MAX_ATTEMPTS lets a user); no partial shard is
    marked; with the server back (same buckets) and the stopped run's lease expired, the same
    command completes the dataset with every sample once."""
    bucket = f"t2i-{time.time_ns() % 10**12}"
    fsspec.filesystem("s3").mkdir(bucket)
    url = f"s3://{bucket}/ds"
    (tmp_path / "recipe.yaml").write_text(RECIPE)
    env = subprocess_env(T2I_ENGINE_LEASE_SECONDS="2", AWS_MAX_ATTEMPTS="2")
    args = [*CLI, "generate", str(tmp_path / "recipe.yaml"), "--out", url, "--no-progress",
            *(scale_out or ["--device", "cpu", "--encode-workers", "0"])]  # fmt: skip
    stop_the_store_mid_run_then_rerun(url, s3_server, args, env, on_disk, stop_seconds=180)


def test_a_store_that_does_not_answer_raises_one_error_naming_the_url(monkeypatch):
    """Every call of an FsspecStore whose server is gone (a port nobody listens on) raises
    StoreUnavailable naming the URL, which the CLI reports as one line, exit 1."""
    import socket

    from t2i_engine.dataset.store import FsspecStore
    from t2i_engine.errors import StoreUnavailable

    with socket.socket() as s:  # a free port, closed again: nothing answers there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for key, value in {**s3_environment(f"http://127.0.0.1:{port}"), "AWS_MAX_ATTEMPTS": "1"}.items():
        monkeypatch.setenv(key, value)
    from s3fs import S3FileSystem

    S3FileSystem.clear_instance_cache()  # fsspec caches clients whatever the environment: not the live one's
    store = FsspecStore("s3://gone/ds")
    calls = [
        lambda: store.exists("x"),
        lambda: store.list("*.tar"),
        lambda: store.read_text("x"),
        lambda: store.write_text("x", "1"),
        lambda: store.remove("x"),
        lambda: store.held("lock"),
    ]
    try:
        for call in calls:
            with pytest.raises(StoreUnavailable, match="s3://gone/ds") as caught:
                call()
            assert "\n" not in str(caught.value)
    finally:
        S3FileSystem.clear_instance_cache()  # nor may a later test get this one


@pytest.mark.heavy  # a subprocess run: under --heavy (CI's heavy step); the local disk-full test is in make test
def test_a_full_staging_folder_stops_cleanly_naming_it_and_nothing_is_marked(s3_bucket, tmp_path):
    """Shards for a URL are built in TMPDIR first: when it fills (here a 16 KiB file-size limit,
    and a 20 KiB shard), the run exits 1 with one line naming that folder, not the bucket's."""
    import resource

    url = f"{s3_bucket}/staging"
    (tmp_path / "recipe.yaml").write_text(RECIPE)
    staging = tmp_path / "staging"
    staging.mkdir()

    def small_disk():
        resource.setrlimit(resource.RLIMIT_FSIZE, (16384, 16384))

    full = subprocess.run(
        [*CLI, "generate", str(tmp_path / "recipe.yaml"), "--out", url, "--device", "cpu", "--encode-workers", "0",
         "--no-progress", "--images-per-shard", "20"],
        env=subprocess_env(TMPDIR=str(staging), PYTHONDONTWRITEBYTECODE="1"), preexec_fn=small_disk,
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    lines = full.stderr.strip().splitlines()
    assert full.returncode == 1 and len(lines) == 1, full.stderr
    assert f"{staging} (where shards for {url} are built before upload; TMPDIR moves it)" in lines[0]
    assert "no space" in lines[0] and "the 2 still to write" in lines[0]
    assert not list(staging.glob("t2i-engine-*")) and not [
        n for n in files_at(url) if n.endswith((".tar", ".stats.json"))
    ]


@pytest.mark.alone
@pytest.mark.heavy  # a Ray cluster of three nodes: under --heavy (CI's heavy step)
def test_ray_across_three_nodes_writes_to_s3_and_a_node_lost_mid_run_costs_only_its_unit(s3_bucket, tmp_path):
    """A local Ray cluster (a head for the driver, three one-CPU nodes: one actor each) writes to
    the S3 server with no shared folder; one node is removed once shards are committed. The run
    completes, every sample once (verify, and each key in one shard), and at most the one unit that
    node's actor held was put back (`ray_units_retried`)."""
    url = f"{s3_bucket}/ray"
    (tmp_path / "recipe.yaml").write_text(
        "model: digits\nimages_per_class: 8\nsteps: 4\nimages_per_shard: 2\n"
    )  # 80 samples, 40 units
    with ray_cluster() as cluster:  # its head, the driver's node, holds no actor
        nodes = [cluster.add_node(num_cpus=1) for _ in range(3)]
        cluster.wait_for_nodes()
        args = [*CLI, "generate", str(tmp_path / "recipe.yaml"), "--out", url, "--ray", cluster.address,
                "--no-progress", "--json"]  # fmt: skip
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=subprocess_env())  # fmt: skip
        wait_for(url, "000003.stats.json", proc, seconds=240)
        assert proc.poll() is None, proc.communicate()[1]
        cluster.remove_node(nodes[1])
        out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    summary = json.loads(out)
    assert summary["dataset_complete"] and summary["ray"] == {"ray-cpu-actors": 3}
    assert summary["ray_units_retried"] <= 1, summary
    assert verify_dataset(url) == []
    files = files_at(url)
    keys = [json.loads(line)["key"] for n in files if n.endswith(".index.jsonl") for line in files[n].splitlines()]
    assert len(keys) == len(set(keys)) == 80
    logged = [line for line in read_log(as_store(url)) if line["event"] == "shard"]  # the actors' own log files
    assert len({line["shard"] for line in logged}) == len(logged) >= 39  # the lost node's last line may be lost
    # each actor its own writer (the removed node's may not have committed a shard before it went)
    assert len({line["worker"] for line in logged}) >= 2 and all(line["worker"].startswith("ray-") for line in logged)


def test_score_filter_and_a_subset_read_back_work_in_s3_as_on_disk(cli, s3_bucket, on_disk, tmp_path):
    url, local = f"{s3_bucket}/scored", tmp_path / "ds"
    put_both(on_disk, url, local)
    for where in (local, url):
        code, _, err = cli("score", where, "--judge", "digits", "--device", "cpu", "--no-progress")
        assert code == 0, err
    scores = {k: v for k, v in files_at(url).items() if k.endswith(".scores.parquet")}
    assert len(scores) == 10 and scores == {p.name: p.read_bytes() for p in local.glob("*.scores.parquet")}

    subset = f"{s3_bucket}/best.json"
    assert cli("filter", url, "--out", subset, "--keep-per-class", "2")[0] == 0
    code, _, err = cli("train", url, "--subset", subset, "--out", tmp_path / "run", "--epochs", "1")
    assert code == 0, err
    assert json.loads((tmp_path / "run" / "config.json").read_text())["data"]["images"] == 20
    assert cli("verify", url, "--subset", subset)[0] == 0


@pytest.mark.alone
@pytest.mark.heavy  # a killed process and a rerun: under --heavy (CI's heavy step), make test's margin
def test_a_score_killed_mid_upload_resumes_with_the_shards_it_had_not_recorded(s3_server, on_disk, tmp_path):
    """SIGKILL while the scores of shard 3 are being uploaded: the rerun (once the killed run's
    2 s lease has expired) scores shards 3 to 9 only, and every scores file equals those made on disk."""
    from t2i_engine.eval.score import score

    bucket = f"t2i-{time.time_ns() % 10**12}"
    fsspec.filesystem("s3").mkdir(bucket)
    url, local = f"s3://{bucket}/scored", tmp_path / "ds"
    put_both(on_disk, url, local)
    args = [*CLI, "score", url, "--judge", "digits", "--device", "cpu", "--no-progress"]
    proc = subprocess.Popen(args, stderr=subprocess.DEVNULL, env=subprocess_env(T2I_ENGINE_LEASE_SECONDS="2"))

    s3_server.before_request = _kill_on_put(proc, "/scored/000003.scores.parquet")
    proc.wait(timeout=180)
    s3_server.before_request = None
    assert proc.returncode == -signal.SIGKILL
    time.sleep(2.2)  # the killed run's lease expires
    resumed = score(url, judge="digits", device="cpu", progress=False)
    assert (resumed["scored"], resumed["skipped"]) == (7, 3)
    score(local, judge="digits", device="cpu", progress=False)
    scores = {k: v for k, v in files_at(url).items() if k.endswith(".scores.parquet")}
    assert scores == {p.name: p.read_bytes() for p in local.glob("*.scores.parquet")} and len(scores) == 10


@pytest.mark.alone
@pytest.mark.heavy  # a run in a subprocess held mid-upload: under --heavy (CI's heavy step), make test's margin
def test_status_at_a_url_counts_the_shard_whose_upload_is_held_up_as_in_flight(s3_server, tmp_path):
    import threading

    bucket = f"t2i-{time.time_ns() % 10**12}"
    fsspec.filesystem("s3").mkdir(bucket)
    url = f"s3://{bucket}/held"
    (tmp_path / "recipe.yaml").write_text(RECIPE)
    reached, release = threading.Event(), threading.Event()

    def hold_shard_3(environ) -> bool:
        if environ["REQUEST_METHOD"] == "PUT" and environ["PATH_INFO"].endswith("/held/000003.tar"):
            reached.set()
            release.wait(60)
        return False

    s3_server.before_request = hold_shard_3
    args = [*CLI, "generate", str(tmp_path / "recipe.yaml"), "--out", url, "--device", "cpu",
            "--encode-workers", "0", "--no-progress"]  # fmt: skip
    proc = subprocess.Popen(args, stderr=subprocess.DEVNULL, env=subprocess_env())
    try:
        assert reached.wait(120)
        st = dataset_status(url)
        assert st["shards"]["in_flight"] >= 1 and st["shards"]["done"] == 3
        assert any(lock["state"] == "live" for lock in st["locks"])
    finally:
        release.set()
        s3_server.before_request = None
        proc.wait(timeout=180)
    assert proc.returncode == 0
    st = dataset_status(url)
    assert st["complete"] and st["shards"]["in_flight"] == 0
