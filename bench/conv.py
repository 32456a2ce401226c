"""Convolution on each UNet's real convolution calls, at production batch: cuDNN bf16 (F.conv2d,
channels_last) against our FP8 implicit-GEMM Triton kernel (t2i_engine.kernels.conv.conv2d_fp8),
side by side in one run.

    python bench/conv.py [--models sd15,sdxl] [--batch N] [--budget-s 90]
                         [--list] [--dry-run] [--out FILE]

Shapes: not typed in. Each model's UNet (its real architecture, t2i_engine/assets/configs) runs
one forward at its native resolution under fake tensors, with a forward pre-hook on every Conv2d
that `fp8_convs(unet)` returns (the ones `--conv fp8` routes through the kernel): each call's
(C_in, H, W, C_out, kernel, stride, padding, dilation, bias) and calls per forward. Convolutions
left on PyTorch (conv_in, conv_out) are counted in the summary, not timed. `--list` prints the
shapes and stops (any machine).

Batch: N of every convolution input, by default the production batch of one UNet call
(PRODUCTION_BATCH: images per call, doubled for classifier-free guidance; sd15 64 -> 128, sdxl
8 -> 16); `--batch N` sets one N for all.

Data: random normal activations [N, C, H, W] in bf16, channels_last; weights random normal /
sqrt(C*R*S), channels_last bf16; bias random (where the module has one). The FP8 weights are
quantised once (quantize_weight, as install_fp8_conv does) and not timed.

Paths, per distinct shape:
- `cudnn`: F.conv2d in bf16 on channels_last input and weight, with bias, torch.backends.cudnn
  as the engine leaves it (benchmark off: cuDNN's heuristics pick the algorithm);
- `fp8`: conv2d_fp8 as the engine calls it: the per-call activation quantisation (amax, scale,
  cast) and the kernel; its first call, which compiles and autotunes, is timed apart (the
  autotune key is M, C_out, C_in, R, S, so a later shape with the same key finds it tuned);
- `fp8_prequant`: the kernel alone, on an activation quantised beforehand;
- `quantize`: the activation quantisation alone (quantize_activation; `share_of_fp8` of its time);
- `cudnn_benchmark`: as `cudnn` with torch.backends.cudnn.benchmark on (its first call searches).
Timing: CUDA events around rounds of calls, each round ~10 ms, after warm-up; median of 10
rounds. GFLOP = 2 * N * P * Q * C_out * C_in * R * S; TFLOP/s = that / time. `vs_cudnn` =
cudnn's time / this path's time (> 1: faster than cuDNN). Errors against an fp32 convolution of
the same (bf16) inputs, TF32 off: `max_rel_err` = max |out - ref| / max |ref|, `rms_rel_err` =
||out - ref|| / ||ref||, for cudnn and fp8; and fp8 against its own contract, conv2d_fp8_ref
(the same FP8 rounding, then an fp32 convolution): `max_rel_diff_vs_fp8_ref`, summation order
and output rounding only. `fp8_prequant`'s `max_abs_diff_vs_fp8` should be 0.

Output: JSON lines on stdout (and --out FILE, written as they come): one `run` line, one `shape`
line per shape (heaviest first: FLOPs x calls per forward), one `summary` line per model: each
path's convolution time per UNet forward (shapes weighted by their calls per forward). Budget:
`--budget-s` is wall time from start (imports and shape recording included); once a model's
shapes are recorded it gets an equal share of what is left, its heaviest shape runs whenever any
budget is left, and shapes past its share (or paths past the whole budget) are written with
"skipped". A shape already started runs to its end, so a run can pass the budget by one shape.

With --dry-run, or without CUDA: on the CPU, TRITON_INTERPRET=1 (set before triton and the kernel
are imported), every shape shrunk (N 1, H and W at most 8, channels at most 32; kernel, stride,
padding and dilation kept), fp32 in place of bf16 for the PyTorch paths, each path called once
and timed with time.perf_counter; lines say "dry_run": true and their times mean nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys
import time
from collections import Counter

import torch
import torch.nn.functional as F
from timing import JsonLines, Timer, error_text, run_info  # bench/timing.py, beside this script

MODELS = ["sd15", "sd21", "sdxl"]  # the UNet families (sd, sdxl): the ones FP8 convolution routes

# images per UNet call in production, and whether classifier-free guidance doubles the batch.
PRODUCTION_BATCH = {
    "sd15": (64, True),
    "sd21": (16, True),
    "sdxl": (8, True),
}
PATHS = ("cudnn", "fp8", "fp8_prequant", "quantize", "cudnn_benchmark")  # run order: the two that matter first
ERR_PATHS = ("cudnn", "fp8")
DRY_N, DRY_HW, DRY_C = 1, 8, 32


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


def conv_shapes(name: str) -> tuple[Counter, Counter]:
    """({(C_in, H, W, C_out, (R, S), stride, padding, dilation, bias): calls per forward} of the
    convolutions fp8_convs routes, and the same of the Conv2d calls it leaves on PyTorch), one
    UNet forward at the model's native resolution."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from t2i_engine.kernels.conv import fp8_convs
    from t2i_engine.models.architectures import build_random_pipeline
    from t2i_engine.models.flops import denoiser_inputs
    from t2i_engine.models.pipelines import denoiser
    from t2i_engine.models.registry import get_model

    spec = get_model(name)
    if spec.family not in ("sd", "sdxl"):
        raise ValueError(f"{name} is a {spec.family} model: FP8 convolution is for UNets (sd, sdxl)")
    pipe = build_random_pipeline(spec, torch.device("meta"), torch.bfloat16)
    unet = denoiser(pipe)
    routed = {id(m) for m in fp8_convs(unet)}
    shapes: Counter = Counter()
    unrouted: Counter = Counter()

    def hook(mod, args):
        x = args[0]
        key = (
            int(x.shape[1]),
            int(x.shape[2]),
            int(x.shape[3]),
            mod.out_channels,
            _pair(mod.kernel_size),
            _pair(mod.stride),
            mod.padding if isinstance(mod.padding, str) else _pair(mod.padding),
            _pair(mod.dilation),
            mod.bias is not None,
        )
        (shapes if id(mod) in routed else unrouted)[key] += 1

    handles = [m.register_forward_pre_hook(hook) for m in unet.modules() if isinstance(m, torch.nn.Conv2d)]
    try:
        with FakeTensorMode(allow_non_fake_inputs=True), torch.no_grad():
            args, kwargs = denoiser_inputs(pipe, spec.family, *spec.resolution)
            unet(*args, **kwargs)
    finally:
        for h in handles:
            h.remove()
    return shapes, unrouted


