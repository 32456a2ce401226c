"""Classifier architectures by name: the small CNN, torchvision's and timm's models.

The paper's names have aliases (`vit-ti/16`, `convnext-t`, `swin-t`, `resnet-50`); any other
name is tried in torchvision's model registry, then timm's. Every model is built from scratch
(no pretrained weights: the point is to learn from the synthetic images alone).
"""

from __future__ import annotations

from torch import nn

from ..errors import InputError
from .small_cnn import SmallCNN

ALIASES = {
    "small-cnn": "small-cnn",
    "resnet-18": "resnet18",
    "resnet-50": "resnet50",
    "vit-ti/16": "vit_tiny_patch16_224",
    "vit-ti": "vit_tiny_patch16_224",
    "convnext-t": "convnext_tiny",
    "swin-t": "swin_tiny_patch4_window7_224",
}
# What the paper trains; the test suite builds each of these.
PAPER_ARCHS = ("resnet50", "resnet18", "vit_tiny_patch16_224", "convnext_tiny", "swin_tiny_patch4_window7_224")


def canonical(name: str) -> str:
    return ALIASES.get(name.lower(), name)


def build_model(name: str, num_classes: int, image_size: int) -> nn.Module:
    arch = canonical(name)
    if arch == "small-cnn":
        return SmallCNN(num_classes)
    import torchvision

    if arch in torchvision.models.list_models(module=torchvision.models):
        return torchvision.models.get_model(arch, weights=None, num_classes=num_classes)
    import timm

    if timm.is_model(arch):
        kwargs = {}
        if image_size != 224 and any(k in arch for k in ("vit", "swin", "deit")):
            kwargs["img_size"] = image_size  # patch grids are fixed at build time
        return timm.create_model(arch, pretrained=False, num_classes=num_classes, **kwargs)
    raise InputError(
        "--arch",
        name,
        f"expected small-cnn, one of {', '.join(sorted(ALIASES))}, "
        "or a torchvision / timm model name (e.g. resnet50, vit_tiny_patch16_224)",
    )


def check_arch(name: str) -> str:
    """Fail fast, before any data is read, on a name neither library knows."""
    arch = canonical(name)
    if arch == "small-cnn":
        return arch
    import timm
    import torchvision

    if arch in torchvision.models.list_models(module=torchvision.models) or timm.is_model(arch):
        return arch
    build_model(name, 2, 224)  # raises the InputError
    return arch
