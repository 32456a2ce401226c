"""Route a model's attention through the Triton kernel: `install(pipeline_or_model, attention="triton")`.

Every diffusers attention processor (UNet or DiT, SD1.x to FLUX) ends in one call,
`F.scaled_dot_product_attention` on [B, H, S, D] tensors, often strided views. A
TorchFunctionMode, entered around the forward of each denoiser and VAE, replaces that call with
`flash_attention` whenever the kernel supports it; anything else (the VAE's single 512-wide
head, dropout, a causal flag, a CPU without the interpreter) goes to PyTorch's SDPA, logged
once per reason. `install(..., attention="sdpa")` takes the routing out again.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

log = logging.getLogger(__name__)
ATTENTION = ("triton", "sdpa")
ROUTED_COMPONENTS = ("unet", "transformer", "vae")


class TritonAttention(TorchFunctionMode):
    """Counts what it routes (`calls`) and what it leaves to SDPA (`fallbacks`, by reason)."""

    def __init__(self):
        super().__init__()
        self.calls = 0
        self.fallbacks: dict[str, int] = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention:
            out = self._attention(*args, **kwargs)
            if out is not None:
                return out
        return func(*args, **kwargs)

    def _attention(self, query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
        from .attention import flash_attention, supports

        if dropout_p or is_causal:
            why = "dropout" if dropout_p else "is_causal"
        elif query.dim() != 4 or key.dim() != 4:
            why = f"{query.dim()}-d inputs"
        elif key.shape[1] != query.shape[1] and not enable_gqa:
            why = "different head counts without enable_gqa"
        else:
            why = supports(query, key, value, attn_mask)
        if why:
            if why not in self.fallbacks:
                log.info("attention: %s -> PyTorch SDPA (q %s, k %s)", why, tuple(query.shape), tuple(key.shape))
            self.fallbacks[why] = self.fallbacks.get(why, 0) + 1
            return None
        self.calls += 1
        return flash_attention(query, key, value, scale=scale, mask=attn_mask)


class _Routed:
    """A module's forward, run under the mode; keeps the original for uninstalling."""

    def __init__(self, forward, mode: TritonAttention):
        self.original, self.mode = forward, mode

    def __call__(self, *args, **kwargs):
        with self.mode:
            return self.original(*args, **kwargs)


def _modules(target) -> list[torch.nn.Module]:
    if isinstance(target, torch.nn.Module):
        return [target]
    components = getattr(target, "components", None)
    if not isinstance(components, dict):
        raise TypeError(f"expected a diffusers pipeline or a torch module, got {type(target).__name__}")
    return [components[name] for name in ROUTED_COMPONENTS if isinstance(components.get(name), torch.nn.Module)]


def install(target, attention: str = "triton") -> TritonAttention | None:
    """Route the attention of a pipeline's denoiser and VAE (or of one module) through the
    Triton kernel, or back to SDPA. Returns the mode (its counters) for "triton"."""
    if attention not in ATTENTION:
        raise ValueError(f"attention={attention!r}: expected one of {', '.join(ATTENTION)}")
    modules = _modules(target)
    for module in modules:  # undo an earlier install first: never two modes deep
        routed = module.__dict__.get("forward")
        if isinstance(routed, _Routed):
            if getattr(routed.original, "__func__", None) is type(module).forward:
                del module.forward  # the class's own forward again
            else:
                module.forward = routed.original  # a forward someone else had wrapped
    if attention == "sdpa":
        return None
    try:
        from . import attention  # noqa: F401 - needs triton
    except ImportError as e:
        raise ImportError(f"attention='triton' needs the triton package ({e}); use attention='sdpa'") from None
    mode = TritonAttention()
    for module in modules:
        module.forward = _Routed(module.forward, mode)
    return mode
