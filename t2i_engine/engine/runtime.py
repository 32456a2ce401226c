"""The pipeline a run generates with: the registry model's plain pipeline (models/pipelines.py),
its attention and norms routed through our Triton kernels if asked (kernels.install), its
denoiser and VAE decoder replaced by a built backend if asked (export/), and, for the compile
backend's build, the warm-up that runs the engine's own generation.

`ModelOptions` is the one frozen record of what a run loads, passed unchanged from the command
line to the in-process runner, the local workers and the Ray actors. Everything that can refuse
it (`check_*`) runs before anything loads or is written.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..dataset.records import Sample
from ..errors import InputError
from ..export.build import apply_backend, build, check_backend
from ..export.specs import Profile
from ..export.tuning import PLAIN, Tuning, apply_tuning, check_tuning
from ..kernels import auto, route_attention, sdpa
from ..kernels.triton_env import interpreting
from ..models.architectures import text_length
from ..models.decoders import install_decoder
from ..models.lora import Adapter
from ..models.lora_fuse import fuse_adapters
from ..models.pipelines import denoiser, load_pipeline
from ..models.registry import ModelSpec, get_model
from .adapters import SUPPORTED_FAMILIES
from .first_steps import check_first_steps_pair
from .generator import Generator
from .refiner import load_refiner

# sdpa: PyTorch picks its backend per call; cudnn, flash, efficient: PyTorch's SDPA pinned to
# that backend (kernels.sdpa); triton: our kernels (kernels.install); auto: per call shape, the
# backend measured fastest on this GPU architecture (kernels.auto; PyTorch's SDPA on a CPU)
ATTENTION = ("sdpa", "cudnn", "flash", "efficient", "triton", "auto")


@dataclass(frozen=True)
class ModelOptions:
    """What a run loads besides the recipe's model: recorded in the manifest, checked on resume."""

    weights: str | None = None  # a local diffusers folder instead of the hub id
    refiner_weights: str | None = None  # likewise for the recipe's refiner
    attention: str = "sdpa"  # one of ATTENTION
    backend: str = "eager"  # or onnx, tensorrt, compile (export.build.apply_backend)
    tuning: Tuning = Tuning()  # precision, compile, fuse_qkv, channels_last (export.tuning)
    conv: str = "torch"  # or "fp8": the UNet's convolutions through our FP8 kernel (kernels.conv)


def flops_countable(backend: str, tuning: Tuning, attention: str, conv: str, device: torch.device) -> bool:
    """Whether models.flops.CallFlops sees every FLOP of a run: PyTorch's own ops, eagerly (a
    compiled graph, an exported runtime, FP8 through torchao or our Triton attention and FP8
    convolution kernels would be missed or undercounted)."""
    return (
        backend == "eager"
        and tuning.compile == "none"
        and tuning.precision != "fp8"
        and attention != "triton"
        and not (attention == "auto" and auto.default_candidates(device))  # it may pick our Triton kernel
        and conv == "torch"
    )


def check_family(spec: ModelSpec) -> None:
    if spec.family not in SUPPORTED_FAMILIES:
        raise InputError(
            "model",
            spec.name,
            f"the {spec.family} family has no generator adapter yet; supported families: "
            f"{', '.join(SUPPORTED_FAMILIES)}",
        )


def check_attention(attention: str, device: torch.device, field_name: str = "attention") -> None:
    """Before anything loads: the attention implementation exists and can run on `device`."""
    if attention not in ATTENTION:
        raise InputError(field_name, attention, f"expected one of {', '.join(ATTENTION)}")
    if attention == "triton" and device.type != "cuda" and not interpreting():
        raise InputError(
            field_name,
            attention,
            f"the Triton kernels run on CUDA devices; this run is on {device.type} "
            f"(use {'torch' if field_name == '--norm' else 'sdpa'})",
        )
    if attention in sdpa.BACKENDS and device.type != "cuda":
        raise InputError(
            field_name,
            attention,
            f"PyTorch's {attention} attention runs on CUDA devices; this run is on {device.type} (use sdpa)",
        )


CONV = ("torch", "fp8")


def check_conv(conv: str, spec: ModelSpec, device: torch.device, backend: str = "eager") -> None:
    """Before anything loads: the FP8 convolution kernel can run here, on this model."""
    if conv not in CONV:
        raise InputError("conv", conv, f"expected one of {', '.join(CONV)}")
    if conv == "torch":
        return
    if spec.family not in ("sd", "sdxl"):
        raise InputError("conv", conv, f"FP8 convolutions are for UNets; {spec.name} is a {spec.family} transformer")
    if backend != "eager":
        raise InputError(
            "conv", conv, f"it replaces PyTorch's convolutions; with --backend {backend} use --conv torch"
        )
    if device.type == "cuda":
        capability = torch.cuda.get_device_capability(device)
        if capability < (8, 9):
            raise InputError(
                "conv",
                conv,
                f"FP8 needs compute capability 8.9 or newer; this GPU has {capability[0]}.{capability[1]}",
            )
    elif not interpreting():
        raise InputError(
            "conv", conv, f"the FP8 convolution kernel runs on CUDA devices; this run is on {device.type}"
        )


