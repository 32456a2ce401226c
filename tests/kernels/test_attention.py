"""The Triton attention kernel against its reference, on the CPU under TRITON_INTERPRET=1 (set
by conftest when there is no CUDA) or compiled on a GPU.

Tolerance rule: the kernel's worst error against an fp32 reference is at most twice PyTorch's
own SDPA error in the same dtype, plus a floor (fp32 1e-5, fp16 1e-3, bf16 8e-3). Each case
prints its worst element and where it is.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from t2i_engine.kernels.attention import flash_attention, flash_attention_ref, supports

pytestmark = pytest.mark.fresh_stack  # the Triton interpreter's loops: see tests/conftest.py

FLOOR = {torch.float32: 1e-5, torch.float16: 1e-3, torch.bfloat16: 8e-3}
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _inputs(b, h, hkv, lq, lk, d, dtype, seed=0):
    g = torch.Generator("cpu").manual_seed(seed)
    q = torch.randn(b, h, lq, d, generator=g)
    k = torch.randn(b, hkv, lk, d, generator=g)
    v = torch.randn(b, hkv, lk, d, generator=g)
    return [t.to(DEVICE, dtype) for t in (q, k, v)]


def _torch_sdpa(q, k, v, mask):
    group = q.shape[1] // k.shape[1]
    return F.scaled_dot_product_attention(
        q, k.repeat_interleave(group, 1), v.repeat_interleave(group, 1), attn_mask=mask
    )


def check(q, k, v, mask=None, name=""):
    ref = flash_attention_ref(q.float(), k.float(), v.float(), mask=mask)
    ours = flash_attention(q, k, v, mask=mask).float()
    theirs = _torch_sdpa(q, k, v, mask).float()
    rows = torch.isfinite(theirs).all(-1, keepdim=True)  # SDPA gives NaN on fully masked rows; we give 0
    err = (ours - ref).abs()
    torch_err = ((theirs - ref).abs() * rows).nan_to_num().max().item()
    worst = err.max().item()
    where = tuple(int(i) for i in torch.unravel_index(err.argmax(), err.shape))
    bound = 2 * torch_err + FLOOR[q.dtype]
    print(
        f"{name} {q.dtype}: worst |ours - ref| {worst:.3g} at {where} (ours {ours[where]:.5g}, ref {ref[where]:.5g}); "
        f"PyTorch's {torch_err:.3g}; bound {bound:.3g}"
    )
    assert worst <= bound


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("d", [40, 64, 72, 80, 96, 112, 128, 160, 256])
def test_every_head_dim(d, dtype):
    check(*_inputs(1, 1, 1, 45, 45, d, dtype, seed=d), name=f"d={d}")  # 45: two blocks each way, a masked tail


@pytest.mark.parametrize("lq, lk", [(1, 1), (1, 77), (77, 77), (333, 77), (1025, 77), (77, 1025)])
def test_odd_lengths_and_cross_attention(lq, lk):
    heads = 1 if max(lq, lk) > 1000 else 2  # the interpreter's time grows with heads x blocks
    check(*_inputs(2, heads, heads, lq, lk, 64, torch.float16, seed=lq + lk), name=f"{lq}x{lk}")


def test_grouped_key_value_heads():
    check(*_inputs(1, 8, 2, 96, 130, 96, torch.float16), name="gqa 8/2")


def test_bf16_runs_with_fp32_accumulation():
    check(*_inputs(1, 2, 2, 100, 70, 72, torch.bfloat16), name="bf16")


def test_a_key_padding_mask_and_fully_masked_rows():
    q, k, v = _inputs(2, 2, 2, 50, 90, 64, torch.float16)
    keep = torch.ones(2, 1, 1, 90, dtype=torch.bool, device=DEVICE)
    keep[0, ..., 60:] = False  # the first sample's text is 60 tokens long
    check(q, k, v, keep, name="key padding")
    rowmask = torch.ones(1, 1, 50, 90, dtype=torch.bool, device=DEVICE)
    rowmask[..., 7, :] = False  # a query that may attend to nothing returns zeros, not NaN
    out = flash_attention(q, k, v, mask=rowmask)
    assert torch.equal(out[:, :, 7], torch.zeros_like(out[:, :, 7])) and torch.isfinite(out).all()
    check(q, k, v, rowmask, name="masked row")


def test_an_additive_mask_per_head():
    q, k, v = _inputs(1, 3, 3, 40, 55, 80, torch.float32)
    bias = torch.randn(1, 3, 40, 55, generator=torch.Generator("cpu").manual_seed(1)).to(DEVICE)
    check(q, k, v, bias, name="additive")


def test_the_diffusers_layout_is_read_through_strides_without_a_copy():
    q, k, v = _inputs(2, 4, 4, 64, 77, 40, torch.float16)
    qs, ks, vs = (t.transpose(1, 2).contiguous().transpose(1, 2) for t in (q, k, v))  # [B, S, H, D] storage
    assert not qs.is_contiguous()
    assert torch.equal(flash_attention(qs, ks, vs), flash_attention(q, k, v))


def test_what_the_kernel_does_not_run_is_named():
    q, k, v = _inputs(1, 1, 1, 8, 8, 512, torch.float16)  # the VAE's single 512-wide head
    assert "head dim 512" in supports(q, k, v)
    with pytest.raises(ValueError, match="scaled_dot_product_attention"):
        flash_attention(q, k, v)
    q, k, v = _inputs(1, 3, 2, 8, 8, 64, torch.float16)
    with pytest.raises(ValueError, match="H % Hkv"):
        flash_attention(q, k, v)


def test_the_custom_op_passes_opcheck_and_stays_in_a_compiled_graph():
    """torch.ops.t2i_engine.flash_attention: its fake implementation agrees with the kernel
    (opcheck: schema, fake tensors, AOT dispatch), and a model calling it compiles whole
    (fullgraph=True raises on any graph break) to the same result."""
    from t2i_engine.kernels.attention import flash_attention_op

    q, k, v = _inputs(1, 4, 2, 24, 40, 32, torch.float32)
    mask = torch.rand(1, 1, 24, 40, generator=torch.Generator().manual_seed(1)).to(DEVICE) > 0.2
    for args in ((q, k, v, 0.2, None), (q.transpose(1, 2).contiguous().transpose(1, 2), k, v, 0.2, mask)):
        torch.library.opcheck(flash_attention_op, args, test_utils=("test_schema", "test_faketensor"))

    def attend(q, k, v):
        return torch.ops.t2i_engine.flash_attention(q * 2, k, v, 0.125, mask).relu()

    compiled = torch.compile(attend, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(q, k, v), attend(q, k, v))


def test_head_dims_are_split_not_padded_to_the_next_power_of_two():
    from t2i_engine.kernels.attention import head_dim_parts

    # SD1.5's 40/80/160 cost 48/80/160 columns, not 64/128/256; powers of two stay whole
    assert [sum(head_dim_parts(d)) for d in (40, 80, 160, 64, 128, 72, 96)] == [48, 80, 160, 64, 128, 80, 96]
    assert all(p == 0 or (p >= 16 and p & (p - 1) == 0) for d in range(1, 257) for p in head_dim_parts(d))
