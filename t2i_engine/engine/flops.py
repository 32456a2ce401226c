"""FLOPs per call of a model, counted without running it.

torch.utils.flop_counter counts matmuls, convolutions and attention as the ops are dispatched;
under FakeTensorMode no arithmetic happens, so a 12B-parameter model is counted on a laptop CPU
in seconds. One gap is filled here: on the CPU, scaled_dot_product_attention dispatches to
`_scaled_dot_product_flash_attention_for_cpu`, which the counter does not know (it counted 0,
and SD1.5's UNet came out at 0.677 TFLOP, conv + linear only); it gets the same formula as the
GPU attention kernels: 2 matmuls of 2*B*H*Lq*Lk*D each. 1 multiply-add = 2 FLOPs throughout.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode


def _sdpa_cpu_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    b, h, lq, d = query_shape
    lk, dv = key_shape[-2], value_shape[-1]
    return 2 * b * h * lq * lk * d + 2 * b * h * lq * lk * dv  # Q K^T, then softmax(.) V


CUSTOM = {}
if hasattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu"):
    CUSTOM[torch.ops.aten._scaled_dot_product_flash_attention_for_cpu] = _sdpa_cpu_flops  # the counter passes shapes


def count_flops(build: Callable[[], torch.nn.Module], make_inputs: Callable[[], tuple[tuple, dict]]) -> int:
    """FLOPs of one forward of `build()` on `make_inputs()`, both made under fake tensors (no
    memory, no arithmetic)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode(allow_non_fake_inputs=True):
        model = build()
        args, kwargs = make_inputs()
        with FlopCounterMode(display=False, custom_mapping=CUSTOM) as counter, torch.no_grad():
            model(*args, **kwargs)
    return counter.get_total_flops()
