"""Generator: a diffusers pipeline turned into `samples -> uint8 images`.

- Text embeddings are computed once per unique prompt (and once for the negative prompt) and
  reused from a bounded LRU cache; the pipeline receives `prompt_embeds`, never strings.
- Each sample's initial latents come from a CPU `torch.Generator` seeded with that sample's
  seed, drawn one sample at a time, so a sample's noise (and, up to kernel batching effects,
  its image) does not depend on which batch it lands in or on the device.
- The pipeline stops at latents; the VAE decode runs here, so the time per stage is known.

Images leave as a numpy array `[B, H, W, 3]` of uint8 on the CPU, rounded the way diffusers'
`output_type="pil"` rounds.

What differs between pipeline families (embeddings, negatives, noise shape, decoding) is in
adapters.py: SD 1.x/2.x, SDXL, SD3/3.5, FLUX, PixArt-alpha, Sana, Lumina-2 and Qwen-Image. Noise a
scheduler draws while sampling (ancestral ones) comes from per-sample generators too.

A refiner (SDXL's) is a second pipeline: the base denoises the first `high_noise_fraction` of the
steps and hands over its latents, the refiner the rest; its prompt embeddings are cached beside
the base's, under REFINER-prefixed keys.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import os
import time
from collections import OrderedDict
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from .errors import InputError, ModelUnavailable
from .plan import Sample
from .registry import ModelSpec

SUPPORTED_FAMILIES = ("sd", "sdxl", "sd3", "flux", "pixart", "sana", "lumina2", "qwen-image")  # those with an adapter (adapters.py)
PIPELINE_FAMILY = {"StableDiffusionPipeline": "sd", "StableDiffusionXLPipeline": "sdxl", "StableDiffusionXLImg2ImgPipeline": "sdxl",
                   "StableDiffusion3Pipeline": "sd3", "FluxPipeline": "flux",
                   "PixArtAlphaPipeline": "pixart", "SanaPipeline": "sana", "Lumina2Pipeline": "lumina2", "QwenImagePipeline": "qwen-image"}


def _family_of(pipe) -> str:
    """The family load_pipeline recorded, else the pipeline class's."""
    family = getattr(pipe, "_t2i_family", None) or PIPELINE_FAMILY.get(type(pipe).__name__)
    if family is None:
        raise InputError("model", type(pipe).__name__, f"no generator adapter for this pipeline class; families: {', '.join(SUPPORTED_FAMILIES)}")
    return family


