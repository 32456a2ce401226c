"""The Triton GroupNorm (+ SiLU) against its reference, on the CPU under TRITON_INTERPRET=1 or
compiled on a GPU. Tolerance rule as for attention: at most twice PyTorch's own error in the
same dtype against an fp32 reference, plus a floor."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from t2i_engine.kernels import install
from t2i_engine.kernels.norm import group_norm, group_norm_ref, supports

pytestmark = pytest.mark.fresh_stack  # the Triton interpreter's loops: see tests/conftest.py

FLOOR = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _case(n, c, h, w, dtype, channels_last, seed=0):
    g = torch.Generator("cpu").manual_seed(seed)
    x = (torch.randn(n, c, h, w, generator=g) * 3 + 1).to(DEVICE, dtype)  # an offset mean, as activations have
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    weight = torch.randn(c, generator=g).to(DEVICE, dtype)
    bias = torch.randn(c, generator=g).to(DEVICE, dtype)
    return x, weight, bias


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("silu", [False, True], ids=["norm", "norm+silu"])
@pytest.mark.parametrize(
    "c, groups, hw", [(16, 8, 9), (40, 8, 23)]
)  # 2 and 5 channels per group; odd sizes; 23x23 takes two tiles
def test_group_norm_matches_the_reference(c, groups, hw, silu, channels_last, dtype):
    x, weight, bias = _case(2, c, hw, hw, dtype, channels_last, seed=c + hw)
    ref = group_norm_ref(x.float(), groups, weight.float(), bias.float(), silu=silu)
    ours = group_norm(x, groups, weight, bias, silu=silu)
    theirs = F.group_norm(x, groups, weight, bias)
    theirs = (F.silu(theirs) if silu else theirs).float()
    err = (ours.float() - ref).abs()
    torch_err = (theirs - ref).abs().max().item()
    where = tuple(int(i) for i in torch.unravel_index(err.argmax(), err.shape))
    print(
        f"{dtype} {'cl' if channels_last else 'nchw'} silu={silu}: worst {err.max().item():.3g} at {where}; "
        f"PyTorch's {torch_err:.3g}"
    )
    assert err.max().item() <= 2 * torch_err + FLOOR[dtype]
    assert ours.dtype == x.dtype and ours.is_contiguous(
        memory_format=torch.channels_last if channels_last else torch.contiguous_format
    )


def test_without_affine_parameters():
    x, _, _ = _case(1, 32, 6, 7, torch.float32, False)
    assert (group_norm(x, 4) - group_norm_ref(x, 4)).abs().max().item() <= 1e-5


def test_what_the_kernel_does_not_run_is_named():
    assert "groups" in supports(torch.zeros(1, 30, 2, 2, device=DEVICE), 4)
    assert "2-d" in supports(torch.zeros(32, 4, device=DEVICE), 4)
    x = torch.randn(2, 32, 19, generator=torch.Generator().manual_seed(3)).to(
        DEVICE
    )  # [N, C, L], as before a VAE's attention
    assert (group_norm(x, 8) - group_norm_ref(x, 8)).abs().max().item() <= 1e-5


def _unet_case():
    from t2i_engine.models.tiny import build_tiny_sd

    unet = build_tiny_sd().unet.eval().to(DEVICE)
    g = torch.Generator().manual_seed(0)
    args = (torch.randn(1, 4, 4, 4, generator=g).to(DEVICE), torch.tensor([500], device=DEVICE))
    return unet, args, {"encoder_hidden_states": torch.randn(1, 77, 32, generator=g).to(DEVICE)}


def test_routed_and_fused_group_norms_in_a_unet_give_the_same_output():
    unet, args, kwargs = _unet_case()
    pairs = (
        2 * sum(1 for m in unet.modules() if type(m).__name__ == "ResnetBlock2D") + 1
    )  # norm1, norm2; the closing norm
    with torch.no_grad():
        reference = unet(*args, **kwargs).sample
        mode = install(unet, attention="sdpa", norm="triton")
        routed = unet(*args, **kwargs).sample
        install(unet, attention="sdpa")
        again = unet(*args, **kwargs).sample
    diff = (routed - reference).abs().max().item()
    print(
        f"{mode.norm_calls} group norms routed ({mode.fused_calls} fused with their SiLU), {mode.calls} attention "
        f"calls, max |diff| {diff:.3g}"
    )
    assert (
        mode.fused_calls == pairs and mode.norm_calls > mode.fused_calls and mode.calls == 0
    )  # the transformer blocks' norms are unfused
    assert diff <= 1e-4
    assert (
        torch.equal(again, reference) and "forward" not in unet.conv_act.__dict__
    )  # uninstalled: the modules' own forwards


def test_a_vae_decoder_fuses_its_norms_and_decodes_the_same():
    from t2i_engine.models.tiny import build_tiny_sd

    vae = build_tiny_sd().vae.eval().to(DEVICE)
    z = torch.randn(1, vae.config.latent_channels, 4, 4, generator=torch.Generator().manual_seed(1)).to(DEVICE)
    with torch.no_grad():
        reference = vae.decode(z).sample
        mode = install(vae, attention="sdpa", norm="triton")
        fused = vae.decode(z).sample
        install(vae, attention="sdpa")
    print(f"{mode.fused_calls} fused, max |diff| {(fused - reference).abs().max().item():.3g}")
    assert mode.fused_calls > 0 and (fused - reference).abs().max().item() <= 1e-4


def test_a_scale_shift_block_fuses_only_its_first_norm():
    from diffusers.models.resnet import ResnetBlock2D

    torch.manual_seed(0)
    block = (
        ResnetBlock2D(in_channels=8, out_channels=8, temb_channels=6, groups=4, time_embedding_norm="scale_shift")
        .eval()
        .to(DEVICE)
    )
    x, temb = torch.randn(1, 8, 5, 5).to(DEVICE), torch.randn(1, 6).to(DEVICE)
    with torch.no_grad():
        reference = block(x, temb)
        mode = install(block, attention="sdpa", norm="triton")
        fused = block(x, temb)
    assert mode.fused_calls == 1 and mode.norm_calls == 2  # norm2 is followed by the time scale/shift, not the SiLU
    assert (fused - reference).abs().max().item() <= 1e-5


def test_a_broken_hand_off_raises_instead_of_misplacing_the_silu():
    from diffusers.models.resnet import ResnetBlock2D

    block = ResnetBlock2D(in_channels=8, out_channels=8, temb_channels=None, groups=4).eval().to(DEVICE)
    install(block, attention="sdpa", norm="triton")
    with torch.no_grad():
        h = block.norm1(torch.randn(1, 8, 3, 3).to(DEVICE))
        with pytest.raises(RuntimeError, match="did not go straight to its SiLU"):
            block.nonlinearity(h * 2)  # an op between the norm and its activation


def _block():
    from diffusers.models.resnet import ResnetBlock2D

    torch.manual_seed(1)
    return ResnetBlock2D(in_channels=8, out_channels=8, temb_channels=None, groups=4).eval().to(DEVICE)


def test_what_the_fused_pairs_leave_to_pytorch_still_computes_right():
    import io

    block, x = _block(), torch.randn(1, 8, 3, 3).to(DEVICE)
    with torch.no_grad():
        reference = block(x, None)
    mode = install(block, attention="sdpa", norm="triton")
    # trainable norm weights: the forward-only kernel would drop their gradient
    block.norm1.weight.requires_grad_(True)
    block(x, None).sum().backward()
    assert block.norm1.weight.grad is not None and mode.fused_calls == 0
    block.norm1.weight.requires_grad_(False)
    # a forward hook on the norm must see the norm's output, before the SiLU
    seen = []
    handle = block.norm1.register_forward_hook(lambda m, i, o: seen.append(o.min().item()))
    with torch.no_grad():
        hooked = block(x, None)
    handle.remove()
    assert (
        seen[0] < 0 and (hooked - reference).abs().max().item() <= 1e-5
    )  # SiLU outputs are > -0.28; a GroupNorm's reach lower
    # a saved and reloaded model runs (the wrappers keep no bound methods that would reload as themselves)
    buffer = io.BytesIO()
    torch.save(block, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    with torch.no_grad():
        assert (loaded(x, None) - reference).abs().max().item() <= 1e-5


def test_a_norm_whose_forward_someone_else_replaced_is_left_alone():
    block = _block()
    theirs = block.norm1.forward
    block.norm1.forward = theirs  # as accelerate's offload hooks do
    mode = install(block, attention="sdpa", norm="triton")
    with torch.no_grad():
        block(torch.randn(1, 8, 3, 3).to(DEVICE), None)
    assert mode.fused_calls == 1  # norm2 only
    install(block, attention="sdpa")
    assert block.norm1.__dict__["forward"] == theirs


def test_the_custom_op_passes_opcheck_and_stays_in_a_compiled_graph():
    """torch.ops.t2i_engine.group_norm: the fake implementation keeps the kernel's layout
    (channels_last in, channels_last out), and a block calling it compiles whole."""
    from t2i_engine.kernels.norm import group_norm_op

    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 8, 6, 5, generator=g).to(DEVICE).to(memory_format=torch.channels_last)
    w, b = torch.randn(8, generator=g).to(DEVICE), torch.randn(8, generator=g).to(DEVICE)
    for args in ((x, 4, w, b, 1e-5, True), (x.contiguous(), 2, None, None, 1e-6, False)):
        torch.library.opcheck(group_norm_op, args, test_utils=("test_schema", "test_faketensor"))

    def block(x):
        return torch.ops.t2i_engine.group_norm(x + 1, 4, w, b, 1e-5, True) * 2

    compiled = torch.compile(block, backend="aot_eager", fullgraph=True)
    out = compiled(x)
    torch.testing.assert_close(out, block(x))
    assert out.is_contiguous(memory_format=torch.channels_last)


def test_a_cropped_view_takes_the_strided_path_and_matches():
    """Rows that do not follow each other in memory (a view cropped in width) are addressed by
    row and column; contiguous and channels_last tensors take the flat path (no divide per pixel)."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 8, 6, 7, generator=g).to(DEVICE)[..., :5]  # stride(2) = 7, width 5: not flat
    assert x.stride(2) != x.shape[3] * x.stride(3)
    torch.testing.assert_close(group_norm(x, 4, silu=True), group_norm_ref(x, 4, silu=True), atol=1e-5, rtol=1e-5)
