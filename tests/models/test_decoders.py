"""`decoder: tiny`: the registry's tiny decoders match their models' latents; a run decodes with
the AutoencoderTiny in the VAE's place in every family that has one, counts the FLOPs of the
decoder that ran, exports it to ONNX; bad decoders are refused before anything loads."""

from __future__ import annotations

import json

import pytest
import torch

from t2i_engine.engine.generator import Generator
from t2i_engine.engine.plan import plan_units
from t2i_engine.engine.recipe import build_recipe
from t2i_engine.engine.runtime import load_run_pipeline
from t2i_engine.errors import InputError
from t2i_engine.models.decoders import architecture_config, decode_modules, random_tiny_decoder
from t2i_engine.models.flops import CallFlops, decode_flops
from t2i_engine.models.registry import MODELS, TINY_DECODERS, get_model, tiny_decoder, vae_latent_channels

CPU = torch.device("cpu")


def test_each_tiny_decoder_decodes_its_models_latents():
    """Its latent channels are those of every registry model of its latent space, and its
    published architecture (assets/decoder-configs) upsamples by the VAE's factor."""
    from t2i_engine.models.architectures import architecture

    checked = 0
    for spec in MODELS.values():
        decoder = TINY_DECODERS.get(spec.latent_space)
        channels = vae_latent_channels(spec)
        if decoder is None or channels is None:
            continue
        assert decoder.latent_channels == channels, spec.name
        if decoder.hub_id:
            config = architecture_config(decoder.name)
            vae = architecture(spec.name)["vae"]
            assert config["latent_channels"] == channels
            factor = config["upsampling_scaling_factor"] ** (len(config["decoder_block_out_channels"]) - 1)
            assert factor == 2 ** (len(vae["block_out_channels"]) - 1), spec.name
        checked += 1
    assert checked >= 12


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        ({"model": "tiny-pixart", "decoder": "tiny"}, "has no tiny decoder"),
        ({"model": "digits", "decoder": "tinyy"}, "expected vae, tiny, or the path"),
        ({"model": "digits", "decoder": 3}, "expected vae, tiny, or the path"),
    ],
)
def test_a_bad_decoder_is_refused_naming_the_field(raw, why):
    with pytest.raises(InputError, match="decoder") as e:
        build_recipe(raw)
    assert why in str(e.value)


@pytest.fixture(scope="module")
def saved_decoders(tmp_path_factory):
    """Two AutoencoderTiny folders: one of the embedded models' 4 latent channels, one of 16."""
    from diffusers import AutoencoderTiny

    root = tmp_path_factory.mktemp("decoders")
    for channels in (4, 16):
        torch.manual_seed(channels)
        AutoencoderTiny(
            encoder_block_out_channels=(8, 8, 8),
            decoder_block_out_channels=(8, 8, 8),
            num_encoder_blocks=(1, 1, 1),
            num_decoder_blocks=(1, 1, 1),
            latent_channels=channels,
        ).save_pretrained(root / f"c{channels}")
    return root


def test_a_decoder_folder_of_other_latent_channels_is_refused(saved_decoders):
    with pytest.raises(InputError, match="decoder") as e:
        build_recipe({"model": "digits", "decoder": str(saved_decoders / "c16")})
    assert "16-channel" in str(e.value) and "makes 4" in str(e.value)


def test_a_decoder_folder_is_hashed_by_its_weights_wherever_it_lies(saved_decoders, tmp_path):
    import shutil

    here = build_recipe({"model": "digits", "decoder": str(saved_decoders / "c4")})
    moved = build_recipe({"model": "digits", "decoder": str(shutil.copytree(saved_decoders / "c4", tmp_path / "x"))})
    assert here.content_hash() == moved.content_hash() != build_recipe({"model": "digits"}).content_hash()
    assert build_recipe({"model": "digits", "decoder": "vae"}).content_hash() == build_recipe({}).content_hash()


def test_a_mixture_of_latent_spaces_with_their_own_tiny_decoders_is_refused():
    with pytest.raises(InputError, match="decoder") as e:
        build_recipe(
            {"models": [{"model": "tiny-sd", "share": 0.5}, {"model": "tiny-sdxl", "share": 0.5}], "decoder": "tiny"}
        )
    assert "different tiny decoders" in str(e.value)


