"""The speed switches (export.tuning, kernels.sdpa): each agrees with the plain PyTorch path
within a stated tolerance, is recorded in the manifest, keeps a dataset from being resumed with
another setting, and is refused with one line where it cannot run. fp32 on the CPU: a switch
only reorders float sums there, so pixels stay within 2 uint8 levels; the GPU tests state their
own bounds for bf16 and FP8."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from t2i_engine.benchmark.paths import count_denoiser_images
from t2i_engine.engine.recipe import build_recipe
from t2i_engine.engine.run import RunOptions, generate
from t2i_engine.engine.verify import verify_dataset
from t2i_engine.errors import InputError
from t2i_engine.export import tuning
from t2i_engine.export.tuning import Tuning
from t2i_engine.kernels import sdpa
from t2i_engine.models.pipelines import load_pipeline
from t2i_engine.models.registry import get_model
from t2i_engine.training.sources import open_set

CUDA = torch.cuda.is_available()


def _recipe():
    return build_recipe(
        {"model": "digits", "images_per_class": 1, "steps": 3, "batch_size": 4, "images_per_shard": 5, "format": "png"}
    )


def _pixels(folder) -> dict[str, np.ndarray]:
    return {item.key: np.asarray(item.image).astype(int) for item in open_set(folder).read()}


def _worst(a: dict, b: dict) -> int:
    assert a.keys() == b.keys()
    return max(int(np.abs(a[k] - b[k]).max()) for k in a)


def test_switches_match_the_plain_path_and_stay_with_their_dataset(tmp_path):
    recipe = _recipe()
    generate(recipe, tmp_path / "plain", RunOptions(device="cpu", progress=False))
    tuned = Tuning(fuse_qkv=True, channels_last=True)
    generate(recipe, tmp_path / "tuned", RunOptions(device="cpu", progress=False, tuning=tuned))
    assert verify_dataset(tmp_path / "tuned") == []
    manifest = json.loads((tmp_path / "tuned" / "dataset.json").read_text())
    assert manifest["tuning"] == {
        "precision": "fp32",
        "compile": "none",
        "fuse_qkv": True,
        "channels_last": True,
        "regional_compile": False,
    }
    assert _worst(_pixels(tmp_path / "plain"), _pixels(tmp_path / "tuned")) <= 2
    with pytest.raises(InputError, match="fuse_qkv True"):  # each switch moves pixels: one dataset, one setting
        generate(recipe, tmp_path / "tuned", RunOptions(device="cpu", progress=False))
    with pytest.raises(InputError, match="compile 'none'"):
        generate(
            recipe, tmp_path / "plain", RunOptions(device="cpu", progress=False, tuning=Tuning(compile="default"))
        )


def test_a_dataset_from_before_the_switches_resumes_as_the_plain_path(tmp_path):
    from t2i_engine.dataset.manifest import stored_tuning

    assert stored_tuning({"dtype": "float16"}) == {
        "precision": "fp16",
        "compile": "none",
        "fuse_qkv": False,
        "channels_last": False,
        "regional_compile": False,
    }


def test_the_compiled_graphs_are_whole_with_every_switch(monkeypatch):
    """What --compile compiles (the denoiser, the VAE decode) traces as one graph each with fused
    projections, NHWC and an SDPA backend put first: fullgraph raises on a break. Traced with
    torch.compile's eager backend (inductor's code generation is the heavy test below)."""
    pipe = load_pipeline(get_model("tiny-sd"), None, torch.device("cpu"), torch.float32)
    x = torch.randn(2, 4, 8, 8)
    text = torch.randn(2, 77, pipe.unet.config.cross_attention_dim)
    with torch.no_grad():
        reference = pipe.unet(x, torch.tensor(10), encoder_hidden_states=text).sample
        sdpa.pin(pipe, "efficient")  # not on a CPU: its priority list falls back to the CPU's flash
        tuning.fuse_qkv(pipe)
        tuning.set_layout(pipe, True)
        before = tuning.compiled_graphs()
        tuning.compile_pipeline(pipe, "default", backend="eager")
        # the benchmark counts forwards with a hook: it stays outside the graph (traced, its
        # counter's value would be guarded and every call would recompile, as on the H200 once)
        with count_denoiser_images(pipe) as seen:
            out = pipe.unet(x, torch.tensor(10), encoder_hidden_states=text).sample
            pipe.vae.decode(x)
            assert tuning.compiled_graphs() - before == 2  # one graph each
            for _ in range(9):  # past dynamo's recompile limit (8)
                pipe.unet(x, torch.tensor(10), encoder_hidden_states=text)
        assert tuning.compiled_graphs() - before == 2 and seen[0] == 20  # no recompile; every call counted
    torch.testing.assert_close(out, reference, rtol=1e-4, atol=1e-4)
    tuning.remove_tuning(pipe)
    sdpa.unpin(pipe)
    assert not tuning.compiled(pipe) and sdpa.pinned(pipe) is None
    assert not any(getattr(m, "fused_projections", False) for m in pipe.unet.modules())
    assert "forward" not in pipe.unet.__dict__ and "decode" not in pipe.vae.__dict__  # the class's own again


@pytest.mark.skipif(CUDA, reason="the refusals of a machine without CUDA")
def test_switches_that_cannot_run_here_are_refused_in_one_line(cli, tmp_path, monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")  # a plain CPU: no Triton interpreter to run kernels on
    for flags, words in (
        (["--precision", "fp8", "--compile", "default"], ["precision", "fp8", "compute capability"]),
        (["--attention", "cudnn"], ["attention", "cudnn", "CUDA"]),
        (["--attention", "triton", "--compile", "default"], ["attention", "triton"]),
        (["--backend", "onnx", "--fuse-qkv"], ["backend", "onnx", "--backend eager"]),
        (["--precision", "fp9"], ["--precision", "fp9", "fp8"]),
        (["--compile", "fast"], ["--compile", "max-autotune"]),
        (["--conv", "fp8"], ["conv", "fp8", "CUDA"]),
    ):
        code, out, err = cli("generate", "--out", tmp_path / "o", "--model", "digits", "--device", "cpu", *flags)
        assert code == 2 and err.count("\n") == 1, (flags, err)
        assert all(w in err for w in words), (flags, err)
    assert not (tmp_path / "o").exists()


@pytest.mark.heavy
def test_compiled_generation_matches_eager(tmp_path):
    """Inductor's code on the CPU: the same dataset as eager within 2 levels (fp32)."""
    recipe = _recipe()
    generate(recipe, tmp_path / "plain", RunOptions(device="cpu", progress=False))
    generate(recipe, tmp_path / "compiled", RunOptions(device="cpu", progress=False, tuning=Tuning(compile="default")))
    assert verify_dataset(tmp_path / "compiled") == []
    assert _worst(_pixels(tmp_path / "plain"), _pixels(tmp_path / "compiled")) <= 2


