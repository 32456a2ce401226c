"""FP8 convolution in Triton (implicit GEMM), with its PyTorch reference.

`conv2d_fp8(x, weight_q, weight_scale, bias, stride, padding, dilation)` computes a 2-D
convolution (groups 1) as one GEMM without materialising the im2col matrix: M = N*P*Q output
pixels, N = output channels, K = R*S*C, each K step reading one (r, s) tap of the input, its
channels contiguous in NHWC. Operands are FP8 e4m3:
- activations: one dynamic scale per tensor (its absolute maximum / 448), quantised per call;
- weights: one scale per output channel, quantised once (`quantize_weight`), stored [K, R, S, C];
- products accumulate in fp32; the output is acc * x_scale * w_scale[k] + bias, in the input's
  dtype (bf16 on a GPU), written NHWC (a channels_last tensor).

An FP8 value is exactly representable in fp16 (3 mantissa bits, range 448), so the same kernel
with fp16 operands holding the FP8-rounded values computes exactly what the FP8 one does: that is
how the CPU interpreter, which has no FP8 dot, tests it (`operand_dtype`). Hopper's FP8 tensor
cores need compute capability 8.9+; `supports` names what the kernel does not take.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from .triton_env import interpreting

E4M3_MAX = 448.0


def operand_dtype(device: torch.device) -> torch.dtype:
    """FP8 e4m3 where the hardware multiplies it; fp16 holding the same values elsewhere."""
    if device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 9):
        return torch.float8_e4m3fn
    return torch.float16


def _to_e4m3(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return (x.float() / scale).clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn)


def quantize_activation(x: torch.Tensor, operand: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-tensor dynamic scale; the FP8-rounded values in `operand` (FP8, or fp16 holding them)."""
    scale = (x.detach().abs().amax().float() / E4M3_MAX).clamp(min=1e-12)
    return _to_e4m3(x, scale).to(operand), scale.reshape(1)


