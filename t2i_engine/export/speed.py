"""What a run's speed switches are when it leaves some unset (issue 37: fast by default on a GPU).

- `--speed auto` (what `generate` does unless told otherwise): on a CUDA device, the switches
  measured to win for the model's family while keeping its pixels (faster than eager bf16 and
  diffusers in the same run, PSNR at least 40 dB against eager bf16) are on; everything not
  measured, or measured and lost, stays off. A CPU, and a family with no measurement, get the
  plain path.
- `--speed plain`: every unset switch off, the reference path.
- Resuming a dataset without `--speed`: the unset switches are the ones its manifest records, so
  a dataset begun under older defaults is finished as it was begun.

A switch given on the command line always wins. The defaults apply only to the path that was
measured (backend eager, PyTorch's SDPA attention, cuDNN convolutions, bf16, no block cache);
with any of those changed the unset switches stay off, so a default can never be why a run is
refused. The plain PyTorch path beside each switch, and the tests that they agree, are in
tuning.py.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from ..errors import InputError
from .tuning import Tuning

SPEEDS = ("auto", "plain")
SWITCHES = ("precision", "compile", "fuse_qkv", "channels_last", "regional_compile")  # Tuning's fields


@dataclass(frozen=True)
class Measured:
    """A family's default switches on CUDA and the measurement they rest on."""

    switches: dict
    measured: str


# Only what a GPU run measured to win and keep pixels (bench/RESULTS.md). SD1.5 and SDXL's compile
# rungs, every FP8 path and our kernels have not run to the end on a GPU: they stay off.
CUDA_DEFAULTS: dict[str, Measured] = {
    "flux": Measured(
        {"compile": "default", "fuse_qkv": True, "regional_compile": True},
        "FLUX-schnell 1024 px, 4 steps, batch 4 on an NVIDIA H200, 2026-12-04 "
        "(bench/results/h200-2026-12-04/call2): 1.741 images/s against eager bf16's 1.311 (1.33x) and "
        "diffusers bf16's best 1.239 (1.41x), PSNR 47.8 dB against eager bf16",
    ),
}


@dataclass(frozen=True)
class Decided:
    """The switches a run uses and how its unset ones were decided: `source` is "given" (none
    unset), "plain", "defaults" (the family's measured defaults, in `defaults`) or "dataset" (a
    resumed dataset's manifest)."""

    tuning: Tuning
    source: str
    defaults: dict
    measured: tuple[str, ...] = ()

    def record(self) -> dict:
        return {"source": self.source, "defaults": self.defaults, "measured": list(self.measured)}


def check_speed(speed: str | None) -> None:
    if speed is not None and speed not in SPEEDS:
        raise InputError("speed", speed, f"expected one of {', '.join(SPEEDS)}")


def family_defaults(families: list[str], device: torch.device) -> tuple[dict, tuple[str, ...]]:
    """The switches every one of `families` defaults to on `device` (a mixture: those its
    families agree on), and the measurements behind them."""
    if device.type != "cuda" or not families:
        return {}, ()
    found = [CUDA_DEFAULTS.get(f) for f in families]
    if any(m is None for m in found):
        return {}, ()
    common = {k: v for k, v in found[0].switches.items() if all(m.switches.get(k) == v for m in found)}
    return common, tuple(dict.fromkeys(m.measured for m in found))


def decide(
    tuning: Tuning,
    unset: frozenset[str],
    speed: str | None,
    *,
    families: list[str],
    device: torch.device,
    stored: dict | None,
    measured_path: bool,
) -> Decided:
    """`tuning` with its `unset` switches decided. `speed`: "auto", "plain", or None (auto for a
    new dataset; a resumed one's `stored` switches, its manifest's). `measured_path`: the run's
    other options are those the defaults were measured with."""
    check_speed(speed)
    unknown = sorted(set(unset) - set(SWITCHES))
    if unknown:
        raise ValueError(f"unset names no switch: {unknown}; the switches are {SWITCHES}")
    if not unset:
        return Decided(tuning, "given", {})
    plain = Tuning()
    base = replace(tuning, **{k: getattr(plain, k) for k in unset})
    if speed is None and stored is not None:
        return Decided(replace(base, **{k: stored[k] for k in unset}), "dataset", {})
    if speed == "plain" or not measured_path:
        return Decided(base, "plain", {})
    switches, measured = family_defaults(families, device)
    chosen = {k: v for k, v in switches.items() if k in unset}
    if base.precision not in ("auto", "bf16"):
        chosen = {}  # measured in bf16
    if (chosen.get("compile") or base.compile) == "none":
        chosen.pop("regional_compile", None)  # it says what to compile: nothing to say without compile
    if not chosen:
        return Decided(base, "plain", {})
    return Decided(replace(base, **chosen), "defaults", chosen, measured)
