"""Samplers and the guidance interval (engine.sampling, engine.guidance) on the embedded digits
model: every sampler keeps a sample's image independent of its batch (the ancestral and SDE ones
draw their noise from per-sample generators); the interval runs exactly the forwards its noise
levels call for (a counting hook), equals plain CFG when it covers every step and the prompt alone
when it covers none; both are recorded per sample and in the manifest, and bad values exit 2
before anything is written."""

from __future__ import annotations

import json
import tarfile

import numpy as np
import pytest
import torch

from t2i_engine.benchmark.paths import count_denoiser_images
from t2i_engine.engine.generator import Generator
from t2i_engine.engine.guidance import _sigma
from t2i_engine.engine.plan import plan_samples
from t2i_engine.engine.recipe import build_recipe
from t2i_engine.engine.sampling import PRESETS, SAMPLERS
from t2i_engine.models.pipelines import load_pipeline
from t2i_engine.models.registry import get_model

STEPS = 5


@pytest.fixture(scope="module")
def pipe():
    return load_pipeline(get_model("digits"), None, torch.device("cpu"), torch.float32)


def _recipe(**fields):
    return build_recipe({"model": "digits", "images_per_class": 1, "steps": STEPS, "batch_size": 4, **fields})


def _worst(a, b) -> int:
    return int(np.abs(a.astype(int) - b.astype(int)).max())


@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_each_sampler_keeps_every_image_independent_of_its_batch(pipe, sampler):
    recipe = _recipe(sampler=sampler)
    samples = plan_samples(recipe)[:4]
    gen = Generator.for_recipe(pipe, recipe)
    whole = gen.generate(samples)
    split = np.concatenate([gen.generate(samples[:1]), gen.generate(samples[1:3]), gen.generate(samples[3:])])
    assert _worst(whole, split) <= 1
    if sampler != "default":
        assert type(pipe.scheduler).__name__ == SAMPLERS[sampler][0]
    assert len({img.tobytes() for img in whole}) == 4  # each seed its own image


def test_a_guidance_interval_runs_the_forwards_its_noise_levels_call_for(pipe):
    plain_recipe = _recipe(guidance=5.0)
    samples = plan_samples(plain_recipe)[:4]
    plain = Generator.for_recipe(pipe, plain_recipe).generate(samples)
    prompt_alone = Generator.for_recipe(pipe, _recipe(guidance=1.0)).generate(samples)
    low, high = 0.5, 3.0
    cases = {(0.0, 1e6): plain, (100.0, 200.0): prompt_alone, (low, high): None}
    for interval, expected in cases.items():
        gen = Generator.for_recipe(pipe, _recipe(guidance=5.0, guidance_interval=list(interval)))
        with count_denoiser_images(pipe) as seen:
            images = gen.generate(samples)
        sigmas = [_sigma(pipe.scheduler, float(t)) for t in pipe.scheduler.timesteps]
        guided = sum(interval[0] <= s <= interval[1] for s in sigmas)
        assert seen[0] == 4 * (len(sigmas) + guided)  # one forward a step, two inside the interval
        if expected is not None:
            assert _worst(images, expected) == 0
    assert 0 < sum(low <= s <= high for s in sigmas) < STEPS  # the middle case guides some steps, not all


def test_sampler_and_interval_are_recorded_and_move_the_hash_only_when_set(cli, tmp_path):
    assert _recipe().content_hash() == _recipe(sampler="default", guidance_interval=None).content_hash()
    assert _recipe().content_hash() != _recipe(sampler="euler").content_hash()
    assert _recipe().content_hash() != _recipe(guidance_interval=[0.5, 3]).content_hash()
    out = tmp_path / "d"
    flags = ["--images-per-class", "1", "--steps", "3", "--sampler", "euler", "--guidance-interval", "0.5,3"]
    code, _, err = cli("generate", "--out", out, *flags, "--device", "cpu")
    assert code == 0, err
    manifest = json.loads((out / "dataset.json").read_text())
    assert manifest["recipe"]["sampler"] == "euler" and manifest["recipe"]["guidance_interval"] == [0.5, 3.0]
    with tarfile.open(next(out.glob("*.tar"))) as tar:
        meta = json.loads(tar.extractfile(next(m for m in tar.getmembers() if m.name.endswith(".json"))).read())
    assert meta["sampler"] == "euler" and meta["guidance_interval"] == [0.5, 3.0]


def test_the_few_step_samplers_run_their_grids_and_tcds_gamma_reaches_its_steps(pipe):
    samples = plan_samples(_recipe())[:2]
    grids = {}
    for sampler in ("lcm", "lcm-trailing", "ddim-trailing", "euler-trailing", "tcd"):
        gen = Generator.for_recipe(pipe, _recipe(sampler=sampler, steps=4))
        gen.generate(samples)
        grids[sampler] = [round(float(t)) for t in pipe.scheduler.timesteps]
    trailing = [999, 749, 499, 249]  # SDXL-Lightning's, Hyper-SD's and DMD2's 4-step grid
    assert grids["lcm-trailing"] == grids["ddim-trailing"] == grids["euler-trailing"] == trailing
    assert grids["lcm"] == grids["tcd"] != trailing  # LCM's skipping steps of 20 (999, 759, 499, 259)
    images = {g: Generator.for_recipe(pipe, _recipe(sampler="tcd", tcd_gamma=g)).generate(samples) for g in (0, 0.7)}
    assert _worst(images[0], images[0.7]) > 10  # gamma moves the images: it reached the scheduler's steps
    assert _recipe(sampler="tcd").tcd_gamma == 0.3 and _recipe().tcd_gamma is None


def test_the_fast_preset_is_its_recipe_keys_and_keys_set_beside_it_win():
    fast = {k: v for k, v in PRESETS["fast"].items() if v is not None}
    assert fast and build_recipe({"preset": "fast"}).content_hash() == build_recipe(fast).content_hash()
    assert build_recipe({"preset": "fast"}).content_hash() != build_recipe({}).content_hash()
    mine = build_recipe({"preset": "fast", "steps": 9}, {"sampler": "euler"})
    assert (mine.steps, mine.sampler) == (9, "euler")
    assert build_recipe({"preset": "default"}) == build_recipe({})


@pytest.mark.parametrize(
    "flags, needle",
    [
        (["--sampler", "lms"], "expected one of default, ddim"),
        (["--model", "tiny-flux", "--sampler", "euler"], "keeps its own scheduler"),
        (["--guidance-interval", "3,1"], "0 <= low < high"),
        (["--guidance-interval", "a,b"], "two noise levels"),
        (["--guidance-interval", "1"], "two noise levels"),
        (["--guidance", "1", "--guidance-interval", "0.5,3"], "guidance above 1"),
        (["--model", "tiny-flux", "--guidance-interval", "0.5,3"], "not for the flux family"),
        (["--preset", "quick"], "expected one of default, fast, fastest"),
        (["--model", "tiny-flux", "--sampler", "lcm"], "keeps its own scheduler"),
        (["--sampler", "tcd", "--tcd-gamma", "1.5"], "tcd_gamma"),
        (["--sampler", "tcd", "--tcd-gamma", "nan"], "tcd_gamma"),
        (["--sampler", "lcm", "--tcd-gamma", "0.3"], "needs sampler tcd"),
        (["--model", "tiny-flux", "--preset", "fast"], "for the UNet families"),
    ],
)
def test_bad_sampling_settings_exit_2_before_anything_is_written(cli, tmp_path, flags, needle):
    code, _, err = cli("generate", "--out", tmp_path / "o", *flags, "--device", "cpu")
    assert code == 2 and needle in err and not (tmp_path / "o").exists()
