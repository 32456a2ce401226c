"""The evaluation tests' shared models."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory):
    """A random-weight CLIP in transformers' layout (a stand-in for ViT-B/32, which cannot be
    downloaded here): exercises loading, image/text embedding, CLIPScore and zero-shot."""
    from transformers import CLIPConfig, CLIPModel

    from t2i_engine.models.tokenizer import build_clip_tokenizer

    folder = tmp_path_factory.mktemp("tiny-clip")
    words = "a photo of zero one two three four five six seven eight nine digit handwritten".split()
    tok = build_clip_tokenizer(words)
    text = dict(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    vision = dict(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=32, patch_size=8
    )
    torch.manual_seed(0)
    CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder
