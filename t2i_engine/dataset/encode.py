"""Image encoding, run in the writer's worker processes.

Kept free of torch and of the rest of the engine so that spawned workers start in a fraction of
a second. Input: uint8 `[B, H, W, 3]`; output: one (bytes, sha256 hex) per image.

A recipe's `output_size` resizes each image here, before it is encoded, with PIL's Lanczos filter
(a windowed sinc, 3 lobes): PIL widens a reducing filter's support by the scale factor, so every
output pixel averages the input pixels it covers and detail finer than the new pixel grid is
removed rather than folded back into false patterns (aliasing: what a strided or nearest-neighbour
resize does, and `torch.nn.functional.interpolate` without antialias=True; Parmar et al. 2022,
"On Aliased Resizing and Surprising Subtleties in GAN Evaluation"). PIL filters 8-bit images in
fixed point, so the same image and size give the same bytes on every machine.
"""

from __future__ import annotations

import hashlib
import io

import numpy as np
from PIL import Image

PIL_FORMATS = {"jpeg": "JPEG", "png": "PNG", "webp": "WEBP"}
RESIZE_FILTER = "lanczos"  # recorded in the recipe hash and each sample's JSON when output_size is set
LANCZOS_LOBES = 3  # the filter's support, in input pixels at scale 1 (PIL's Lanczos: a = 3)


def resize(image: Image.Image, size: tuple[int, int] | None) -> Image.Image:
    """`image` at size (height, width) with the antialiasing Lanczos filter; unchanged for None
    or its own size."""
    if size is None or (image.height, image.width) == tuple(size):
        return image
    return image.resize((size[1], size[0]), Image.Resampling.LANCZOS)


def resize_flops(generated: tuple[int, int], stored: tuple[int, int], channels: int = 3) -> int:
    """FLOPs of one image's resize, counted as PIL runs it: two separable passes (width, then
    height), each output value a weighted sum over the filter's support, which a reduction
    widens by its scale (2 * 3 lobes * scale taps); 1 multiply-add = 2 FLOPs, as models/flops.py."""
    (gh, gw), (sh, sw) = generated, stored
    if (gh, gw) == (sh, sw):
        return 0
    taps_w = 2 * LANCZOS_LOBES * max(gw / sw, 1.0)
    taps_h = 2 * LANCZOS_LOBES * max(gh / sh, 1.0)
    return round(2 * channels * (gh * sw * taps_w + sh * sw * taps_h))


def encode_image(pixels: np.ndarray, fmt: str, quality: int, size: tuple[int, int] | None = None) -> bytes:
    buf = io.BytesIO()
    options = {"quality": quality} if fmt in ("jpeg", "webp") else {}
    resize(Image.fromarray(pixels, "RGB"), size).save(buf, PIL_FORMATS[fmt], **options)
    return buf.getvalue()


def encode_batch(
    images: np.ndarray, fmt: str, quality: int, size: tuple[int, int] | None = None
) -> list[tuple[bytes, str]]:
    out = []
    for pixels in images:
        data = encode_image(pixels, fmt, quality, size)
        out.append((data, hashlib.sha256(data).hexdigest()))
    return out
