"""The work of sampling.py's settings: the sampler put in place, and the guidance interval's
hooks on the denoiser (see sampling.py for what each means)."""

from __future__ import annotations

import functools
import math
from contextlib import contextmanager

import torch

from ..models.pipelines import denoiser
from ..seeds import step_seed
from .sampling import DEFAULT, SAMPLERS, STEPS


def set_sampler(pipe, name: str, steps: int | None = None) -> None:
    """The pipeline's scheduler for `name` (at `steps`, for a sampler whose grid depends on them),
    built from the scheduler it had before the first sampler was set (kept on the pipeline, so one
    sampler after another starts from the same config). "default" undoes a sampler set here and
    leaves any other scheduler alone."""
    import diffusers

    state = pipe.__dict__
    if name == DEFAULT:
        if "_t2i_scheduler" in state and pipe.scheduler is state.get("_t2i_installed"):
            pipe.scheduler = state["_t2i_scheduler"]
        return
    if pipe.scheduler is not state.get("_t2i_installed"):  # the scheduler as loaded, or set by a caller
        state["_t2i_scheduler"] = pipe.scheduler
    cls, options = SAMPLERS[name]
    options = {k: steps if v == STEPS else v for k, v in options.items()}
    pipe.scheduler = getattr(diffusers, cls).from_config(state["_t2i_scheduler"].config, **options)
    state["_t2i_installed"] = pipe.scheduler


@contextmanager
def wrapped_step(scheduler, wrap):
    """`scheduler.step` replaced by `wrap(step)` for the duration, its signature kept (pipelines
    inspect it for eta and generator), then put back as found."""
    step = scheduler.step
    patched = "step" in scheduler.__dict__  # already an instance attribute (another wrapper)
    scheduler.step = functools.wraps(step)(wrap(step))
    try:
        yield
    finally:
        if patched:
            scheduler.step = step
        else:
            del scheduler.step  # the class's method again


def _sigma(scheduler, timestep: float) -> float:
    """The EDM noise level of a denoiser call at `timestep`."""
    flow = "FlowMatch" in type(scheduler).__name__ or getattr(scheduler.config, "use_flow_sigmas", False)
    if flow:
        s = min(max(timestep / scheduler.config.num_train_timesteps, 0.0), 1.0)
        return math.inf if s >= 1 else s / (1 - s)
    alphas = scheduler.alphas_cumprod
    a = float(alphas[min(max(round(timestep), 0), len(alphas) - 1)])
    return math.sqrt((1 - a) / a)


def _timestep(args, kwargs) -> float:
    t = kwargs.get("timestep", args[1] if len(args) > 1 else None)
    return float(torch.as_tensor(t).reshape(-1)[0])


def _halve(value, n: int):
    """The positive half of every tensor whose first axis holds the CFG batch (2n)."""
    if torch.is_tensor(value) and value.dim() > 0 and value.shape[0] == 2 * n:
        return value[n:]
    if isinstance(value, dict):
        return {k: _halve(v, n) for k, v in value.items()}
    return value


def _double(output):
    if isinstance(output, tuple):
        return (torch.cat([output[0], output[0]]), *output[1:])
    output.sample = torch.cat([output.sample, output.sample])
    return output


class GuidanceInterval:
    """Installed on a pipeline's denoiser for a generation (`with GuidanceInterval(pipe, lo, hi)`);
    `skipped` counts the unconditional forwards (images) it saved."""

    def __init__(self, pipe, low: float, high: float):
        self.pipe, self.low, self.high = pipe, low, high
        self.skipped = 0
        self._halved: list[int] = []
        self._handles = []

    def _pre(self, module, args, kwargs):
        x = args[0] if args else kwargs.get("sample", kwargs.get("hidden_states"))
        sigma = _sigma(self.pipe.scheduler, _timestep(args, kwargs))
        if x.shape[0] % 2 or self.low <= sigma <= self.high:
            self._halved.append(0)
            return None
        n = x.shape[0] // 2
        self._halved.append(n)
        self.skipped += n
        return tuple(_halve(a, n) for a in args), {k: _halve(v, n) for k, v in kwargs.items()}

    def _post(self, module, args, kwargs, output):
        return _double(output) if self._halved.pop() else None

    def __enter__(self):
        module = denoiser(self.pipe)
        # first of the pre-hooks: a counting hook (bench, tests) sees what the denoiser computes
        self._handles = [
            module.register_forward_pre_hook(self._pre, with_kwargs=True, prepend=True),
            module.register_forward_hook(self._post, with_kwargs=True, prepend=True),
        ]
        return self

    def __exit__(self, *exc):
        for handle in self._handles:
            handle.remove()
        self._handles, self._halved = [], []


def _pred(output) -> torch.Tensor:
    return output[0] if isinstance(output, tuple) else output.sample


def _with_pred(output, pred: torch.Tensor):
    if isinstance(output, tuple):
        return (pred, *output[1:])
    output.sample = pred
    return output


def _progress(scheduler, args, kwargs) -> float:
    """p in [0, 1]: 0 at pure noise, 1 at the end (1 - timestep / num_train_timesteps)."""
    return min(max(1.0 - _timestep(args, kwargs) / scheduler.config.num_train_timesteps, 0.0), 1.0)


