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
    coverage: share of reals whose nearest fake lies inside its ball. "Inside" is strictly
    closer than the radius, as in the authors' reference code. Distances are computed in
    blocks, so 100k points per side need no N x M matrix.
    """
    if len(real) <= k or len(fake) <= k:
        raise ValueError(
            f"PRDC with k={k} needs more than {k} points on each side (got {len(real)} real, {len(fake)} synthetic)"
        )
    real, fake = real.double(), fake.double()
    r_real, r_fake = _kth_neighbour_distance(real, k), _kth_neighbour_distance(fake, k)
    step = _block(real, fake)
    in_some_real, real_balls = [], []
    for j in range(0, len(fake), step):
        inside = torch.cdist(real, fake[j : j + step]) < r_real[:, None]  # [N, b]: fake j inside real ball i
        in_some_real.append(inside.any(0))
        real_balls.append(inside.sum(0))
    in_some_fake, covered = [], []
    for i in range(0, len(real), step):
        d = torch.cdist(real[i : i + step], fake)  # [b, M]
        in_some_fake.append((d < r_fake[None, :]).any(1))
        covered.append(d.min(1).values < r_real[i : i + step])
    return {
        "precision": torch.cat(in_some_real).double().mean().item(),
        "recall": torch.cat(in_some_fake).double().mean().item(),
        "density": (torch.cat(real_balls).double() / k).mean().item(),
        "coverage": torch.cat(covered).double().mean().item(),
    }


def _block(*sets: torch.Tensor, elements: int = 1 << 24) -> int:
    return max(1, elements // max(len(s) for s in sets))


def _kth_neighbour_distance(x: torch.Tensor, k: int) -> torch.Tensor:
    step = _block(x)
    # k + 1: the point itself sits at distance 0
    return torch.cat([torch.cdist(x[i : i + step], x).kthvalue(k + 1, dim=1).values for i in range(0, len(x), step)])


def vendi(features: torch.Tensor) -> float:
    """exp(entropy of the eigenvalues of K/n), K the cosine-similarity matrix: the effective
    number of distinct items (1 for n copies of one point, n for n orthogonal points). With
    more points than dimensions the D x D matrix X^T X / n has the same non-zero eigenvalues."""
    x = F.normalize(features.double(), dim=1)
    gram = x @ x.T if len(x) <= x.shape[1] else x.T @ x
    eig = torch.linalg.eigvalsh(gram / len(x)).clamp(min=0)
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
