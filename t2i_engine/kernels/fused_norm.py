"""Fuse the GroupNorm + SiLU pairs of UNet and VAE ResNet blocks into one Triton kernel pass.

diffusers writes each pair as two module calls (`h = self.norm1(h); h = self.nonlinearity(h)`),
so no function-level hook sees both. Instead the pair's two modules get instance-level forwards:
the norm runs `group_norm(..., silu=True)` and hands its output to the activation, which returns
that tensor unchanged instead of applying SiLU a second time. Only pairs where the norm's output
goes straight into the activation are fused, found by class: ResnetBlock2D's norm1 (and norm2
unless a scale/shift sits between them), and the closing conv_norm_out / conv_act of
UNet2DConditionModel and the VAE's Encoder and Decoder. Anything that breaks the hand-off (a
future diffusers that puts an op between the two) raises instead of silently applying SiLU at
the wrong point. Calls the kernel cannot take, and norms with forward hooks, run the original
modules. One pipeline per thread: the hand-off is per module, not per thread.
"""

from __future__ import annotations

import torch
from torch import nn


class _SiLUAfterFusedNorm:
    """The activation's forward while fused: passes the norm's already-activated output through.
    It calls the class's forward, not a saved bound method, so a pickled model loads sane."""

    def __init__(self, act: nn.Module):
        self.act = act
        self.pending: torch.Tensor | None = None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        pending, self.pending = self.pending, None
        if pending is None:  # not after a fused norm (a ResNet block's time embedding, a fallback)
            return type(self.act).forward(self.act, x)
        if x is not pending:
            raise RuntimeError(
                "fused GroupNorm + SiLU: the norm's output did not go straight to its SiLU in this "
                "diffusers version; install the kernels with norm='torch'"
            )
        return x


class _FusedGroupNorm:
    """The norm's forward while fused: GroupNorm + SiLU in one kernel launch."""

    def __init__(self, norm: nn.GroupNorm, act: _SiLUAfterFusedNorm, mode):
        self.norm, self.act, self.mode = norm, act, mode

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        from .norm import group_norm, supports  # heavy: triton (loaded on first use, as everywhere in kernels/)

        norm = self.norm
        # Hooks on the norm or its SiLU would see (or edit) the output at the wrong point: unfused.
        hooked = any(m._forward_hooks or m._forward_pre_hooks for m in (norm, self.act.act))
        if hooked or supports(x, norm.num_groups, norm.weight, norm.bias):
            return type(norm).forward(norm, x)  # the routing mode, if norm="triton", counts a fallback
        y = group_norm(x, norm.num_groups, norm.weight, norm.bias, norm.eps, silu=True)
        self.mode.norm_calls += 1
        self.mode.fused_calls += 1
        self.act.pending = y
        return y


def _pairs(module: nn.Module):
    """(norm, activation) pairs whose norm output feeds the activation directly."""
    from diffusers.models.autoencoders.vae import Decoder, Encoder
    from diffusers.models.resnet import ResnetBlock2D
    from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel

    def fusable(norm, act):
        act_forward = act.__dict__.get("forward")  # ours once the block's other norm is fused
        return (
            type(norm) is nn.GroupNorm
            and norm.affine
            and type(act) is nn.SiLU
            and "forward" not in norm.__dict__  # someone else's forward (accelerate's offload hooks): left alone
            and (act_forward is None or isinstance(act_forward, _SiLUAfterFusedNorm))
        )

    for m in module.modules():
        if isinstance(m, ResnetBlock2D):
            if fusable(m.norm1, m.nonlinearity):
                yield m.norm1, m.nonlinearity
            if m.time_embedding_norm == "default" and fusable(m.norm2, m.nonlinearity):
                yield m.norm2, m.nonlinearity  # "scale_shift" modulates between norm2 and the SiLU
        elif isinstance(m, (UNet2DConditionModel, Encoder, Decoder)) and fusable(m.conv_norm_out, m.conv_act):
            yield m.conv_norm_out, m.conv_act


def fuse(module: nn.Module, mode) -> int:
    """Fuse every known GroupNorm + SiLU pair in `module`; returns how many."""
    acts: dict[int, _SiLUAfterFusedNorm] = {}
    count = 0
    for norm, act in _pairs(module):
        if id(act) not in acts:  # ResnetBlock2D's one nonlinearity follows both of its norms
            acts[id(act)] = act.forward = _SiLUAfterFusedNorm(act)
        norm.forward = _FusedGroupNorm(norm, acts[id(act)], mode)
        count += 1
    return count


def unfuse(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m.__dict__.get("forward"), (_FusedGroupNorm, _SiLUAfterFusedNorm)):
            del m.forward  # the class's forward again
