"""`t2i-engine build` and the backends of `generate` / `bench`: build each component once into the
artifact cache, then put the built runtime in place of the PyTorch component.

Backends: "eager" (PyTorch as loaded), "onnx" (ONNX Runtime; CUDA provider where
onnxruntime-gpu is installed), "tensorrt" (engines built from the ONNX files; only where
TensorRT and a GPU exist), "compile" (torch.compile with fused QKV projections, channels_last,
and on a GPU max-autotune with CUDA graphs, one per batch size; its build is a warm start:
torch's compile caches, saved after compiling each batch size of the profile).
ONNX and TensorRT replace the denoiser and the VAE decoder; the text encoders run once per
unique prompt (the embedding cache) and stay in PyTorch, though `build` exports them too (CLIP
and T5; Gemma-2 and Qwen2.5-VL are not exported: specs.PYTORCH_ONLY).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from ..devices import device_arch, resolve_device
from ..errors import InputError
from ..models.architectures import text_length
from ..models.decoders import install_decoder
from ..models.pipelines import denoiser, obtain_pipeline
from ..models.registry import get_model
from .cache import ArtifactCache, artifact_key, library_versions, weights_hash
from .compiled import build_compiled, compile_pipeline, unprepare
from .onnx_export import export_onnx
from .onnx_runtime import OnnxRunner, providers_for
from .specs import ComponentSpec, Profile, component_specs, pytorch_only, unsupported_reason
from .swap import restore, swap
from .tensorrt_runtime import TensorRTRunner, build_engine, check_tensorrt

log = logging.getLogger(__name__)
BACKENDS = ("eager", "onnx", "tensorrt", "compile")
BUILT = ("onnx", "tensorrt", "compile")  # what `build` makes
PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16, "fp8": None}
RUNTIME_KINDS = ("denoiser", "vae_decoder")  # replaced in the pipeline; text encoders stay in PyTorch


@dataclass(frozen=True)
class BuildOptions:
    model: str
    backend: str = "onnx"
    profile: Profile = field(default_factory=Profile)
    precision: str | None = None  # None: the model's dtype on a GPU, fp32 on a CPU
    device: str = "auto"
    weights: str | None = None
    exporter: str = "dynamo"
    components: tuple[str, ...] = ("denoiser", "vae_decoder", "text_encoder")
    cache_dir: str | None = None
    decoder: dict | None = None  # a recipe's `decoder` (models/decoders.py): what vae_decoder exports


def resolve_precision(opts: BuildOptions, spec, device: torch.device) -> str:
    if opts.precision:
        return opts.precision
    if device.type != "cuda":
        return "fp32"
    return {"float16": "fp16", "bfloat16": "bf16"}.get(spec.dtype, "fp32")


def check_backend(
    backend: str, precision: str, device: torch.device, field_name: str = "--backend", model: str | None = None
) -> None:
    """Everything that can refuse a backend before a model loads."""
    if backend not in BACKENDS:
        raise InputError(field_name, backend, f"expected one of {', '.join(BACKENDS)}")
    if backend in ("onnx", "tensorrt") and model:
        why = unsupported_reason(model)
        if why:
            raise InputError(field_name, backend, f"{model}: {why}; --backend compile or eager run it")
    if precision not in PRECISIONS:
        raise InputError("--precision", precision, f"expected one of {', '.join(PRECISIONS)}")
    if precision == "fp8" and backend != "tensorrt":
        raise InputError("--precision", precision, "fp8 runs only in TensorRT (--backend tensorrt)")
    if backend == "onnx":
        import importlib.util

        missing = [m for m in ("onnx", "onnxruntime") if importlib.util.find_spec(m) is None]
        if missing:
            raise InputError(field_name, backend, f"needs {' and '.join(missing)}: pip install 't2i-engine[export]'")
        if precision not in ("fp32", "fp16"):
            raise InputError(
                "--precision", precision, "ONNX Runtime runs fp32 or fp16 (bf16: --backend compile or tensorrt)"
            )
        providers_for(device)  # a GPU run needs onnxruntime-gpu's CUDA provider
    if backend == "tensorrt":
        check_tensorrt(device, precision)


def _torch_dtype(precision: str) -> torch.dtype:
    return PRECISIONS[precision] or torch.float16  # fp8: TensorRT quantises an fp16 graph


def export_dtype(comp: ComponentSpec, precision: str) -> torch.dtype:
    """The precision's dtype, but fp32 for a VAE diffusers itself upcasts (SDXL's overflows in fp16)."""
    return torch.float32 if comp.notes.get("fp32") else _torch_dtype(precision)


def load_for_build(opts: BuildOptions):
    """The registry model's pipeline on its device in the build precision, and the resolved
    options (precision, resolution defaults filled in)."""
    spec = get_model(opts.model)
    device = resolve_device(opts.device)
    precision = resolve_precision(opts, spec, device)
    check_backend(opts.backend, precision, device, model=spec.name)
    if opts.backend == "eager":
        raise InputError("--backend", "eager", f"nothing to build; expected one of {', '.join(BUILT)}")
    # Any family with weights here or a buildable architecture (random weights), not only the
    # ones the engine generates with yet
    pipe, _ = obtain_pipeline(
        spec, opts.weights, device, _torch_dtype(precision) if device.type == "cuda" else torch.float32
    )
    if device.type != "cuda" and precision != "fp32":
        pipe = pipe.to(dtype=_torch_dtype(precision))
    install_decoder(pipe, spec, opts.decoder)
    return spec, pipe, device, replace(opts, precision=precision)


def build(opts: BuildOptions, log_line=print, warm=None) -> list[dict]:
    """Build every requested component of the model (or find it built). One dict per component:
    name, path, whether it was built now, and its meta. `warm(pipe, model, profile, batches)`:
    the compile backend's warm-up (engine.runtime.warm_up), which this layer cannot import."""
    if opts.backend == "compile" and warm is None:
        raise ValueError(
            "the compile build needs a warm-up that runs the engine (engine.runtime.build_artifacts passes it)"
        )
    spec, pipe, device, opts = load_for_build(opts)
    cache = ArtifactCache(Path(opts.cache_dir) if opts.cache_dir else None)
    if opts.backend == "compile":
        return [build_compiled(pipe, spec.name, opts, device, cache, log_line, warm)]
    results = []
    if "text_encoder" in opts.components:
        for component, why in pytorch_only(pipe).items():
            log_line(f"[build] {spec.name}-{component}: stays in PyTorch ({why})")
            results.append({"component": component, "kind": "text_encoder", "path": None, "built": False, "why": why})
    for comp in component_specs(pipe, opts.profile, opts.components, text_length(spec.name)):
        folder, built, meta = ensure_component(comp, spec.name, opts, device, cache, log_line)
        results.append({"component": comp.component, "kind": comp.kind, "path": str(folder), "built": built, **meta})
    return results


