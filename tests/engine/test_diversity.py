"""Diversity levers (engine.diversity, engine.guidance) on the embedded digits model: CADS with
noise 0 equals plain sampling and with noise keeps each image independent of its batch; APG at
eta 1 with no momentum and no cap is plain CFG; a guidance list gives each sample the scale its
seed draws, the same image as that scale alone, in any batch and in any part; a schedule moves
images and the hash only when it is not constant; bad values exit 2 with nothing written."""

from __future__ import annotations

import io
import json
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from t2i_engine.engine.diversity import sample_guidance
from t2i_engine.engine.generator import Generator
from t2i_engine.engine.plan import plan_samples
from t2i_engine.engine.recipe import build_recipe
from t2i_engine.models.pipelines import load_pipeline
from t2i_engine.models.registry import get_model

STEPS = 5


@pytest.fixture(scope="module")
def pipe():
    return load_pipeline(get_model("digits"), None, torch.device("cpu"), torch.float32)


@pytest.fixture(scope="module")
def plain(pipe):
    return _images(pipe, guidance=5.0)


def _recipe(**fields):
    return build_recipe({"model": "digits", "images_per_class": 1, "steps": STEPS, "batch_size": 4, **fields})


def _images(pipe, split=(), **fields):
    recipe = _recipe(**fields)
    samples = plan_samples(recipe)[:4]
    gen = Generator.for_recipe(pipe, recipe)
    cuts = [0, *split, len(samples)]
    return np.concatenate([gen.generate(samples[a:b]) for a, b in zip(cuts, cuts[1:])])


def _worst(a, b) -> int:
    return int(np.abs(a.astype(int) - b.astype(int)).max())


def test_cads_without_noise_is_plain_sampling_and_its_noise_follows_each_sample(pipe, plain):
    assert _worst(_images(pipe, guidance=5.0, cads=0.0), plain) == 0
    annealed = _images(pipe, guidance=5.0, cads={"noise": 0.5, "tau1": 0.3, "tau2": 0.9})
    assert _worst(annealed, plain) > 8  # the conditioning really was noised early on
    split = _images(pipe, split=(1, 3), guidance=5.0, cads={"noise": 0.5, "tau1": 0.3, "tau2": 0.9})
    assert _worst(split, annealed) <= 1


def test_apg_reduces_to_cfg_at_eta_1_without_momentum_or_cap_and_changes_it_otherwise(pipe, plain):
    as_cfg = _images(pipe, guidance=5.0, apg={"eta": 1.0, "momentum": 0.0, "rescale": 1e9})
    assert _worst(as_cfg, plain) <= 1
    apg = _images(pipe, guidance=5.0, apg=True)
    assert _worst(apg, plain) > 8
    assert _worst(_images(pipe, split=(2,), guidance=5.0, apg=True), apg) <= 1  # momentum is per sample


def test_a_schedule_ramps_guidance_and_constant_is_plain(pipe, plain):
    assert _recipe(guidance=5.0, guidance_schedule="constant").content_hash() == _recipe(guidance=5.0).content_hash()
    assert _worst(_images(pipe, guidance=5.0, guidance_schedule="constant"), plain) == 0
    for schedule in ("linear", "cosine"):
        ramped = _images(pipe, guidance=5.0, guidance_schedule=schedule)
        assert _worst(ramped, plain) > 8, schedule
        assert _recipe(guidance=5.0, guidance_schedule=schedule).content_hash() != _recipe(guidance=5.0).content_hash()


def test_a_guidance_list_gives_each_sample_the_image_of_its_own_scale(pipe, plain):
    recipe = _recipe(guidance=[1.0, 5.0])
    drawn = [sample_guidance(recipe.guidance_choices, s.seed) for s in plan_samples(recipe)[:4]]
    assert set(drawn) == {1.0, 5.0}  # these seeds draw both
    mixed = _images(pipe, guidance=[1.0, 5.0])
    alone = _images(pipe, guidance=1.0)
    for i, g in enumerate(drawn):
        assert _worst(mixed[i], (plain if g == 5.0 else alone)[i]) <= 1
    assert _worst(_images(pipe, split=(1, 2), guidance=[1.0, 5.0]), mixed) <= 1


def _json_and_pixels(folder) -> dict:
    out = {}
    for shard in sorted(folder.glob("*.tar")):
        with tarfile.open(shard) as tar:
            for m in tar.getmembers():
                key, ext = m.name.rsplit(".", 1)
                data = tar.extractfile(m).read()
                if ext == "json":
                    out.setdefault(key, {})["guidance"] = json.loads(data)["guidance"]
                elif ext == "png":
                    out.setdefault(key, {})["pixels"] = np.asarray(Image.open(io.BytesIO(data)))
    return out


def test_a_guidance_list_is_the_same_in_one_process_and_in_two_parts(cli, tmp_path):
    flags = ["--images-per-class", "1", "--steps", "3", "--guidance", "1,2,5", "--format", "png", "--device", "cpu"]
    code, _, err = cli("generate", "--out", tmp_path / "one", *flags, "--batch-size", "10")
    assert code == 0, err
    for part in ("0/2", "1/2"):
        code, _, err = cli(
            "generate",
            "--out",
            tmp_path / "parts",
            *flags,
            "--batch-size",
            "3",
            "--images-per-shard",
            "5",
            "--part",
            part,
        )
        assert code == 0, err
    one, parts = _json_and_pixels(tmp_path / "one"), _json_and_pixels(tmp_path / "parts")
    assert one.keys() == parts.keys() and len(one) == 10
    assert {k: v["guidance"] for k, v in one.items()} == {k: v["guidance"] for k, v in parts.items()}
    assert len({v["guidance"] for v in one.values()}) > 1
    assert max(_worst(one[k]["pixels"], parts[k]["pixels"]) for k in one) <= 1
    manifest = json.loads((tmp_path / "one" / "dataset.json").read_text())
    assert manifest["recipe"]["guidance_choices"] == [1.0, 2.0, 5.0] and manifest["recipe"]["guidance"] == 5.0


@pytest.mark.parametrize(
    "flags, needle",
    [
        (["--cads", "-1"], "cads.noise"),
        (["--cads", "loud"], "cads.noise: 'loud' is not allowed; expected a finite number"),
        (["--apg", "[1]"], "apg.eta"),
        (["--guidance", "1", "--cads", "on"], "needs guidance above 1"),
        (["--model", "tiny-flux", "--cads", "on"], "not for the flux family"),
        (["--apg", "on", "--guidance", "1"], "needs guidance above 1"),
        (["--guidance-schedule", "steep"], "expected one of constant, linear, cosine"),
        (["--guidance", "1,x"], "expected a number, or a list"),
        (["--guidance", "0.5,1"], "one must be above 1"),
        (["--model", "tiny-flux", "--guidance", "1,2"], "not for the flux family"),
    ],
)
def test_bad_diversity_settings_exit_2_before_anything_is_written(cli, tmp_path, flags, needle):
    code, _, err = cli("generate", "--out", tmp_path / "o", *flags, "--device", "cpu")
    assert code == 2 and needle in err and not (tmp_path / "o").exists(), err
