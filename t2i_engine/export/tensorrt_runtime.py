"""TensorRT: an engine built from a component's ONNX file, run on torch tensors by pointer.

TensorRT cannot be installed where CI runs (its libraries live off PyPI), so this file is kept
small enough to check by reading, and its tests run only where TensorRT and a GPU exist. The
engine is built for the profile's min/opt/max shapes, in fp16 or bf16 (strongly typed from
the ONNX file's own types), with a timing cache shared by every build on the same GPU
architecture and TensorRT version (it makes rebuilds much faster). It runs on the current torch
stream: inputs and outputs are torch tensors whose addresses TensorRT reads and writes.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ..errors import InputError
from .specs import BATCH, ComponentSpec, Profile

INSTALL = "pip install 't2i-engine[trt]' (tensorrt>=10, from NVIDIA's index: pip install tensorrt)"


def _trt():
    try:
        import tensorrt
    except ImportError:
        return None
    return tensorrt


def check_tensorrt(device: torch.device, precision: str) -> None:
    if _trt() is None:
        raise InputError("--backend", "tensorrt", f"TensorRT is not installed here; {INSTALL}")
    if device.type != "cuda":
        raise InputError("--backend", "tensorrt", f"TensorRT runs on CUDA devices; this run is on {device.type}")
    if precision == "fp8":
        raise InputError(
            "--precision",
            "fp8",
            "fp8 engines need an fp8-quantised ONNX file (NVIDIA ModelOpt), which this build does not make yet",
        )


def build_engine(
    onnx_path: Path, plan_path: Path, spec: ComponentSpec, profile: Profile, precision: str, cache_root: Path
) -> None:
    trt = _trt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(
        1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    )  # types come from the ONNX file
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    opt = builder.create_optimization_profile()
    names = {network.get_input(i).name for i in range(network.num_inputs)}
    for name, (lo, mid, hi) in spec.profile_shapes(profile).items():
        if name in names:
            opt.set_shape(name, lo, mid, hi)
    config.add_optimization_profile(opt)
    major, minor = torch.cuda.get_device_capability()
    timing_path = cache_root / f"tensorrt-timing-sm_{major}{minor}-{trt.__version__}.cache"
    timing = config.create_timing_cache(timing_path.read_bytes() if timing_path.is_file() else b"")
    config.set_timing_cache(timing, ignore_mismatch=False)
    engine = builder.build_serialized_network(network, config)
    if engine is None:
        raise RuntimeError(f"TensorRT could not build an engine for {spec.component}")
    plan_path.write_bytes(bytes(engine))
    tmp = timing_path.with_name(f"{timing_path.name}.{os.getpid()}.tmp")  # builds in parallel each write their own
    tmp.write_bytes(bytes(config.get_timing_cache().serialize()))
    tmp.replace(timing_path)


class TensorRTRunner:
    def __init__(self, plan_path: Path, spec: ComponentSpec, device: torch.device):
        trt = _trt()
        self.runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        with torch.cuda.device(device):  # TensorRT puts an engine on the current device
            self.engine = self.runtime.deserialize_cuda_engine(plan_path.read_bytes())
            if self.engine is None:
                raise RuntimeError(
                    f"TensorRT could not load {plan_path} (built by another TensorRT version or GPU?); rebuild it"
                )
            self.context = self.engine.create_execution_context()
        self.spec, self.device = spec, device
        self.names = {self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)}
        types = {
            trt.float32: torch.float32,
            trt.float16: torch.float16,
            trt.bfloat16: torch.bfloat16,
            trt.int64: torch.int64,
        }
        self.dtypes = {
            name: types[self.engine.get_tensor_dtype(name)] for name in self.names
        }  # the engine's own types
        self.out_dtype = self.dtypes[spec.outputs[0]]

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        keep = []  # the cast inputs must outlive the launch
        for inp, t in zip(self.spec.inputs, inputs):
            if inp.name not in self.names:
                continue
            t = t.to(self.device, self.dtypes[inp.name]).contiguous()
            keep.append(t)
            if not self.context.set_input_shape(inp.name, tuple(t.shape)):
                raise ValueError(
                    f"{self.spec.component}: input {inp.name} of shape {tuple(t.shape)} is outside the engine's "
                    "profile; build it for this batch range (t2i-engine build --backend tensorrt --batch MIN:OPT:MAX)"
                )
            self.context.set_tensor_address(inp.name, t.data_ptr())
        batch = inputs[0].shape[0]
        out = torch.empty(
            tuple(batch if d == BATCH else d for d in self.spec.output_shape), dtype=self.out_dtype, device=self.device
        )
        self.context.set_tensor_address(self.spec.outputs[0], out.data_ptr())
        with torch.cuda.device(self.device):
            ok = self.context.execute_async_v3(torch.cuda.current_stream(self.device).cuda_stream)
        if not ok:
            raise RuntimeError(f"TensorRT failed to run {self.spec.component}")
        return out
