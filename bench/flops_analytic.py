"""An independent count of SD1.5's UNet FLOPs at 512 px (issue 37, item 2): the convolutions,
linear layers and attention products written out by hand from the UNet's config, checked against
what the engine counts (models/flops.py: torch's per-op FLOP formulas on fake tensors, the count
`plan`, `bench` and the MFU figures use).

    python bench/flops_analytic.py [--out FILE]

Convention, the same as torch's FlopCounterMode: a multiply-add is 2 FLOPs; convolutions,
matrix products (linear layers, Q.K^T, attention.V) are counted; norms, activations, softmax,
additions and resampling are not. Per image with classifier-free guidance: 2 UNet forwards of
batch 1 per step. The VAE decode is not counted here (the engine's figure for it is printed
beside, labelled as such). Runs on a CPU in seconds (no weights: the architecture on the meta
device for the engine's count).
"""

from __future__ import annotations

import argparse
import json
from datetime import date
from pathlib import Path

import t2i_engine

CONFIG = Path(t2i_engine.__file__).parent / "assets" / "configs" / "sd15" / "denoiser.json"


def conv(c_in: int, c_out: int, k: int, h: int, w: int) -> int:
    """A k x k convolution producing c_out x h x w."""
    return 2 * c_in * c_out * k * k * h * w


def linear(d_in: int, d_out: int, tokens: int) -> int:
    return 2 * d_in * d_out * tokens


def resnet(c_in: int, c_out: int, h: int, w: int, temb: int) -> int:
    """ResnetBlock2D: conv1 3x3, the time embedding's projection, conv2 3x3, a 1x1 shortcut when
    the channel count changes."""
    flops = conv(c_in, c_out, 3, h, w) + linear(temb, c_out, 1) + conv(c_out, c_out, 3, h, w)
    return flops + (conv(c_in, c_out, 1, h, w) if c_in != c_out else 0)


def transformer(c: int, h: int, w: int, context: int, context_dim: int) -> int:
    """Transformer2DModel with one BasicTransformerBlock (SD1.5: use_linear_projection false, so
    proj_in/proj_out are 1x1 convolutions): self-attention, cross-attention to the text, GEGLU
    feed-forward (c -> 2 x 4c, then 4c -> c)."""
    n = h * w
    flops = 2 * conv(c, c, 1, h, w)  # proj_in, proj_out
    flops += 4 * linear(c, c, n) + 2 * (2 * n * n * c)  # self: q, k, v, out; Q.K^T and A.V over all heads
    flops += 2 * linear(c, c, n) + 2 * linear(context_dim, c, context)  # cross: q, out; k, v from the text
    flops += 2 * (2 * n * context * c)  # cross: Q.K^T and A.V
    flops += linear(c, 8 * c, n) + linear(4 * c, c, n)  # GEGLU
    return flops


def unet_forward(cfg: dict, latent: int, context: int) -> dict[str, int]:
    """One forward of batch 1 on a latent x latent input, by part."""
    ch, layers = cfg["block_out_channels"], cfg["layers_per_block"]
    temb, ctx_dim = 4 * ch[0], cfg["cross_attention_dim"]
    parts = {"conv_in_out": 0, "time_embedding": 0, "down": 0, "mid": 0, "up": 0}
    parts["time_embedding"] = linear(ch[0], temb, 1) + linear(temb, temb, 1)
    parts["conv_in_out"] = conv(cfg["in_channels"], ch[0], 3, latent, latent) + conv(
        ch[0], cfg["out_channels"], 3, latent, latent
    )
    size, c_prev, skips = latent, ch[0], [ch[0]]  # the skip connections' channel counts, as diffusers keeps them
    for i, (kind, c) in enumerate(zip(cfg["down_block_types"], ch)):
        for j in range(layers):
            parts["down"] += resnet(c_prev if j == 0 else c, c, size, size, temb)
            if kind.startswith("CrossAttn"):
                parts["down"] += transformer(c, size, size, context, ctx_dim)
            skips.append(c)
        c_prev = c
        if i < len(ch) - 1:  # a 3x3 stride-2 convolution
            size //= 2
            parts["down"] += conv(c, c, 3, size, size)
            skips.append(c)
    c = ch[-1]
    parts["mid"] = 2 * resnet(c, c, size, size, temb) + transformer(c, size, size, context, ctx_dim)
    rev = list(reversed(ch))
    for i, (kind, c) in enumerate(zip(cfg["up_block_types"], rev)):
        for _ in range(layers + 1):
            skip = skips.pop()
            parts["up"] += resnet(c_prev + skip, c, size, size, temb)
            if kind.startswith("CrossAttn"):
                parts["up"] += transformer(c, size, size, context, ctx_dim)
            c_prev = c
        if i < len(rev) - 1:  # nearest 2x, then a 3x3 convolution
            size *= 2
            parts["up"] += conv(c, c, 3, size, size)
    parts["total"] = sum(parts.values())
    return parts


def engine_count(steps: int) -> dict:
    """What the engine counts for the same image (`plan`'s figure)."""
    from t2i_engine.engine.estimate import flops_per_image
    from t2i_engine.engine.recipe import build_recipe

    return flops_per_image(build_recipe({"model": "sd15", "steps": steps, "images_per_class": 1}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    cfg = json.loads(CONFIG.read_text())
    hand = unet_forward(cfg, latent=64, context=77)  # 512 px / 8; CLIP ViT-L's 77 tokens of 768
    engine = engine_count(args.steps)
    forwards = engine["forwards_per_image"]
    record = {
        "date": date.today().isoformat(),
        "model": "sd15 (runwayml/stable-diffusion-v1-5 architecture), 512x512, CFG",
        "steps": args.steps,
        "unet_forward_by_hand": hand,
        "unet_forward_engine": engine["denoiser_forward"],
        "engine_over_hand": round(engine["denoiser_forward"] / hand["total"], 5),
        "forwards_per_image": forwards,
        "denoising_per_image_by_hand": forwards * hand["total"],
        "denoising_per_image_engine": engine["denoising"],
        "vae_decode_engine_only": engine["decode"],
        "per_image_engine": engine["per_image"],
        "note": __doc__,
    }
    print(json.dumps({k: v for k, v in record.items() if k != "note"}, indent=1))
    if args.out:
        args.out.write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
