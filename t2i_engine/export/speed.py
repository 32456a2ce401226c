"""What a run's speed switches are when it leaves some unset (issue 37: fast by default on a GPU).

- `--speed auto` (what `generate` does unless told otherwise): on a CUDA device of the
  architecture they were measured on, the switches measured to win for the model's family while
  keeping its pixels (faster than eager bf16 and diffusers in the same run, PSNR at least 40 dB
  against eager bf16) are on, as the one set they were measured as; everything not measured, or
  measured and lost, stays off. A CPU, another GPU architecture, and a family with no
  measurement get the plain path.
- `--speed plain`: every unset switch off, the reference path.
- Resuming a dataset without `--speed`: the unset switches are the ones its manifest records, so
  a dataset begun under older defaults is finished as it was begun.

A switch given on the command line always wins; one that differs from the measured set leaves the
others off (a set was measured together, not each part alone). The defaults apply only to the
path that was measured (backend eager, PyTorch's SDPA attention, cuDNN convolutions, bf16, no
block cache) and where torch.compile can run (Triton and a C compiler found); elsewhere the unset
switches stay off, so a default is never why a run is refused. The plain PyTorch path beside each
switch, and the tests that they agree, are in tuning.py.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from dataclasses import dataclass, replace

from ..errors import InputError
from .tuning import Tuning

SPEEDS = ("auto", "plain")
SWITCHES = ("precision", "compile", "fuse_qkv", "channels_last", "regional_compile")  # Tuning's fields


@dataclass(frozen=True)
class Measured:
    """A family's default switches on CUDA, the GPU architecture they were measured on (compute
    capability major: 9 is Hopper) and the measurement they rest on."""

    switches: dict
    capability_major: int
    measured: str


# Only what a GPU run measured to win and keep pixels (bench/RESULTS.md). SD1.5 and SDXL's compile
# rungs, every FP8 path and our kernels have not run to the end on a GPU: they stay off.
CUDA_DEFAULTS: dict[str, Measured] = {
    "flux": Measured(
        {"compile": "default", "fuse_qkv": True, "regional_compile": True},
        9,
        "FLUX-schnell 1024 px, 4 steps, batch 4, random weights, on an NVIDIA H200, 2026-12-04 "
        "(bench/results/h200-2026-12-04/call2): 1.741 images/s against eager bf16's 1.311 (1.33x) and "
        "diffusers bf16's best 1.239 (1.41x), PSNR 47.8 dB against eager bf16",
    ),
}


@dataclass(frozen=True)
class Decided:
    """The switches a run uses and how its unset ones were decided: `source` is "given" (none
    unset), "plain", "defaults" (the family's measured defaults, in `defaults`) or "dataset" (a
    resumed dataset's manifest); `why` says why defaults did not apply where they might have."""

    tuning: Tuning
    source: str
    defaults: dict
    measured: tuple[str, ...] = ()
    why: str = ""

    def record(self) -> dict:
        out = {"source": self.source, "defaults": self.defaults, "measured": list(self.measured)}
        return {**out, "why_plain": self.why} if self.why else out


def check_speed(speed: str | None) -> None:
    if speed is not None and speed not in SPEEDS:
        raise InputError("speed", speed, f"expected one of {', '.join(SPEEDS)}")


def compiler_found() -> bool:
    """What torch.compile needs on a GPU besides torch: Triton, and a C compiler for the launchers
    Triton builds (it looks for $CC, clang, gcc, cc)."""
    cc = [os.environ.get("CC"), "clang", "gcc", "cc"]
    return importlib.util.find_spec("triton") is not None and any(c and shutil.which(c) for c in cc)


def as_flags(switches: dict) -> list[str]:
    """`generate`'s flags for `switches` (a command that pins them)."""
    out = []
    for name, value in switches.items():
        flag = "--" + name.replace("_", "-")
        out += ([flag] if value else [f"--no-{name.replace('_', '-')}"]) if isinstance(value, bool) else [flag, value]
    return out


def decide(
    tuning: Tuning,
    unset: frozenset[str],
    speed: str | None,
    *,
    families: list[str],
    capability: tuple[int, int] | None,
    stored: dict | None,
    measured_path: bool,
    compiler: bool = True,
) -> Decided:
    """`tuning` with its `unset` switches decided. `speed`: "auto", "plain", or None (auto for a
    new dataset; a resumed one's `stored` switches, its manifest's). `capability`: the CUDA
    device's compute capability, None off CUDA (or where this process sees no GPU: a Ray driver).
    `measured_path`: the run's other options are those the defaults were measured with.
    `compiler`: compiler_found(). A family's defaults are one bundle, measured together: they
    apply whole, and only where every switch given agrees with them."""
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
    if speed == "plain" or capability is None:
        return Decided(base, "plain", {})
    found = [CUDA_DEFAULTS.get(f) for f in families]
    if not found or any(m is None or m is not found[0] for m in found):  # nothing measured; a mixture of families
        return Decided(base, "plain", {})
    bundle = found[0]
    if capability[0] != bundle.capability_major:
        why = (
            f"measured on compute capability {bundle.capability_major}.x, this GPU is {capability[0]}.{capability[1]}"
        )
        return Decided(base, "plain", {}, why=why)
    if not measured_path:
        why = "measured with --backend eager, --attention sdpa, --conv torch and no feature cache"
        return Decided(base, "plain", {}, why=why)
    whole = replace(Tuning(precision="bf16"), **bundle.switches)
    given = [k for k in SWITCHES if k not in unset]
    if any(
        getattr(tuning, k) != getattr(whole, k) and not (k == "precision" and tuning.precision == "auto")
        for k in given
    ):
        return Decided(
            base,
            "plain",
            {},
            why="the switches given differ from the measured set: " + " ".join(as_flags(bundle.switches)),
        )
    if bundle.switches.get("compile", "none") != "none" and not compiler:
        return Decided(
            base, "plain", {}, why="torch.compile needs Triton and a C compiler (clang, gcc or cc): none found"
        )
    chosen = {k: v for k, v in bundle.switches.items() if k in unset}
    return Decided(replace(base, **chosen), "defaults", chosen, (bundle.measured,))
