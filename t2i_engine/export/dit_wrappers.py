"""What an exporter traces for PixArt, Sana, Lumina-2 and Qwen-Image: plain tensors in, the
denoiser's output out, with the same arithmetic as diffusers' forward.

Two things in those forwards no exporter takes, and what stands in for them here:

- Complex RoPE. Lumina-2 and Qwen-Image rotate queries and keys by complex multiplication
  (`view_as_complex`), which neither ONNX exporter can write. The same rotation in real
  arithmetic (cos/sin tables, pairs of adjacent channels) is swapped in while the wrapper runs:
  `_real_rope` replaces the rotation function in the diffusers module for the call, and the
  frequency tables are handed over as (cos, sin) pairs instead of complex tensors.
- Per-sample Python loops (Lumina-2). Its forward reads each caption's length out of the mask
  (`.tolist()`) and packs caption and image tokens sample by sample; a traced graph would freeze
  the lengths of the example batch. `_Lumina2` packs with gathers instead, over a fixed length
  (all caption slots + all image tokens) with the padding masked out, which is what eager
  computes for each sample up to float rounding (masked keys weigh exactly zero).

Everything else is the model's own modules, called as diffusers calls them; the tests compare
each wrapper with the unwrapped model's forward.
"""

from __future__ import annotations

import contextlib
import importlib

import torch
from torch import nn


