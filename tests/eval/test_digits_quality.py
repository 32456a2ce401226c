"""Quality figures: reading shards back in plan order, and the diversity measure."""

from __future__ import annotations

import torch

from t2i_engine.engine.plan import plan_samples
from t2i_engine.engine.run import RunOptions, generate
from t2i_engine.eval.digits_quality import diversity, read_images
from t2i_engine.training.small_cnn import SmallCNN
from tests.conftest import tiny_recipe


def test_read_images_returns_plan_order_and_labels(tmp_path):
    recipe = tiny_recipe(format="png")
    generate(recipe, tmp_path / "d", RunOptions(device="cpu", progress=False, encode_workers=0))
    images, labels = read_images(tmp_path / "d")
    assert images.shape == (9, 3, 32, 32) and 0 <= images.min() and images.max() <= 1
    assert labels.tolist() == [s.class_index for s in plan_samples(recipe)]


def test_diversity_is_zero_for_copies_and_grows_with_spread():
    torch.manual_seed(0)
    judge = SmallCNN().eval()
    labels = torch.tensor([0] * 4 + [1] * 4)
    copies = torch.rand(1, 3, 32, 32).repeat(8, 1, 1, 1)
    assert diversity(judge, copies, labels) < 1e-3
    assert diversity(judge, torch.rand(8, 3, 32, 32), labels) > diversity(judge, copies, labels)
