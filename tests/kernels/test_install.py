"""`kernels.install`: tiny random denoisers shaped like each family's (SD1.5, SD3, FLUX, Sana,
Lumina-2, Qwen-Image, PixArt) give the same output with the Triton kernels routed in as without
(fp32; max abs difference under 1e-4), and the kernel really ran."""

from __future__ import annotations

import pytest
import torch

from t2i_engine.kernels import install
from tests.engine.test_generate import shard_pixels

pytestmark = pytest.mark.fresh_stack  # the Triton interpreter's loops: see tests/conftest.py

TOLERANCE = 1e-4  # fp32: the kernel's error against PyTorch's was ~4e-7 per attention (test_attention.py)
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # the CPU runs the kernels through the interpreter


def _to(args, kwargs):
    return tuple(a.to(DEVICE) for a in args), {k: v.to(DEVICE) if torch.is_tensor(v) else v for k, v in kwargs.items()}


def _sd15():
    from t2i_engine.models.tiny import build_tiny_sd

    unet = build_tiny_sd().unet
    g = torch.Generator().manual_seed(0)
    # a 4x4 latent and one image: the interpreter's time grows with programs (batch x heads x blocks)
    return unet, (
        (torch.randn(1, 4, 4, 4, generator=g), torch.tensor([500])),
        {"encoder_hidden_states": torch.randn(1, 77, 32, generator=g)},
    )


def _sd3():
    from diffusers import SD3Transformer2DModel

    torch.manual_seed(0)
    model = SD3Transformer2DModel(
        sample_size=16,
        patch_size=2,
        in_channels=4,
        num_layers=2,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=24,
        caption_projection_dim=32,
        pooled_projection_dim=8,
        out_channels=4,
        qk_norm="rms_norm",
        dual_attention_layers=(0,),
    )
    g = torch.Generator().manual_seed(1)
    return model, (
        (),
        {
            "hidden_states": torch.randn(2, 4, 16, 16, generator=g),
            "encoder_hidden_states": torch.randn(2, 13, 24, generator=g),
            "pooled_projections": torch.randn(2, 8, generator=g),
            "timestep": torch.tensor([3.0, 700.0]),
        },
    )


def _flux():
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(0)
    model = FluxTransformer2DModel(
        patch_size=1,
        in_channels=16,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=24,
        pooled_projection_dim=8,
        guidance_embeds=True,
        axes_dims_rope=(4, 6, 6),
    )
    g = torch.Generator().manual_seed(2)
    tokens, text = 64, 11
    return model, (
        (),
        {
            "hidden_states": torch.randn(1, tokens, 16, generator=g),
            "encoder_hidden_states": torch.randn(1, text, 24, generator=g),
            "pooled_projections": torch.randn(1, 8, generator=g),
            "timestep": torch.tensor([0.5]),
            "img_ids": torch.randn(tokens, 3, generator=g),
            "txt_ids": torch.zeros(text, 3),
            "guidance": torch.tensor([3.5]),
        },
    )


def _sana():  # its linear self-attention is not SDPA: only the softmax cross-attention routes
    from diffusers import SanaTransformer2DModel

    torch.manual_seed(0)
    model = SanaTransformer2DModel(
        in_channels=4,
        out_channels=4,
        num_attention_heads=2,
        attention_head_dim=8,
        num_layers=1,
        num_cross_attention_heads=2,
        cross_attention_head_dim=8,
        cross_attention_dim=16,
        caption_channels=12,
        mlp_ratio=2.5,
        sample_size=8,
        patch_size=1,
        norm_elementwise_affine=False,
        norm_eps=1e-6,
    )
    g = torch.Generator().manual_seed(3)
    return model, (
        (),
        {
            "hidden_states": torch.randn(1, 4, 4, 4, generator=g),
            "encoder_hidden_states": torch.randn(1, 5, 12, generator=g),
            "encoder_attention_mask": torch.tensor([[1, 1, 1, 0, 0]]),
            "timestep": torch.tensor([500]),
        },
    )


