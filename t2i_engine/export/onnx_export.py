"""Export a component to ONNX: torch's dynamo exporter, the TorchScript exporter as fallback.

The batch axis is dynamic (one file serves every batch size of a profile). Every file is
checked with `onnx.checker` by path, which also covers weights kept outside the protobuf.
Protobuf files cannot exceed 2 GB, so a model whose weights pass `EXTERNAL_DATA_BYTES` keeps
them in one `model.onnx.data` file beside the graph (SDXL's UNet, SD3, FLUX).
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import torch

from .specs import BATCH, ComponentSpec

log = logging.getLogger(__name__)
EXPORTERS = ("dynamo", "torchscript")
EXTERNAL_DATA_BYTES = 1 << 30  # well under protobuf's 2 GB: the graph itself needs room too
OPSET = 18


def export_onnx(
    spec: ComponentSpec,
    path: Path,
    *,
    dtype: torch.dtype = torch.float32,
    exporter: str = "dynamo",
    example_batch: int = 2,
    external_data_bytes: int = EXTERNAL_DATA_BYTES,
) -> str:
    """Write `spec`'s module to `path` (a .onnx file; weights may go to a .data file beside it).
    Returns the exporter that succeeded ("dynamo", or "torchscript" after the dynamo exporter failed;
    "dynamo" for a component whose spec says TorchScript cannot export it, whatever was asked)."""
    import onnx

    if exporter not in EXPORTERS:
        raise ValueError(f"exporter={exporter!r}: expected one of {', '.join(EXPORTERS)}")
    module = spec.module.eval()
    device = next(module.parameters()).device
    args = spec.sample_inputs(example_batch, dtype, device)
    used = exporter
    if exporter == "torchscript" and spec.notes.get("needs_dynamo"):
        log.info("%s: the dynamo exporter, not TorchScript (%s)", spec.component, spec.notes["needs_dynamo"])
        exporter = used = "dynamo"
    before = set(path.parent.iterdir())
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about Python branches on shapes: the specs fix those shapes
        if exporter == "dynamo":
            try:
                _dynamo(spec, module, args, path)
            except Exception as e:  # noqa: BLE001 - any exporter failure falls back, and says why
                log.warning(
                    "dynamo ONNX export of %s failed (%s: %s); using the TorchScript exporter",
                    spec.component,
                    type(e).__name__,
                    str(e).splitlines()[0][:200] if str(e) else "",
                )
                used = "torchscript"
                for leftover in set(path.parent.iterdir()) - before:  # a half-written graph or weights file
                    leftover.unlink()
        if used == "torchscript":
            _torchscript(spec, module, args, path)
    size = sum(p.numel() * p.element_size() for p in module.parameters())
    _settle_weights(path, external=size > external_data_bytes)
    onnx.checker.check_model(str(path), full_check=False)
    return used


def _dynamo(spec: ComponentSpec, module, args, path: Path) -> None:
    """torch.export (non-strict: Python runs as Python, tensors are traced), then ONNX.

    The program is exported here rather than inside torch.onnx.export so that it can be mended
    first (`_drop_noop_squeezes`). onnxscript's optimiser stays off: it turned Sana's linear
    attention into NaNs in ONNX Runtime (onnxscript 0.7.2, found 2026-12-05); ONNX Runtime and
    TensorRT optimise the graph themselves when they load it."""
    # DYNAMIC, not a named Dim with a range: torch records a model's own limits on the batch as
    # guards (AutoencoderKL's nearest upsampling: batch <= 63) where a range would be refused;
    # the ONNX graph's batch axis is symbolic either way
    batch = torch.export.Dim.DYNAMIC
    dynamic = tuple({0: batch} if i.shape and i.shape[0] == BATCH else None for i in spec.inputs)
    program = torch.export.export(module, tuple(args), dynamic_shapes=dynamic, strict=False)
    _drop_noop_squeezes(program)
    torch.onnx.export(
        program,
        tuple(args),
        str(path),
        dynamo=True,
        opset_version=OPSET,
        input_names=[i.name for i in spec.inputs],
        output_names=spec.outputs,
        external_data=True,
        optimize=False,
        verbose=False,
    )


def _drop_noop_squeezes(program) -> None:
    """torch's squeeze(dim) leaves a dimension that is not 1 alone; ONNX's Squeeze rejects it, and
    the exporter writes one anyway (PixArt's `squeeze(1)` of its [batch, tokens, channels]
    output). Such squeezes change nothing, so they go before translation."""
    graph = program.graph_module.graph
    squeezes = (torch.ops.aten.squeeze.dim, torch.ops.aten.squeeze.dims)
    changed = False
    for node in list(graph.nodes):
        if node.target not in squeezes or any(user.op == "output" for user in node.users):
            continue
        shape = node.args[0].meta["val"].shape
        dims = node.args[1] if isinstance(node.args[1], (list, tuple)) else [node.args[1]]
        if all(isinstance(shape[d], int) and shape[d] != 1 for d in dims):
            node.replace_all_uses_with(node.args[0])
            graph.erase_node(node)
            changed = True
    if changed:
        program.graph_module.recompile()


def _torchscript(spec: ComponentSpec, module, args, path: Path) -> None:
    torch.onnx.export(
        module,
        args,
        str(path),
        dynamo=False,
        opset_version=OPSET,
        input_names=[i.name for i in spec.inputs],
        output_names=spec.outputs,
        dynamic_axes=spec.dynamic_axes(),
        do_constant_folding=True,
    )


def _settle_weights(path: Path, external: bool) -> None:
    """One layout whatever the exporter wrote: all weights inside the file, or (external) all
    in `<name>.data` beside it. Exporters differ (one file per tensor, one file, or none)."""
    import onnx

    written = {
        e.value
        for t in onnx.load(str(path), load_external_data=False).graph.initializer
        for e in t.external_data
        if e.key == "location"
    }
    model = onnx.load(str(path), load_external_data=True)
    for name in written:  # the exporter's tensor files; the weights are in memory now
        (path.parent / name).unlink(missing_ok=True)
    if external:
        onnx.save_model(
            model,
            str(path),
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location=path.name + ".data",
            size_threshold=1024,
        )
    else:
        onnx.save_model(model, str(path))
