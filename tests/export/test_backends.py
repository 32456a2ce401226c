"""`generate --backend onnx|compile` on the embedded digits model: the same keys, labels, seeds
and metadata as the eager backend, byte for byte, and the same pixels within 2 uint8 levels
(fp32 throughout; the backends reorder float sums, ~1e-6 per step)."""

from __future__ import annotations

import io
import json
import tarfile

import numpy as np
import pytest
from PIL import Image

from t2i_engine.engine.recipe import build_recipe
from t2i_engine.engine.run import RunOptions, generate


def _members(folder) -> tuple[dict, dict]:
    images, rest = {}, {}
    for shard in sorted(folder.glob("*.tar")):
        with tarfile.open(shard) as tar:
            for m in tar.getmembers():
                data = tar.extractfile(m).read()
                if m.name.endswith(".png"):
                    images[m.name] = np.asarray(Image.open(io.BytesIO(data))).astype(int)
                else:
                    rest[m.name] = data
    return images, rest


def _recipe():
    return build_recipe(
        {"model": "digits", "images_per_class": 1, "steps": 3, "batch_size": 4, "images_per_shard": 5, "format": "png"}
    )


@pytest.mark.parametrize("backend", ["onnx", pytest.param("compile", marks=pytest.mark.heavy)])
def test_generate_with_a_backend_matches_eager(backend, tmp_path, monkeypatch, cli):
    from t2i_engine.engine.verify import verify_dataset
    from t2i_engine.errors import InputError

    monkeypatch.setenv("T2I_ENGINE_CACHE", str(tmp_path / "cache"))
    if (
        backend == "onnx"
    ):  # built ahead, with the faster exporter (the dynamo one: test_onnx.py); generate must find it
        code, _, err = cli(
            "build",
            "digits",
            "--backend",
            "onnx",
            "--components",
            "denoiser,vae_decoder",
            "--exporter",
            "torchscript",
            "--device",
            "cpu",
        )
        assert code == 0, err
        built = sorted((tmp_path / "cache").iterdir())
    recipe = _recipe()
    generate(recipe, tmp_path / "eager", RunOptions(device="cpu", progress=False))
    generate(recipe, tmp_path / backend, RunOptions(device="cpu", progress=False, backend=backend))
    assert verify_dataset(tmp_path / backend) == []
    assert json.loads((tmp_path / backend / "dataset.json").read_text())["backend"] == backend
    eager_images, eager_rest = _members(tmp_path / "eager")
    images, rest = _members(tmp_path / backend)
    assert rest == eager_rest and len(rest) >= 10  # keys, labels, seeds, prompts: identical
    worst = max(int(np.abs(images[k] - eager_images[k]).max()) for k in eager_images)
    print(f"{backend}: {len(images)} images, worst pixel difference {worst} levels")
    assert images.keys() == eager_images.keys() and worst <= 2
    with pytest.raises(InputError, match=f"backend '{backend}'"):  # one dataset, one backend
        generate(recipe, tmp_path / backend, RunOptions(device="cpu", progress=False))
    if backend == "onnx":  # nothing built anew: the run used the two artifacts of the build
        assert sorted((tmp_path / "cache").iterdir()) == built and [p.name.split("-onnx-")[0] for p in built] == [
            "digits-unet",
            "digits-vae",
        ]


def test_bad_backends_are_refused_before_anything_loads(cli, tmp_path):
    code, _, err = cli("generate", "--out", tmp_path / "o", "--backend", "tensorflow")
    assert code == 2 and "--backend" in err and "eager, onnx, tensorrt, compile" in err
    code, _, err = cli("generate", "--out", tmp_path / "o", "--backend", "tensorrt", "--device", "cpu")
    assert code == 2 and "tensorrt" in err.lower() and not (tmp_path / "o").exists()
    code, _, err = cli(
        "generate", "--out", tmp_path / "o", "--backend", "onnx", "--attention", "triton", "--device", "cpu"
    )
    assert code == 2 and "triton" in err and not (tmp_path / "o").exists()
    code, _, err = cli("build", "sdxl-refiner", "--backend", "eager", "--device", "cpu", "--cache-dir", tmp_path / "c")
    assert code == 2 and "eager" in err and not (tmp_path / "c").exists()  # said before anything loads


def test_bench_measures_a_backend_beside_eager_and_restores_the_pipeline(cli, tmp_path, monkeypatch):
    monkeypatch.setenv("T2I_ENGINE_CACHE", str(tmp_path / "cache"))
    code, _, err = cli(
        "build",
        "tiny-sd",
        "--backend",
        "onnx",
        "--components",
        "denoiser,vae_decoder",
        "--exporter",
        "torchscript",
        "--res",
        "32",
        "--device",
        "cpu",
    )
    assert code == 0, err
    code, _, err = cli(
        "bench",
        "tiny-sd",
        "--steps",
        "1",
        "--res",
        "32",
        "--batch",
        "2",
        "--backend",
        "eager,onnx",
        "--baseline",
        "paper",
        "--reps",
        "1",
        "--device",
        "cpu",
        "--out",
        tmp_path / "r.json",
    )
    assert code == 0, err
    runs = {r["path"]: r for r in json.loads((tmp_path / "r.json").read_text())["runs"]}
    assert set(runs) == {"engine:eager", "engine:onnx", "baseline:paper"} and all(
        r["images_per_second"] > 0 for r in runs.values()
    )
    assert sorted(runs["engine:onnx"]["artifacts"]) == ["unet", "vae"] and "artifacts" not in runs["engine:eager"]
    # the swapped UNet is still counted by bench's forward hook: the same forwards per image as eager
    assert (
        runs["engine:onnx"]["denoiser_forwards_per_image"] == runs["engine:eager"]["denoiser_forwards_per_image"] > 0
    )
    assert len(list((tmp_path / "cache").iterdir())) == 2  # the bench found the build's artifacts
