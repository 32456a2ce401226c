"""The second embedded model, `digits-dit`: a small flow-matching transformer text-to-image
model of SD3's classes, trained here on the same real handwritten digits as `digits`.

SD3's wiring at toy size, so the engine's transformer paths run on real trained weights: two
CLIP text encoders with projections (hidden 64, 2 layers, 16 tokens, the digits tokenizer; no
T5: the pipeline is called with max_sequence_length=0, so the prompt is the CLIP tokens alone),
an SD3Transformer2DModel (MMDiT: joint text-image attention; 2x2 patches of the 8x8x4 latent),
the embedded digits model's own VAE (frozen: the same latent space, its scaling factor, shift
0), and flow matching (rectified flow, FlowMatchEulerDiscreteScheduler), saved as a
StableDiffusion3Pipeline with safetensors.

Training, on the generator-training split only: the transformer and both text encoders
jointly, the velocity target (noise - latents) at t drawn logit-normally (SD3's), prompts from
the digits model's phrasings, 10% dropped to "" for classifier-free guidance.

    python -m t2i_engine.training.digits_dit --out t2i_engine/assets/digits-dit

Step counts, not wall time, bound training: the same command gives the same weights on the
same torch version and CPU type.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ..models.tokenizer import build_clip_tokenizer
from .digits_data import load_split
from .digits_model import MAX_TOKENS, WORDS, _log, _lr_lambda, _optimise, draw_batch, latent_moments

T5_LENGTH = 0  # no T5: the pipeline's max_sequence_length, so its zero T5 tokens are none at all
DIGITS = Path(__file__).resolve().parents[1] / "assets" / "digits"


@dataclass(frozen=True)
class DitConfig:
    seed: int = 0
    steps: int = 3000
    lr: float = 1e-3
    warmup_steps: int = 100
    batch_size: int = 128
    prompt_dropout: float = 0.1


def build_components(seed: int = 0):
    """Untrained tokenizers, text encoders, transformer and scheduler of `digits-dit`."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    tokenizers = [build_clip_tokenizer(WORDS, max_length=MAX_TOKENS) for _ in range(2)]
    encoders = []
    for i, tokenizer in enumerate(tokenizers):
        torch.manual_seed(seed + i)
        encoders.append(
            CLIPTextModelWithProjection(
                CLIPTextConfig(
                    vocab_size=len(tokenizer),
                    hidden_size=64,
                    intermediate_size=128,
                    num_hidden_layers=2,
                    num_attention_heads=4,
                    max_position_embeddings=MAX_TOKENS,
                    projection_dim=32,
                    bos_token_id=tokenizer.bos_token_id,
                    eos_token_id=tokenizer.eos_token_id,
                    pad_token_id=tokenizer.pad_token_id,
                )
            )
        )
    torch.manual_seed(seed + 2)
    transformer = SD3Transformer2DModel(
        sample_size=8,
        patch_size=2,
        in_channels=4,
        out_channels=4,
        num_layers=4,
        attention_head_dim=16,
        num_attention_heads=4,
        joint_attention_dim=128,  # the two CLIPs' states side by side (64 + 64)
        caption_projection_dim=64,
        pooled_projection_dim=64,  # the two projections (32 + 32)
        pos_embed_max_size=16,
    )
    scheduler = FlowMatchEulerDiscreteScheduler(shift=1.0)
    return tokenizers, encoders, transformer, scheduler


def _pipeline(tokenizers, encoders, transformer, scheduler, vae):
    from diffusers import StableDiffusion3Pipeline

    return StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=scheduler,
        vae=vae,
        text_encoder=encoders[0],
        tokenizer=tokenizers[0],
        text_encoder_2=encoders[1],
        tokenizer_2=tokenizers[1],
        text_encoder_3=None,
        tokenizer_3=None,
    )


def _frozen_digits_vae():
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(DIGITS / "vae")
    vae.register_to_config(shift_factor=0.0)  # SD3's decode adds it
    return vae.eval().requires_grad_(False)


def train_dit(pipe, moments, labels: torch.Tensor, cfg: DitConfig, gen: torch.Generator, log=_log) -> list[float]:
    """Joint transformer + text encoders training on scaled latents; returns the loss per step."""
    modules = [pipe.transformer, pipe.text_encoder, pipe.text_encoder_2]
    params = [p for m in modules for p in m.parameters()]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(cfg.warmup_steps, cfg.steps))
    for m in modules:
        m.train()
    losses = []
    for step in range(cfg.steps):
        latents, prompts = draw_batch(moments, labels, cfg.batch_size, cfg.prompt_dropout, gen)
        embeds, _, pooled, _ = pipe.encode_prompt(
            prompts, None, None, do_classifier_free_guidance=False, max_sequence_length=T5_LENGTH, device="cpu"
        )
        noise = torch.randn(latents.shape, generator=gen)
        t = torch.sigmoid(torch.randn(cfg.batch_size, generator=gen))  # logit-normal (SD3's training density)
        noisy = (1 - t.view(-1, 1, 1, 1)) * latents + t.view(-1, 1, 1, 1) * noise
        pred = pipe.transformer(
            hidden_states=noisy, timestep=t * 1000, encoder_hidden_states=embeds, pooled_projections=pooled
        ).sample
        loss = F.mse_loss(pred, noise - latents)
        losses.append(_optimise(opt, sched, loss, clip_params=params))
        if step % 250 == 0 or step == cfg.steps - 1:
            log(f"dit step {step}: loss {loss.item():.4f}")
    for m in modules:
        m.eval()
    return losses


def train(out_dir: Path, cfg: DitConfig = DitConfig(), log=_log) -> dict:
    """Train and save the pipeline into `out_dir`; returns a training record."""
    start = time.perf_counter()
    split = load_split()
    images = split.train_images * 2 - 1
    gen = torch.Generator().manual_seed(cfg.seed)
    tokenizers, encoders, transformer, scheduler = build_components(cfg.seed)
    vae = _frozen_digits_vae()
    means, stds = latent_moments(vae, images)
    scaling = vae.config.scaling_factor
    pipe = _pipeline(tokenizers, encoders, transformer, scheduler, vae)
    losses = train_dit(pipe, (means * scaling, stds * scaling), split.train_labels, cfg, gen, log)
    out_dir.mkdir(parents=True, exist_ok=True)
    pipe.save_pretrained(out_dir, safe_serialization=True)
    record = {
        "config": asdict(cfg),
        "total_seconds": round(time.perf_counter() - start, 1),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "loss_first_last": [losses[0], sum(losses[-50:]) / 50],
        "parameters": {
            name: sum(p.numel() for p in m.parameters())
            for name, m in (
                ("text_encoder", pipe.text_encoder),
                ("text_encoder_2", pipe.text_encoder_2),
                ("transformer", pipe.transformer),
                ("vae (the digits model's)", vae),
            )
        },
        "max_sequence_length": T5_LENGTH,
    }
    (out_dir / "training.json").write_text(json.dumps(record, indent=1) + "\n")
    return record


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--steps", type=int, default=DitConfig.steps)
    args = ap.parse_args(argv)
    print(json.dumps(train(args.out, DitConfig(steps=args.steps)), indent=1))


if __name__ == "__main__":
    main()
