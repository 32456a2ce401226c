"""Export specs: for each kind of pipeline component, one declaration of what goes in and out.

A spec names the inputs (in order) with their shapes, where "batch" marks the dynamic axis;
the outputs; a wrapper module whose forward takes exactly those inputs as tensors (what an
exporter traces); sample inputs at any batch size; and the min/opt/max shapes of a profile
(what TensorRT builds for). Shapes follow the pipeline at a resolution: latents are the image
size over the VAE's scale factor, FLUX packs 2x2 latent patches into tokens.

Kinds: the denoiser (UNet2DConditionModel, with SDXL's added text_embeds/time_ids;
SD3Transformer2DModel; FluxTransformer2DModel, with its guidance where the model has one), the
VAE decoder (AutoencoderKL.decode), and the text encoders (CLIP, CLIP with projection, T5).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ..errors import InputError
from ..models.architectures import CONFIG_ROOT, architecture

BATCH = "batch"
DENOISERS = ("UNet2DConditionModel", "SD3Transformer2DModel", "FluxTransformer2DModel")  # what denoiser_spec declares
VAES = ("AutoencoderKL",)


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
            if inp.dtype == torch.int64:
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
            notes={"timestep_scale": 1.0},
        )  # FLUX takes t in [0, 1]
    raise InputError(
        "model",
        cls,
        "no export spec for this denoiser yet (UNet2DConditionModel, SD3Transformer2DModel, FluxTransformer2DModel)",
    )


def vae_decoder_spec(pipe, profile: Profile) -> ComponentSpec:
    vae = pipe.vae
    if type(vae).__name__ != "AutoencoderKL":
        raise InputError("model", type(vae).__name__, "no export spec for this VAE yet (AutoencoderKL)")
    scale = getattr(pipe, "vae_scale_factor", 8)
    latent = Input("latent", (BATCH, vae.config.latent_channels, profile.height // scale, profile.width // scale))
    # force_upcast (SDXL's VAE): it overflows in fp16, so diffusers decodes it in fp32; so does its export
    notes = {"fp32": bool(getattr(vae.config, "force_upcast", False))}
    return ComponentSpec(
        "vae",
        "vae_decoder",
        [latent],
        ["image"],
        _VaeDecoder(vae),
        (BATCH, vae.config.out_channels, profile.height, profile.width),
        notes=notes,
    )


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
