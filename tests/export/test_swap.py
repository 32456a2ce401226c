"""What surrounds the runtimes: the pipeline gets its own forwards back (the kernels' routing
included), compile's preparation leaves the weights as loaded, and the prompt lengths the
denoiser specs use come from the shipped text configs."""

from __future__ import annotations

import torch

from t2i_engine.export.cache import weights_hash
from t2i_engine.export.specs import Profile, denoiser_spec
from t2i_engine.models.architectures import text_length


def test_restore_gives_back_what_was_there_before_the_swap():
    from t2i_engine.export.swap import restore, swap
    from t2i_engine.kernels import install
    from t2i_engine.kernels.routing import _Routed
    from t2i_engine.models.tiny import build_tiny_sd

    pipe = build_tiny_sd()
    install(pipe, attention="sdpa", norm="triton")  # the routing wraps the UNet's forward
    routed = pipe.unet.__dict__["forward"]
    spec = denoiser_spec(pipe, Profile((1, 2, 4), 32, 32))
    calls = []

    def runner(*inputs):  # any callable taking the spec's inputs is a runtime; this one records them
        calls.append([tuple(t.shape) for t in inputs])
        return torch.zeros_like(inputs[0])

    swap(pipe, spec, runner)
    sample = torch.randn(2, 4, 4, 4)
    out = pipe.unet(sample, torch.tensor(10), encoder_hidden_states=torch.randn(2, 77, 32), return_dict=False)[0]
    assert (
        calls == [[(2, 4, 4, 4), (2,), (2, 77, 32)]] and out.shape == sample.shape
    )  # the 0-d timestep broadcast to the batch
    restore(pipe)
    assert pipe.unet.__dict__["forward"] is routed and isinstance(routed, _Routed)
    install(pipe, attention="sdpa")


def test_compile_preparation_is_undone_to_the_loaded_weights():
    from t2i_engine.export.compiled import prepare, unprepare
    from t2i_engine.models.tiny import build_tiny_sd

    pipe = build_tiny_sd()
    before = (weights_hash(pipe.unet), weights_hash(pipe.vae))
    prepare(pipe, torch.device("cpu"))  # fuses QKV and wraps with torch.compile (which compiles lazily, on a call)
    assert any(getattr(m, "fused_projections", False) for m in pipe.unet.modules())
    assert weights_hash(pipe.unet) != before[0]  # the fused projections are new tensors
    unprepare(pipe)
    assert (weights_hash(pipe.unet), weights_hash(pipe.vae)) == before
    assert "decode" not in vars(pipe.vae) and pipe.unet._compiled_call_impl is None


def test_prompt_lengths_follow_the_shipped_text_configs():
    assert {m: text_length(m) for m in ("sdxl", "sd3-medium", "flux-dev", "flux-schnell", "digits")} == {
        "sdxl": 77,
        "sd3-medium": 333,
        "flux-dev": 512,
        "flux-schnell": 256,
        "digits": None,
    }
