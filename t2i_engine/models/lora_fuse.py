"""LoRA adapters (lora.py) held against a model and fused into its weights, so that a step costs what
it cost without them.

An adapter is a local safetensors file in a format diffusers' `load_lora_weights` reads (its own
and peft's, kohya's); its sha256 and scale name it in a dataset. diffusers places what it can and
only warns about keys it cannot place, so an adapter is first held against the model's modules
(`check_fit`): every key must name a module of the denoiser or of a text encoder, with the shapes
that module takes; the first key that does not fit is named in the refusal.

    lora_A / lora.down / lora_down: [r, in_features], or [r, in_channels, kh, kw] for a Conv2d
    lora_B / lora.up / lora_up:     [out_features, r], or [out_channels, r, 1, 1]

Fusing adds scale * B @ A (times alpha / r where the file gives alpha) to each weight, then drops
the adapter layers: the modules are plain Linear and Conv2d again, as the kernels, compile and
export expect.
"""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import torch

from ..errors import InputError
from ..files import file_sha256
from .architectures import build_random_pipeline
from .lora import Adapter
from .pipelines import builder, bundled_path, component_folder, diffusers_errors_only, hub_cache, quiet_loading

_DOWN = re.compile(r"\.(lora_A(\.[A-Za-z0-9_]+)?|lora\.down|lora_down)\.weight$")
_UP = re.compile(r"\.(lora_B(\.[A-Za-z0-9_]+)?|lora\.up|lora_up)\.weight$")
_OTHER = re.compile(r"\.(alpha|lora_magnitude_vector(\.[A-Za-z0-9_]+)?|lora_B(\.[A-Za-z0-9_]+)?\.bias)$")


def adapter_state_dict(pipeline_cls, adapter: Adapter) -> dict[str, dict[str, torch.Tensor]]:
    """The adapter's tensors by component (unet, transformer, text_encoder, ...), their keys in
    peft's format (MODULE.lora_A.weight, MODULE.lora_B.weight) as diffusers converts them from
    its own, peft's or kohya's, on the CPU."""
    from diffusers.utils import (  # heavy: diffusers
        convert_state_dict_to_diffusers,
        convert_state_dict_to_peft,
        convert_unet_state_dict_to_peft,
    )

    try:
        with quiet_loading():
            loaded = pipeline_cls.lora_state_dict(adapter.path)
        state = loaded[0] if isinstance(loaded, tuple) else loaded
        parts: dict[str, dict] = {}
        for key, tensor in state.items():
            component, _, rest = key.partition(".")
            parts.setdefault(component, {})[rest] = tensor
        for component, part in parts.items():
            if component in ("unet", "transformer"):
                parts[component] = convert_unet_state_dict_to_peft(part)
            else:
                parts[component] = convert_state_dict_to_peft(convert_state_dict_to_diffusers(part))
    except Exception as e:  # noqa: BLE001 - any failure to read or convert it is the file's
        raise InputError(
            "lora", adapter.path, f"not a LoRA that diffusers reads for {pipeline_cls.__name__} ({_first_line(e)})"
        ) from None
    if not any(parts.values()):
        raise InputError("lora", adapter.path, "it holds no LoRA weights")
    return parts


def check_fit(
    parts: dict[str, dict[str, torch.Tensor]], modules: dict[str, torch.nn.Module], adapter: Adapter, model: str
) -> None:
    """Every key of each component's part names a module of that component (`modules`: component
    name -> module) that takes its shape; else the refusal names the first key that does not fit."""

    def refuse(key: str, why: str):
        raise InputError(
            "lora",
            adapter.path,
            f"it does not fit {model}: its key {key!r} (as diffusers reads it) {why} "
            "(an adapter for another architecture?)",
        )

    for component, part in parts.items():
        for rest, tensor in part.items():
            key = f"{component}.{rest}"
            if component not in modules:
                refuse(key, f"is for a component {model} takes no adapters in (it takes {', '.join(modules)})")
            down, up = _DOWN.search(rest), _UP.search(rest)
            match = down or up or _OTHER.search(rest)
            if match is None:
                refuse(key, "is not a LoRA weight, alpha or bias")
            module = _submodule(modules[component], rest[: match.start()])
            if module is None:
                refuse(key, f"names no module of its {component}")
            if not (down or up):
                continue
            if isinstance(module, torch.nn.Linear):
                fan_in, fan_out, ndim = module.in_features, module.out_features, 2
            elif isinstance(module, torch.nn.Conv2d):
                fan_in, fan_out, ndim = module.in_channels, module.out_channels, 4
            else:
                refuse(key, f"names a {type(module).__name__}, which takes no adapter")
            side, want = ("input", fan_in) if down else ("output", fan_out)
            got = tensor.shape[1] if down else tensor.shape[0]
            if tensor.dim() != ndim or got != want:
                refuse(key, f"has shape {list(tensor.shape)}; the module's {side} is {want}")


