"""Family adapters: what differs between pipeline families around the same Generator.

Each adapter says how a family's prompt embeddings are computed (once per unique prompt, one
row per prompt, so the Generator can cache and re-batch them), what its negative prompt becomes,
how they are passed back to the pipeline, the shape of one sample's initial noise, whether the
run uses classifier-free guidance, and how latents become images in [-1, 1].

- sd: Stable Diffusion 1.x/2.x (one CLIP; SD2's v-prediction lives in its scheduler config).
- sdxl: two CLIPs (the penultimate states of both, concatenated) and the second's pooled
  embedding; an empty negative prompt is zeros where the model says so
  (force_zeros_for_empty_prompt), as diffusers does; its VAE decodes in fp32 where it would
  overflow in fp16 (force_upcast), moved there once, not per batch.
- sd3: two CLIPs and T5 (their states joined along the sequence), pooled CLIP embeddings, true
  CFG; the VAE's latents are scaled and shifted.
- pixart: T5 alone, its attention mask passed along; captions not cleaned; no resolution binning.
- sana: a Gemma encoder behind the pipeline's default instruction; DC-AE; no resolution binning.
- lumina2: a Gemma encoder's penultimate states behind its system prompt; grouped-head DiT.
- qwen-image: Qwen2.5-VL behind a chat template, prompts of their own lengths padded per batch;
  true CFG with the negative prompt; packed latents; a 3-D VAE.
- flux: CLIP (pooled only) and T5 (at the registry model's length: schnell 256, dev 512);
  guidance distilled into the model, no negative pass, so the negative prompt is unused; the
  noise is drawn per sample at the latent size, then packed into 2x2 tokens.
"""

from __future__ import annotations

import torch


