"""Attention on each model's real attention calls, at production batch and layout: PyTorch's SDPA
(the default it picks, and flash, efficient and cuDNN forced one at a time) against our Triton
kernel (t2i_engine.kernels.attention.flash_attention), bf16, side by side in one run.

    python bench/attention.py [--models sd15,flux-schnell] [--batch N] [--budget-s 120]
                              [--list] [--dry-run] [--out FILE] [--table FILE|none]

Shapes: not typed in. Each model's denoiser (its real architecture, t2i_engine/assets/configs)
runs one forward at its native resolution under fake tensors, and every
scaled_dot_product_attention call is recorded (heads, key/value heads, query and key lengths,
head dim, calls per forward). `--list` prints them and stops (any machine).

Batch: the production batch of one denoiser call, by default per model (PRODUCTION_BATCH: images
per call, doubled where classifier-free guidance batches the unconditional half; sd15 64, sdxl
16, sd3-medium 8, flux-schnell 4); `--batch N` sets one B for all.

Layout: as diffusers' attention processors hold them. q, k and v are each a [B, S, H*D]
projection viewed [B, S, H, D] and transposed to [B, H, S, D]: strided views, not contiguous
(what `to_q(x).view(B, -1, H, D).transpose(1, 2)` gives); bf16, random normal.

Paths, per distinct shape: `sdpa_default` (no context: what production runs; the backend it
picks is read from torch._fused_sdp_choice, PyTorch's own dispatcher, and also inferred as the
forced backend closest in time), `flash`, `efficient`, `cudnn` (each under
sdpa_kernel([backend]); a backend that refuses the shape records its error), and `triton`
(refused shapes record supports()'s reason; the first call, which compiles and autotunes, is
timed apart). Timing: CUDA events around rounds of calls, each round ~10 ms, after warm-up;
median of 10 rounds. TFLOP/s = 4 * B * H * Lq * Lk * D / time (the two matmuls; softmax not
counted). `vs_best_sdpa` = best forced SDPA backend's time / this path's time (> 1: faster).

Output: JSON lines on stdout (and --out FILE, written as they come): one `run` line (device,
versions), one `shape` line per shape, one `summary` line per model: each path's attention
time per denoiser forward (shapes weighted by their calls per forward) and its ratio to the
best SDPA backend per shape. Within a model, shapes go heaviest first (calls x FLOPs). Budget:
`--budget-s` is wall time from start (imports and shape recording included); once a model's
shapes are recorded it gets an equal share of what is left, its heaviest shape runs whenever any
budget is left, and shapes past its share (or paths past the whole budget) are skipped with a
note. A shape already started runs to its end, so a run can pass the budget by one shape.

The auto attention table: each timed shape's times on flash, efficient, cuDNN and the Triton
kernel go into the table `--attention auto` reads (t2i_engine/kernels/auto.py): by default, on a
GPU outside a dry run, the engine's own table for this GPU architecture (in the artifact cache),
so a later `generate --attention auto` routes these shapes without timing them; `--table FILE`
writes to FILE instead (any run), `--table none` writes nothing.

Without CUDA, or with --dry-run: every shape shrunk (B 1, at most 2 heads, lengths capped at
64; head dims kept) and each path called once through the same code, timed with
time.perf_counter (the Triton kernel through Triton's CPU interpreter, TRITON_INTERPRET=1, when
there is no CUDA); lines say "dry_run": true and their numbers mean nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
import warnings
from collections import Counter
from pathlib import Path

import torch
import torch.nn.functional as F
from timing import JsonLines, Timer, error_text, run_info  # bench/timing.py, beside this script
from torch.overrides import TorchFunctionMode

MODELS = ["sd15", "sd21", "sdxl", "sd3-medium", "flux-schnell", "flux-dev", "sd35-large"]

# images per denoiser call in production, and whether classifier-free guidance doubles the batch
# (FLUX is guidance-distilled: one pass). sd21, flux-dev and sd35-large are not measured choices.
PRODUCTION_BATCH = {
    "sd15": (32, True),
    "sd21": (16, True),
    "sdxl": (8, True),
    "sd3-medium": (4, True),
    "flux-schnell": (4, False),
    "flux-dev": (4, False),
    "sd35-large": (4, True),
}
SDPA_BACKENDS = ("flash", "efficient", "cudnn")
PATHS = ("sdpa_default", "triton", "flash", "cudnn", "efficient")  # run order: the two that matter first
DRY_HEADS, DRY_LEN = 2, 64


class _Record(TorchFunctionMode):
    def __init__(self):
        super().__init__()
        self.shapes: Counter = Counter()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention:
            q = args[0] if args else kwargs["query"]
            k = args[1] if len(args) > 1 else kwargs["key"]
            self.shapes[(q.shape[1], k.shape[1], q.shape[2], k.shape[2], q.shape[3])] += 1
        return func(*args, **kwargs)


def attention_shapes(name: str) -> Counter:
    """{(H, Hkv, Lq, Lk, D): calls per denoiser forward} at the model's native resolution."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from t2i_engine.models.architectures import architecture, build_random_pipeline
    from t2i_engine.models.flops import denoiser_inputs
    from t2i_engine.models.pipelines import denoiser
    from t2i_engine.models.registry import get_model

    spec = get_model(name)
    pipe = build_random_pipeline(spec, torch.device("meta"), torch.bfloat16)
    text = architecture(name)["text"] if spec.family in ("sd3", "flux") else None
    record = _Record()
    with FakeTensorMode(allow_non_fake_inputs=True), torch.no_grad():
        args, kwargs = denoiser_inputs(pipe, spec.family, *spec.resolution, text)
        with record:
            denoiser(pipe)(*args, **kwargs)
    return record.shapes


