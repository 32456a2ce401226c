"""The compile backend: the pipeline's own modules, compiled by torch.compile.

Before compiling: the attention's Q, K and V projections fused into one matmul (diffusers'
fuse_qkv_projections, where the model has it) and, on a GPU, channels_last for the UNet and VAE
convolutions. On a GPU the mode is max-autotune (Triton templates autotuned per shape, CUDA
graphs), with static shapes, so each batch size gets its own graphs; a CPU uses the default
mode. The denoiser's forward and the VAE's decode are compiled; text encoders run once per
prompt and are left alone.

The "artifact" is a warm start: `build` compiles and runs each batch size of the profile, then
saves torch's compile caches (torch.compiler.save_cache_artifacts); a later run with the same
key loads them before compiling, so it skips the kernel compilation and autotuning.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .cache import ArtifactCache, artifact_key, device_arch, library_versions, weights_hash

CACHE_FILE = "compile-cache.bin"


def _denoiser(pipe):
    return pipe.unet if getattr(pipe, "unet", None) is not None else pipe.transformer


def _fields(pipe, model: str, opts, device: torch.device) -> dict:
    den = _denoiser(pipe)
    return {"model": model, "component": "pipeline", "class": type(den).__name__,
            "weights_sha256": {"denoiser": weights_hash(den), "vae": weights_hash(pipe.vae)}, "backend": "compile",
            # the batch sizes warmed are in the meta, not the key: a cache serves whichever it holds
            "precision": opts.precision, "profile": {"height": opts.profile.height, "width": opts.profile.width},
            "arch": device_arch(device), "versions": library_versions("compile")}


def prepare(pipe, device: torch.device) -> None:
    """Fuse, lay out and compile in place (idempotent: a compiled pipeline is left as it is)."""
    den = _denoiser(pipe)
    if getattr(den, "_t2i_compiled", False):
        return
    for module in (den, pipe.vae):
        if hasattr(module, "fuse_qkv_projections"):
            module.fuse_qkv_projections()
    if device.type == "cuda":
        if type(den).__name__.startswith("UNet"):  # transformers take tokens: no layout to change
            den.to(memory_format=torch.channels_last)
        pipe.vae.to(memory_format=torch.channels_last)
    mode = "max-autotune" if device.type == "cuda" else None
    den.compile(mode=mode, dynamic=False)
    pipe.vae.decode = torch.compile(pipe.vae.decode, mode=mode, dynamic=False)
    den._t2i_compiled = True


def unprepare(pipe) -> None:
    """Back to the eager modules (bench measures eager and baselines on the same pipeline)."""
    den = _denoiser(pipe)
    if not getattr(den, "_t2i_compiled", False):
        return
    den._compiled_call_impl = None  # what nn.Module.compile set
    del pipe.vae.decode
    for module in (den, pipe.vae):
        if hasattr(module, "unfuse_qkv_projections"):
            module.unfuse_qkv_projections()
    den._t2i_compiled = False


def _warm(pipe, specs, batches: list[int]) -> None:
    with torch.inference_mode():
        for b in batches:
            for spec in specs:
                inputs = spec.sample_inputs(b, _denoiser(pipe).dtype, pipe.device)
                if spec.kind == "vae_decoder":
                    pipe.vae.decode(*inputs, return_dict=False)
                else:
                    spec.module(*inputs)


def build_compiled(pipe, model: str, opts, device: torch.device, cache: ArtifactCache, log_line) -> dict:
    from .specs import component_specs

    fields = _fields(pipe, model, opts, device)
    key = artifact_key(fields)
    name = f"{model}-pipeline-compile-{opts.precision}"

    def make(tmp: Path) -> dict:
        prepare(pipe, device)
        batches = sorted(set(opts.profile.batch))
        specs = component_specs(pipe, opts.profile, ("denoiser", "vae_decoder"))
        log_line(f"[build] {name}: compiling for batch sizes {batches}")
        _warm(pipe, specs, batches)
        saved = torch.compiler.save_cache_artifacts()
        if saved is None:
            raise RuntimeError("torch.compiler.save_cache_artifacts() returned nothing to save")
        (tmp / CACHE_FILE).write_bytes(saved[0])
        return {"batches_compiled": batches}

    folder, built = cache.build(name, key, fields, make)
    log_line(f"[build] {name}: {'built' if built else 'cached'} -> {folder}")
    return {"component": "pipeline", "kind": "compile", "path": str(folder), "built": built}


def compile_pipeline(pipe, model: str, opts, device: torch.device, cache: ArtifactCache, log_line) -> dict:
    """The runtime: load a matching build's caches if there is one, then compile."""
    key = artifact_key(_fields(pipe, model, opts, device))
    found = cache.lookup(f"{model}-pipeline-compile-{opts.precision}", key)
    if found:
        torch.compiler.load_cache_artifacts((found / CACHE_FILE).read_bytes())
        log_line(f"[compile] warm start from {found}")
    prepare(pipe, device)
    return {"pipeline": str(found) if found else None}