class SDAdapter:
    family = "sd"

    def __init__(self, text_length: int | None = None):
        self.text_length = text_length  # the prompt length the registry model's pipeline uses (FLUX's T5)

    def encode(self, pipe, prompts: list[str], device) -> dict[str, torch.Tensor]:
        return {"prompt_embeds": pipe.encode_prompt(prompts, device, 1, False)[0]}

    def negative(self, pipe, text: str, device) -> dict[str, torch.Tensor]:
        return {"negative_prompt_embeds": pipe.encode_prompt([text], device, 1, False)[0]}

    def uses_guidance(self, pipe, guidance: float) -> bool:
        return guidance > 1.0 and pipe.unet.config.time_cond_proj_dim is None

    def latent_shape(self, pipe, height: int, width: int) -> tuple[int, ...]:
        return (pipe.unet.config.in_channels, height // pipe.vae_scale_factor, width // pipe.vae_scale_factor)

    def prepare_latents(self, pipe, noise: torch.Tensor) -> torch.Tensor:
        return noise

    def call_kwargs(self, guidance: float) -> dict:
        """Extra arguments for the pipeline call."""
        return {}

    def rows(self, encoded: dict[str, torch.Tensor], n: int) -> list[dict[str, torch.Tensor]]:
        """A batch of encodings as one dict per prompt (what the cache keeps)."""
        return [{k: v[i] for k, v in encoded.items()} for i in range(n)]

    def collate(self, rows: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        return {k: torch.stack([r[k] for r in rows]) for k in rows[0]}

    def decode(self, pipe, latents: torch.Tensor, height: int, width: int) -> torch.Tensor:
        vae = pipe.vae
        latents = latents.to(vae.dtype)  # some loops end in fp32 (Sana's)
        return vae.decode(latents / vae.config.scaling_factor, return_dict=False)[0]


class SDXLAdapter(SDAdapter):
    family = "sdxl"

    def encode(self, pipe, prompts, device):
        embeds, _, pooled, _ = pipe.encode_prompt(
            prompts, device=device, num_images_per_prompt=1, do_classifier_free_guidance=False
        )
        return {"prompt_embeds": embeds, "pooled_prompt_embeds": pooled}

    def negative(self, pipe, text, device):
        out = self.encode(pipe, [text], device)
        if text == "" and pipe.config.force_zeros_for_empty_prompt:  # diffusers' own choice for an empty negative
            out = {k: torch.zeros_like(v) for k, v in out.items()}
        return {"negative_" + k: v for k, v in out.items()}

    def decode(self, pipe, latents, height, width):
        vae = pipe.vae
        if vae.dtype == torch.float16 and vae.config.force_upcast:
            # SDXL's VAE overflows in fp16: it moves to fp32 once and stays there (diffusers moves
            # it there and back on every call, two copies of its weights per batch). bf16 has
            # fp32's range and needs neither.
            vae.to(torch.float32)
        latents = latents.to(vae.dtype)
        mean, std = getattr(vae.config, "latents_mean", None), getattr(vae.config, "latents_std", None)
        if mean is not None and std is not None:
            shape = (1, -1, 1, 1)
            mean = torch.tensor(mean).view(shape).to(latents)
            std = torch.tensor(std).view(shape).to(latents)
            latents = latents * std / vae.config.scaling_factor + mean
        else:
            latents = latents / vae.config.scaling_factor
        return vae.decode(latents, return_dict=False)[0]


class SD3Adapter(SDAdapter):
    family = "sd3"

    def encode(self, pipe, prompts, device):
        # the registry model's length is CLIP's tokens and T5's: T5 reads the rest (SD3: 333 - 77 = 256,
        # digits-dit 16 - 16 = 0, no T5); diffusers' default otherwise
        t5 = self.text_length - pipe.tokenizer_max_length if self.text_length else 256
        embeds, _, pooled, _ = pipe.encode_prompt(
            prompts,
            None,
            None,
            device=device,
            num_images_per_prompt=1,
            do_classifier_free_guidance=False,
            max_sequence_length=t5,
        )
        return {"prompt_embeds": embeds, "pooled_prompt_embeds": pooled}

    def negative(self, pipe, text, device):
        return {"negative_" + k: v for k, v in self.encode(pipe, [text], device).items()}

    def uses_guidance(self, pipe, guidance):
        return guidance > 1.0

    def latent_shape(self, pipe, height, width):
        return (pipe.transformer.config.in_channels, height // pipe.vae_scale_factor, width // pipe.vae_scale_factor)

    def decode(self, pipe, latents, height, width):
        vae = pipe.vae
        latents = latents.to(vae.dtype)
        return vae.decode(latents / vae.config.scaling_factor + vae.config.shift_factor, return_dict=False)[0]


class FluxAdapter(SD3Adapter):
    """Guidance is distilled into the model (dev: an embedding of guidance_scale; schnell: none),
    never a second, negative pass. Latents are packed 2x2 into tokens."""

    family = "flux"

    def encode(self, pipe, prompts, device):
        length = self.text_length or 512  # the registry model's (schnell: 256); diffusers' default otherwise
        embeds, pooled, _ = pipe.encode_prompt(
            prompts, None, device=device, num_images_per_prompt=1, max_sequence_length=length
        )
        return {"prompt_embeds": embeds, "pooled_prompt_embeds": pooled}

    def uses_guidance(self, pipe, guidance):
        return False

    def latent_shape(self, pipe, height, width):
        scale = pipe.vae_scale_factor * 2  # the VAE's factor, then the 2x2 packing
        return (pipe.transformer.config.in_channels // 4, 2 * (height // scale), 2 * (width // scale))

    def prepare_latents(self, pipe, noise):
        b, c, h, w = noise.shape
        return pipe._pack_latents(noise, b, c, h, w)

    def decode(self, pipe, latents, height, width):
        return super().decode(pipe, pipe._unpack_latents(latents, height, width, pipe.vae_scale_factor), height, width)


class PixArtAdapter(SD3Adapter):
    """T5 alone, with its attention mask passed along; captions not cleaned (see encode); no
    resolution binning (the recipe's size is the size made)."""

    family = "pixart"

    def encode(self, pipe, prompts, device):
        # clean_caption off: diffusers' cleaning needs bs4 and ftfy and silently skips without them,
        # so the same recipe would make other embeddings on another machine
        embeds, mask, _, _ = pipe.encode_prompt(
            prompts, do_classifier_free_guidance=False, device=device, clean_caption=False
        )
        return {"prompt_embeds": embeds, "prompt_attention_mask": mask}

    def call_kwargs(self, guidance):
        # negative_prompt: its default "" clashes with embeddings passed in
        return {"use_resolution_binning": False, "negative_prompt": None, "clean_caption": False}

    def decode(self, pipe, latents, height, width):
        return SDAdapter.decode(self, pipe, latents, height, width)


class SanaAdapter(PixArtAdapter):
    """A Gemma encoder read with the pipeline's default "complex human instruction" in front of
    each prompt (as its own call does); the negative prompt without it, at the same length."""

    family = "sana"

    def _instruction(self, pipe):
        import inspect

        return inspect.signature(type(pipe).__call__).parameters["complex_human_instruction"].default

    def encode(self, pipe, prompts, device):
        embeds, mask, _, _ = pipe.encode_prompt(
            prompts,
            do_classifier_free_guidance=False,
            device=device,
            complex_human_instruction=self._instruction(pipe),
        )
        return {"prompt_embeds": embeds, "prompt_attention_mask": mask}

    def negative(self, pipe, text, device):
        _, _, embeds, mask = pipe.encode_prompt(
            [""],
            do_classifier_free_guidance=True,
            negative_prompt=text,
            device=device,
            complex_human_instruction=self._instruction(pipe),
        )
        return {"negative_prompt_embeds": embeds, "negative_prompt_attention_mask": mask}


class Lumina2Adapter(SD3Adapter):
    """A Gemma encoder's penultimate states behind the pipeline's system prompt, with the mask."""

    family = "lumina2"

    def encode(self, pipe, prompts, device):
        embeds, mask, _, _ = pipe.encode_prompt(prompts, do_classifier_free_guidance=False, device=device)
        return {"prompt_embeds": embeds, "prompt_attention_mask": mask}

    def negative(self, pipe, text, device):
        _, _, embeds, mask = pipe.encode_prompt(
            [""], do_classifier_free_guidance=True, negative_prompt=text, device=device
        )
        return {"negative_prompt_embeds": embeds, "negative_prompt_attention_mask": mask}


class QwenImageAdapter(FluxAdapter):
    """Qwen2.5-VL's last states behind the pipeline's chat template, each prompt as long as it is
    (padded per batch, with the mask, as the pipeline pads); packed latents; its own 3-D VAE.
    Guidance > 1 is true CFG (true_cfg_scale) against the recipe's negative prompt, empty by
    default, as for every other family; diffusers' own call guides only when it is given a
    negative prompt, so a plain call matches with negative_prompt="" passed."""

    family = "qwen-image"

    def encode(self, pipe, prompts, device):
        embeds, mask = pipe.encode_prompt(prompts, device=device)
        if mask is None:  # diffusers drops a mask with nothing masked; the rows need their lengths
            mask = torch.ones(embeds.shape[:2], dtype=torch.long, device=embeds.device)
        return {"prompt_embeds": embeds, "prompt_embeds_mask": mask}

    def rows(self, encoded, n):
        keys = list(encoded)
        mask = encoded[keys[1]]
        return [{k: v[i, : int(mask[i].sum())] for k, v in encoded.items()} for i in range(n)]

    def collate(self, rows):
        longest = max(r[next(iter(r))].shape[0] for r in rows)
        out = {}
        for k in rows[0]:
            padded = [torch.cat([r[k], r[k].new_zeros(longest - r[k].shape[0], *r[k].shape[1:])]) for r in rows]
            out[k] = torch.stack(padded)
        return out

    def negative(self, pipe, text, device):
        return {"negative_" + k: v for k, v in self.encode(pipe, [text], device).items()}

    def uses_guidance(self, pipe, guidance):
        return guidance > 1.0

    def call_kwargs(self, guidance):
        return {"true_cfg_scale": guidance, "guidance_scale": None}

    def decode(self, pipe, latents, height, width):
        vae = pipe.vae
        latents = pipe._unpack_latents(latents, height, width, pipe.vae_scale_factor).to(vae.dtype)
        shape = (1, vae.config.z_dim, 1, 1, 1)
        mean = torch.tensor(vae.config.latents_mean).view(shape).to(latents)
        std = torch.tensor(vae.config.latents_std).view(shape).to(latents)
        return vae.decode(latents * std + mean, return_dict=False)[0][:, :, 0]


ADAPTERS = {
    a.family: a
    for a in (
        SDAdapter,
        SDXLAdapter,
        SD3Adapter,
        FluxAdapter,
        PixArtAdapter,
        SanaAdapter,
        Lumina2Adapter,
        QwenImageAdapter,
    )
}
SUPPORTED_FAMILIES = tuple(ADAPTERS)  # the families the engine generates with