def production_batch(name: str) -> tuple[int, int, bool]:
    """(N of one UNet call, images, CFG) for the model; unlisted models: the registry's images
    per call, doubled unless guidance is distilled or off."""
    if name in PRODUCTION_BATCH:
        images, cfg = PRODUCTION_BATCH[name]
    else:
        from t2i_engine.models.registry import get_model

        spec = get_model(name)
        images, cfg = spec.batch_size, not spec.distilled and spec.guidance > 1.0
    return images * (2 if cfg else 1), images, cfg


def _out_hw(h: int, w: int, rs, stride, padding, dilation) -> tuple[int, int]:
    p = (h + 2 * padding[0] - dilation[0] * (rs[0] - 1) - 1) // stride[0] + 1
    q = (w + 2 * padding[1] - dilation[1] * (rs[1] - 1) - 1) // stride[1] + 1
    return p, q


def _flops(n, c, h, w, k, rs, stride, padding, dilation) -> int:
    p, q = _out_hw(h, w, rs, stride, padding, dilation)
    return 2 * n * p * q * k * c * rs[0] * rs[1]


def _tf32_off(fn, *args):
    """fn(*args) with cuDNN's fp32 convolutions in full fp32 (PyTorch lets them use TF32 by default)."""
    old = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    try:
        return fn(*args)
    finally:
        torch.backends.cudnn.allow_tf32 = old


def _reference(x, weight, bias, stride, padding, dilation) -> torch.Tensor:
    """fp32 convolution of the same inputs, TF32 off."""
    b = None if bias is None else bias.float()
    return _tf32_off(F.conv2d, x.float(), weight.float(), b, stride, padding, dilation)


def _rel_errors(out: torch.Tensor, ref: torch.Tensor, ref_max: float, ref_norm: float) -> dict:
    diff = out.float() - ref
    return {
        "max_rel_err": round(diff.abs().max().item() / max(ref_max, 1e-30), 5),
        "rms_rel_err": round(diff.norm().item() / max(ref_norm, 1e-30), 5),
    }


