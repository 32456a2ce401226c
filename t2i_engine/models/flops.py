"""FLOPs per call of a model, counted without running it.

torch.utils.flop_counter counts matmuls, convolutions and attention as the ops are dispatched;
under FakeTensorMode no arithmetic happens, so a 12B-parameter model is counted on a laptop CPU
in seconds. One gap is filled here: on the CPU, scaled_dot_product_attention dispatches to
`_scaled_dot_product_flash_attention_for_cpu`, which the counter does not know (it counted 0,
and SD1.5's UNet came out at 0.677 TFLOP, conv + linear only); it gets the same formula as the
GPU attention kernels: 2 matmuls of 2*B*H*Lq*Lk*D each. 1 multiply-add = 2 FLOPs throughout.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode, flop_registry, shape_wrapper

from .pipelines import denoiser


def _sdpa_cpu_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    b, h, lq, d = query_shape
    lk, dv = key_shape[-2], value_shape[-1]
    return 2 * b * h * lq * lk * d + 2 * b * h * lq * lk * dv  # Q K^T, then softmax(.) V


CUSTOM = {}
if hasattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu"):
    CUSTOM[torch.ops.aten._scaled_dot_product_flash_attention_for_cpu] = _sdpa_cpu_flops  # the counter passes shapes


def count_flops(build: Callable[[], Callable], make_inputs: Callable[[], tuple[tuple, dict]]) -> int:
    """FLOPs of one forward of `build()` on `make_inputs()`, both made under fake tensors (no
    memory, no arithmetic)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode(allow_non_fake_inputs=True):
        model = build()
        args, kwargs = make_inputs()
        with FlopCounterMode(display=False, custom_mapping=CUSTOM) as counter, torch.no_grad():
            model(*args, **kwargs)
    return counter.get_total_flops()


