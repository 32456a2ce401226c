"""Image encoding, run in the writer's worker processes.

Kept free of torch and of the rest of the engine so that spawned workers start in a fraction of
a second. Input: uint8 `[B, H, W, 3]`; output: one (bytes, sha256 hex) per image.
"""

from __future__ import annotations

import hashlib
import io

import numpy as np
from PIL import Image

PIL_FORMATS = {"jpeg": "JPEG", "png": "PNG", "webp": "WEBP"}


def encode_image(pixels: np.ndarray, fmt: str, quality: int) -> bytes:
    buf = io.BytesIO()
    options = {"quality": quality} if fmt in ("jpeg", "webp") else {}
    Image.fromarray(pixels, "RGB").save(buf, PIL_FORMATS[fmt], **options)
    return buf.getvalue()


def encode_batch(images: np.ndarray, fmt: str, quality: int) -> list[tuple[bytes, str]]:
    out = []
    for pixels in images:
        data = encode_image(pixels, fmt, quality)
        out.append((data, hashlib.sha256(data).hexdigest()))
    return out
