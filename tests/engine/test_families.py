"""Every pipeline family end to end at tiny scale (the real diffusers classes, random weights):
the engine's images equal the plain diffusers pipeline's for the same prompts and initial latents;
batch size, the embedding cache and the seed behave as for SD1.5 (test_generator.py).

Tolerance: uint8 images, at most 1 level anywhere (batched fp32 kernels may round differently)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from t2i_engine.engine.generator import Generator
from t2i_engine.engine.plan import plan_samples
from t2i_engine.engine.recipe import build_recipe
from t2i_engine.engine.refiner import load_refiner
from t2i_engine.models.pipelines import load_pipeline
from t2i_engine.models.registry import MODELS

FAMILIES = [
    "tiny-sd2",
    "tiny-flux-schnell",
    "tiny-sdxl",
    "tiny-sd3",
    "tiny-flux",
    "tiny-pixart",
    "tiny-sana",
    "tiny-lumina2",
    "tiny-qwen-image",
]
TOL = 1


@pytest.fixture(scope="module", params=FAMILIES)
def family(request):
    return request.param, load_pipeline(MODELS[request.param], None, torch.device("cpu"), torch.float32)


def _recipe(model, **fields):
    return build_recipe(
        {
            "model": model,
            "classes": ["cat", "dog"],
            "images_per_class": 2,
            "steps": 3,
            "resolution": 32,
            "batch_size": 4,
            "images_per_shard": 4,
            **fields,
        }
    )


def _worst(a, b) -> int:
    return int(np.abs(a.astype(int) - b.astype(int)).max())


@pytest.mark.parametrize("guidance, negative", [(5.0, ""), (5.0, "a photo"), (1.0, "")])
def test_the_engine_matches_the_plain_pipeline(family, guidance, negative):
    name, pipe = family
    samples = plan_samples(_recipe(name))
    gen = Generator(pipe, steps=3, guidance=guidance, height=32, width=32, negative_prompt=negative)
    ours = gen.generate(samples)
    plain = dict(
        prompt=[s.prompt for s in samples],
        latents=gen.adapter.prepare_latents(pipe, gen.initial_latents(samples)),
        num_inference_steps=3,
        guidance_scale=guidance,
        height=32,
        width=32,
        output_type="np",
    )
    plain.update(
        {k: v for k, v in gen.adapter.call_kwargs(guidance).items() if k != "negative_prompt"}
    )  # its default negative
    if negative or (
        gen.uses_guidance and name == "tiny-qwen-image"
    ):  # Qwen-Image guides only when given a negative prompt
        plain["negative_prompt"] = [negative] * 4
    with torch.inference_mode():
        ref = pipe(**plain).images
    ref = (ref * 255).round().astype(np.uint8)
    assert ours.shape == (4, 32, 32, 3) and ours.std() > 0
    assert _worst(ours, ref) <= TOL


def test_batch_cache_and_seed(family):
    name, pipe = family
    samples = plan_samples(_recipe(name))
    gen = Generator(pipe, steps=3, guidance=5.0, height=32, width=32)
    together = gen.generate(samples)  # uncached: every prompt encoded now
    alone = np.concatenate([gen.generate([s]) for s in samples])  # batch 1, from the cache
    fresh = Generator(pipe, steps=3, guidance=5.0, height=32, width=32).generate(samples[:1])
    assert _worst(together, alone) <= TOL and _worst(fresh, together[:1]) <= TOL
    other = gen.generate([plan_samples(_recipe(name, seed=7))[0]])
    assert _worst(gen.generate(samples[:1]), together[:1]) <= TOL and _worst(other, together[:1]) > 10


def test_a_two_class_recipe_generates_valid_shards(family, tmp_path):
    from t2i_engine.engine.run import RunOptions, generate
    from t2i_engine.engine.verify import verify_dataset

    name, _ = family
    summary = generate(_recipe(name), tmp_path / name, RunOptions(device="cpu", progress=False))
    assert summary["images"] == 4 and verify_dataset(tmp_path / name) == []


def test_zero_guidance_unconditional_is_the_empty_prompt_alone_and_an_explicit_choice():
    from t2i_engine.errors import InputError

    pipe = load_pipeline(MODELS["tiny-sdxl"], None, torch.device("cpu"), torch.float32)
    samples = plan_samples(_recipe("tiny-sdxl"))[:2]
    conditional = Generator(pipe, steps=3, guidance=0.0, height=32, width=32).generate(samples)
    paper = Generator(pipe, steps=3, guidance=0.0, height=32, width=32, zero_guidance="unconditional").generate(
        samples
    )
    assert (
        _worst(paper, conditional) > 2 * TOL
    )  # not the prompt's image (a random tiny model: a weak prompt, a small change)
    # the paper's formula at 0 leaves CFG's negative branch: for SDXL the zeroed empty prompt, for both samples
    with torch.inference_mode():
        ref = pipe(
            prompt_embeds=torch.zeros(2, 77, 64),
            pooled_prompt_embeds=torch.zeros(2, 32),
            latents=Generator(pipe, steps=3, guidance=0.0, height=32, width=32).initial_latents(samples),
            num_inference_steps=3,
            guidance_scale=0.0,
            height=32,
            width=32,
            output_type="np",
        ).images
    assert _worst(paper, (ref * 255).round().astype(np.uint8)) <= TOL
    recipe = _recipe("tiny-sdxl", zero_guidance="unconditional", guidance=0)
    assert (
        recipe.zero_guidance == "unconditional"
        and recipe.content_hash() != _recipe("tiny-sdxl", guidance=0).content_hash()
    )
    with pytest.raises(InputError, match="zero_guidance"):
        _recipe("tiny-flux", zero_guidance="unconditional")
    with pytest.raises(InputError, match="zero_guidance"):
        _recipe("tiny-sdxl", zero_guidance="paper")


def test_a_scheduler_that_draws_noise_while_sampling_still_follows_the_seed():
    """SDXL-turbo samples with Euler-ancestral: per-sample step generators keep each image a
    function of its own seed, whatever the batch or the process's random state."""
    from diffusers import EulerAncestralDiscreteScheduler

    pipe = load_pipeline(MODELS["tiny-sdxl"], None, torch.device("cpu"), torch.float32)
    pipe.scheduler = EulerAncestralDiscreteScheduler.from_config(pipe.scheduler.config)
    samples = plan_samples(_recipe("tiny-sdxl"))
    gen = Generator(pipe, steps=4, guidance=0.0, height=32, width=32)
    torch.manual_seed(1)
    together = gen.generate(samples)
    torch.manual_seed(2)
    alone = np.concatenate([gen.generate([s]) for s in samples])
    assert _worst(together, alone) <= TOL


def test_low_precision_decodes_in_the_vae_dtype():
    # Sana's sampling loop ends in fp32 latents; its VAE runs in the pipeline's dtype
    pipe = load_pipeline(MODELS["tiny-sana"], None, torch.device("cpu"), torch.bfloat16)
    samples = plan_samples(_recipe("tiny-sana"))[:2]
    gen = Generator(pipe, steps=2, guidance=4.5, height=32, width=32)
    ours = gen.generate(samples)
    with torch.inference_mode():
        ref = pipe(
            prompt=[s.prompt for s in samples],
            latents=gen.initial_latents(samples),
            num_inference_steps=2,
            guidance_scale=4.5,
            height=32,
            width=32,
            output_type="np",
            use_resolution_binning=False,
        ).images
    assert _worst(ours, (ref * 255).round().astype(np.uint8)) <= TOL


def _refined(**fields):
    return _recipe("tiny-sdxl", **{"steps": 4, "refiner": "tiny-sdxl-refiner", "high_noise_fraction": 0.5, **fields})


@pytest.mark.parametrize("negative", ["", "a photo"])
def test_the_sdxl_refiner_takes_the_last_steps_as_in_diffusers_ensemble(negative):
    """Base to denoising_end, refiner from denoising_start on the base's latents, as diffusers'
    SDXL example runs them from prompt strings; batch 1 equals batch 4 from the cache."""
    recipe = _refined(negative_prompt=negative)
    pipe = load_pipeline(MODELS["tiny-sdxl"], None, torch.device("cpu"), torch.float32)
    refiner = load_refiner(recipe, pipe, None, torch.device("cpu"), torch.float32)
    assert refiner.text_encoder_2 is pipe.text_encoder_2 and refiner.vae is pipe.vae and refiner.text_encoder is None
    samples = plan_samples(recipe)
    gen = Generator.for_recipe(pipe, recipe, refiner)
    ours = gen.generate(samples)
    prompts, negatives = [s.prompt for s in samples], [negative] * 4 if negative else None
    with torch.inference_mode():
        latents = pipe(
            prompt=prompts,
            negative_prompt=negatives,
            latents=gen.initial_latents(samples),
            num_inference_steps=4,
            guidance_scale=5.0,
            height=32,
            width=32,
            denoising_end=0.5,
            output_type="latent",
        ).images
        ref = refiner(
            prompt=prompts,
            negative_prompt=negatives,
            image=latents,
            num_inference_steps=4,
            guidance_scale=5.0,
            denoising_start=0.5,
            output_type="np",
        ).images
    assert _worst(ours, (ref * 255).round().astype(np.uint8)) <= TOL
    base_alone = Generator.for_recipe(pipe, _recipe("tiny-sdxl", steps=4, negative_prompt=negative)).generate(samples)
    assert _worst(ours, base_alone) > 10 and gen.stage_seconds["refining"] > 0  # the refiner ran its steps
    assert _worst(np.concatenate([gen.generate([s]) for s in samples]), ours) <= TOL


