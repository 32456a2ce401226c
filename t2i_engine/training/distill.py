"""Few-step students of the embedded models, by consistency distillation.

    python -m t2i_engine.training.distill digits --out t2i_engine/assets/digits-lcm
    python -m t2i_engine.training.distill digits-dit --out t2i_engine/assets/digits-dit-cm

A consistency model f(x_t, t) maps any point of the teacher's sampling path (its probability-flow
ODE with CFG) to the path's clean end; trained so that two neighbouring points of one path give
the same answer, it can sample in one step, and in a few by re-noising its answer to the next
step's level. Both students start as copies of their teacher; the text encoders and the VAE stay
the teacher's (frozen, shared, not shipped twice), so a student and its base share one latent
space and one prompt encoding, which the first-steps option (engine/first_steps.py) relies on.

- `digits` (UNet, v-prediction, DDPM schedule): latent consistency distillation (Luo et al. 2023,
  LCM). The teacher takes one DDIM step of a 50-step skipping grid (1000 // 50 = 20 timesteps)
  with CFG at a scale drawn from [1, 8]; the student gets that scale as a conditioning input
  (UNet `time_cond_proj_dim`, the scale embedding diffusers' pipelines compute from
  guidance_scale - 1), so one student serves every guidance at one forward per step. Its output
  is read through LCM's boundary-condition scalings (c_skip, c_out of LCMScheduler, timestep
  scaling 10), so diffusers' LCMScheduler samples it as published LCMs are sampled.
- `digits-dit` (MMDiT, rectified flow): consistency distillation in the flow's own
  parametrization, f(x, s) = x - s * v(x, s): the jump along the predicted velocity to s = 0,
  which meets the boundary condition f(x, 0) = x with no extra scalings. It samples as a
  multistep consistency model: each step's f re-noised to the next step's level with fresh noise,
  which is diffusers' FlowMatchEulerDiscreteScheduler with stochastic_sampling (saved in the
  student's scheduler config; the engine feeds it the per-sample generators). The deterministic
  Euler steps, which reuse the implied noise instead, measured worse at 4 and 8 steps (digits
  judge accuracy 0.87 and 0.81 against 0.99 and 1.00 re-noised, 300 images; equal at 1 and 2).
  The teacher takes one Euler step of a 64-step grid with CFG at the base's default scale 2.0
  (SD3's transformer has no conditioning input for a scale; the scale is baked in).
  Why consistency and not reflow or shortcut models: reflow needs a set of teacher ODE solves
  made up front (N images x 30 forwards before training starts) and a 2-rectified flow still
  needs several steps, plus a further distillation, for one; shortcut models need a step-size
  input, which SD3's transformer lacks (a new architecture no diffusers pipeline runs). Consistency
  distillation is online (one teacher step per training sample), keeps the architecture, and gives
  one network for 1 to 8 steps. Reflow was not tried here.

Both: the target is an exponential moving average of the student (decay 0.95, as LCM), the loss
a pseudo-Huber distance (c = 0.001), AdamW with warm-up and cosine decay; step counts, not wall
time, bound training, so the same command gives the same weights on the same torch and CPU.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ..models.pipelines import from_pretrained
from ..models.registry import get_model
from .digits_data import load_split
from .digits_model import MAX_TOKENS, _log, _lr_lambda, _optimise, draw_batch, latent_moments

ASSETS = Path(__file__).resolve().parents[1] / "assets"
GUIDANCE_EMBED_DIM = 64  # the width of the UNet student's guidance-scale embedding
SHARED = ("text_encoder", "text_encoder_2", "text_encoder_3", "tokenizer", "tokenizer_2", "tokenizer_3", "vae")


@dataclass(frozen=True)
class DistillConfig:
    seed: int = 0
    steps: int = 1500
    lr: float = 1e-4
    warmup_steps: int = 50
    batch_size: int = 64
    ema_decay: float = 0.95
    huber_c: float = 1e-3
    solver_steps: int = (
        50  # the teacher's grid: one training step jumps 1000 // solver_steps timesteps (UNet), 1/64 (flow)
    )
    guidance_min: float = 1.0  # UNet student: CFG scales drawn uniformly from [min, max]
    guidance_max: float = 8.0
    guidance: float = 2.0  # DiT student: the one scale distilled
    prompt_dropout: float = 0.0  # the students are always conditioned: no CFG at sampling


def _huber(a: torch.Tensor, b: torch.Tensor, c: float) -> torch.Tensor:
    return (torch.sqrt((a.float() - b.float()) ** 2 + c**2) - c).mean()


@torch.no_grad()
def _ema(target: torch.nn.Module, online: torch.nn.Module, decay: float) -> None:
    for t, o in zip(target.parameters(), online.parameters()):
        t.lerp_(o, 1 - decay)


# --- digits: latent consistency distillation of a v-prediction UNet --------------------------


def student_unet(teacher, embed_dim: int = GUIDANCE_EMBED_DIM):
    """The teacher's UNet with a guidance-scale input (time_cond_proj_dim): the teacher's weights,
    and the new projection zero, so the student starts as the teacher."""
    from diffusers import UNet2DConditionModel  # heavy: diffusers

    config = dict(teacher.config)
    config["time_cond_proj_dim"] = embed_dim
    student = UNet2DConditionModel.from_config(config)
    missing, unexpected = student.load_state_dict(teacher.state_dict(), strict=False)
    assert not unexpected and missing == ["time_embedding.cond_proj.weight"], (missing, unexpected)
    torch.nn.init.zeros_(student.time_embedding.cond_proj.weight)
    return student


def guidance_embedding(scale: torch.Tensor, dim: int = GUIDANCE_EMBED_DIM) -> torch.Tensor:
    """What diffusers' SD pipeline passes as timestep_cond for a guidance scale (it embeds scale - 1)."""
    from diffusers import StableDiffusionPipeline  # heavy: diffusers

    return StableDiffusionPipeline.get_guidance_scale_embedding(None, scale - 1, embedding_dim=dim)


