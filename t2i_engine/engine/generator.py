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

import inspect
import time
from collections import OrderedDict
from contextlib import ExitStack, contextmanager, nullcontext

import numpy as np
import torch

from ..dataset.records import Sample
from ..errors import InputError
from ..models.architectures import text_length
from ..models.decoders import decode_modules
from ..models.flops import CallFlops
from ..models.pipelines import denoiser, family_of
from ..models.registry import get_model
from ..seeds import step_seed
from .adapters import ADAPTERS, SUPPORTED_FAMILIES
from .diversity import sample_guidance
from .feature_cache import feature_cache
from .first_steps import first_steps
from .guidance import CADS, GuidanceInterval, GuidanceRewrite, set_sampler, wrapped_step

REFINER = "refiner."  # the key prefix of a refiner's prompt inputs in the embedding cache
FIRST = "first."  # and of the first-steps base model's (first_steps.py)
EMBED_CACHE_SIZE = 4096  # prompts; captions regimes have one prompt per image
EMBED_CACHE_BYTES = 1 << 30  # and at most 1 GiB: one FLUX prompt is 4 MiB in bf16, 16 MiB in fp32


def _adapter(pipe, family: str | None, text_length: int | None = None):
    """The family's adapter: the one given (the registry's), else the pipeline class's."""
    family = family or family_of(pipe)
    if family not in ADAPTERS:
        raise InputError(
            "model",
            type(pipe).__name__,
            f"no generator adapter for this pipeline class; families: {', '.join(SUPPORTED_FAMILIES)}",
        )
    return ADAPTERS[family](text_length)


@contextmanager
def _step_noise(scheduler, generators: list[torch.Generator]):
    """Noise a scheduler's step draws comes from the per-sample generators even where the pipeline
    passes none to `step` (SD3's and FLUX's pipelines; a flow scheduler with stochastic_sampling,
    a consistency student's sampler, draws noise there): `step` gets them for the call."""
    if "generator" not in inspect.signature(scheduler.step).parameters:
        yield
        return

    def wrap(step):
        def with_generators(*args, **kwargs):
            if kwargs.get("generator") is None:
                kwargs["generator"] = generators
            return step(*args, **kwargs)

        return with_generators

    with wrapped_step(scheduler, wrap):
        yield