def test_the_papers_guidance_0_gives_the_refiner_its_negative_aesthetic_score():
    """CFG's negative branch alone: the refiner's time ids carry the negative aesthetic score (2.5),
    not the positive 6.0 (a tiny random UNet barely reacts to it, so its input is checked)."""
    pipe = load_pipeline(MODELS["tiny-sdxl"], None, torch.device("cpu"), torch.float32)
    seen = []
    for zero_guidance in ("conditional", "unconditional"):
        recipe = _refined(guidance=0, zero_guidance=zero_guidance)
        refiner = load_refiner(recipe, pipe, None, torch.device("cpu"), torch.float32)
        refiner.unet.register_forward_pre_hook(
            lambda m, a, kw: seen.append(kw["added_cond_kwargs"]["time_ids"][:, -1]), with_kwargs=True
        )
        Generator.for_recipe(pipe, recipe, refiner).generate(plan_samples(recipe)[:2])
    assert [t.tolist() for t in seen] == [[6.0, 6.0]] * 2 + [[2.5, 2.5]] * 2  # the refiner's 2 steps of 4 in each mode


def test_a_refined_recipe_makes_its_own_dataset_and_bad_refiners_are_refused(tmp_path):
    import json

    from t2i_engine.engine.recipe import Recipe
    from t2i_engine.engine.run import RunOptions, generate
    from t2i_engine.engine.verify import verify_dataset
    from t2i_engine.errors import InputError

    recipe = _refined()
    out = tmp_path / "refined"
    assert generate(recipe, out, RunOptions(device="cpu", progress=False))["images"] == 4 and verify_dataset(out) == []
    stored = json.loads((out / "dataset.json").read_text())["recipe"]
    assert stored["refiner"] == "tiny-sdxl-refiner" and stored["high_noise_fraction"] == 0.5
    with pytest.raises(InputError, match="high_noise_fraction"):  # another split is another dataset: no resume into it
        generate(_refined(high_noise_fraction=0.75), out, RunOptions(device="cpu", progress=False))
    # recipes without a refiner keep the hashes their manifests hold (written before these keys existed)
    plain = _recipe("tiny-sdxl", steps=4)
    old = {k: v for k, v in plain.to_dict().items() if k not in ("refiner", "high_noise_fraction")}
    assert Recipe.from_dict(old).content_hash() == plain.content_hash() != recipe.content_hash()
    for fields, field in [
        ({"refiner": "sdxl-refiner"}, "refiner"),  # made for sdxl, not tiny-sdxl
        ({"refiner": "tiny-sdxl-refiner", "high_noise_fraction": 1.0}, "high_noise_fraction"),
        ({"refiner": "tiny-sdxl-refiner", "steps": 1}, "steps"),
        ({"high_noise_fraction": 0.8}, "high_noise_fraction"),
    ]:  # without a refiner
        with pytest.raises(InputError, match=field):
            _recipe("tiny-sdxl", **fields)
    with pytest.raises(InputError, match="refiner"):
        _recipe("tiny-sd", refiner="tiny-sdxl-refiner")
    for devices in (None, ["cpu"]):  # 4 leading steps: 751, 501, 251, 1; none at or above 800 for the base
        with pytest.raises(InputError, match="high_noise_fraction.*the base would run 0 and the refiner 4"):
            generate(
                _refined(high_noise_fraction=0.2),
                tmp_path / "split",
                RunOptions(device="cpu", devices=devices, progress=False),
            )
        assert not (
            tmp_path / "split"
        ).exists()  # refused before the workers start, so a corrected rerun may use the folder
    assert (
        _recipe("tiny-sdxl", refiner="none", high_noise_fraction=0.7).refiner is None
    )  # a flag turning a file's refiner off
    with pytest.raises(
        InputError, match="--weights"
    ):  # a path, not a hub id: refused at once, not after the hub's retries
        generate(
            recipe, tmp_path / "w", RunOptions(device="cpu", progress=False, weights=str(tmp_path / "no-such-folder"))
        )
    with pytest.raises(InputError, match="backend"):
        generate(recipe, tmp_path / "onnx", RunOptions(device="cpu", progress=False, backend="onnx"))
    assert not (tmp_path / "onnx").exists()
