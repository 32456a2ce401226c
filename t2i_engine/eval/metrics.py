"""Set-level measurements on feature vectors.

PRDC (Naeem et al. 2020, "Reliable Fidelity and Diversity Metrics for Generative Models") and
the Vendi score (Friedman & Dieng 2023) are written here (each a few lines, checked against
hand-computed cases in tests/eval/test_metrics.py); FID and KID come from torchmetrics, fed
with features we computed once so every metric of a set shares one feature pass.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F


def prdc(real: torch.Tensor, fake: torch.Tensor, k: int = 5) -> dict[str, float]:
    """Precision, recall, density, coverage of `fake` [M, D] against `real` [N, D].

    A real point's radius is the distance to its k-th nearest other real point (a fake point's,
    among fakes). precision: share of fakes inside some real ball; recall: share of reals
    inside some fake ball; density: mean over fakes of (real balls containing it) / k;
    coverage: share of reals whose ball holds at least one fake.
    """
    if len(real) <= k or len(fake) <= k:
        raise ValueError(f"PRDC with k={k} needs more than {k} points on each side (got {len(real)} real, {len(fake)} synthetic)")
    real, fake = real.double(), fake.double()
    r_real = _kth_neighbour_distance(real, k)
    r_fake = _kth_neighbour_distance(fake, k)
    d = torch.cdist(real, fake)  # [N, M]
    inside_real = d <= r_real[:, None]  # fake j inside real ball i
    return {
        "precision": inside_real.any(0).double().mean().item(),
        "recall": (d <= r_fake[None, :]).any(1).double().mean().item(),
        "density": (inside_real.sum(0).double() / k).mean().item(),
        "coverage": (d.min(1).values <= r_real).double().mean().item(),
    }


def _kth_neighbour_distance(x: torch.Tensor, k: int) -> torch.Tensor:
    d = torch.cdist(x, x)
    return d.kthvalue(k + 1, dim=1).values  # +1: the point itself sits at distance 0


def vendi(features: torch.Tensor) -> float:
    """exp(entropy of the eigenvalues of K/n), K the cosine-similarity matrix: the effective
    number of distinct items (1 for n copies of one point, n for n orthogonal points)."""
    x = F.normalize(features.double(), dim=1)
    eig = torch.linalg.eigvalsh(x @ x.T / len(x)).clamp(min=0)
    eig = eig[eig > 1e-12]
    return torch.exp(-(eig * eig.log()).sum()).item()


def pairwise_diversity(features: torch.Tensor) -> float:
    """Mean distance between distinct pairs of L2-normalised features (0: all alike, up to 2)."""
    x = F.normalize(features.double(), dim=1)
    n = len(x)
    if n < 2:
        return float("nan")
    return (torch.cdist(x, x).sum() / (n * (n - 1))).item()


class _Precomputed(torch.nn.Module):
    """torchmetrics' documented custom-extractor hook, given features instead of images."""

    def __init__(self, dim: int):
        super().__init__()
        self.num_features = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def fid(real: torch.Tensor, fake: torch.Tensor) -> float:
    from torchmetrics.image.fid import FrechetInceptionDistance

    metric = FrechetInceptionDistance(feature=_Precomputed(real.shape[1]))
    metric.update(real.double(), real=True)
    metric.update(fake.double(), real=False)
    return metric.compute().item()


def kid(real: torch.Tensor, fake: torch.Tensor, seed: int = 0) -> tuple[float, float]:
    """KID mean and standard deviation over 100 subsets of up to 1,000 points per side."""
    from torchmetrics.image.kid import KernelInceptionDistance

    size = min(1000, len(real), len(fake))
    with warnings.catch_warnings():  # "will save all extracted features": we give it features
        warnings.simplefilter("ignore", UserWarning)
        metric = KernelInceptionDistance(feature=_Precomputed(real.shape[1]), subset_size=size)
    metric.update(real.double(), real=True)
    metric.update(fake.double(), real=False)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        mean, std = metric.compute()
    return mean.item(), std.item()


def clip_score(image_features: torch.Tensor, text_features: torch.Tensor) -> float:
    """CLIPScore as torchmetrics defines it: 100 * max(cos(image, text), 0), averaged."""
    cos = F.cosine_similarity(image_features.double(), text_features.double(), dim=1)
    return (100 * cos.clamp(min=0)).mean().item()
