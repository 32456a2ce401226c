"""The base model's first steps (recipe key `first_steps`, engine/first_steps.py): the base with
its CFG at the grid's first k timesteps, the recipe's model at the rest, against independent
references; recorded, hashed, and refused where the two models cannot share latents."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from t2i_engine.engine.generator import Generator
from t2i_engine.engine.plan import plan_samples
from t2i_engine.engine.recipe import build_recipe
from t2i_engine.engine.run import generate
from t2i_engine.errors import InputError
from t2i_engine.models.pipelines import load_pipeline
from t2i_engine.models.registry import get_model
from tests.engine.test_generate import QUIET

CPU = torch.device("cpu")
BASE = {"classes": ["cat", "dog"], "images_per_class": 2, "steps": 4, "resolution": 32, "batch_size": 2}


def _pipe(model: str):
    return load_pipeline(get_model(model), None, CPU, torch.float32)


@pytest.mark.parametrize("model", ["tiny-sd", "tiny-sdxl", "tiny-sd3"])
def test_the_base_at_the_first_step_is_cfg_there_and_the_prompt_alone_after(model):
    """With the model as its own base, a student run without CFG (guidance 1) whose first step is
    the base's CFG at 5 must equal CFG at 5 on the first step alone: for the UNets, one run at
    guidance 5 whose guidance interval holds the first step's noise level alone (sampling.py's
    interval: an independent path); for SD3, whose first step is at sigma infinity (no interval
    holds it), a hand-written Euler loop. And k = steps - 1 with one guidance everywhere equals
    plain CFG at every step."""
    # Euler for the UNets: a base step is the ODE's deterministic step whichever the student's sampler, so the
    # references (which step with the scheduler's own) need a scheduler whose step is that one
    fields = {**BASE, "model": model, **({"sampler": "euler"} if model != "tiny-sd3" else {})}
    pipe, base = _pipe(model), _pipe(model)
    samples = plan_samples(build_recipe(fields))[:2]

    mixed = build_recipe({**fields, "guidance": 1.0, "first_steps": {"model": model, "steps": 1, "guidance": 5.0}})
    got = Generator.for_recipe(pipe, mixed, first_base=base).generate(samples)
    want = _first_step_guided_reference(pipe, build_recipe({**fields, "guidance": 5.0}), samples)
    assert np.abs(got.astype(int) - want).max() <= 1

    plain = Generator.for_recipe(pipe, build_recipe({**fields, "guidance": 5.0})).generate(samples)
    alone = Generator.for_recipe(pipe, build_recipe({**fields, "guidance": 1.0})).generate(samples)
    assert np.abs(got.astype(int) - alone).max() > 1  # the base's step changed the images
    nearly_all = build_recipe({**fields, "guidance": 5.0, "first_steps": f"{model}:3:5"})
    assert np.array_equal(Generator.for_recipe(pipe, nearly_all, first_base=base).generate(samples), plain)


def _first_step_guided_reference(pipe, recipe, samples):
    gen = Generator.for_recipe(pipe, recipe)
    if recipe.model != "tiny-sd3":
        from t2i_engine.engine.guidance import _sigma

        sched = pipe.scheduler
        sched.set_timesteps(recipe.steps)
        s0, s1 = (_sigma(sched, float(t)) for t in sched.timesteps[:2])
        interval = build_recipe({**_fields(recipe), "guidance_interval": [(s0 + s1) / 2, 1e9]})
        return Generator.for_recipe(pipe, interval).generate(samples)
    from diffusers import FlowMatchEulerDiscreteScheduler

    cond = gen.prompt_inputs([s.prompt for s in samples])
    neg = gen.negative_inputs(len(samples))
    x = gen.initial_latents(samples)
    sched = FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config)
    sched.set_timesteps(recipe.steps)

    def v(embeds, pooled, t):
        return pipe.transformer(
            hidden_states=x, timestep=t.expand(len(x)), encoder_hidden_states=embeds, pooled_projections=pooled
        ).sample

    with torch.inference_mode():
        for i, t in enumerate(sched.timesteps):
            c = v(cond["prompt_embeds"], cond["pooled_prompt_embeds"], t)
            if i == 0:
                u = v(neg["negative_prompt_embeds"], neg["negative_pooled_prompt_embeds"], t)
                c = u + recipe.guidance * (c - u)
            x = sched.step(c, t, x).prev_sample
        return gen.decode(x)


def _fields(recipe) -> dict:
    return {**BASE, "model": recipe.model, "guidance": recipe.guidance, "sampler": recipe.sampler}


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction", "sample"])
@pytest.mark.parametrize("kind", ["DDIMScheduler", "EulerDiscreteScheduler", "FlowMatchEulerDiscreteScheduler"])
def test_a_base_step_is_the_deterministic_odes_step(kind, prediction):
    """deterministic_step against diffusers' own deterministic steps: DDIM at eta 0, Euler in sigma
    space, the flow's Euler."""
    import diffusers

    from t2i_engine.engine.first_steps import deterministic_step

    if kind.startswith("Flow"):
        if prediction != "epsilon":
            pytest.skip("a flow predicts velocity")
        sched = diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0)
    else:
        sched = getattr(diffusers, kind)(
            beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, prediction_type=prediction
        )
        if kind == "EulerDiscreteScheduler" and prediction == "sample":
            pytest.skip("diffusers' Euler takes epsilon and v")
        if kind == "DDIMScheduler":
            sched.register_to_config(clip_sample=False)  # the engine's models do not clip
    sched.set_timesteps(5)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 8, 8, generator=gen) * float(getattr(sched, "init_noise_sigma", 1.0))
    for i in (0, 2):
        t = sched.timesteps[i]
        pred = torch.randn(2, 4, 8, 8, generator=gen)
        sched._step_index = i if hasattr(sched, "_step_index") else None
        want = sched.step(pred, t, x).prev_sample
        assert torch.allclose(deterministic_step(sched, pred, t, x), want, atol=1e-4, rtol=1e-4)


