"""The plain diffusers pipeline of a registry model: built (test models), loaded (a hub id, a
local folder, the weights shipped in the package), or its real architecture with random weights
(`obtain_pipeline`, for benchmarks and builds). No kernels, no backends: engine/runtime.py puts
those on top for a run.

Loaded pipelines come with the registry's settings applied (the scheduler the paper's code used,
no per-step progress bar) and in the dtype asked for, on the device asked for.
"""

from __future__ import annotations

import importlib
import json
import os
from contextlib import contextmanager
from pathlib import Path

import torch

from ..errors import InputError, ModelUnavailable
from .architectures import build_random_pipeline
from .registry import ModelSpec, get_model

# The family of each pipeline class the registry names (a refiner is SDXL's img2img pipeline).
PIPELINE_FAMILY = {
    "StableDiffusionPipeline": "sd",
    "StableDiffusionXLPipeline": "sdxl",
    "StableDiffusionXLImg2ImgPipeline": "sdxl",
    "StableDiffusion3Pipeline": "sd3",
    "FluxPipeline": "flux",
    "PixArtAlphaPipeline": "pixart",
    "SanaPipeline": "sana",
    "Lumina2Pipeline": "lumina2",
    "QwenImagePipeline": "qwen-image",
}


def denoiser(pipe):
    """The pipeline's denoiser: a UNet (SD, SDXL) or a transformer (SD3, FLUX, ...)."""
    return pipe.unet if hasattr(pipe, "unet") else pipe.transformer


def family_of(pipe) -> str | None:
    """The registry family of a pipeline, from its class (None for a class the registry lacks)."""
    return PIPELINE_FAMILY.get(type(pipe).__name__)


def resolve_dtype(spec: ModelSpec, device: torch.device) -> torch.dtype:
    # Half precision on a CPU is slow and, for some ops, missing: the CPU runs float32.
    return getattr(torch, spec.dtype) if device.type == "cuda" else torch.float32


def load_pipeline(spec: ModelSpec, weights: str | None, device: torch.device, dtype: torch.dtype):
    """Build (test models) or load (hub id, local folder, shipped weights) the model's pipeline."""
    if spec.builder and weights is None:
        pipe = builder(spec)()
        # Built modules start in training mode: the text encoders' dropout (T5's) would fire, so they
        # go to eval mode. The denoisers and VAEs have no dropout and stay as built: eval mode computes
        # the same there but with other memory layouts (ResnetBlock2D), so other last bits, which
        # would move pixels of test models whose datasets earlier versions made.
        for name, component in pipe.components.items():
            if name.startswith("text_encoder") and isinstance(component, torch.nn.Module):
                component.eval()
    else:
        pipe = from_pretrained(spec, weights or bundled_path(spec), dtype)
    apply_registry_settings(spec, pipe)
    if pipe.dtype != dtype:  # built models come in float32; loaded ones already in dtype
        pipe = pipe.to(dtype=dtype)
    return pipe.to(device)


def builder(spec: ModelSpec):
    """The function a test model's registry entry names ("module:function"), which builds its
    pipeline with random weights (a refiner's takes the base pipeline)."""
    module, func = spec.builder.split(":")
    return getattr(importlib.import_module(module), func)


def apply_registry_settings(spec: ModelSpec, pipe) -> None:
    """What the registry changes in any pipeline of the model, however it was made: the
    scheduler the paper's code used, and no progress bar (a tqdm write per step)."""
    if spec.scheduler:
        import diffusers  # heavy: diffusers (imported where a model is made)

        pipe.scheduler = getattr(diffusers, spec.scheduler).from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)


def bundled_path(spec: ModelSpec) -> str | None:
    """The folder of weights shipped inside the package, for models that have one."""
    return str(Path(__file__).resolve().parents[1] / "assets" / spec.bundled) if spec.bundled else None


def from_pretrained(spec: ModelSpec, weights: str | None, dtype: torch.dtype, flag: str = "--weights", **components):
    """`components`: modules to use instead of the folder's own (a refiner's shared ones)."""
    import diffusers

    source = weights or spec.hub_id
    if weights is not None and not Path(weights).is_dir():
        raise InputError(
            flag.removeprefix("--").replace("-", "_"),
            weights,
            "expected a local diffusers folder (with model_index.json)",
        )
    pickled = _pickled_only(Path(weights)) if weights is not None else []
    if pickled:
        raise InputError(
            flag.removeprefix("--").replace("-", "_"),
            weights,
            "only safetensors weights are loaded (a pickle can run code), and it holds pickles with no "
            f"safetensors beside them ({', '.join(pickled[:3])}{', ...' if len(pickled) > 3 else ''}); save the "
            "pipeline again with save_pretrained(PATH, safe_serialization=True)",
        )
    extra = (
        {"safety_checker": None, "requires_safety_checker": False}
        if "StableDiffusion" in spec.pipeline and spec.family == "sd"
        else {}
    )
    extra.update(_saved_without(source))
    if spec.shares and weights == bundled_path(spec):
        components = {**shared_components(spec, dtype), **components}
    # diffusers 0.36 renamed torch_dtype to dtype and deprecates the old name.
    dtype_kw = "dtype" if _version_tuple(diffusers.__version__) >= (0, 36) else "torch_dtype"
    try:
        with quiet_loading():
            return getattr(diffusers, spec.pipeline).from_pretrained(
                source, use_safetensors=True, trust_remote_code=False, **{dtype_kw: dtype}, **extra, **components
            )
    except (OSError, ValueError) as e:
        raise unavailable(spec, source, e, flag) from None


