"""The registry models' real architectures, with random weights, for benchmarks and tests.

assets/configs/<model>/ holds each model's diffusers configs (denoiser, VAE, scheduler), its text
encoders' transformers configs and the shapes the denoiser receives (text.json), each with its
sources (SOURCES.md). A random-weight model has the real model's shapes, FLOPs and speed, not its
images; every result made with one says so.

Every pipeline family built here (SD 1.x/2.x, SDXL, SD3, FLUX) gets its real text encoders (CLIP-L,
CLIP-G, T5-XXL; random weights) and stand-in tokenizers the project builds itself (CLIP's and T5's
special ids, a small vocabulary): token ids differ from the real vocabulary, sequence lengths and
costs do not. `prompt_inputs` still gives random prompt embeddings of the real shapes, for
callers that time the denoising loop alone (as with cached embeddings).
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import torch

from ..errors import InputError
from .registry import MODELS, ModelSpec
from .tokenizer import build_clip_tokenizer, build_t5_tokenizer

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


def has_config(model: str) -> bool:
    """Whether the package ships the model's architecture configs (assets/configs/MODEL)."""
    return (CONFIG_ROOT / model).is_dir()


def text_length(model: str) -> int | None:
    """The prompt-embedding length the registry model's pipeline passes its denoiser (from its
    shipped text config: SD3 333, FLUX-dev 512, FLUX-schnell 256; the most for a length that
    varies per batch, Qwen-Image's 512); None without a config."""
    if not has_config(model):
        return MODELS[model].text_length if model in MODELS else None  # a bundled model's, set in the registry
    shape = architecture(model)["text"].get("prompt_embeds_shape")
    if not shape:
        return None
    return int(str(shape[1]).rpartition("<=")[2])  # "L<=512": padded per batch up to 512 (Qwen-Image)


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


def build_tokenizer(entry: dict):
    """A stand-in for the entry's tokenizer, padding to its sequence length (no download)."""
    if entry["tokenizer"].startswith("T5"):
        return build_t5_tokenizer(TOKENIZER_WORDS, max_length=entry["sequence_length"])
    return build_clip_tokenizer(TOKENIZER_WORDS, max_length=entry["sequence_length"])


def cast_like_pretrained(model, dtype: torch.dtype):
    """`model` in `dtype`, except the modules from_pretrained would keep in fp32 (T5's "wo"
    projections in fp16, where they overflow), so memory and speed match a loaded model."""
    model.to(dtype)
    keep = set(getattr(model, "_keep_in_fp32_modules", None) or ()) if dtype == torch.float16 else set()
    if dtype in (torch.float16, torch.bfloat16):  # the strict list (newer transformers) holds in bf16 too
        keep |= set(getattr(model, "_keep_in_fp32_modules_strict", None) or ())
    for name, module in model.named_modules():
        if keep & set(name.split(".")):
            module.float()
    return model


def build_text_parts(entries: list[dict], dtype: torch.dtype) -> dict:
    """{'text_encoder[_n]': model, 'tokenizer[_n]': tokenizer} for the text.json entries, on the
    current default device (meta: shapes only, no data)."""
    parts: dict = {}
    for entry in entries:
        suffix = entry["name"].removeprefix("text_encoder")  # "", "_2" or "_3"
        parts[entry["name"]] = cast_like_pretrained(build_text_encoder(entry), dtype)
        parts["tokenizer" + suffix] = build_tokenizer(entry)
    return parts


def build_random_pipeline(
    spec: ModelSpec, device: torch.device, dtype: torch.dtype, seed: int = 0, text_encoders: bool = True
):
    """The diffusers pipeline of `spec` with every weight drawn at random from `seed`, built
    directly on `device` (a 12B transformer initialises in seconds on a GPU) and cast to `dtype`.
    text_encoders=False leaves the text encoders and tokenizers out (None), for callers that pass
    prompt embeddings (`prompt_inputs`) and would rather not hold T5-XXL's 4.7B parameters."""
    import diffusers

    if spec.family not in PIPELINE_FAMILIES:
        raise InputError(
            "model",
            spec.name,
            f"no random-weight pipeline for the {spec.family} family yet; "
            f"families with one: {', '.join(PIPELINE_FAMILIES)}",
        )
    arch = architecture(spec.name)
    entries = arch["text"]["text_encoders"]
    torch.manual_seed(seed)
    parts: dict = {}
    verbosity = diffusers.utils.logging.get_verbosity()
    # casting a new model warns about modules to keep in fp32: it has none
    diffusers.utils.logging.set_verbosity_error()
    try:
        with torch.device(device):
            # denoiser before the text encoders: a seed draws the same denoiser either way
            parts["vae"] = build_vae(arch).to(dtype)
            parts["transformer" if spec.family in ("sd3", "flux") else "unet"] = build_denoiser(arch).to(dtype)
            if text_encoders:
                parts.update(build_text_parts(entries, dtype))
    finally:
        diffusers.utils.logging.set_verbosity(verbosity)
    if not text_encoders:
        for entry in entries:
            parts.update({entry["name"]: None, "tokenizer" + entry["name"].removeprefix("text_encoder"): None})
    scheduler_config = dict(arch["scheduler"])
    parts["scheduler"] = getattr(diffusers, scheduler_config.pop("_class_name")).from_config(scheduler_config)
    if spec.family == "sd":
        parts.update(safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    elif spec.family == "sdxl":
        parts.update(force_zeros_for_empty_prompt=True)
    pipe = getattr(diffusers, spec.pipeline)(**parts)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def prompt_inputs(
    spec: ModelSpec, batch: int, device: torch.device, dtype: torch.dtype, guidance: bool, seed: int = 0
) -> dict:
    """Random prompt embeddings of the real shapes (SD3, FLUX), as pipeline keyword arguments:
    they skip text encoding, as cached embeddings do."""
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
