"""A tiny decoder for the embedded models' latent space, distilled from their own VAE.

    python -m t2i_engine.training.tiny_decoder --out t2i_engine/assets/digits-taesd

Both embedded models (and their students) share one VAE (`digits-vae`); this trains one
diffusers `AutoencoderTiny` for it, as TAESD is trained for SD's VAE: its decoder maps the same
latents to the VAE decoder's image. The decode is what the engine runs (`decoder: tiny`); the
encoder is trained too, to the VAE's posterior means, so the folder is a whole AutoencoderTiny
(diffusers loads it without warnings) but nothing in the engine encodes with it.

- Shape: the decoder's capacity sits at the latent grid (8x8): 16 channels, four residual
  blocks; then two 2x nearest upsamplings, each followed by one convolution, and the output
  convolution. About 10 MFLOPs a decode against the VAE decoder's 129 (models/flops.py counts
  both): a 3x3 convolution at 32x32 costs 16x one at 8x8, so the full-resolution layers are as
  few and as narrow as the image allows. Three stages of 2x keep the latent-to-pixel factor (4)
  readable from the config as diffusers reads it (2 ** (stages - 1)).
- Latents: the model-space latents the pipelines hand to the decoder, of three kinds: VAE
  posterior samples of the shifted training digits (what the denoisers learnt to make), and the
  latents each embedded model and student generates at its default setting (what the decoder
  will actually see, off the posterior's support where a model is imperfect).
- Targets: the VAE's decode of each latent, clamped to [-1, 1] as the pipelines clamp it; loss
  L1 + 0.25 MSE in pixels (the VAE's own reconstruction loss here). No adversarial term: these
  images are smooth (8x8 digits upsampled), and a judge-free pixel loss keeps the run
  deterministic and short.

Scaling: the AutoencoderTiny config has scaling_factor 1 and shift 0, so the pipelines hand it
the model-space latents unchanged (SD's divides by the factor, SD3's adds the shift), as TAESD
does for SD. Step counts, not wall time, bound training: the same command gives the same weights
on the same torch and CPU.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ..engine.classes import load_classes
from ..models.flops import decode_flops
from ..models.pipelines import load_pipeline
from ..models.registry import get_model
from .digits_data import load_split
from .digits_model import SHIFTS, _log, _lr_lambda, _optimise, latent_moments

# The decoder's shape (see the module's docstring); the encoder mirrors TAESD's at 16 channels.
TINY_CONFIG = {
    "in_channels": 3,
    "out_channels": 3,
    "encoder_block_out_channels": [16, 16, 16],
    "decoder_block_out_channels": [16, 16, 16],
    "num_encoder_blocks": [1, 1, 1],
    "num_decoder_blocks": [4, 0, 0],
    "upsampling_scaling_factor": 2,
    "act_fn": "relu",
    "upsample_fn": "nearest",
    "latent_channels": 4,
    "scaling_factor": 1.0,
    "shift_factor": 0.0,
}
# The models whose generated latents join the training set, each at its registry default.
SOURCES = ("digits", "digits-dit", "digits-lcm", "digits-dit-cm")


@dataclass(frozen=True)
class TinyDecoderConfig:
    seed: int = 0
    steps: int = 3000
    lr: float = 2e-3
    warmup_steps: int = 100
    batch_size: int = 128
    posterior_samples: int = 12_000  # VAE posterior samples of shifted training digits
    generated_per_model: int = 600  # latents each model of SOURCES generates (60 per digit)


def build_tiny(seed: int = 0):
    from diffusers import AutoencoderTiny  # heavy: diffusers

    torch.manual_seed(seed)
    return AutoencoderTiny(**TINY_CONFIG)


@torch.no_grad()
def generated_latents(name: str, n: int, seed: int) -> torch.Tensor:
    """`n` model-space latents of registry model `name` at its default steps and guidance, its
    classes' names as prompts (the engine's default prompt regime)."""
    spec = get_model(name)
    pipe = load_pipeline(spec, None, torch.device("cpu"), torch.float32)
    names = [c.name for c in load_classes("digits")]
    prompts = [names[i % len(names)] for i in range(n)]
    extra = {}
    if spec.family == "sd3":  # no T5: the prompt's length is the registry's (engine/adapters.py)
        extra["max_sequence_length"] = spec.text_length - pipe.tokenizer_max_length
    gen = torch.Generator().manual_seed(seed)
    out = []
    for i in range(0, n, 100):
        out.append(
            pipe(
                prompt=prompts[i : i + 100],
                num_inference_steps=spec.steps,
                guidance_scale=spec.guidance,
                height=spec.resolution[0],
                width=spec.resolution[1],
                output_type="latent",
                generator=gen,
                **extra,
            ).images
        )
    return torch.cat(out)


@torch.no_grad()
def vae_targets(vae, latents: torch.Tensor, batch_size: int = 200) -> torch.Tensor:
    """The VAE's images [-1, 1] of model-space latents, as the pipelines decode them."""
    scale, shift = vae.config.scaling_factor, vae.config.shift_factor or 0.0
    return torch.cat(
        [
            vae.decode(latents[i : i + batch_size] / scale + shift).sample.clamp(-1, 1)
            for i in range(0, len(latents), batch_size)
        ]
    )


