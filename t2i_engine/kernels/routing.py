"""Route a model's attention through the Triton kernel: `install(pipeline_or_model, attention="triton")`.

Every diffusers attention processor (UNet or DiT, SD1.x to FLUX) ends in one call,
`F.scaled_dot_product_attention` on [B, H, S, D] tensors, often strided views. A
TorchFunctionMode, entered around the forward of each denoiser and the forward, decode and
encode of each VAE (pipelines call a VAE's decode, never its forward), replaces that call with
`flash_attention` whenever the kernel supports it; anything else (the VAE's single 512-wide
head, dropout, a causal flag, a CPU without the interpreter) goes to PyTorch's SDPA, logged
once per reason. With norm="triton" (the default alongside attention="triton") it does the same
for `F.group_norm` (norm.py), and the GroupNorm + SiLU pairs of the ResNet blocks run as one
fused kernel (fused_norm.py). `install(..., attention="sdpa")` takes the routing out again.
"""

from __future__ import annotations

import functools
import importlib.util
import logging

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from .fused_norm import fuse, unfuse

log = logging.getLogger(__name__)
ATTENTION = ("triton", "sdpa")
NORM = ("triton", "torch")
ROUTED_COMPONENTS = ("unet", "transformer", "vae")


class TritonAttention(TorchFunctionMode):
    """Counts what it routes (`calls`; with norm=True `norm_calls`, of which `fused_calls` had
    their SiLU fused) and what it leaves to PyTorch (`fallbacks`, by reason)."""

    def __init__(self, attention: bool = True, norm: bool = False):
        super().__init__()
        self.attention, self.norm = attention, norm
        self.calls = self.norm_calls = self.fused_calls = 0
        self.depth = 0  # routed methods currently running (entered once, however nested)
        self.fallbacks: dict[str, int] = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = None
        if func is F.scaled_dot_product_attention and self.attention:
            out = self._attention(*args, **kwargs)
        elif func is F.group_norm and self.norm:
            out = self._group_norm(*args, **kwargs)
        return func(*args, **kwargs) if out is None else out

    def _fallback(self, why: str, what: str) -> None:
        if why not in self.fallbacks:  # a warning: a run that quietly never used the kernel would mislead
            log.warning("%s -> PyTorch", what)
        self.fallbacks[why] = self.fallbacks.get(why, 0) + 1

    def _group_norm(self, input, num_groups, weight=None, bias=None, eps=1e-5):
        from .norm import group_norm, supports  # heavy: triton (loaded on first use)

        why = supports(input, num_groups, weight, bias)
        if why:
            self._fallback(why, f"group_norm: {why} (x {tuple(input.shape)})")
            return None
        self.norm_calls += 1
        return group_norm(input, num_groups, weight, bias, eps)

    def _attention(
        self, query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False
    ):
        from .attention import flash_attention, supports  # heavy: triton (loaded on first use)

        if dropout_p or is_causal:
            why = "dropout" if dropout_p else "is_causal"
        elif key.dim() == query.dim() and key.shape[1] != query.shape[1] and not enable_gqa:
            why = "different head counts without enable_gqa"  # SDPA itself refuses these
        else:
            why = supports(query, key, value, attn_mask)  # shapes, dtype, device, head dim, mask
        if why:
            self._fallback(why, f"attention: {why} (q {tuple(query.shape)}, k {tuple(key.shape)})")
            return None
        self.calls += 1
        return flash_attention(query, key, value, scale=scale, mask=attn_mask)


class _Routed:
    """A module's method, run under the mode; keeps the original for uninstalling."""

    def __init__(self, method, mode: TritonAttention):
        self.original, self.mode = method, mode
        # the signature stays visible (diffusers inspects forward's); updated=(): a wrapped wrapper's
        # __dict__ (its own `original`) must not overwrite ours
        functools.update_wrapper(self, method, updated=())

    def __call__(self, *args, **kwargs):
        if self.mode.depth:  # e.g. a VAE's forward calling its own decode: already inside
            return self.original(*args, **kwargs)
        self.mode.depth += 1
        try:
            with self.mode:
                return self.original(*args, **kwargs)
        finally:
            self.mode.depth -= 1


# Pipelines call a VAE's decode (and encode), not its forward; a denoiser's forward.
METHODS = ("forward", "decode", "encode")


def modules_of(target) -> list[torch.nn.Module]:
    """The denoiser and VAE of a pipeline, or the one module given."""
    if isinstance(target, torch.nn.Module):
        return [target]
    components = getattr(target, "components", None)
    if not isinstance(components, dict):
        raise TypeError(f"expected a diffusers pipeline or a torch module, got {type(target).__name__}")
    return [components[name] for name in ROUTED_COMPONENTS if isinstance(components.get(name), torch.nn.Module)]


def unwrap(module: torch.nn.Module, kind: type) -> None:
    """Take wrappers of `kind` (each keeps `.original`) off a module's METHODS."""
    for name in METHODS:
        wrapper = module.__dict__.get(name)
        if isinstance(wrapper, kind):
            if getattr(wrapper.original, "__func__", None) is getattr(type(module), name, None):
                delattr(module, name)  # the class's own method again
            else:
                setattr(module, name, wrapper.original)  # a method someone else had wrapped


def install(target, attention: str = "triton", norm: str | None = None) -> TritonAttention | None:
    """Route the attention and the GroupNorms (+ SiLU) of a pipeline's denoiser and VAE, or of
    one module, through the Triton kernels, or back to PyTorch with attention="sdpa". `norm`
    follows `attention` unless given ("triton" or "torch"), so each can be measured alone.
    Returns the mode, whose counters say what ran where."""
    if norm is None:
        norm = "triton" if attention == "triton" else "torch"
    if attention not in ATTENTION:
        raise ValueError(f"attention={attention!r}: expected one of {', '.join(ATTENTION)}")
    if norm not in NORM:
        raise ValueError(f"norm={norm!r}: expected one of {', '.join(NORM)}")
    modules = modules_of(target)
    for module in modules:  # undo an earlier install first: never two modes deep
        unwrap(module, _Routed)
        unfuse(module)
    if attention == "sdpa" and norm == "torch":
        return None
    if importlib.util.find_spec("triton") is None:
        raise ImportError(
            "the Triton kernels need the triton package (it comes with CUDA builds of torch); use attention='sdpa'"
        )
    mode = TritonAttention(attention=attention == "triton", norm=norm == "triton")
    for module in modules:
        for name in METHODS:
            method = getattr(module, name, None)
            if callable(method):
                setattr(module, name, _Routed(method, mode))
        if mode.norm:
            fuse(module, mode)
    return mode
