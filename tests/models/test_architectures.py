"""The shipped architecture configs of every registry model instantiate, on the meta device (no
memory), as the real diffusers classes, with the published sizes of their denoisers."""

from __future__ import annotations

import pytest
import torch

from t2i_engine.models.architectures import CONFIG_ROOT, architecture, build_denoiser, build_vae
from t2i_engine.models.registry import MODELS

# Denoiser parameters in billions, as published, and the tolerance their rounding allows. Exact
# counts where they are commonly quoted to the parameter (SD1.x/2.x/XL UNets, SD3-medium, FLUX);
# model cards' rounded figures otherwise.
KNOWN = {
    "sd15": (0.8595, 0.001),
    "sd21": (0.8659, 0.001),
    "sdxl": (2.5675, 0.001),
    "sdxl-turbo": (2.5675, 0.001),
    "sd3-medium": (2.028, 0.002),
    "sd35-large": (8.1, 0.01),
    "sd35-large-turbo": (8.1, 0.01),
    "flux-dev": (11.9, 0.005),
    "flux-schnell": (11.9, 0.005),
    "sana-1.6b": (1.6, 0.01),
    "lumina2": (2.6, 0.01),
    "qwen-image": (20.0, 0.03),
    "pixart-alpha": (0.6, 0.03),
    # SD3.5-medium: its card says 2.5B; the diffusers transformer built from its config has 2.243B
    # (the card's figure has not been reconciled here), so only the class is checked for it.
    "sd35-medium": (None, None),
}


def test_every_registry_model_with_weights_to_build_has_a_config_and_a_known_size():
    shipped = {p.name for p in CONFIG_ROOT.iterdir() if p.is_dir()}
    real = {m.name for m in MODELS.values() if m.hub_id and not m.test_model}
    assert shipped == set(KNOWN) and real - {"sdxl-refiner", "sd20"} <= shipped, real - shipped


@pytest.mark.parametrize("name", sorted(KNOWN))
def test_the_real_architecture_instantiates_with_its_known_size(name):
    arch = architecture(name)
    with torch.device("meta"):
        denoiser, vae = build_denoiser(arch), build_vae(arch)
    assert type(denoiser).__name__ == arch["meta"]["denoiser_class"].split(" ")[0]
    latent = vae.config.get("latent_channels") or vae.config.get("z_dim")  # Qwen-Image's VAE names it z_dim
    assert latent == arch["meta"]["latent_channels"]
    billions, tolerance = KNOWN[name]
    count = sum(p.numel() for p in denoiser.parameters()) / 1e9
    print(
        f"{name}: {type(denoiser).__name__} {count:.4f}B, {type(vae).__name__} "
        f"{sum(p.numel() for p in vae.parameters()) / 1e6:.1f}M"
    )
    if billions is not None:
        assert count == pytest.approx(billions, rel=tolerance)


def test_a_family_newer_than_the_installed_diffusers_names_the_release_it_needs():
    from t2i_engine.errors import InputError
    from t2i_engine.models.registry import check_diffusers, get_model

    for name in MODELS:  # the installed diffusers runs every family
        if MODELS[name].standalone:
            get_model(name)
    for name, need in (("sana-1.6b", "0.32"), ("qwen-image", "0.35"), ("flux-dev", "0.30")):
        with pytest.raises(InputError, match=rf"needs diffusers >= {need}; this environment has 0\.29\.2"):
            check_diffusers(MODELS[name], installed="0.29.2")
    check_diffusers(MODELS["sd3-medium"], installed="0.29.2")  # SD3 arrived in 0.29
    check_diffusers(MODELS["qwen-image"], installed="0.36.0.dev0")


# Text encoders: built on the meta device (no memory), checked against the shipped configs.
TEXT_MODELS = ["sd3-medium", "flux-schnell"]


@pytest.mark.parametrize("name", TEXT_MODELS)
def test_sd3_and_flux_get_their_configs_text_encoders_and_tokenizers(name):
    from t2i_engine.models.architectures import build_random_pipeline
    from t2i_engine.models.registry import get_model

    pipe = build_random_pipeline(get_model(name), torch.device("meta"), torch.bfloat16)
    for entry in architecture(name)["text"]["text_encoders"]:
        encoder = getattr(pipe, entry["name"])
        tokenizer = getattr(pipe, "tokenizer" + entry["name"].removeprefix("text_encoder"))
        assert type(encoder).__name__ == entry["class"]
        assert encoder.config.vocab_size == entry["config"]["vocab_size"]
        width = getattr(encoder.config, "hidden_size", None) or encoder.config.d_model
        assert width == entry["hidden_size"]
        assert {p.dtype for p in encoder.parameters()} == {torch.bfloat16}
        assert tokenizer.model_max_length == entry["sequence_length"]
        assert len(tokenizer) <= entry["config"]["vocab_size"]
    t5 = pipe.text_encoder_3 if name == "sd3-medium" else pipe.text_encoder_2
    assert sum(p.numel() for p in t5.parameters()) / 1e9 == pytest.approx(4.762, rel=0.001)  # T5-XXL's encoder


