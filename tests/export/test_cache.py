"""The artifact cache: a second build with the same key does nothing, a changed weight or
precision builds anew, and an interrupted build leaves nothing under an artifact's name."""

from __future__ import annotations

import os

import pytest
import torch

from t2i_engine.export.build import BuildOptions, ensure_component
from t2i_engine.export.cache import ArtifactCache
from t2i_engine.export.specs import Profile, vae_decoder_spec

CPU = torch.device("cpu")


def _vae_spec():
    from t2i_engine.models.tiny import build_tiny_sd

    return vae_decoder_spec(build_tiny_sd(), Profile((1, 2, 4), 64, 64))


def _ensure(spec, cache, precision="fp32"):
    opts = BuildOptions(
        model="tiny-sd",
        backend="onnx",
        profile=Profile((1, 2, 4), 64, 64),
        precision=precision,
        exporter="torchscript",
        components=("vae_decoder",),
    )
    folder, built, meta = ensure_component(spec, "tiny-sd", opts, CPU, cache, log_line=lambda line: None)
    return folder, built, meta


def test_a_second_build_is_a_no_op_and_changes_rebuild(tmp_path):
    cache = ArtifactCache(tmp_path)
    spec = _vae_spec()
    first, built, meta = _ensure(spec, cache)
    assert built and (first / "model.onnx").is_file() and meta["weights_sha256"] and meta["arch"] == "cpu"
    stamp = (first / "model.onnx").stat().st_mtime_ns
    again, built_again, _ = _ensure(spec, cache)
    assert again == first and not built_again and (first / "model.onnx").stat().st_mtime_ns == stamp

    half, built_half, meta_half = _ensure(spec, cache, precision="fp16")  # another precision: another artifact
    assert built_half and half != first and meta_half["precision"] == "fp16"

    with torch.no_grad():
        spec.source.decoder.conv_out.bias.add_(0.01)  # one changed weight
    changed, built_changed, meta_changed = _ensure(spec, cache)
    assert built_changed and changed not in (first, half) and meta_changed["weights_sha256"] != meta["weights_sha256"]
    assert len(cache.entries()) == 3


def test_an_interrupted_build_leaves_no_artifact_and_a_killed_one_is_swept(tmp_path, monkeypatch):
    from t2i_engine.export import build

    cache = ArtifactCache(tmp_path)
    spec = _vae_spec()

    def interrupted(spec, path, **kwargs):  # what is under test is the cache's atomicity, not the exporter
        path.write_bytes(b"half an onnx file")
        raise KeyboardInterrupt

    real = build.export_onnx
    monkeypatch.setattr(build, "export_onnx", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _ensure(spec, cache)
    assert list(tmp_path.iterdir()) == [] and cache.entries() == []

    # a build killed with -9 leaves its hidden folder; the next build of that artifact removes it
    monkeypatch.setattr(build, "export_onnx", real)
    folder, built, meta = _ensure(spec, cache)
    dead = tmp_path / f".tmp-{folder.name.rsplit('-', 1)[0]}-{meta['key']}-{2**22 + 12345}-deadbeef"
    dead.mkdir()
    (dead / "model.onnx").write_bytes(b"partial")
    import shutil

    shutil.rmtree(folder)
    assert not os.path.exists(folder)
    _, built, _ = _ensure(spec, cache)
    assert built and not dead.exists() and [e["key"] for e in cache.entries()] == [meta["key"]]


def test_build_cli_lists_the_cache_and_refuses_bad_input(cli, tmp_path):
    code, out, err = cli(
        "build",
        "tiny-sd",
        "--components",
        "vae_decoder",
        "--exporter",
        "torchscript",
        "--res",
        "64",
        "--cache-dir",
        tmp_path,
        "--device",
        "cpu",
    )
    assert code == 0 and "vae: built" in out, err
    code, out, _ = cli(
        "build",
        "tiny-sd",
        "--components",
        "vae_decoder",
        "--exporter",
        "torchscript",
        "--res",
        "64",
        "--cache-dir",
        tmp_path,
        "--device",
        "cpu",
    )
    assert code == 0 and "vae: already built" in out
    code, out, _ = cli("build", "--list", "--cache-dir", tmp_path)
    assert code == 0 and "tiny-sd-vae-onnx-fp32" in out and "64x64" in out
    for args, field in [
        (("--backend", "trt"), "--backend"),
        (("--batch", "4:2:8"), "--batch"),
        (("--res", "100"), "--res"),
        (("--res", "64x"), "--res"),
        (("--precision", "int4"), "--precision"),
        (("--precision", "bf16"), "--precision"),
        (("--components", "unet"), "--components"),
        (("--exporter", "fx"), "--exporter"),
    ]:
        code, _, err = cli("build", "tiny-sd", "--cache-dir", tmp_path, "--device", "cpu", *args)
        assert code == 2 and field in err, (args, err)
    code, _, err = cli("build", "tiny-sd", "--backend", "tensorrt", "--cache-dir", tmp_path, "--device", "cpu")
    assert code == 2 and "tensorrt" in err.lower()
