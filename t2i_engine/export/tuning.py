"""The speed switches of a run, each its own option so that its gain (and its cost in pixels)
is measured alone (`t2i-engine bench --ladder`), each checked before anything loads:

- precision: auto (bf16 on a GPU, fp32 on a CPU), fp32, fp16, bf16, or fp8: bf16 weights with
  the denoiser's Linear layers in FP8 e4m3 (dynamic per-row scales for activations and weights,
  through torchao). FP8 pays only under compile (eager FP8 is no faster), so it needs one.
- compile: none, default or max-autotune: torch.compile of the whole denoiser and of the VAE's
  decode, fullgraph (a graph break fails loudly rather than silently running half eager),
  static shapes (each batch size compiles once; `compiled_graphs` counts them).
- regional_compile: compile only the denoiser's repeated blocks (diffusers' _repeated_blocks:
  FLUX's two block types, a UNet's transformer blocks), each compiled once and reused: minutes
  less compiling for a big transformer, the glue between blocks left eager.
- fuse_qkv: each attention's Q, K and V projections as one matmul (diffusers'
  fuse_qkv_projections).
- channels_last: the UNet's and the VAE's convolutions in NHWC, the layout cuDNN's fastest
  kernels read.

The plain PyTorch path (precision bf16, the rest off) is the reference each switch is tested
against (tests/export/test_tuning.py; bench records PSNR against it).
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import asdict, dataclass, replace

import torch

from ..errors import InputError
from ..models.pipelines import denoiser

PRECISIONS = ("auto", "fp32", "fp16", "bf16", "fp8")
COMPILE_MODES = ("none", "default", "max-autotune")
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16, "fp8": torch.bfloat16}
FUSED = ("to_qkv", "to_kv", "to_added_qkv")  # what diffusers' fuse_projections adds to an attention module
FP8_MIN_CAPABILITY = (8, 9)  # Ada and Hopper: the first GPUs with FP8 tensor cores


@dataclass(frozen=True)
class Tuning:
    precision: str = "auto"
    compile: str = "none"
    fuse_qkv: bool = False
    channels_last: bool = False
    regional_compile: bool = False

    def resolved(self, device: torch.device) -> Tuning:
        """`auto` made concrete: what the manifest and the bench records say ran."""
        if self.precision != "auto":
            return self
        return replace(self, precision="bf16" if device.type == "cuda" else "fp32")

    def dtype(self, device: torch.device) -> torch.dtype:
        return DTYPES[self.resolved(device).precision]

    def record(self, device: torch.device) -> dict:
        return asdict(self.resolved(device))


PLAIN = Tuning()  # every switch off: the reference path


def check_tuning(tuning: Tuning, device: torch.device, attention: str = "sdpa") -> None:
    """Before anything loads: every switch has a known value and can run here."""
    if tuning.precision not in PRECISIONS:
        raise InputError("precision", tuning.precision, f"expected one of {', '.join(PRECISIONS)}")
    if tuning.compile not in COMPILE_MODES:
        raise InputError("compile", tuning.compile, f"expected one of {', '.join(COMPILE_MODES)}")
    for name in ("fuse_qkv", "channels_last", "regional_compile"):
        if not isinstance(getattr(tuning, name), bool):
            raise InputError(name, getattr(tuning, name), "expected true or false")
    if tuning.regional_compile and tuning.compile == "none":
        raise InputError("regional_compile", True, "it says what to compile: give --compile default or max-autotune")
    if tuning.precision == "fp8":
        _check_fp8(tuning, device)
    if tuning.compile != "none" and attention == "triton":
        raise InputError(
            "attention",
            attention,
            f"the Triton kernels are routed around PyTorch's eager modules and break the graph that "
            f"--compile {tuning.compile} needs whole; use --attention sdpa, cudnn, flash or efficient",
        )


def _check_fp8(tuning: Tuning, device: torch.device) -> None:
    if device.type != "cuda":
        raise InputError(
            "precision",
            "fp8",
            f"FP8 matmuls need an NVIDIA GPU of compute capability 8.9 or newer; this run is on {device.type}",
        )
    capability = torch.cuda.get_device_capability(device)
    if capability < FP8_MIN_CAPABILITY:
        raise InputError(
            "precision",
            "fp8",
            f"FP8 matmuls need compute capability 8.9 or newer (Ada, Hopper); "
            f"{torch.cuda.get_device_name(device)} has {capability[0]}.{capability[1]}",
        )
    if importlib.util.find_spec("torchao") is None:
        raise InputError("precision", "fp8", "FP8 runs through torchao, which is not installed (pip install torchao)")
    if tuning.compile == "none":
        raise InputError(
            "precision",
            "fp8",
            "eager FP8 is no faster than bf16 (its casts run as separate kernels): add --compile default",
        )


def fuse_qkv(pipe) -> None:
    for module in (denoiser(pipe), pipe.vae):
        if hasattr(module, "fuse_qkv_projections"):
            module.fuse_qkv_projections()
            _plain_fused_self_attention(module)


def _plain_fused_self_attention(module) -> None:
    """Mend diffusers' SD3 fuse_qkv_projections (0.42), which gives every attention
    FusedJointAttnProcessor2_0: that processor skips the q/k RMSNorms (SD3.5's qk_norm), so
    those joint attentions keep their own processor (the unfused projections are still there);
    and SD3.5's second, image-only attention (attn2 of its dual-attention blocks), which fails
    with it for want of text, takes the plain fused processor (which applies the norms)."""
    from diffusers.models.attention_processor import FusedAttnProcessor2_0, FusedJointAttnProcessor2_0

    originals = getattr(module, "original_attn_processors", None) or {}
    for name, m in module.named_modules():
        if not isinstance(getattr(m, "processor", None), FusedJointAttnProcessor2_0):
            continue
        if getattr(m, "add_q_proj", None) is None and getattr(m, "to_added_qkv", None) is None:
            m.set_processor(FusedAttnProcessor2_0())
        elif any(getattr(m, n, None) is not None for n in ("norm_q", "norm_k", "norm_added_q", "norm_added_k")):
            m.set_processor(originals[f"{name}.processor"])


def unfuse_qkv(pipe) -> None:
    """Back to separate projections, the fused weights dropped (later builds hash the weights)."""
    for module in (denoiser(pipe), pipe.vae):
        if not any(getattr(m, "fused_projections", False) for m in module.modules()):
            continue  # never fused: diffusers' unfuse would fail on its empty saved processors
        if hasattr(module, "unfuse_qkv_projections"):
            module.unfuse_qkv_projections()  # the processors; the fused weights stay unless removed
        for m in module.modules():
            if getattr(m, "fused_projections", False):
                for name in FUSED:
                    m._modules.pop(name, None)
                m.fused_projections = False


def set_layout(pipe, channels_last: bool) -> None:
    """NHWC (or back to NCHW) for the UNet and the VAE; a transformer takes tokens: no layout."""
    layout = torch.channels_last if channels_last else torch.contiguous_format
    den = denoiser(pipe)
    if type(den).__name__.startswith("UNet"):
        den.to(memory_format=layout)
    pipe.vae.to(memory_format=layout)


def _fp8_linear(module: torch.nn.Module, fqn: str = "") -> bool:
    # FP8 matmuls take dimensions in multiples of 16 (torch._scaled_mm)
    return isinstance(module, torch.nn.Linear) and module.in_features % 16 == 0 and module.out_features % 16 == 0


def quantize_fp8(pipe) -> int:
    """The denoiser's Linear layers to FP8 (weights quantised now, activations per call);
    returns how many. Not undone: a pipeline quantised stays so."""
    os.environ.setdefault("TORCHAO_FORCE_SKIP_LOADING_SO_FILES", "1")  # its FP8 Linear needs none of its C++ ops
    from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, quantize_  # heavy: torchao

    den = denoiser(pipe)
    count = sum(1 for m in den.modules() if _fp8_linear(m))
    # set_inductor_config=False: torchao would otherwise turn on inductor's coordinate-descent
    # tuning for the whole process (longer compiles for every later compile, FP8 or not)
    config = Float8DynamicActivationFloat8WeightConfig(granularity=PerRow(), set_inductor_config=False)
    quantize_(den, config, filter_fn=_fp8_linear)
    pipe._t2i_fp8 = count
    return count


SAVED = "_t2i_uncompiled"  # on a module: {method name: what its instance attribute was (None: the class's)}


def _compile_method(module: torch.nn.Module, name: str, kw: dict) -> None:
    """Compile one method in place: the forward (not nn.Module.compile's whole call), so forward
    hooks, such as the benchmark's counter, stay outside the graph instead of being traced with
    guards on their Python state (a guard on a counter recompiles every call)."""
    saved = module.__dict__.setdefault(SAVED, {})
    if name in saved:
        return
    saved[name] = module.__dict__.get(name)  # a wrapper of ours (an SDPA pin), or None
    module.__dict__[name] = torch.compile(getattr(module, name), **kw)


def _restore(module: torch.nn.Module) -> None:
    for name, previous in module.__dict__.pop(SAVED, {}).items():
        if previous is None:
            module.__dict__.pop(name, None)
        else:
            module.__dict__[name] = previous


def _compiled_modules(pipe) -> list[torch.nn.Module]:
    return [
        m
        for m in (*denoiser(pipe).modules(), pipe.vae)
        if SAVED in m.__dict__ or getattr(m, "_compiled_call_impl", None) is not None
    ]


def compiled(pipe) -> bool:
    return bool(_compiled_modules(pipe))


def compile_pipeline(
    pipe, mode: str, backend: str = "inductor", regional: bool = False, fullgraph: bool = True
) -> None:
    """The denoiser (its forward whole, or its repeated blocks) and the VAE's decode, static
    shapes (one graph per batch size). `backend`: torch.compile's; "eager" traces the same
    graphs without generating code (a cheap check that nothing breaks them)."""
    kw = {"backend": backend, "fullgraph": fullgraph, "dynamic": False}
    if backend == "inductor" and mode != "default":
        kw["mode"] = mode
    den = denoiser(pipe)
    if regional:
        blocks = set(getattr(den, "_repeated_blocks", None) or ())
        found = [m for m in den.modules() if type(m).__name__ in blocks]
        if not found:
            raise ValueError(f"{type(den).__name__} names no repeated blocks to compile; compile it whole")
        for m in found:
            _compile_method(m, "forward", kw)
    else:
        _compile_method(den, "forward", kw)
    _compile_method(pipe.vae, "decode", kw)


def uncompile(pipe) -> None:
    """Back to the methods as they were before compile_pipeline (an SDPA pin stays)."""
    modules = _compiled_modules(pipe)
    if not modules:
        return
    for m in modules:
        _restore(m)
        if getattr(m, "_compiled_call_impl", None) is not None:
            m._compiled_call_impl = None  # what nn.Module.compile set (an older build's)
    torch._dynamo.reset()  # drops the compiled graphs (and their CUDA-graph memory)


def apply_tuning(pipe, tuning: Tuning, device: torch.device) -> dict:
    """The switches on a loaded pipeline already in `tuning.dtype(device)`, in the order they
    compose: projections fused and layouts set before FP8 swaps the Linear weights, and all of
    it before compile traces. Returns what was done (for the records)."""
    tuning = tuning.resolved(device)
    done: dict = {}
    if tuning.fuse_qkv:
        fuse_qkv(pipe)
    if tuning.channels_last:
        set_layout(pipe, True)
    if tuning.precision == "fp8":
        done["fp8_linear_layers"] = quantize_fp8(pipe)
    if tuning.compile != "none":
        compile_pipeline(pipe, tuning.compile, regional=tuning.regional_compile)
    return done


def remove_tuning(pipe) -> None:
    """Back to the plain modules (the bench ladder's next rung starts from them). FP8 cannot be
    undone: a quantised pipeline refuses, so a ladder puts FP8 last."""
    if getattr(pipe, "_t2i_fp8", None):
        raise RuntimeError("this pipeline's Linear layers were quantised to FP8; build a new one")
    uncompile(pipe)
    unfuse_qkv(pipe)
    set_layout(pipe, False)


def compiled_graphs() -> int:
    """Graphs Dynamo has compiled in this process so far: a run's timed batches must add none
    (a recompile in the loop would be timed as generation). Graph breaks need no count: the
    compile is fullgraph, so a break raises."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])
