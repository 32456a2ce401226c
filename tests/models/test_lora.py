"""LoRA adapters (models/lora.py) on the tiny models of every family that takes them: random
adapters made with peft, saved as diffusers saves them. The engine's fused pipeline makes the
images diffusers' own pipeline makes with the same adapters loaded and left unfused (its LoRA
layers live, at the same scales); kohya's key format loads to the same weights; an adapter for
another architecture is refused naming its first key that does not fit.

Tolerance: uint8 images within 1 level (fusing reorders fp32 sums)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from t2i_engine.engine.generator import Generator
from t2i_engine.engine.plan import plan_samples
from t2i_engine.engine.recipe import build_recipe
from t2i_engine.errors import InputError
from t2i_engine.export.cache import weights_hash
from t2i_engine.models.lora import read_adapter
from t2i_engine.models.lora_fuse import check_adapters, check_fit, fuse_adapters, lora_components
from t2i_engine.models.pipelines import load_pipeline
from t2i_engine.models.registry import MODELS

CPU = torch.device("cpu")
ATTENTION = ["to_q", "to_k", "to_v", "to_out.0"]  # every family's denoiser attention (diffusers' Attention)
TEXT = ["q_proj", "k_proj", "v_proj", "out_proj"]  # CLIP's


def make_adapter(model: str, folder, seed: int, text_encoder: bool = False):
    """A random LoRA (rank 4) on the denoiser's attention (and the CLIP text encoder's), saved
    as diffusers' save_lora_weights writes it: the file's path."""
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model

    pipe = load_pipeline(MODELS[model], None, CPU, torch.float32)
    torch.manual_seed(seed)
    layers = {}
    name = "unet" if hasattr(pipe, "unet") else "transformer"
    parts = [(name, getattr(pipe, name), ATTENTION)] + (
        [("text_encoder", pipe.text_encoder, TEXT)] if text_encoder else []
    )
    for component, module, targets in parts:
        inject_adapter_in_model(LoraConfig(r=4, lora_alpha=4, target_modules=targets, init_lora_weights=False), module)
        for p in module.parameters():  # peft's B starts small: make the adapter move the images
            if p.requires_grad:
                p.data.mul_(3.0)
        layers[f"{component}_lora_layers"] = convert_state_dict_to_diffusers(get_peft_model_state_dict(module))
    type(pipe).save_lora_weights(folder, **layers, safe_serialization=True)
    return folder / "pytorch_lora_weights.safetensors"


def _images(pipe, model: str) -> np.ndarray:
    recipe = build_recipe(
        {"model": model, "classes": ["cat", "dog"], "images_per_class": 1, "steps": 2, "resolution": 32}
    )
    return Generator.for_recipe(pipe, recipe).generate(plan_samples(recipe))


def _worst(a, b) -> int:
    return int(np.abs(a.astype(int) - b.astype(int)).max())


@pytest.mark.filterwarnings("ignore:Already found a `peft_config`")  # the reference loads two adapters
@pytest.mark.parametrize("model", ["tiny-sd", "tiny-sdxl", "tiny-sd3", "tiny-flux"])
def test_fused_adapters_make_the_images_of_diffusers_with_them_unfused(model, tmp_path):
    spec = MODELS[model]
    text = model == "tiny-sd"
    adapters = (
        read_adapter(make_adapter(model, tmp_path / "a", 1, text_encoder=text), 0.7),
        read_adapter(make_adapter(model, tmp_path / "b", 2), 1.3),
    )
    reference = load_pipeline(spec, None, CPU, torch.float32)
    plain = _images(reference, model)
    for i, a in enumerate(adapters):
        reference.load_lora_weights(a.path, adapter_name=f"r{i}")
    reference.set_adapters(["r0", "r1"], adapter_weights=[a.scale for a in adapters])
    expected = _images(reference, model)

    pipe = load_pipeline(spec, None, CPU, torch.float32)
    check_adapters(spec, None, adapters)
    fuse_adapters(pipe, adapters, model)
    assert not any("lora" in n for c in lora_components(pipe).values() for n, _ in c.named_modules())  # plain again
    denoiser = "unet" if hasattr(pipe, "unet") else "transformer"
    assert weights_hash(getattr(pipe, denoiser)) != weights_hash(getattr(reference, denoiser))  # backends rebuild
    ours = _images(pipe, model)
    print(model, "worst vs unfused:", _worst(ours, expected), "adapters moved:", _worst(plain, expected))
    assert _worst(ours, expected) <= 1 and _worst(plain, expected) > 10


def _to_kohya(path, out):
    """The same adapter in kohya's format (lora_unet_..., lora_down/lora_up, alpha)."""
    kohya = {}
    for key, tensor in load_file(path).items():
        component, _, rest = key.partition(".")
        module, _, which = rest.rpartition(".lora.")
        stem = f"lora_{'te' if component == 'text_encoder' else component}_{module.replace('.', '_')}"
        kohya[f"{stem}.lora_{which.split('.')[0]}.weight"] = tensor
        kohya[f"{stem}.alpha"] = torch.tensor(4.0)  # alpha = rank: scale 1, as saved
    save_file(kohya, out)
    return out


def test_kohyas_format_fuses_to_the_same_weights(tmp_path):
    diffusers_file = make_adapter("tiny-sd", tmp_path / "d", 3)
    weights = []
    for path in (diffusers_file, _to_kohya(diffusers_file, tmp_path / "kohya.safetensors")):
        pipe = load_pipeline(MODELS["tiny-sd"], None, CPU, torch.float32)
        fuse_adapters(pipe, (read_adapter(path, 0.5),), "tiny-sd")
        weights.append(pipe.unet.state_dict())
    worst = max((weights[0][k] - weights[1][k]).abs().max().item() for k in weights[0])
    assert worst < 1e-6, worst


def test_an_adapter_for_another_architecture_is_refused_naming_its_first_key(tmp_path):
    sd_adapter = read_adapter(make_adapter("tiny-sd", tmp_path / "sd", 4))
    with pytest.raises(InputError, match=r"does not fit tiny-sdxl: its key 'unet\.down_blocks\.0\.attentions"):
        check_adapters(MODELS["tiny-sdxl"], None, (sd_adapter,))
    # the right module with the wrong shape: a rank-4 A whose input is not the module's
    part = {"down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight": torch.zeros(4, 7)}
    pipe = load_pipeline(MODELS["tiny-sd"], None, CPU, torch.float32)
    with pytest.raises(InputError, match=r"has shape \[4, 7\]; the module's input is"):
        check_fit({"unet": part}, lora_components(pipe), sd_adapter, "tiny-sd")


def test_a_changed_file_is_refused_when_it_is_loaded(tmp_path):
    path = make_adapter("tiny-sd", tmp_path / "a", 5)
    adapter = read_adapter(path)
    save_file({k: v * 2 for k, v in load_file(path).items()}, path)  # another adapter under the same name
    pipe = load_pipeline(MODELS["tiny-sd"], None, CPU, torch.float32)
    with pytest.raises(InputError, match="sha256 is no longer"):
        fuse_adapters(pipe, (adapter,), "tiny-sd")
