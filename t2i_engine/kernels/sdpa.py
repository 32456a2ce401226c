"""Put one of PyTorch's scaled_dot_product_attention backends first for a model's calls:
`pin(pipeline_or_model, "cudnn" | "flash" | "efficient" | "math")`, `unpin(...)` to undo.

PyTorch picks a backend per call by a fixed priority (flash, then efficient, then cuDNN on
most versions), which is not always the fastest on a given card and shape. The pinned forward
(and a VAE's decode/encode) runs inside `torch.nn.attention.sdpa_kernel([chosen, others...],
set_priority=True)`, a context that torch.compile traces through, so a pinned model compiles to
the same choice. A call the chosen backend cannot take (a head dim it lacks, the VAE's single
512-wide head) goes to the next in PyTorch's order rather than failing the run. The math
backend (the reference) is never a fallback: a call no fast backend takes raises.
"""

from __future__ import annotations

import functools
import inspect

from torch.nn.attention import SDPBackend, sdpa_kernel

from .routing import METHODS, modules_of, unwrap

BACKENDS = {
    "cudnn": SDPBackend.CUDNN_ATTENTION,
    "flash": SDPBackend.FLASH_ATTENTION,
    "efficient": SDPBackend.EFFICIENT_ATTENTION,
    "math": SDPBackend.MATH,
}


FALLBACKS = (SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION)
_PRIORITY = "set_priority" in inspect.signature(sdpa_kernel).parameters  # torch >= 2.6


def order(backend: str) -> list[SDPBackend]:
    """The backends a pinned call may use, first choice first."""
    first = BACKENDS[backend]
    if not _PRIORITY or first == SDPBackend.MATH:
        return [first]  # without priorities a list would only enable, not order: the choice alone
    return [first, *(b for b in FALLBACKS if b != first)]


class _Pinned:
    """A module's method run under one SDPA backend; keeps the original for unpinning."""

    def __init__(self, method, backend: str):
        self.original, self.backend = method, backend
        functools.update_wrapper(self, method, updated=())  # diffusers inspects forward's signature

    def __call__(self, *args, **kwargs):
        backends = order(self.backend)
        with sdpa_kernel(backends, set_priority=True) if len(backends) > 1 else sdpa_kernel(backends):
            return self.original(*args, **kwargs)


def pin(target, backend: str) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r}: expected one of {', '.join(BACKENDS)}")
    unpin(target)
    for module in modules_of(target):
        for name in METHODS:
            method = getattr(module, name, None)
            if callable(method):
                setattr(module, name, _Pinned(method, backend))


def unpin(target) -> None:
    for module in modules_of(target):
        unwrap(module, _Pinned)


def pinned(target) -> str | None:
    """The backend a pipeline's or module's attention is pinned to, or None."""
    for module in modules_of(target):
        method = module.__dict__.get("forward") or module.__dict__.get("decode")
        if isinstance(method, _Pinned):
            return method.backend
    return None
