"""What bench/attention.py and bench/conv.py time with: a kernel's seconds per call with CUDA
events (warm-up, then rounds of about ROUND_S, their median), errors as one short line, and
records as JSON lines on stdout and in a file."""

from __future__ import annotations

import json
import math
import statistics
import time

import torch

ROUND_S, ROUNDS, WARMUP = 0.01, 10, 3


def error_text(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0][:200] if lines else ''}"


class Timer:
    """seconds of one call. CUDA: events around rounds of calls (about ROUND_S each), after
    warm-up; median of ROUNDS. Dry run: one call on the clock."""

    def __init__(self, device: torch.device, dry: bool):
        self.device, self.dry = device, dry

    def _sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def first(self, fn) -> tuple[float, object]:
        """(wall seconds, output) of a first call (compile, autotune, library init)."""
        self._sync()
        t = time.perf_counter()
        result = fn()
        self._sync()
        return time.perf_counter() - t, result

    def __call__(self, fn) -> float:
        if self.dry:
            return self.first(fn)[0]
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(WARMUP):
            fn()
        end.record()
        torch.cuda.synchronize(self.device)
        per_call = max(start.elapsed_time(end) / 1000 / WARMUP, 1e-6)
        reps = max(1, min(500, math.ceil(ROUND_S / per_call)))
        pairs = []
        for _ in range(ROUNDS):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(reps):
                fn()
            end.record()
            pairs.append((start, end))
        torch.cuda.synchronize(self.device)
        return statistics.median(s.elapsed_time(e) / 1000 / reps for s, e in pairs)


class JsonLines:
    """Each record printed and, with a path, appended there at once (a time limit keeps what ended)."""

    def __init__(self, path):
        self.sink = open(path, "w") if path else None  # noqa: SIM115 - closed by close()

    def __call__(self, row: dict) -> None:
        text = json.dumps(row)
        print(text, flush=True)
        if self.sink:
            self.sink.write(text + "\n")
            self.sink.flush()

    def close(self) -> None:
        if self.sink:
            self.sink.close()


def run_info(device: torch.device, dry: bool, args) -> dict:
    """The first record of a run: versions, the device, the options, how it times."""
    import os

    info: dict = {"kind": "run", "dry_run": dry, "torch": torch.__version__, "cuda": torch.version.cuda}
    try:
        import triton

        info["triton"] = triton.__version__
    except Exception as e:  # noqa: BLE001 - absent is a finding
        info["triton"] = error_text(e)
    try:
        info["cudnn"] = torch.backends.cudnn.version()
    except Exception:  # noqa: BLE001
        info["cudnn"] = None
    info["device"] = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    if device.type == "cuda":
        info["capability"] = list(torch.cuda.get_device_capability(device))
    info["triton_interpret"] = os.environ.get("TRITON_INTERPRET", "0") == "1"
    info.update(models=args.models, batch=args.batch or "production (per model)", budget_s=args.budget_s)
    info["timing"] = (
        "one call, time.perf_counter (dry run)"
        if dry
        else f"CUDA events, rounds of ~{ROUND_S * 1e3:.0f} ms after {WARMUP} warm-up calls, median of {ROUNDS}"
    )
    return info
