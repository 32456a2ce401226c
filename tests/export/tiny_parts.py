"""Tiny random components shaped like SD1.5's, SDXL's, SD3's and FLUX's (the real diffusers and
transformers classes at a few thousand weights), as a pipeline-like namespace for the export specs."""

from __future__ import annotations

from types import SimpleNamespace

import torch


def _clip(projection: bool = False, hidden: int = 16):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    cfg = CLIPTextConfig(
        vocab_size=50,
        hidden_size=hidden,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=77,
        projection_dim=hidden,
    )
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(cfg)


def _t5():
    from transformers import T5Config, T5EncoderModel

    return T5EncoderModel(T5Config(vocab_size=50, d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2))


def _vae(latent_channels: int = 4):
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=latent_channels,
        layers_per_block=1,
        norm_num_groups=4,
        block_out_channels=(8, 8),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
    )


def _tok(length: int):
    return SimpleNamespace(model_max_length=length)


def sd15():
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(16, 16),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=16,
        attention_head_dim=8,
        norm_num_groups=4,
    )
    return SimpleNamespace(unet=unet, vae=_vae(), text_encoder=_clip(), tokenizer=_tok(77), vae_scale_factor=2)


def sdxl():
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(16, 16),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=4,
        addition_embed_type="text_time",
        addition_time_embed_dim=4,
        projection_class_embeddings_input_dim=16 + 6 * 4,
        transformer_layers_per_block=1,
    )
    return SimpleNamespace(
        unet=unet,
        vae=_vae(),
        text_encoder=_clip(),
        text_encoder_2=_clip(projection=True),
        tokenizer=_tok(77),
        tokenizer_2=_tok(77),
        vae_scale_factor=2,
    )


def sd3():
    from diffusers import SD3Transformer2DModel

    torch.manual_seed(0)
    transformer = SD3Transformer2DModel(
        sample_size=8,
        patch_size=2,
        in_channels=4,
        num_layers=1,
        attention_head_dim=8,
        num_attention_heads=2,
        joint_attention_dim=16,
        caption_projection_dim=16,
        pooled_projection_dim=32,
        out_channels=4,
    )
    return SimpleNamespace(
        transformer=transformer,
        vae=_vae(),
        text_encoder=_clip(projection=True),
        text_encoder_2=_clip(projection=True),
        text_encoder_3=_t5(),
        tokenizer=_tok(77),
        tokenizer_2=_tok(77),
        tokenizer_3=_tok(16),
        vae_scale_factor=2,
        text_len=93,
    )


def flux():
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(0)
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=16,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=16,
        pooled_projection_dim=16,
        guidance_embeds=True,
        axes_dims_rope=(4, 6, 6),
    )
    return SimpleNamespace(
        transformer=transformer,
        vae=_vae(latent_channels=4),
        text_encoder=_clip(),
        text_encoder_2=_t5(),
        tokenizer=_tok(77),
        tokenizer_2=_tok(16),
        vae_scale_factor=2,
        text_len=16,
    )


FAMILIES = {"sd15": sd15, "sdxl": sdxl, "sd3": sd3, "flux": flux}
