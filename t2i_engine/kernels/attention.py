"""Fused attention forward in Triton (FlashAttention-2 style), with its PyTorch reference.

`flash_attention(q, k, v, *, scale=None, mask=None)`:
- q is [B, H, Lq, D]; k and v are [B, Hkv, Lk, D] with H a multiple of Hkv (grouped key/value
  heads, as Lumina-2; Hkv == H is ordinary attention). Any strides: the [B, S, H, D] tensors the
  diffusers processors hold are passed as `x.transpose(1, 2)`, a view, with no copy.
- mask (optional): boolean (True = attend, as in `F.scaled_dot_product_attention`) or additive
  float, broadcastable to [B, H, Lq, Lk]; a key-padding mask is [B, 1, 1, Lk]. Broadcast
  dimensions are read with stride 0, never materialised.
- fp16, bf16 or fp32 inputs; scores, softmax statistics and the output accumulate in fp32.
- Any Lq and Lk (the tails of the last blocks are masked); head dims up to 256, each split into
  at most two power-of-two parts (a tl.arange must be one), so SD1.5's 40, 80 and 160 run as
  32+16, 64+16 and 128+32 instead of padding to 64, 128 and 256 (FlashAttention-2 pads them to
  64, 96, 160); `head_dim_parts` gives the split.
- A query row whose keys are all masked out returns zeros (PyTorch's SDPA returns NaN there).

Online softmax: for each block of queries, key/value blocks are visited once, keeping the
running row maximum m, the running sum l of exp(s - m) and the unnormalised output, rescaled
by exp(m_old - m_new) whenever the maximum grows; exp2 with log2(e) folded into the scale.
"""

from __future__ import annotations

import contextlib
import math

import torch
import triton
import triton.language as tl

from .triton_env import interpreting

LOG2E = 1.4426950408889634
MAX_HEAD_DIM = 256


def _configs():
    if interpreting():  # the CPU interpreter: one small config (autotuning would run them all)
        return [triton.Config({"BLOCK_M": 32, "BLOCK_N": 32}, num_warps=4, num_stages=1)]
    return [
        triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=s)
        for m, n, w, s in [
            (128, 64, 8, 3),
            (128, 128, 8, 2),
            (128, 32, 4, 3),
            (64, 64, 4, 3),
            (64, 32, 4, 2),
            (64, 128, 4, 2),
        ]
    ]


