"""Triton kernels with their PyTorch references, and the calls that route a model through them:
`install(pipeline_or_model, attention="triton"|"sdpa")` (routing.py), and `route_attention` for
any of the engine's attention choices. Needs only torch; triton is imported when a kernel is
first used."""

from . import auto, sdpa
from .routing import install


def route_attention(target, attention: str, device) -> None:
    """A pipeline's (or one module's) attention as `--attention` names it: sdpa (as loaded),
    triton (our kernels), cudnn / flash / efficient (PyTorch's SDPA pinned), auto (kernels.auto)."""
    if attention == "triton":
        install(target, attention="triton")
    elif attention in sdpa.BACKENDS:
        sdpa.pin(target, attention)
    elif attention == "auto":
        auto.install(target, device)


__all__ = ["install", "route_attention"]