def shared_components(spec: ModelSpec, dtype: torch.dtype) -> dict:
    """A shipped student's components that are its base's (text encoders, tokenizers, VAE): loaded
    from the base's shipped folder, where the student's folder has none of its own."""
    base = get_model(spec.shares)
    folder = Path(bundled_path(spec))
    with quiet_loading():
        pipe = from_pretrained(base, bundled_path(base), dtype)
    return {k: v for k, v in pipe.components.items() if v is not None and not (folder / k).is_dir()}


def component_folder(spec: ModelSpec, folder: str | Path, name: str) -> Path:
    """Where component `name` of the model in `folder` lives: a shipped student's shared ones in its base's folder."""
    path = Path(folder) / name
    if not path.is_dir() and spec.shares and str(folder) == bundled_path(spec):
        return Path(bundled_path(get_model(spec.shares))) / name
    return path


PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def _pickled_only(folder: Path) -> list[str]:
    """Pickled weight files (relative paths) in a folder's components that hold no safetensors."""
    found = []
    for d in [folder, *sorted(p for p in folder.iterdir() if p.is_dir())]:
        files = [p for p in d.iterdir() if p.is_file()]
        if not any(p.suffix == ".safetensors" for p in files):
            found += [str(p.relative_to(folder)) for p in sorted(files) if p.suffix in PICKLE_SUFFIXES]
    return found


def _saved_without(source: str | None) -> dict:
    """Components a local folder's model_index.json records as absent ([null, null]: digits-dit
    has no T5): diffusers wants them passed as None to load such a folder."""
    index = Path(source) / "model_index.json" if source else None
    if index is None or not index.is_file():
        return {}
    entries = json.loads(index.read_text())
    return {k: None for k, v in entries.items() if isinstance(v, list) and v == [None, None]}


@contextmanager
def quiet_loading():
    """diffusers' and transformers' per-component progress bars off while a model loads (their
    warnings stay): a run prints its own lines, not theirs between them."""
    import diffusers
    import transformers

    libraries = [lib.utils.logging for lib in (diffusers, transformers)]
    were = [lib.is_progress_bar_enabled() for lib in libraries]
    for lib in libraries:
        lib.disable_progress_bar()
    try:
        yield
    finally:
        for lib, was in zip(libraries, were):
            if was:
                lib.enable_progress_bar()


@contextmanager
def diffusers_errors_only():
    """diffusers' warnings off (its errors stay) while a model loads or casts: config keys its own
    save_pretrained wrote and a load does not take back, a cast of a model listing no fp32 modules."""
    import diffusers  # heavy: diffusers

    verbosity = diffusers.utils.logging.get_verbosity()
    diffusers.utils.logging.set_verbosity_error()
    try:
        yield
    finally:
        diffusers.utils.logging.set_verbosity(verbosity)


def unavailable(spec: ModelSpec, source: str, error: Exception, flag: str = "--weights") -> ModelUnavailable:
    """The error for weights (or a config) that could not be loaded: why, and how to get them."""
    field = "refiner" if flag == "--refiner-weights" else "model"
    local = Path(source).is_dir()
    offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0") and not local
    how = (
        f"fetch them on a connected machine with `hf download {spec.hub_id}` (they land in the hub cache, which "
        "HF_HOME points to) or "
        if spec.hub_id and not local
        else ""
    ) + f"pass {flag} PATH to a complete local diffusers folder"
    reason = (
        "HF_HUB_OFFLINE is set and they are not in the local cache"
        if offline
        else f"{error.__class__.__name__}: {str(error).splitlines()[0][:160]}"
    )
    return ModelUnavailable(field, spec.name, f"weights of {source} could not be loaded ({reason}); {how}")


def _version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in version.split(".")[:2] if p.isdigit())


def obtain_pipeline(spec: ModelSpec, weights: str | None, device: torch.device, dtype: torch.dtype):
    """The model with its weights where they exist here, else its real architecture with random
    weights. Returns (pipeline, a description of the weights used)."""

    def load(source):
        if spec.family == "sd" or (spec.builder and source is None):  # test models of every family are built
            return load_pipeline(spec, source, device, dtype)
        pipe = from_pretrained(spec, source or bundled_path(spec), dtype).to(device)  # a shipped model of any family
        apply_registry_settings(spec, pipe)
        return pipe

    if weights or spec.bundled or spec.builder:
        what = weights or (
            f"bundled ({bundled_path(spec)})" if spec.bundled else f"random, from {spec.builder} (a test model)"
        )
        return load(weights), what
    cached = hub_cache(spec)
    if cached:
        return load(cached), f"hub cache ({cached})"
    pipe = build_random_pipeline(spec, device, dtype)
    apply_registry_settings(spec, pipe)
    return (
        pipe,
        f"random: the real architecture (t2i_engine/assets/configs/{spec.name}), random weights; same FLOPs and "
        "speed, not its images",
    )


def hub_cache(spec: ModelSpec) -> str | None:
    if spec.hub_id is None:
        return None
    try:
        from huggingface_hub import snapshot_download

        return snapshot_download(spec.hub_id, local_files_only=True)
    except Exception:  # noqa: BLE001 - not cached (or no hub library): random weights
        return None
