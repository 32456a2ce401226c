"""Export specs: for each kind of pipeline component, one declaration of what goes in and out.

A spec names the inputs (in order) with their shapes, where "batch" marks the dynamic axis;
the outputs; a wrapper module whose forward takes exactly those inputs as tensors (what an
exporter traces); sample inputs at any batch size; and the min/opt/max shapes of a profile
(what TensorRT builds for). Shapes follow the pipeline at a resolution: latents are the image
size over the VAE's scale factor, FLUX packs 2x2 latent patches into tokens.

Kinds: the denoiser (UNet2DConditionModel, with SDXL's added text_embeds/time_ids;
SD3Transformer2DModel; FluxTransformer2DModel, with its guidance where the model has one;
PixArt, Sana, Lumina-2 and Qwen-Image transformers with their caption masks, through the
wrappers of dit_wrappers.py), the VAE decoder (AutoencoderKL, Sana's AutoencoderDC, Qwen-Image's
3-D AutoencoderKLQwenImage for one frame), and the text encoders (CLIP, CLIP with projection,
T5). Gemma-2 (Sana, Lumina-2) and Qwen2.5-VL (Qwen-Image) stay in PyTorch: see PYTORCH_ONLY.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ..errors import InputError
from ..models.architectures import CONFIG_ROOT, architecture
from .dit_wrappers import _Lumina2, _PixArt, _QwenImage, _Sana

BATCH = "batch"
DENOISERS = (  # what denoiser_spec declares
    "UNet2DConditionModel",
    "SD3Transformer2DModel",
    "FluxTransformer2DModel",
    "PixArtTransformer2DModel",
    "SanaTransformer2DModel",
    "Lumina2Transformer2DModel",
    "QwenImageTransformer2DModel",
)
VAES = ("AutoencoderKL", "AutoencoderDC", "AutoencoderKLQwenImage", "AutoencoderTiny")
# Text encoders left in PyTorch, and why: the engine encodes each unique prompt once (the
# embedding cache), so their share of a run's time is nil, and these two are decoder LLMs
# (Gemma-2 2B; Qwen2.5-VL 7B, whose text path runs inside a vision-language model) whose export
# would be the largest files of a build for no measurable gain.
PYTORCH_ONLY = {
    "Gemma2Model": "Gemma-2 runs once per unique prompt (the embedding cache); an export would not pay",
    "Qwen2_5_VLForConditionalGeneration": "Qwen2.5-VL's text path runs once per unique prompt (the "
    "embedding cache); an export of a 7B vision-language model would not pay",
}
# Components the TorchScript exporter cannot take (torch 2.14, found on the tiny models), and why;
# the others export either way, TorchScript in a fraction of the time
NEEDS_DYNAMO = {
    "FluxTransformer2DModel": "it has no ONNX form for aten::rms_norm",
    "QwenImageTransformer2DModel": "its graph fails in ONNX Runtime at run time (a broadcast in the joint attention)",
    "AutoencoderDC": "it writes a Transpose with perm -1, which ONNX Runtime refuses to load",
    "AutoencoderKLQwenImage": "it has no ONNX form for aten::_upsample_nearest_exact2d",
}
# The caption length each pipeline pads to by default (PixArt's T5 120, Sana 300, Lumina-2 256;
# Qwen-Image pads each batch to its longest prompt, at most 512, and its export takes 512 with
# the rest masked: swap.py pads)
TEXT_LENGTHS = {
    "PixArtTransformer2DModel": 120,
    "SanaTransformer2DModel": 300,
    "Lumina2Transformer2DModel": 256,
    "QwenImageTransformer2DModel": 512,
}


def unsupported_reason(model: str) -> str | None:
    """Why the ONNX / TensorRT backends cannot take a registry model, judged from its shipped
    architecture config before anything loads (None: they can, or the model has no config)."""
    if not (CONFIG_ROOT / model).is_dir():
        return None  # test models and the embedded one: SD1.5-shaped
    meta = architecture(model)["meta"]
    denoiser, vae = meta["denoiser_class"].split(" ")[0], meta.get("vae_class", "AutoencoderKL").split(" ")[0]
    if denoiser not in DENOISERS:
        return f"its denoiser {denoiser} has no export spec yet (supported: {', '.join(DENOISERS)})"
    if vae not in VAES:
        return f"its VAE {vae} has no export spec yet (supported: {', '.join(VAES)})"
    return None


@dataclass(frozen=True)
class Profile:
    """Batch sizes (min, opt, max) and the image size in pixels the artifacts are built for."""

    batch: tuple[int, int, int] = (1, 16, 32)
    height: int = 512
    width: int = 512


def parse_profile(batch: str | None, res: str | None, default_res: tuple[int, int], multiple: int = 8) -> Profile:
    """`--batch MIN:OPT:MAX` (or one size) and `--res SIZE` or `HxW` (multiples of the model's `multiple`)."""
    sizes: tuple[int, ...] = (1, 16, 32)
    if batch:
        parts = batch.split(":")
        if len(parts) not in (1, 3) or not all(p.isascii() and p.isdigit() and 1 <= int(p) <= 4096 for p in parts):
            raise InputError("--batch", batch, "expected MIN:OPT:MAX (or one size), each from 1 to 4096, e.g. 1:16:32")
        sizes = tuple(int(p) for p in parts) * (3 if len(parts) == 1 else 1)
        if not sizes[0] <= sizes[1] <= sizes[2]:
            raise InputError("--batch", batch, "expected MIN <= OPT <= MAX")
    height, width = default_res
    if res:
        h, x, w = res.lower().partition("x")
        w = w if x else h
        if not (
            h.isascii()
            and h.isdigit()
            and w.isascii()
            and w.isdigit()
            and multiple <= int(h) <= 4096
            and multiple <= int(w) <= 4096
            and int(h) % multiple == 0
            and int(w) % multiple == 0
        ):
            raise InputError("--res", res, f"expected a size or HxW, multiples of {multiple} up to 4096")
        height, width = int(h), int(w)
    return Profile(sizes, height, width)


@dataclass(frozen=True)
class Input:
    name: str
    shape: tuple  # ints, with BATCH for the dynamic batch axis
    dtype: torch.dtype | None = None  # None: the component's float dtype


@dataclass
class ComponentSpec:
    component: str  # the pipeline attribute: unet, transformer, vae, text_encoder, text_encoder_2, ...
    kind: str  # denoiser, vae_decoder or text_encoder
    inputs: list[Input]
    outputs: list[str]
    module: nn.Module  # forward(*inputs) -> a tensor or a tuple of tensors, in `outputs` order
    output_shape: tuple = ()  # the first output's shape, BATCH for the batch axis
    notes: dict = field(default_factory=dict)

    @property
    def source(self) -> nn.Module:
        """The diffusers / transformers module the wrapper calls."""
        return next(self.module.children())

    def shape(self, inp: Input, batch: int) -> tuple[int, ...]:
        return tuple(batch if d == BATCH else d for d in inp.shape)

    # Timesteps go in as fp32 whatever the precision: eager models build the time embedding in
    # fp32, and fp16 would round 951.37 to 951.5 (bf16: to 952).

    def sample_inputs(
        self, batch: int, dtype: torch.dtype = torch.float32, device="cpu", seed: int = 0
    ) -> tuple[torch.Tensor, ...]:
        g = torch.Generator("cpu").manual_seed(seed)
        out = []
        for inp in self.inputs:
            shape = self.shape(inp, batch)
            if inp.name.endswith("mask"):  # a caption mask: a prefix of ones, as tokenizers pad on the right
                lengths = torch.randint(1, shape[1] + 1, (shape[0], 1), generator=g)
                out.append((torch.arange(shape[1])[None] < lengths).long())
            elif inp.dtype == torch.int64:
                high = self.notes.get("vocab_size", 2) if inp.name == "input_ids" else 2
                out.append(torch.randint(0, high, shape, generator=g))
            elif inp.name == "timestep":
                out.append(torch.rand(shape, generator=g) * self.notes.get("timestep_scale", 1000.0))
            else:
                out.append(torch.randn(shape, generator=g))
        return tuple(t.to(device, inp.dtype or dtype) for t, inp in zip(out, self.inputs))

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        axes = {i.name: {0: BATCH} for i in self.inputs if i.shape and i.shape[0] == BATCH}
        axes.update({name: {0: BATCH} for name in self.outputs})
        return axes

    def profile_shapes(self, profile: Profile) -> dict[str, tuple[tuple[int, ...], ...]]:
        """name -> (min, opt, max) shapes, for TensorRT's optimisation profile."""
        return {i.name: tuple(self.shape(i, b) for b in profile.batch) for i in self.inputs}


# --- the wrappers an exporter traces: plain tensors in, tensors out ------------------------------


class _UNet(nn.Module):
    def __init__(self, unet, added: bool):
        super().__init__()
        self.unet, self.added = unet, added

    def forward(self, sample, timestep, encoder_hidden_states, text_embeds=None, time_ids=None):
        added = {"text_embeds": text_embeds, "time_ids": time_ids} if self.added else None
        return self.unet(
            sample, timestep, encoder_hidden_states=encoder_hidden_states, added_cond_kwargs=added, return_dict=False
        )[0]


class _SD3(nn.Module):
    def __init__(self, transformer):
        super().__init__()
        self.transformer = transformer

    def forward(self, hidden_states, encoder_hidden_states, pooled_projections, timestep):
        return self.transformer(
            hidden_states=hidden_states,
            encoder_hidden_states=encoder_hidden_states,
            pooled_projections=pooled_projections,
            timestep=timestep,
            return_dict=False,
        )[0]


class _Flux(nn.Module):
    def __init__(self, transformer):
        super().__init__()
        self.transformer = transformer

    def forward(
        self, hidden_states, encoder_hidden_states, pooled_projections, timestep, img_ids, txt_ids, guidance=None
    ):
        return self.transformer(
            hidden_states=hidden_states,
            encoder_hidden_states=encoder_hidden_states,
            pooled_projections=pooled_projections,
            timestep=timestep,
            img_ids=img_ids,
            txt_ids=txt_ids,
            guidance=guidance,
            return_dict=False,
        )[0]


class _VaeDecoder(nn.Module):
    def __init__(self, vae):
        super().__init__()
        self.vae = vae

    def forward(self, latent):
        return self.vae.decode(latent, return_dict=False)[0]


class _TextEncoder(nn.Module):
    """input_ids -> the hidden states pipelines read: the last, the penultimate (SDXL, SD3's
    CLIPs) and, for CLIP, the pooled embedding (projected where the model has a projection)."""

    def __init__(self, encoder, pooled: str | None):
        super().__init__()
        self.encoder, self.pooled = encoder, pooled

    def forward(self, input_ids):
        out = self.encoder(input_ids, output_hidden_states=self.pooled is not None, return_dict=True)
        if self.pooled is None:  # T5: the last hidden state only
            return out.last_hidden_state
        return out.last_hidden_state, out.hidden_states[-2], getattr(out, self.pooled)


# --- one spec per component ------------------------------------------------------------------------


def denoiser_spec(pipe, profile: Profile, text_len: int | None = None) -> ComponentSpec:
    name = "unet" if getattr(pipe, "unet", None) is not None else "transformer"
    model = getattr(pipe, name)
    cls = type(model).__name__
    cfg = model.config
    scale = getattr(pipe, "vae_scale_factor", 8)
    h, w = profile.height // scale, profile.width // scale
    if cls == "UNet2DConditionModel":
        text = text_len or getattr(getattr(pipe, "tokenizer", None), "model_max_length", 77)  # CLIP pads to its length
        inputs = [
            Input("sample", (BATCH, cfg.in_channels, h, w)),
            Input("timestep", (BATCH,), torch.float32),
            Input("encoder_hidden_states", (BATCH, text, cfg.cross_attention_dim)),
        ]
        added = cfg.addition_embed_type == "text_time"
        if added:  # SDXL: the pooled text embedding and the six size/crop numbers
            pooled = cfg.projection_class_embeddings_input_dim - 6 * cfg.addition_time_embed_dim
            inputs += [Input("text_embeds", (BATCH, pooled)), Input("time_ids", (BATCH, 6))]
        elif (
            cfg.addition_embed_type is not None
            or cfg.class_embed_type is not None
            or cfg.time_cond_proj_dim is not None
        ):
            raise InputError(
                "model",
                cls,
                "this UNet takes conditioning the exporter does not declare (class or timestep-cond embeddings)",
            )
        return ComponentSpec(
            name, "denoiser", inputs, ["out_sample"], _UNet(model, added), (BATCH, cfg.out_channels, h, w)
        )
    if cls == "SD3Transformer2DModel":
        text = text_len or 333  # SD3's pipelines: 77 CLIP tokens then 256 T5 tokens
        inputs = [
            Input("hidden_states", (BATCH, cfg.in_channels, h, w)),
            Input("encoder_hidden_states", (BATCH, text, cfg.joint_attention_dim)),
            Input("pooled_projections", (BATCH, cfg.pooled_projection_dim)),
            Input("timestep", (BATCH,), torch.float32),
        ]
        return ComponentSpec(name, "denoiser", inputs, ["out_sample"], _SD3(model), (BATCH, cfg.out_channels, h, w))
    if cls == "FluxTransformer2DModel":
        text = text_len or 512
        tokens, channels = (h // 2) * (w // 2), cfg.in_channels  # in_channels counts the packed 2x2 patch already
        inputs = [
            Input("hidden_states", (BATCH, tokens, channels)),
            Input("encoder_hidden_states", (BATCH, text, cfg.joint_attention_dim)),
            Input("pooled_projections", (BATCH, cfg.pooled_projection_dim)),
            Input("timestep", (BATCH,), torch.float32),
            Input("img_ids", (tokens, 3)),
            Input("txt_ids", (text, 3)),
        ]
        if cfg.guidance_embeds:
            inputs.append(Input("guidance", (BATCH,)))
        out_channels = cfg.out_channels or cfg.in_channels
        return ComponentSpec(
            name,
            "denoiser",
            inputs,
            ["out_sample"],
            _Flux(model),
            (BATCH, tokens, out_channels),
            notes={"timestep_scale": 1.0, "needs_dynamo": NEEDS_DYNAMO[cls]},
        )  # FLUX takes t in [0, 1]
    if cls in TEXT_LENGTHS:
        return _dit_spec(name, model, cls, h, w, text_len or TEXT_LENGTHS[cls])
    raise InputError("model", cls, f"no export spec for this denoiser yet ({', '.join(DENOISERS)})")


def _dit_spec(name: str, model, cls: str, h: int, w: int, text: int) -> ComponentSpec:
    """PixArt, Sana, Lumina-2, Qwen-Image: latents, the caption and its 0/1 mask, the timestep."""
    cfg = model.config
    latent, notes, extra = (BATCH, cfg.in_channels, h, w), {}, []
    if cls == "PixArtTransformer2DModel":
        caption, module, out = cfg.caption_channels, _PixArt(model), (BATCH, cfg.out_channels, h, w)
        if model.use_additional_conditions:  # the 1024 px model: image size and aspect ratio as conditions
            extra = [Input("resolution", (BATCH, 2)), Input("aspect_ratio", (BATCH, 1))]
    elif cls == "SanaTransformer2DModel":
        caption, module, out = cfg.caption_channels, _Sana(model), (BATCH, cfg.out_channels or cfg.in_channels, h, w)
    elif cls == "Lumina2Transformer2DModel":
        caption, module, out = cfg.cap_feat_dim, _Lumina2(model), (BATCH, model.out_channels, h, w)
        notes["timestep_scale"] = 1.0  # Lumina-2 takes t in [0, 1]
    else:  # Qwen-Image: packed 2x2 latent patches as tokens at one image size; the text padded to `text`
        grid = (1, h // 2, w // 2)
        latent = (BATCH, grid[1] * grid[2], cfg.in_channels)
        caption, module, out = (
            cfg.joint_attention_dim,
            _QwenImage(model, grid, text),
            latent[:2] + (cfg.out_channels * 4,),
        )
        notes.update(timestep_scale=1.0, pad_text=True, fixed={"img_shapes": grid}, needs_dynamo=NEEDS_DYNAMO[cls])
    mask = "encoder_hidden_states_mask" if cls == "QwenImageTransformer2DModel" else "encoder_attention_mask"
    inputs = [
        Input("hidden_states", latent),
        Input("encoder_hidden_states", (BATCH, text, caption)),
        Input(mask, (BATCH, text), torch.int64),
        Input("timestep", (BATCH,), torch.float32),
        *extra,
    ]
    return ComponentSpec(name, "denoiser", inputs, ["out_sample"], module, out, notes=notes)


def vae_decoder_spec(pipe, profile: Profile) -> ComponentSpec:
    vae = pipe.vae
    cls = type(vae).__name__
    if cls not in VAES:
        raise InputError("model", cls, f"no export spec for this VAE yet ({', '.join(VAES)})")
    scale = getattr(pipe, "vae_scale_factor", 8)
    h, w = profile.height // scale, profile.width // scale
    # force_upcast (SDXL's VAE): it overflows in fp16, so diffusers decodes it in fp32; so does its export
    notes = {"fp32": bool(getattr(vae.config, "force_upcast", False))}
    if cls in NEEDS_DYNAMO:
        notes["needs_dynamo"] = NEEDS_DYNAMO[cls]
    if cls == "AutoencoderKLQwenImage":  # a video VAE: one frame in, one frame out
        latent, out = Input("latent", (BATCH, vae.config.z_dim, 1, h, w)), (BATCH, 3, 1, profile.height, profile.width)
    else:
        latent = Input("latent", (BATCH, vae.config.latent_channels, h, w))
        out = (
            BATCH,
            getattr(vae.config, "out_channels", None) or vae.config.in_channels,
            profile.height,
            profile.width,
        )
    return ComponentSpec("vae", "vae_decoder", [latent], ["image"], _VaeDecoder(vae), out, notes=notes)


def text_encoder_specs(pipe) -> list[ComponentSpec]:
    specs = []
    for name, tok_name in (
        ("text_encoder", "tokenizer"),
        ("text_encoder_2", "tokenizer_2"),
        ("text_encoder_3", "tokenizer_3"),
    ):
        enc = getattr(pipe, name, None)
        if enc is None:
            continue
        cls = type(enc).__name__
        if cls in PYTORCH_ONLY:
            continue
        tokenizer = getattr(pipe, tok_name, None)
        length = min(getattr(tokenizer, "model_max_length", 77) or 77, 512)
        hidden = enc.config.d_model if cls == "T5EncoderModel" else enc.config.hidden_size
        if cls == "CLIPTextModel":
            pooled, outputs, wrapper = (
                "pooler_output",
                ["last_hidden_state", "penultimate_hidden_state", "pooled"],
                _TextEncoder(enc, "pooler_output"),
            )
        elif cls == "CLIPTextModelWithProjection":
            pooled, outputs, wrapper = (
                "text_embeds",
                ["last_hidden_state", "penultimate_hidden_state", "pooled"],
                _TextEncoder(enc, "text_embeds"),
            )
        elif cls == "T5EncoderModel":
            pooled, outputs, wrapper = None, ["last_hidden_state"], _TextEncoder(enc, None)
        else:
            raise InputError(
                "model",
                cls,
                "no export spec for this text encoder yet (CLIPTextModel, CLIPTextModelWithProjection, "
                "T5EncoderModel)",
            )
        specs.append(
            ComponentSpec(
                name,
                "text_encoder",
                [Input("input_ids", (BATCH, length), torch.int64)],
                outputs,
                wrapper,
                (BATCH, length, hidden),
                notes={"vocab_size": enc.config.vocab_size, "pooled": pooled},
            )
        )
    return specs


def pytorch_only(pipe) -> dict[str, str]:
    """The pipeline's text encoders that stay in PyTorch: component -> why."""
    found = {}
    for name in ("text_encoder", "text_encoder_2", "text_encoder_3"):
        cls = type(getattr(pipe, name, None)).__name__
        if cls in PYTORCH_ONLY:
            found[name] = PYTORCH_ONLY[cls]
    return found


def component_specs(
    pipe,
    profile: Profile,
    components: tuple[str, ...] = ("denoiser", "vae_decoder", "text_encoder"),
    text_len: int | None = None,
) -> list[ComponentSpec]:
    specs = []
    if "text_encoder" in components:
        specs += text_encoder_specs(pipe)
    if "denoiser" in components:
        specs.append(denoiser_spec(pipe, profile, text_len))
    if "vae_decoder" in components:
        specs.append(vae_decoder_spec(pipe, profile))
    return specs
