"""The embedded model: a small text-to-image model trained here on real handwritten digits.

SD1.5's classes at toy size, so every engine path runs on it: a CLIP text encoder (hidden 64,
2 layers, 16 tokens) with a tokenizer built from our word list, an AutoencoderKL (32x32x3 ->
8x8x4, scale factor 4), a UNet2DConditionModel with cross attention, and DDIM sampling with
v-prediction, wrapped as a StableDiffusionPipeline (no safety checker) saved with safetensors.

Training, on the generator-training split only (digits_data.py), two stages from one seed:
1. the VAE: L1 + 0.25 x MSE reconstruction plus a small KL term; its latent scaling factor is
   then set to 1 / std of the training latents, as SD does;
2. the UNet and the text encoder jointly, v-prediction on the VAE's latents, prompts drawn from
   several phrasings per digit, 10% of prompts dropped to "" so classifier-free guidance works.

    python -m t2i_engine.training.digits_model --out t2i_engine/assets/digits

Step counts, not wall time, bound each stage, so the same command gives the same weights on
the same torch version and CPU type.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ..engine.classes import BUILTIN_SETS
from ..models.tokenizer import build_clip_tokenizer
from .digits_data import load_split

NAMES = [name for _, name in BUILTIN_SETS["digits"]]
TEMPLATES = [
    "{name}",
    "the digit {name}",
    "a photo of the digit {name}",
    "handwritten {digit}",
    "the number {name}",
    "a handwritten {name}",
    "digit {digit}",
    "a drawing of the number {digit}",
]
WORDS = sorted({w for t in TEMPLATES for w in t.replace("{name}", "").replace("{digit}", "").split()} | set(NAMES))
MAX_TOKENS = 16
_log = functools.partial(print, flush=True)


@dataclass(frozen=True)
class TrainConfig:
    seed: int = 0
    vae_steps: int = 500
    vae_batch_size: int = 64
    vae_lr: float = 2e-3
    vae_kl_weight: float = 1e-5
    unet_steps: int = 2400
    unet_lr: float = 1e-3
    warmup_steps: int = 100
    batch_size: int = 128
    prompt_dropout: float = 0.1


def prompt_for(digit: int, template: str) -> str:
    return template.replace("{name}", NAMES[digit]).replace("{digit}", str(digit))


def build_components(seed: int = 0):
    """Untrained tokenizer, text encoder, VAE, UNet and scheduler of the embedded model."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    tokenizer = build_clip_tokenizer(WORDS, max_length=MAX_TOKENS)
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=MAX_TOKENS,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=8,
        block_out_channels=(16, 32, 64),
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        sample_size=32,
    )
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=64,
        attention_head_dim=8,
        norm_num_groups=16,
    )
    scheduler = DDIMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        prediction_type="v_prediction",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    return tokenizer, text_encoder, vae, unet, scheduler


MAX_SHIFT = 2  # augmentation: shifts of up to 2 pixels, handwriting is not centred exactly
SHIFTS = [(dx, dy) for dy in range(2 * MAX_SHIFT + 1) for dx in range(2 * MAX_SHIFT + 1)]


def _shifted(x: torch.Tensor, dx: int, dy: int) -> torch.Tensor:
    pad = F.pad(x, (MAX_SHIFT,) * 4, value=-1.0)
    return pad[:, :, dy : dy + x.shape[2], dx : dx + x.shape[3]]


def _shift(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    return _shifted(x, *SHIFTS[torch.randint(0, len(SHIFTS), (1,), generator=gen).item()])


def _lr_lambda(warmup: int, total: int):
    return lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, total) / total))


def _optimise(opt, sched, loss: torch.Tensor, clip_params: list | None = None) -> float:
    """One optimiser and schedule step (grad-norm clipped to 1.0 when `clip_params` is given)."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if clip_params is not None:
        torch.nn.utils.clip_grad_norm_(clip_params, 1.0)
    opt.step()
    sched.step()
    return loss.item()


def train_vae(vae, images: torch.Tensor, cfg: TrainConfig, gen: torch.Generator, log=_log) -> list[float]:
    """images in [-1, 1]; returns the loss per step."""
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(cfg.warmup_steps, cfg.vae_steps))
    losses = []
    vae.train()
    for step in range(cfg.vae_steps):
        x = _shift(images[torch.randint(0, len(images), (cfg.vae_batch_size,), generator=gen)], gen)
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.sample(generator=gen)).sample
        loss = F.l1_loss(recon, x) + 0.25 * F.mse_loss(recon, x) + cfg.vae_kl_weight * posterior.kl().mean()
        losses.append(_optimise(opt, sched, loss))
        if step % 250 == 0 or step == cfg.vae_steps - 1:
            log(f"vae step {step}: loss {loss.item():.4f}")
    return losses


@torch.no_grad()
def latent_moments(vae, images: torch.Tensor, batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior mean and std [len(SHIFTS), N, 4, 8, 8] of every shifted training image, computed
    once so the denoiser's steps need no VAE encoder pass."""
    means, stds = [], []
    for dx, dy in SHIFTS:
        dists = [
            vae.encode(_shifted(images[i : i + batch_size], dx, dy)).latent_dist
            for i in range(0, len(images), batch_size)
        ]
        means.append(torch.cat([d.mean for d in dists]))
        stds.append(torch.cat([d.std for d in dists]))
    return torch.stack(means), torch.stack(stds)