def component_fields(comp: ComponentSpec, model: str, opts: BuildOptions, device: torch.device) -> dict:
    module = comp.source
    profile = {"height": opts.profile.height, "width": opts.profile.width}
    if opts.backend == "tensorrt":  # ONNX files take any batch; TensorRT engines are built for the profile
        profile["batch"] = list(opts.profile.batch)
    # The inputs' shapes: the graph is fixed to them but for the batch (resolution, text length).
    # Not the exporter: either one's file serves, so a build with the other is found, not redone.
    return {
        "model": model,
        "component": comp.component,
        "class": type(module).__name__,
        "weights_sha256": weights_hash(module),
        "backend": opts.backend,
        "precision": opts.precision,
        "profile": profile,
        "inputs": {i.name: list(i.shape) for i in comp.inputs},
        "arch": device_arch(device),
        "versions": library_versions(opts.backend),
    }


def ensure_component(
    comp: ComponentSpec, model: str, opts: BuildOptions, device: torch.device, cache: ArtifactCache, log_line
):
    fields = component_fields(comp, model, opts, device)
    key = artifact_key(fields)
    name = f"{model}-{comp.component}-{opts.backend}-{opts.precision}"

    def make(tmp: Path) -> dict:
        log_line(f"[build] {name}: exporting to ONNX ({opts.exporter})")
        dtype = export_dtype(comp, opts.precision)
        source = (
            comp
            if comp.source.dtype == dtype
            else dataclasses.replace(comp, module=copy.deepcopy(comp.module).to(dtype))
        )
        used = export_onnx(source, tmp / "model.onnx", dtype=dtype, exporter=opts.exporter)
        extra = {"exporter": used, "outputs": comp.outputs, "dtype": str(dtype).removeprefix("torch.")}
        if opts.backend == "tensorrt":
            log_line(f"[build] {name}: building the TensorRT engine")
            build_engine(tmp / "model.onnx", tmp / "model.plan", comp, opts.profile, opts.precision, cache.root)
        return extra

    folder, built = cache.build(name, key, fields, make)
    log_line(f"[build] {name}: {'built' if built else 'cached'} -> {folder}")
    return folder, built, json.loads((folder / "meta.json").read_text())


def remove_backend(pipe) -> None:
    """Undo apply_backend: the pipeline's own PyTorch modules again."""
    restore(pipe)
    unprepare(pipe)


def apply_backend(
    pipe,
    model: str,
    backend: str,
    device: torch.device,
    profile: Profile,
    *,
    precision: str | None = None,
    cache_dir: str | None = None,
    log_line=None,
) -> dict:
    """Put the backend's runtimes in place of the pipeline's denoiser and VAE decoder, building
    what the cache lacks. Returns what was used (artifact folders) for the run's records."""
    log_line = log_line or (lambda line: log.info("%s", line))
    if backend == "eager":
        return {}
    dtype = denoiser(pipe).dtype
    precision = precision or {torch.float16: "fp16", torch.bfloat16: "bf16"}.get(dtype, "fp32")
    check_backend(backend, precision, device)
    opts = BuildOptions(
        model=model,
        backend=backend,
        profile=profile,
        precision=precision,
        cache_dir=cache_dir,
        components=RUNTIME_KINDS,
    )
    cache = ArtifactCache(Path(cache_dir) if cache_dir else None)
    if backend == "compile":
        return compile_pipeline(pipe, model, opts, device, cache, log_line)
    used = {}
    for comp in component_specs(pipe, profile, RUNTIME_KINDS, text_length(model)):
        folder, _, _ = ensure_component(comp, model, opts, device, cache, log_line)
        if backend == "onnx":
            runner = OnnxRunner(folder / "model.onnx", comp, device, export_dtype(comp, precision))
        else:
            runner = TensorRTRunner(folder / "model.plan", comp, device)
        swap(pipe, comp, runner)
        used[comp.component] = str(folder)
    return used
