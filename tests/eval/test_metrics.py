"""The measurements we wrote, against hand-computed answers and independent references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from t2i_engine.eval import metrics
from t2i_engine.eval.probes import fft_filter


def pts(*xs):
    return torch.tensor([[float(x)] for x in xs])


def test_prdc_matches_a_hand_computed_case():
    # real 0, 1, 3 (k=1 radii 1, 1, 2); synthetic 0.5, 2.5, 10 (radii 2, 2, 7.5).
    # precision: 0.5 in ball(0), 2.5 in ball(3), 10 in none -> 2/3
    # recall: every real point lies within 2 of 0.5 or 2.5 -> 1
    # density: 0.5 lies in balls of 0 and 1, 2.5 in the ball of 3, 10 in none -> (2 + 1 + 0) / (1 * 3) = 1
    # coverage: nearest synthetic points 0.5, 0.5, 0.5 are all within the radii -> 1
    r = metrics.prdc(pts(0, 1, 3), pts(0.5, 2.5, 10), k=1)
    assert r == pytest.approx({"precision": 2 / 3, "recall": 1.0, "density": 1.0, "coverage": 1.0})


def test_prdc_second_hand_case_with_k_2_and_ties_on_the_radius():
    # real 0, 1, 2, 10: k=2 radii 0 -> 2, 1 -> 1, 2 -> 2, 10 -> 9
    # synthetic 0, 20, 21, 22: k=2 radii 0 -> 21, 20 -> 2, 21 -> 1, 22 -> 2
    # "inside" is strictly closer than the radius (the reference code's <), so the ties below are out:
    # precision: 0 is inside ball(0); 20/21/22 lie >= 10 from 10 (radius 9) -> 1/4
    # density: 0 is inside ball(0) only (ball(1): 1 < 1 no, ball(2): 2 < 2 no, ball(10): no) -> 1 / (2 * 4)
    # coverage: nearest synthetic to 0, 1, 2, 10 at 0, 1, 2, 10 against radii 2, 1, 2, 9 -> only 0 -> 1/4
    # recall: real 0, 1, 2, 10 all lie within 21 of synthetic 0 -> 1
    r = metrics.prdc(pts(0, 1, 2, 10), pts(0, 20, 21, 22), k=2)
    assert r == pytest.approx({"precision": 0.25, "recall": 1.0, "density": 0.125, "coverage": 0.25})


def test_blocked_prdc_and_vendi_equal_the_whole_matrix_computation(monkeypatch):
    g = torch.Generator().manual_seed(3)
    real, fake = torch.randn(70, 4, generator=g), torch.randn(90, 4, generator=g) + 0.3
    whole = metrics.prdc(real, fake, k=3)
    monkeypatch.setattr(metrics, "_block", lambda *sets, elements=0: 7)  # many small blocks
    assert metrics.prdc(real, fake, k=3) == whole
    # more points than dimensions takes the D x D route; the N x N one must agree
    x = torch.randn(40, 6, generator=g)
    k = F.normalize(x.double(), dim=1)
    eig = torch.linalg.eigvalsh(k @ k.T / 40).clamp(min=0)
    eig = eig[eig > 1e-12]
    assert metrics.vendi(x) == pytest.approx(torch.exp(-(eig * eig.log()).sum()).item(), rel=1e-9)


def test_prdc_of_a_set_against_itself_is_complete():
    x = torch.randn(50, 8, generator=torch.Generator().manual_seed(0))
    r = metrics.prdc(x, x, k=5)
    assert r["precision"] == r["recall"] == r["coverage"] == 1.0


def test_vendi_matches_hand_computed_values():
    e1, e2 = [1.0, 0.0], [0.0, 1.0]
    assert metrics.vendi(torch.tensor([e1, e1, e1])) == pytest.approx(1.0)
    assert metrics.vendi(torch.tensor([e1, e2])) == pytest.approx(2.0)
    # K/n eigenvalues for e1, e1, e2: 2/3 and 1/3 -> exp(-(2/3 ln 2/3 + 1/3 ln 1/3))
    expected = math.exp(-(2 / 3 * math.log(2 / 3) + 1 / 3 * math.log(1 / 3)))
    assert metrics.vendi(torch.tensor([e1, e1, e2])) == pytest.approx(expected)  # 1.8899


def test_pairwise_diversity_hand_values():
    assert metrics.pairwise_diversity(torch.tensor([[1.0, 0.0], [0.0, 3.0]])) == pytest.approx(math.sqrt(2))
    assert metrics.pairwise_diversity(torch.tensor([[2.0, 0.0], [5.0, 0.0], [1.0, 0.0]])) == pytest.approx(0.0)


def test_fid_of_a_set_against_itself_is_zero_and_a_shift_costs_its_squared_length():
    x = torch.randn(400, 6, generator=torch.Generator().manual_seed(1))
    assert abs(metrics.fid(x, x)) < 1e-6
    shift = torch.tensor([1.0, -2.0, 0.5, 0.0, 0.0, 3.0])  # same covariance: FID = |mean difference|^2
    assert metrics.fid(x, x + shift) == pytest.approx(float(shift @ shift), rel=1e-6)


def test_kid_grows_with_a_shift():
    g = torch.Generator().manual_seed(2)
    a, b = torch.randn(300, 6, generator=g), torch.randn(300, 6, generator=g)
    same, _ = metrics.kid(a, b)
    shifted, _ = metrics.kid(a, b + 1.0)
    assert abs(same) < 0.05 < shifted


def test_clip_score_is_100_times_the_clamped_cosine():
    img = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [1.0, 1.0]])
    txt = torch.tensor([[2.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [1.0, 0.0]])
    assert metrics.clip_score(img, txt) == pytest.approx((100 + 0 + 0 + 100 / math.sqrt(2)) / 4)


def _numpy_fft_filter(img: np.ndarray, mode: str, cutoff: float) -> np.ndarray:
    """An independent reference: numpy's FFT, the mask built point by point."""
    c, h, w = img.shape
    out = np.empty_like(img, dtype=np.float64)
    for ch in range(c):
        spec = np.fft.fftshift(np.fft.fft2(img[ch]))
        mask = np.zeros((h, w))
        for y in range(h):
            for x in range(w):
                inside = abs(y - h // 2) <= int(cutoff * h) and abs(x - w // 2) <= int(cutoff * w)
                mask[y, x] = inside if mode == "low" else not inside
        back = np.fft.ifft2(np.fft.ifftshift(spec * mask)).real
        out[ch] = (back - back.min()) / (back.max() - back.min())
    return out


@pytest.mark.parametrize("mode", ["low", "high"])
@pytest.mark.parametrize("shape", [(32, 32), (24, 40), (31, 33)])
def test_fft_filters_match_numpy(mode, shape):
    img = np.random.default_rng(0).random((3, *shape))
    ours = fft_filter(torch.from_numpy(img)[None], mode, 0.1)[0].double().numpy()
    assert np.abs(ours - _numpy_fft_filter(img, mode, 0.1)).max() < 1e-6
    assert ours.min() == pytest.approx(0, abs=1e-6) and ours.max() == pytest.approx(1, abs=1e-6)


def test_low_pass_removes_a_high_frequency_stripe_and_high_pass_keeps_it():
    h = w = 32
    stripes = torch.tensor([[(x % 2) * 1.0 for x in range(w)] for _ in range(h)])  # 0.5 cycles/pixel
    ramp = torch.linspace(0, 1, w).repeat(h, 1)  # slow
    img = (stripes + ramp)[None, None].repeat(1, 3, 1, 1)
    low, high = fft_filter(img, "low"), fft_filter(img, "high")
    # the low-pass image no longer alternates between neighbouring columns; the high-pass one does
    assert (low[0, 0, :, 1::2] - low[0, 0, :, 0::2]).abs().mean() < 0.1
    assert (high[0, 0, :, 1::2] - high[0, 0, :, 0::2]).abs().mean() > 0.5
