"""Doing less work per image: the sampler (diffusers' schedulers) and a guidance interval.

This file holds what a recipe accepts and is checked against (no torch: the CLI checks flags
without loading it); guidance.py does the work.

Samplers: the model's own scheduler ("default") or one of diffusers' schedulers, built from the
model's scheduler config (its noise schedule and prediction type kept), for the UNet families
(SD 1.x/2.x, SDXL); the flow-matching families keep their own. Noise a sampler draws while
sampling (the ancestral and SDE ones) comes from the per-sample step generators, as before.

Guidance interval (Kynkäänniemi et al. 2024, "Applying guidance in a limited interval improves
sample and distribution quality"): classifier-free guidance only while the step's noise level
sigma lies in [low, high], the conditional branch alone elsewhere. sigma is the EDM noise level,
one scale for every family: sqrt((1 - alpha_bar_t) / alpha_bar_t) for the UNet and PixArt
schedules, s / (1 - s) for a flow-matching time s in [0, 1]. The pipelines run CFG as one call on
[negative; positive] latents; outside the interval, hooks on the denoiser pass it the positive
half only and hand the pipeline that prediction twice, so CFG's formula returns it unchanged and
the step costs one forward per image instead of two. Every sample of a batch is at the same
step, so batches stay whole.
"""

from __future__ import annotations

import math

from ..errors import InputError

DEFAULT = "default"
# name -> (diffusers scheduler class, its options)
SAMPLERS: dict[str, tuple[str, dict]] = {
    DEFAULT: ("", {}),
    "ddim": ("DDIMScheduler", {}),
    "pndm": ("PNDMScheduler", {"skip_prk_steps": True}),
    "euler": ("EulerDiscreteScheduler", {}),
    "euler-ancestral": ("EulerAncestralDiscreteScheduler", {}),
    "heun": ("HeunDiscreteScheduler", {}),
    "dpm++2m": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    "dpm++2m-karras": (
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": True},
    ),
    # DPM++ 2M SDE: diffusers' DPMSolverSDEScheduler needs torchsde and draws its noise from a
    # Brownian tree that per-sample generators cannot seed; this one draws from them
    "dpm++sde": ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++", "solver_order": 2}),
    "unipc": ("UniPCMultistepScheduler", {}),
}
SAMPLER_FAMILIES = ("sd", "sdxl")  # UNets with a discrete-time noise schedule
# families whose pipelines run CFG as one call on [negative; positive]
INTERVAL_FAMILIES = ("sd", "sdxl", "sd3", "pixart", "sana")


def check_sampler(value: object, family: str) -> str:
    if value not in SAMPLERS:
        raise InputError("sampler", value, f"expected one of {', '.join(SAMPLERS)}")
    if value != DEFAULT and family not in SAMPLER_FAMILIES:
        raise InputError(
            "sampler",
            value,
            f"the {family} family keeps its own scheduler (samplers are for the UNet families: "
            f"{', '.join(SAMPLER_FAMILIES)}); use default",
        )
    return value


def check_guidance_interval(value: object, family: str, guides: bool) -> tuple[float, float] | None:
    """[low, high] in sigma (or "LOW,HIGH"); None: guidance at every step."""
    if value is None or value == "none":
        return None
    allowed = "expected [low, high]: two noise levels (EDM sigma), 0 <= low < high, e.g. [0.28, 5.42]"
    if isinstance(value, str):
        value = [p.strip() for p in value.strip("[]()").split(",")]
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise InputError("guidance_interval", value, allowed)
    try:
        low, high = (float(v) for v in value)
    except (TypeError, ValueError):
        raise InputError("guidance_interval", value, allowed) from None
    if not (math.isfinite(low) and math.isfinite(high) and 0 <= low < high):
        raise InputError("guidance_interval", value, allowed)
    if family not in INTERVAL_FAMILIES:
        raise InputError(
            "guidance_interval",
            value,
            f"not for the {family} family yet (families: {', '.join(INTERVAL_FAMILIES)})",
        )
    if not guides:
        raise InputError("guidance_interval", value, "needs classifier-free guidance: guidance above 1")
    return (low, high)
