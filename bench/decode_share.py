"""The decode's share of an image's FLOPs, VAE against tiny decoder, and the bytes an image takes
stored at the generated size and at the training size (bench/RESULTS.md, issue 33).

    python bench/decode_share.py [--out bench/results/cpu-DATE/decode-share.json]

FLOPs: counted by models/flops.py on the real architectures (assets/configs; the TAESD family's
published configs in assets/decoder-configs) with random weights on the meta device under fake
tensors, as bench does: SD1.5 (512 px), SDXL (1024) and FLUX.1-schnell (1024) at their registry
settings (the scheduler's own number of denoiser calls, x2 with CFG) and at 4 steps without CFG
(a few-step student or adapter), plus the embedded digits model (32 px) and its student; the
decode by the model's VAE and by its tiny decoder, and the Lanczos resize to 64 px.

Bytes: no model's images can be made here (no weights), so the two photographs scikit-learn
ships (china.jpg, flower.jpg: 427x640) stand in for a generation: a centred 427 px square resized
to 512 px (a 1.2x enlargement: a little smoother than a generation, so the 512 px bytes are, if
anything, low), then to 64 px with the engine's resize, encoded as generate encodes (JPEG 95, the
default; PNG; WebP 95). Text encoding is left out of the FLOPs (cached per prompt).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from datetime import date
from pathlib import Path

import numpy as np
import torch

from t2i_engine.dataset.encode import encode_image, resize, resize_flops
from t2i_engine.models.architectures import architecture, build_random_pipeline
from t2i_engine.models.decoders import load_tiny_decoder, random_tiny_decoder
from t2i_engine.models.flops import decode_flops, pipeline_flops, uses_cfg
from t2i_engine.models.pipelines import apply_registry_settings, load_pipeline
from t2i_engine.models.registry import MODELS, tiny_decoder

HUB_MODELS = ("sd15", "sdxl", "flux-schnell")
STORED = 64  # the paper's training size (Tiny ImageNet)


def _calls(pipe, spec, steps: int) -> int:
    """Denoiser calls of `steps` steps of the model's scheduler (PNDM: 51 for 50)."""
    kw = {"mu": 1.0} if getattr(pipe.scheduler.config, "use_dynamic_shifting", False) else {}
    pipe.scheduler.set_timesteps(steps, **kw)
    return len(pipe.scheduler.timesteps)


def _rows(name: str, pipe, tiny, steps_cfg: list[tuple[int, bool]], text=None) -> list[dict]:
    spec = MODELS[name]
    h, w = spec.resolution
    f = pipe.vae_scale_factor
    vae = decode_flops(pipe.vae, (h // f, w // f))
    small = decode_flops(tiny, (h // f, w // f))
    rows = []
    for steps, cfg in steps_cfg:
        counted = pipeline_flops(pipe, spec.family, steps=steps, cfg=cfg, height=h, width=w, text=text)
        denoising = counted["per_image"] - counted["vae_decode"]
        assert counted["vae_decode"] == vae
        rows.append(
            {
                "model": name,
                "resolution": [h, w],
                "denoiser_calls": steps,
                "cfg": cfg,
                "denoising_flops": denoising,
                "vae_decode_flops": vae,
                "tiny_decoder": tiny_decoder(spec).name,
                "tiny_decode_flops": small,
                "vae_share": vae / (denoising + vae),
                "tiny_share": small / (denoising + small),
                "resize_to_64_flops": resize_flops((h, w), (STORED, STORED)) if h > STORED else 0,
                "per_image_vae": denoising + vae,
                "per_image_tiny": denoising + small,
            }
        )
    return rows


def flops_table() -> list[dict]:
    rows = []
    for name in HUB_MODELS:
        spec = MODELS[name]
        pipe = build_random_pipeline(spec, torch.device("meta"), torch.bfloat16)
        apply_registry_settings(spec, pipe)
        with torch.device("meta"):
            tiny = random_tiny_decoder(tiny_decoder(spec).name, torch.bfloat16)
        text = architecture(name)["text"] if spec.family in ("sd3", "flux") else None
        cfg = uses_cfg(pipe, spec, spec.guidance)
        settings = [(_calls(pipe, spec, spec.steps), cfg)]
        if (spec.steps, cfg) != (4, False):
            settings.append((4, False))
        rows += _rows(name, pipe, tiny, settings, text)
    cpu = torch.device("cpu")
    pipe = load_pipeline(MODELS["digits"], None, cpu, torch.float32)
    tiny = load_tiny_decoder(MODELS["digits"], {"name": "digits-taesd"}, pipe.vae, cpu, torch.float32)
    rows += _rows("digits", pipe, tiny, [(15, True), (2, False), (1, False)])
    return rows


def bytes_table() -> list[dict]:
    from PIL import Image
    from sklearn.datasets import load_sample_images

    photos = load_sample_images()
    rows = []
    for fname, pixels in zip(photos.filenames, photos.images):
        image = Image.fromarray(pixels)
        side = min(image.size)
        left, top = (image.width - side) // 2, (image.height - side) // 2
        square = image.crop((left, top, left + side, top + side)).resize((512, 512), Image.Resampling.LANCZOS)
        for size in (512, STORED):
            arr = np.asarray(resize(square, (size, size)))
            for fmt, quality in (("jpeg", 95), ("png", 95), ("webp", 95)):
                rows.append(
                    {
                        "photo": Path(fname).name,
                        "size": size,
                        "format": fmt,
                        "quality": quality if fmt != "png" else None,
                        "bytes": len(encode_image(arr, fmt, quality)),
                    }
                )
    return rows


def markdown(flops: list[dict], stored: list[dict]) -> str:
    lines = [
        "| model | px | denoiser calls | CFG | denoising GFLOPs | VAE decode GFLOPs | VAE share | tiny decoder | "
        "tiny decode GFLOPs | tiny share | image with tiny vs VAE | resize to 64 px GFLOPs |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in flops:
        lines.append(
            f"| {r['model']} | {r['resolution'][0]} | {r['denoiser_calls']} | {'yes' if r['cfg'] else 'no'} | "
            f"{r['denoising_flops'] / 1e9:,.4g} | {r['vae_decode_flops'] / 1e9:,.4g} | {r['vae_share']:.1%} | "
            f"{r['tiny_decoder']} | {r['tiny_decode_flops'] / 1e9:,.4g} | {r['tiny_share']:.2%} | "
            f"{r['per_image_vae'] / r['per_image_tiny']:.2f}x fewer | {r['resize_to_64_flops'] / 1e9:.4f} |"
        )
    lines += ["", "| photo | format | bytes at 512 px | bytes at 64 px | ratio |", "|---|---|---|---|---|"]
    by = {(r["photo"], r["format"], r["size"]): r["bytes"] for r in stored}
    for photo, fmt, _ in sorted({(r["photo"], r["format"], 0) for r in stored}):
        big, small = by[(photo, fmt, 512)], by[(photo, fmt, STORED)]
        lines.append(f"| {photo} | {fmt} | {big:,} | {small:,} | {big / small:.0f}x |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=None, help="write the JSON here (default: print only)")
    args = ap.parse_args()
    flops, stored = flops_table(), bytes_table()
    record = {
        "date": date.today().isoformat(),
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
        "versions": {"torch": torch.__version__, "python": sys.version.split()[0]},
        "note": __doc__,
        "flops": flops,
        "bytes": stored,
    }
    print(markdown(flops, stored))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