@contextlib.contextmanager
def _prequantized(x_q: torch.Tensor, x_scale: torch.Tensor):
    """conv2d_fp8 with its activation already quantised: the kernel's time alone (the module's
    quantiser swapped for one returning these, for the duration)."""
    import t2i_engine.kernels.conv as kc

    original = kc.quantize_activation
    kc.quantize_activation = lambda x, operand: (x_q, x_scale)
    try:
        yield
    finally:
        kc.quantize_activation = original


@contextlib.contextmanager
def _cudnn_benchmark(on: bool):
    """cuDNN's algorithm search on or off for the duration (the engine leaves it off)."""
    old = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = on
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = old


def time_shape(
    n, c, h, w, k, rs, stride, padding, dilation, has_bias, *, device, dtype, timer: Timer, deadline: float
) -> dict:
    """Every path on one shape; a path past `deadline` (perf_counter) is skipped."""
    from t2i_engine.kernels.conv import (
        conv2d_fp8,
        conv2d_fp8_ref,
        operand_dtype,
        quantize_activation,
        quantize_weight,
    )

    g = torch.Generator(device).manual_seed(0)
    cl = torch.channels_last
    x = torch.randn(n, c, h, w, device=device, dtype=dtype, generator=g).contiguous(memory_format=cl)
    weight = torch.randn(k, c, *rs, device=device, dtype=torch.float32, generator=g) / math.sqrt(c * rs[0] * rs[1])
    weight = weight.to(dtype).contiguous(memory_format=cl)
    bias = (0.1 * torch.randn(k, device=device, dtype=torch.float32, generator=g)).to(dtype) if has_bias else None
    operand = operand_dtype(device)
    weight_q, weight_scale = quantize_weight(weight, operand)
    flops = _flops(n, c, h, w, k, rs, stride, padding, dilation)
    x_pre: tuple | None = None

    def cudnn():
        return F.conv2d(x, weight, bias, stride, padding, dilation)

    def fp8():
        return conv2d_fp8(x, weight_q, weight_scale, bias, stride, padding, dilation)

    def quantize():
        return quantize_activation(x, operand)

    out: dict = {"gflop": round(flops / 1e9, 3), "operand": str(operand).removeprefix("torch.")}
    paths: dict = {}
    ref = None
    ref_max = ref_norm = 0.0
    fp8_out = None
    for path in PATHS:
        if time.perf_counter() >= deadline:
            paths[path] = {"skipped": "--budget-s spent"}
            continue
        rec: dict = {}
        fn = {"cudnn": cudnn, "cudnn_benchmark": cudnn, "fp8": fp8, "fp8_prequant": fp8, "quantize": quantize}[path]
        try:
            if path == "fp8_prequant":
                if x_pre is None:
                    x_pre = quantize_activation(x, operand)
                context = _prequantized(*x_pre)
            elif path == "cudnn_benchmark":
                context = _cudnn_benchmark(True)
            else:
                context = contextlib.nullcontext()  # cudnn: as the engine leaves it
            with context:
                first_s, result = timer.first(fn)
                rec["first_call_s"] = round(first_s, 4)
                t = timer(fn)
            rec["ms"] = round(t * 1e3, 4)
            if path != "quantize":  # quantisation does no multiply-adds
                rec["tflops"] = round(flops / t / 1e12, 6 if timer.dry else 2)
            if path in ERR_PATHS:
                if ref is None:
                    ref = _reference(x, weight, bias, stride, padding, dilation)
                    ref_max, ref_norm = ref.abs().max().item(), ref.norm().item()
                rec.update(_rel_errors(result, ref, ref_max, ref_norm))
                rec["channels_last_out"] = result.is_contiguous(memory_format=cl)
            if path == "fp8":
                fp8_out = result
                # against its own contract (conv2d_fp8_ref: the same FP8 rounding, an fp32 conv):
                # summation order and the output's rounding only
                contract = _tf32_off(conv2d_fp8_ref, x, weight, bias, stride, padding, dilation).float()
                rec["max_rel_diff_vs_fp8_ref"] = round(
                    (result.float() - contract).abs().max().item() / max(contract.abs().max().item(), 1e-30), 6
                )
                del contract
            elif path == "fp8_prequant" and fp8_out is not None:
                # the same quantised values and scales: the same output, bit for bit
                rec["max_abs_diff_vs_fp8"] = (result.float() - fp8_out.float()).abs().max().item()
            del result
        except Exception as e:  # noqa: BLE001 - a path that fails on the shape (out of memory, a compile error)
            rec = {"error": error_text(e)}
        paths[path] = rec
    timed = {p: r["ms"] for p, r in paths.items() if "ms" in r}
    if "cudnn" in timed:
        for p in ("fp8", "fp8_prequant", "cudnn_benchmark"):
            if p in timed:
                paths[p]["vs_cudnn"] = round(timed["cudnn"] / timed[p], 3)
    if "quantize" in timed and "fp8" in timed:
        paths["quantize"]["share_of_fp8"] = round(timed["quantize"] / timed["fp8"], 3)
    out["paths"] = paths
    return out