def lcm_scalings(t: torch.Tensor, timestep_scaling: float = 10.0, sigma_data: float = 0.5):
    """LCMScheduler's boundary-condition scalings (c_skip, c_out) at integer timesteps t, shaped to broadcast."""
    scaled = t.float() * timestep_scaling
    c_skip = sigma_data**2 / (scaled**2 + sigma_data**2)
    c_out = scaled / (scaled**2 + sigma_data**2) ** 0.5
    return c_skip.view(-1, 1, 1, 1), c_out.view(-1, 1, 1, 1)


def _v_to_x0_eps(v: torch.Tensor, x: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor):
    return alpha * x - sigma * v, alpha * v + sigma * x


def distill_unet(pipe, moments, labels, cfg: DistillConfig, gen: torch.Generator, log=_log):
    """Train a guidance-conditioned LCM student of `pipe`'s UNet; returns (student, losses)."""
    teacher = pipe.unet.eval().requires_grad_(False)
    student = student_unet(teacher).train()
    target = copy.deepcopy(student).eval().requires_grad_(False)
    alphas_cumprod = pipe.scheduler.alphas_cumprod.float()
    jump = pipe.scheduler.config.num_train_timesteps // cfg.solver_steps
    grid = torch.arange(1, cfg.solver_steps + 1) * jump - 1  # LCM's: 19, 39, ..., 999
    opt = torch.optim.AdamW(student.parameters(), lr=cfg.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(cfg.warmup_steps, cfg.steps))
    uncond = _encode_sd(pipe, [""])
    losses, began = [], time.perf_counter()
    for step in range(cfg.steps):
        x0, prompts = draw_batch(moments, labels, cfg.batch_size, cfg.prompt_dropout, gen)
        n = len(prompts)
        cond = _encode_sd(pipe, prompts)
        t = grid[torch.randint(0, len(grid), (n,), generator=gen)]
        t_prev = (t - jump).clamp(min=0)
        scale = cfg.guidance_min + (cfg.guidance_max - cfg.guidance_min) * torch.rand(n, generator=gen)
        w_embed = guidance_embedding(scale)
        a, a_prev = alphas_cumprod[t].view(-1, 1, 1, 1), alphas_cumprod[t_prev].view(-1, 1, 1, 1)
        alpha, sigma = a.sqrt(), (1 - a).sqrt()
        noise = torch.randn(x0.shape, generator=gen)
        x_t = alpha * x0 + sigma * noise
        with torch.no_grad():
            # the teacher: one DDIM step t -> t_prev with CFG at `scale`
            v = teacher(
                torch.cat([x_t, x_t]),
                torch.cat([t, t]),
                encoder_hidden_states=torch.cat([cond, uncond.expand(n, -1, -1)]),
            ).sample
            v_c, v_u = v.chunk(2)
            x0_c, eps_c = _v_to_x0_eps(v_c, x_t, alpha, sigma)
            x0_u, eps_u = _v_to_x0_eps(v_u, x_t, alpha, sigma)
            s = scale.view(-1, 1, 1, 1)
            x0_g, eps_g = x0_u + s * (x0_c - x0_u), eps_u + s * (eps_c - eps_u)
            x_prev = a_prev.sqrt() * x0_g + (1 - a_prev).sqrt() * eps_g
            # the target: the EMA student at t_prev (exactly x_prev at t_prev = 0, by the scalings)
            aw, sw = a_prev.sqrt(), (1 - a_prev).sqrt()
            v_tgt = target(x_prev, t_prev, encoder_hidden_states=cond, timestep_cond=w_embed).sample
            c_skip, c_out = lcm_scalings(t_prev)
            want = c_skip * x_prev + c_out * _v_to_x0_eps(v_tgt, x_prev, aw, sw)[0]
        v_s = student(x_t, t, encoder_hidden_states=cond, timestep_cond=w_embed).sample
        c_skip, c_out = lcm_scalings(t)
        got = c_skip * x_t + c_out * _v_to_x0_eps(v_s, x_t, alpha, sigma)[0]
        loss = _huber(got, want, cfg.huber_c)
        losses.append(_optimise(opt, sched, loss, clip_params=list(student.parameters())))
        _ema(target, student, cfg.ema_decay)
        if step % 100 == 0 or step == cfg.steps - 1:
            log(f"lcm step {step}: loss {loss.item():.5f} ({time.perf_counter() - began:.0f} s)")
    return student.eval(), losses