REFINER = "refiner."  # the key prefix of a refiner's prompt inputs in the embedding cache
EMBED_CACHE_SIZE = 4096  # prompts; captions regimes have one prompt per image
EMBED_CACHE_BYTES = 1 << 30  # and at most 1 GiB: one FLUX prompt is 4 MiB in bf16, 16 MiB in fp32


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise InputError("device", name, "expected auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError("device", name, "CUDA is not available on this machine; use cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise InputError("device", name, f"this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif device.type != "cpu":
        raise InputError("device", name, "expected auto, cpu, cuda or cuda:N")
    return device


def resolve_dtype(spec: ModelSpec, device: torch.device) -> torch.dtype:
    # Half precision on a CPU is slow and, for some ops, missing: the CPU runs float32.
    return getattr(torch, spec.dtype) if device.type == "cuda" else torch.float32


ATTENTION = ("sdpa", "triton")


def check_attention(attention: str, device: torch.device, field_name: str = "attention") -> None:
    """Before anything loads: the attention implementation exists and can run on `device`."""
    from ..kernels.triton_env import interpreting

    if attention not in ATTENTION:
        raise InputError(field_name, attention, f"expected one of {', '.join(ATTENTION)}")
    if attention == "triton" and device.type != "cuda" and not interpreting():
        raise InputError(field_name, attention, f"the Triton kernels run on CUDA devices; this run is on {device.type} "
                         f"(use {'torch' if field_name == '--norm' else 'sdpa'})")


def check_runtime(backend: str, attention: str, device: torch.device, dtype: torch.dtype, model: str | None = None) -> None:
    """Before anything loads: the backend exists, takes the model, runs here in this dtype, and
    goes with the attention."""
    from ..export.build import check_backend

    precision = {torch.float16: "fp16", torch.bfloat16: "bf16"}.get(dtype, "fp32")
    check_backend(backend, precision, device, model=model)
    if backend != "eager" and attention == "triton":
        raise InputError("attention", attention, f"the Triton kernels run in PyTorch's eager modules; with --backend {backend} "
                         "use --attention sdpa (and --norm torch)")


def load_pipeline(spec: ModelSpec, weights: str | None, device: torch.device, dtype: torch.dtype, attention: str = "sdpa",
                  backend: str = "eager", resolution: tuple[int, int] | None = None, batch: int = 16):
    """Build (test models) or load (hub id or local folder) the model's diffusers pipeline, with
    its attention routed through our Triton kernel if asked (kernels.install)."""
    if spec.family not in SUPPORTED_FAMILIES:
        raise InputError("model", spec.name, f"the {spec.family} family has no generator adapter yet; supported families: {', '.join(SUPPORTED_FAMILIES)}")
    if spec.builder and weights is None:
        pipe = builder(spec)()
        # Built modules start in training mode: the text encoders' dropout (T5's) would fire, so they
        # go to eval mode. The denoisers and VAEs have no dropout and stay as built: eval mode computes
        # the same there but with other memory layouts (ResnetBlock2D), so other last bits, which
        # would move pixels of test models whose datasets earlier versions made.
        for name, component in pipe.components.items():
            if name.startswith("text_encoder") and isinstance(component, torch.nn.Module):
                component.eval()
    else:
        pipe = _from_pretrained(spec, weights or bundled_path(spec), dtype)
    apply_registry_settings(spec, pipe)
    if pipe.dtype != dtype:  # built models come in float32; loaded ones already in dtype
        pipe = pipe.to(dtype=dtype)
    pipe = pipe.to(device)
    if attention == "triton":
        from ..kernels import install

        install(pipe, attention="triton")
    if backend != "eager":  # built (or found in the artifact cache) for this resolution
        from ..export.build import apply_backend
        from ..export.specs import Profile

        height, width = resolution or spec.resolution
        apply_backend(pipe, spec.name, backend, device, Profile((1, batch, 2 * batch), height, width))
    return pipe


def builder(spec: ModelSpec):
    """The function a test model's registry entry names ("module:function"), which builds its
    pipeline with random weights (a refiner's takes the base pipeline)."""
    module, func = spec.builder.split(":")
    return getattr(importlib.import_module(module), func)


def apply_registry_settings(spec: ModelSpec, pipe) -> None:
    """What the registry changes in any pipeline of the model, however it was made: the
    scheduler the paper's code used, and no progress bar (a tqdm write per step)."""
    pipe._t2i_family = spec.family
    if spec.family == "flux":  # the T5 length the paper's code used (schnell 256, dev 512), from the shipped text config
        from .architectures import text_length

        length = text_length(spec.name)
        if length:
            pipe._t2i_max_sequence_length = length
    if spec.scheduler:
        import diffusers

        pipe.scheduler = getattr(diffusers, spec.scheduler).from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)


def bundled_path(spec: ModelSpec) -> str | None:
    """The folder of weights shipped inside the package, for models that have one."""
    return str(Path(__file__).resolve().parents[1] / "assets" / spec.bundled) if spec.bundled else None


def _from_pretrained(spec: ModelSpec, weights: str | None, dtype: torch.dtype, flag: str = "--weights", **components):
    """`components`: modules to use instead of the folder's own (a refiner's shared ones)."""
    import diffusers

    source = weights or spec.hub_id
    if weights is not None and not Path(weights).is_dir():
        raise InputError(flag.removeprefix("--").replace("-", "_"), weights, "expected a local diffusers folder (with model_index.json)")
    extra = {"safety_checker": None, "requires_safety_checker": False} if "StableDiffusion" in spec.pipeline and spec.family == "sd" else {}
    # diffusers 0.36 renamed torch_dtype to dtype and deprecates the old name.
    dtype_kw = "dtype" if _version_tuple(diffusers.__version__) >= (0, 36) else "torch_dtype"
    try:
        return getattr(diffusers, spec.pipeline).from_pretrained(
            source, use_safetensors=True, trust_remote_code=False, **{dtype_kw: dtype}, **extra, **components
        )
    except (OSError, ValueError) as e:
        raise unavailable(spec, source, e, flag) from None


def unavailable(spec: ModelSpec, source: str, error: Exception, flag: str = "--weights") -> ModelUnavailable:
    """The error for weights (or a config) that could not be loaded: why, and how to get them."""
    field = "refiner" if flag == "--refiner-weights" else "model"
    local = Path(source).is_dir()
    offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0") and not local
    how = (f"fetch them on a connected machine with `hf download {spec.hub_id}` (they land in the hub cache, which HF_HOME points to) or "
           if spec.hub_id and not local else "") + f"pass {flag} PATH to a complete local diffusers folder"
    reason = "HF_HUB_OFFLINE is set and they are not in the local cache" if offline else f"{error.__class__.__name__}: {str(error).splitlines()[0][:160]}"
    return ModelUnavailable(field, spec.name, f"weights of {source} could not be loaded ({reason}); {how}")


def _version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in version.split(".")[:2] if p.isdigit())


