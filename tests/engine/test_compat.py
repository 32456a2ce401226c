"""Datasets made by earlier versions keep verifying and resuming. tests/data/dataset-v1 is a small
one (tiny-sd, 6 PNG samples in 3 shards, manifest format t2i-engine-dataset/1) made by the commit
before the package was laid out in layers (dedc490)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from t2i_engine.dataset import manifest as dm
from t2i_engine.dataset.shards import shard_paths
from t2i_engine.engine.plan import plan_units
from t2i_engine.engine.run import generate
from t2i_engine.engine.verify import load_dataset_recipe, verify_dataset
from tests.engine.test_generate import QUIET, sample_differences

FIXTURE = Path(__file__).resolve().parents[1] / "data" / "dataset-v1"


def test_a_dataset_made_by_an_earlier_version_verifies_and_resumes(tmp_path):
    out = tmp_path / "dataset"
    shutil.copytree(FIXTURE, out)
    assert verify_dataset(out) == []
    _, recipe = load_dataset_recipe(out)
    for path in shard_paths(out, "000002"):  # its last shard lost, as if the run had died before it
        path.unlink()
    dm.mark_incomplete(out)
    summary = generate(recipe, out, QUIET)
    assert (summary["shards_skipped"], summary["shards_written"], summary["dataset_complete"]) == (2, 1, True)
    assert verify_dataset(out) == []
    # the remade shard holds the same samples (keys, labels, prompts, seeds: some of them >= 2^63,
    # from the first format's rule), pixels within a level; the dataset keeps its format
    assert sample_differences(out, FIXTURE) == []
    assert json.loads((out / "dataset.json").read_text())["format"] == "t2i-engine-dataset/1"
    assert max(s.seed for u in plan_units(recipe, 64) for s in u.samples) >= 2**63
    # Completed now, it has a card; `datasets` opens it with named labels (the JSON, whose seeds
    # Arrow cannot hold, left out)
    from datasets import load_dataset

    ds = load_dataset(str(out), split="train", cache_dir=str(tmp_path / "hf"))
    assert len(ds) == 6 and ds.features["cls"].names == ["cat", "dog"] and "json" not in ds.features
