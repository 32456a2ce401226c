"""Feature caches (engine.feature_cache) and FLOPs as run (models.flops.CallFlops): DeepCache with
interval 1 equals no cache and with interval 2 keeps every image independent of its batch while
counting fewer FLOPs; diffusers' first-block cache with threshold 0 and pyramid broadcast with
skip 1 equal no cache on tiny FLUX; the counted FLOPs of a plain run equal forwards times one
forward's FLOPs, and a guidance interval and a cache lower them; the run summary reports them;
bad cache settings exit 2 before anything is written."""

from __future__ import annotations

import json
import tarfile

import numpy as np
import pytest
import torch

from t2i_engine.benchmark.bench import model_flops
from t2i_engine.benchmark.paths import count_denoiser_images
from t2i_engine.engine.generator import Generator
from t2i_engine.engine.plan import plan_samples
from t2i_engine.engine.recipe import build_recipe
from t2i_engine.models.pipelines import load_pipeline
from t2i_engine.models.registry import get_model

STEPS = 5


@pytest.fixture(scope="module")
def digits():
    return load_pipeline(get_model("digits"), None, torch.device("cpu"), torch.float32)


def _recipe(**fields):
    return build_recipe({"model": "digits", "images_per_class": 1, "steps": STEPS, "batch_size": 4, **fields})


def _worst(a, b) -> int:
    return int(np.abs(a.astype(int) - b.astype(int)).max())


def _run(pipe, recipe, samples):
    gen = Generator.for_recipe(pipe, recipe)
    gen.count_flops()
    with count_denoiser_images(pipe) as seen:
        images = gen.generate(samples)
    return images, gen.denoiser_flops_per_image, seen[0]


def test_deepcache_interval_1_is_no_cache_and_interval_2_saves_flops_batch_invariantly(digits):
    recipe = _recipe()
    samples = plan_samples(recipe)[:4]
    plain, plain_flops, forwards = _run(digits, recipe, samples)
    one_forward = model_flops(digits, get_model("digits"), recipe)["denoiser_forward"]
    assert plain_flops == pytest.approx(forwards / 4 * one_forward, rel=1e-6)  # counted = forwards x one forward

    same, same_flops, _ = _run(digits, _recipe(cache="deepcache:1"), samples)
    assert _worst(same, plain) == 0 and same_flops == plain_flops

    cached_recipe = _recipe(cache={"name": "deepcache", "interval": 2})
    cached, cached_flops, _ = _run(digits, cached_recipe, samples)
    assert cached_flops < 0.85 * plain_flops  # 3 of 5 calls whole, 2 with the shallow pair alone
    assert _worst(cached, plain) > 0  # the deep features really were reused
    gen = Generator.for_recipe(digits, cached_recipe)
    split = np.concatenate([gen.generate(samples[:1]), gen.generate(samples[1:])])
    assert _worst(split, cached) <= 1  # the cache keeps nothing from one batch for the next

    # with a guidance interval, the cache follows the halved calls (it reuses the positive half)
    both, both_flops, _ = _run(digits, _recipe(cache="deepcache:2", guidance=5.0, guidance_interval=[0.5, 3]), samples)
    interval_only, interval_flops, _ = _run(digits, _recipe(guidance=5.0, guidance_interval=[0.5, 3]), samples)
    assert both_flops < interval_flops < plain_flops
    assert _worst(both, interval_only) < 128  # still the same digits, not noise


def test_diffusers_caches_at_their_neutral_settings_equal_no_cache_on_flux():
    pipe = load_pipeline(get_model("tiny-flux"), None, torch.device("cpu"), torch.float32)

    def recipe(**f):
        return build_recipe(
            {"model": "tiny-flux", "classes": ["a", "b"], "images_per_class": 1, "steps": 4, "resolution": 32, **f}
        )

    samples = plan_samples(recipe())
    plain, plain_flops, _ = _run(pipe, recipe(), samples)
    for neutral in ("first-block:0", "pyramid:1"):
        images, flops, _ = _run(pipe, recipe(cache=neutral), samples)
        assert _worst(images, plain) == 0 and flops == plain_flops, neutral
    _, skipped_flops, _ = _run(pipe, recipe(cache="pyramid:2"), samples)
    assert skipped_flops < plain_flops
    again, _, _ = _run(pipe, recipe(), samples)  # the cache is gone after its call
    assert _worst(again, plain) == 0


def test_the_cache_is_recorded_hashed_when_set_and_flops_reach_the_run_summary(cli, tmp_path):
    assert _recipe().content_hash() == _recipe(cache="none").content_hash()
    assert _recipe().content_hash() != _recipe(cache="deepcache:2").content_hash()
    assert _recipe(cache="deepcache:2").content_hash() == _recipe(cache="deepcache:2", batch_size=2).content_hash()
    flux = {"model": "tiny-flux", "classes": ["a"], "cache": "first-block:0.1"}
    # first-block decides for the whole batch: the batch size decides images, so it enters the hash
    assert (
        build_recipe({**flux, "batch_size": 1}).content_hash()
        != build_recipe({**flux, "batch_size": 2}).content_hash()
    )
    out = tmp_path / "d"
    flags = ["--images-per-class", "1", "--steps", "3", "--cache", "deepcache:2", "--json"]
    code, stdout, err = cli("generate", "--out", out, *flags, "--device", "cpu")
    assert code == 0, err
    summary = json.loads(stdout)
    assert isinstance(summary["denoiser_flops_per_image"], float) and summary["denoiser_flops_per_image"] > 0
    manifest = json.loads((out / "dataset.json").read_text())
    assert manifest["recipe"]["cache"] == {"name": "deepcache", "interval": 2}
    with tarfile.open(next(out.glob("*.tar"))) as tar:
        meta = json.loads(tar.extractfile(next(m for m in tar.getmembers() if m.name.endswith(".json"))).read())
    assert meta["cache"] == {"name": "deepcache", "interval": 2}


@pytest.mark.parametrize(
    "flags, needle",
    [
        (["--cache", "deepcache:0"], "cache.interval: '0'"),
        (["--cache", "deepcache:2.5"], "expected an integer from 1 to 1000"),
        (["--cache", "fastercache"], "expected none, deepcache"),
        (["--cache", "first-block"], "not for the sd family"),
        (["--model", "tiny-flux", "--cache", "deepcache"], "not for the flux family"),
        (["--cache", "deepcache", "--backend", "onnx"], "with --backend onnx use cache none"),
        (["--cache", "deepcache", "--compile", "default"], "use --compile none with a cache"),
    ],
)
def test_bad_cache_settings_exit_2_before_anything_is_written(cli, tmp_path, flags, needle):
    code, _, err = cli("generate", "--out", tmp_path / "o", *flags, "--device", "cpu")
    assert code == 2 and needle in err and not (tmp_path / "o").exists(), err
