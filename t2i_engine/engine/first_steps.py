"""The base model's first steps (recipe key `first_steps`): a base model with its CFG denoises the
first k steps, the recipe's model (a few-step student) the rest, on the student's step grid.

Gandikota & Bau (2025, "Distilling Diversity and Control in Diffusion Models") found a distilled
model's lost diversity decided in its first, high-noise step: running the base there restores it
at little cost. Both models must be of one family and one latent space (the same VAE, so the
base's prediction means the same thing to the student's scheduler) and predict the same quantity
(their schedulers' prediction type), so the base's guided prediction at the grid's timestep can
move the student's latents (below). A sampler that calls the denoiser twice per step (Heun)
gives the base every call at the grid's first k timesteps.

The pipeline runs as usual; for the call, its denoiser attribute is a `FirstStepsDenoiser` that
sends the first k timesteps' calls to the base (conditional and negative rows in one call, CFG at
the base's scale), the rest to the student; a student that runs CFG itself gets the base's
guided prediction in both halves, so its CFG formula returns it unchanged.

A base step moves the latents deterministically to the grid's next timestep, as the base's own
ODE solver would (DDIM or Euler for a discrete noise schedule, Euler for a flow), keeping the noise
the latents carry: the student's scheduler still takes the step (its state, its noise draws) but
its result is replaced. (At a flow's first step, where the latents are pure noise, this and a
re-noising student scheduler give the same distribution; they differ from the second base step
on.) What one coarse base step costs: its clean estimate from pure noise is the blurred mean of
every image the prompt allows, so the latents it hands over lie off the student's training
distribution; measured on digits-dit-cm at 2 steps (bench/RESULTS.md), one base step in front
took synth->real from 0.91 to 0.72, while at 4 steps (a smaller first step) it changed nothing.
"""

from __future__ import annotations

from contextlib import contextmanager
from types import SimpleNamespace

import torch

from ..errors import InputError
from .guidance import wrapped_step


def _positive_half(value, n: int):
    return value[n:] if torch.is_tensor(value) and value.dim() > 0 and value.shape[0] == 2 * n else value


class FirstStepsDenoiser(torch.nn.Module):
    """The student's denoiser, except at the first `k` timesteps of the scheduler's grid, where the
    base (with CFG at `guidance` on `inputs`: the base's prompt and negative inputs for the batch)
    predicts instead. Attributes the pipeline reads (config, dtype, ...) are the student's."""

    def __init__(self, student, base, scheduler, k: int, guidance: float, family: str, inputs: dict):
        super().__init__()
        self.student, self.base = student, base
        self._scheduler, self.k, self.guidance, self.family, self.inputs = scheduler, k, guidance, family, inputs

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__("student"), name)

    def _is_base_step(self, t) -> bool:
        grid = sorted({float(v) for v in self._scheduler.timesteps.reshape(-1)}, reverse=True)
        return float(torch.as_tensor(t).reshape(-1)[0]) >= grid[min(self.k, len(grid)) - 1] - 1e-4

    def forward(self, *args, **kwargs):
        latents = args[0] if args else kwargs.get("sample", kwargs.get("hidden_states"))
        t = kwargs.get("timestep", args[1] if len(args) > 1 else None)
        if not self._is_base_step(t):
            return self.student(*args, **kwargs)
        n = self.inputs["prompt_embeds"].shape[0]
        x = _positive_half(latents, n)  # a student running CFG itself: its two halves are alike
        t = _positive_half(torch.as_tensor(t, device=x.device), n)
        if t.dim() > 0:
            t = torch.cat([t, t])
        pred = self._base_guided(torch.cat([x, x]), t, kwargs).to(x.dtype)
        if latents.shape[0] == 2 * n:
            pred = torch.cat([pred, pred])
        return (pred,) if kwargs.get("return_dict", True) is False else SimpleNamespace(sample=pred)

    def _base_guided(self, x2, t2, kwargs) -> torch.Tensor:
        """The base's CFG prediction: one call on [negative; positive]."""
        i = self.inputs
        text = torch.cat([i["negative_prompt_embeds"], i["prompt_embeds"]]).to(self.base.dtype)
        if self.family == "sd3":
            pooled = torch.cat([i["negative_pooled_prompt_embeds"], i["pooled_prompt_embeds"]]).to(self.base.dtype)
            out = self.base(
                hidden_states=x2.to(self.base.dtype),
                timestep=t2,
                encoder_hidden_states=text,
                pooled_projections=pooled,
                return_dict=False,
            )[0]
        else:
            extra = {}
            if self.family == "sdxl":
                n = i["prompt_embeds"].shape[0]
                time_ids = _positive_half(kwargs["added_cond_kwargs"]["time_ids"], n)
                pooled = torch.cat([i["negative_pooled_prompt_embeds"], i["pooled_prompt_embeds"]])
                extra["added_cond_kwargs"] = {"text_embeds": pooled, "time_ids": torch.cat([time_ids, time_ids])}
            out = self.base(x2.to(self.base.dtype), t2, encoder_hidden_states=text, return_dict=False, **extra)[0]
        uncond, cond = out.float().chunk(2)
        return uncond + self.guidance * (cond - uncond)


