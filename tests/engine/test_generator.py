"""Generator: our embedding cache and per-sample latents reproduce the plain diffusers pipeline.

Tolerance: images are compared as uint8; batched fp32 convolutions may round differently from
unbatched ones, so at most 1 level (of 255) of difference is allowed anywhere.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from t2i_engine.engine.generator import Generator
from t2i_engine.engine.plan import plan_samples
from t2i_engine.models.pipelines import load_pipeline
from t2i_engine.models.registry import MODELS
from tests.conftest import tiny_recipe

TOL = 1  # uint8 levels


@pytest.fixture(scope="module")
def pipe():
    return load_pipeline(MODELS["tiny-sd"], None, torch.device("cpu"), torch.float32)


def make_generator(pipe, guidance=5.0, negative=""):
    return Generator(pipe, steps=3, guidance=guidance, height=32, width=32, negative_prompt=negative)


def worst(a: np.ndarray, b: np.ndarray) -> str:
    diff = np.abs(a.astype(int) - b.astype(int))
    return f"max diff {diff.max()} at {np.unravel_index(diff.argmax(), diff.shape)}"


@pytest.mark.parametrize("guidance,negative", [(5.0, "blurry"), (1.0, "")])
def test_matches_the_plain_pipeline(pipe, guidance, negative):
    samples = plan_samples(tiny_recipe(images_per_class=2))[:4]
    gen = make_generator(pipe, guidance, negative)
    ours = gen.generate(samples)
    with torch.inference_mode():
        ref = pipe(
            prompt=[s.prompt for s in samples],
            negative_prompt=[negative] * 4 if guidance > 1 else None,
            latents=gen.initial_latents(samples),
            num_inference_steps=3,
            guidance_scale=guidance,
            height=32,
            width=32,
            output_type="np",
        ).images
    ref = (ref * 255).round().astype(np.uint8)
    assert ours.shape == (4, 32, 32, 3) and ours.dtype == np.uint8
    assert np.abs(ours.astype(int) - ref.astype(int)).max() <= TOL, worst(ours, ref)


def test_batch_of_four_equals_one_at_a_time(pipe):
    samples = plan_samples(tiny_recipe())[:4]
    gen = make_generator(pipe)
    together = gen.generate(samples)
    alone = np.concatenate([gen.generate([s]) for s in samples])
    assert np.abs(together.astype(int) - alone.astype(int)).max() <= TOL, worst(together, alone)
    assert together.std() > 0  # not a constant image


def test_same_seed_same_image_and_other_seed_other_image(pipe):
    samples = plan_samples(tiny_recipe())
    gen = make_generator(pipe)
    assert np.array_equal(gen.generate(samples[:2]), gen.generate(samples[:2]))
    a, b = gen.generate([samples[0]]), gen.generate([samples[3]])  # same class, other seed
    assert samples[0].class_index == samples[3].class_index and not np.array_equal(a, b)


def test_each_unique_prompt_is_encoded_once(pipe):
    encoded = []
    hook = pipe.text_encoder.register_forward_hook(lambda m, args, out: encoded.append(args[0].shape[0]))
    try:
        gen = make_generator(pipe, negative="blurry")
        samples = plan_samples(tiny_recipe(images_per_class=4))  # 3 classes -> 3 prompts
        for i in range(0, len(samples), 2):
            gen.generate(samples[i : i + 2])
    finally:
        hook.remove()
    assert sum(encoded) == 3 + 1  # three class prompts, one negative prompt


def test_an_fp16_sdxl_vae_that_overflows_moves_to_fp32_once_and_stays():
    """diffusers moves SDXL's VAE to fp32 and back on every decode; the engine moves it once."""
    from t2i_engine.engine.adapters import SDXLAdapter
    from t2i_engine.models.tiny import build_tiny_sdxl

    pipe = build_tiny_sdxl()
    pipe.vae.register_to_config(force_upcast=True)  # as SDXL's own config says (tiny-sdxl's does not)
    latents = torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    reference = SDXLAdapter().decode(pipe, latents, 32, 32)  # fp32 throughout
    pipe.vae.to(torch.float16)
    first = SDXLAdapter().decode(pipe, latents.half(), 32, 32)
    assert pipe.vae.dtype == torch.float32  # and stays: no copy back to fp16
    second = SDXLAdapter().decode(pipe, latents.half(), 32, 32)
    assert first.dtype == torch.float32 and torch.equal(first, second)
    torch.testing.assert_close(first, reference, atol=2e-3, rtol=0)  # only the latents' fp16 rounding
