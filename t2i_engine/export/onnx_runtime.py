"""Run an exported component in ONNX Runtime on torch tensors.

On a GPU (onnxruntime-gpu's CUDA provider) inputs and the output stay on the device: they are
bound by pointer (IO binding) and the output is a torch tensor allocated here, so nothing
crosses to the host. On the CPU, tensors pass as numpy views. ONNX Runtime takes fp32 and fp16;
bf16 and fp8 are for the TensorRT and compile backends.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..errors import InputError
from .specs import BATCH, ComponentSpec

NUMPY = {torch.float32: np.float32, torch.float16: np.float16, torch.int64: np.int64}


def providers_for(device: torch.device) -> list[str]:
    import onnxruntime as ort

    if device.type != "cuda":
        return ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        raise InputError(
            "--backend",
            "onnx",
            f"onnxruntime {ort.__version__} here has no CUDA provider; "
            "install onnxruntime-gpu (pip install 'onnxruntime-gpu') or run on the CPU",
        )
    return [("CUDAExecutionProvider", {"device_id": _index(device)}), "CPUExecutionProvider"]


def _index(device: torch.device) -> int:
    return device.index if device.index is not None else torch.cuda.current_device()


class OnnxRunner:
    """One ONNX Runtime session for one component file."""

    def __init__(self, path: Path, spec: ComponentSpec, device: torch.device, dtype: torch.dtype = torch.float32):
        import onnxruntime as ort

        if dtype not in NUMPY:
            raise InputError(
                "--precision",
                str(dtype).removeprefix("torch."),
                "ONNX Runtime runs fp32 or fp16 (bf16 and fp8: tensorrt or compile)",
            )
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(path), options, providers=providers_for(device))
        self.spec, self.device, self.dtype = spec, device, dtype
        self.names = {i.name for i in self.session.get_inputs()}  # an exporter may drop an unused input

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        """The spec's inputs in order -> its first output, a tensor on the runner's device."""
        feeds = {i.name: self._cast(i, t) for i, t in zip(self.spec.inputs, inputs) if i.name in self.names}
        if self.device.type != "cuda":
            out = self.session.run([self.spec.outputs[0]], {k: v.numpy() for k, v in feeds.items()})[0]
            return torch.from_numpy(out)
        batch = inputs[0].shape[0]
        out = torch.empty(
            tuple(batch if d == BATCH else d for d in self.spec.output_shape), dtype=self.dtype, device=self.device
        )
        binding = self.session.io_binding()
        for name, t in feeds.items():
            binding.bind_input(name, "cuda", _index(self.device), NUMPY[t.dtype], tuple(t.shape), t.data_ptr())
        binding.bind_output(
            self.spec.outputs[0], "cuda", _index(self.device), NUMPY[self.dtype], tuple(out.shape), out.data_ptr()
        )
        torch.cuda.current_stream(
            self.device
        ).synchronize()  # ONNX Runtime runs on its own stream: inputs must be ready
        self.session.run_with_iobinding(binding)  # returns when its stream is done
        return out

    def outputs(self, *inputs: torch.Tensor) -> list[torch.Tensor]:
        """Every output (a text encoder's hidden states and pooled embedding), on the CPU."""
        feeds = {
            i.name: self._cast(i, t).cpu().numpy() for i, t in zip(self.spec.inputs, inputs) if i.name in self.names
        }
        return [torch.from_numpy(o) for o in self.session.run(self.spec.outputs, feeds)]

    def _cast(self, inp, t: torch.Tensor) -> torch.Tensor:
        t = t.to(
            self.device, inp.dtype or self.dtype
        )  # the spec's type: a scheduler's int64 timesteps go in as floats
        return t.contiguous() if self.device.type == "cuda" else t.detach().cpu().contiguous()