class Generator:
    """Turns lists of samples into images with one pipeline and fixed sampling settings; what
    differs between pipeline families is in its adapter (adapters.py)."""

    def __init__(self, pipe, *, steps: int, guidance: float, height: int, width: int, negative_prompt: str = "", family: str | None = None,
                 zero_guidance: str = "conditional", refiner=None, high_noise_fraction: float | None = None):
        from .adapters import ADAPTERS
        from .flops import denoiser

        self.pipe = pipe
        self.adapter = ADAPTERS[family or _family_of(pipe)]
        self.device, self.dtype = pipe.device, denoiser(pipe).dtype
        self.steps, self.guidance = steps, guidance
        self.height, self.width = height, width
        self.negative_prompt = negative_prompt
        # the paper's guidance 0: noise = uncond + 0 * (cond - uncond), the negative branch alone
        self.unconditional = zero_guidance == "unconditional" and guidance == 0
        self.latent_shape = self.adapter.latent_shape(pipe, height, width)
        self._cache: OrderedDict[str, dict[str, torch.Tensor]] = OrderedDict()
        self._negative: dict[str, torch.Tensor] | None = None
        self.refiner, self.high_noise_fraction = refiner, high_noise_fraction
        # the paper's guidance 0 is CFG's negative branch alone, and a refiner's negative branch
        # conditions on the negative aesthetic score (2.5 by default; the positive one is 6.0)
        self._refiner_extra = ({"aesthetic_score": inspect.signature(type(refiner).__call__).parameters["negative_aesthetic_score"].default}
                               if refiner is not None and self.unconditional else {})
        if refiner is not None and not 0 < (high_noise_fraction or 0) < 1:
            raise ValueError(f"high_noise_fraction={high_noise_fraction!r}: a refiner needs the base's share of the steps, in (0, 1)")
        # the pipelines whose prompt inputs the cache keeps, each under its key prefix
        self._stages = [("", pipe, self.adapter)] + ([(REFINER, refiner, ADAPTERS[_family_of(refiner)])] if refiner is not None else [])
        self.stage_seconds = {"text_encoding": 0.0, "denoising": 0.0, **({"refining": 0.0} if refiner is not None else {}), "decoding": 0.0}

    @classmethod
    def for_recipe(cls, pipe, recipe, refiner=None) -> Generator:
        """The Generator of `recipe`'s sampling settings (its refiner from load_refiner)."""
        if (recipe.refiner is None) != (refiner is None):
            raise ValueError(f"the recipe's refiner is {recipe.refiner!r}; pass its pipeline (load_refiner), or none without one")
        return cls(pipe, steps=recipe.steps, guidance=recipe.guidance, height=recipe.resolution[0], width=recipe.resolution[1],
                   negative_prompt=recipe.negative_prompt, zero_guidance=recipe.zero_guidance, refiner=refiner,
                   high_noise_fraction=recipe.high_noise_fraction)

    @property
    def uses_guidance(self) -> bool:
        return self.adapter.uses_guidance(self.pipe, self.guidance)

    @torch.inference_mode()
    def generate(self, samples: list[Sample]) -> np.ndarray:
        with self._stage("text_encoding"):
            if self.unconditional:
                embeds = {k.replace("negative_", "", 1): v for k, v in self.negative_inputs(len(samples)).items()}
            else:
                embeds = self.prompt_inputs([s.prompt for s in samples])
                if self.uses_guidance:
                    embeds.update(self.negative_inputs(len(samples)))
        refiner_embeds = {k.removeprefix(REFINER): embeds.pop(k) for k in list(embeds) if k.startswith(REFINER)}
        with self._stage("denoising"):
            call = dict(embeds, latents=self.adapter.prepare_latents(self.pipe, self.initial_latents(samples)),
                        num_inference_steps=self.steps, guidance_scale=self.guidance, height=self.height, width=self.width,
                        output_type="latent", generator=self.step_generators(samples))
            call.update(self.adapter.call_kwargs(self.guidance))  # a family's own (Qwen-Image: true_cfg_scale)
            if self.refiner is not None:
                call["denoising_end"] = float(self.high_noise_fraction)
            latents = self.pipe(**call).images
        if self.refiner is not None:
            with self._stage("refining"):  # the same step grid, from where the base stopped, with no noise added
                latents = self.refiner(**refiner_embeds, image=latents, num_inference_steps=self.steps, guidance_scale=self.guidance,
                                       denoising_start=float(self.high_noise_fraction), output_type="latent",
                                       generator=self.step_generators(samples, "refiner"), **self._refiner_extra).images
        with self._stage("decoding"):
            return self.decode(latents)

    def initial_latents(self, samples: list[Sample]) -> torch.Tensor:
        noise = [torch.randn(self.latent_shape, generator=torch.Generator("cpu").manual_seed(s.seed)) for s in samples]
        return torch.stack(noise).to(self.device, self.dtype)

    @staticmethod
    def step_generators(samples: list[Sample], stage: str = "steps") -> list[torch.Generator]:
        """Per-sample CPU generators for noise a scheduler draws during sampling (ancestral ones:
        SDXL-turbo's Euler-a), from a seed derived from the sample's, so the image does not depend
        on the batch, the device or the process's random state; the initial noise uses the seed
        itself, a refiner's steps a seed of their own."""
        return [torch.Generator("cpu").manual_seed(int.from_bytes(hashlib.sha256(f"{s.seed}:{stage}".encode()).digest()[:8], "little"))
                for s in samples]

    def prompt_inputs(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        """The pipeline's prompt keyword arguments for `prompts`, each unique prompt encoded once."""
        missing = list(dict.fromkeys(p for p in prompts if p not in self._cache))
        if missing:
            rows: list[dict[str, torch.Tensor]] = [{} for _ in missing]
            for prefix, pipe, adapter in self._stages:
                for row, part in zip(rows, adapter.rows(adapter.encode(pipe, missing, self.device), len(missing))):
                    row.update({prefix + k: v for k, v in part.items()})
            for p, row in zip(missing, rows):
                self._cache[p] = row
        for p in prompts:
            self._cache.move_to_end(p)
        out = self.adapter.collate([self._cache[p] for p in prompts])
        while len(self._cache) > EMBED_CACHE_SIZE or (len(self._cache) > 1 and self._cache_bytes() > EMBED_CACHE_BYTES):
            self._cache.popitem(last=False)
        return out

    def _cache_bytes(self) -> int:
        row = next(iter(self._cache.values()))  # rows are alike in size (Qwen-Image's vary a little)
        return len(self._cache) * sum(t.numel() * t.element_size() for t in row.values())

    def negative_inputs(self, n: int) -> dict[str, torch.Tensor]:
        if self._negative is None:
            self._negative = {prefix + k: v for prefix, pipe, adapter in self._stages
                              for k, v in adapter.negative(pipe, self.negative_prompt, self.device).items()}
        return {k: v.expand(n, *v.shape[1:]) for k, v in self._negative.items()}

    def decode(self, latents: torch.Tensor) -> np.ndarray:
        images = self.adapter.decode(self.pipe, latents, self.height, self.width)
        images = (images.float() / 2 + 0.5).clamp(0, 1)
        return (images * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()

    @contextmanager
    def _stage(self, name: str):
        start = time.perf_counter()
        yield
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.stage_seconds[name] += time.perf_counter() - start
