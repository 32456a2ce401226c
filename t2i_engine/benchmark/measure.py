"""What a benchmark measures besides its own timings: the device's dense matmul rate (the
denominator of model-FLOP utilisation; the card's published peak is the other one), GPU
utilisation, power and clocks through NVML, peak memory, and the versions that make a number
reproducible."""

from __future__ import annotations

import importlib
import math
import platform
import statistics
import threading
import time

import numpy as np
import torch

from ..dataset.manifest import versions as package_versions


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_rate(device: torch.device) -> dict:
    """Dense matmul FLOP/s measured here and now: bf16 8192^3 on a GPU (the rate MFU is quoted
    against), timed with CUDA events (a host clock adds its launch and sync latency); fp32
    1024^3 on a CPU (bf16 matmuls are emulated and slow there)."""
    dtype, n, reps = (torch.bfloat16, 8192, 30) if device.type == "cuda" else (torch.float32, 1024, 8)
    g = torch.Generator("cpu").manual_seed(0)
    a = torch.randn(n, n, generator=g).to(device, dtype)
    b = torch.randn(n, n, generator=g).to(device, dtype)
    for _ in range(3):
        a @ b
    times = []
    for _ in range(reps):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            a @ b
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1000)
        else:
            start = time.perf_counter()
            a @ b
            times.append(time.perf_counter() - start)
    return {
        "dtype": str(dtype).removeprefix("torch."),
        "n": n,
        "flops_per_second": 2 * n**3 / statistics.median(times),
    }


class NvmlSampler:
    """Samples the GPU's utilisation, power and SM clock every `interval` seconds on a thread
    while active; `summary()` is None where NVML or a GPU is absent."""

    def __init__(self, device: torch.device, interval: float = 0.1):
        self.device, self.interval = device, interval
        self.samples: list[tuple[float, float, float]] = []
        self._handle = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if device.type == "cuda":
            try:
                import pynvml

                pynvml.nvmlInit()
                # NVML numbers devices by PCI bus; torch by CUDA_VISIBLE_DEVICES order. The UUID ties them.
                uuid = "GPU-" + str(torch.cuda.get_device_properties(device).uuid)
                try:
                    self._handle = pynvml.nvmlDeviceGetHandleByUUID(uuid)
                except Exception:  # noqa: BLE001 - older bindings want bytes
                    self._handle = pynvml.nvmlDeviceGetHandleByUUID(uuid.encode())
            except Exception:  # noqa: BLE001 - no NVML (or an odd driver): report nulls, measure the rest
                self._handle = None

    def __enter__(self):
        self._energy = None
        if self._handle is not None:
            self._energy = self._read_energy()
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
        end = self._read_energy() if self._energy is not None else None
        self.energy_joules = (end - self._energy) / 1000 if end is not None else None

    def _read_energy(self) -> float | None:
        """The card's energy counter in mJ (Volta and newer), or None."""
        import pynvml

        try:
            return float(pynvml.nvmlDeviceGetTotalEnergyConsumption(self._handle))
        except Exception:  # noqa: BLE001 - older cards and drivers lack it
            return None

    def _throttle(self) -> int:
        import pynvml

        read = getattr(pynvml, "nvmlDeviceGetCurrentClocksEventReasons", None) or getattr(
            pynvml, "nvmlDeviceGetCurrentClocksThrottleReasons", None
        )
        try:
            return int(read(self._handle))
        except Exception:  # noqa: BLE001 - a missing reading must not stop the others
            return 0

    def _run(self):
        import pynvml

        while not self._stop.wait(self.interval):
            try:
                util = pynvml.nvmlDeviceGetUtilizationRates(self._handle).gpu
                power = pynvml.nvmlDeviceGetPowerUsage(self._handle) / 1000
                clock = pynvml.nvmlDeviceGetClockInfo(self._handle, pynvml.NVML_CLOCK_SM)
                reasons = self._throttle()
            except Exception:  # noqa: BLE001
                return
            self.samples.append((util, power, clock, reasons))

    def summary(self) -> dict | None:
        if self._handle is None or not self.samples:
            return None
        util, power, clock, reasons = zip(*self.samples)
        seen = 0
        for r in reasons:
            seen |= r
        return {
            "samples": len(self.samples),
            "gpu_utilization_percent_mean": round(statistics.fmean(util), 1),
            "power_watts_mean": round(statistics.fmean(power), 1),
            "power_watts_max": round(max(power), 1),
            "sm_clock_mhz_mean": round(statistics.fmean(clock)),
            "sm_clock_mhz_min": min(clock),
            # NVML's clock-event reasons seen in any sample (bit names: throttle_names)
            "clock_event_reasons": throttle_names(seen),
            "energy_joules": None if getattr(self, "energy_joules", None) is None else round(self.energy_joules, 1),
        }

    def static(self) -> dict | None:
        """The card's power limit and maximum SM clock (for reading the means above)."""
        if self._handle is None:
            return None
        import pynvml

        try:
            return {
                "power_limit_watts": pynvml.nvmlDeviceGetEnforcedPowerLimit(self._handle) / 1000,
                "sm_clock_max_mhz": pynvml.nvmlDeviceGetMaxClockInfo(self._handle, pynvml.NVML_CLOCK_SM),
                "driver": pynvml.nvmlSystemGetDriverVersion(),
            }
        except Exception:  # noqa: BLE001
            return None