class _CfgHook:
    """Pre/post hooks on the denoiser for one batch of n samples that act on CFG calls only (2n
    latents, [negative; positive]): a guidance interval's halved calls pass untouched. Its
    pre-hook runs after the interval's (which is prepended), so it sees the halved batch."""

    def __init__(self, pipe, n: int):
        self.pipe, self.n = pipe, n
        self._cfg: list[bool] = []
        self._handles: list = []

    def _is_cfg(self, args, kwargs) -> bool:
        x = args[0] if args else kwargs.get("sample", kwargs.get("hidden_states"))
        return x.shape[0] == 2 * self.n

    def pre(self, args, kwargs):  # returns new (args, kwargs) or None
        return None

    def post(self, output, progress: float):
        return output

    def _pre(self, module, args, kwargs):
        cfg = self._is_cfg(args, kwargs)
        self._cfg.append((cfg, _progress(self.pipe.scheduler, args, kwargs)))
        return self.pre(args, kwargs) if cfg else None

    def _post(self, module, args, kwargs, output):
        cfg, progress = self._cfg.pop()
        return self.post(output, progress) if cfg else None

    def __enter__(self):
        module = denoiser(self.pipe)
        self._handles = [
            module.register_forward_pre_hook(self._pre, with_kwargs=True),
            module.register_forward_hook(self._post, with_kwargs=True),
        ]
        return self

    def __exit__(self, *exc):
        for handle in self._handles:
            handle.remove()
        self._handles, self._cfg = [], []


class GuidanceRewrite(_CfgHook):
    """Each sample's guided prediction by a guidance schedule, its own scale (a guidance list)
    and/or APG, in place of the pipeline's CFG formula u + G (c - u) at its scale G: the
    positive half is handed back as c' = u + (D - u) / G, so the formula returns D."""

    def __init__(self, pipe, scales: list[float], pipeline_scale: float, schedule: str, apg: dict | None):
        super().__init__(pipe, len(scales))
        self.scales, self.pipeline_scale, self.schedule, self.apg = scales, pipeline_scale, schedule, apg
        self._momentum = None

    def _scale(self, progress: float, like: torch.Tensor) -> torch.Tensor:
        g = torch.tensor(self.scales, dtype=torch.float32)
        ramp = {"constant": 1.0, "linear": 2 * progress, "cosine": 1 - math.cos(math.pi * progress)}[self.schedule]
        g = 1 + (g - 1) * ramp
        return g.to(like.device, like.dtype).view(-1, *[1] * (like.dim() - 1))

    def post(self, output, progress: float):
        pred = _pred(output)
        u, c = pred[: self.n], pred[self.n :]
        g = self._scale(progress, c)
        if self.apg is None:
            guided = u + g * (c - u)
        else:
            from diffusers.guiders.adaptive_projected_guidance import MomentumBuffer, normalized_guidance

            if self._momentum is None and self.apg["momentum"]:
                self._momentum = MomentumBuffer(self.apg["momentum"])
            # normalized_guidance at scale 1 returns u + update: the update, then each sample's scale
            update = normalized_guidance(c, u, 1.0, self._momentum, self.apg["eta"], self.apg["rescale"]) - u
            guided = u + g * update
        return _with_pred(output, torch.cat([u, u + (guided - u) / self.pipeline_scale]))


class CADS(_CfgHook):
    """Condition-annealed sampling (diversity.py) on the conditional half's text tokens; the
    noise of each sample from its own generator (`seeds`), drawn at every CFG call."""

    def __init__(self, pipe, seeds: list[int], setting: dict):
        super().__init__(pipe, len(seeds))
        self.setting = setting
        self.generators = [torch.Generator("cpu").manual_seed(step_seed(seed, "cads")) for seed in seeds]
        self._t = 1.0

    def _pre(self, module, args, kwargs):
        self._t = 1.0 - _progress(self.pipe.scheduler, args, kwargs)
        return super()._pre(module, args, kwargs)

    def pre(self, args, kwargs):
        s = self.setting
        gamma = min(max((s["tau2"] - self._t) / (s["tau2"] - s["tau1"]), 0.0), 1.0)
        y = kwargs.get("encoder_hidden_states")
        if y is None or gamma >= 1.0 or s["noise"] == 0.0:  # no noise: the prompt as it is
            return None
        cond = y[self.n :]
        noise = torch.stack([torch.randn(cond.shape[1:], generator=g) for g in self.generators])
        noised = math.sqrt(gamma) * cond + s["noise"] * math.sqrt(1 - gamma) * noise.to(cond.device, cond.dtype)
        dims = tuple(range(1, cond.dim()))
        mean, std = cond.mean(dims, keepdim=True), cond.std(dims, keepdim=True)
        rescaled = (noised - noised.mean(dims, keepdim=True)) / noised.std(dims, keepdim=True).clamp_min(1e-12)
        rescaled = rescaled * std + mean
        mixed = s["psi"] * rescaled + (1 - s["psi"]) * noised
        return args, {**kwargs, "encoder_hidden_states": torch.cat([y[: self.n], mixed])}