def test_without_text_encoders_the_pipeline_has_none():
    from t2i_engine.models.architectures import build_random_pipeline
    from t2i_engine.models.registry import get_model

    pipe = build_random_pipeline(get_model("flux-schnell"), torch.device("meta"), torch.bfloat16, text_encoders=False)
    assert pipe.text_encoder is pipe.text_encoder_2 is pipe.tokenizer is pipe.tokenizer_2 is None


def test_t5_in_fp16_keeps_its_wo_projections_in_fp32_as_from_pretrained_does():
    from t2i_engine.models.architectures import build_text_parts

    entry = architecture("flux-schnell")["text"]["text_encoders"][1]
    with torch.device("meta"):
        t5 = build_text_parts([entry], torch.float16)["text_encoder_2"]
    wide = {n.rsplit(".", 2)[-2] for n, p in t5.named_parameters() if p.dtype == torch.float32}
    assert wide == {"wo"}


def test_the_t5_stand_in_tokenizer_pads_ends_and_truncates_like_t5s():
    from t2i_engine.models.architectures import TOKENIZER_WORDS
    from t2i_engine.models.tokenizer import build_t5_tokenizer

    tok = build_t5_tokenizer(TOKENIZER_WORDS, max_length=16)
    assert (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2)
    ids = tok(["a photo of a Cat é", "a photo " * 20], padding="max_length", max_length=16, truncation=True)
    short, long = ids["input_ids"]
    assert len(short) == len(long) == 16 and max(short + long) < len(tok) <= 32128
    assert tok.convert_ids_to_tokens(short[:4]) == ["\u2581a", "\u2581photo", "\u2581of", "\u2581a"]
    assert 2 in short  # "é" is out of the vocabulary
    end = short.index(1)
    assert short[end + 1 :] == [0] * (15 - end) and sum(ids["attention_mask"][0]) == end + 1
    assert long[-1] == 1 and 0 not in long  # truncated, still closed by "</s>"
    assert tok.batch_decode([short[:3]]) == ["a photo of"]


def _shrunk(entry: dict) -> dict:
    """The entry with its real vocabulary and sequence length but a few-thousand-parameter body."""
    small = {"num_hidden_layers": 1, "num_layers": 1, "num_heads": 2, "num_attention_heads": 2, "d_kv": 8}
    width = {"hidden_size": 16, "intermediate_size": 32, "projection_dim": 16, "d_model": 32, "d_ff": 32}
    config = {k: small.get(k, width.get(k, v)) for k, v in entry["config"].items()}
    return {**entry, "config": config}


@pytest.mark.parametrize("name", TEXT_MODELS)
def test_the_pipelines_encode_prompts_with_the_built_encoders_and_tokenizers(name):
    """The diffusers pipeline's own encode_prompt (tokenize, pad, warn about truncation with
    batch_decode, encode) runs on text encoders built from the shipped entries, shrunk."""
    import diffusers

    from t2i_engine.models.architectures import build_text_parts

    arch = architecture(name)
    entries = [_shrunk(e) for e in arch["text"]["text_encoders"]]
    torch.manual_seed(0)
    parts = build_text_parts(entries, torch.float32)
    pipe = getattr(diffusers, arch["text"]["pipeline_class"])(scheduler=None, vae=None, transformer=None, **parts)
    prompts = ["a photo of the cat", "picture " * 300]  # the second is longer than every tokenizer's limit
    t5_length = entries[-1]["sequence_length"]
    if name == "sd3-medium":
        embeds, _, pooled, _ = pipe.encode_prompt(prompts, None, None, do_classifier_free_guidance=False)
        assert embeds.shape == (2, 77 + t5_length, 32) and pooled.shape == (2, 16 + 16)
    else:
        embeds, pooled, text_ids = pipe.encode_prompt(prompts, None, max_sequence_length=t5_length)
        assert embeds.shape == (2, t5_length, 32) and pooled.shape == (2, 16)
    assert torch.isfinite(embeds).all() and not torch.equal(embeds[0], embeds[1])