def quantize_weight(weight: torch.Tensor, operand: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """[K, C, R, S] -> [K, R, S, C] (channels contiguous, as NHWC activations) with one scale per
    output channel."""
    scale = (weight.detach().abs().amax(dim=(1, 2, 3)).float() / E4M3_MAX).clamp(min=1e-12)
    q = _to_e4m3(weight, scale[:, None, None, None]).to(operand)
    return q.permute(0, 2, 3, 1).contiguous(), scale


def _configs():
    if interpreting():
        # the CPU interpreter: few, large programs (its cost is per operation, not per element)
        return [triton.Config({"BLOCK_M": 256, "BLOCK_N": 64, "BLOCK_C": 64}, num_warps=4, num_stages=1)]
    return [
        triton.Config({"BLOCK_M": m, "BLOCK_N": n, "BLOCK_C": c}, num_warps=w, num_stages=st)
        for m, n, c, w, st in [
            (128, 128, 64, 8, 3),
            (128, 64, 64, 4, 4),
            (64, 128, 64, 4, 4),
            (128, 128, 128, 8, 3),
            (64, 64, 64, 4, 3),
        ]
    ]


@triton.autotune(configs=_configs(), key=["M", "K_OUT", "C", "R", "S"])
@triton.jit
def _conv_fwd(
    X,
    W,
    OUT,
    BIAS,
    X_SCALE,
    W_SCALE,
    M,
    H,
    WIDTH,
    C,
    P,
    Q,
    K_OUT,
    R,
    S,
    stride_h,
    stride_w,
    pad_h,
    pad_w,
    dil_h,
    dil_w,
    sxn,
    sxh,
    sxw,
    sxc,
    swk,
    swr,
    sws,
    swc,
    son,
    sop,
    soq,
    sok,
    HAS_BIAS: tl.constexpr,
    DOT_FP32: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # output pixels, (n, p, q) flattened
    offs_k = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # output channels
    offs_c = tl.arange(0, BLOCK_C)
    m_ok = offs_m < M
    k_ok = offs_k < K_OUT
    # one divide and modulo per output pixel of the tile, not per element of the loop
    n = (offs_m // (P * Q)).to(tl.int64)
    pq = offs_m % (P * Q)
    p = pq // Q
    q = pq % Q
    acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    for r in range(0, R):
        h = p * stride_h - pad_h + r * dil_h
        for s in range(0, S):
            w = q * stride_w - pad_w + s * dil_w
            pix_ok = m_ok & (h >= 0) & (h < H) & (w >= 0) & (w < WIDTH)  # zero padding at the borders
            x_row = X + n * sxn + h * sxh + w * sxw
            w_tap = W + r * swr + s * sws
            for c0 in range(0, C, BLOCK_C):
                c = c0 + offs_c
                c_ok = c < C
                a = tl.load(x_row[:, None] + c[None, :] * sxc, mask=pix_ok[:, None] & c_ok[None, :], other=0.0)
                b = tl.load(
                    w_tap + c[:, None] * swc + offs_k[None, :] * swk, mask=c_ok[:, None] & k_ok[None, :], other=0.0
                )
                if DOT_FP32:  # the interpreter: exact fp32 products of the fp16-held FP8 values
                    acc += tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
                else:
                    acc += tl.dot(a, b)
    w_scale = tl.load(W_SCALE + offs_k, mask=k_ok, other=0.0)
    out = acc * tl.load(X_SCALE) * w_scale[None, :]
    if HAS_BIAS:
        out += tl.load(BIAS + offs_k, mask=k_ok, other=0.0).to(tl.float32)[None, :]
    o_ptr = OUT + n[:, None] * son + p[:, None] * sop + q[:, None] * soq + offs_k[None, :] * sok
    tl.store(o_ptr, out.to(OUT.dtype.element_ty), mask=m_ok[:, None] & k_ok[None, :])


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


def supports(conv: torch.nn.Module, x: torch.Tensor) -> str | None:
    """None if the kernel runs this convolution on this input, else why not."""
    if not isinstance(conv, torch.nn.Conv2d) or conv.groups != 1:
        return "not a Conv2d with groups 1"
    if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
        return f"padding {conv.padding!r} ({conv.padding_mode})"
    if x.dim() != 4 or x.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        return f"input {tuple(x.shape)} {x.dtype}"
    if not (x.is_cuda or interpreting()):
        return f"device {x.device} (Triton runs on CUDA)"
    if torch.is_grad_enabled() and (x.requires_grad or conv.weight.requires_grad):
        return "autograd (the kernel is forward only)"
    return None


def conv2d_fp8(
    x: torch.Tensor,
    weight_q: torch.Tensor,
    weight_scale: torch.Tensor,
    bias: torch.Tensor | None = None,
    stride=1,
    padding=0,
    dilation=1,
) -> torch.Tensor:
    """`x` [N, C, H, W] in any layout (NHWC reads best); `weight_q` [K, R, S, C] from
    quantize_weight. Returns [N, K, P, Q] in x's dtype, channels_last."""
    (sh, sw), (ph, pw), (dh, dw) = _pair(stride), _pair(padding), _pair(dilation)
    n, c, h, w = x.shape
    k, r, s, c_w = weight_q.shape
    if c_w != c:
        raise ValueError(f"weight has {c_w} input channels, the input {c}")
    p = (h + 2 * ph - dh * (r - 1) - 1) // sh + 1
    q = (w + 2 * pw - dw * (s - 1) - 1) // sw + 1
    x_q, x_scale = quantize_activation(x, weight_q.dtype)
    out = torch.empty(n, k, p, q, dtype=x.dtype, device=x.device, memory_format=torch.channels_last)
    m = n * p * q
    dot_fp32 = interpreting()  # the interpreter has no FP8 and a loose fp16 dot: exact fp32 products

    def grid(meta):
        return (triton.cdiv(m, meta["BLOCK_M"]), triton.cdiv(k, meta["BLOCK_N"]))

    with torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext():
        _conv_fwd[grid](
            x_q,
            weight_q,
            out,
            bias if bias is not None else x_scale,
            x_scale,
            weight_scale,
            m,
            h,
            w,
            c,
            p,
            q,
            k,
            r,
            s,
            sh,
            sw,
            ph,
            pw,
            dh,
            dw,
            x_q.stride(0),  # n, h, w, c: the kernel's order, whatever x's layout
            x_q.stride(2),
            x_q.stride(3),
            x_q.stride(1),
            *weight_q.stride(),
            out.stride(0),
            out.stride(2),
            out.stride(3),
            out.stride(1),
            HAS_BIAS=bias is not None,
            DOT_FP32=dot_fp32,
        )
    return out


def conv2d_fp8_ref(x, weight, bias=None, stride=1, padding=0, dilation=1) -> torch.Tensor:
    """The same contract in PyTorch: both operands rounded to FP8 with the same scales, then an
    fp32 convolution of the rounded values."""
    a_scale = (x.abs().amax().float() / E4M3_MAX).clamp(min=1e-12)
    w_scale = (weight.abs().amax(dim=(1, 2, 3)).float() / E4M3_MAX).clamp(min=1e-12)
    xf = _to_e4m3(x, a_scale).float() * a_scale
    wf = _to_e4m3(weight, w_scale[:, None, None, None]).float() * w_scale[:, None, None, None]
    out = F.conv2d(xf, wf, None if bias is None else bias.float(), stride, padding, dilation)
    return out.to(x.dtype)


@torch.library.custom_op("t2i_engine::conv2d_fp8", mutates_args=())
def conv2d_fp8_op(
    x: torch.Tensor,
    weight_q: torch.Tensor,
    weight_scale: torch.Tensor,
    bias: torch.Tensor | None,
    stride: list[int],
    padding: list[int],
    dilation: list[int],
) -> torch.Tensor:
    """`conv2d_fp8` as a PyTorch operator: whole inside a torch.compile graph."""
    return conv2d_fp8(x, weight_q, weight_scale, bias, stride, padding, dilation)


@conv2d_fp8_op.register_fake
def _conv2d_fp8_fake(x, weight_q, weight_scale, bias, stride, padding, dilation):
    n, _, h, w = x.shape
    k, r, s, _ = weight_q.shape
    p = (h + 2 * padding[0] - dilation[0] * (r - 1) - 1) // stride[0] + 1
    q = (w + 2 * padding[1] - dilation[1] * (s - 1) - 1) // stride[1] + 1
    return torch.empty((n, k, p, q), dtype=x.dtype, device=x.device, memory_format=torch.channels_last)


class FP8Conv:
    """A Conv2d's forward through the FP8 kernel, its weights quantised once; anything the
    kernel does not take (autograd, another device) runs the original forward."""

    def __init__(self, conv: torch.nn.Conv2d, operand: torch.dtype):
        self.conv, self.original = conv, conv.forward
        self.weight_q, self.weight_scale = quantize_weight(conv.weight, operand)
        self.args = [list(_pair(conv.stride)), list(_pair(conv.padding)), list(_pair(conv.dilation))]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if supports(self.conv, x):
            return self.original(x)
        return conv2d_fp8_op(x, self.weight_q, self.weight_scale, self.conv.bias, *self.args)


def fp8_convs(module: torch.nn.Module) -> list[torch.nn.Conv2d]:
    """The convolutions FP8 takes: groups 1, zero padding, inside the network (not its first or
    last layer, whose few channels hold the latents themselves)."""
    convs = [m for m in module.modules() if isinstance(m, torch.nn.Conv2d) and supports_module(m)]
    return [
        m for m in convs if m is not getattr(module, "conv_in", None) and m is not getattr(module, "conv_out", None)
    ]


def supports_module(conv: torch.nn.Conv2d) -> bool:
    return conv.groups == 1 and conv.padding_mode == "zeros" and not isinstance(conv.padding, str)


def install_fp8_conv(module: torch.nn.Module, device: torch.device) -> int:
    """Route a UNet's convolutions through the FP8 kernel; returns how many."""
    operand = operand_dtype(device)
    convs = fp8_convs(module)
    for conv in convs:
        conv.forward = FP8Conv(conv, operand)
    return len(convs)


def remove_fp8_conv(module: torch.nn.Module) -> None:
    for m in module.modules():
        if isinstance(m.__dict__.get("forward"), FP8Conv):
            del m.forward