def rotate_real(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """diffusers' complex rotation (use_real=False) in real arithmetic: channel pairs (2i, 2i+1)
    are (re, im); `cos`/`sin` broadcast against x's [..., D/2]. In fp32, as diffusers upcasts."""
    pairs = x.float().reshape(*x.shape[:-1], -1, 2)
    re, im = pairs[..., 0], pairs[..., 1]
    out = torch.stack([re * cos - im * sin, re * sin + im * cos], dim=-1)
    return out.flatten(-2).type_as(x)


@contextlib.contextmanager
def _real_rope(module_name: str, function: str, unsqueeze: int):
    """Within the block, `module_name.function(x, freqs, ...)` takes freqs as a (cos, sin) pair
    (shaped as the complex table was, one axis to unsqueeze before broadcasting)."""
    module = importlib.import_module(module_name)
    original = getattr(module, function)

    def real(x, freqs, *args, **kwargs):
        if not isinstance(freqs, tuple):
            return original(x, freqs, *args, **kwargs)
        cos, sin = (f.unsqueeze(unsqueeze) for f in freqs)
        return rotate_real(x, cos, sin)

    setattr(module, function, real)
    try:
        yield
    finally:
        setattr(module, function, original)


def _cos_sin(table: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return table.real.float(), table.imag.float()


def _gather(table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """table [B, S, D] at index [B, T, 1] -> [B, T, D]."""
    return torch.gather(table, 1, index.expand(-1, -1, table.shape[-1]))


class _PixArt(nn.Module):
    """PixArtTransformer2DModel: the caption mask as a 0/1 input (diffusers turns it into the
    additive bias); resolution and aspect ratio as inputs where the model uses them (1024 px)."""

    def __init__(self, transformer):
        super().__init__()
        self.transformer = transformer

    def forward(self, hidden_states, encoder_hidden_states, encoder_attention_mask, timestep, resolution=None,
                aspect_ratio=None):  # fmt: skip
        return self.transformer(
            hidden_states,
            encoder_hidden_states=encoder_hidden_states,
            encoder_attention_mask=encoder_attention_mask,
            timestep=timestep,
            added_cond_kwargs={"resolution": resolution, "aspect_ratio": aspect_ratio},
            return_dict=False,
        )[0]


class _Sana(nn.Module):
    """SanaTransformer2DModel: linear self-attention, softmax cross-attention over the masked caption."""

    def __init__(self, transformer):
        super().__init__()
        self.transformer = transformer

    def forward(self, hidden_states, encoder_hidden_states, encoder_attention_mask, timestep):
        return self.transformer(
            hidden_states,
            encoder_hidden_states=encoder_hidden_states,
            encoder_attention_mask=encoder_attention_mask,
            timestep=timestep,
            return_dict=False,
        )[0]


class _FixedRope(nn.Module):
    """Qwen-Image's pos_embed for one image shape: the (image, text) tables as (cos, sin) pairs,
    computed once; the text table is cut to the call's text length."""

    def __init__(self, pos_embed, img_shape: tuple[int, int, int], max_text: int):
        super().__init__()
        with torch.no_grad():
            vid, txt = pos_embed([img_shape], max_txt_seq_len=max_text, device=torch.device("cpu"))
        for name, table in (("vid", vid), ("txt", txt)):
            cos, sin = _cos_sin(table)
            self.register_buffer(f"{name}_cos", cos, persistent=False)
            self.register_buffer(f"{name}_sin", sin, persistent=False)

    def forward(self, video_fhw, device=None, max_txt_seq_len=None):
        n = int(max_txt_seq_len)
        return (self.vid_cos, self.vid_sin), (self.txt_cos[:n], self.txt_sin[:n])


class _QwenImage(nn.Module):
    """QwenImageTransformer2DModel at one image size (its packed token grid is fixed) and up to
    `max_text` caption tokens, the per-sample caption mask as an input."""

    ROPE = ("diffusers.models.transformers.transformer_qwenimage", "apply_rotary_emb_qwen", 1)

    def __init__(self, transformer, img_shape: tuple[int, int, int], max_text: int):
        super().__init__()
        self.transformer, self.img_shape = transformer, img_shape
        self.rope = _FixedRope(transformer.pos_embed, img_shape, max_text)

    def forward(self, hidden_states, encoder_hidden_states, encoder_hidden_states_mask, timestep):
        original = self.transformer.pos_embed
        self.transformer.pos_embed = self.rope
        try:
            with _real_rope(*self.ROPE):
                return self.transformer(
                    hidden_states=hidden_states,
                    encoder_hidden_states=encoder_hidden_states,
                    encoder_hidden_states_mask=encoder_hidden_states_mask,
                    timestep=timestep,
                    img_shapes=[self.img_shape],
                    return_dict=False,
                )[0]
        finally:
            self.transformer.pos_embed = original


class _Lumina2(nn.Module):
    """Lumina2Transformer2DModel's forward without its per-sample loops (see the module notes).
    Caption lengths come from the mask (a prefix of ones, as the pipeline's tokenizer makes)."""

    ROPE = ("diffusers.models.transformers.transformer_lumina2", "apply_rotary_emb", 2)

    def __init__(self, transformer):
        super().__init__()
        self.transformer = transformer
        for axis, table in enumerate(transformer.rope_embedder.freqs_cis):  # complex, [positions, dim/2]
            cos, sin = _cos_sin(table)
            self.register_buffer(f"cos{axis}", cos, persistent=False)
            self.register_buffer(f"sin{axis}", sin, persistent=False)

    def _table(self, axis: int, which: str, index: torch.Tensor) -> torch.Tensor:
        return getattr(self, f"{which}{axis}")[index]

    def _freqs(self, which: str, pos0: torch.Tensor, pos1: torch.Tensor, pos2: torch.Tensor) -> torch.Tensor:
        """cat over the three axes of the tables at integer positions of one shape."""
        return torch.cat([self._table(a, which, p) for a, p in enumerate((pos0, pos1, pos2))], dim=-1)

    def forward(self, hidden_states, encoder_hidden_states, encoder_attention_mask, timestep):
        model = self.transformer
        batch, channels, height, width = hidden_states.shape
        p = model.config.patch_size
        hp, wp = height // p, width // p
        image, text = hp * wp, encoder_hidden_states.shape[1]
        mask = encoder_attention_mask.bool()
        caption = mask.sum(dim=1)  # each sample's caption length
        device = hidden_states.device

        temb, captions = model.time_caption_embed(hidden_states, timestep, encoder_hidden_states)

        # RoPE positions: caption token j at (j, 0, 0); image token (r, c) at (caption length, r, c)
        j = torch.arange(text, device=device)
        rows = torch.arange(hp, device=device).repeat_interleave(wp)
        cols = torch.arange(wp, device=device).repeat(hp)
        zeros_t = torch.zeros_like(j)
        live = (j[None] < caption[:, None]).unsqueeze(-1)  # padded caption slots rotate by zero, as in eager
        cap_rope = tuple(torch.where(live, self._freqs(w, j, zeros_t, zeros_t)[None], 0.0) for w in ("cos", "sin"))
        start = caption[:, None].expand(batch, image)
        grid = (rows[None].expand_as(start), cols[None].expand_as(start))
        img_rope = tuple(self._freqs(w, start, *grid) for w in ("cos", "sin"))

        x = hidden_states.view(batch, channels, hp, p, wp, p).permute(0, 2, 4, 3, 5, 1).flatten(3).flatten(1, 2)
        x = model.x_embedder(x)
        with _real_rope(*self.ROPE):
            for layer in model.context_refiner:
                captions = layer(captions, mask, cap_rope)
            for layer in model.noise_refiner:
                x = layer(x, None, img_rope, temb)

            # the joint sequence: sample i's caption, then its image tokens, then padding (masked)
            s = torch.arange(text + image, device=device)[None]
            in_caption = s < caption[:, None]
            in_image = (s >= caption[:, None]) & (s < caption[:, None] + image)
            source = torch.where(in_caption, s, text + (s - caption[:, None]).clamp(0, image - 1))
            tokens = torch.cat([captions, x], dim=1)
            joint = _gather(tokens, source.unsqueeze(-1))
            joint = joint * (in_caption | in_image).unsqueeze(-1).to(joint.dtype)
            cap_idx = source.clamp(max=text - 1).unsqueeze(-1)
            img_idx = (source - text).clamp(min=0).unsqueeze(-1)
            joint_rope = tuple(
                torch.where(in_caption.unsqueeze(-1), _gather(c, cap_idx), _gather(i, img_idx))
                for c, i in zip(self._joint_caption_rope(j, zeros_t, batch), img_rope)
            )
            keep = in_caption | in_image
            for layer in model.layers:
                joint = layer(joint, keep, joint_rope, temb)
        joint = model.norm_out(joint, temb)

        # each sample's image tokens, wherever its caption ended
        out = _gather(joint, (caption[:, None] + torch.arange(image, device=device)[None]).unsqueeze(-1))
        out = out.view(batch, hp, wp, p, p, model.out_channels).permute(0, 5, 1, 3, 2, 4)
        return out.flatten(4, 5).flatten(2, 3)

    def _joint_caption_rope(self, j, zeros_t, batch):
        """The caption tokens' rotation in the joint sequence: unlike the refiner's, not zeroed
        past the caption (those slots hold image tokens or padding and take other tables)."""
        return tuple(self._freqs(w, j, zeros_t, zeros_t)[None].expand(batch, -1, -1) for w in ("cos", "sin"))
