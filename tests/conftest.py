"""Shared helpers: small tiny-sd recipes and one in-process CLI runner."""

from __future__ import annotations

import os
import shutil
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest

from t2i_engine.engine.recipe import Recipe, build_recipe

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "t2i_engine.cli"]


def tiny_recipe(**fields) -> Recipe:
    """A tiny-sd recipe that runs in about a second on a CPU: 2 steps, 32 px."""
    raw = {
        "model": "tiny-sd",
        "classes": ["cat", "dog", "goldfish"],
        "images_per_class": 3,
        "steps": 2,
        "resolution": 32,
        "batch_size": 2,
        "images_per_shard": 4,
        **fields,
    }
    return build_recipe(raw)


@pytest.fixture
def cli(capsys):
    """Run `t2i-engine ARGS...` in this process; returns (exit code, stdout, stderr)."""
    from t2i_engine.cli import main

    def run(*args: str):
        code = main([str(a) for a in args])
        out, err = capsys.readouterr()
        return code, out, err

    return run


def pytest_addoption(parser):
    parser.addoption(
        "--heavy",
        action="store_true",
        help="also run the tests marked heavy (minutes each on 2 CPU cores: "
        "torch.compile on a CPU); `make test-heavy`",
    )


def pytest_collection_modifyitems(config, items):
    import torch

    for item in items:  # under `pytest -n N --dist loadgroup` (make test): one worker, one at a time
        if "alone" in item.keywords:
            item.add_marker(pytest.mark.xdist_group("alone"))

    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="needs CUDA")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)
    if not config.getoption("--heavy"):  # kept out of the 15-minute suite; run with --heavy
        skip = pytest.mark.skip(reason="heavy: run with --heavy (make test-heavy)")
        for item in items:
            if "heavy" in item.keywords:
                item.add_marker(skip)


os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach a hub


# Variables set by libraries, not by a test (prefixes): pytest (the test's phase), torch's inductor
# on first use (its cache folder, to the default it reads anyway), scikit-learn on import (OpenMP's).
_SET_BY_LIBRARIES = ("PYTEST_CURRENT_TEST", "TORCHINDUCTOR_", "_TORCHINDUCTOR_", "KMP_")


@pytest.fixture(autouse=True)
def process_state_is_left_as_found():
    """No test may leave process-wide state changed: torch's thread count (byte identity holds
    only at one thread count, README), the environment, or the global random generators. A test
    that leaves threads or the environment changed fails, naming what it changed; every test's
    global seeds are put back (a test may seed its own inputs)."""
    import random

    import numpy as np
    import torch

    threads, interop, env = torch.get_num_threads(), torch.get_num_interop_threads(), dict(os.environ)
    rng = (random.getstate(), np.random.get_state(), torch.get_rng_state())
    yield
    changed = []
    if torch.get_num_threads() != threads:
        changed.append(f"torch threads {threads} -> {torch.get_num_threads()}")
        torch.set_num_threads(threads)
    if torch.get_num_interop_threads() != interop:  # it can be set once per process only: report it
        changed.append(f"torch inter-op threads {interop} -> {torch.get_num_interop_threads()}")
    keys = sorted(
        k
        for k in env.keys() | os.environ.keys()
        if env.get(k) != os.environ.get(k) and not k.startswith(_SET_BY_LIBRARIES)
    )
    if keys:
        changed.append(f"environment variables {keys}")
        for k in keys:
            if k in env:
                os.environ[k] = env[k]
            else:
                del os.environ[k]
    random.setstate(rng[0])
    np.random.set_state(rng[1])
    torch.set_rng_state(rng[2])
    assert not changed, "the test left process-wide state changed: " + "; ".join(changed)


