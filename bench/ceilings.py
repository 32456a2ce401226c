"""What the card itself can do, measured in the same run as the benchmarks: the rates that bound
them, so their numbers read as a fraction of a ceiling rather than alone.

    python bench/ceilings.py [--out FILE] [--dry-run]

One JSON object (stdout, and FILE if given): torch / triton / CUDA / cuDNN versions, the device,
the git commit; dense bf16 matmul rate (8192^3), FP8 e4m3 matmul rate through torch._scaled_mm
(8192^3, A row-major, B column-major, float32 scalar scales, bf16 out; with and without fast
accumulation), copy bandwidth (a 2 GiB tensor copied: bytes read + written / time), and a
torchao FP8 smoke test (two bf16 Linear(1024, 1024) quantised with the engine's config, run,
compared with bf16). Timing: CUDA events around each call, 5 warm-up calls, median of 30.
Under 20 s on an H100/H200, most of it imports.

On a machine without CUDA, or with --dry-run, every step runs at tiny sizes (256^3 matmuls,
1 MiB copy) timed with time.perf_counter, and the object says "dry_run": true: the numbers then
only show that the code runs. A step that fails records its error and the others go on.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

WARMUP = 5
REPS = 30


def _err(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0][:300] if lines else ''}"


def _git_sha() -> str | None:
    try:
        root = Path(__file__).resolve().parent.parent
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10, check=True
        )
        return out.stdout.strip() or None
    except Exception:  # noqa: BLE001 - no git, or a copy of the tree without .git: GIT_SHA if set
        return os.environ.get("GIT_SHA") or None


def _versions(device: torch.device) -> dict:
    info: dict = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda}
    try:
        import triton

        info["triton"] = triton.__version__
    except Exception as e:  # noqa: BLE001
        info["triton"] = None
        info["triton_error"] = _err(e)
    try:
        info["cudnn"] = torch.backends.cudnn.version()
    except Exception as e:  # noqa: BLE001
        info["cudnn"] = None
        info["cudnn_error"] = _err(e)
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info["device"] = torch.cuda.get_device_name(device)
        info["capability"] = "{}.{}".format(*torch.cuda.get_device_capability(device))
        info["device_memory_gib"] = round(props.total_memory / 2**30, 1)
        info["sm_count"] = props.multi_processor_count
    else:
        info["device"] = f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"
    info["git_sha"] = _git_sha()
    return info


def _timer(device: torch.device, dry: bool):
    """time_s(fn) -> median seconds of one call."""

    def cuda_events(fn) -> float:
        for _ in range(WARMUP):
            fn()
        torch.cuda.synchronize(device)
        pairs = []
        for _ in range(REPS):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            pairs.append((start, end))
        torch.cuda.synchronize(device)
        return statistics.median(s.elapsed_time(e) for s, e in pairs) / 1000

    def wall(fn) -> float:  # dry run: the same protocol, fewer calls, on the clock
        sync = torch.cuda.synchronize if device.type == "cuda" else (lambda *a: None)
        fn()
        times = []
        for _ in range(3):
            sync(device)
            t = time.perf_counter()
            fn()
            sync(device)
            times.append(time.perf_counter() - t)
        return statistics.median(times)

    return wall if dry else cuda_events


def bf16_matmul(n: int, device: torch.device, time_s) -> dict:
    g = torch.Generator(device).manual_seed(0)
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16, generator=g)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16, generator=g)
    t = time_s(lambda: torch.mm(a, b))
    return {"n": n, "time_ms": round(t * 1e3, 4), "tflops": round(2 * n**3 / t / 1e12, 2)}


def fp8_matmul(n: int, device: torch.device, time_s) -> dict:
    """torch._scaled_mm, e4m3 x e4m3 -> bf16: A [n, n] row-major, B the transpose of a row-major
    [n, n] (column-major, as cuBLASLt's FP8 kernels require), per-tensor float32 scales."""
    out: dict = {"n": n}
    try:
        g = torch.Generator(device).manual_seed(1)
        a32 = torch.randn(n, n, device=device, dtype=torch.bfloat16, generator=g)
        bt32 = torch.randn(n, n, device=device, dtype=torch.bfloat16, generator=g)
        a = a32.to(torch.float8_e4m3fn)
        b = bt32.to(torch.float8_e4m3fn).t()  # column-major [K, N]
        one = torch.tensor(1.0, device=device, dtype=torch.float32)

        def mm(fast: bool):
            r = torch._scaled_mm(a, b, one, one, out_dtype=torch.bfloat16, use_fast_accum=fast)
            return r[0] if isinstance(r, tuple) else r  # a (out, amax) pair before torch 2.5

        ref = a.to(torch.bfloat16).float() @ b.to(torch.bfloat16).float()
        got = mm(False).float()
        out["max_rel_err_vs_fp32_of_same_values"] = round(((got - ref).abs().max() / ref.abs().max()).item(), 5)
    except Exception as e:  # noqa: BLE001 - no FP8 on this device or build: that is the finding
        out["error"] = _err(e)
        return out
    for label, fast in (("", False), ("fast_accum_", True)):
        try:
            t = time_s(lambda fast=fast: mm(fast))
            out[f"{label}time_ms"] = round(t * 1e3, 4)
            out[f"{label}tflops"] = round(2 * n**3 / t / 1e12, 2)
        except Exception as e:  # noqa: BLE001
            out[f"{label}error"] = _err(e)
    return out


def copy_bandwidth(nbytes: int, device: torch.device, time_s) -> dict:
    src = torch.empty(nbytes // 4, device=device, dtype=torch.float32).uniform_()
    dst = torch.empty_like(src)
    t = time_s(lambda: dst.copy_(src))
    size = src.numel() * src.element_size()
    return {"bytes": size, "time_ms": round(t * 1e3, 4), "gb_per_s": round(2 * size / t / 1e9, 1)}  # read + written


def torchao_fp8(device: torch.device) -> dict:
    """The engine's FP8 path (t2i_engine/export/tuning.py): torchao's dynamic-activation,
    per-row FP8 weights on two bf16 Linear(1024, 1024); ok and the difference from bf16."""
    os.environ.setdefault("TORCHAO_FORCE_SKIP_LOADING_SO_FILES", "1")  # its FP8 Linear needs none of its C++ ops
    out: dict = {"ok": False}
    try:
        import torchao

        out["torchao"] = torchao.__version__
        from torchao.quantization import quantize_

        try:
            from torchao.quantization import Float8DynamicActivationFloat8WeightConfig as make_config
        except ImportError:  # older torchao: a function returning the same thing
            from torchao.quantization import float8_dynamic_activation_float8_weight as make_config
        try:
            from torchao.quantization import PerRow

            config, out["granularity"] = make_config(granularity=PerRow()), "PerRow"
        except (ImportError, TypeError):
            config, out["granularity"] = make_config(), "default"
    except Exception as e:  # noqa: BLE001 - not installed, or it does not import here
        out["error"] = _err(e)
        return out
    try:
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(1024, 1024), torch.nn.Linear(1024, 1024))
        model = model.to(device=device, dtype=torch.bfloat16).eval()
        x = torch.randn(256, 1024, device=device, dtype=torch.bfloat16)
        with torch.no_grad():
            ref = model(x).float()
            quantize_(model, config)
            out["weight_type"] = type(model[0].weight).__name__
            got = model(x).float()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        diff = (got - ref).abs().max().item()
        out.update(
            ok=bool(torch.isfinite(got).all().item()),
            max_abs_diff=round(diff, 5),
            max_abs_ref=round(ref.abs().max().item(), 5),
            rel_diff=round(diff / max(ref.abs().max().item(), 1e-12), 5),
        )
    except Exception as e:  # noqa: BLE001 - e.g. a GPU below compute capability 8.9
        out["error"] = _err(e)
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", help="also write the JSON object to this file")
    ap.add_argument("--dry-run", action="store_true", help="tiny sizes, wall clock (automatic without CUDA)")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    cuda = torch.cuda.is_available()
    dry = args.dry_run or not cuda
    device = torch.device("cuda" if cuda else "cpu")
    result: dict = {"dry_run": dry, **_versions(device)}
    time_s = _timer(device, dry)
    n = 256 if dry else 8192
    steps = [
        ("bf16_matmul", lambda: bf16_matmul(n, device, time_s)),
        ("fp8_e4m3_scaled_mm", lambda: fp8_matmul(n, device, time_s)),
        ("copy", lambda: copy_bandwidth(2**20 if dry else 2 * 2**30, device, time_s)),
        ("torchao_fp8", lambda: torchao_fp8(device)),
    ]
    for key, step in steps:
        try:
            result[key] = step()
        except Exception as e:  # noqa: BLE001 - one failed step must not lose the others
            result[key] = {"error": _err(e)}
        if cuda:
            torch.cuda.empty_cache()
    result["timing"] = "time.perf_counter, median of 3 (dry run)" if dry else f"CUDA events, median of {REPS}"
    result["wall_s"] = round(time.perf_counter() - t0, 2)
    text = json.dumps(result)
    print(text, flush=True)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
