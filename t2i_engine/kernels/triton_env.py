"""Where Triton kernels can run, asked without importing triton."""

from __future__ import annotations

import os


def interpreting() -> bool:
    """TRITON_INTERPRET=1: kernels run on CPU tensors through Triton's interpreter (tests)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"
