"""What a benchmark measures besides its own timings: the device's dense matmul rate (the
denominator of model-FLOP utilisation), GPU utilisation, power and clocks through NVML, peak
memory, and the versions that make a number reproducible."""

from __future__ import annotations

import importlib
import platform
import statistics
import threading
import time

import torch

from ..engine.manifest import versions as package_versions


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_rate(device: torch.device) -> dict:
    """Dense matmul FLOP/s measured here and now: bf16 8192^3 on a GPU (the rate MFU is quoted
    against), fp32 1024^3 on a CPU (bf16 matmuls are emulated and slow there)."""
    dtype, n, reps = (torch.bfloat16, 8192, 30) if device.type == "cuda" else (torch.float32, 1024, 8)
    g = torch.Generator("cpu").manual_seed(0)
    a = torch.randn(n, n, generator=g).to(device, dtype)
    b = torch.randn(n, n, generator=g).to(device, dtype)
    for _ in range(3):
        a @ b
    times = []
    for _ in range(reps):
        synchronize(device)
        start = time.perf_counter()
        a @ b
        synchronize(device)
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
        if self._handle is not None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        if self._thread is not None:
            self._stop.set()
            self._thread.join()

    def _run(self):
        import pynvml

        while not self._stop.wait(self.interval):
            try:
                util = pynvml.nvmlDeviceGetUtilizationRates(self._handle).gpu
                power = pynvml.nvmlDeviceGetPowerUsage(self._handle) / 1000
                clock = pynvml.nvmlDeviceGetClockInfo(self._handle, pynvml.NVML_CLOCK_SM)
            except Exception:  # noqa: BLE001
                return
            self.samples.append((util, power, clock))

    def summary(self) -> dict | None:
        if self._handle is None or not self.samples:
            return None
        util, power, clock = zip(*self.samples)
        return {
            "samples": len(self.samples),
            "gpu_utilization_percent_mean": round(statistics.fmean(util), 1),
            "power_watts_mean": round(statistics.fmean(power), 1),
            "power_watts_max": round(max(power), 1),
            "sm_clock_mhz_mean": round(statistics.fmean(clock)),
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
