"""Triton kernels with their PyTorch references, and the one call that routes a model through
them: `install(pipeline_or_model, attention="triton"|"sdpa")` (routing.py). Needs only torch;
triton is imported when a kernel is first used."""

from .routing import install

__all__ = ["install"]
