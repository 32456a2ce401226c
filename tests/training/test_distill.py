"""The few-step students (training/distill.py) and the shipped ones (digits-lcm, digits-dit-cm):
the parametrizations against diffusers' own, a student starting as its teacher, a few training
steps moving it, and the shipped students loading from their base's shared components, drawing
recognisable digits at their default steps and taking per-sample noise for their re-noising."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from t2i_engine.engine.generator import Generator
from t2i_engine.engine.plan import plan_samples
from t2i_engine.engine.recipe import build_recipe
from t2i_engine.models.pipelines import bundled_path, load_pipeline
from t2i_engine.models.registry import MODELS, get_model
from t2i_engine.training import distill
from t2i_engine.training.digits_judge import load_judge
from t2i_engine.training.small_cnn import predict

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def digits_pipe():
    return load_pipeline(get_model("digits"), None, CPU, torch.float32)


def test_lcm_scalings_and_guidance_embedding_are_diffusers_own():
    from diffusers import LCMScheduler, StableDiffusionPipeline

    sched = LCMScheduler()
    t = torch.tensor([0, 19, 259, 999])
    c_skip, c_out = distill.lcm_scalings(t)
    for i, step in enumerate(t.tolist()):
        want = sched.get_scalings_for_boundary_condition_discrete(step)
        assert (float(c_skip[i]), float(c_out[i])) == pytest.approx(want, rel=1e-6)
    assert (float(c_skip[0]), float(c_out[0])) == (1.0, 0.0)  # the boundary: f(x, 0) = x
    # the pipeline embeds guidance_scale - 1 (LCM's w): the student is trained on what it will be given
    want = StableDiffusionPipeline.get_guidance_scale_embedding(None, torch.tensor([1.0, 6.5]), embedding_dim=64)
    assert torch.equal(distill.guidance_embedding(torch.tensor([2.0, 7.5])), want)


def test_the_unet_student_starts_as_its_teacher_and_a_few_steps_move_it(digits_pipe):
    teacher = digits_pipe.unet
    student = distill.student_unet(teacher)
    assert student.config.time_cond_proj_dim == distill.GUIDANCE_EMBED_DIM
    x, t = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0)), torch.tensor([999, 300])
    text = torch.randn(2, 16, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = teacher(x, t, encoder_hidden_states=text).sample
        got = student(
            x, t, encoder_hidden_states=text, timestep_cond=distill.guidance_embedding(torch.tensor([2.0, 5.0]))
        ).sample
    assert torch.allclose(got, want, atol=1e-5)

    from t2i_engine.training.digits_model import SHIFTS

    moments = (torch.randn(len(SHIFTS), 8, 4, 8, 8), torch.full((len(SHIFTS), 8, 4, 8, 8), 0.1))
    labels = torch.arange(8) % 10
    cfg = distill.DistillConfig(steps=2, batch_size=4, warmup_steps=1, lr=1e-3)
    trained, losses = distill.distill_unet(
        digits_pipe, moments, labels, cfg, torch.Generator().manual_seed(0), log=lambda *a: None
    )
    assert len(losses) == 2 and all(np.isfinite(losses))
    assert any(not torch.equal(a, b) for a, b in zip(trained.parameters(), student.parameters()))
    assert all(torch.equal(a, b) for a, b in zip(teacher.parameters(), digits_pipe.unet.parameters()))  # teacher kept


STUDENTS = ["digits-lcm", "digits-dit-cm"]
shipped = pytest.mark.skipif(
    not all(Path(bundled_path(MODELS[m]), "model_index.json").exists() for m in STUDENTS),
    reason="students not trained yet",
)


@shipped
@pytest.mark.parametrize("model", STUDENTS)
def test_a_shipped_student_draws_recognisable_digits_at_its_default_steps(model):
    spec = get_model(model)
    pipe = load_pipeline(spec, None, CPU, torch.float32)
    base = load_pipeline(get_model(spec.student_of), None, CPU, torch.float32)
    assert pipe.vae is not base.vae and torch.equal(  # the base's shipped VAE, loaded from its folder
        next(iter(pipe.vae.state_dict().values())), next(iter(base.vae.state_dict().values()))
    )
    recipe = build_recipe({"model": model, "images_per_class": 5})
    samples = plan_samples(recipe)
    gen = Generator.for_recipe(pipe, recipe)
    gen.count_flops()
    images = gen.generate(samples)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    labels = torch.tensor([s.class_index for s in samples])
    assert (predict(load_judge(), x) == labels).float().mean() >= 0.85
    # one forward per step: no CFG branch, whatever the guidance
    forward = gen.denoiser_flops_per_image / recipe.steps
    one = Generator.for_recipe(pipe, build_recipe({"model": model, "images_per_class": 5, "steps": 1}))
    one.count_flops()
    one.generate(samples[:2])
    assert one.denoiser_flops_per_image == pytest.approx(forward, rel=1e-6)
    # the re-noising draws from each sample's generators: a sample's image does not depend on its batch
    assert np.array_equal(gen.generate(samples[3:5]), images[3:5])
