"""`tiny-sd`: an SD1.5-shaped pipeline with random weights, for tests and benchmarks.

The same diffusers classes as SD1.5 (CLIPTextModel, UNet2DConditionModel with cross attention,
AutoencoderKL with a scale factor of 8, DDIM with SD1.5's noise schedule), at a few hundred
thousand weights. Built from configs with a fixed seed, so it is the same model every time on
one torch version; nothing is downloaded.
"""

from __future__ import annotations

import torch

from .tokenizer import build_clip_tokenizer

SEED = 20240601
WORDS = [
    "a",
    "photo",
    "of",
    "the",
    "digit",
    "number",
    "handwritten",
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
]


def build_tiny_sd():
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    tokenizer = build_clip_tokenizer(WORDS)
    torch.manual_seed(SEED)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=77,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    torch.manual_seed(SEED + 1)
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(32, 32),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=8,
    )
    torch.manual_seed(SEED + 2)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=8,
        block_out_channels=(8, 16, 16, 16),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        sample_size=64,
    )
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def _tiny_clip(tokenizer, seed: int, projection: bool = False, hidden: int = 32):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        projection_dim=hidden,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(config)


def _tiny_vae(seed: int, latent_channels: int = 4, **extra):
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=latent_channels,
        layers_per_block=1,
        norm_num_groups=8,
        block_out_channels=(8, 16, 16, 16),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        sample_size=64,
        **extra,
    )


def build_tiny_sdxl():
    """`tiny-sdxl`: SDXL's classes and wiring (two CLIPs, the second with a projection whose pooled
    output and six size/crop numbers condition the UNet; Euler; an empty negative prompt as zeros)
    at toy sizes."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel

    tokenizer, tokenizer_2 = build_clip_tokenizer(WORDS), build_clip_tokenizer(WORDS)
    text_encoder = _tiny_clip(tokenizer, SEED + 10)
    text_encoder_2 = _tiny_clip(tokenizer_2, SEED + 11, projection=True)
    torch.manual_seed(SEED + 12)
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(32, 32),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=64,
        attention_head_dim=8,
        norm_num_groups=8,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=32 + 6 * 8,
        transformer_layers_per_block=1,
    )
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1, timestep_spacing="leading"
    )
    return StableDiffusionXLPipeline(
        vae=_tiny_vae(SEED + 13, force_upcast=False),
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
        unet=unet,
        scheduler=scheduler,
        force_zeros_for_empty_prompt=True,
    )


def build_tiny_sdxl_refiner(base):
    """`tiny-sdxl-refiner`: the SDXL refiner's classes and wiring (an img2img pipeline conditioned on
    the base's second text encoder alone, with an aesthetic score among its five time ids) at toy
    sizes, sharing `base`'s second text encoder and VAE, as diffusers' SDXL example shares them, and
    sampling on a copy of its scheduler (refiner.check_refiner relies on that)."""
    from diffusers import StableDiffusionXLImg2ImgPipeline, UNet2DConditionModel

    text_encoder_2 = base.text_encoder_2
    hidden, pooled = text_encoder_2.config.hidden_size, text_encoder_2.config.projection_dim
    torch.manual_seed(SEED + 14)
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(32, 32),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=hidden,
        attention_head_dim=8,
        norm_num_groups=8,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=pooled + 5 * 8,
        transformer_layers_per_block=1,
    )
    return StableDiffusionXLImg2ImgPipeline(
        vae=base.vae,
        text_encoder=None,
        text_encoder_2=text_encoder_2,
        tokenizer=None,
        tokenizer_2=base.tokenizer_2,
        unet=unet,
        scheduler=type(base.scheduler).from_config(base.scheduler.config),
        requires_aesthetics_score=True,
        force_zeros_for_empty_prompt=False,
        add_watermarker=False,
    )


def _tiny_t5(tokenizer, seed: int, d_model: int = 32):
    """T5's encoder at toy size. Its tokenizer is one of ours (CLIP BPE over the word list): T5's
    own is a SentencePiece model we cannot build here; only the token ids differ."""
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(seed)
    return T5EncoderModel(
        T5Config(
            vocab_size=len(tokenizer),
            d_model=d_model,
            d_kv=8,
            d_ff=2 * d_model,
            num_layers=2,
            num_heads=4,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
    )


def build_tiny_sd3():
    """`tiny-sd3`: SD3's classes and wiring (two CLIPs with projections and T5, joined; an MMDiT
    with dual attention in its first block, as SD3.5-medium; flow matching) at toy sizes."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

    tokenizers = [build_clip_tokenizer(WORDS) for _ in range(3)]
    tokenizers[2].model_max_length = 32  # T5's length in our pipelines' calls is max_sequence_length
    text_encoder = _tiny_clip(tokenizers[0], SEED + 20, projection=True, hidden=16)
    text_encoder_2 = _tiny_clip(tokenizers[1], SEED + 21, projection=True, hidden=16)
    text_encoder_3 = _tiny_t5(tokenizers[2], SEED + 22)
    torch.manual_seed(SEED + 23)
    transformer = SD3Transformer2DModel(
        sample_size=8,
        patch_size=2,
        in_channels=16,
        num_layers=2,
        attention_head_dim=8,
        num_attention_heads=4,
        joint_attention_dim=32,
        caption_projection_dim=32,
        pooled_projection_dim=32,
        out_channels=16,
        qk_norm="rms_norm",
        dual_attention_layers=(0,),
    )
    vae = _tiny_vae(SEED + 24, latent_channels=16, shift_factor=0.0609, scaling_factor=1.5305)
    return StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizers[0],
        text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizers[1],
        text_encoder_3=text_encoder_3,
        tokenizer_3=tokenizers[2],
    )