def test_after_the_base_step_a_re_noising_student_scheduler_draws_only_its_own_noise(monkeypatch):
    """LCM re-noises every step but the last: at 2 steps with the base's first, nothing in the
    images may depend on the step noise (the base's step keeps the latents' noise)."""
    fields = {**BASE, "model": "tiny-sd", "guidance": 1.0, "sampler": "lcm", "steps": 2, "first_steps": "tiny-sd:1"}
    pipe, base = _pipe("tiny-sd"), _pipe("tiny-sd")
    recipe = build_recipe(fields)
    samples = plan_samples(recipe)[:2]
    first = Generator.for_recipe(pipe, recipe, first_base=base).generate(samples)
    monkeypatch.setattr(
        Generator,
        "step_generators",
        staticmethod(lambda s, stage="steps": [torch.Generator().manual_seed(99 + i) for i in range(len(s))]),
    )
    assert np.array_equal(Generator.for_recipe(pipe, recipe, first_base=base).generate(samples), first)
    alone = build_recipe({**fields, "first_steps": None, "steps": 3})  # LCM alone at 3 steps re-noises twice
    a = Generator.for_recipe(pipe, alone).generate(samples)
    monkeypatch.undo()
    assert not np.array_equal(Generator.for_recipe(pipe, alone).generate(samples), a)


def test_base_forwards_are_counted_and_its_calls_are_the_first_k():
    fields = {**BASE, "model": "tiny-sd", "guidance": 1.0}
    pipe, base = _pipe("tiny-sd"), _pipe("tiny-sd")
    samples = plan_samples(build_recipe(fields))[:2]
    alone = Generator.for_recipe(pipe, build_recipe(fields))
    alone.count_flops()
    alone.generate(samples)
    for k in (1, 2):
        gen = Generator.for_recipe(pipe, build_recipe({**fields, "first_steps": f"tiny-sd:{k}"}), first_base=base)
        gen.count_flops()
        gen.generate(samples)
        # each base step: two forwards (CFG) instead of the student's one
        assert gen.denoiser_flops_per_image == pytest.approx(alone.denoiser_flops_per_image * (4 + k) / 4, rel=1e-6)


def test_the_dataset_records_first_steps_and_a_resume_with_another_k_is_refused(tmp_path):
    fields = {**BASE, "model": "tiny-sd", "guidance": 1.0, "images_per_shard": 2}
    recipe = build_recipe({**fields, "first_steps": "tiny-sd:1:3"})
    assert recipe.first_steps == {"model": "tiny-sd", "steps": 1, "guidance": 3.0}
    assert recipe.content_hash() != build_recipe(fields).content_hash()
    assert recipe.content_hash() != build_recipe({**fields, "first_steps": "tiny-sd:2:3"}).content_hash()
    assert build_recipe({**fields, "first_steps": "tiny-sd:1"}).first_steps["guidance"] == 5.0  # the base's own
    out = tmp_path / "d"
    generate(recipe, out, QUIET)
    manifest = json.loads((out / "dataset.json").read_text())
    assert manifest["recipe"]["first_steps"] == recipe.first_steps
    with pytest.raises(InputError, match="recipe"):
        generate(build_recipe({**fields, "first_steps": "tiny-sd:2:3"}), out, QUIET)


@pytest.mark.parametrize(
    ("first_steps", "extra", "field", "says"),
    [
        ("tiny-sd:4", {}, "first_steps.steps", "below the recipe's 4 steps"),
        ("tiny-sd:0", {}, "first_steps.steps", "from 1 to 3"),
        ("tiny-sdxl:1", {}, "first_steps.model", "own family"),
        ("digits:1", {}, "first_steps.model", "latent space"),
        ("nope:1", {}, "first_steps.model", "registry model"),
        ("tiny-sd", {}, "first_steps", "NAME:K"),
        ({"model": "tiny-sd", "steps": 1, "scale": 2}, {}, "first_steps.scale", "takes"),
        ("tiny-sd:1:x", {}, "first_steps.guidance", "number"),
        ("tiny-sd:1", {"cache": "deepcache:2"}, "cache", "first_steps"),
    ],
)
def test_bad_first_steps_are_refused_naming_the_field(first_steps, extra, field, says):
    with pytest.raises(InputError) as e:
        build_recipe({**BASE, "model": "tiny-sd", "first_steps": first_steps, **extra})
    assert e.value.field == field and says in str(e.value)


def test_a_flux_model_is_refused():
    with pytest.raises(InputError, match="not for the flux family"):
        build_recipe({**BASE, "model": "tiny-flux", "resolution": 64, "first_steps": "tiny-flux:1"})


def test_the_flag_refuses_before_anything_is_written(cli, tmp_path):
    out = tmp_path / "d"
    code, _, err = cli(
        "generate", "--model", "tiny-sd", "--steps", "2", "--first-steps", "tiny-sd:2", "--out", str(out)
    )
    assert code == 2 and "first_steps.steps" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_a_mixture_takes_no_first_steps():
    with pytest.raises(InputError) as e:
        build_recipe({"models": "digits=0.5,digits-dit=0.5", "first_steps": "digits:1"})
    assert e.value.field == "first_steps"
