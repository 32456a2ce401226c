"""`status` and the run log: counts against the shards themselves, two parts running as
processes (their locks' holders seen, every log line of both present), a killed run named, bad
input refused; it takes no lock and writes nothing."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import time

import pytest

from t2i_engine.dataset.runlog import read_log
from t2i_engine.dataset.store import LocalStore
from t2i_engine.engine.recipe import build_recipe
from t2i_engine.engine.run import RunOptions, generate
from t2i_engine.engine.status import dataset_status
from tests.conftest import CLI, subprocess_env

RECIPE = "model: digits\nclasses: [a, b, c]\nimages_per_class: 30\nsteps: 8\nimages_per_shard: 3\n"  # 30 shards


def _files(folder) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_status_of_a_finished_dataset_agrees_with_its_shards_and_changes_nothing(cli, tmp_path):
    out = tmp_path / "ds"
    raw = {"model": "digits", "classes": ["a", "b", "c"], "images_per_class": 5, "steps": 2, "images_per_shard": 4}
    generate(build_recipe(raw), out, RunOptions(device="cpu", progress=False, encode_workers=0))
    before = _files(out)
    st = dataset_status(out)
    assert _files(out) == before  # read-only: no lock taken, nothing written
    rows = [json.loads(line) for p in sorted(out.glob("*.index.jsonl")) for line in p.read_text().splitlines()]
    per_class = {c: sum(r["class_id"] == c for r in rows) for c in "abc"}
    assert st["complete"] and st["images"] == {"planned": 15, "done": 15, "remaining": 0}
    assert st["shards"] == {"planned": 4, "done": 4, "in_flight": 0} and st["locks"] == [] and st["errors"] == []
    assert {c["class_id"]: (c["done"], c["remaining"]) for c in st["classes"]} == {
        c: (n, 0) for c, n in per_class.items()
    }
    log = read_log(LocalStore(out))
    assert [line["event"] for line in log if line["event"] != "shard"] == ["start", "stop"]
    assert sorted(line["shard"] for line in log if line["event"] == "shard") == [
        "000000",
        "000001",
        "000002",
        "000003",
    ]
    assert sum(line["images"] for line in log if line["event"] == "shard") == 15
    code, text, _ = cli("status", out)
    assert code == 0 and text.startswith(f"{out}: 15 of 15 images (100.0%), 4 of 4 shards") and "complete" in text
    code, text, _ = cli("status", out, "--json")
    assert code == 0 and json.loads(text)["images"]["done"] == 15


@pytest.mark.parametrize(
    "args, says",
    [
        (["status", "{tmp}"], "dir: '{tmp}' is not allowed; expected a dataset folder holding dataset.json"),
        (["status", "{tmp}/nothing"], "expected a dataset folder made by `t2i-engine generate`"),
        (["status", "{tmp}", "--watch", "0"], "--watch: '0' is not allowed; expected a number in [0.5, 86400]"),
    ],
)
def test_status_refuses_what_is_not_a_dataset_in_one_line(cli, tmp_path, args, says):
    code, _, err = cli(*[a.format(tmp=tmp_path) for a in args])
    assert code == 2 and says.format(tmp=tmp_path) in err and len(err.strip().splitlines()) == 1, err


def _wait(condition, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


@pytest.mark.alone
@pytest.mark.heavy  # two parts as processes and a kill: under --heavy (CI's heavy step), make test's 5 minutes
def test_status_beside_two_running_parts_and_after_a_kill(cli, tmp_path):
    """Two parts as processes: mid-run, status names both parts and sees each one's part lock
    held by its process; when both end, every shard has exactly one log line. Then a run killed
    mid-run: status names it as dead and its shards as remaining."""
    out = tmp_path / "ds"
    (tmp_path / "recipe.yaml").write_text(RECIPE)
    args = [*CLI, "generate", str(tmp_path / "recipe.yaml"), "--out", str(out), "--device", "cpu", "--no-progress"]
    parts = [subprocess.Popen([*args, "--part", f"{i}/2"], stderr=subprocess.PIPE, text=True,
                              env=subprocess_env()) for i in range(2)]  # fmt: skip
    _wait(lambda: len(list(out.glob("*.stats.json"))) >= 2 or any(p.poll() is not None for p in parts))
    st = dataset_status(out)
    running = all(p.poll() is None for p in parts)
    assert [p["part"] for p in st["parts"]] == ["0/2", "1/2"] and 0 < st["images"]["done"]
    holders = {lock["lock"]: lock["holder"] for lock in st["locks"]}
    if running:  # (both still at it when it looked: on 2 cores they are)
        for i, p in enumerate(parts):
            assert holders[f".t2i-engine.lock.part-{i}-of-2"].endswith(f"pid {p.pid}")
    errors = [p.communicate(timeout=300)[1] for p in parts]
    assert [p.returncode for p in parts] == [0, 0], errors
    log = read_log(LocalStore(out))
    shards = sorted(line["shard"] for line in log if line["event"] == "shard")
    assert shards == [f"{k:06d}" for k in range(30)]  # both parts' lines, none lost or doubled
    assert {line["part"] for line in log if line["event"] == "shard"} == {"0/2", "1/2"}
    st = dataset_status(out)
    assert st["complete"] and st["locks"] == [] and all(p["remaining"] == 0 for p in st["parts"])

    killed = tmp_path / "killed"
    proc = subprocess.Popen([*args[:-3], "--out", str(killed), "--device", "cpu", "--no-progress"],
                            stderr=subprocess.DEVNULL, env=subprocess_env())  # fmt: skip
    _wait(lambda: len(list(killed.glob("*.stats.json"))) >= 1 or proc.poll() is not None)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    st = dataset_status(killed)
    assert not st["complete"] and st["images"]["remaining"] > 0
    assert [(lock["holder"], lock["state"]) for lock in st["locks"]] == [
        (f"{socket.gethostname()}, pid {proc.pid}", "dead")
    ]
    code, text, _ = cli("status", killed)
    assert code == 0 and f"pid {proc.pid}, dead" in text