def build_tiny_flux(guidance_embeds: bool = True):
    """`tiny-flux`: FLUX.1-dev's classes and wiring (CLIP pooled + T5 states, a guidance
    embedding, RoPE over text and image ids, 2x2-packed latents, flow matching) at toy sizes."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    tokenizer, tokenizer_2 = build_clip_tokenizer(WORDS), build_clip_tokenizer(WORDS)
    text_encoder = _tiny_clip(tokenizer, SEED + 30, hidden=16)
    text_encoder_2 = _tiny_t5(tokenizer_2, SEED + 31)
    torch.manual_seed(SEED + 32)
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=64,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=32,
        pooled_projection_dim=16,
        guidance_embeds=guidance_embeds,
        axes_dims_rope=(4, 6, 6),
    )
    vae = _tiny_vae(SEED + 33, latent_channels=16, shift_factor=0.1159, scaling_factor=0.3611)
    scheduler = FlowMatchEulerDiscreteScheduler(
        shift=3.0,
        use_dynamic_shifting=True,
        base_shift=0.5,
        max_shift=1.15,
        base_image_seq_len=256,
        max_image_seq_len=4096,
    )
    return FluxPipeline(
        scheduler=scheduler,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer_2,
        transformer=transformer,
    )


def build_tiny_pixart():
    """`tiny-pixart`: PixArt-alpha's classes and wiring (T5 with its attention mask, a DiT with
    adaLN-single and cross-attention, DPM-Solver) at toy sizes."""
    from diffusers import DPMSolverMultistepScheduler, PixArtAlphaPipeline, PixArtTransformer2DModel

    tokenizer = build_clip_tokenizer(WORDS, max_length=120)
    text_encoder = _tiny_t5(tokenizer, SEED + 40)
    torch.manual_seed(SEED + 41)
    transformer = PixArtTransformer2DModel(
        num_attention_heads=2,
        attention_head_dim=16,
        in_channels=4,
        out_channels=8,
        num_layers=2,
        cross_attention_dim=32,
        caption_channels=32,
        sample_size=8,
        patch_size=2,
        norm_type="ada_norm_single",
        attention_bias=True,
        norm_elementwise_affine=False,
        norm_eps=1e-6,
        num_embeds_ada_norm=1000,
    )
    return PixArtAlphaPipeline(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        vae=_tiny_vae(SEED + 42),
        transformer=transformer,
        scheduler=DPMSolverMultistepScheduler(beta_start=0.0001, beta_end=0.02, beta_schedule="linear"),
    )


def build_tiny_sana():
    """`tiny-sana`: Sana's classes and wiring (a Gemma-2 encoder, linear-attention DiT with
    softmax cross-attention, the deep-compression autoencoder, DPM-Solver with flow matching) at
    toy sizes. Gemma's tokenizer is a SentencePiece model we cannot build: ours stands in."""
    from diffusers import AutoencoderDC, DPMSolverMultistepScheduler, SanaPipeline, SanaTransformer2DModel

    tokenizer = build_clip_tokenizer(WORDS, max_length=300)
    text_encoder = _tiny_gemma2(tokenizer, SEED + 50)
    torch.manual_seed(SEED + 51)
    transformer = SanaTransformer2DModel(
        patch_size=1,
        in_channels=4,
        out_channels=4,
        num_layers=2,
        num_attention_heads=2,
        attention_head_dim=8,
        num_cross_attention_heads=2,
        cross_attention_head_dim=8,
        cross_attention_dim=16,
        caption_channels=32,
        sample_size=16,
    )
    torch.manual_seed(SEED + 52)
    vae = AutoencoderDC(
        in_channels=3,
        latent_channels=4,
        attention_head_dim=4,
        encoder_block_types=("ResBlock", "EfficientViTBlock"),
        decoder_block_types=("ResBlock", "EfficientViTBlock"),
        encoder_block_out_channels=(8, 16),
        decoder_block_out_channels=(8, 16),
        encoder_qkv_multiscales=((), (5,)),
        decoder_qkv_multiscales=((), (5,)),
        encoder_layers_per_block=(1, 1),
        decoder_layers_per_block=(1, 1),
        downsample_block_type="conv",
        upsample_block_type="interpolate",
        decoder_norm_types="rms_norm",
        decoder_act_fns="silu",
        scaling_factor=0.41407,
    )
    scheduler = DPMSolverMultistepScheduler(flow_shift=3.0, use_flow_sigmas=True, prediction_type="flow_prediction")
    return SanaPipeline(
        tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer, scheduler=scheduler
    )


