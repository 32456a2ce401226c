"""The FLOP counter against hand counts and against PAPER.md's SD1.5 figure."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from t2i_engine.models.flops import count_flops


def test_a_convolution_costs_two_flops_per_multiply_add():
    # 8 outputs x 3 inputs x 3x3 kernel per pixel, 16x16 pixels: 55,296 multiply-adds
    flops = count_flops(
        lambda: torch.nn.Conv2d(3, 8, 3, padding=1, bias=False), lambda: ((torch.empty(1, 3, 16, 16),), {})
    )
    assert flops == 2 * 8 * 3 * 9 * 16 * 16


class _SDPA(torch.nn.Module):
    def forward(self, q, k, v):
        return F.scaled_dot_product_attention(q, k, v)


def test_attention_counts_both_matmuls_even_on_the_cpu_kernel():
    b, h, lq, lk, d = 2, 4, 64, 48, 32
    flops = count_flops(
        _SDPA, lambda: ((torch.empty(b, h, lq, d), torch.empty(b, h, lk, d), torch.empty(b, h, lk, d)), {})
    )
    assert flops == 2 * (2 * b * h * lq * lk * d)  # Q K^T and softmax(.) V


def test_a_diffusers_attention_layer_matches_its_hand_count():
    from diffusers.models.attention_processor import Attention

    n, dim, heads, head_dim = 32, 64, 4, 16
    flops = count_flops(
        lambda: Attention(query_dim=dim, heads=heads, dim_head=head_dim), lambda: ((torch.empty(1, n, dim),), {})
    )
    projections = 4 * 2 * n * dim * (heads * head_dim)  # q, k, v and out
    attention = 2 * 2 * heads * n * n * head_dim
    assert flops == projections + attention


@pytest.mark.slow
@pytest.mark.parametrize("name, res, forward, decode", [("sd15", 512, 0.803, 2.515), ("sdxl", 1024, 6.761, 10.47)])
def test_the_shipped_architectures_match_the_papers_counts(name, res, forward, decode):
    from t2i_engine.models.architectures import build_random_pipeline
    from t2i_engine.models.flops import pipeline_flops
    from t2i_engine.models.registry import get_model

    # Built on the meta device (no memory), counted under fake tensors: ../PAPER's TFLOP per
    # forward per image (1 MAC = 2 FLOPs, attention included) and per VAE decode
    spec = get_model(name)
    pipe = build_random_pipeline(spec, torch.device("meta"), torch.float32)
    f = pipeline_flops(pipe, spec.family, steps=50, cfg=True, height=res, width=res)
    assert f["denoiser_forward"] / 1e12 == pytest.approx(forward, rel=0.005)
    assert f["vae_decode"] / 1e12 == pytest.approx(decode, rel=0.005)
    assert f["per_image"] == 100 * f["denoiser_forward"] + f["vae_decode"]


@pytest.mark.slow
@pytest.mark.parametrize("name, billions", [("sd3-medium", 2.028), ("flux-schnell", 11.9)])
def test_transformer_families_build_with_their_known_sizes_and_count(name, billions):
    from t2i_engine.models.architectures import architecture, build_random_pipeline
    from t2i_engine.models.flops import pipeline_flops
    from t2i_engine.models.registry import get_model

    spec = get_model(name)
    pipe = build_random_pipeline(spec, torch.device("meta"), torch.bfloat16)
    assert pipe.text_encoder is not None  # random-weight CLIP and T5 with stand-in tokenizers
    assert sum(p.numel() for p in pipe.transformer.parameters()) / 1e9 == pytest.approx(billions, rel=0.005)
    if name == "sd3-medium":  # (FLUX's count, 69.5 TFLOP, is in bench/RESULTS.md; 8 s more here)
        f = pipeline_flops(
            pipe, spec.family, steps=1, cfg=False, height=1024, width=1024, text=architecture(name)["text"]
        )
        # Bounds from the weights: 2 FLOPs per weight per token it sees. At least half the weights
        # (the image stream) see all 4096 image tokens; none sees more than image + text tokens,
        # and attention adds well under 20% at this size.
        text_tokens = architecture(name)["text"]["prompt_embeds_shape"][1]
        assert 2 * 4096 * billions * 1e9 / 2 < f["denoiser_forward"] < 2 * (4096 + text_tokens) * billions * 1e9 * 1.2