@contextmanager
def torch_threads(n: int):
    """Run a block at `n` torch threads, then put the count back."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextmanager
def local_ray(num_cpus: int = 2):
    """A local Ray instance for the block; the environment variables that importing ray and
    ray.init set are put back."""
    env = dict(os.environ)
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
    try:
        yield ray
    finally:
        ray.shutdown()
        os.environ.clear()
        os.environ.update(env)


@contextmanager
def ray_cluster():
    """A local Ray cluster of several nodes for the block (ray.cluster_utils): its head, where the
    driver connects, holds no CPU, so actors go to the nodes the test adds; the environment
    variables that importing ray sets are put back."""
    env = dict(os.environ)
    ray = pytest.importorskip("ray")
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    try:
        yield cluster
    finally:
        cluster.shutdown()
        ray.shutdown()
        os.environ.clear()
        os.environ.update(env)


def subprocess_env(**extra: str) -> dict[str, str]:
    """The environment for a `t2i-engine` subprocess whose output is compared byte for byte with
    one made in this process: torch's thread count pinned to this process's (README: identity holds
    at one thread count), and this checkout importable."""
    import torch

    return {
        **os.environ,
        "OMP_NUM_THREADS": str(torch.get_num_threads()),
        "PYTHONPATH": str(ROOT),
        **extra,
    }


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem):
    """Tests marked fresh_stack run in a new thread. CPython 3.11 keeps a thread's frames in
    16 KiB chunks and unmaps a chunk as soon as the frame at its start returns: a hot loop whose
    calls cross a chunk's end maps and unmaps one per call. The Triton interpreter's loops, at the
    depth pytest's own frames put them, did so 457,000 times in the FP8-conv generate test (8.6 s
    of system time; 11.5 s for the test, 1.5 s in a new thread, whose stack starts afresh). Not
    for tests that handle signals (only the main thread may)."""
    if pyfuncitem.get_closest_marker("fresh_stack") is None:
        return None
    import threading

    kwargs = {name: pyfuncitem.funcargs[name] for name in pyfuncitem._fixtureinfo.argnames}
    failure: list[BaseException] = []

    def body():
        try:
            pyfuncitem.obj(**kwargs)
        except BaseException as e:  # noqa: BLE001 - re-raised in the main thread, traceback kept
            failure.append(e)

    thread = threading.Thread(target=body, name=f"test {pyfuncitem.name}")
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
    return True


def _interpret_triton_without_cuda() -> None:
    # Triton kernels run on the CPU under its interpreter, which must be chosen before triton is
    # first imported (diffusers imports it). On a GPU machine the kernels compile as in use.
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")


_interpret_triton_without_cuda()


@pytest.fixture(scope="session")
def digits_world(tmp_path_factory):
    """Real digits as ImageFolder trees and one small synthetic digits set (60 per class,
    guidance 2, 8 steps: the training test's accuracy bar holds there with room, 0.94 measured
    here against 0.85), shared read-only by the training and evaluation tests; about 12 s on 2
    cores, made once per pytest run: under pytest-xdist the first worker to need it makes it in
    the run's shared temporary folder while the others wait on a file lock."""
    from filelock import FileLock

    from t2i_engine.engine.run import RunOptions, generate
    from t2i_engine.training.digits_data import write_real_digits

    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base  # a worker's base: the run's, per worker
    root = shared / "digits-world"
    with FileLock(str(shared / "digits-world.lock")):
        if not (root / "made").is_file():
            shutil.rmtree(root, ignore_errors=True)
            write_real_digits(root / "real")
            recipe = build_recipe({"model": "digits", "images_per_class": 60, "steps": 8})
            generate(recipe, root / "synthetic", RunOptions(device="cpu", progress=False))
            (root / "made").touch()
    return {
        "real_train": root / "real" / "train",
        "real_test": root / "real" / "test",
        "synthetic": root / "synthetic",
        "root": root,
    }


@pytest.fixture(scope="session")
def digits_runs(digits_world, tmp_path_factory):
    """The small CNN trained 2 epochs on the synthetic digits ("synth") and on the real training
    digits ("real"), shared read-only: a test that evaluates or reports copies one first
    (copy_run), since eval writes its record into the run's folder."""
    from t2i_engine.training.loop import train
    from t2i_engine.training.presets import resolve_config

    root = tmp_path_factory.mktemp("digits-runs")  # this worker's: the world is shared
    config = resolve_config("small", {"epochs": 2})
    runs = {"synth": root / "synth", "real": root / "real"}
    train(config, digits_world["synthetic"], runs["synth"], device="cpu", progress=False)
    train(config, digits_world["real_train"], runs["real"], device="cpu", progress=False)
    return runs


def copy_run(run: Path, dest: Path) -> Path:
    """A private copy of a shared trained run (digits_runs)."""
    import shutil

    shutil.copytree(run, dest, ignore=shutil.ignore_patterns("evals", ".t2i-engine.lock*"))
    return dest