@pytest.mark.parametrize("model", ["tiny-sd", "tiny-sdxl", "tiny-sd3", "tiny-flux-schnell"])
def test_a_run_decodes_with_the_tiny_decoder_and_counts_its_flops(model):
    """The four TAESD families: the tiny decoder in the VAE's place makes images of the VAE's
    size from the same latents, and the run's counted decode FLOPs are the tiny decoder's."""
    from diffusers import AutoencoderTiny

    recipes = {
        d: build_recipe({"model": model, "steps": 2, "resolution": 32, "images_per_class": 1, "decoder": d})
        for d in ("vae", "tiny")
    }
    assert recipes["tiny"].decoder == {"name": tiny_decoder(get_model(model)).name}
    samples = plan_units(recipes["vae"])[0].samples[:2]
    images, flops = {}, {}
    for d, recipe in recipes.items():
        pipe = load_run_pipeline(get_model(model), None, CPU, torch.float32, decoder=recipe.decoder)
        assert isinstance(pipe.vae, AutoencoderTiny) == (d == "tiny")
        gen = Generator.for_recipe(pipe, recipe)
        gen.count_flops()
        images[d] = gen.generate(samples)
        f = pipe.vae_scale_factor
        assert gen.decoder_flops_per_image == decode_flops(pipe.vae, (32 // f, 32 // f))  # counted = static count
        flops[d] = (gen.denoiser_flops_per_image, gen.decoder_flops_per_image)
    assert images["tiny"].shape == images["vae"].shape == (2, 32, 32, 3)
    assert flops["tiny"][0] == flops["vae"][0] and 0 < flops["tiny"][1] < flops["vae"][1]


def test_call_flops_sees_every_op_a_decode_runs():
    """decode_modules: hooked as the run hooks them, a decode's counted FLOPs equal the whole
    `vae.decode` counted under fake tensors (an AutoencoderKL's post-quant conv included)."""
    pipe = load_run_pipeline(get_model("digits"), None, CPU, torch.float32)
    latent = torch.randn(2, 4, 8, 8)
    with CallFlops(decode_modules(pipe.vae)) as counter, torch.no_grad():
        pipe.vae.decode(latent)
    assert counter.flops / 2 == decode_flops(pipe.vae, (8, 8)) > 0


def test_the_published_tiny_decoders_cost_a_few_percent_of_their_vaes():
    """Counted on the real architectures (random weights, fake tensors): the decode of SD1.5 at
    512 px and of FLUX at 1024 px, VAE against TAESD and TAEF1."""
    from diffusers import AutoencoderKL

    from t2i_engine.models.architectures import architecture

    for model, tiny, latent in (("sd15", "taesd", (64, 64)), ("flux-schnell", "taef1", (128, 128))):
        with torch.device("meta"):
            vae = AutoencoderKL.from_config({k: v for k, v in architecture(model)["vae"].items()})
            small = random_tiny_decoder(tiny)
        ratio = decode_flops(vae, latent) / decode_flops(small, latent)
        print(f"{model}: VAE decode / {tiny} decode = {ratio:.1f}x")
        assert ratio > 10


def test_the_tiny_decoder_exports_to_onnx_and_matches_pytorch(tmp_path):
    from t2i_engine.export.onnx_export import export_onnx
    from t2i_engine.export.onnx_runtime import OnnxRunner
    from t2i_engine.export.specs import Profile, vae_decoder_spec
    from t2i_engine.export.swap import restore, swap

    pipe = load_run_pipeline(get_model("tiny-sd"), None, CPU, torch.float32, decoder={"name": "tiny-sd-tiny-decoder"})
    spec = vae_decoder_spec(pipe, Profile((1, 2, 4), 32, 32))
    export_onnx(spec, tmp_path / "decoder.onnx", exporter="torchscript")
    runner = OnnxRunner(tmp_path / "decoder.onnx", spec, CPU)
    inputs = spec.sample_inputs(3, seed=3)
    with torch.no_grad():
        expected = spec.module(*inputs)
        assert (runner(*inputs) - expected).abs().max().item() <= 1e-4
        swap(pipe, spec, runner)  # as --backend onnx runs it: the pipeline calls vae.decode(x) as before
        swapped = pipe.vae.decode(inputs[0], return_dict=False)[0]
        restore(pipe)
        assert (swapped - expected).abs().max().item() <= 1e-4


def test_compile_takes_the_tiny_decoder_as_one_graph():
    """--compile compiles whatever decodes: the tiny decoder's decode traces whole (fullgraph) and
    computes what it computed eagerly (torch.compile's eager backend; inductor is the heavy tests')."""
    from t2i_engine.export import tuning

    pipe = load_run_pipeline(get_model("tiny-sd"), None, CPU, torch.float32, decoder={"name": "tiny-sd-tiny-decoder"})
    x = torch.randn(2, 4, 4, 4)
    with torch.no_grad():
        reference = pipe.vae.decode(x).sample
        before = tuning.compiled_graphs()
        tuning.compile_pipeline(pipe, "default", backend="eager")
        out = pipe.vae.decode(x).sample
        assert tuning.compiled_graphs() - before == 1
    tuning.remove_tuning(pipe)
    torch.testing.assert_close(out, reference, rtol=1e-5, atol=1e-5)


def test_build_exports_the_tiny_decoder_that_generate_then_finds(cli, tmp_path, monkeypatch):
    """`build --decoder tiny` exports the tiny decoder as the model's vae_decoder, under the key a
    run with `--decoder tiny --backend onnx` looks up (the key hashes the decoder's weights)."""
    from t2i_engine.engine.run import RunOptions, generate

    monkeypatch.setenv("T2I_ENGINE_CACHE", str(tmp_path / "cache"))
    args = [
        "build",
        "digits",
        "--backend",
        "onnx",
        "--components",
        "denoiser,vae_decoder",
        "--exporter",
        "torchscript",
    ]
    code, _, err = cli(*args, "--decoder", "tiny", "--device", "cpu")
    assert code == 0, err
    built = sorted((tmp_path / "cache").iterdir())
    classes = {json.loads((p / "meta.json").read_text())["class"] for p in built}
    assert classes == {"AutoencoderTiny", "UNet2DConditionModel"}
    recipe = build_recipe({"model": "digits", "steps": 1, "images_per_class": 1, "decoder": "tiny"})
    generate(recipe, tmp_path / "out", RunOptions(device="cpu", progress=False, backend="onnx"))
    assert sorted((tmp_path / "cache").iterdir()) == built  # both found, nothing built anew


def test_a_published_tiny_decoder_missing_here_is_refused_with_the_command_that_fetches_it(tmp_path, monkeypatch):
    from t2i_engine.errors import ModelUnavailable
    from t2i_engine.models.decoders import load_tiny_decoder

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))  # an empty hub cache
    with pytest.raises(ModelUnavailable, match="decoder") as e:
        load_tiny_decoder(get_model("sdxl"), {"name": "taesdxl"}, None, CPU, torch.float32)
    assert "hf download madebyollin/taesdxl" in str(e.value)


