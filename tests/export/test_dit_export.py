"""ONNX export of PixArt, Sana, Lumina-2 and Qwen-Image (tiny models of the registry: the real
diffusers classes, random weights), built once per family with `build --exporter torchscript`
(TorchScript where it can, dynamo where the spec says it cannot):

- each exported component matches PyTorch in ONNX Runtime at two batch sizes (fp32, max abs
  difference under 1e-4; ~1e-6 seen), with captions of different lengths in one batch;
- the export wrappers compute what diffusers' own forward computes (Lumina-2's loop-free packing,
  the real-valued RoPE of Lumina-2 and Qwen-Image);
- `generate --backend onnx` finds the build and writes the same samples, labels and metadata as
  eager, pixels within one uint8 level.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from t2i_engine.engine.recipe import build_recipe
from t2i_engine.engine.run import RunOptions, generate
from t2i_engine.engine.runtime import build_artifacts
from t2i_engine.export.build import BuildOptions
from t2i_engine.export.onnx_runtime import OnnxRunner
from t2i_engine.export.specs import Profile, component_specs
from t2i_engine.models.pipelines import load_pipeline
from t2i_engine.models.registry import MODELS
from tests.export.test_backends import _members

TOLERANCE = 1e-4
RES = 32
PROFILE = Profile((1, 2, 4), RES, RES)
# what each family's build exports with when TorchScript is asked for (specs.NEEDS_DYNAMO)
EXPORTERS = {
    "tiny-pixart": {"transformer": "torchscript", "vae": "torchscript", "text_encoder": "torchscript"},
    "tiny-sana": {"transformer": "torchscript", "vae": "dynamo"},
    "tiny-lumina2": {"transformer": "torchscript", "vae": "torchscript"},
    "tiny-qwen-image": {"transformer": "dynamo", "vae": "dynamo"},
}
IN_PYTORCH = {
    family: {"text_encoder"} for family in ("tiny-sana", "tiny-lumina2", "tiny-qwen-image")
}  # Gemma, Qwen-VL


@pytest.fixture(scope="module", params=list(EXPORTERS))
def built(request, tmp_path_factory):
    family = request.param
    cache = tmp_path_factory.mktemp(family) / "cache"
    opts = BuildOptions(
        model=family, backend="onnx", profile=PROFILE, device="cpu", exporter="torchscript", cache_dir=str(cache)
    )
    results = build_artifacts(opts, log_line=lambda line: None)
    pipe = load_pipeline(MODELS[family], None, torch.device("cpu"), torch.float32)  # the same seeded weights
    return family, cache, results, pipe


def test_each_component_matches_pytorch_at_two_batch_sizes(built):
    family, _, results, pipe = built
    folders = {r["component"]: r for r in results}
    assert {c for c, r in folders.items() if r["path"] is None} == IN_PYTORCH.get(family, set())
    assert {c: r["exporter"] for c, r in folders.items() if r["path"]} == EXPORTERS[family]
    for spec in component_specs(pipe, PROFILE):
        runner = OnnxRunner(Path(folders[spec.component]["path"]) / "model.onnx", spec, torch.device("cpu"))
        for batch in (1, 3):
            inputs = spec.sample_inputs(batch, seed=batch)
            with torch.no_grad():
                expected = spec.module(*inputs)
            expected = expected if isinstance(expected, tuple) else (expected,)
            for name, e, g in zip(spec.outputs, expected, runner.outputs(*inputs)):
                diff = (g - e).abs().max().item()
                print(f"{family} {spec.component}.{name} batch {batch}: max |diff| {diff:.3g}")
                assert g.shape == e.shape and diff <= TOLERANCE, name


def test_the_export_wrappers_compute_what_diffusers_computes(built):
    family, _, _, pipe = built
    (spec,) = component_specs(pipe, PROFILE, ("denoiser",), text_len=24)
    inputs = spec.sample_inputs(3, seed=7)
    named = {i.name: t for i, t in zip(spec.inputs, inputs)}
    mask = next(t for n, t in named.items() if n.endswith("mask"))
    assert len(set(mask.sum(1).tolist())) > 1  # captions of different lengths in one batch
    model = pipe.transformer
    with torch.no_grad():
        ours = spec.module(*inputs)
        if family == "tiny-lumina2":  # diffusers' forward packs sample by sample: compare one at a time too
            names = ("hidden_states", "timestep", "encoder_hidden_states", "encoder_attention_mask")
            rows = [model(*(named[k][i : i + 1] for k in names), return_dict=False)[0] for i in range(3)]
            theirs = torch.cat(rows)
        elif family == "tiny-qwen-image":
            theirs = model(**named, img_shapes=[spec.notes["fixed"]["img_shapes"]] * 3, return_dict=False)[0]
        else:
            theirs = model(**named, return_dict=False)[0]
    diff = (ours - theirs).abs().max().item()
    print(f"{family}: wrapper vs diffusers max |diff| {diff:.3g}")
    assert ours.shape == theirs.shape and diff <= 1e-5


def test_generate_with_onnx_finds_the_build_and_matches_eager(built, tmp_path, monkeypatch):
    from t2i_engine.engine.verify import verify_dataset

    family, cache, _, _ = built
    monkeypatch.setenv("T2I_ENGINE_CACHE", str(cache))
    before = sorted(p.name for p in cache.iterdir())
    recipe = build_recipe(
        {
            "model": family,
            "classes": ["cat", "dog"],
            "images_per_class": 1,
            "steps": 2,
            "resolution": RES,
            "batch_size": 2,
            "format": "png",
        }
    )
    generate(recipe, tmp_path / "eager", RunOptions(device="cpu", progress=False))
    generate(recipe, tmp_path / "onnx", RunOptions(device="cpu", progress=False, backend="onnx"))
    assert verify_dataset(tmp_path / "onnx") == []
    assert json.loads((tmp_path / "onnx" / "dataset.json").read_text())["backend"] == "onnx"
    eager_images, eager_rest = _members(tmp_path / "eager")
    images, rest = _members(tmp_path / "onnx")
    assert rest == eager_rest and len(rest) >= 4  # keys, labels, seeds, prompts: identical
    worst = max(int(np.abs(images[k] - eager_images[k]).max()) for k in eager_images)
    print(f"{family} onnx: {len(images)} images, worst pixel difference {worst} levels")
    assert images.keys() == eager_images.keys() and worst <= 1
    assert sorted(p.name for p in cache.iterdir()) == before  # nothing exported anew