def draw_batch(moments, labels: torch.Tensor, n: int, dropout: float, gen: torch.Generator):
    """A training batch for a denoiser: latents sampled from n random (image, shift) posteriors,
    and their prompts in random phrasings, a `dropout` share of them "" (for CFG)."""
    means, stds = moments
    idx = torch.randint(0, len(labels), (n,), generator=gen)
    shift = torch.randint(0, len(SHIFTS), (n,), generator=gen)
    latents = means[shift, idx] + stds[shift, idx] * torch.randn((n, *means.shape[2:]), generator=gen)
    template = torch.randint(0, len(TEMPLATES), (n,), generator=gen).tolist()
    drop = (torch.rand(n, generator=gen) < dropout).tolist()
    return latents, ["" if d else prompt_for(int(y), TEMPLATES[t]) for y, t, d in zip(labels[idx], template, drop)]


def train_denoiser(
    unet,
    text_encoder,
    tokenizer,
    scheduler,
    moments: tuple[torch.Tensor, torch.Tensor],
    labels: torch.Tensor,
    cfg: TrainConfig,
    gen: torch.Generator,
    log=_log,
) -> list[float]:
    """Joint UNet + text encoder training with v-prediction on scaled latents; returns the loss per step."""
    params = list(unet.parameters()) + list(text_encoder.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.unet_lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(cfg.warmup_steps, cfg.unet_steps))
    unet.train()
    text_encoder.train()
    losses = []
    for step in range(cfg.unet_steps):
        latents, prompts = draw_batch(moments, labels, cfg.batch_size, cfg.prompt_dropout, gen)
        ids = tokenizer(
            prompts, padding="max_length", max_length=MAX_TOKENS, truncation=True, return_tensors="pt"
        ).input_ids
        cond = text_encoder(ids)[0]
        noise = torch.randn(latents.shape, generator=gen)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (cfg.batch_size,), generator=gen)
        noisy = scheduler.add_noise(latents, noise, t)
        target = scheduler.get_velocity(latents, noise, t)
        loss = F.mse_loss(unet(noisy, t, encoder_hidden_states=cond).sample, target)
        losses.append(_optimise(opt, sched, loss, clip_params=params))
        if step % 250 == 0 or step == cfg.unet_steps - 1:
            log(f"unet step {step}: loss {loss.item():.4f}")
    return losses


def train(out_dir: Path, cfg: TrainConfig = TrainConfig(), log=_log) -> dict:
    """Train both stages and save the pipeline into `out_dir`; returns a training record."""
    from diffusers import StableDiffusionPipeline

    start = time.perf_counter()
    split = load_split()
    images = split.train_images * 2 - 1
    gen = torch.Generator().manual_seed(cfg.seed)
    tokenizer, text_encoder, vae, unet, scheduler = build_components(cfg.seed)
    vae_losses = train_vae(vae, images, cfg, gen, log)
    vae.eval().requires_grad_(False)
    means, stds = latent_moments(vae, images)
    scaling = 1.0 / means.std().item()  # unit-variance latents, as SD's scaling factor gives
    vae.register_to_config(scaling_factor=scaling)
    t_vae = time.perf_counter() - start
    unet_losses = train_denoiser(
        unet, text_encoder, tokenizer, scheduler, (means * scaling, stds * scaling), split.train_labels, cfg, gen, log
    )
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder.eval(),
        tokenizer=tokenizer,
        unet=unet.eval(),
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    pipe.save_pretrained(out_dir, safe_serialization=True)
    record = {
        "config": asdict(cfg),
        "vae_seconds": round(t_vae, 1),
        "total_seconds": round(time.perf_counter() - start, 1),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "vae_loss_first_last": [vae_losses[0], sum(vae_losses[-50:]) / 50],
        "unet_loss_first_last": [unet_losses[0], sum(unet_losses[-50:]) / 50],
        "parameters": {
            name: sum(p.numel() for p in m.parameters())
            for name, m in (("text_encoder", text_encoder), ("vae", vae), ("unet", unet))
        },
        "latent_scaling_factor": vae.config.scaling_factor,
    }
    (out_dir / "training.json").write_text(json.dumps(record, indent=1) + "\n")
    return record


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--unet-steps", type=int, default=TrainConfig.unet_steps)
    ap.add_argument("--vae-steps", type=int, default=TrainConfig.vae_steps)
    args = ap.parse_args(argv)
    record = train(args.out, TrainConfig(unet_steps=args.unet_steps, vae_steps=args.vae_steps))
    print(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