def test_each_sample_names_its_decoder_and_never_a_folder(saved_decoders):
    from t2i_engine.engine.recipe import sample_meta

    assert "decoder" not in sample_meta(build_recipe({"model": "digits"}))
    assert sample_meta(build_recipe({"model": "digits", "decoder": "tiny"}))["decoder"] == "digits-taesd"
    folder = build_recipe({"model": "digits", "decoder": str(saved_decoders / "c4")})
    named = sample_meta(folder)["decoder"]
    assert named == f"AutoencoderTiny sha256:{folder.decoder['sha256']}" and str(saved_decoders) not in named


def test_resuming_with_another_decoder_is_refused_and_keeps_the_dataset(tmp_path):
    from t2i_engine.engine.run import RunOptions, generate

    raw = {"model": "digits", "steps": 1, "images_per_class": 1}
    generate(build_recipe(raw), tmp_path / "d", RunOptions(device="cpu", progress=False, encode_workers=0))
    before = {
        p.relative_to(tmp_path / "d").as_posix(): p.read_bytes() for p in (tmp_path / "d").rglob("*") if p.is_file()
    }
    with pytest.raises(InputError, match="decoder"):
        generate(build_recipe({**raw, "decoder": "tiny"}), tmp_path / "d", RunOptions(device="cpu", progress=False))
    assert {
        p.relative_to(tmp_path / "d").as_posix(): p.read_bytes() for p in (tmp_path / "d").rglob("*") if p.is_file()
    } == before
