"""The FLOP counter against hand counts and against PAPER.md's SD1.5 figure."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from t2i_engine.engine.flops import count_flops


def test_a_convolution_costs_two_flops_per_multiply_add():
    # 8 outputs x 3 inputs x 3x3 kernel per pixel, 16x16 pixels: 55,296 multiply-adds
    flops = count_flops(lambda: torch.nn.Conv2d(3, 8, 3, padding=1, bias=False), lambda: ((torch.empty(1, 3, 16, 16),), {}))
    assert flops == 2 * 8 * 3 * 9 * 16 * 16


class _SDPA(torch.nn.Module):
    def forward(self, q, k, v):
        return F.scaled_dot_product_attention(q, k, v)


def test_attention_counts_both_matmuls_even_on_the_cpu_kernel():
    b, h, lq, lk, d = 2, 4, 64, 48, 32
    flops = count_flops(_SDPA, lambda: ((torch.empty(b, h, lq, d), torch.empty(b, h, lk, d), torch.empty(b, h, lk, d)), {}))
    assert flops == 2 * (2 * b * h * lq * lk * d)  # Q K^T and softmax(.) V


def test_a_diffusers_attention_layer_matches_its_hand_count():
    from diffusers.models.attention_processor import Attention

    n, dim, heads, head_dim = 32, 64, 4, 16
    flops = count_flops(lambda: Attention(query_dim=dim, heads=heads, dim_head=head_dim),
                        lambda: ((torch.empty(1, n, dim),), {}))
    projections = 4 * 2 * n * dim * (heads * head_dim)  # q, k, v and out
    attention = 2 * 2 * heads * n * n * head_dim
    assert flops == projections + attention


@pytest.mark.slow
def test_sd15_unet_at_512_matches_the_papers_count():
    from diffusers import UNet2DConditionModel

    # SD1.5's UNet is diffusers' default UNet2DConditionModel with 768-wide text features
    flops = count_flops(lambda: UNet2DConditionModel(cross_attention_dim=768),
                        lambda: ((torch.empty(1, 4, 64, 64), torch.tensor([10])), {"encoder_hidden_states": torch.empty(1, 77, 768)}))
    assert flops / 1e12 == pytest.approx(0.803, rel=0.005)  # ../PAPER: 0.803 TFLOP per forward per image