def _lumina():  # 4 query heads over 2 key/value heads (diffusers repeats them before SDPA), RoPE, a padding mask
    from diffusers import Lumina2Transformer2DModel

    torch.manual_seed(0)
    model = Lumina2Transformer2DModel(
        sample_size=8,
        patch_size=2,
        in_channels=4,
        hidden_size=32,
        num_layers=1,
        num_refiner_layers=1,
        num_attention_heads=4,
        num_kv_heads=2,
        multiple_of=16,
        cap_feat_dim=12,
        axes_dim_rope=(4, 2, 2),
        axes_lens=(32, 16, 16),
    )
    g = torch.Generator().manual_seed(4)
    return model, (
        (),
        {
            "hidden_states": torch.randn(1, 4, 8, 8, generator=g),
            "timestep": torch.tensor([0.3]),
            "encoder_hidden_states": torch.randn(1, 5, 12, generator=g),
            "encoder_attention_mask": torch.tensor([[1, 1, 1, 1, 0]]).bool(),
        },
    )


def _qwen():  # joint text+image attention with RoPE and a text mask
    from diffusers import QwenImageTransformer2DModel

    torch.manual_seed(0)
    model = QwenImageTransformer2DModel(
        patch_size=2,
        in_channels=16,
        out_channels=4,
        num_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=12,
        axes_dims_rope=(4, 6, 6),
    )
    g = torch.Generator().manual_seed(5)
    return model, (
        (),
        {
            "hidden_states": torch.randn(1, 16, 16, generator=g),
            "encoder_hidden_states": torch.randn(1, 5, 12, generator=g),
            "encoder_hidden_states_mask": torch.tensor([[1, 1, 1, 1, 0]]),
            "timestep": torch.tensor([0.5]),
            "img_shapes": [(1, 4, 4)],
        },
    )


def _pixart():  # self-attention, and cross-attention with a caption mask
    from diffusers import PixArtTransformer2DModel

    torch.manual_seed(0)
    model = PixArtTransformer2DModel(
        num_attention_heads=2,
        attention_head_dim=8,
        in_channels=4,
        out_channels=8,
        num_layers=1,
        cross_attention_dim=16,
        caption_channels=12,
        sample_size=8,
        patch_size=2,
        norm_type="ada_norm_single",
        attention_bias=True,
        norm_elementwise_affine=False,
        norm_eps=1e-6,
        num_embeds_ada_norm=1000,
    )
    g = torch.Generator().manual_seed(6)
    return model, (
        (),
        {
            "hidden_states": torch.randn(1, 4, 8, 8, generator=g),
            "encoder_hidden_states": torch.randn(1, 5, 12, generator=g),
            "encoder_attention_mask": torch.tensor([[1, 1, 1, 0, 0]]),
            "timestep": torch.tensor([500]),
            "added_cond_kwargs": {"resolution": None, "aspect_ratio": None},
        },
    )


def _out(model, args, kwargs) -> torch.Tensor:
    out = model(*args, **kwargs)
    return out.sample if hasattr(out, "sample") else out[0]


@pytest.mark.parametrize(
    "build",
    [_sd15, _sd3, _flux, _sana, _lumina, _qwen, _pixart],
    ids=[
        "sd15-shaped",
        "sd3-shaped",
        "flux-shaped",
        "sana-shaped",
        "lumina2-shaped",
        "qwen-image-shaped",
        "pixart-shaped",
    ],
)
def test_routed_attention_gives_the_same_output(build):
    model, (args, kwargs) = build()
    model.eval().to(DEVICE)
    args, kwargs = _to(args, kwargs)
    with torch.no_grad():
        reference = _out(model, args, kwargs)
        mode = install(model, attention="triton")
        routed = _out(model, args, kwargs)
        install(model, attention="sdpa")
        again = _out(model, args, kwargs)
    diff = (routed - reference).abs().max().item()
    print(f"{build.__name__}: {mode.calls} kernel calls, fallbacks {mode.fallbacks}, max |diff| {diff:.3g}")
    assert mode.calls > 0 and not mode.fallbacks
    assert diff <= TOLERANCE
    assert torch.equal(again, reference)  # "sdpa" took the routing out


def test_a_pipeline_routes_its_denoiser_and_vae():
    from t2i_engine.engine.generator import Generator
    from t2i_engine.engine.plan import plan_units
    from t2i_engine.models.tiny import build_tiny_sd
    from tests.conftest import tiny_recipe

    pipe = build_tiny_sd().to(DEVICE)
    pipe.set_progress_bar_config(disable=True)
    samples = list(plan_units(tiny_recipe())[0].samples[:1])
    generator = Generator(pipe, steps=1, guidance=5.0, height=32, width=32)
    reference = generator.generate(samples)
    mode = install(pipe, attention="triton", norm="torch")  # the norms' routing has its own tests (test_norm.py)
    routed = generator.generate(samples)
    install(pipe, attention="sdpa")
    assert mode.calls > 0 and not mode.fallbacks
    assert not {"forward", "decode", "encode"} & (
        set(vars(pipe.unet)) | set(vars(pipe.vae))
    )  # uninstalled: the class's own methods
    # uint8 images: routing may move a pixel by one level where a value sits on a rounding edge
    assert abs(routed.astype(int) - reference.astype(int)).max() <= 1


