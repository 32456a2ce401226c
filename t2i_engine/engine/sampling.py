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
STEPS = "steps"  # a sampler option whose value is the recipe's step count
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
    # Few-step samplers, for distilled students and the adapters that make one of a base model
    # (registry.ADAPTERS): LCM (Luo et al. 2023) and TCD (Zheng et al. 2024, its gamma the recipe's
    # tcd_gamma) re-noise each step's prediction to the next step's level, with noise from the
    # per-sample generators; the trailing grids start at the last training step (999, 749, 499, 249
    # at 4 steps) as SDXL-Lightning, Hyper-SD and DMD2 were trained to. lcm-trailing puts LCM's
    # skipping-step grid on that one (its original_inference_steps = the steps).
    "lcm": ("LCMScheduler", {}),
    "lcm-trailing": ("LCMScheduler", {"original_inference_steps": STEPS}),
    "tcd": ("TCDScheduler", {}),
    "ddim-trailing": ("DDIMScheduler", {"timestep_spacing": "trailing"}),
    "euler-trailing": ("EulerDiscreteScheduler", {"timestep_spacing": "trailing"}),
}
TCD_GAMMA = 0.3  # TCD's default stochasticity: 0 is deterministic, 1 re-noises fully (diffusers' `eta`)
SAMPLER_FAMILIES = ("sd", "sdxl")  # UNets with a discrete-time noise schedule
# families whose base model can denoise the first steps for a student (first_steps.py: it maps
# their prompt inputs onto the denoiser's arguments)
FIRST_STEPS_FAMILIES = ("sd", "sdxl", "sd3")
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


def check_tcd_gamma(value: object, sampler: str) -> float | None:
    """TCD's gamma (None unless the sampler is tcd; its default there TCD_GAMMA)."""
    if value is None:
        return TCD_GAMMA if sampler == "tcd" else None
    if sampler != "tcd":
        raise InputError("tcd_gamma", value, f"is TCD's stochasticity; it needs sampler tcd (this one: {sampler})")
    try:
        gamma = math.nan if isinstance(value, bool) else float(value)
    except (TypeError, ValueError):
        gamma = math.nan
    if not 0 <= gamma <= 1:  # NaN fails too
        raise InputError("tcd_gamma", value, "expected a number from 0 (deterministic) to 1")
    return gamma


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


# Feature caches: name -> (families, {parameter: (default, low, high, kind)}). A cache reuses
# features between denoiser calls instead of computing them (feature_cache.py does the work).
# deepcache (Ma et al. 2024): a UNet's deep branch (every block below the shallowest down/up
# pair) recomputed every `interval` calls, reused in between; the shallow pair runs every call.
# first-block and pyramid are diffusers' hooks, for FLUX, whose pipeline marks its cache contexts
# (Qwen-Image's does too, but pyramid broadcast failed on its separate conditional and
# unconditional calls, whose text lengths differ: left out until that is mended). first-block
# (ParaAttention's first-block cache) skips the remaining blocks when the first block's residual
# changed by less than `threshold`, a decision taken for the whole batch, so images depend on the
# batch (batch_size enters the recipe hash); pyramid (pyramid attention broadcast) reuses each
# attention's output for `skip` calls within diffusers' default timestep range (100, 800).
# FasterCache is not offered: its reuse of the unconditional branch assumes a pipeline calling
# that branch on its own, which FLUX's (guidance-distilled, one branch) does not.
CACHES: dict[str, tuple[tuple[str, ...], dict[str, tuple[float, float, float, type]]]] = {
    "none": ((), {}),
    "deepcache": (("sd", "sdxl"), {"interval": (3, 1, 1000, int)}),
    "first-block": (("flux",), {"threshold": (0.05, 0.0, 10.0, float)}),
    "pyramid": (("flux",), {"skip": (2, 1, 1000, int)}),
}
BATCH_DEPENDENT_CACHES = ("first-block",)

# Named settings (recipe key `preset`), chosen from the embedded model's measured frontier
# (bench/results/cpu-2026-12-05/frontier-digits: 46 cells, 3 training seeds each); a recipe's or
# flag's own value of any of these keys wins over the preset's. Against the model's default
# (DDIM, 15 steps, CFG at every step: 30 denoiser forwards, 1.575 GFLOPs per image; synth->real
# 0.9604 +- 0.0026): fast runs 9 forwards (0.473 GFLOPs, 3.3x fewer; 0.9643 +- 0.0083), fastest
# adds DeepCache (0.351 GFLOPs, 4.5x fewer; 0.9665 +- 0.0017). Offered for the UNet families;
# their usefulness as training data was measured on the embedded model only.
PRESETS: dict[str, dict] = {
    "default": {},
    "fast": {"sampler": "unipc", "steps": 6, "guidance_interval": [0.5, 3.0]},
    "fastest": {"sampler": "unipc", "steps": 6, "guidance_interval": [0.5, 3.0], "cache": "deepcache:2"},
}
PRESET_FAMILIES = ("sd", "sdxl")


def check_preset(value: object, family: str) -> dict:
    """The recipe keys preset `value` sets."""
    if value is None:
        return {}
    if value not in PRESETS:
        raise InputError("preset", value, f"expected one of {', '.join(PRESETS)}")
    if PRESETS[value] and family not in PRESET_FAMILIES:
        raise InputError(
            "preset",
            value,
            f"its settings are for the UNet families ({', '.join(PRESET_FAMILIES)}), not {family}",
        )
    return PRESETS[value]


def check_cache(value: object, family: str) -> dict | None:
    """A cache setting: none, a name, "name:value" (its one parameter) or {name: ..., param: ...};
    None for none, else {"name": ..., every parameter}."""
    if value is None or value == "none" or value == {"name": "none"}:
        return None
    allowed = (
        "expected none, deepcache, first-block or pyramid, optionally with its parameter "
        "(deepcache:N calls between deep recomputations, first-block:THRESHOLD, pyramid:N), "
        "or a mapping {name: deepcache, interval: 3}"
    )
    if isinstance(value, str):
        name, _, param = value.partition(":")
        value = {"name": name.strip()}
        if param:
            params = CACHES.get(value["name"], ((), {}))[1]
            if len(params) != 1:
                raise InputError("cache", f"{name}:{param}", allowed)
            value[next(iter(params))] = param.strip()
    if not isinstance(value, dict) or value.get("name") not in CACHES:
        raise InputError("cache", value.get("name") if isinstance(value, dict) else value, allowed)
    name = value["name"]
    families, params = CACHES[name]
    unknown = sorted(k for k in value if k != "name" and k not in params)
    if unknown:
        raise InputError(f"cache.{unknown[0]}", value[unknown[0]], f"{name} takes: {', '.join(params)}")
    if family not in families:
        raise InputError("cache", name, f"not for the {family} family (families: {', '.join(families)})")
    out: dict = {"name": name}
    for key, (default, low, high, kind) in params.items():
        raw = value.get(key, default)
        try:
            number = math.nan if isinstance(raw, bool) else float(raw)
        except (TypeError, ValueError):
            number = math.nan
        if not (low <= number <= high and (kind is float or number.is_integer())):  # NaN fails both
            kind_name = "an integer" if kind is int else "a number"
            raise InputError(f"cache.{key}", raw, f"expected {kind_name} from {low:g} to {high:g}")
        out[key] = kind(number)
    return out
