"""Attention TFLOP/s on each model's real attention shapes: our Triton kernel against PyTorch's
SDPA backends (flash, efficient, cuDNN where available), bf16, side by side in one run.

    python bench/attention.py [--models sd15,sdxl,...] [--batch 2] [--list] [--out FILE]

The shapes are not typed in: each model's denoiser (its real architecture, t2i_engine/assets/
configs) runs one forward at its native resolution under fake tensors, and every
scaled_dot_product_attention call is recorded (heads, key/value heads, query and key lengths,
head dim). `--list` prints them and stops (works on a CPU). Timing needs CUDA: CUDA events
around 20 calls after 5 warm-up calls, median of 5 such rounds; random inputs.
TFLOP/s = 4 * B * H * Lq * Lk * D / time (the two matmuls; softmax not counted).
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import Counter

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

MODELS = ["sd15", "sd21", "sdxl", "sd3-medium", "flux-schnell", "flux-dev", "sd35-large"]


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


def _time(fn, reps: int = 20, rounds: int = 5) -> float:
    for _ in range(5):
        fn()
    times = []
    for _ in range(rounds):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(reps):
            fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1000 / reps)
    return statistics.median(times)


def time_shape(b: int, h: int, hkv: int, lq: int, lk: int, d: int) -> dict:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from t2i_engine.kernels.attention import flash_attention

    g = torch.Generator("cuda").manual_seed(0)
    q = torch.randn(b, h, lq, d, device="cuda", dtype=torch.bfloat16, generator=g)
    k = torch.randn(b, hkv, lk, d, device="cuda", dtype=torch.bfloat16, generator=g)
    v = torch.randn(b, hkv, lk, d, device="cuda", dtype=torch.bfloat16, generator=g)
    flops = 4 * b * h * lq * lk * d
    kr, vr = (k, v) if hkv == h else (k.repeat_interleave(h // hkv, 1), v.repeat_interleave(h // hkv, 1))
    out = {"triton": flops / _time(lambda: flash_attention(q, k, v)) / 1e12}
    backends = {"flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION}
    if hasattr(SDPBackend, "CUDNN_ATTENTION"):
        backends["cudnn"] = SDPBackend.CUDNN_ATTENTION
    for label, backend in backends.items():
        try:
            with sdpa_kernel(backend):
                out[label] = flops / _time(lambda: F.scaled_dot_product_attention(q, kr, vr)) / 1e12
        except RuntimeError as e:  # this backend does not take the shape (head dim, say)
            out[label] = None
            out[f"{label}_error"] = str(e).splitlines()[0][:120]
    best = max((x for key, x in out.items() if key in backends and x), default=None)
    out["vs_best_sdpa"] = round(out["triton"] / best, 3) if best else None
    return {k: (round(x, 1) if isinstance(x, float) and k != "vs_best_sdpa" else x) for k, x in out.items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--batch", type=int, default=2, help="B of each call (2: one image with CFG)")
    ap.add_argument("--list", action="store_true", help="print the shapes and stop (no GPU needed)")
    ap.add_argument("--out", help="JSON file for the results")
    args = ap.parse_args()
    rows = []
    for name in args.models.split(","):
        for (h, hkv, lq, lk, d), calls in sorted(attention_shapes(name).items()):
            row = {
                "model": name,
                "B": args.batch,
                "H": h,
                "Hkv": hkv,
                "Lq": lq,
                "Lk": lk,
                "D": d,
                "calls_per_forward": calls,
            }
            if not args.list:
                if not torch.cuda.is_available():
                    raise SystemExit("timing needs CUDA; --list prints the shapes on any machine")
                row.update(time_shape(args.batch, h, hkv, lq, lk, d))
            rows.append(row)
            print(json.dumps(row), flush=True)
    if args.out:
        meta = {
            "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu (shapes only)",
            "torch": torch.__version__,
        }
        with open(args.out, "w") as f:
            json.dump({**meta, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
