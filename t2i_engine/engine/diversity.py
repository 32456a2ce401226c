"""Diversity levers as recipe settings (issue 22), checked without torch (the CLI checks flags
without loading it); guidance.py does the work.

- `cads`: condition-annealed sampling (Sadat et al., ICLR 2024). While the step's time t (1 at
  pure noise, 0 at the end: timestep / num_train_timesteps) is above tau2 the prompt embedding of
  the conditional branch is replaced by noise, below tau1 it is left alone, linearly annealed in
  between: y' = sqrt(gamma) y + noise * sqrt(1 - gamma) n, gamma = clip((tau2 - t) / (tau2 - tau1),
  0, 1); then rescaled to y's mean and standard deviation (per sample), mixed back by psi:
  psi * rescaled + (1 - psi) * y'. n is drawn at every call from a generator seeded by the
  sample's seed, so a sample's noise does not depend on its batch. The paper's defaults: noise
  0.25, tau1 0.6, tau2 0.9, psi 1. It acts on the text tokens (encoder_hidden_states); pooled
  embeddings (SDXL, SD3) are left as they are.
- `guidance_schedule`: constant, or a ramp of the guidance over the noise levels with the same
  mean: with p = 1 - t (0 at pure noise, 1 at the end) the scale is 1 + (g - 1) * r(p), linear
  r = 2p, cosine r = 1 - cos(pi p): little guidance while the image's layout forms, more as
  details form (Wang et al. 2024, "Analysis of classifier-free guidance weight schedulers").
- `apg`: adaptive projected guidance (Sadat et al. 2024): the guidance direction's component
  parallel to the conditional prediction scaled by eta (0 drops it: the part that oversaturates),
  its norm capped at `rescale`, with a running `momentum` (negative: it pushes away from the last
  steps' direction); diffusers' guiders.normalized_guidance does the arithmetic.
- `guidance` as a list: each sample's scale drawn from its seed (a dataset mixing guidance
  levels); the pipeline runs CFG at the largest and each sample's prediction is set to its own.

They apply where the pipeline runs CFG as one batched call on [negative; positive] (the
guidance-interval families); the prediction CFG's formula then makes is replaced, per sample,
by the lever's.
"""

from __future__ import annotations

import math

from ..errors import InputError
from ..seeds import stable_hash
from .sampling import INTERVAL_FAMILIES

SCHEDULES = ("constant", "linear", "cosine")
CADS_DEFAULTS = {"noise": 0.25, "tau1": 0.6, "tau2": 0.9, "psi": 1.0}
APG_DEFAULTS = {"eta": 0.0, "rescale": 15.0, "momentum": -0.5}
MAX_GUIDANCE_CHOICES = 64


def _family(field: str, value, family: str) -> None:
    if family not in INTERVAL_FAMILIES:
        raise InputError(
            field,
            value,
            f"not for the {family} family (families that run CFG as one call: {', '.join(INTERVAL_FAMILIES)})",
        )


def _params(field: str, value, defaults: dict, shorthand: str) -> dict:
    """{param: number} from a mapping, a bare number (the `shorthand` parameter) or true."""
    allowed = f"expected none, true, a number ({shorthand}) or a mapping of {', '.join(defaults)}"
    if value is True or (isinstance(value, str) and value.lower() in ("true", "on")):
        value = {}
    elif isinstance(value, (int, float, str)) and not isinstance(value, bool):
        value = {shorthand: value}
    if not isinstance(value, dict):
        raise InputError(field, value, allowed)
    unknown = sorted(k for k in value if k not in defaults)
    if unknown:
        raise InputError(f"{field}.{unknown[0]}", value[unknown[0]], f"{field} takes: {', '.join(defaults)}")
    out = {}
    for key, default in defaults.items():
        raw = value.get(key, default)
        try:
            number = math.nan if isinstance(raw, bool) else float(raw)
        except (TypeError, ValueError):
            number = math.nan
        if not math.isfinite(number):
            raise InputError(f"{field}.{key}", raw, "expected a finite number")
        out[key] = number
    return out


def check_cads(value: object, family: str, guides: bool) -> dict | None:
    if value is None or value is False or value in ("none", "off"):
        return None
    out = _params("cads", value, CADS_DEFAULTS, "noise")
    if not out["noise"] >= 0:
        raise InputError("cads.noise", out["noise"], "expected a noise scale >= 0")
    if not 0 <= out["tau1"] < out["tau2"] <= 1:
        raise InputError("cads.tau1", out["tau1"], f"expected 0 <= tau1 < tau2 <= 1 (tau2 is {out['tau2']})")
    if not 0 <= out["psi"] <= 1:
        raise InputError("cads.psi", out["psi"], "expected a mixing weight from 0 to 1")
    _family("cads", "on", family)
    if not guides:
        raise InputError("cads", "on", "acts on CFG's conditional branch: needs guidance above 1")
    return out


def check_schedule(value: object, family: str, guides: bool) -> str:
    if value is None:
        return "constant"
    if value not in SCHEDULES:
        raise InputError("guidance_schedule", value, f"expected one of {', '.join(SCHEDULES)}")
    if value != "constant":
        _family("guidance_schedule", value, family)
        if not guides:
            raise InputError("guidance_schedule", value, "ramps classifier-free guidance: needs guidance above 1")
    return value


def check_apg(value: object, family: str, guides: bool) -> dict | None:
    if value is None or value is False or value in ("none", "off"):
        return None
    out = _params("apg", value, APG_DEFAULTS, "eta")
    if not out["rescale"] > 0:
        raise InputError("apg.rescale", out["rescale"], "expected a norm cap above 0")
    if not -1 < out["momentum"] < 1:
        raise InputError("apg.momentum", out["momentum"], "expected a momentum between -1 and 1 (0: none)")
    _family("apg", "on", family)
    if not guides:
        raise InputError("apg", "on", "replaces classifier-free guidance: needs guidance above 1")
    return out


def check_guidance_list(value: list, family: str, distilled: bool) -> tuple[float, ...]:
    """The scales a list of guidances offers each sample (at least two, each 0-100, one above 1)."""
    allowed = (
        f"expected a number, or a list of 2 to {MAX_GUIDANCE_CHOICES} numbers from 0 to 100 (one drawn per sample)"
    )
    if not 2 <= len(value) <= MAX_GUIDANCE_CHOICES:
        raise InputError("guidance", value, allowed)
    choices = []
    for v in value:
        try:
            number = math.nan if isinstance(v, bool) else float(v)
        except (TypeError, ValueError):
            number = math.nan
        if not 0 <= number <= 100:
            raise InputError("guidance", value, allowed)
        choices.append(number)
    _family("guidance", value, family)
    if distilled or max(choices) <= 1:
        raise InputError("guidance", value, "a list mixes classifier-free guidance levels: one must be above 1")
    return tuple(choices)


def sample_guidance(choices: tuple[float, ...], seed: int) -> float:
    """The guidance a list gives the sample of `seed`: a function of the seed alone, so every
    batch, split and resume gives it the same."""
    return choices[stable_hash(seed, "guidance") % len(choices)]
