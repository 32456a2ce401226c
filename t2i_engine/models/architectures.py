"""The registry models' real architectures, with random weights, for benchmarks and tests.

assets/configs/<model>/ holds each model's diffusers configs (denoiser, VAE, scheduler), its text
encoders' transformers configs and the shapes the denoiser receives (text.json), each with its
sources (SOURCES.md). A random-weight model has the real model's shapes, FLOPs and speed, not its
images; every result made with one says so.

- Stable Diffusion 1.x/2.x and SDXL get their real text encoders (random weights) and a small
  tokenizer the project builds itself: token ids differ from the real vocabulary, sequence
  lengths and costs do not.
- SD3 and FLUX get no text encoders (T5-XXL has no tokenizer we can build here); their pipelines
  take random prompt embeddings of the real shapes (`prompt_inputs`), as with cached embeddings.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import torch

from ..errors import InputError
from .registry import ModelSpec
from .tokenizer import build_clip_tokenizer

CONFIG_ROOT = Path(__file__).resolve().parents[1] / "assets" / "configs"
# Families whose whole pipeline can be built here; others still have their configs (meta-device
# instantiation, parameter counts, FLOPs).
PIPELINE_FAMILIES = ("sd", "sdxl", "sd3", "flux")
TOKENIZER_WORDS = ["a", "photo", "of", "the", "an", "image", "picture"]


@cache
def architecture(name: str) -> dict:
    """{'denoiser', 'vae', 'scheduler', 'text', 'meta'} configs of registry model `name`."""
    folder = CONFIG_ROOT / name
    if not folder.is_dir():
        have = ", ".join(sorted(p.name for p in CONFIG_ROOT.iterdir() if p.is_dir()))
        raise InputError("model", name, f"has no architecture config in the package; models with one: {have}")
    return {
        part: json.loads((folder / f"{part}.json").read_text())
        for part in ("denoiser", "vae", "scheduler", "text", "meta")
    }


def text_length(model: str) -> int | None:
    """The prompt-embedding length the registry model's pipeline passes its denoiser (from its
    shipped text config: SD3 333, FLUX-dev 512, FLUX-schnell 256); None without a config."""
    if not (CONFIG_ROOT / model).is_dir():
        return None
    shape = architecture(model)["text"].get("prompt_embeds_shape")
    return int(shape[1]) if shape else None


def denoiser_class(arch: dict):
    import diffusers

    name = arch["meta"]["denoiser_class"].split(" ")[0]
    return getattr(diffusers, name)


def build_denoiser(arch: dict):
    return denoiser_class(arch).from_config(arch["denoiser"])


def build_vae(arch: dict):
    import diffusers

    return getattr(diffusers, arch["meta"].get("vae_class", "AutoencoderKL").split(" ")[0]).from_config(arch["vae"])


def build_text_encoder(entry: dict):
    import transformers

    cls = getattr(transformers, entry["class"])
    return cls(cls.config_class(**{k: v for k, v in entry["config"].items() if k != "architectures"}))


def build_random_pipeline(spec: ModelSpec, device: torch.device, dtype: torch.dtype, seed: int = 0):
    """The diffusers pipeline of `spec` with every weight drawn at random from `seed`, built
    directly on `device` (a 12B transformer initialises in seconds on a GPU) and cast to `dtype`."""
    import diffusers

    if spec.family not in PIPELINE_FAMILIES:
        raise InputError(
            "model",
            spec.name,
            f"no random-weight pipeline for the {spec.family} family yet; "
            f"families with one: {', '.join(PIPELINE_FAMILIES)}",
        )
    arch = architecture(spec.name)
    torch.manual_seed(seed)
    parts: dict = {}
    verbosity = diffusers.utils.logging.get_verbosity()
    # casting a new model warns about modules to keep in fp32: it has none
    diffusers.utils.logging.set_verbosity_error()
    try:
        with torch.device(device):
            parts["vae"] = build_vae(arch).to(dtype)
            parts["transformer" if spec.family in ("sd3", "flux") else "unet"] = build_denoiser(arch).to(dtype)
            if spec.family in ("sd", "sdxl"):
                for entry in arch["text"]["text_encoders"]:
                    suffix = entry["name"].removeprefix("text_encoder")  # "" or "_2"
                    parts[entry["name"]] = build_text_encoder(entry).to(dtype)
                    parts["tokenizer" + suffix] = build_clip_tokenizer(
                        TOKENIZER_WORDS, max_length=entry["sequence_length"]
                    )
    finally:
        diffusers.utils.logging.set_verbosity(verbosity)
    scheduler_config = dict(arch["scheduler"])
    parts["scheduler"] = getattr(diffusers, scheduler_config.pop("_class_name")).from_config(scheduler_config)
    if spec.family == "sd":
        parts.update(safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    elif spec.family == "sdxl":
        parts.update(force_zeros_for_empty_prompt=True)
    else:
        names = ["text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2"] + (
            ["text_encoder_3", "tokenizer_3"] if spec.family == "sd3" else []
        )
        parts.update(dict.fromkeys(names))
    pipe = getattr(diffusers, spec.pipeline)(**parts)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def prompt_inputs(
    spec: ModelSpec, batch: int, device: torch.device, dtype: torch.dtype, guidance: bool, seed: int = 0
) -> dict:
    """Random prompt embeddings of the real shapes, as pipeline keyword arguments, for the
    families built without text encoders (SD3, FLUX)."""
    text = architecture(spec.name)["text"]
    g = torch.Generator("cpu").manual_seed(seed)

    def draw(shape):
        return torch.randn([batch if d == "B" else d for d in shape], generator=g).to(device, dtype)

    kw = {
        "prompt_embeds": draw(text["prompt_embeds_shape"]),
        "pooled_prompt_embeds": draw(text["pooled_prompt_embeds_shape"]),
    }
    if guidance and spec.family == "sd3":
        kw.update(
            negative_prompt_embeds=draw(text["prompt_embeds_shape"]),
            negative_pooled_prompt_embeds=draw(text["pooled_prompt_embeds_shape"]),
        )
    return kw