def denoiser_inputs(pipe, family: str, height: int, width: int, text: dict | None = None) -> tuple[tuple, dict]:
    """Arguments of one denoiser forward for one image at height x width, as the pipeline passes
    them (uninitialised tensors: made under fake tensors, their values never matter). `text` is
    the architecture's text.json, for the shapes of families built without text encoders."""
    device, dtype = pipe.device, pipe.dtype
    f = pipe.vae_scale_factor
    h, w = height // f, width // f
    t = torch.tensor([500.0], device=device)

    def empty(*shape):
        return torch.empty(*shape, device=device, dtype=dtype)

    if family in ("sd", "sdxl"):
        unet = pipe.unet
        seq = pipe.tokenizer.model_max_length if pipe.tokenizer is not None else 77
        kwargs = {"encoder_hidden_states": empty(1, seq, unet.config.cross_attention_dim)}
        if family == "sdxl":
            kwargs["added_cond_kwargs"] = {
                "text_embeds": empty(1, pipe.text_encoder_2.config.projection_dim),
                "time_ids": empty(1, 6),
            }
        return (empty(1, unet.config.in_channels, h, w), t), kwargs
    cfg = pipe.transformer.config
    embeds, pooled = text["prompt_embeds_shape"][1:], text["pooled_prompt_embeds_shape"][1:]
    kwargs = {"encoder_hidden_states": empty(1, *embeds), "pooled_projections": empty(1, *pooled), "timestep": t}
    if family == "sd3":
        return (), {"hidden_states": empty(1, cfg.in_channels, h, w), **kwargs}
    if family == "flux":  # latents packed 2x2 into tokens; positions as ids
        tokens = (h // 2) * (w // 2)
        kwargs.update(
            hidden_states=empty(1, tokens, cfg.in_channels), img_ids=empty(tokens, 3), txt_ids=empty(embeds[0], 3)
        )
        if cfg.guidance_embeds:
            kwargs["guidance"] = torch.tensor([3.5], device=device)
        return (), kwargs
    raise ValueError(f"no denoiser inputs for the {family} family")


def decode_flops(vae, latent_hw: tuple[int, int]) -> int:
    """FLOPs of one image's decode by `vae` (an AutoencoderKL, an AutoencoderTiny, ...) from a
    latent of latent_hw: what the pipelines' `vae.decode` runs, post-quant convolution included."""

    def latent():
        shape = (1, vae.config.latent_channels, *latent_hw)
        return (torch.empty(*shape, device=vae.device, dtype=vae.dtype),), {}

    return count_flops(lambda: vae.decode, latent)


def pipeline_flops(
    pipe, family: str, *, steps: int, cfg: bool, height: int, width: int, text: dict | None = None
) -> dict:
    """FLOPs of one image through the denoising loop and the VAE decode. Text encoding is left
    out: the engine encodes each unique prompt once, so per image it tends to zero."""
    forward = count_flops(lambda: denoiser(pipe), lambda: denoiser_inputs(pipe, family, height, width, text))
    f = pipe.vae_scale_factor
    decode = decode_flops(pipe.vae, (height // f, width // f))
    forwards = steps * (2 if cfg else 1)
    return {
        "denoiser_forward": forward,
        "forwards_per_image": forwards,
        "vae_decode": decode,
        "per_image": forwards * forward + decode,
    }


class _OpFlops(TorchDispatchMode):
    """FlopCounterMode's per-op formulas without its module tracker (whose hooks on every module
    broke on Sana's transformer under inference mode): a plain total."""

    def __init__(self):
        super().__init__()
        self.flops = 0
        self.registry = {**flop_registry, **{k: shape_wrapper(v) for k, v in CUSTOM.items()}}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        count = self.registry.get(func._overloadpacket)
        if count is None:  # a composite op (matmul under inference mode arrives whole): count its parts
            with self:
                parts = func.decompose(*args, **kwargs)
            if parts is not NotImplemented:
                return parts
        out = func(*args, **kwargs)
        if count is not None:
            self.flops += count(*args, **kwargs, out_val=out)
        return out


class CallFlops:
    """FLOPs of what `modules` really compute while it is active (`with CallFlops([unet]) as c`):
    each call runs under a counter entered by a pre-hook and left by a post-hook, so whatever
    decides per call what runs (a guidance interval's halved batch, a feature cache's skipped
    blocks) is counted as it ran. For PyTorch modules run eagerly (an exported or compiled
    module's kernels are not seen by the counter)."""

    def __init__(self, modules):
        self.modules, self.flops = list(modules), 0
        self._handles: list = []
        self._open: list[_OpFlops] = []

    def _pre(self, module, args):
        counter = _OpFlops()
        counter.__enter__()
        self._open.append(counter)

    def _post(self, module, args, output):
        counter = self._open.pop()
        counter.__exit__(None, None, None)
        self.flops += counter.flops

    def __enter__(self):
        for m in self.modules:
            self._handles.append(m.register_forward_pre_hook(self._pre))
            self._handles.append(m.register_forward_hook(self._post, always_call=True))
        return self

    def __exit__(self, *exc):
        for handle in self._handles:
            handle.remove()
        self._handles = []


def uses_cfg(pipe, spec, guidance: float) -> bool:
    """Whether the pipeline runs classifier-free guidance (two denoiser passes per step): for
    the nominal FLOPs counted before a run; runs count their real forwards."""
    if spec.family == "flux":
        return False  # distilled guidance (an embedding) or none; true CFG is not used here
    if spec.family in ("sd", "sdxl"):
        return guidance > 1.0 and pipe.unet.config.time_cond_proj_dim is None
    return guidance > 1.0


def text_shapes(pipe) -> dict:
    """A test model's prompt-embedding shapes (it has no shipped text.json), from its denoiser."""
    config = denoiser(pipe).config
    length = pipe.tokenizer.model_max_length if getattr(pipe, "tokenizer", None) is not None else 77
    return {
        "prompt_embeds_shape": ["B", length, config.joint_attention_dim],
        "pooled_prompt_embeds_shape": ["B", config.pooled_projection_dim],
    }