THROTTLE_BITS = {  # nvml.h's nvmlClocksEventReason* bits
    0x1: "gpu_idle",
    0x2: "applications_clocks_setting",
    0x4: "sw_power_cap",
    0x8: "hw_slowdown",
    0x10: "sync_boost",
    0x20: "sw_thermal_slowdown",
    0x40: "hw_thermal_slowdown",
    0x80: "hw_power_brake_slowdown",
    0x100: "display_clock_setting",
}


def throttle_names(mask: int) -> list[str]:
    return [name for bit, name in THROTTLE_BITS.items() if mask & bit] + (
        [f"other_0x{mask:x}"] if mask & ~0x1FF else []
    )


def pixel_difference(reference: np.ndarray, images: np.ndarray) -> dict:
    """How far `images` (uint8, the same samples) are from `reference`: PSNR in dB over the whole
    batch (None when identical: no finite number), mean and max absolute difference in uint8 levels."""
    diff = reference.astype(np.float64) - images.astype(np.float64)
    mse = float(np.mean(diff**2))
    return {
        "psnr_db": round(10 * math.log10(255.0**2 / mse), 2) if mse else None,
        "mean_abs_levels": round(float(np.mean(np.abs(diff))), 4),
        "max_abs_levels": int(np.max(np.abs(diff))),
    }


# The second yardstick of MFU: a card's dense bf16 tensor-core peak as NVIDIA publishes it. The
# datasheets quote bf16 "with sparsity" (2:4 structured), twice the dense rate a diffusion model's
# matmuls can use; these are those figures halved. Matched by a part of the name torch reports,
# first match first (the PCIe and NVL boards, lower-clocked, before the SXM part of the same chip).
# A card not listed gets no published figure (None), not a guess.
PUBLISHED_BF16_PEAKS = (
    ("H100 PCIe", 756.5e12, "NVIDIA H100 datasheet, H100 PCIe: BF16 1,513 TFLOPS with sparsity"),
    ("H100 NVL", 835.5e12, "NVIDIA H100 datasheet, H100 NVL: BF16 1,671 TFLOPS with sparsity"),
    ("H200 NVL", 835.5e12, "NVIDIA H200 datasheet, H200 NVL: BF16 1,671 TFLOPS with sparsity"),
    ("GH200", 989.5e12, "NVIDIA GH200 datasheet: BF16 1,979 TFLOPS with sparsity"),
    ("H100", 989.5e12, "NVIDIA H100 datasheet, H100 SXM: BF16 1,979 TFLOPS with sparsity"),
    ("H200", 989.5e12, "NVIDIA H200 datasheet, H200 SXM: BF16 1,979 TFLOPS with sparsity"),
    ("A100", 312e12, "NVIDIA A100 datasheet: BF16 312 TFLOPS dense (624 with sparsity)"),
)


def published_peak(name: str) -> dict | None:
    """The dense bf16 peak NVIDIA publishes for the card named `name` (torch's name for it), or
    None for a card (or CPU) the table does not hold, and for a MIG slice (a part of the card's
    SMs: the whole card's figure would understate its MFU)."""
    words = name.upper().replace("-", " ").split()
    if "MIG" in words:
        return None
    for part, flops, source in PUBLISHED_BF16_PEAKS:
        wanted = part.upper().split()
        # whole words in order ("A100" is not "RTX A1000"; "H100 NVL" is not "H100 80GB HBM3")
        if any(words[i : i + len(wanted)] == wanted for i in range(len(words))):
            return {"dtype": "bfloat16", "flops_per_second": flops, "source": source}
    return None


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model()


def cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def versions() -> dict:
    """The manifest's versions (distributions) plus what a GPU figure depends on."""
    out = {**package_versions(), "cuda": torch.version.cuda}
    try:
        out["triton"] = importlib.import_module("triton").__version__
    except Exception:  # noqa: BLE001 - absent is a fact worth recording
        out["triton"] = None
    return out
