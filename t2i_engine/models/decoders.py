"""The decoder a run uses in place of the model's VAE: a tiny one (diffusers' AutoencoderTiny).

A recipe's `decoder` is None (the VAE), {"name": a registry tiny decoder (registry.TINY_DECODERS)}
or {"path": a local AutoencoderTiny folder, "sha256": its weights'}. The tiny decoder takes the
VAE's place as `pipe.vae`: every pipeline and the engine's adapters decode with `pipe.vae.decode`
after dividing by its config's scaling factor and adding its shift (the TAESD folders carry the
factors that make this right for their latent space), and the exporters and torch.compile find it
where they find the VAE. The pipeline's `vae_scale_factor` stays the VAE's: it was read when the
pipeline was made.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import torch

from ..errors import InputError, ModelUnavailable
from .pipelines import diffusers_errors_only
from .registry import ModelSpec, tiny_decoder

ASSETS = Path(__file__).resolve().parents[1] / "assets"


def decoder_label(decoder: dict | None) -> str:
    """How a run names its decoder: vae, a registry tiny decoder's name, or a folder's path."""
    if decoder is None:
        return "vae"
    return decoder.get("name") or decoder["path"]


def load_tiny_decoder(spec: ModelSpec, decoder: dict, vae, device: torch.device, dtype: torch.dtype):
    """The AutoencoderTiny `decoder` names for `spec`, checked against the model's VAE `vae`:
    the same latent channels. Missing weights are refused with the command that fetches them."""
    from diffusers import AutoencoderTiny  # heavy: diffusers

    label = decoder_label(decoder)
    registry = tiny_decoder(spec) if "name" in decoder else None
    if registry is not None and registry.builder:
        module, func = registry.builder.split(":")
        tiny = getattr(importlib.import_module(module), func)(vae)
    else:
        source = decoder.get("path") or (str(ASSETS / registry.bundled) if registry.bundled else registry.hub_id)
        try:
            with diffusers_errors_only():
                tiny = AutoencoderTiny.from_pretrained(source, use_safetensors=True)
        except (OSError, ValueError) as e:
            how = (
                f"fetch it on a connected machine with `hf download {registry.hub_id}` (it lands in the hub cache, "
                "which HF_HOME points to) or pass decoder: PATH, a local AutoencoderTiny folder"
                if registry is not None and registry.hub_id
                else "expected a local diffusers AutoencoderTiny folder (config.json and safetensors weights)"
            )
            reason = f"{e.__class__.__name__}: {str(e).splitlines()[0][:160]}"
            raise ModelUnavailable(
                "decoder", label, f"the tiny decoder {source} could not be loaded ({reason}); {how}"
            ) from None
    channels = getattr(vae.config, "latent_channels", None)
    if tiny.config.latent_channels != channels:
        raise InputError(
            "decoder",
            label,
            f"it decodes {tiny.config.latent_channels}-channel latents; {spec.name}'s VAE makes {channels}",
        )
    with diffusers_errors_only():  # diffusers warns on any dtype cast of a model that lists no fp32 modules
        return tiny.to(device=device, dtype=dtype).eval().requires_grad_(False)


def architecture_config(name: str) -> dict:
    """The published config.json of registry tiny decoder `name` (assets/decoder-configs;
    their sources in SOURCES.md there), for counting its FLOPs without its weights."""
    return json.loads((ASSETS / "decoder-configs" / f"{name}.json").read_text(encoding="utf-8"))


def random_tiny_decoder(name: str, dtype: torch.dtype = torch.float32):
    """Registry tiny decoder `name`'s architecture with random weights: its FLOPs, not its images."""
    from diffusers import AutoencoderTiny  # heavy: diffusers

    with diffusers_errors_only():
        return AutoencoderTiny.from_config(architecture_config(name)).to(dtype)


def install_decoder(pipe, spec: ModelSpec, decoder: dict | None) -> None:
    """Put the recipe's decoder in the VAE's place (nothing for None, the VAE)."""
    if decoder is None:
        return
    pipe.vae = load_tiny_decoder(spec, decoder, pipe.vae, pipe.device, pipe.dtype)


def decode_modules(vae) -> list[torch.nn.Module]:
    """The modules a `vae.decode` runs, for counting its FLOPs with forward hooks (flops.CallFlops):
    the decoder, and an AutoencoderKL's post-quant convolution before it."""
    return [m for m in (getattr(vae, "post_quant_conv", None), vae.decoder) if isinstance(m, torch.nn.Module)]