class Generator:
    """Turns lists of samples into images with one pipeline and fixed sampling settings; what
    differs between pipeline families is in its adapter (adapters.py)."""

    def __init__(
        self,
        pipe,
        *,
        steps: int,
        guidance: float,
        height: int,
        width: int,
        negative_prompt: str = "",
        family: str | None = None,
        text_length: int | None = None,
        zero_guidance: str = "conditional",
        refiner=None,
        high_noise_fraction: float | None = None,
        sampler: str = "default",
        guidance_interval: tuple[float, float] | None = None,
        cache: dict | None = None,
        guidance_choices: tuple[float, ...] | None = None,
        guidance_schedule: str = "constant",
        apg: dict | None = None,
        cads: dict | None = None,
        tcd_gamma: float | None = None,
        first_steps: tuple | None = None,
    ):
        self.pipe = pipe
        set_sampler(pipe, sampler, steps)
        self.tcd_gamma = tcd_gamma  # TCD's stochasticity, the `eta` its scheduler's step takes
        self.guidance_interval, self.cache = guidance_interval, cache
        # diversity.py's levers: each sample's guidance (a list), its ramp, APG, CADS
        self.guidance_choices, self.guidance_schedule, self.apg, self.cads = (
            guidance_choices,
            guidance_schedule,
            apg,
            cads,
        )
        # FLOPs per image of the denoiser(s) as run, counted on the next batch when asked (count_flops)
        self.denoiser_flops_per_image: float | None = None
        self.decoder_flops_per_image: float | None = None  # likewise, the decode (the VAE or a tiny decoder)
        self._count_next = False
        self.adapter = _adapter(pipe, family, text_length)
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
        self._refiner_extra = (
            {
                "aesthetic_score": inspect.signature(type(refiner).__call__)
                .parameters["negative_aesthetic_score"]
                .default
            }
            if refiner is not None and self.unconditional
            else {}
        )
        if refiner is not None and not 0 < (high_noise_fraction or 0) < 1:
            raise ValueError(
                f"high_noise_fraction={high_noise_fraction!r}: a refiner needs the base's share of the steps, in "
                "(0, 1)"
            )
        # the pipelines whose prompt inputs the cache keeps, each under its key prefix
        self._stages = [("", pipe, self.adapter)] + (
            [(REFINER, refiner, _adapter(refiner, None))] if refiner is not None else []
        )
        # (base pipeline, k, its guidance, its family, its text length): the base's CFG for the first k steps
        self.first_steps = first_steps
        if first_steps is not None:
            base, _, _, base_family, base_length = first_steps
            self._stages.append((FIRST, base, _adapter(base, base_family, base_length)))
        self.stage_seconds = {
            "text_encoding": 0.0,
            "denoising": 0.0,
            **({"refining": 0.0} if refiner is not None else {}),
            "decoding": 0.0,
        }

    @classmethod
    def for_recipe(cls, pipe, recipe, refiner=None, first_base=None) -> Generator:
        """The Generator of `recipe`'s sampling settings, with its registry model's family and text
        length (its refiner from load_refiner, its first-steps base model's pipeline)."""
        if (recipe.refiner is None) != (refiner is None):
            raise ValueError(
                f"the recipe's refiner is {recipe.refiner!r}; pass its pipeline (load_refiner), or none without one"
            )
        if (recipe.first_steps is None) != (first_base is None):
            raise ValueError(
                f"the recipe's first_steps is {recipe.first_steps!r}; pass the base's pipeline, or none without it"
            )
        first = None
        if recipe.first_steps is not None:
            base = recipe.first_steps
            first = (
                first_base,
                base["steps"],
                base["guidance"],
                get_model(base["model"]).family,
                text_length(base["model"]),
            )
        return cls(
            pipe,
            steps=recipe.steps,
            guidance=recipe.guidance,
            height=recipe.resolution[0],
            width=recipe.resolution[1],
            negative_prompt=recipe.negative_prompt,
            family=get_model(recipe.model).family,
            text_length=text_length(recipe.model),
            zero_guidance=recipe.zero_guidance,
            refiner=refiner,
            high_noise_fraction=recipe.high_noise_fraction,
            sampler=recipe.sampler,
            guidance_interval=recipe.guidance_interval,
            cache=recipe.cache,
            guidance_choices=recipe.guidance_choices,
            guidance_schedule=recipe.guidance_schedule,
            apg=recipe.apg,
            cads=recipe.cads,
            tcd_gamma=recipe.tcd_gamma,
            first_steps=first,
        )

    def count_flops(self) -> None:
        """Count the denoiser and decoder FLOPs of the next batch (models.flops.CallFlops: eager
        PyTorch modules only) into `denoiser_flops_per_image` and `decoder_flops_per_image`: every
        forward as it runs, so a guidance interval's halved calls and a cache's skipped blocks count
        as what they cost."""
        self._count_next = True

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
        first_inputs = {k.removeprefix(FIRST): embeds.pop(k) for k in list(embeds) if k.startswith(FIRST)}
        if self.first_steps is not None and "negative_prompt_embeds" not in first_inputs:  # the base runs CFG
            negative = self.negative_inputs(len(samples))
            first_inputs.update({k.removeprefix(FIRST): v for k, v in negative.items() if k.startswith(FIRST)})
        counting = self._count_next
        counter = CallFlops([denoiser(p) for _, p, _ in self._stages])
        with counter if counting else nullcontext():
            latents = self._denoise(samples, embeds, refiner_embeds, first_inputs)
        decoding = CallFlops(decode_modules(self.pipe.vae))
        with self._stage("decoding"), decoding if counting else nullcontext():
            images = self.decode(latents)
        if counting:
            self._count_next = False
            self.denoiser_flops_per_image = counter.flops / len(samples)
            self.decoder_flops_per_image = decoding.flops / len(samples)
        return images

    def _denoise(self, samples: list[Sample], embeds: dict, refiner_embeds: dict, first_inputs: dict) -> torch.Tensor:
        with self._stage("denoising"):
            call = dict(
                embeds,
                latents=self.adapter.prepare_latents(self.pipe, self.initial_latents(samples)),
                num_inference_steps=self.steps,
                guidance_scale=self.guidance,
                height=self.height,
                width=self.width,
                output_type="latent",
                generator=self.step_generators(samples),
            )
            call.update(self.adapter.call_kwargs(self.guidance))  # a family's own (Qwen-Image: true_cfg_scale)
            if self.tcd_gamma is not None:
                call["eta"] = self.tcd_gamma
            if self.refiner is not None:
                call["denoising_end"] = float(self.high_noise_fraction)
            with ExitStack() as stack:
                if self.uses_guidance:
                    for hooks in self._guidance_hooks(samples):
                        stack.enter_context(hooks)
                # after the interval's hooks: the cache sees its halved calls
                stack.enter_context(feature_cache(self.pipe, self.cache))
                stack.enter_context(_step_noise(self.pipe.scheduler, call["generator"]))
                if self.first_steps is not None:  # last: the hooks above stay on the student
                    base, k, base_guidance, base_family, _ = self.first_steps
                    stack.enter_context(first_steps(self.pipe, base, k, base_guidance, base_family, first_inputs))
                latents = self.pipe(**call).images
        if self.refiner is not None:
            with self._stage("refining"):  # the same step grid, from where the base stopped, with no noise added
                latents = self.refiner(
                    **refiner_embeds,
                    image=latents,
                    num_inference_steps=self.steps,
                    guidance_scale=self.guidance,
                    denoising_start=float(self.high_noise_fraction),
                    output_type="latent",
                    generator=self.step_generators(samples, "refiner"),
                    **self._refiner_extra,
                ).images
        return latents

    def _guidance_hooks(self, samples: list[Sample]) -> list:
        """The hooks that change what CFG does for this batch, in order: the interval (prepended:
        it halves calls before the others look), CADS (the conditional text), then the guided
        prediction (a schedule, per-sample scales, APG)."""
        hooks = []
        if self.guidance_interval is not None:
            hooks.append(GuidanceInterval(self.pipe, *self.guidance_interval))
        if self.cads is not None:
            hooks.append(CADS(self.pipe, [s.seed for s in samples], self.cads))
        if self.guidance_choices is not None or self.guidance_schedule != "constant" or self.apg is not None:
            scales = [
                self.guidance if self.guidance_choices is None else sample_guidance(self.guidance_choices, s.seed)
                for s in samples
            ]
            hooks.append(GuidanceRewrite(self.pipe, scales, self.guidance, self.guidance_schedule, self.apg))
        return hooks

    def initial_latents(self, samples: list[Sample]) -> torch.Tensor:
        noise = [torch.randn(self.latent_shape, generator=torch.Generator("cpu").manual_seed(s.seed)) for s in samples]
        return torch.stack(noise).to(self.device, self.dtype)

    @staticmethod
    def step_generators(samples: list[Sample], stage: str = "steps") -> list[torch.Generator]:
        """Per-sample CPU generators for noise a scheduler draws during sampling (ancestral ones:
        SDXL-turbo's Euler-a), from a seed derived from the sample's, so the image does not depend
        on the batch, the device or the process's random state; the initial noise uses the seed
        itself, a refiner's steps a seed of their own."""
        return [torch.Generator("cpu").manual_seed(step_seed(s.seed, stage)) for s in samples]

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
        while len(self._cache) > EMBED_CACHE_SIZE or (
            len(self._cache) > 1 and self._cache_bytes() > EMBED_CACHE_BYTES
        ):
            self._cache.popitem(last=False)
        return out

    def _cache_bytes(self) -> int:
        row = next(iter(self._cache.values()))  # rows are alike in size (Qwen-Image's vary a little)
        return len(self._cache) * sum(t.numel() * t.element_size() for t in row.values())

    def negative_inputs(self, n: int) -> dict[str, torch.Tensor]:
        if self._negative is None:
            self._negative = {
                prefix + k: v
                for prefix, pipe, adapter in self._stages
                for k, v in adapter.negative(pipe, self.negative_prompt, self.device).items()
            }
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
