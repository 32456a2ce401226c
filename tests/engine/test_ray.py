"""`generate --ray` on a local Ray instance (2 CPUs): the same shards as one process (images
within one level: the actors run on one thread each, test_workers.py)."""

from __future__ import annotations

import pytest

from t2i_engine.engine.run import RunOptions, generate
from t2i_engine.engine.verify import verify_dataset
from tests.conftest import tiny_recipe
from tests.engine.test_generate import QUIET, sample_differences

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.slow
RECIPE = {"images_per_class": 4, "images_per_shard": 2, "format": "png"}  # 12 samples in 6 shards


def test_ray_actors_on_a_local_cluster_write_the_same_shards(tmp_path):
    whole = tmp_path / "whole"
    generate(tiny_recipe(**RECIPE), whole, QUIET)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        summary = generate(tiny_recipe(**RECIPE), tmp_path / "ray", RunOptions(progress=False, ray="local"))
    finally:
        ray.shutdown()
    assert summary["images"] == 12 and summary["ray"] == {"ray-cpu-actors": 2} and summary["dataset_complete"]
    assert sample_differences(tmp_path / "ray", whole) == []
    assert verify_dataset(tmp_path / "ray") == []
