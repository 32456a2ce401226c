"""`generate --backend compile` on every tiny family (heavy: inductor takes about 40 s a family on
a CPU): a valid dataset, the same pixels as eager within one uint8 level, and a second identical
run in the same process compiles nothing (no recompiles). The fullgraph status of each family's
denoiser is bench/compile_families.py's table (README, backends)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from t2i_engine.engine.recipe import build_recipe
from t2i_engine.engine.run import RunOptions, generate
from t2i_engine.engine.verify import verify_dataset
from t2i_engine.export.tuning import compiled_graphs
from tests.engine.test_generate import shard_pixels

pytestmark = pytest.mark.heavy

# tiny-sd's wiring is the digits model's: test_backends.py compiles that one
FAMILIES = ["tiny-sd2", "tiny-sdxl", "tiny-sd3", "tiny-flux", "tiny-flux-schnell", "tiny-pixart", "tiny-sana"]
FAMILIES += ["tiny-lumina2", "tiny-qwen-image"]


@pytest.mark.parametrize("family", FAMILIES)
def test_compile_writes_what_eager_writes_and_compiles_once(family, tmp_path):
    recipe = build_recipe(
        {
            "model": family,
            "classes": ["cat", "dog"],
            "images_per_class": 2,
            "steps": 2,
            "resolution": 32,
            "batch_size": 2,
            "format": "png",
        }
    )
    generate(recipe, tmp_path / "eager", RunOptions(device="cpu", progress=False))
    torch._dynamo.reset()
    generate(recipe, tmp_path / "compile", RunOptions(device="cpu", progress=False, backend="compile"))
    after_first = compiled_graphs()
    generate(recipe, tmp_path / "again", RunOptions(device="cpu", progress=False, backend="compile"))
    assert compiled_graphs() == after_first  # the same calls again: no recompile
    assert verify_dataset(tmp_path / "compile") == []
    eager, compiled = shard_pixels(tmp_path / "eager"), shard_pixels(tmp_path / "compile")
    assert eager.keys() == compiled.keys() and len(eager) == 4
    assert max(int(np.abs(eager[k] - compiled[k]).max()) for k in eager) <= 1