def _tiny_gemma2(tokenizer, seed: int, hidden: int = 32):
    from transformers import Gemma2Config, Gemma2Model

    torch.manual_seed(seed)
    return Gemma2Model(
        Gemma2Config(
            vocab_size=len(tokenizer),
            hidden_size=hidden,
            intermediate_size=2 * hidden,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=1,
            head_dim=16,
            max_position_embeddings=1024,
            pad_token_id=tokenizer.pad_token_id,
            attn_implementation="eager",
        )
    )


def build_tiny_lumina2():
    """`tiny-lumina2`: Lumina-Image 2.0's classes and wiring (a Gemma-2 encoder behind a system
    prompt, a DiT with grouped key/value heads and 3-axis RoPE, FLUX's VAE, flow matching) at toy
    sizes; our tokenizer stands in for Gemma's."""
    from diffusers import FlowMatchEulerDiscreteScheduler, Lumina2Pipeline, Lumina2Transformer2DModel

    tokenizer = build_clip_tokenizer(WORDS, max_length=256)
    text_encoder = _tiny_gemma2(tokenizer, SEED + 60)
    torch.manual_seed(SEED + 61)
    transformer = Lumina2Transformer2DModel(
        sample_size=8,
        patch_size=2,
        in_channels=16,
        hidden_size=32,
        num_layers=1,
        num_refiner_layers=1,
        num_attention_heads=4,
        num_kv_heads=2,
        multiple_of=16,
        cap_feat_dim=32,
        axes_dim_rope=(4, 2, 2),
        axes_lens=(320, 32, 32),
    )
    vae = _tiny_vae(SEED + 62, latent_channels=16, shift_factor=0.1159, scaling_factor=0.3611)
    return Lumina2Pipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
    )


