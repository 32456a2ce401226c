"""The real data behind the embedded model: scikit-learn's handwritten digits.

`load_digits` ships inside scikit-learn: 1,797 real 8x8 grey images of the digits 0-9 (ink is
high). One fixed, stratified split (seed 0) divides them into a generator-training split of
1,200 images and a held-out real test split of 597 images; the generator, its VAE and its text
encoder never see the test split, nor does the judge.

Images become float tensors [N, 3, 32, 32] in [0, 1]: ink scaled from 0..16 to 0..1, upsampled
8x8 -> 32x32 with bilinear interpolation (torch `F.interpolate`, align_corners=False, no
antialiasing), the grey channel repeated three times. Labels are the digits 0-9, which are also
the class indices of the built-in class set `digits`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..engine.classes import load_classes
from .sources import write_image_folder

SPLIT_SEED = 0
TEST_SIZE = 597
SIZE = 32


@dataclass(frozen=True)
class DigitsSplit:
    train_images: torch.Tensor  # [1200, 3, 32, 32] in [0, 1]
    train_labels: torch.Tensor  # [1200] int64
    test_images: torch.Tensor  # [597, 3, 32, 32] in [0, 1]
    test_labels: torch.Tensor  # [597] int64


def upsample(images_8x8: torch.Tensor) -> torch.Tensor:
    """[N, 8, 8] ink in 0..16 -> [N, 3, 32, 32] in [0, 1]."""
    x = (images_8x8.float() / 16.0).unsqueeze(1)
    x = F.interpolate(x, size=(SIZE, SIZE), mode="bilinear", align_corners=False)
    return x.clamp(0, 1).repeat(1, 3, 1, 1)


def load_split() -> DigitsSplit:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    idx_train, idx_test = train_test_split(
        range(len(digits.target)), test_size=TEST_SIZE, stratify=digits.target, random_state=SPLIT_SEED
    )
    images, labels = torch.from_numpy(digits.images), torch.from_numpy(digits.target).long()
    return DigitsSplit(upsample(images[idx_train]), labels[idx_train], upsample(images[idx_test]), labels[idx_test])


def write_real_digits(out_dir) -> dict:
    """The real digits as two ImageFolder trees, OUT/train (1,200) and OUT/test (597), 32x32 PNGs
    named by their index in scikit-learn's set; what `train`/`eval`/`analyze` read as real data."""
    from pathlib import Path

    out_dir = Path(out_dir)
    classes = load_classes("digits")
    ids, names = [c.id for c in classes], {c.id: c.name for c in classes}
    split = load_split()
    written = {}
    for name, images, labels in (
        ("train", split.train_images, split.train_labels),
        ("test", split.test_images, split.test_labels),
    ):
        pixels = (images * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
        origin = {
            "kind": "real",
            "name": f"digits-real-{name}",
            "source": "sklearn.datasets.load_digits, split seed 0",
        }
        items = ((f"{i:06d}", ids[label], pixels[i]) for i, label in enumerate(labels.tolist()))
        written[name] = write_image_folder(out_dir / name, items, ids, names, origin)
    return written