@torch.no_grad()
def _encode_sd(pipe, prompts: list[str]) -> torch.Tensor:
    ids = pipe.tokenizer(prompts, padding="max_length", max_length=MAX_TOKENS, truncation=True, return_tensors="pt")
    return pipe.text_encoder(ids.input_ids)[0]


# --- digits-dit: consistency distillation of a rectified flow ---------------------------------


@torch.no_grad()
def _encode_sd3(pipe, prompts: list[str]):
    embeds, _, pooled, _ = pipe.encode_prompt(
        prompts, None, None, do_classifier_free_guidance=False, max_sequence_length=0, device="cpu"
    )
    return embeds, pooled


def distill_flow(pipe, moments, labels, cfg: DistillConfig, gen: torch.Generator, log=_log):
    """Train a flow consistency student of `pipe`'s transformer at CFG cfg.guidance; returns (student, losses)."""
    teacher = pipe.transformer.eval().requires_grad_(False)
    student = copy.deepcopy(teacher).train().requires_grad_(True)
    target = copy.deepcopy(student).eval().requires_grad_(False)
    opt = torch.optim.AdamW(student.parameters(), lr=cfg.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(cfg.warmup_steps, cfg.steps))
    grid = 64  # s in {1/64, ..., 1}: holds the 1, 2, 4 and 8-step Euler grids (s = i / steps)
    u_embeds, u_pooled = _encode_sd3(pipe, [""])
    losses, began = [], time.perf_counter()
    for step in range(cfg.steps):
        x0, prompts = draw_batch(moments, labels, cfg.batch_size, cfg.prompt_dropout, gen)
        n = len(prompts)
        embeds, pooled = _encode_sd3(pipe, prompts)
        i = torch.randint(1, grid + 1, (n,), generator=gen)
        s, s_prev = (i / grid).view(-1, 1, 1, 1), ((i - 1) / grid).view(-1, 1, 1, 1)
        noise = torch.randn(x0.shape, generator=gen)
        x_s = (1 - s) * x0 + s * noise
        with torch.no_grad():
            v = teacher(
                hidden_states=torch.cat([x_s, x_s]),
                timestep=torch.cat([s, s]).flatten() * 1000,
                encoder_hidden_states=torch.cat([embeds, u_embeds.expand(n, -1, -1)]),
                pooled_projections=torch.cat([pooled, u_pooled.expand(n, -1)]),
            ).sample
            v_c, v_u = v.chunk(2)
            x_prev = x_s + (s_prev - s) * (v_u + cfg.guidance * (v_c - v_u))  # the teacher's Euler step
            v_tgt = target(
                hidden_states=x_prev,
                timestep=s_prev.flatten() * 1000,
                encoder_hidden_states=embeds,
                pooled_projections=pooled,
            ).sample
            want = x_prev - s_prev * v_tgt
        v_s = student(
            hidden_states=x_s, timestep=s.flatten() * 1000, encoder_hidden_states=embeds, pooled_projections=pooled
        ).sample
        loss = _huber(x_s - s * v_s, want, cfg.huber_c)
        losses.append(_optimise(opt, sched, loss, clip_params=list(student.parameters())))
        _ema(target, student, cfg.ema_decay)
        if step % 100 == 0 or step == cfg.steps - 1:
            log(f"flow-cm step {step}: loss {loss.item():.5f} ({time.perf_counter() - began:.0f} s)")
    return student.eval(), losses


