"""The model registry: every model `generate` and `bench` know, by a short predictable name.

An entry says which diffusers pipeline runs the model, where its weights live (a hub id; a local
folder can be given instead), its dtype on a GPU, native resolution, and the default steps and
guidance of the paper's code (../shared/PAPER.md: "code default steps / CFG"). Test models are
built from configs with random weights by a builder function and need no download.

This module imports neither torch nor diffusers, so recipes are checked before anything heavy
loads.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from ..errors import InputError


@dataclass(frozen=True)
class ModelSpec:
    name: str
    pipeline: str  # diffusers pipeline class name
    hub_id: str | None
    dtype: str  # on a GPU; the CPU always runs float32
    resolution: tuple[int, int]  # native (height, width)
    steps: int
    guidance: float
    released: str = ""
    family: str = "sd"
    scheduler: str | None = None  # a diffusers scheduler class replacing the pipeline's own
    resolution_multiple: int = 8  # height and width must be multiples of this (VAE factor x patch size)
    distilled: bool = False  # guidance distilled into the model (turbo, schnell, FLUX-dev): no unconditional branch
    builder: str | None = None  # "module:function" building a random-weight pipeline
    bundled: str | None = None  # folder under t2i_engine/assets holding weights shipped in the wheel
    test_model: bool = False  # hidden from `models` unless --all
    standalone: bool = True  # False: a refiner, not a text-to-image model of its own
    refines: tuple[str, ...] = ()  # a refiner: the base models whose latents it takes (recipe key `refiner`)
    batch_size: int = 16  # default images per model call (the paper's 16; more where it pays)
    text_length: int | None = None  # the prompt-embedding length, for a model without shipped configs
    # a student shipped as its denoiser and scheduler only: the model whose shipped text encoders,
    # tokenizers and VAE it loads (they are its base's, frozen in training)
    shares: str | None = None
    student_of: str | None = None  # a distilled student: its base model (teacher)
    latents: str = ""  # its latent space (its VAE's), where models share one; "" is the family's published VAE
    note: str = ""

    @property
    def latent_space(self) -> str:
        """What the model's latents mean. Two models can hand latents to each other mid-sampling
        (the first-steps option) only within one: a hub model has its family's VAE (SD 1.x and 2.x
        share theirs), a test model its own random one, the embedded models the digits VAE."""
        if self.latents:
            return self.latents
        return self.name if self.builder else f"{self.family}-vae"


def _m(name, pipeline, hub_id, dtype, res, steps, guidance, released, family="sd", **kw) -> ModelSpec:
    return ModelSpec(name, pipeline, hub_id, dtype, (res, res), steps, guidance, released, family, **kw)


# fmt: off
MODELS: dict[str, ModelSpec] = {
    m.name: m
    for m in [
        # The paper's 13 models, in release order.
        _m("sd15", "StableDiffusionPipeline", "stable-diffusion-v1-5/stable-diffusion-v1-5", "float16", 512, 50, 7.5, "2022-10"),
        _m("sd21", "StableDiffusionPipeline", "stabilityai/stable-diffusion-2-1", "float16", 768, 50, 7.5, "2022-12",
           scheduler="DPMSolverMultistepScheduler"),
        _m("sdxl", "StableDiffusionXLPipeline", "stabilityai/stable-diffusion-xl-base-1.0", "float16", 1024, 50, 5.0, "2023-07", "sdxl"),
        _m("sdxl-turbo", "StableDiffusionXLPipeline", "stabilityai/sdxl-turbo", "float16", 512, 4, 0.0, "2023-11", "sdxl", distilled=True),
        _m("sd3-medium", "StableDiffusion3Pipeline", "stabilityai/stable-diffusion-3-medium-diffusers", "bfloat16", 1024, 28, 7.0, "2024-06", "sd3",
           resolution_multiple=16),
        _m("flux-dev", "FluxPipeline", "black-forest-labs/FLUX.1-dev", "bfloat16", 1024, 50, 3.5, "2024-08", "flux",
           resolution_multiple=16, distilled=True, note="max_sequence_length 512; guidance is distilled (embedded), not CFG"),
        _m("flux-schnell", "FluxPipeline", "black-forest-labs/FLUX.1-schnell", "bfloat16", 1024, 4, 0.0, "2024-08", "flux",
           resolution_multiple=16, distilled=True, note="max_sequence_length 256"),
        _m("sd35-large", "StableDiffusion3Pipeline", "stabilityai/stable-diffusion-3.5-large", "bfloat16", 1024, 28, 3.5, "2024-10", "sd3",
           resolution_multiple=16),
        _m("sd35-medium", "StableDiffusion3Pipeline", "stabilityai/stable-diffusion-3.5-medium", "bfloat16", 1024, 40, 4.5, "2024-10", "sd3",
           resolution_multiple=16),
        _m("sd35-large-turbo", "StableDiffusion3Pipeline", "stabilityai/stable-diffusion-3.5-large-turbo", "bfloat16", 1024, 4, 0.0, "2024-10", "sd3",
           resolution_multiple=16, distilled=True),
        _m("sana-1.6b", "SanaPipeline", "Efficient-Large-Model/Sana_1600M_1024px_diffusers", "bfloat16", 1024, 50, 7.5, "2024-11", "sana",
           resolution_multiple=32),
        _m("lumina2", "Lumina2Pipeline", "Alpha-VLLM/Lumina-Image-2.0", "bfloat16", 1024, 50, 7.5, "2025-01", "lumina2",
           resolution_multiple=16),
        _m("qwen-image", "QwenImagePipeline", "Qwen/Qwen-Image", "bfloat16", 1024, 50, 7.5, "2025-08", "qwen-image",
           resolution_multiple=16, note="true CFG (true_cfg_scale)"),
        # In the paper's code, outside its headline plot.
        _m("sd20", "StableDiffusionPipeline", "stabilityai/stable-diffusion-2", "float16", 768, 50, 7.5, "2022-11",
           scheduler="EulerDiscreteScheduler"),
        _m("sdxl-refiner", "StableDiffusionXLImg2ImgPipeline", "stabilityai/stable-diffusion-xl-refiner-1.0", "float16", 1024, 50, 5.0,
           "2023-07", "sdxl", standalone=False, refines=("sdxl",),
           note="second stage of sdxl (recipe: refiner: sdxl-refiner; it takes the last 20% of the steps); not a text-to-image model alone"),
        _m("pixart-alpha", "PixArtAlphaPipeline", "PixArt-alpha/PixArt-XL-2-512x512", "float16", 512, 20, 4.5, "2023-11", "pixart",
           resolution_multiple=16),
        # The embedded model, trained on scikit-learn's handwritten digits (assets/digits/README.md).
        _m("digits", "StableDiffusionPipeline", None, "float32", 32, 15, 2.0, "2026-11", bundled="digits", batch_size=100,
           latents="digits-vae",
           note="shipped in the package; 32x32 digits, classes 'digits'"),
        # The second embedded model: SD3's classes, flow matching, trained on the same digits (assets/digits-dit/README.md).
        _m("digits-dit", "StableDiffusion3Pipeline", None, "float32", 32, 15, 2.0, "2026-12", "sd3", bundled="digits-dit",
           batch_size=100, latents="digits-vae", text_length=16, note="shipped in the package; SD3-shaped, 32x32 digits, classes 'digits'"),
        # The embedded models' few-step students, distilled here (training/distill.py; their cards in
        # assets/digits-lcm/README.md and assets/digits-dit-cm/README.md): the denoiser and scheduler
        # ship, the text encoders and VAE are the base's. digits-lcm takes the guidance scale as an
        # input (one forward per step at any scale); digits-dit-cm has guidance 2.0 built in.
        _m("digits-lcm", "StableDiffusionPipeline", None, "float32", 32, 2, 2.0, "2026-12", bundled="digits-lcm",
           shares="digits", student_of="digits", batch_size=100, latents="digits-vae",
           note="shipped in the package; digits distilled to 1-8 steps (LCM, guidance as an input, no CFG)"),
        _m("digits-dit-cm", "StableDiffusion3Pipeline", None, "float32", 32, 4, 1.0, "2026-12", "sd3", bundled="digits-dit-cm",
           shares="digits-dit", student_of="digits-dit", distilled=True, batch_size=100, text_length=16, latents="digits-vae",
           note="shipped in the package; digits-dit distilled to 1-8 steps (flow consistency, guidance 2.0 built in)"),
        # Random-weight test model: SD1.5's classes and layout at a few hundred thousand weights.
        _m("tiny-sd", "StableDiffusionPipeline", None, "float32", 64, 20, 5.0, "", builder="t2i_engine.models.tiny:build_tiny_sd",
           test_model=True, note="random weights from a fixed seed; for tests and benchmarks"),
        _m("tiny-sd2", "StableDiffusionPipeline", None, "float32", 64, 20, 5.0, "", builder="t2i_engine.models.tiny:build_tiny_sd2",
           test_model=True, note="SD 2.x's wiring (v-prediction) at toy sizes, random weights from a fixed seed; for tests"),
        _m("tiny-flux-schnell", "FluxPipeline", None, "float32", 64, 4, 0.0, "", "flux", builder="t2i_engine.models.tiny:build_tiny_flux_schnell",
           resolution_multiple=16, distilled=True, test_model=True, note="FLUX.1-schnell's wiring (no guidance embedding) at toy sizes; for tests"),
        _m("tiny-sdxl", "StableDiffusionXLPipeline", None, "float32", 64, 20, 5.0, "", "sdxl", builder="t2i_engine.models.tiny:build_tiny_sdxl",
           test_model=True, note="SDXL's classes at toy sizes, random weights from a fixed seed; for tests"),
        _m("tiny-sdxl-refiner", "StableDiffusionXLImg2ImgPipeline", None, "float32", 64, 20, 5.0, "", "sdxl",
           builder="t2i_engine.models.tiny:build_tiny_sdxl_refiner", test_model=True, standalone=False, refines=("tiny-sdxl",),
           note="the SDXL refiner's classes at toy sizes (tiny-sdxl's second text encoder and VAE); for tests"),
        _m("tiny-sd3", "StableDiffusion3Pipeline", None, "float32", 64, 20, 5.0, "", "sd3", builder="t2i_engine.models.tiny:build_tiny_sd3",
           resolution_multiple=16, test_model=True, note="SD3's classes at toy sizes, random weights from a fixed seed; for tests"),
        _m("tiny-flux", "FluxPipeline", None, "float32", 64, 20, 3.5, "", "flux", builder="t2i_engine.models.tiny:build_tiny_flux",
           resolution_multiple=16, distilled=True, test_model=True, note="FLUX.1-dev's classes at toy sizes, random weights from a fixed seed; for tests"),
        _m("tiny-pixart", "PixArtAlphaPipeline", None, "float32", 64, 20, 4.5, "", "pixart", builder="t2i_engine.models.tiny:build_tiny_pixart",
           resolution_multiple=16, test_model=True, note="PixArt-alpha's classes at toy sizes, random weights from a fixed seed; for tests"),
        _m("tiny-sana", "SanaPipeline", None, "float32", 64, 20, 4.5, "", "sana", builder="t2i_engine.models.tiny:build_tiny_sana",
           resolution_multiple=16, test_model=True, note="Sana's classes at toy sizes, random weights from a fixed seed; for tests"),
        _m("tiny-lumina2", "Lumina2Pipeline", None, "float32", 64, 20, 4.0, "", "lumina2", builder="t2i_engine.models.tiny:build_tiny_lumina2",
           resolution_multiple=16, test_model=True, note="Lumina-Image 2.0's classes at toy sizes, random weights from a fixed seed; for tests"),
        _m("tiny-qwen-image", "QwenImagePipeline", None, "float32", 64, 20, 4.0, "", "qwen-image",
           builder="t2i_engine.models.tiny:build_tiny_qwen_image", resolution_multiple=16, test_model=True,
           note="Qwen-Image's classes at toy sizes, random weights from a fixed seed; for tests"),
    ]
}
# fmt: on


@dataclass(frozen=True)
class DecoderSpec:
    """A tiny decoder (diffusers' AutoencoderTiny) of one latent space: `decoder: tiny` decodes
    with it instead of the model's VAE. Its weights: a hub id, a folder shipped in the package,
    or (test models) random ones built to the model's VAE."""

    name: str
    latent_space: str  # ModelSpec.latent_space it decodes
    latent_channels: int | None  # None: the test model's VAE's (built to match)
    hub_id: str | None = None
    bundled: str | None = None  # folder under t2i_engine/assets
    builder: str | None = None  # "module:function" taking the model's VAE
    note: str = ""


# madebyollin's TAESD family (../shared/FEWSTEP.md), each trained on its VAE's latents; SD 2.x
# and 1.x share one VAE (and so TAESD), SDXL-Turbo has SDXL's, SD 3.5 SD3's, both FLUXes one.
# fmt: off
TINY_DECODERS: dict[str, DecoderSpec] = {
    d.latent_space: d
    for d in [
        DecoderSpec("taesd", "sd-vae", 4, hub_id="madebyollin/taesd", note="SD 1.x and 2.x"),
        DecoderSpec("taesdxl", "sdxl-vae", 4, hub_id="madebyollin/taesdxl", note="SDXL, SDXL-Turbo"),
        DecoderSpec("taesd3", "sd3-vae", 16, hub_id="madebyollin/taesd3", note="SD3, SD3.5"),
        DecoderSpec("taef1", "flux-vae", 16, hub_id="madebyollin/taef1", note="FLUX.1"),
        DecoderSpec("digits-taesd", "digits-vae", 4, bundled="digits-taesd",
                    note="the embedded models' and their students' (training/tiny_decoder.py)"),
    ]
}
# fmt: on
# Test models of the families with a TAESD get a random tiny decoder of their own latent space.
TEST_DECODER_FAMILIES = ("sd", "sdxl", "sd3", "flux")


def tiny_decoder(spec: ModelSpec) -> DecoderSpec | None:
    """The tiny decoder of the model's latent space (None: it has none)."""
    if spec.test_model and spec.builder and spec.family in TEST_DECODER_FAMILIES:
        return DecoderSpec(
            f"{spec.name}-tiny-decoder", spec.latent_space, None, builder="t2i_engine.models.tiny:build_tiny_decoder"
        )
    return TINY_DECODERS.get(spec.latent_space)


def vae_latent_channels(spec: ModelSpec) -> int | None:
    """The latent channels of the model's VAE, from its shipped config (hub models: the
    architecture config of assets/configs; shipped models: their folder's); None for test models."""
    assets = Path(__file__).resolve().parents[1] / "assets"
    folder = spec.bundled and MODELS[spec.shares].bundled if spec.shares else spec.bundled
    path = assets / folder / "vae" / "config.json" if folder else assets / "configs" / spec.name / "vae.json"
    if not path.is_file():
        return None
    config = json.loads(path.read_text(encoding="utf-8"))
    return config.get("latent_channels", config.get("z_dim"))


# The first diffusers release holding each family's pipeline and denoiser classes (release notes:
# SD3 0.29, FLUX 0.30, Sana 0.32, Lumina-Image 2.0 0.33, Qwen-Image 0.35).
DIFFUSERS_SINCE = {
    "sd": "0.19",
    "sdxl": "0.19",
    "pixart": "0.22",
    "sd3": "0.29",
    "flux": "0.30",
    "sana": "0.32",
    "lumina2": "0.33",
    "qwen-image": "0.35",
}


def check_diffusers(spec: ModelSpec, installed: str | None = None) -> None:
    """Refuse a model whose family the installed diffusers predates, naming the release needed
    (read from the package metadata: diffusers is not imported)."""
    installed = installed or _installed_diffusers()
    if installed is None:
        raise InputError("model", spec.name, "needs diffusers, which is not installed: pip install 'diffusers>=0.35'")
    need = DIFFUSERS_SINCE.get(spec.family)
    if need and _release(installed) < _release(need):
        raise InputError(
            "model",
            spec.name,
            f"the {spec.family} family ({spec.pipeline}) needs diffusers >= {need}; "
            f"this environment has {installed}: pip install -U 'diffusers>={need}'",
        )


@cache
def _installed_diffusers() -> str | None:
    import importlib.metadata as md

    try:
        return md.version("diffusers")
    except md.PackageNotFoundError:
        return None


def _release(version: str) -> tuple[int, ...]:
    """'0.35.0' -> (0, 35, 0); '0.32rc1' -> (0, 32); 'v0.40.0' -> (0, 40, 0)."""
    parts = []
    for p in version.lstrip("vV").split(".")[:3]:
        digits = re.match(r"[0-9]*", p).group()
        if digits:
            parts.append(int(digits))
        if digits != p:  # a pre-release or local suffix ends the release number
            break
    return tuple(parts)


def get_model(name: object, field: str = "model") -> ModelSpec:
    if not isinstance(name, str) or name not in MODELS:
        raise InputError(field, name, f"expected a registry model: {', '.join(MODELS)}")
    spec = MODELS[name]
    if not spec.standalone:
        raise InputError(field, name, f"{spec.note}; pick a text-to-image model")
    check_diffusers(spec)
    return spec


def get_refiner(name: object, base: ModelSpec) -> ModelSpec:
    """The refiner a recipe names for `base`: a second-stage registry model made for it."""
    fits = [m.name for m in MODELS.values() if base.name in m.refines]
    if not isinstance(name, str) or name not in fits:
        allowed = (
            f"expected one of {', '.join(fits)}"
            if fits
            else f"{base.name} has no refiner in the registry; leave it out"
        )
        raise InputError("refiner", name, allowed)
    check_diffusers(MODELS[name])
    return MODELS[name]


@dataclass(frozen=True)
class AdapterSpec:
    """A published LoRA that makes a few-step student of a base model, with the sampling setting
    its card publishes; `--lora NAME` loads it from the local hub cache and applies that setting
    (sampler, steps, guidance) where the recipe sets none of its own."""

    name: str
    hub_id: str
    filename: str
    family: str  # the family of the base it was trained on (its modules are held to the model anyway)
    base: str  # that base, by registry name
    sampler: str  # engine.sampling.SAMPLERS
    steps: int
    guidance: float
    note: str = ""


# From each adapter's model card (../shared/FEWSTEP.md lists them): LCM-LoRA takes guidance off or
# 1-2, the others guidance 0 (no CFG); Hyper-SD and SDXL-Lightning sample on the trailing grid
# (DDIM and Euler with timestep_spacing "trailing"), DMD2 on LCM's at 999/749/499/249.
# fmt: off
ADAPTERS: dict[str, AdapterSpec] = {
    a.name: a
    for a in [
        AdapterSpec("lcm-lora-sd15", "latent-consistency/lcm-lora-sdv1-5", "pytorch_lora_weights.safetensors", "sd", "sd15", "lcm", 4, 1.0,
                    "LCM-LoRA (Luo et al. 2023): 2-8 steps"),
        AdapterSpec("lcm-lora-sdxl", "latent-consistency/lcm-lora-sdxl", "pytorch_lora_weights.safetensors", "sdxl", "sdxl", "lcm", 4, 1.0,
                    "LCM-LoRA (Luo et al. 2023): 2-8 steps"),
        AdapterSpec("hyper-sd15-4step", "ByteDance/Hyper-SD", "Hyper-SD15-4steps-lora.safetensors", "sd", "sd15", "ddim-trailing", 4, 0.0,
                    "Hyper-SD (Ren et al. 2024)"),
        AdapterSpec("hyper-sd15-8step", "ByteDance/Hyper-SD", "Hyper-SD15-8steps-lora.safetensors", "sd", "sd15", "ddim-trailing", 8, 0.0,
                    "Hyper-SD (Ren et al. 2024)"),
        AdapterSpec("hyper-sdxl-4step", "ByteDance/Hyper-SD", "Hyper-SDXL-4steps-lora.safetensors", "sdxl", "sdxl", "ddim-trailing", 4, 0.0,
                    "Hyper-SD (Ren et al. 2024)"),
        AdapterSpec("hyper-sdxl-8step", "ByteDance/Hyper-SD", "Hyper-SDXL-8steps-lora.safetensors", "sdxl", "sdxl", "ddim-trailing", 8, 0.0,
                    "Hyper-SD (Ren et al. 2024)"),
        AdapterSpec("sdxl-lightning-4step", "ByteDance/SDXL-Lightning", "sdxl_lightning_4step_lora.safetensors", "sdxl", "sdxl", "euler-trailing", 4, 0.0,
                    "SDXL-Lightning (Lin et al. 2024)"),
        AdapterSpec("sdxl-lightning-8step", "ByteDance/SDXL-Lightning", "sdxl_lightning_8step_lora.safetensors", "sdxl", "sdxl", "euler-trailing", 8, 0.0,
                    "SDXL-Lightning (Lin et al. 2024)"),
        AdapterSpec("dmd2-sdxl-4step", "tianweiy/DMD2", "dmd2_sdxl_4step_lora.safetensors", "sdxl", "sdxl", "lcm-trailing", 4, 0.0,
                    "DMD2 (Yin et al. 2024); its license is non-commercial"),
    ]
}
# fmt: on


def get_adapter(name: str, model: ModelSpec) -> AdapterSpec | None:
    """The registry adapter `name` (None: not a registry name), refused for a model of another family."""
    spec = ADAPTERS.get(name)
    if spec is not None and spec.family != model.family:
        raise InputError(
            "lora",
            name,
            f"it was made for {spec.base} (the {spec.family} family); {model.name} is {model.family}: "
            f"adapters for it: {', '.join(a.name for a in ADAPTERS.values() if a.family == model.family) or 'none'}",
        )
    return spec
