"""Put a runner (ONNX Runtime, TensorRT) in place of a pipeline component, transparently.

The pipeline keeps calling `pipe.unet(...)` / `pipe.transformer(...)` and `pipe.vae.decode(...)`
with diffusers' own arguments; the module's instance-level forward (decode for the VAE) turns
those into the spec's inputs, runs the runner and returns what diffusers would have returned.
The module itself stays (its config, dtype and device are read by the pipeline). Arguments the
export does not carry (a ControlNet's residuals, attention kwargs) are refused, not dropped.
`restore(pipe)` puts the PyTorch forwards back.
"""

from __future__ import annotations

import functools
import inspect

import torch

from .specs import ComponentSpec

IGNORED = {"return_dict", "generator"}  # no effect on the graph's result


class _Swapped:
    def __init__(self, module, method: str, spec: ComponentSpec, runner):
        self.original = getattr(module, method)
        functools.update_wrapper(
            self, self.original, updated=()
        )  # not the wrapped object's __dict__: a wrapper's would overwrite ours
        self.signature = inspect.signature(self.original)
        self.spec, self.runner, self.method = spec, runner, method
        self.names = [i.name for i in spec.inputs]

    def __call__(self, *args, **kwargs):
        bound = self.signature.bind(*args, **kwargs)
        bound.apply_defaults()
        given = dict(bound.arguments)
        # SDXL's text_embeds and time_ids; PixArt's resolution and aspect_ratio (None below 1024 px)
        added = {k: v for k, v in (given.pop("added_cond_kwargs", None) or {}).items() if v is not None}
        unknown = set(added) - set(self.names)
        if unknown:
            raise ValueError(
                f"{self.spec.component} runs an exported graph that does not take added_cond_kwargs "
                f"{', '.join(sorted(unknown))}; use --backend eager"
            )
        given.update(added)
        if self.method == "decode":  # AutoencoderKL's decode(z, ...), AutoencoderTiny's decode(x, ...)
            given["latent"] = given.pop("z") if "z" in given else given.pop("x")
        for name, expected in self.spec.notes.get("fixed", {}).items():  # Qwen-Image's img_shapes
            value = given.pop(name, None)
            if value is not None and any(_shapes(v) != [tuple(expected)] for v in value):
                raise ValueError(
                    f"{self.spec.component} was exported for {name}={tuple(expected)}, called with {value}; "
                    "build it for this resolution or use --backend eager"
                )
        if self.spec.notes.get("pad_text"):
            _pad_text(given, self.spec)
        batch = given[self.names[0]].shape[0]
        inputs = []
        for name in self.names:
            value = given.pop(name, None)
            if value is None and name == "guidance":
                raise ValueError(f"{self.spec.component}: exported with a guidance input, called without one")
            if name == "timestep":  # diffusers passes a scalar or a 0-d tensor to UNets
                value = torch.as_tensor(value).reshape(-1).expand(batch)
            inputs.append(value)
        extra = [
            k
            for k, v in given.items()
            if k not in IGNORED
            and v is not None
            and not (isinstance(v, dict) and not v)  # attention_kwargs={} (Qwen-Image) asks for nothing
            and v is not self.signature.parameters[k].default
            and self.signature.parameters[k].kind
            not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
        ]
        if extra:
            raise ValueError(
                f"{self.spec.component} runs an exported graph that does not take {', '.join(extra)}; use "
                "--backend eager"
            )
        out = self.runner(*inputs)
        dtype = _float_dtype(inputs)
        out = out.to(dtype) if dtype is not None else out
        if not given.get("return_dict", True):
            return (out,)
        return _output(self.spec.kind, out)


def _shapes(value) -> list[tuple]:
    """One sample's img_shapes: a (frames, height, width) or a list of them."""
    return [tuple(v) for v in value] if isinstance(value[0], (list, tuple)) else [tuple(value)]


def _pad_text(given: dict, spec: ComponentSpec) -> None:
    """A caption shorter than the export's (Qwen-Image pads each batch to its longest prompt)
    gets masked zero tokens up to it: masked keys weigh nothing, and the text RoPE of the real
    tokens does not depend on the length. A longer one is refused."""
    length = next(i.shape[1] for i in spec.inputs if i.name == "encoder_hidden_states")
    text = given.get("encoder_hidden_states")
    if text is not None and given.get("encoder_hidden_states_mask") is None:  # no mask: every token counts
        given["encoder_hidden_states_mask"] = torch.ones(text.shape[:2], dtype=torch.long, device=text.device)
    for name in ("encoder_hidden_states", "encoder_hidden_states_mask"):
        value = given.get(name)
        if value is None:
            continue
        if value.shape[1] > length:
            raise ValueError(
                f"{spec.component} was exported for {length} caption tokens, called with {value.shape[1]}"
            )
        pad = value.new_zeros(value.shape[0], length - value.shape[1], *value.shape[2:])
        given[name] = torch.cat([value, pad], dim=1)


def _float_dtype(inputs) -> torch.dtype | None:
    return next((t.dtype for t in inputs if torch.is_tensor(t) and t.is_floating_point()), None)


def _output(kind: str, out: torch.Tensor):
    if kind == "vae_decoder":
        from diffusers.models.autoencoders.vae import DecoderOutput

        return DecoderOutput(sample=out)
    from diffusers.models.modeling_outputs import Transformer2DModelOutput

    return Transformer2DModelOutput(sample=out)  # .sample, as UNet2DConditionOutput has


def swap(pipe, spec: ComponentSpec, runner) -> None:
    module = getattr(pipe, spec.component)
    method = "decode" if spec.kind == "vae_decoder" else "forward"
    _restore(module)
    setattr(module, method, _Swapped(module, method, spec, runner))


def _restore(module) -> None:
    for method in ("forward", "decode"):
        swapped = module.__dict__.get(method)
        if isinstance(swapped, _Swapped):
            if getattr(swapped.original, "__func__", None) is getattr(type(module), method, None):
                delattr(module, method)  # the class's own method again
            else:
                setattr(module, method, swapped.original)  # what was there before (e.g. the kernels' routing)


def restore(pipe) -> None:
    for name in ("unet", "transformer", "vae"):
        module = getattr(pipe, name, None)
        if module is not None:
            _restore(module)
