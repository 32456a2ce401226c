"""GroupNorm, optionally fused with the SiLU that follows it in every UNet and VAE ResNet block,
in Triton, with its PyTorch reference.

`group_norm(x, num_groups, weight, bias, eps, silu=False)`: x is [N, C, H, W] (or [N, C, L]) in any memory
layout (NCHW or channels_last: addresses come from the strides), fp16, bf16 or fp32; statistics
in fp32. One program per (sample, group) walks the group's C/G channels x H*W positions three
times: the mean, the variance about it (two passes, no cancellation from sum of squares), then
normalise, scale and shift per channel, apply SiLU if asked, store in x's dtype and layout.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from .triton_env import interpreting


@triton.jit
def _at(base, cs, s, sc, sh, sw, WIDTH, FLAT: tl.constexpr):
    """Pointers to channels `cs` x pixels `s` (flattened h * WIDTH + w) of one image."""
    if FLAT:  # rows follow each other in memory: no integer divide and modulo per pixel
        return base + cs[:, None] * sc + s[None, :] * sw
    return base + cs[:, None] * sc + (s // WIDTH)[None, :] * sh + (s % WIDTH)[None, :] * sw


@triton.jit
def _group_norm_fwd(
    X,
    Y,
    W,
    B,
    sn,
    sc,
    sh,
    sw,
    yn,
    yc,
    yh,
    yw,
    C,
    HW,
    WIDTH,
    CPG,
    G,
    eps,
    HAS_AFFINE: tl.constexpr,
    SILU: tl.constexpr,
    FLAT: tl.constexpr,  # rows follow each other in memory (NCHW and NHWC alike), in X and Y
    BLOCK_C: tl.constexpr,
    BLOCK_S: tl.constexpr,
):
    pid = tl.program_id(0)
    n = (pid // G).to(tl.int64)  # int64 offsets: a VAE's last norm at batch 16 is 2^31 elements
    g = pid % G
    cs = g * CPG + tl.arange(0, BLOCK_C)
    c_ok = tl.arange(0, BLOCK_C) < CPG
    count = CPG * HW

    total = tl.zeros([BLOCK_C, BLOCK_S], tl.float32)
    for start in range(0, HW, BLOCK_S):
        s = start + tl.arange(0, BLOCK_S)
        ok = c_ok[:, None] & (s < HW)[None, :]
        x = tl.load(_at(X + n * sn, cs, s, sc, sh, sw, WIDTH, FLAT), mask=ok, other=0.0)
        total += x.to(tl.float32)
    mean = tl.sum(tl.sum(total, 1), 0) / count

    total = tl.zeros([BLOCK_C, BLOCK_S], tl.float32)
    for start in range(0, HW, BLOCK_S):
        s = start + tl.arange(0, BLOCK_S)
        ok = c_ok[:, None] & (s < HW)[None, :]
        x = tl.load(_at(X + n * sn, cs, s, sc, sh, sw, WIDTH, FLAT), mask=ok, other=0.0)
        d = tl.where(ok, x.to(tl.float32) - mean, 0.0)
        total += d * d
    rstd = 1.0 / tl.sqrt(tl.sum(tl.sum(total, 1), 0) / count + eps)

    if HAS_AFFINE:
        w = tl.load(W + cs, mask=c_ok, other=1.0).to(tl.float32)
        b = tl.load(B + cs, mask=c_ok, other=0.0).to(tl.float32)
    for start in range(0, HW, BLOCK_S):
        s = start + tl.arange(0, BLOCK_S)
        ok = c_ok[:, None] & (s < HW)[None, :]
        x = tl.load(_at(X + n * sn, cs, s, sc, sh, sw, WIDTH, FLAT), mask=ok, other=0.0).to(tl.float32)
        y = (x - mean) * rstd
        if HAS_AFFINE:
            y = y * w[:, None] + b[:, None]
        if SILU:
            y = y / (1.0 + tl.exp(-y))
        tl.store(_at(Y + n * yn, cs, s, yc, yh, yw, WIDTH, FLAT), y.to(Y.dtype.element_ty), mask=ok)


def supports(
    x: torch.Tensor, num_groups: int, weight: torch.Tensor | None = None, bias: torch.Tensor | None = None
) -> str | None:
    """None if the kernel runs this call, else why not."""
    if x.dim() not in (3, 4):
        return f"{x.dim()}-d input (the kernel takes [N, C, H, W] or [N, C, L])"
    if x.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        return f"dtype {x.dtype}"
    if not (x.is_cuda or interpreting()):
        return f"device {x.device} (Triton runs on CUDA)"
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, weight, bias)):
        return "autograd (the kernel is forward only)"  # a trainable norm weight too: its gradient would vanish
    if x.shape[1] % num_groups:
        return f"{x.shape[1]} channels in {num_groups} groups"
    return None


def group_norm(
    x: torch.Tensor,
    num_groups: int,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    eps: float = 1e-5,
    *,
    silu: bool = False,
) -> torch.Tensor:
    why = supports(x, num_groups, weight, bias)
    if why:
        raise ValueError(f"group_norm does not run this call: {why}; use torch.nn.functional.group_norm")
    if x.dim() == 3:  # [N, C, L] (the group norm in front of a VAE's attention): L x 1 pixels, a view
        return group_norm(x.unsqueeze(-1), num_groups, weight, bias, eps, silu=silu).squeeze(-1)
    n, c, h, w = x.shape
    y = torch.empty_like(x)  # keeps x's memory layout (channels_last stays channels_last)
    cpg = c // num_groups
    block_c = triton.next_power_of_2(cpg)
    block_s = max(16, min(triton.next_power_of_2(h * w), 4096 // block_c))
    affine = weight is not None
    with (
        torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext()
    ):  # Triton launches on the current device
        _group_norm_fwd[(n * num_groups,)](
            x,
            y,
            weight if affine else x,
            bias if affine else x,
            *x.stride(),
            *y.stride(),
            c,
            h * w,
            w,
            cpg,
            num_groups,
            eps,
            HAS_AFFINE=affine,
            SILU=silu,
            FLAT=x.stride(2) == w * x.stride(3) and y.stride(2) == w * y.stride(3),
            BLOCK_C=block_c,
            BLOCK_S=block_s,
            num_warps=4,
        )
    return y


@torch.library.custom_op("t2i_engine::group_norm", mutates_args=())
def group_norm_op(
    x: torch.Tensor,
    num_groups: int,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    eps: float,
    silu: bool,
) -> torch.Tensor:
    """`group_norm` (+ SiLU) as a PyTorch operator (`torch.ops.t2i_engine.group_norm`), kept whole
    in a torch.compile graph; its fake implementation gives the output's shape and layout."""
    return group_norm(x, num_groups, weight, bias, eps, silu=silu)


@group_norm_op.register_fake
def _group_norm_fake(x, num_groups, weight, bias, eps, silu):
    return torch.empty_like(x)  # as the kernel: x's memory layout (channels_last stays channels_last)


def group_norm_ref(
    x: torch.Tensor,
    num_groups: int,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    eps: float = 1e-5,
    *,
    silu: bool = False,
) -> torch.Tensor:
    """The same contract in plain PyTorch, in fp32."""
    y = F.group_norm(
        x.float(), num_groups, None if weight is None else weight.float(), None if bias is None else bias.float(), eps
    )
    return (F.silu(y) if silu else y).to(x.dtype)
