"""ONNX export of every component kind of tiny SD1.5-, SDXL-, SD3- and FLUX-shaped models: one
dynamic-batch file per component runs in ONNX Runtime at two batch sizes and matches PyTorch
(fp32, max abs difference under 1e-4; the differences seen are ~1e-6)."""

from __future__ import annotations

import pytest
import torch

from t2i_engine.export.onnx_export import export_onnx
from t2i_engine.export.onnx_runtime import OnnxRunner
from t2i_engine.export.specs import Profile, denoiser_spec, text_encoder_specs, vae_decoder_spec
from tests.export.tiny_parts import FAMILIES

TOLERANCE = 1e-4
PROFILE = Profile((1, 2, 4), 32, 32)


def _check(spec, path, batches=(1, 3)):
    runner = OnnxRunner(path, spec, torch.device("cpu"))
    for batch in batches:
        inputs = spec.sample_inputs(batch, seed=batch)
        with torch.no_grad():
            expected = spec.module(*inputs)
        expected = expected if isinstance(expected, tuple) else (expected,)
        got = runner.outputs(*inputs)
        assert runner(*inputs).shape == expected[0].shape
        for name, e, g in zip(spec.outputs, expected, got):
            diff = (g - e).abs().max().item()
            print(f"{spec.component}.{name} batch {batch}: max |diff| {diff:.3g}")
            assert g.shape == e.shape and diff <= TOLERANCE, name


# The dynamo exporter (the default) takes 5-16 s per component here, the TorchScript exporter
# under two, so TorchScript is asked for everywhere (the suite's time); the FLUX transformer's spec
# overrides it (TorchScript cannot take its RMSNorm: specs.NEEDS_DYNAMO). The dynamo path of the
# SD1.5- and SD3-shaped denoisers passed by hand and in earlier runs (16 and 6 s here), not in the suite.
@pytest.mark.parametrize("family", list(FAMILIES))
def test_each_component_exports_and_matches_pytorch_at_two_batch_sizes(family, tmp_path):
    pipe = FAMILIES[family]()
    denoiser = denoiser_spec(pipe, PROFILE, getattr(pipe, "text_len", None))
    used = export_onnx(denoiser, tmp_path / "denoiser.onnx", exporter="torchscript")
    assert used == ("dynamo" if family == "flux" else "torchscript")  # specs.NEEDS_DYNAMO
    _check(denoiser, tmp_path / "denoiser.onnx")
    for spec in [*text_encoder_specs(pipe), vae_decoder_spec(pipe, PROFILE)]:
        path = tmp_path / f"{spec.component}.onnx"
        export_onnx(spec, path, exporter="torchscript")
        _check(spec, path)


def test_large_weights_go_to_one_external_data_file(tmp_path):
    spec = vae_decoder_spec(FAMILIES["sd15"](), PROFILE)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    export_onnx(
        spec, tmp_path / "a" / "model.onnx", exporter="torchscript", external_data_bytes=0
    )  # as if over the limit
    export_onnx(spec, tmp_path / "b" / "model.onnx", exporter="torchscript")
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["model.onnx", "model.onnx.data"]
    assert [p.name for p in (tmp_path / "b").iterdir()] == ["model.onnx"]
    graph_only, inline = (tmp_path / "a" / "model.onnx").stat().st_size, (tmp_path / "b" / "model.onnx").stat().st_size
    data = (tmp_path / "a" / "model.onnx.data").stat().st_size
    assert data > inline / 4 and abs(graph_only + data - inline) < inline / 10  # the weights moved out, not copied
    _check(spec, tmp_path / "a" / "model.onnx", batches=(2,))


def test_a_failed_dynamo_export_falls_back_to_torchscript(tmp_path, monkeypatch, caplog):
    from t2i_engine.export import onnx_export

    def fail(*args, **kwargs):
        raise RuntimeError("an op the dynamo exporter cannot take")

    monkeypatch.setattr(onnx_export, "_dynamo", fail)  # the fallback is what is under test, not torch's exporter
    spec = vae_decoder_spec(FAMILIES["sd15"](), PROFILE)
    assert export_onnx(spec, tmp_path / "model.onnx", exporter="dynamo") == "torchscript"
    assert "cannot take" in caplog.text
    _check(spec, tmp_path / "model.onnx", batches=(2,))
