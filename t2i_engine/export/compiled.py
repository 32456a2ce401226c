"""The compile backend: the pipeline's own modules, compiled by torch.compile.

Before compiling: the attention's Q, K and V projections fused into one matmul (diffusers'
fuse_qkv_projections, where the model has it) and, on a GPU, channels_last for the UNet and VAE
convolutions. On a GPU the mode is max-autotune (Triton templates autotuned per shape, CUDA
graphs), with static shapes, so each batch size gets its own graphs; a CPU uses the default
mode. The denoiser's forward and the VAE's decode are compiled; text encoders run once per
prompt and are left alone.

The "artifact" is a warm start: `build` runs the engine's own generation at each batch size of
the profile (so what compiles is what a run calls: the scheduler's timesteps, the guidance
batch), then saves torch's compile caches (torch.compiler.save_cache_artifacts). A later run
whose key matches and whose batch size was warmed loads them before compiling, and skips the
kernel compilation and autotuning. `generate --backend compile` without a build compiles on
first use and saves nothing.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..devices import device_arch
from ..errors import InputError
from ..models.pipelines import denoiser
from . import tuning
from .cache import ArtifactCache, artifact_key, library_versions, weights_hash
from .tuning import compiled, fuse_qkv, set_layout, uncompile, unfuse_qkv

CACHE_FILE = "compile-cache.bin"


def _fields(pipe, model: str, opts, device: torch.device) -> dict:
    """Computed before prepare(): the fused projections are not weights of the model."""
    den = denoiser(pipe)
    return {
        "model": model,
        "component": "pipeline",
        "class": type(den).__name__,
        "weights_sha256": {"denoiser": weights_hash(den), "vae": weights_hash(pipe.vae)},
        "backend": "compile",
        # the batch sizes warmed are in the meta, not the key: a run looks for one that holds its own
        "precision": opts.precision,
        "profile": {"height": opts.profile.height, "width": opts.profile.width},
        "arch": device_arch(device),
        "versions": library_versions("compile"),
    }


def prepare(pipe, device: torch.device) -> None:
    """Fuse, lay out and compile in place (idempotent: a compiled pipeline is left as it is)."""
    if compiled(pipe):
        return
    fuse_qkv(pipe)
    if device.type == "cuda":
        set_layout(pipe, True)
    # not fullgraph: this backend predates the switches and compiled whatever dynamo could take
    tuning.compile_pipeline(pipe, "max-autotune" if device.type == "cuda" else "default", fullgraph=False)


def unprepare(pipe) -> None:
    """Back to the eager modules, weights and layout as loaded (bench measures eager paths and
    baselines on the same pipeline, and later backends hash the weights)."""
    if not compiled(pipe):
        return
    uncompile(pipe)
    unfuse_qkv(pipe)
    set_layout(pipe, False)


def build_compiled(pipe, model: str, opts, device: torch.device, cache: ArtifactCache, log_line, warm) -> dict:
    """`warm(pipe, model, profile, batches)` runs the generation a run makes at each batch size
    (engine.runtime.warm_up: this layer knows no generator)."""
    if getattr(pipe, "text_encoder", None) is None:
        raise InputError(
            "model",
            model,
            "its pipeline here has no text encoders (a random-weight architecture takes prompt "
            "embeddings), so the engine cannot run it to warm up; pass --weights",
        )
    fields = _fields(pipe, model, opts, device)
    batches = sorted(set(opts.profile.batch))
    name = f"{model}-pipeline-compile-{opts.precision}-b{'_'.join(map(str, batches))}"
    key = artifact_key({**fields, "batches": batches})

    def make(tmp: Path) -> dict:
        prepare(pipe, device)
        log_line(f"[build] {name}: compiling for batch sizes {batches}")
        warm(pipe, model, opts.profile, batches)
        saved = torch.compiler.save_cache_artifacts()
        if saved is None:
            raise RuntimeError("torch.compiler.save_cache_artifacts() returned nothing to save")
        (tmp / CACHE_FILE).write_bytes(saved[0])
        return {"batches": batches, "match": artifact_key(fields)}

    folder, built = cache.build(name, key, fields, make)
    log_line(f"[build] {name}: {'built' if built else 'cached'} -> {folder}")
    return {"component": "pipeline", "kind": "compile", "path": str(folder), "built": built, "batches": batches}


def compile_pipeline(pipe, model: str, opts, device: torch.device, cache: ArtifactCache, log_line) -> dict:
    """The runtime: load the caches of a matching build that warmed this batch size, then compile."""
    match = artifact_key(_fields(pipe, model, opts, device))
    batch = opts.profile.batch[1]
    found = next(
        (Path(e["path"]) for e in cache.entries() if e.get("match") == match and batch in e.get("batches", ())), None
    )
    if found:
        torch.compiler.load_cache_artifacts((found / CACHE_FILE).read_bytes())
        log_line(f"[compile] warm start from {found}")
    prepare(pipe, device)
    return {"pipeline": str(found) if found else None}
