"""The second embedded model, digits-dit (SD3's classes, trained weights, no T5): the engine's
images equal plain diffusers' for the same prompts and noise; it exports to ONNX (heavy). Its
workers, parts and Ray paths are tested in test_mixture.py (a mixture of the two embedded models)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from t2i_engine.engine.generator import Generator
from t2i_engine.engine.plan import plan_samples
from t2i_engine.engine.recipe import build_recipe
from t2i_engine.engine.run import RunOptions, generate
from t2i_engine.engine.verify import verify_dataset
from t2i_engine.models.pipelines import bundled_path, load_pipeline
from t2i_engine.models.registry import get_model
from tests.engine.test_generate import QUIET, sample_differences

RECIPE = {
    "model": "digits-dit",
    "classes": "digits",
    "images_per_class": 1,
    "steps": 4,
    "batch_size": 4,
    "images_per_shard": 5,
    "format": "png",
}  # 10 samples in 2 shards


@pytest.fixture(scope="module")
def whole(tmp_path_factory):
    out = tmp_path_factory.mktemp("dit") / "whole"
    generate(build_recipe(RECIPE), out, QUIET)
    return out


def test_the_engine_matches_plain_diffusers(whole):
    from diffusers import StableDiffusion3Pipeline

    recipe = build_recipe({**RECIPE, "guidance": 3.0})
    samples = plan_samples(recipe)[:3]
    ours = Generator.for_recipe(
        load_pipeline(get_model("digits-dit"), None, torch.device("cpu"), torch.float32), recipe
    )
    images = ours.generate(samples)
    plain = StableDiffusion3Pipeline.from_pretrained(
        bundled_path(get_model("digits-dit")), text_encoder_3=None, tokenizer_3=None
    )
    theirs = plain(
        [s.prompt for s in samples],
        latents=ours.initial_latents(samples),
        num_inference_steps=recipe.steps,
        guidance_scale=recipe.guidance,
        max_sequence_length=0,  # no T5 (the model card says so)
        output_type="np",
    ).images
    theirs = (theirs * 255).round().astype(np.uint8)
    assert int(np.abs(images.astype(int) - theirs.astype(int)).max()) <= 1
    assert verify_dataset(whole) == []


@pytest.mark.heavy
def test_it_exports_to_onnx_and_generates_the_same_samples(whole, tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime")
    from t2i_engine.engine.runtime import build_artifacts
    from t2i_engine.export.build import BuildOptions
    from t2i_engine.export.specs import Profile

    cache = tmp_path / "cache"
    opts = BuildOptions(
        model="digits-dit", backend="onnx", profile=Profile((1, 4, 8), 32, 32), device="cpu", cache_dir=str(cache)
    )
    build_artifacts(opts, log_line=lambda line: None)
    monkeypatch.setenv("T2I_ENGINE_CACHE", str(cache))
    generate(build_recipe(RECIPE), tmp_path / "onnx", RunOptions(device="cpu", progress=False, backend="onnx"))
    assert sample_differences(tmp_path / "onnx", whole) == []