# --- both ------------------------------------------------------------------------------------

TEACHERS = {"digits": "unet", "digits-dit": "transformer"}
# The shipped students' steps and learning rates. digits at 1,500 steps and 1e-4 gave data 2.6
# points of synth->real under its base's (0.934 at 1 step); 3,000 at 2e-4 gave 0.954 (bench/RESULTS.md)
TRAINING = {"digits": {"steps": 3000, "lr": 2e-4}, "digits-dit": {"steps": 3000, "lr": 1e-4}}


def _load_teacher(name: str):
    import diffusers  # heavy: diffusers

    spec = get_model(name)
    pipe = from_pretrained(spec, str(ASSETS / spec.bundled), torch.float32)
    pipe.set_progress_bar_config(disable=True)
    assert isinstance(pipe, getattr(diffusers, spec.pipeline))
    return pipe


def distill(teacher: str, out_dir: Path, cfg: DistillConfig = DistillConfig(), log=_log) -> dict:
    """Distil the embedded model `teacher` into a student saved in `out_dir`: the denoiser and
    scheduler only (the rest is the teacher's); returns the training record, also written there."""
    if teacher not in TEACHERS:
        raise ValueError(f"teacher {teacher!r}: expected one of {', '.join(TEACHERS)}")
    start = time.perf_counter()
    torch.manual_seed(cfg.seed)
    pipe = _load_teacher(teacher)
    split = load_split()
    means, stds = latent_moments(pipe.vae, split.train_images * 2 - 1)
    scaling = pipe.vae.config.scaling_factor
    gen = torch.Generator().manual_seed(cfg.seed)
    train = distill_unet if teacher == "digits" else distill_flow
    student, losses = train(pipe, (means * scaling, stds * scaling), split.train_labels, cfg, gen, log)
    component = TEACHERS[teacher]
    out_dir.mkdir(parents=True, exist_ok=True)
    student.save_pretrained(out_dir / component, safe_serialization=True)
    from diffusers import FlowMatchEulerDiscreteScheduler, LCMScheduler  # heavy: diffusers

    if teacher == "digits":
        scheduler = LCMScheduler.from_config(pipe.scheduler.config, original_inference_steps=cfg.solver_steps)
    else:  # multistep consistency sampling: each step's estimate re-noised with fresh noise
        scheduler = FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config, stochastic_sampling=True)
    scheduler.save_pretrained(out_dir / "scheduler")
    index = json.loads((ASSETS / teacher / "model_index.json").read_text())
    index["scheduler"] = ["diffusers", type(scheduler).__name__]
    (out_dir / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
    record = {
        "teacher": teacher,
        "method": "latent consistency distillation (LCM), guidance-conditioned"
        if teacher == "digits"
        else "flow consistency distillation",
        "config": asdict(cfg),
        "total_seconds": round(time.perf_counter() - start, 1),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "loss_first_last": [losses[0], sum(losses[-50:]) / min(50, len(losses))],
        "parameters": sum(p.numel() for p in student.parameters()),
        "shared_with_teacher": [c for c in SHARED if c in index and index[c] != [None, None]],
    }
    (out_dir / "training.json").write_text(json.dumps(record, indent=1) + "\n")
    return record


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("teacher", choices=sorted(TEACHERS))
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--steps", type=int, default=None, help="training steps (default: the shipped student's)")
    ap.add_argument("--lr", type=float, default=None, help="peak learning rate (default: the shipped student's)")
    args = ap.parse_args(argv)
    shipped = TRAINING[args.teacher]
    cfg = DistillConfig(steps=args.steps or shipped["steps"], lr=args.lr or shipped["lr"])
    print(json.dumps(distill(args.teacher, args.out, cfg), indent=1))


if __name__ == "__main__":
    main()