def production_batch(name: str) -> tuple[int, int, bool]:
    """(B of one denoiser call, images, CFG) for the model; unlisted models: the registry's
    images per call, doubled unless guidance is distilled or off."""
    if name in PRODUCTION_BATCH:
        images, cfg = PRODUCTION_BATCH[name]
    else:
        from t2i_engine.models.registry import get_model

        spec = get_model(name)
        images, cfg = spec.batch_size, not spec.distilled and spec.guidance > 1.0
    return images * (2 if cfg else 1), images, cfg


def _projection(b: int, s: int, heads: int, d: int, device, dtype, g) -> torch.Tensor:
    """[B, H, S, D] as diffusers holds it: a [B, S, H*D] projection, viewed and transposed."""
    x = torch.randn(b, s, heads * d, device=device, dtype=dtype, generator=g)
    return x.view(b, s, heads, d).transpose(1, 2)


def _default_backend(q, k, v, gqa: bool) -> str | None:
    """The backend SDPA's dispatcher picks for these inputs outside any sdpa_kernel context."""
    from torch.nn.attention import SDPBackend

    try:
        kw = {"enable_gqa": True} if gqa else {}
        return SDPBackend(torch._fused_sdp_choice(q, k, v, **kw)).name.lower().removesuffix("_attention")
    except Exception:  # noqa: BLE001 - a private function: may move between releases
        return None