def check_first_steps_pair(student_pipe, base_pipe, base_name: str) -> None:
    """Refuse a base whose latents or predictions the student's scheduler would misread: another
    VAE latent layout or scaling, or another prediction type (the registry's latent spaces decide
    first; this checks the loaded weights)."""
    s_vae, b_vae = student_pipe.vae.config, base_pipe.vae.config
    for key in ("latent_channels", "scaling_factor", "shift_factor"):
        if s_vae.get(key) != b_vae.get(key):
            raise InputError(
                "first_steps.model",
                base_name,
                f"its VAE's {key} ({b_vae.get(key)}) differs from the model's ({s_vae.get(key)}): "
                "another latent space",
            )
    s_pred = student_pipe.scheduler.config.get("prediction_type")
    b_pred = base_pipe.scheduler.config.get("prediction_type")
    if s_pred != b_pred:
        raise InputError(
            "first_steps.model", base_name, f"predicts {b_pred}, the model {s_pred}: the scheduler would misread it"
        )


def deterministic_step(scheduler, pred: torch.Tensor, t, x: torch.Tensor) -> torch.Tensor:
    """The latents at the grid's next timestep after `t`, moved along the ODE by `pred` (in the
    scheduler's prediction type): Euler for a flow (x + (s' - s) v) and for the schedulers that
    hold x0 + sigma * noise (Euler's, in sigma), DDIM for the rest (the clean estimate and the
    implied noise at the next level)."""
    grid = scheduler.timesteps.reshape(-1).float().cpu()
    t = float(torch.as_tensor(t).reshape(-1)[0])
    i = int((grid - t).abs().argmin())
    if "FlowMatch" in type(scheduler).__name__:
        sigmas = scheduler.sigmas.reshape(-1).float()
        j = i + 1
        while j < len(sigmas) - 1 and float(sigmas[j]) == float(sigmas[i]):
            j += 1  # a sampler calling twice at one level: the next level down
        s, s_next = float(sigmas[i]), float(sigmas[j])
        return (x.float() + (s_next - s) * pred.float()).to(x.dtype)
    kind = scheduler.config.get("prediction_type", "epsilon")
    if float(getattr(scheduler, "init_noise_sigma", 1.0)) > 1.0:
        # Euler-type schedulers hold x0 + sigma * noise and step in sigma (init_noise_sigma above 1)
        sigmas = scheduler.sigmas.reshape(-1).float()
        s, s_next = float(sigmas[i]), float(sigmas[i + 1])
        xf, pf = x.float(), pred.float()
        x0 = pf * (-s / (s**2 + 1) ** 0.5) + xf / (s**2 + 1) if kind == "v_prediction" else xf - s * pf
        return (xf + (s_next - s) * (xf - x0) / s).to(x.dtype)
    later = [float(v) for v in grid[i + 1 :] if float(v) < t]
    alphas = scheduler.alphas_cumprod.float()
    a = alphas[int(round(t))]
    a_next = alphas[int(round(later[0]))] if later else torch.as_tensor(getattr(scheduler, "final_alpha_cumprod", 1.0))
    xf, pf = x.float(), pred.float()
    if kind == "v_prediction":
        x0, eps = a.sqrt() * xf - (1 - a).sqrt() * pf, a.sqrt() * pf + (1 - a).sqrt() * xf
    elif kind == "sample":
        x0, eps = pf, (xf - a.sqrt() * pf) / (1 - a).sqrt()
    else:
        x0, eps = (xf - (1 - a).sqrt() * pf) / a.sqrt(), pf
    return (a_next.sqrt() * x0 + (1 - a_next).sqrt() * eps).to(x.dtype)


@contextmanager
def first_steps(pipe, base_pipe, k: int, guidance: float, family: str, inputs: dict):
    """`pipe`'s denoiser is a FirstStepsDenoiser for the duration (set in the pipeline's __dict__,
    so diffusers' config of the pipeline is not touched), and its scheduler's step takes a base
    step's transition deterministically (deterministic_step); yields the denoiser."""
    name = "unet" if hasattr(pipe, "unet") else "transformer"
    student = getattr(pipe, name)
    base = base_pipe.unet if hasattr(base_pipe, "unet") else base_pipe.transformer
    scheduler = pipe.scheduler
    wrapper = FirstStepsDenoiser(student, base, scheduler, k, guidance, family, inputs)

    def wrap(step):
        def base_step(model_output, timestep, sample, *args, **kwargs):
            out = step(model_output, timestep, sample, *args, **kwargs)  # the scheduler's own state moves on
            if not wrapper._is_base_step(timestep):
                return out
            moved = deterministic_step(scheduler, model_output, timestep, sample)
            if isinstance(out, tuple):
                return (moved, *out[1:])
            out.prev_sample = moved
            return out

        return base_step

    pipe.__dict__[name] = wrapper
    try:
        with wrapped_step(scheduler, wrap):
            yield wrapper
    finally:
        pipe.__dict__[name] = student