# On a GPU: the bounds below are for digits at 32 px, 3 steps; bf16 rounding differs between
# kernels (cuDNN's attention, inductor's fusions), FP8 quantises every Linear's inputs.
GPU_BOUNDS = {  # name: (tuning, attention, mean |difference| in uint8 levels at most)
    "cudnn": (Tuning(), "cudnn", 2.0),
    "compile": (Tuning(compile="default", fuse_qkv=True, channels_last=True), "sdpa", 2.0),
    "fp8": (Tuning(precision="fp8", compile="default"), "sdpa", 6.0),
}


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs CUDA")
@pytest.mark.parametrize("name", list(GPU_BOUNDS))
def test_gpu_switches_stay_near_eager_bf16(name, tmp_path):
    if name == "fp8" and torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("FP8 needs compute capability 8.9+")
    recipe = _recipe()
    generate(recipe, tmp_path / "plain", RunOptions(device="cuda", progress=False))
    t, attention, bound = GPU_BOUNDS[name]
    generate(recipe, tmp_path / name, RunOptions(device="cuda", progress=False, tuning=t, attention=attention))
    assert verify_dataset(tmp_path / name) == []
    a, b = _pixels(tmp_path / "plain"), _pixels(tmp_path / name)
    mean = float(np.mean([np.abs(a[k] - b[k]).mean() for k in a]))
    print(f"{name}: mean |difference| {mean:.3f} levels, worst {_worst(a, b)}")
    assert mean <= bound


@pytest.mark.parametrize("model", ["tiny-sd3", "tiny-flux", "tiny-pixart"])
def test_fused_qkv_computes_what_separate_projections_compute(model):
    """diffusers' SD3 fusion drops SD3.5's q/k norms and breaks its image-only second attention
    (tuning._plain_fused_self_attention mends both; tiny-sd3 has both)."""
    from t2i_engine.export.specs import Profile, denoiser_spec

    pipe = load_pipeline(get_model(model), None, torch.device("cpu"), torch.float32)
    spec = denoiser_spec(pipe, Profile((1, 2, 2), 32, 32), 8)
    inputs = spec.sample_inputs(2)
    with torch.no_grad():
        plain = spec.module(*inputs)
        tuning.fuse_qkv(pipe)
        assert any(getattr(m, "fused_projections", False) for m in spec.source.modules())
        fused = spec.module(*inputs)
        tuning.unfuse_qkv(pipe)
        again = spec.module(*inputs)
    assert (fused - plain).abs().max().item() <= 1e-5 and torch.equal(again, plain)


@pytest.mark.heavy
def test_flux_gpu_defaults_write_what_eager_writes(tmp_path):
    """FLUX's defaults on a GPU (export.speed: fused QKV, its repeated blocks compiled one by one)
    through generate, with inductor's code on the CPU: a valid dataset, the same pixels as eager
    within 2 levels (fp32), and the same calls in a second run compile nothing more."""
    from t2i_engine.export.speed import CUDA_DEFAULTS
    from tests.engine.test_generate import shard_pixels

    fast = Tuning(**CUDA_DEFAULTS["flux"].switches)
    assert fast.regional_compile and fast.fuse_qkv and fast.compile == "default"
    settings = {"classes": ["cat", "dog"], "images_per_class": 2, "steps": 2, "resolution": 32, "batch_size": 2}
    recipe = build_recipe({"model": "tiny-flux-schnell", **settings, "format": "png"})
    generate(recipe, tmp_path / "eager", RunOptions(device="cpu", progress=False))
    torch._dynamo.reset()
    generate(recipe, tmp_path / "fast", RunOptions(device="cpu", progress=False, tuning=fast))
    after_first = tuning.compiled_graphs()
    generate(recipe, tmp_path / "again", RunOptions(device="cpu", progress=False, tuning=fast))
    assert tuning.compiled_graphs() == after_first > 0
    assert verify_dataset(tmp_path / "fast") == []
    eager, fast_pixels = shard_pixels(tmp_path / "eager"), shard_pixels(tmp_path / "fast")
    assert eager.keys() == fast_pixels.keys() and len(eager) == 4
    assert max(int(np.abs(eager[k] - fast_pixels[k]).max()) for k in eager) <= 2
