"""Probes: altered copies of a labelled set, to train or test on.

- FFT low-pass / high-pass (the paper's texture-vs-shape probe): per image and channel, the
  centred 2-D spectrum is kept inside (low) or outside (high) a centred square mask, inverted,
  and min-max rescaled per channel to [0, 1]. The cutoff is in cycles per pixel: 0.1 keeps
  frequencies up to a tenth of the sampling rate (Nyquist is 0.5), i.e. spectrum offsets
  |k| <= floor(0.1 * size) from the centre along each axis.
- VAE round trip: real images encoded and decoded by a registry model's VAE (the latent's
  mode, no sampling), to separate what the VAE loses from what the generator does.

Each writes an ImageFolder tree (lossless PNG) with the same keys and class ids, and a
t2i-source.json naming the probe and the set it came from.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from ..devices import resolve_device
from ..errors import InputError
from ..files import check_writable
from ..models.pipelines import bundled_path, component_folder
from ..models.registry import get_model
from ..training.sources import SOURCE_FILE, open_set, write_image_folder

PROBES = ("fft-low", "fft-high", "vae")


def fft_filter(images: torch.Tensor, mode: str, cutoff: float = 0.1) -> torch.Tensor:
    """[N, C, H, W] float -> the filtered images, each channel min-max rescaled to [0, 1]."""
    if mode not in ("low", "high"):
        raise ValueError(f"mode must be low or high, not {mode!r}")
    h, w = images.shape[-2:]
    spectrum = torch.fft.fftshift(torch.fft.fft2(images.double()), dim=(-2, -1))
    mask = torch.zeros(h, w, dtype=torch.bool)
    ry, rx = int(cutoff * h), int(cutoff * w)
    mask[h // 2 - ry : h // 2 + ry + 1, w // 2 - rx : w // 2 + rx + 1] = True
    if mode == "high":
        mask = ~mask
    out = torch.fft.ifft2(torch.fft.ifftshift(spectrum * mask, dim=(-2, -1))).real
    lo = out.amin(dim=(-2, -1), keepdim=True)
    hi = out.amax(dim=(-2, -1), keepdim=True)
    return ((out - lo) / (hi - lo).clamp(min=1e-12)).float()


def write_probe(
    data_path: str | Path,
    out: str | Path,
    probe: str,
    *,
    cutoff: float = 0.1,
    vae_model: str | None = None,
    weights: str | None = None,
    device: str = "cpu",
    batch_size: int = 32,
) -> Path:
    if probe not in PROBES:
        raise InputError("probe", probe, f"expected one of {', '.join(PROBES)}")
    if probe == "vae" and not vae_model:
        raise InputError(
            "--vae-model", vae_model, "the vae probe needs a registry model whose VAE to use (e.g. digits, sd15)"
        )
    if not 0 < cutoff < 0.5:
        raise InputError("--cutoff", cutoff, "expected a frequency between 0 and 0.5 cycles per pixel")
    out = Path(out)
    if not out.exists():
        check_writable(out, "--out")  # before the data is read
    data = open_set(data_path, "data")
    origin = {**data.origin, "probe": probe, "probe_of": str(data.path)}
    if probe.startswith("fft"):
        origin["cutoff"] = cutoff
    else:
        origin["vae_model"] = vae_model
    if out.exists():  # written whole or not at all (write_image_folder): a rerun finds it done
        if _stored_origin(out) == json.loads(json.dumps(origin)):
            return out
        raise InputError(
            "--out",
            str(out),
            "expected a new folder, or the finished output of this same probe (this one holds something else)",
        )
    transform = _fft(probe, cutoff) if probe.startswith("fft") else _vae(vae_model, weights, device)
    # Engine keys are unique file names; folder keys are "<class>/<name>".
    items = ((it.key.split("/")[-1], it.class_id, px) for it, px in _probed(data.read(), transform, batch_size))
    return write_image_folder(out, items, list(data.class_ids), data.class_names, origin)


def _stored_origin(folder: Path) -> dict | None:
    try:
        return json.loads((folder / SOURCE_FILE).read_text())
    except (OSError, ValueError):
        return None


def _probed(items, transform, batch_size: int):
    """(item, probed uint8 HWC pixels) in order; images go through in batches of one size."""
    batch, pixels = [], []

    def flush():
        x = torch.stack(pixels).float() / 255
        y = (transform(x).clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
        done = list(zip(batch, y, strict=True))
        batch.clear()
        pixels.clear()
        return done

    for item in items:
        px = torch.from_numpy(np.array(item.image)).permute(2, 0, 1)
        if pixels and (px.shape != pixels[0].shape or len(batch) == batch_size):
            yield from flush()
        batch.append(item)
        pixels.append(px)
    if batch:
        yield from flush()


def _fft(probe: str, cutoff: float):
    mode = "low" if probe == "fft-low" else "high"
    return lambda x: fft_filter(x, mode, cutoff)


def _vae(model_name: str, weights: str | None, device: str):
    from diffusers import AutoencoderKL

    spec = get_model(model_name, "--vae-model")
    source = weights or bundled_path(spec) or spec.hub_id
    dev = resolve_device(device)
    try:
        folder = component_folder(spec, source, "vae") if Path(str(source)).is_dir() else None
        vae = (
            (
                AutoencoderKL.from_pretrained(folder)
                if folder
                else AutoencoderKL.from_pretrained(source, subfolder="vae")
            )
            .to(dev)
            .eval()
        )
    except (OSError, ValueError) as e:
        raise InputError(
            "--vae-model",
            model_name,
            f"cannot load its VAE from {source} ({type(e).__name__}); "
            f"pass --weights with a local diffusers folder, or run `hf download {spec.hub_id}`",
        ) from None

    @torch.inference_mode()
    def roundtrip(x: torch.Tensor) -> torch.Tensor:
        z = vae.encode(x.to(dev) * 2 - 1).latent_dist.mode()
        return ((vae.decode(z).sample + 1) / 2).float().cpu()

    return roundtrip