def _prune(configs, named_args, **kwargs):
    # a 256-wide head with 128x128 tiles does not fit Hopper's shared memory
    if named_args.get("BLOCK_D", kwargs.get("BLOCK_D", 64)) >= 256:
        return [c for c in configs if c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"] <= 64 * 64] or configs[-1:]
    return configs


@triton.autotune(
    configs=_configs(),
    key=["LQ", "LK", "BLOCK_D", "BLOCK_D2", "HAS_MASK"],
    prune_configs_by={"early_config_prune": _prune},
)
@triton.jit
def _attention_fwd(
    Q,
    K,
    V,
    OUT,
    MASK,
    qk_scale,
    sqb,
    sqh,
    sqm,
    sqd,
    skb,
    skh,
    skn,
    skd,
    svb,
    svh,
    svn,
    svd,
    sob,
    soh,
    som,
    sod,
    smb,
    smh,
    smm,
    smn,
    H,
    GROUP,
    LQ,
    LK,
    D,
    HAS_MASK: tl.constexpr,
    DOT_FP32: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_D2: tl.constexpr,  # the head dim's second part (0: none); it starts at BLOCK_D
):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)  # int64 offsets: B*H*L*D passes 2^31 at large batches (FLUX at 1024 from ~150)
    h = (pid_bh % H).to(tl.int64)
    hk = h // GROUP  # the key/value head this query head reads
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    row_ok = offs_m < LQ
    d_ok = offs_d < D

    q = tl.load(
        Q + b * sqb + h * sqh + offs_m[:, None] * sqm + offs_d[None, :] * sqd,
        mask=row_ok[:, None] & d_ok[None, :],
        other=0.0,
    )
    if DOT_FP32:
        q = q.to(tl.float32)
    if BLOCK_D2 > 0:
        offs_d2 = BLOCK_D + tl.arange(0, BLOCK_D2)
        d2_ok = offs_d2 < D
        q2 = tl.load(
            Q + b * sqb + h * sqh + offs_m[:, None] * sqm + offs_d2[None, :] * sqd,
            mask=row_ok[:, None] & d2_ok[None, :],
            other=0.0,
        )
        if DOT_FP32:
            q2 = q2.to(tl.float32)
        acc2 = tl.zeros([BLOCK_M, BLOCK_D2], tl.float32)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    k_base = K + b * skb + hk * skh
    v_base = V + b * svb + hk * svh
    for start_n in range(0, LK, BLOCK_N):
        cols = start_n + offs_n
        col_ok = cols < LK
        k = tl.load(
            k_base + cols[None, :] * skn + offs_d[:, None] * skd, mask=d_ok[:, None] & col_ok[None, :], other=0.0
        )
        if DOT_FP32:
            k = k.to(tl.float32)
        if DOT_FP32:  # exact fp32 products: tl.dot would otherwise use TF32 on a GPU (~1e-3 error)
            s = tl.dot(q, k, input_precision="ieee")
        else:
            s = tl.dot(q, k)  # [BLOCK_M, BLOCK_N]
        if BLOCK_D2 > 0:
            k2 = tl.load(
                k_base + cols[None, :] * skn + offs_d2[:, None] * skd,
                mask=d2_ok[:, None] & col_ok[None, :],
                other=0.0,
            )
            if DOT_FP32:
                s += tl.dot(q2, k2.to(tl.float32), input_precision="ieee")
            else:
                s += tl.dot(q2, k2)
        s = s * qk_scale  # log2 units
        if HAS_MASK:
            bias = tl.load(
                MASK + b * smb + h * smh + offs_m[:, None] * smm + cols[None, :] * smn,
                mask=row_ok[:, None] & col_ok[None, :],
                other=0.0,
            )
            s += bias.to(tl.float32) * 1.4426950408889634
        s = tl.where(col_ok[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # a row masked so far: no NaN from -inf - -inf
        p = tl.exp2(s - m_safe[:, None])
        alpha = tl.exp2(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(
            v_base + cols[:, None] * svn + offs_d[None, :] * svd, mask=col_ok[:, None] & d_ok[None, :], other=0.0
        )
        if DOT_FP32:
            acc = acc * alpha[:, None] + tl.dot(p, v.to(tl.float32), input_precision="ieee")
        else:
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
        if BLOCK_D2 > 0:
            v2 = tl.load(
                v_base + cols[:, None] * svn + offs_d2[None, :] * svd,
                mask=col_ok[:, None] & d2_ok[None, :],
                other=0.0,
            )
            if DOT_FP32:
                acc2 = acc2 * alpha[:, None] + tl.dot(p, v2.to(tl.float32), input_precision="ieee")
            else:
                acc2 = acc2 * alpha[:, None] + tl.dot(p.to(v2.dtype), v2)
        m_i = m_new
    denom = tl.where(l_i == 0.0, 1.0, l_i)[:, None]  # all keys masked: zeros
    tl.store(
        OUT + b * sob + h * soh + offs_m[:, None] * som + offs_d[None, :] * sod,
        (acc / denom).to(OUT.dtype.element_ty),
        mask=row_ok[:, None] & d_ok[None, :],
    )
    if BLOCK_D2 > 0:
        tl.store(
            OUT + b * sob + h * soh + offs_m[:, None] * som + offs_d2[None, :] * sod,
            (acc2 / denom).to(OUT.dtype.element_ty),
            mask=row_ok[:, None] & d2_ok[None, :],
        )


def head_dim_parts(d: int) -> tuple[int, int]:
    """A head dim as two power-of-two blocks of at least 16 (tl.dot's least): the largest that
    fits, then what is left rounded up; (d padded, 0) where one block wastes no more."""
    single = max(16, triton.next_power_of_2(d))
    first = max(16, 1 << (d.bit_length() - 1))
    if first >= d:
        return single, 0
    second = max(16, triton.next_power_of_2(d - first))
    return (first, second) if first + second < single else (single, 0)


def _check(q, k, v, mask):
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(f"q, k, v must be [B, H, S, D]; got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    (b, h, _, d), (bk, hk, _, dk) = q.shape, k.shape
    if v.shape != k.shape or bk != b or dk != d or h % hk:
        raise ValueError(
            f"k and v must be [B, Hkv, Lk, D] with H % Hkv == 0; got q {tuple(q.shape)}, k {tuple(k.shape)}, v "
            f"{tuple(v.shape)}"
        )
    if not q.dtype == k.dtype == v.dtype:
        raise ValueError(f"q, k, v must share a dtype; got {q.dtype}, {k.dtype}, {v.dtype}")


def supports(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None) -> str | None:
    """None if the kernel runs this call, else why not (the caller falls back to SDPA)."""
    try:
        _check(q, k, v, mask)
    except ValueError as e:
        return str(e).split(";")[0]  # the rule broken, without this call's shapes: one reason per kind
    if q.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        return f"dtype {q.dtype}"
    if q.shape[-1] > MAX_HEAD_DIM:
        return f"head dim {q.shape[-1]} > {MAX_HEAD_DIM}"
    if not (q.is_cuda or interpreting()):
        return f"device {q.device} (Triton runs on CUDA)"
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (q, k, v, mask)):
        return "autograd (the kernel is forward only)"
    if mask is not None and (
        mask.dim() > 4
        or any(m not in (1, s) for m, s in zip(mask.shape[::-1], (k.shape[2], q.shape[2], q.shape[1], q.shape[0])))
    ):
        return f"mask of shape {tuple(mask.shape)} (not broadcastable to [B, H, Lq, Lk])"
    return None


def _mask_operand(mask: torch.Tensor, b: int, h: int, lq: int, lk: int) -> torch.Tensor:
    if mask.dtype == torch.bool:
        mask = torch.zeros(mask.shape, dtype=torch.float32, device=mask.device).masked_fill_(~mask, float("-inf"))
    elif mask.dtype != torch.float32:  # scaled in fp32 in the kernel; a half mask loses the small terms
        mask = mask.float()
    while mask.dim() < 4:
        mask = mask.unsqueeze(0)
    return mask.expand(b, h, lq, lk)  # stride 0 where broadcast: nothing copied


def flash_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, scale: float | None = None, mask: torch.Tensor | None = None
) -> torch.Tensor:
    _check(q, k, v, mask)
    why = supports(q, k, v, mask)
    if why:
        raise ValueError(f"flash_attention does not run this call: {why}; use scaled_dot_product_attention")
    b, h, lq, d = q.shape
    lk = k.shape[2]
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    out = torch.empty(b, h, lq, d, dtype=q.dtype, device=q.device)
    m = _mask_operand(mask, b, h, lq, lk) if mask is not None else None
    mask_strides = m.stride() if m is not None else (0, 0, 0, 0)
    block_d, block_d2 = head_dim_parts(d)
    # The CPU interpreter computes a bf16 tl.dot wrongly; there the dots run in fp32.
    dot_fp32 = q.dtype == torch.float32 or (interpreting() and q.dtype == torch.bfloat16)

    def grid(meta):
        return (triton.cdiv(lq, meta["BLOCK_M"]), b * h)

    with (
        torch.cuda.device(q.device) if q.is_cuda else contextlib.nullcontext()
    ):  # Triton launches on the current device
        _attention_fwd[grid](
            q,
            k,
            v,
            out,
            m if m is not None else q,
            scale * LOG2E,
            *q.stride(),
            *k.stride(),
            *v.stride(),
            *out.stride(),
            *mask_strides,
            h,
            h // k.shape[1],
            lq,
            lk,
            d,
            HAS_MASK=m is not None,
            DOT_FP32=dot_fp32,
            BLOCK_D=block_d,
            BLOCK_D2=block_d2,
        )
    return out


@torch.library.custom_op("t2i_engine::flash_attention", mutates_args=())
def flash_attention_op(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """`flash_attention` as a PyTorch operator (`torch.ops.t2i_engine.flash_attention`): opaque to
    torch.compile, which keeps it in the graph (no graph break) and learns its output's shape and
    layout from the fake implementation below. `scale` is explicit: 1/sqrt(D) is the caller's."""
    return flash_attention(q, k, v, scale=scale, mask=mask)


@flash_attention_op.register_fake
def _flash_attention_fake(q, k, v, scale, mask=None):
    _check(q, k, v, mask)
    return q.new_empty(q.shape)  # like the kernel's output: [B, H, Lq, D], contiguous, q's dtype


def flash_attention_ref(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, scale: float | None = None, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """The same contract in plain PyTorch, computed in fp32 (or the inputs' wider dtype)."""
    _check(q, k, v, mask)
    work = torch.promote_types(q.dtype, torch.float32)
    group = q.shape[1] // k.shape[1]
    qf, kf, vf = q.to(work), k.to(work).repeat_interleave(group, 1), v.to(work).repeat_interleave(group, 1)
    s = (qf @ kf.transpose(-1, -2)) * (1.0 / math.sqrt(q.shape[-1]) if scale is None else scale)
    if mask is not None:
        s = s.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else s + mask.to(work)
    m = s.amax(-1, keepdim=True)
    p = torch.exp(s - torch.where(torch.isinf(m) & (m < 0), torch.zeros_like(m), m))
    denom = p.sum(-1, keepdim=True)
    out = (p @ vf) / torch.where(denom == 0, torch.ones_like(denom), denom)
    return out.to(q.dtype)