def _label(row: dict) -> str:
    return (
        f"C{row['C_in']} {row['H']}x{row['W']} K{row['C_out']} {row['kernel'][0]}x{row['kernel'][1]}"
        f" s{row['stride'][0]}"
    )


def summarize(name: str, n: int, images, cfg, rows: list[dict], unrouted: Counter, dry: bool) -> dict:
    """Convolution time per UNet forward for each path: sum over shapes of calls x time."""
    done = [r for r in rows if "paths" in r]
    per_path: dict = {}
    for path in PATHS:
        total, missing = 0.0, []
        for r in done:
            ms = r["paths"][path].get("ms")
            if ms is None:
                missing.append(_label(r))
            else:
                total += r["calls_per_forward"] * ms
        per_path[path] = {"ms_per_forward": round(total, 4) if done and not missing else None}
        if missing:
            per_path[path]["missing_shapes"] = missing
    base = per_path["cudnn"]["ms_per_forward"]
    flops_timed = sum(r["calls_per_forward"] * r["gflop"] for r in done) * 1e9
    for path, rec in per_path.items():
        ms = rec["ms_per_forward"]
        if ms:
            if path != "quantize":
                rec["tflops"] = round(flops_timed / (ms / 1e3) / 1e12, 6 if dry else 2)
            if base and path not in ("cudnn", "quantize"):
                rec["vs_cudnn"] = round(base / ms, 3)
    quantize, fp8 = per_path["quantize"]["ms_per_forward"], per_path["fp8"]["ms_per_forward"]
    if quantize and fp8:
        per_path["quantize"]["share_of_fp8"] = round(quantize / fp8, 3)
    return {
        "kind": "summary",
        "model": name,
        "N": n,
        "images": images,
        "cfg": cfg,
        "dry_run": dry,
        "shapes": len(rows),
        "shapes_timed": len(done),
        "shapes_not_timed": len(rows) - len(done),
        "calls_per_forward": sum(r["calls_per_forward"] for r in rows),
        "calls_timed": sum(r["calls_per_forward"] for r in done),
        "gflop_per_forward": round(sum(r["calls_per_forward"] * r["production_gflop"] for r in rows), 1),
        "gflop_timed": round(flops_timed / 1e9, 3),
        "unrouted_calls_per_forward": sum(unrouted.values()),
        "unrouted": [
            {"C_in": c, "H": h, "W": w, "C_out": k, "kernel": list(rs), "calls": calls}
            for (c, h, w, k, rs, *_), calls in sorted(unrouted.items())
        ],
        "note": "ms_per_forward: routed convolutions only, shapes timed, each weighted by its calls per forward; "
        "null where a path lacks a timed shape. fp8 includes the activation quantisation; "
        "fp8_prequant is the kernel alone; quantize is the quantisation alone",
        "paths": per_path,
    }