def build_tiny_qwen_image():
    """`tiny-qwen-image`: Qwen-Image's classes and wiring (a Qwen2.5-VL text encoder behind its
    chat template, an MMDiT with 3-axis RoPE, packed latents, its 3-D VAE, flow matching) at toy
    sizes; our tokenizer stands in for Qwen's."""
    from diffusers import (
        AutoencoderKLQwenImage,
        FlowMatchEulerDiscreteScheduler,
        QwenImagePipeline,
        QwenImageTransformer2DModel,
    )
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    tokenizer = build_clip_tokenizer(WORDS, max_length=1024)
    torch.manual_seed(SEED + 70)
    config = Qwen2_5_VLConfig(
        text_config={
            "hidden_size": 16,
            "intermediate_size": 32,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "num_key_value_heads": 2,
            "vocab_size": len(tokenizer),
            "rope_scaling": {"mrope_section": [1, 1, 2], "rope_type": "default", "type": "default"},
            "rope_theta": 1000000.0,
        },
        vision_config={"depth": 1, "hidden_size": 16, "intermediate_size": 16, "num_heads": 2, "out_hidden_size": 16},
        hidden_size=16,
        vocab_size=len(tokenizer),
    )
    text_encoder = Qwen2_5_VLForConditionalGeneration(config)
    torch.manual_seed(SEED + 71)
    transformer = QwenImageTransformer2DModel(
        patch_size=2,
        in_channels=16,
        out_channels=4,
        num_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=16,
        axes_dims_rope=(4, 6, 6),
    )
    torch.manual_seed(SEED + 72)
    vae = AutoencoderKLQwenImage(
        base_dim=24,
        z_dim=4,
        dim_mult=[1, 2, 4],
        num_res_blocks=1,
        temperal_downsample=[False, True],
        latents_mean=[0.0] * 4,
        latents_std=[1.0] * 4,
    )
    return QwenImagePipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        transformer=transformer,
    )


def build_tiny_sd2():
    """`tiny-sd2`: SD 2.x's wiring (v-prediction, linear projections in the transformer blocks,
    a larger head dim, Euler's "leading" spacing) at toy sizes."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionPipeline, UNet2DConditionModel

    tokenizer = build_clip_tokenizer(WORDS)
    text_encoder = _tiny_clip(tokenizer, SEED + 80)
    torch.manual_seed(SEED + 81)
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(32, 32),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        norm_num_groups=8,
    )
    torch.manual_seed(SEED + 82)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=8,
        block_out_channels=(8, 16, 16, 16),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        sample_size=64,
    )
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        steps_offset=1,
        prediction_type="v_prediction",
        timestep_spacing="leading",
    )
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def build_tiny_flux_schnell():
    """`tiny-flux-schnell`: FLUX.1-schnell's wiring: as tiny-flux, without a guidance embedding."""
    return build_tiny_flux(guidance_embeds=False)


def build_tiny_decoder(vae):
    """A random-weight AutoencoderTiny for a test model's VAE: its latent channels, scaling and
    latent-to-pixel factor (one 2x stage per VAE block after the first), 8 channels wide; what
    `decoder: tiny` loads for a test model of a family with a TAESD."""
    from diffusers import AutoencoderTiny

    stages = len(vae.config.block_out_channels)
    torch.manual_seed(0)
    return AutoencoderTiny(
        encoder_block_out_channels=(8,) * stages,
        decoder_block_out_channels=(8,) * stages,
        num_encoder_blocks=(1,) * stages,
        num_decoder_blocks=(1,) * stages,
        latent_channels=vae.config.latent_channels,
        scaling_factor=vae.config.scaling_factor,
        shift_factor=getattr(vae.config, "shift_factor", None) or 0.0,
    )
