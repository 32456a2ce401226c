"""The FP8 convolution kernel (implicit GEMM) against its reference, on the CPU under
TRITON_INTERPRET=1 (set by conftest when there is no CUDA) or compiled on a GPU.

Bounds: against the reference (both operands rounded to FP8 with the same scales, an fp32
convolution of the rounded values) the kernel differs only by fp32 summation order and the
output's rounding: 1e-4 relative in fp32, one ulp of the output dtype otherwise. Against an fp32
convolution of the unrounded values, FP8's own error: under 8% of the output's largest value
(e4m3 keeps 3 mantissa bits; measured 3-5% on random data).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from t2i_engine.kernels.conv import (
    FP8Conv,
    conv2d_fp8,
    conv2d_fp8_op,
    conv2d_fp8_ref,
    install_fp8_conv,
    operand_dtype,
    quantize_weight,
    remove_fp8_conv,
)

pytestmark = pytest.mark.fresh_stack  # the Triton interpreter's loops: see tests/conftest.py

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


@pytest.mark.parametrize(
    "n, c, hw, k, r, stride, pad, bias, layout, dtype",
    [
        (2, 16, (8, 8), 24, 3, 1, 1, True, "nhwc", torch.float32),  # SD's 3x3, channels_last
        (1, 20, (7, 9), 16, 1, 1, 0, False, "nchw", torch.float32),  # 1x1 shortcut, channel tail, NCHW
        (1, 16, (9, 9), 8, 3, 2, 1, True, "nhwc", torch.bfloat16),  # a downsampler: stride 2
        (2, 12, (6, 5), 12, 3, 1, 1, True, "nhwc", torch.float16),
    ],
)
def test_the_kernel_matches_its_reference(n, c, hw, k, r, stride, pad, bias, layout, dtype):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, c, *hw, generator=g).to(DEVICE, dtype)
    if layout == "nhwc":
        x = x.to(memory_format=torch.channels_last)
    w = torch.randn(k, c, r, r, generator=g).to(DEVICE, dtype)
    b = torch.randn(k, generator=g).to(DEVICE, dtype) if bias else None
    wq, ws = quantize_weight(w, operand_dtype(DEVICE))
    out = conv2d_fp8(x, wq, ws, b, stride, pad)
    ref = conv2d_fp8_ref(x, w, b, stride, pad)
    assert out.shape == ref.shape and out.dtype == dtype and out.is_contiguous(memory_format=torch.channels_last)
    tol = 1e-4 * ref.float().abs().max().item() if dtype == torch.float32 else 2 * torch.finfo(dtype).eps * 64
    assert (out.float() - ref.float()).abs().max().item() <= max(tol, 1e-5)
    exact = F.conv2d(x.float(), w.float(), None if b is None else b.float(), stride, pad)
    assert ((out.float() - exact).abs().max() / exact.abs().max()).item() < 0.08


def test_the_custom_op_passes_opcheck_and_a_module_with_it_compiles_whole():
    g = torch.Generator().manual_seed(1)
    conv = torch.nn.Conv2d(16, 16, 3, padding=1).to(DEVICE).requires_grad_(False)
    x = torch.randn(1, 16, 6, 6, generator=g).to(DEVICE).to(memory_format=torch.channels_last)
    plain = conv(x)
    conv.forward = FP8Conv(conv, operand_dtype(DEVICE))
    torch.library.opcheck(
        conv2d_fp8_op,
        (x, conv.forward.weight_q, conv.forward.weight_scale, conv.bias, [1, 1], [1, 1], [1, 1]),
        test_utils=("test_schema", "test_faketensor"),
    )
    compiled = torch.compile(lambda t: conv(t).relu(), backend="aot_eager", fullgraph=True)
    out = compiled(x)
    torch.testing.assert_close(out, conv(x).relu())
    assert ((out - plain.relu()).abs().max() / plain.abs().max()).item() < 0.08


def test_a_tiny_unet_with_fp8_convs_writes_a_valid_dataset_near_the_plain_one(tmp_path):
    from t2i_engine.engine.run import RunOptions, generate
    from t2i_engine.engine.verify import verify_dataset
    from t2i_engine.errors import InputError
    from t2i_engine.training.sources import open_set
    from tests.conftest import tiny_recipe

    recipe = tiny_recipe(classes=["cat"], images_per_class=2, steps=1, format="png")  # one batch
    generate(recipe, tmp_path / "plain", RunOptions(device="cpu", progress=False))
    generate(recipe, tmp_path / "fp8", RunOptions(device="cpu", progress=False, conv="fp8"))
    assert verify_dataset(tmp_path / "fp8") == []
    assert json.loads((tmp_path / "fp8" / "dataset.json").read_text())["conv"] == "fp8"
    a = {i.key: np.asarray(i.image).astype(int) for i in open_set(tmp_path / "plain").read()}
    b = {i.key: np.asarray(i.image).astype(int) for i in open_set(tmp_path / "fp8").read()}
    # the random tiny UNet amplifies FP8's rounding; measured ~3 levels on average at 2 steps
    assert a.keys() == b.keys() and np.mean([np.abs(a[k] - b[k]).mean() for k in a]) < 10
    with pytest.raises(InputError, match="conv 'fp8'"):  # one dataset, one convolution
        generate(recipe, tmp_path / "fp8", RunOptions(device="cpu", progress=False))


def test_the_routing_skips_first_and_last_layers_and_comes_out_again():
    from t2i_engine.models.tiny import build_tiny_sd

    unet = build_tiny_sd().unet
    n = install_fp8_conv(unet, DEVICE)
    routed = [m for m in unet.modules() if isinstance(m.__dict__.get("forward"), FP8Conv)]
    assert n == len(routed) > 0 and "forward" not in unet.conv_in.__dict__ and "forward" not in unet.conv_out.__dict__
    remove_fp8_conv(unet)
    assert not any(isinstance(m.__dict__.get("forward"), FP8Conv) for m in unet.modules())