def time_shape(b, h, hkv, lq, lk, d, *, device, timer: Timer, deadline: float) -> dict:
    """Every path on one shape; a path past `deadline` (perf_counter) is skipped."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from t2i_engine.kernels.attention import flash_attention, supports

    g = torch.Generator(device).manual_seed(0)
    q = _projection(b, lq, h, d, device, torch.bfloat16, g)
    k = _projection(b, lk, hkv, d, device, torch.bfloat16, g)
    v = _projection(b, lk, hkv, d, device, torch.bfloat16, g)
    gqa = hkv != h
    kw = {"enable_gqa": True} if gqa else {}
    flops = 4 * b * h * lq * lk * d
    backends = {"flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION}
    if hasattr(SDPBackend, "CUDNN_ATTENTION"):
        backends["cudnn"] = SDPBackend.CUDNN_ATTENTION

    def sdpa():
        return F.scaled_dot_product_attention(q, k, v, **kw)

    def triton_call():
        return flash_attention(q, k, v, scale=None, mask=None)

    out: dict = {
        "q_stride": list(q.stride()),
        "q_contiguous": q.is_contiguous(),
        "gflop": round(flops / 1e9, 3),
        "default_backend": _default_backend(q, k, v, gqa),
    }
    paths: dict = {}
    reference = None
    for path in PATHS:
        if time.perf_counter() >= deadline:
            paths[path] = {"skipped": "--budget-s spent"}
            continue
        rec: dict = {}
        fn = triton_call if path == "triton" else sdpa
        caught: list = []
        try:
            if path == "triton" and (why := supports(q, k, v)):
                raise ValueError(f"not supported: {why}")
            if path in SDPA_BACKENDS and path not in backends:
                raise RuntimeError(f"SDPBackend has no {path} in torch {torch.__version__}")
            with warnings.catch_warnings(record=True) as caught:  # a refusing backend warns why, then raises
                warnings.simplefilter("always")
                # a forced backend: the context held around all the calls, not entered per call
                with sdpa_kernel([backends[path]]) if path in backends else contextlib.nullcontext():
                    first_s, result = timer.first(fn)
                    rec["first_call_s"] = round(first_s, 4)
                    t = timer(fn)
            rec.update(ms=round(t * 1e3, 4), tflops=round(flops / t / 1e12, 6 if timer.dry else 2))
            if path == "sdpa_default":
                reference = result.float()
            elif reference is not None:
                rec["max_abs_diff_vs_default"] = round((result.float() - reference).abs().max().item(), 5)
            del result
        except Exception as e:  # noqa: BLE001 - a path that refuses the shape (head dim, layout, device)
            rec = {"error": error_text(e)}
            why = [str(w.message).strip().splitlines()[0][:200] for w in caught if str(w.message).strip()]
            if why:
                rec["warnings"] = why[:4]
        paths[path] = rec
    timed = {p: r["ms"] for p, r in paths.items() if "ms" in r}
    best = min((p for p in SDPA_BACKENDS if p in timed), key=timed.get, default=None)
    if best is None and "sdpa_default" in timed:
        best = "sdpa_default"
    out["best_sdpa"] = best
    if best:
        for p, ms in timed.items():
            paths[p]["vs_best_sdpa"] = round(timed[best] / ms, 3)
    if "sdpa_default" in timed:  # inferred: the forced backend whose time is closest to the default's
        forced_times = {p: timed[p] for p in SDPA_BACKENDS if p in timed}
        out["default_closest"] = (
            min(forced_times, key=lambda p: abs(forced_times[p] - timed["sdpa_default"])) if forced_times else None
        )
    out["paths"] = paths
    return out


def summarize(name: str, b: int, images: int, cfg: bool, rows: list[dict], dry: bool) -> dict:
    """Attention time per denoiser forward for each path: sum over shapes of calls x time."""
    done = [r for r in rows if "paths" in r]
    per_path: dict = {}
    for path in (*PATHS, "best_sdpa", "triton_or_default"):
        total, missing = 0.0, []
        for r in done:
            p = r["paths"]
            if path == "best_sdpa":
                ms = p.get(r["best_sdpa"], {}).get("ms") if r["best_sdpa"] else None
            elif path == "triton_or_default":  # what the engine runs: SDPA where the kernel refuses
                ms = p["sdpa_default"].get("ms") if "error" in p["triton"] else p["triton"].get("ms")
            else:
                ms = p[path].get("ms")
            if ms is None:
                missing.append(f"H{r['H']} Lq{r['Lq']} Lk{r['Lk']} D{r['D']}")
            else:
                total += r["calls_per_forward"] * ms
        per_path[path] = {"ms_per_forward": round(total, 4) if done and not missing else None}
        if missing:
            per_path[path]["missing_shapes"] = missing
    best = per_path["best_sdpa"]["ms_per_forward"]
    for rec in per_path.values():
        if best and rec["ms_per_forward"]:
            rec["vs_best_sdpa"] = round(best / rec["ms_per_forward"], 3)
    return {
        "kind": "summary",
        "model": name,
        "B": b,
        "images": images,
        "cfg": cfg,
        "dry_run": dry,
        "shapes": len(rows),
        "shapes_timed": len(done),
        "shapes_not_timed": len(rows) - len(done),
        "calls_per_forward": sum(r["calls_per_forward"] for r in rows),
        "calls_timed": sum(r["calls_per_forward"] for r in done),
        "note": "ms_per_forward: attention only, shapes timed; null where a path lacks a timed shape",
        "paths": per_path,
    }


def auto_table(arg: str | None, device: torch.device, dry: bool):
    """The table `--table` names (the engine's own by default on a GPU outside a dry run), or None."""
    from t2i_engine.kernels.auto import AutoTable

    if arg == "none" or (arg is None and (dry or device.type != "cuda")):
        return None
    return AutoTable.for_device(device, None if arg is None else Path(arg))


def feed_table(table, row: dict) -> str | None:
    """A timed shape's candidates into the auto table; the winner, or None where none ran."""
    from t2i_engine.kernels.auto import CANDIDATES, shape_key

    paths = row["paths"]
    ms = {c: paths[c]["ms"] for c in CANDIDATES if "ms" in paths.get(c, {})}
    unfinished = [
        c for c in CANDIDATES if "skipped" in paths.get(c, {}) or "OutOfMemory" in paths.get(c, {}).get("error", "")
    ]
    if not ms or unfinished:  # a winner among some of the candidates would stand for good: leave it to the engine
        return None
    refused = {c: paths[c].get("error", "") for c in CANDIDATES if c in paths and c not in ms}
    # the layout this script times: q/k/v viewed from [B, S, H*D] projections, as diffusers holds them
    key = shape_key(
        row["B"], row["H"], row["Hkv"], row["Lq"], row["Lk"], row["D"], row["D"], torch.bfloat16, layout="bshd"
    )
    return table.record(key, ms, refused, source="bench/attention.py")


def _run_info(device: torch.device, dry: bool, args) -> dict:
    info = run_info(device, dry, args)
    info["layout"] = "q/k/v: [B, S, H*D] projections .view(B, S, H, D).transpose(1, 2), bf16, randn"
    return info


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="sd15,sdxl,sd3-medium,flux-schnell", help=f"comma-separated, of {MODELS}")
    ap.add_argument("--batch", type=int, help="B of every call (default: each model's production batch)")
    ap.add_argument("--budget-s", type=float, default=120.0, help="wall-time cap; later shapes are skipped")
    ap.add_argument("--list", action="store_true", help="print the shapes and stop (no GPU needed)")
    ap.add_argument("--dry-run", action="store_true", help="tiny shapes, one call per path (automatic without CUDA)")
    ap.add_argument("--out", help="also write the JSON lines to this file")
    ap.add_argument(
        "--table", help="the auto attention table to write (default: the engine's, on a GPU outside a dry run; none)"
    )
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    deadline = t0 + args.budget_s
    cuda = torch.cuda.is_available()
    dry = args.dry_run or not cuda
    if dry and not cuda and not args.list:
        # before t2i_engine.kernels.attention (and diffusers, which imports triton) is imported
        if "t2i_engine.kernels.attention" in sys.modules:
            raise SystemExit("set TRITON_INTERPRET=1 before the kernel is imported")
        os.environ["TRITON_INTERPRET"] = "1"
    device = torch.device("cuda" if cuda else "cpu")
    timer = Timer(device, dry)
    emit = JsonLines(args.out)
    table = auto_table(args.table, device, dry and not args.list)

    try:
        if not args.list:
            emit(_run_info(device, dry, args))
        names = [n for n in args.models.split(",") if n]
        for i, name in enumerate(names):
            b, images, cfg = production_batch(name)
            if args.batch:
                b, images, cfg = args.batch, None, None
            shapes = attention_shapes(name)
            share_end = time.perf_counter() + max(0.0, deadline - time.perf_counter()) / (len(names) - i)
            # heaviest first (calls x FLOPs): a budget cut drops the shapes that matter least
            order = sorted(shapes.items(), key=lambda kv: (-kv[1] * kv[0][0] * kv[0][2] * kv[0][3] * kv[0][4], kv[0]))
            rows = []
            for (h, hkv, lq, lk, d), calls in order:
                row = {"kind": "shape", "model": name, "B": b, "H": h, "Hkv": hkv, "Lq": lq, "Lk": lk, "D": d}
                row["calls_per_forward"] = calls
                if args.list:
                    emit(row)
                    continue
                if dry:  # shrunk: the same code paths at a size the CPU (and interpreter) runs in seconds
                    row["dry_run"] = True
                    row["production"] = {"B": b, "H": h, "Hkv": hkv, "Lq": lq, "Lk": lk}
                    h2 = min(h, DRY_HEADS)
                    hkv2 = h2 if hkv == h else 1
                    row.update(B=1, H=h2, Hkv=hkv2, Lq=min(lq, DRY_LEN), Lk=min(lk, DRY_LEN))
                now = time.perf_counter()
                if now >= deadline or (now >= share_end and any("paths" in r for r in rows)):
                    # each model's heaviest shape runs while any budget is left; the rest within its share
                    row["skipped"] = f"--budget-s {args.budget_s:g}: this model's share spent at {now - t0:.1f} s"
                else:
                    try:
                        row.update(
                            time_shape(
                                row["B"],
                                row["H"],
                                row["Hkv"],
                                row["Lq"],
                                row["Lk"],
                                row["D"],
                                device=device,
                                timer=timer,
                                deadline=deadline,
                            )
                        )
                    except Exception as e:  # noqa: BLE001 - one shape failing (out of memory) keeps the rest
                        row["error"] = error_text(e)
                    row["elapsed_s"] = round(time.perf_counter() - t0, 2)
                    if table is not None and "paths" in row:
                        row["auto_winner"] = feed_table(table, row)
                rows.append(row)
                emit(row)
                if cuda:
                    torch.cuda.empty_cache()
            if not args.list:
                emit(summarize(name, rows[0]["B"] if dry and rows else b, images, cfg, rows, dry))
    finally:
        emit.close()


if __name__ == "__main__":
    main()
