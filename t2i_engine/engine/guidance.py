"""The work of sampling.py's settings: the sampler put in place, and the guidance interval's
hooks on the denoiser (see sampling.py for what each means)."""

from __future__ import annotations

import math

import torch

from ..models.pipelines import denoiser
from .sampling import DEFAULT, SAMPLERS


def set_sampler(pipe, name: str) -> None:
    """The pipeline's scheduler for `name`, built from the scheduler it had before the first
    sampler was set (kept on the pipeline, so one sampler after another starts from the same
    config). "default" undoes a sampler set here and leaves any other scheduler alone."""
    import diffusers

    state = pipe.__dict__
    if name == DEFAULT:
        if "_t2i_scheduler" in state and pipe.scheduler is state.get("_t2i_installed"):
            pipe.scheduler = state["_t2i_scheduler"]
        return
    if pipe.scheduler is not state.get("_t2i_installed"):  # the scheduler as loaded, or set by a caller
        state["_t2i_scheduler"] = pipe.scheduler
    cls, options = SAMPLERS[name]
    pipe.scheduler = getattr(diffusers, cls).from_config(state["_t2i_scheduler"].config, **options)
    state["_t2i_installed"] = pipe.scheduler


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
