"""The embedded models' tiny decoder (training/tiny_decoder.py, shipped as assets/digits-taesd):
it draws what the VAE draws from the same latents at a tenth of the decode FLOPs, for both
embedded models, and its training step learns."""

from __future__ import annotations

import pytest
import torch

from t2i_engine.engine.generator import Generator
from t2i_engine.engine.plan import plan_units
from t2i_engine.engine.recipe import build_recipe
from t2i_engine.engine.runtime import load_run_pipeline
from t2i_engine.models.flops import decode_flops
from t2i_engine.models.pipelines import load_pipeline
from t2i_engine.models.registry import get_model
from t2i_engine.training.digits_judge import load_judge
from t2i_engine.training.small_cnn import predict
from t2i_engine.training.tiny_decoder import TinyDecoderConfig, build_tiny, train_tiny, vae_targets

CPU = torch.device("cpu")


@pytest.mark.parametrize("model", ["digits", "digits-dit"])
def test_the_shipped_tiny_decoder_draws_what_the_vae_draws(model):
    """Both embedded models, their default settings, 20 images: the same latents decoded by the
    VAE and by digits-taesd differ by under 6 of 255 levels on average (2.0-2.2 measured at
    training, training.json), the judge reads the tiny decoder's digits, and its decode costs
    at least 10x fewer FLOPs."""
    recipe = build_recipe({"model": model, "images_per_class": 2})
    samples = plan_units(recipe)[0].samples
    images = {}
    for decoder in (None, {"name": "digits-taesd"}):
        pipe = load_run_pipeline(get_model(model), None, CPU, torch.float32, decoder=decoder)
        gen = Generator.for_recipe(pipe, recipe)
        gen.count_flops()
        images[decoder is None] = (gen.generate(samples), gen.decoder_flops_per_image)
    (vae, vae_flops), (tiny, tiny_flops) = images[True], images[False]
    error = abs(vae.astype(float) - tiny.astype(float)).mean()
    print(f"{model}: mean |VAE - tiny| {error:.2f} levels; decode FLOPs {vae_flops / tiny_flops:.1f}x fewer")
    assert error < 6 and vae_flops >= 10 * tiny_flops
    x = torch.from_numpy(tiny).permute(0, 3, 1, 2).float() / 255
    labels = torch.tensor([s.class_index for s in samples])
    assert (predict(load_judge(), x) == labels).float().mean() >= 0.85


def test_a_training_step_of_the_tiny_decoder_learns():
    """Forty steps on 64 VAE latents of the embedded model bring the tiny decoder's error to the
    VAE's images down (from random weights)."""
    vae = load_pipeline(get_model("digits"), None, CPU, torch.float32).vae
    gen = torch.Generator().manual_seed(0)
    latents = torch.randn(64, 4, 8, 8, generator=gen)
    targets = vae_targets(vae, latents)
    tiny = build_tiny(0)
    with torch.no_grad():
        before = (tiny.decode(latents).sample - targets).abs().mean().item()
    cfg = TinyDecoderConfig(steps=40, batch_size=32, warmup_steps=5)
    train_tiny(tiny, vae, latents, targets, cfg, gen, log=lambda _: None)
    with torch.no_grad():
        after = (tiny.decode(latents).sample - targets).abs().mean().item()
    assert after < 0.7 * before
    assert decode_flops(tiny, (8, 8)) * 10 <= decode_flops(vae, (8, 8))