def check_runtime(
    backend: str,
    attention: str,
    device: torch.device,
    dtype: torch.dtype,
    model: str | None = None,
    tuning: Tuning = PLAIN,
) -> None:
    """Before anything loads: the backend exists, takes the model, runs here in this dtype, and
    goes with the attention and the speed switches."""
    precision = {torch.float16: "fp16", torch.bfloat16: "bf16"}.get(dtype, "fp32")
    check_backend(backend, precision, device, model=model)
    if backend != "eager" and attention != "sdpa":
        raise InputError(
            "attention",
            attention,
            f"the attention choice applies to PyTorch's eager modules; with --backend {backend} "
            "use --attention sdpa (and --norm torch)",
        )
    check_tuning(tuning, device, attention)
    if backend != "eager" and tuning.resolved(device) != PLAIN.resolved(device):
        raise InputError(
            "backend",
            backend,
            "--precision, --compile, --fuse-qkv and --channels-last tune PyTorch's own modules: use them with "
            "--backend eager (the backends build their own)",
        )


def check_cache_runtime(cache: dict | None, backend: str, tuning: Tuning = PLAIN) -> None:
    """A feature cache changes which of the denoiser's blocks run from one call to the next: it
    needs PyTorch's own modules, uncompiled (an exported or compiled denoiser runs whole)."""
    if cache is None:
        return
    if backend != "eager":
        raise InputError(
            "cache",
            cache["name"],
            f"it skips blocks of PyTorch's modules; with --backend {backend} use cache none (or --backend eager)",
        )
    if tuning.compile != "none":
        raise InputError(
            "cache",
            cache["name"],
            f"it swaps blocks between calls, which --compile {tuning.compile} "
            "would recompile for; use --compile none with a cache",
        )


def load_run_pipeline(
    spec: ModelSpec,
    weights: str | None,
    device: torch.device,
    dtype: torch.dtype,
    attention: str = "sdpa",
    backend: str = "eager",
    resolution: tuple[int, int] | None = None,
    batch: int = 16,
    tuning: Tuning = PLAIN,
    conv: str = "torch",
    lora: tuple[Adapter, ...] = (),
    decoder: dict | None = None,
):
    """The model's pipeline with its LoRA adapters fused into its weights, its attention routed
    through our Triton kernels or pinned to one of PyTorch's SDPA backends if asked, the speed
    switches applied (export.tuning), and its denoiser and VAE decoder replaced by `backend`'s
    runtimes (built, or found in the artifact cache, for this resolution and a profile around
    `batch`; the cache key hashes the fused weights)."""
    check_family(spec)
    pipe = load_pipeline(spec, weights, device, dtype)
    install_decoder(pipe, spec, decoder)  # before the backend, which exports or compiles what decodes
    fuse_adapters(pipe, lora, spec.name)
    route_attention(pipe, attention, device)
    if conv == "fp8":
        from ..kernels.conv import install_fp8_conv  # heavy: triton

        install_fp8_conv(denoiser(pipe), device)
    apply_tuning(pipe, tuning, device)
    if backend != "eager":
        height, width = resolution or spec.resolution
        apply_backend(pipe, spec.name, backend, device, Profile((1, batch, 2 * batch), height, width))
    return pipe


def load_generator(recipe, model: ModelOptions, device: torch.device) -> Generator:
    """The Generator of `recipe` on `device`: its model (and refiner) loaded as `model` says."""
    spec = get_model(recipe.model)
    dtype = model.tuning.dtype(device)
    pipe = load_run_pipeline(
        spec,
        model.weights,
        device,
        dtype,
        attention=model.attention,
        backend=model.backend,
        resolution=recipe.resolution,
        batch=recipe.batch_size,
        tuning=model.tuning,
        conv=model.conv,
        lora=recipe.lora,
        decoder=recipe.decoder,
    )
    refiner = load_refiner(recipe, pipe, model.refiner_weights, device, dtype, model.attention)
    return Generator.for_recipe(pipe, recipe, refiner, load_first_base(recipe, pipe, device, dtype))


def load_first_base(recipe, pipe, device: torch.device, dtype: torch.dtype):
    """The recipe's first-steps base model (from the registry's source), checked against the
    student `pipe`; None without first_steps."""
    if recipe.first_steps is None:
        return None
    base_spec = get_model(recipe.first_steps["model"])
    base = load_pipeline(base_spec, None, device, dtype)
    install_decoder(base, base_spec, recipe.decoder)  # its latents' decoder is the student's: compared as such
    check_first_steps_pair(pipe, base, recipe.first_steps["model"])
    return base


def warm_up(pipe, model: str, profile: Profile, batches: list[int]) -> None:
    """One small generation per batch size through the engine's Generator: the calls a run makes
    (the compile backend's build, export/compiled.py, compiles what these calls run)."""
    spec = get_model(model)
    check_family(spec)
    generator = Generator(
        pipe,
        steps=2,
        guidance=spec.guidance,
        height=profile.height,
        width=profile.width,
        family=spec.family,
        text_length=text_length(model),
    )
    for b in batches:
        generator.generate([Sample(i, f"warm_{i:06d}", 0, "warm", "warm", "a photo", i) for i in range(b)])


def build_artifacts(opts, log_line=print) -> list[dict]:
    """`t2i-engine build`: export.build.build, with the engine's warm-up for the compile backend."""
    if opts.backend == "compile":
        check_family(get_model(opts.model))
    return build(opts, log_line, warm=warm_up)