def _submodule(root: torch.nn.Module, path: str) -> torch.nn.Module | None:
    """`path` under `root`, or under one of its children: transformers' text encoders hold their
    layers one level down (CLIPTextModel.text_model), and adapters name them from either."""
    for base in (root, *root.children()):
        try:
            return base.get_submodule(path)
        except AttributeError:
            continue
    return None


def lora_components(pipe) -> dict[str, torch.nn.Module]:
    """The pipeline's modules that take adapters (denoiser, text encoders), by component name."""
    names = getattr(type(pipe), "_lora_loadable_modules", [])
    return {n: getattr(pipe, n) for n in names if isinstance(getattr(pipe, n, None), torch.nn.Module)}


def fuse_adapters(pipe, adapters: tuple[Adapter, ...], model: str) -> None:
    """Load each adapter (its file must still hold the bytes the recipe hashed), fuse them all at
    their scales into the weights, and drop the adapter layers."""
    if not adapters:
        return
    plain = lora_components(pipe)  # every adapter is held against the modules as they are before any loads
    for adapter in adapters:
        if file_sha256(adapter.path) != adapter.sha256:
            raise InputError(
                "lora",
                adapter.path,
                f"its sha256 is no longer {adapter.sha256[:12]}..., the adapter this dataset was made with",
            )
        check_fit(adapter_state_dict(type(pipe), adapter), plain, adapter, model)
    names = [f"adapter_{i}" for i in range(len(adapters))]
    for name, adapter in zip(names, adapters):
        # quiet: diffusers' "no LoRA keys for the text encoder" and peft's "multiple adapters" notes
        with quiet_loading(), diffusers_errors_only(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Already found a `peft_config`", category=UserWarning)
            pipe.load_lora_weights(adapter.path, adapter_name=name)
    pipe.set_adapters(names, adapter_weights=[a.scale for a in adapters])
    pipe.fuse_lora(components=list(plain), adapter_names=names, lora_scale=1.0)
    pipe.unload_lora_weights()


def _first_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:200]}" if text else type(e).__name__


def check_adapters(spec, weights: str | None, adapters: tuple[Adapter, ...]) -> None:
    """Before anything loads or is written: each adapter fits the model, held against its modules
    built on the meta device (shapes only) from where the run will load it."""
    if not adapters:
        return
    import diffusers  # heavy: diffusers

    pipeline_cls = getattr(diffusers, spec.pipeline)
    modules = _skeleton(spec, weights, getattr(pipeline_cls, "_lora_loadable_modules", []))
    for adapter in adapters:
        check_fit(adapter_state_dict(pipeline_cls, adapter), modules, adapter, spec.name)


def _skeleton(spec, weights: str | None, names: list[str]) -> dict[str, torch.nn.Module]:
    """Components `names` of the model's pipeline: built from a weights folder's configs (a local
    folder, the shipped model, the hub cache) on the meta device; a test model built outright
    (tiny); else the registry's architecture configs, on the meta device."""
    source = weights or bundled_path(spec) or (None if spec.builder else hub_cache(spec))
    if source is None and spec.builder:
        pipe = builder(spec)()
    elif source is None:
        pipe = build_random_pipeline(spec, torch.device("meta"), torch.float32)
    else:
        return _from_folder(spec, Path(source), names)
    return {n: getattr(pipe, n) for n in names if isinstance(getattr(pipe, n, None), torch.nn.Module)}


def _from_folder(spec, folder: Path, names: list[str]) -> dict[str, torch.nn.Module]:
    import diffusers  # heavy: diffusers
    import transformers  # heavy: transformers

    index = json.loads((folder / "model_index.json").read_text())
    out = {}
    with torch.device("meta"), diffusers_errors_only():
        for name in names:
            library, cls_name = index.get(name) or (None, None)
            if cls_name is None:  # absent from this model (digits-dit has no T5)
                continue
            if library == "diffusers":
                cls = getattr(diffusers, cls_name)
                out[name] = cls.from_config(cls.load_config(component_folder(spec, folder, name)))
            else:
                config = transformers.AutoConfig.from_pretrained(component_folder(spec, folder, name))
                out[name] = getattr(transformers, cls_name)._from_config(config)
    return out