def test_the_vae_decode_is_routed_too():
    from t2i_engine.models.tiny import build_tiny_sd

    vae = build_tiny_sd().vae.to(DEVICE).eval()
    latents = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(0)).to(DEVICE)
    with torch.no_grad():
        reference = vae.decode(latents).sample
        mode = install(vae, attention="triton", norm="triton")  # pipelines call decode, not forward
        routed = vae.decode(latents).sample
        install(vae, attention="sdpa")
    assert mode.calls > 0 and mode.norm_calls > 0 and not mode.fallbacks
    assert (routed - reference).abs().max().item() <= TOLERANCE


def test_unsupported_calls_fall_back_to_sdpa_and_are_counted():
    from t2i_engine.kernels.routing import TritonAttention

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 1, 8, 512, generator=g) for _ in range(3))  # the VAE's single 512-wide head
    with TritonAttention() as mode:
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v)
        causal = torch.nn.functional.scaled_dot_product_attention(
            q[..., :64], k[..., :64], v[..., :64], is_causal=True
        )
    assert torch.equal(out, torch.nn.functional.scaled_dot_product_attention(q, k, v)) and causal.shape == (
        1,
        1,
        8,
        64,
    )
    assert mode.calls == 0 and mode.fallbacks == {"head dim 512 > 256": 1, "is_causal": 1}


def test_bad_attention_names_are_refused():
    with pytest.raises(ValueError, match="triton, sdpa"):
        install(torch.nn.Linear(2, 2), attention="flash")


def test_generate_with_triton_kernels_records_it_and_matches_sdpa(tmp_path):
    import json

    from t2i_engine.engine.run import RunOptions, generate
    from t2i_engine.engine.verify import verify_dataset
    from t2i_engine.errors import InputError
    from tests.conftest import tiny_recipe

    # One small image, one step, no guidance (one forward): the interpreter runs every program of
    # a kernel's grid in Python, so the work is kept to the least that passes through every kernel.
    recipe = tiny_recipe(classes=["cat"], images_per_class=1, steps=1, resolution=16, format="png", guidance=1.0)
    runs = {}
    flops = {}
    for attention in ("sdpa", "triton"):
        options = RunOptions(device=DEVICE, progress=False, attention=attention)
        summary = generate(recipe, tmp_path / attention, options)
        flops[attention] = summary["denoiser_flops_per_image"]
        assert verify_dataset(tmp_path / attention) == []
        assert json.loads((tmp_path / attention / "dataset.json").read_text())["attention"] == attention
        runs[attention] = shard_pixels(tmp_path / attention)
    assert runs["sdpa"].keys() == runs["triton"].keys() == {"cat_000000.png"}
    assert max(abs(runs["sdpa"][k] - runs["triton"][k]).max() for k in runs["sdpa"]) <= 1  # uint8 levels
    # the FLOP counter cannot see inside our kernels: it says so rather than undercount
    assert isinstance(flops["sdpa"], float)
    assert flops["triton"].startswith("not counted") and "--attention triton" in flops["triton"]
    with pytest.raises(InputError, match="attention 'triton'"):  # one dataset, one attention
        generate(recipe, tmp_path / "triton", RunOptions(device=DEVICE, progress=False, attention="sdpa"))


def test_triton_attention_is_refused_where_it_cannot_run(cli, tmp_path, monkeypatch):
    from t2i_engine.engine.runtime import check_attention
    from t2i_engine.errors import InputError

    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(InputError, match="CUDA"):
        check_attention("triton", torch.device("cpu"))
    code, _, err = cli("generate", "--out", tmp_path / "o", "--model", "tiny-sd", "--attention", "flash3")
    assert code == 2 and "attention" in err and "sdpa, cudnn, flash, efficient, triton" in err
    code, _, err = cli("bench", "tiny-sd", "--attention", "flash3")
    assert code == 2 and "--attention" in err
    code, _, err = cli("bench", "tiny-sd", "--norm", "apex")
    assert code == 2 and "--norm" in err and "triton, torch" in err
