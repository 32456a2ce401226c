"""`generate --ray` when a node is lost before its actor has started (heavy: a local Ray cluster).
The rest of --ray: test_mixture.py (the same dataset as one process), test_s3_dataset.py (three
nodes writing to a bucket, one removed mid-run)."""

from __future__ import annotations

import json
import os
import subprocess
import time

import pytest

from t2i_engine.engine.verify import verify_dataset
from tests.conftest import CLI, ray_cluster, subprocess_env

pytestmark = pytest.mark.heavy

# Ray's own processes on the node start as usual; a worker that imports the engine (the actor)
# waits 20 s first.
SLOW_IMPORT = """
import sys, time


class _Late:
    def find_spec(self, name, path=None, target=None):
        if name == "t2i_engine":
            sys.meta_path.remove(self)
            time.sleep(20)
        return None


sys.meta_path.insert(0, _Late())
"""


def test_a_node_lost_while_its_actor_still_starts_costs_only_its_unit(tmp_path):
    """Ray holds a call queued on an actor that dies before it has started (ray-project/ray#15045):
    its unit must not wait for a restart that cannot come. On one node the engine's first import
    takes 20 s (a sitecustomize), so its actor starts late; the node is removed while it is still
    starting, with a unit queued on it. The run completes on the other node, every sample once."""
    slow = tmp_path / "slow-start"
    slow.mkdir()
    (slow / "sitecustomize.py").write_text(SLOW_IMPORT)
    (tmp_path / "recipe.yaml").write_text("model: digits\nimages_per_class: 2\nsteps: 2\nimages_per_shard: 2\n")
    out = tmp_path / "ds"  # one machine: every node sees the folder
    proc = None
    with ray_cluster() as cluster:
        try:
            cluster.add_node(num_cpus=1)
            late = cluster.add_node(num_cpus=1, env_vars={"PYTHONPATH": f"{slow}:{os.environ.get('PYTHONPATH', '')}"})
            cluster.wait_for_nodes()
            args = [*CLI, "generate", str(tmp_path / "recipe.yaml"), "--out", str(out), "--ray", cluster.address,
                    "--no-progress", "--json"]  # fmt: skip
            proc = subprocess.Popen(
                args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=subprocess_env()
            )
            deadline = time.monotonic() + 120
            while not list(out.glob("*.tar")) and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.2)  # the first shard of the node that started: the late one is still asleep
            assert proc.poll() is None and list(out.glob("*.tar")), (
                proc.communicate()[1] if proc.poll() else "no shard"
            )
            cluster.remove_node(late)
            stdout, stderr = proc.communicate(timeout=180)
        finally:
            if proc is not None and proc.poll() is None:
                proc.kill()
    assert proc.returncode == 0, stderr
    summary = json.loads(stdout)
    assert summary["dataset_complete"] and summary["ray"] == {"ray-cpu-actors": 2}
    assert summary["ray_units_retried"] == 1  # the unit queued on the late node's actor, and no other
    assert verify_dataset(out) == []
    keys = [json.loads(line)["key"] for p in out.glob("*.index.jsonl") for line in p.read_text().splitlines()]
    assert len(keys) == len(set(keys)) == 20
