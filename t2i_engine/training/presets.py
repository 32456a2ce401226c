"""Training settings: the `paper` and `small` presets, and their image transforms.

`paper` is the protocol of ../PAPER (Adamkiewicz et al. 2026): ResNet-50 from scratch, Adam
1e-3, batch 1024, 80 epochs with 5 linear warm-up epochs from 1e-5x, per-iteration cosine to
1e-8, grad-norm clip 1.0, no weight decay; RandomResizedCrop 224 (bicubic), one of {grayscale,
solarize(0.5), Gaussian blur k7 sigma 0.2-2}, colour jitter 0.3/0.3/0.3, h-flip, ImageNet
normalisation, CutMix on every batch; test: resize 224 (bicubic), centre crop 224. Model
selection by the lowest validation loss.

`small` trains the small CNN on 32 px digits in well under a minute on 2 CPU cores: random
shifts of up to 2 pixels, no flips (a mirrored 2 is not a 2), no CutMix.

The validation split is carved from the training data by a hash of each sample's key, so it
is the same on every run and never touches the real test set.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from ..errors import InputError

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class TrainConfig:
    arch: str
    image_size: int
    epochs: int
    batch_size: int
    lr: float
    warmup_epochs: float
    warmup_start_factor: float
    min_lr: float
    grad_clip: float | None
    weight_decay: float
    augment: str  # "paper" | "shift"
    cutmix: bool
    normalize: bool  # ImageNet mean/std (the small CNN normalises inside)
    val_fraction: float
    shuffle_buffer: int
    workers: int
    seed: int = 0
    shuffle_labels: int | None = None  # the leakage control: a seed permuting labels across samples
    precision: str = "auto"  # auto (bf16 autocast on a GPU, fp32 on a CPU) | bf16 | fp32
    memory_format: str = "auto"  # auto (channels_last on a GPU) | channels_last | contiguous

    def use_bf16(self, device_type: str) -> bool:
        return self.precision == "bf16" or (self.precision == "auto" and device_type == "cuda")

    def use_channels_last(self, device_type: str) -> bool:
        return self.memory_format == "channels_last" or (self.memory_format == "auto" and device_type == "cuda")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


PRESETS = {
    "paper": TrainConfig(
        arch="resnet50",
        image_size=224,
        epochs=80,
        batch_size=1024,
        lr=1e-3,
        warmup_epochs=5,
        warmup_start_factor=1e-5,
        min_lr=1e-8,
        grad_clip=1.0,
        weight_decay=0.0,
        augment="paper",
        cutmix=True,
        normalize=True,
        val_fraction=0.02,
        shuffle_buffer=10_000,
        workers=8,
    ),
    "small": TrainConfig(
        arch="small-cnn",
        image_size=32,
        epochs=30,
        batch_size=128,
        lr=3e-3,
        warmup_epochs=1,
        warmup_start_factor=1e-2,
        min_lr=1e-6,
        grad_clip=None,
        weight_decay=0.0,
        augment="shift",
        cutmix=False,
        normalize=False,
        val_fraction=0.1,
        shuffle_buffer=2_000,
        workers=0,
    ),
}

# flag -> (type, lo, hi) for the overrides the CLI exposes
OVERRIDES = {
    "arch": (str, None, None),
    "image_size": (int, 8, 4096),
    "epochs": (int, 1, 10_000),
    "batch_size": (int, 1, 65_536),
    "lr": (float, 1e-9, 10.0),
    "warmup_epochs": (float, 0, 10_000),
    "val_fraction": (float, 0.0, 0.5),
    "workers": (int, 0, 256),
    "seed": (int, 0, 2**63 - 1),
    "shuffle_buffer": (int, 1, 10_000_000),
    "shuffle_labels": (int, 0, 2**63 - 1),
    "precision": (("auto", "bf16", "fp32"), None, None),
    "memory_format": (("auto", "channels_last", "contiguous"), None, None),
}


def resolve_config(preset: str, overrides: dict) -> TrainConfig:
    if preset not in PRESETS:
        raise InputError("--preset", preset, f"expected one of {', '.join(PRESETS)}")
    values = {}
    for key, raw in overrides.items():
        if raw is None:
            continue
        kind, lo, hi = OVERRIDES[key]
        flag = "--" + key.replace("_", "-")
        if isinstance(kind, tuple):
            if raw not in kind:
                raise InputError(flag, raw, f"expected one of {', '.join(kind)}")
            values[key] = raw
            continue
        try:
            value = kind(raw)
        except (TypeError, ValueError):
            raise InputError(
                flag, raw, f"expected a{'n integer' if kind is int else ' number' if kind is float else ' name'}"
            ) from None
        if lo is not None and not (lo <= value <= hi) or (kind is float and value != value):
            raise InputError(flag, raw, f"expected a value from {lo} to {hi}")
        values[key] = value
    config = dataclasses.replace(PRESETS[preset], **values)
    if "warmup_epochs" not in values and config.warmup_epochs >= config.epochs:
        # a short run keeps the preset's warm-up only where it leaves epochs to decay in
        warmup = 0.0 if config.epochs < 2 else min(config.warmup_epochs, config.epochs / 2)
        config = dataclasses.replace(config, warmup_epochs=warmup)
    if config.warmup_epochs >= config.epochs and config.warmup_epochs > 0:
        raise InputError("--warmup-epochs", config.warmup_epochs, f"expected fewer than --epochs ({config.epochs})")
    return config


def lr_factor(step: int, total_steps: int, warmup_steps: int, start_factor: float, min_ratio: float) -> float:
    """Per-iteration schedule: linear warm-up from start_factor to 1, then cosine down to min_ratio."""
    import math

    if step < warmup_steps:
        return start_factor + (1 - start_factor) * step / warmup_steps
    span = max(1, total_steps - warmup_steps)
    t = min(1.0, (step - warmup_steps) / span)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * t))


def train_transform(config: TrainConfig):
    from torchvision.transforms import v2

    size = config.image_size
    tail = [_ToFloat()]
    if config.normalize:
        tail.append(v2.Normalize(IMAGENET_MEAN, IMAGENET_STD))
    if config.augment == "paper":
        bicubic = v2.InterpolationMode.BICUBIC
        return v2.Compose(
            [
                v2.RandomResizedCrop(size, interpolation=bicubic),
                v2.RandomChoice([v2.Grayscale(3), v2.RandomSolarize(128, p=1.0), v2.GaussianBlur(7, (0.2, 2.0))]),
                v2.ColorJitter(0.3, 0.3, 0.3),
                v2.RandomHorizontalFlip(),
                *tail,
            ]
        )
    # "shift": resize and centre-crop to the training size (as at test time), then move by up to 2 pixels.
    return v2.Compose([_ResizeIfNeeded(size, crop=True), *tail, _RandomShift(2)])


def eval_transform(config: TrainConfig):
    from torchvision.transforms import v2

    size = config.image_size
    steps = [_ResizeIfNeeded(size, crop=True), _ToFloat()]
    if config.normalize:
        steps.append(v2.Normalize(IMAGENET_MEAN, IMAGENET_STD))
    return v2.Compose(steps)


class _ToFloat(torch.nn.Module):
    """PIL RGB -> float [3, H, W] in [0, 1]; v2.ToImage + ToDtype do the same at several
    times the cost per small image."""

    def forward(self, image) -> torch.Tensor:
        import numpy as np

        return torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1).float().div_(255)


class _ResizeIfNeeded(torch.nn.Module):
    """Bicubic resize of the shorter side (and a centre crop, or a squash without `crop`) to
    `size`; images already size x size pass untouched (the common case, and a cheap one)."""

    def __init__(self, size: int, crop: bool = False):
        super().__init__()
        from torchvision.transforms import v2

        bicubic = v2.InterpolationMode.BICUBIC
        self.size = size
        self.resize = (
            v2.Compose([v2.Resize(size, interpolation=bicubic), v2.CenterCrop(size)])
            if crop
            else v2.Resize((size, size), interpolation=bicubic)
        )

    def forward(self, image):
        return image if image.size == (self.size, self.size) else self.resize(image)


class _RandomShift(torch.nn.Module):
    def __init__(self, pixels: int):
        super().__init__()
        self.pixels = pixels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.pixels
        pad = torch.nn.functional.pad(x, (p, p, p, p))
        dx, dy = torch.randint(0, 2 * p + 1, (2,)).tolist()
        return pad[:, dy : dy + x.shape[1], dx : dx + x.shape[2]]