def training_set(vae, cfg: TinyDecoderConfig, log=_log) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """(latents, the VAE's images of them, how many of each kind)."""
    split = load_split()
    means, stds = latent_moments(vae, split.train_images * 2 - 1)
    scale = vae.config.scaling_factor
    gen = torch.Generator().manual_seed(cfg.seed)
    shift = torch.randint(0, len(SHIFTS), (cfg.posterior_samples,), generator=gen)
    idx = torch.randint(0, means.shape[1], (cfg.posterior_samples,), generator=gen)
    noise = torch.randn((cfg.posterior_samples, *means.shape[2:]), generator=gen)
    parts = {"posterior": (means[shift, idx] + stds[shift, idx] * noise) * scale}
    for k, name in enumerate(SOURCES):
        log(f"generating {cfg.generated_per_model} latents with {name}")
        parts[name] = generated_latents(name, cfg.generated_per_model, cfg.seed + 1 + k)
    latents = torch.cat(list(parts.values()))
    log(f"decoding {len(latents)} latents with the VAE")
    return latents, vae_targets(vae, latents), {k: len(v) for k, v in parts.items()}


def train_tiny(tiny, vae, latents, targets, cfg: TinyDecoderConfig, gen: torch.Generator, log=_log) -> list[float]:
    """Decoder: L1 + 0.25 MSE to the VAE's images; encoder: MSE to the latents of those images
    (the VAE's posterior mean of its own decode, so real and generated latents both count)."""
    opt = torch.optim.AdamW(tiny.parameters(), lr=cfg.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(cfg.warmup_steps, cfg.steps))
    tiny.train()
    losses = []
    for step in range(cfg.steps):
        idx = torch.randint(0, len(latents), (cfg.batch_size,), generator=gen)
        z, x = latents[idx], targets[idx]
        recon = tiny.decode(z).sample
        decode_loss = F.l1_loss(recon, x) + 0.25 * F.mse_loss(recon, x)
        encode_loss = F.mse_loss(tiny.encode(x).latents, z)
        losses.append(_optimise(opt, sched, decode_loss + 0.1 * encode_loss))
        if step % 250 == 0 or step == cfg.steps - 1:
            log(f"tiny step {step}: decode {decode_loss.item():.4f}, encode {encode_loss.item():.4f}")
    tiny.eval()
    return losses


@torch.no_grad()
def held_out_error(tiny, vae, cfg: TinyDecoderConfig) -> dict:
    """Mean absolute pixel error (0..255) of the tiny decode against the VAE's, on latents of the
    real test digits (never trained on) and on fresh latents of the base model."""
    split = load_split()
    scale = vae.config.scaling_factor
    test = vae.encode(split.test_images * 2 - 1).latent_dist.mean * scale
    fresh = generated_latents("digits", 200, cfg.seed + 100)
    out = {}
    for name, z in (("real_test_digits", test), ("digits_generated", fresh)):
        error = (tiny.decode(z).sample.clamp(-1, 1) - vae_targets(vae, z)).abs().mean() * 127.5
        out[name] = round(error.item(), 3)
    return out


def train(out_dir: Path, cfg: TinyDecoderConfig = TinyDecoderConfig(), log=_log) -> dict:
    """Train the embedded latent space's tiny decoder into `out_dir` (a diffusers AutoencoderTiny
    folder); returns the training record, also written there as training.json."""

    start = time.perf_counter()
    spec = get_model("digits")
    vae = load_pipeline(spec, None, torch.device("cpu"), torch.float32).vae
    vae.requires_grad_(False)
    latents, targets, kinds = training_set(vae, cfg, log)
    latent_hw = tuple(latents.shape[-2:])
    tiny = build_tiny(cfg.seed)
    losses = train_tiny(tiny, vae, latents, targets, cfg, torch.Generator().manual_seed(cfg.seed), log)
    out_dir.mkdir(parents=True, exist_ok=True)
    tiny.save_pretrained(out_dir, safe_serialization=True)
    record = {
        "generated_latents_of": list(SOURCES),
        "config": asdict(cfg),
        "latents": kinds,
        "total_seconds": round(time.perf_counter() - start, 1),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "loss_first_last": [losses[0], sum(losses[-50:]) / min(50, len(losses))],
        "parameters": {
            "decoder": sum(p.numel() for p in tiny.decoder.parameters()),
            "encoder": sum(p.numel() for p in tiny.encoder.parameters()),
        },
        "decode_flops": {"vae": decode_flops(vae, latent_hw), "tiny": decode_flops(tiny, latent_hw)},
        "held_out_mean_abs_error_0_255": held_out_error(tiny, vae, cfg),
    }
    (out_dir / "training.json").write_text(json.dumps(record, indent=1) + "\n")
    return record


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--steps", type=int, default=None, help="training steps (default: the shipped decoder's)")
    args = ap.parse_args(argv)
    cfg = TinyDecoderConfig(steps=args.steps or TinyDecoderConfig.steps)
    print(json.dumps(train(args.out, cfg), indent=1))


if __name__ == "__main__":
    main()