def _run_info(device: torch.device, dry: bool, args) -> dict:
    info = run_info(device, dry, args)
    try:
        from t2i_engine.kernels.conv import operand_dtype

        info["fp8_operand"] = str(operand_dtype(device)).removeprefix("torch.")
    except Exception as e:  # noqa: BLE001
        info["fp8_operand"] = error_text(e)
    info["cudnn_benchmark_default"] = torch.backends.cudnn.benchmark
    dtype = "fp32 (dry run)" if dry else "bf16"
    info["layout"] = f"x [N, C, H, W] and weight {dtype}, channels_last, randn (weight / sqrt(C*R*S))"
    return info


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="sd15", help=f"comma-separated UNet models, of {MODELS}")
    ap.add_argument("--batch", type=int, help="N of every convolution (default: each model's production batch)")
    ap.add_argument("--budget-s", type=float, default=90.0, help="wall-time cap; later shapes are skipped")
    ap.add_argument("--list", action="store_true", help="print the shapes and stop (no GPU needed)")
    ap.add_argument("--dry-run", action="store_true", help="tiny shapes, CPU interpreter (automatic without CUDA)")
    ap.add_argument("--out", help="also write the JSON lines to this file")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    deadline = t0 + args.budget_s
    cuda = torch.cuda.is_available()
    dry = args.dry_run or not cuda
    if dry:
        # before triton and t2i_engine.kernels.conv (its configs and @triton.jit read it) are imported
        if "t2i_engine.kernels.conv" in sys.modules and os.environ.get("TRITON_INTERPRET") != "1":
            raise SystemExit("set TRITON_INTERPRET=1 before the kernel is imported")
        os.environ["TRITON_INTERPRET"] = "1"
    elif os.environ.get("TRITON_INTERPRET", "0") == "1":
        raise SystemExit("TRITON_INTERPRET=1 times the CPU interpreter: unset it, or pass --dry-run")
    device = torch.device("cpu" if dry else "cuda")
    dtype = torch.float32 if dry else torch.bfloat16
    timer = Timer(device, dry)
    emit = JsonLines(args.out)

    try:
        if not args.list:
            emit(_run_info(device, dry, args))
        names = [m for m in args.models.split(",") if m]
        for i, name in enumerate(names):
            n, images, cfg = production_batch(name)
            if args.batch:
                n, images, cfg = args.batch, None, None
            try:
                shapes, unrouted = conv_shapes(name)
            except Exception as e:  # noqa: BLE001 - a model without a UNet, or one that fails to build
                emit({"kind": "error", "model": name, "error": error_text(e)})
                continue
            share_end = time.perf_counter() + max(0.0, deadline - time.perf_counter()) / (len(names) - i)
            # heaviest first (calls x FLOPs): a budget cut drops the shapes that matter least
            order = sorted(shapes.items(), key=lambda kv: (-kv[1] * _flops(n, *kv[0][:8]), kv[0]))
            rows = []
            for (c, h, w, k, rs, stride, padding, dilation, has_bias), calls in order:
                p, q = _out_hw(h, w, rs, stride, padding, dilation)
                row = {"kind": "shape", "model": name, "N": n, "C_in": c, "H": h, "W": w, "C_out": k}
                row.update(kernel=list(rs), stride=list(stride), padding=list(padding), dilation=list(dilation))
                row.update(bias=has_bias, P=p, Q=q, calls_per_forward=calls)
                row["production_gflop"] = round(_flops(n, c, h, w, k, rs, stride, padding, dilation) / 1e9, 3)
                if args.list:
                    emit(row)
                    rows.append(row)
                    continue
                if dry:  # shrunk: the same code paths at a size the CPU interpreter runs in moments
                    row["dry_run"] = True
                    row["production"] = {"N": n, "C_in": c, "H": h, "W": w, "C_out": k, "P": p, "Q": q}
                    c, k, h, w = min(c, DRY_C), min(k, DRY_C), min(h, DRY_HW), min(w, DRY_HW)
                    p, q = _out_hw(h, w, rs, stride, padding, dilation)
                    row.update(N=DRY_N, C_in=c, H=h, W=w, C_out=k, P=p, Q=q)
                now = time.perf_counter()
                if now >= deadline or (now >= share_end and any("paths" in r for r in rows)):
                    # each model's heaviest shape runs while any budget is left; the rest within its share
                    row["skipped"] = f"--budget-s {args.budget_s:g}: this model's share spent at {now - t0:.1f} s"
                else:
                    try:
                        row.update(
                            time_shape(
                                row["N"],
                                c,
                                h,
                                w,
                                k,
                                rs,
                                stride,
                                padding,
                                dilation,
                                has_bias,
                                device=device,
                                dtype=dtype,
                                timer=timer,
                                deadline=deadline,
                            )
                        )
                    except Exception as e:  # noqa: BLE001 - one shape failing (out of memory) keeps the rest
                        row["error"] = error_text(e)
                    row["elapsed_s"] = round(time.perf_counter() - t0, 2)
                rows.append(row)
                emit(row)
                if device.type == "cuda":
                    torch.cuda.empty_cache()
            if not args.list:
                emit(summarize(name, DRY_N if dry else n, images, cfg, rows, unrouted, dry))
    finally:
        emit.close()


if __name__ == "__main__":
    main()
