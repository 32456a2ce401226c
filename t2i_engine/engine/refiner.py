"""A refiner as a second stage: diffusers' "ensemble of expert denoisers" for SDXL.

The base model denoises the first `high_noise_fraction` of the steps (`denoising_end`) and hands
its latents over; the refiner, an img2img pipeline, runs the rest of the same step grid
(`denoising_start`) without adding noise. The two share the base's second text encoder and VAE.
The Generator runs both stages (generator.py); this module checks a recipe's refiner before
anything loads, and loads it.

Where the grid splits: at the training timestep T - fraction x T (diffusers' own arithmetic), the
base taking the timesteps at or above it, the refiner those below; each stage must get one.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch

from ..errors import InputError
from ..kernels import route_attention
from ..models.pipelines import apply_registry_settings, builder, bundled_path, from_pretrained, unavailable
from ..models.registry import MODELS


def check_refiner(recipe, weights: str | None, refiner_weights: str | None, read_configs: bool = True) -> None:
    """Before any weights load or anything is written (local and worker runs alike): the
    weights folders exist and (`read_configs`: when there is work to do) the split gives each
    stage a step, read from the two schedulers' configs."""
    if recipe.refiner is None:
        if refiner_weights is not None:
            raise InputError("--refiner-weights", refiner_weights, "the recipe has no refiner (recipe key refiner)")
        return
    if not read_configs:
        return
    for flag, folder in (("--weights", weights), ("--refiner-weights", refiner_weights)):
        if folder is not None and not Path(folder).is_dir():  # not a hub id: the engine's ids are registry names
            raise InputError(flag, folder, "expected a local diffusers folder (with model_index.json)")
    spec = MODELS[recipe.refiner]
    base = _scheduler(MODELS[recipe.model], weights, "--weights")
    # a built (test) refiner samples on its base's scheduler (tiny.build_tiny_sdxl_refiner)
    refiner = (
        base if spec.builder and refiner_weights is None else _scheduler(spec, refiner_weights, "--refiner-weights")
    )
    _check_split(recipe, base, refiner)


def load_refiner(recipe, base, weights: str | None, device: torch.device, dtype: torch.dtype, attention: str = "sdpa"):
    """The recipe's second stage, or None: its registry model built (test models) or loaded
    around the base's second text encoder and VAE, in the base's device and dtype."""
    if recipe.refiner is None:
        return None
    spec = MODELS[recipe.refiner]
    if spec.builder and weights is None:
        refiner = builder(spec)(base)
    else:
        # no watermarker: diffusers' img2img pipeline would stamp even the latents it returns
        refiner = from_pretrained(
            spec,
            weights,
            dtype,
            flag="--refiner-weights",
            text_encoder_2=base.text_encoder_2,
            tokenizer_2=base.tokenizer_2,
            vae=base.vae,
            add_watermarker=False,
        )
    apply_registry_settings(spec, refiner)
    _check_split(recipe, base.scheduler, refiner.scheduler)
    if refiner.dtype != dtype:  # built refiners come in float32; loaded ones already in dtype
        refiner = refiner.to(dtype=dtype)
    refiner = refiner.to(device)
    route_attention(refiner.unet, attention, device)  # the shared modules are already routed with the base
    return refiner


def _scheduler(spec, weights: str | None, flag: str):
    """The scheduler `spec`'s pipeline samples with (the registry's replacement included), from
    its config alone; test models are built (they are small)."""
    import diffusers

    if spec.builder and weights is None:
        pipe = builder(spec)()
        apply_registry_settings(spec, pipe)
        return pipe.scheduler
    source = weights or bundled_path(spec) or spec.hub_id
    try:
        # the class the pipeline loads is the one model_index.json names; any scheduler class reads the config
        name = spec.scheduler or diffusers.DiffusionPipeline.load_config(source)["scheduler"][1]
        config = diffusers.DDPMScheduler.load_config(source, subfolder="scheduler")
        return getattr(diffusers, name).from_config(config)
    except (OSError, ValueError, KeyError, IndexError, TypeError, AttributeError) as e:
        raise unavailable(spec, source, e, flag) from None


def _check_split(recipe, base, refiner) -> None:
    """Each stage runs at least one step of `recipe.steps` (schedulers are copied, not changed)."""

    counts = []
    for scheduler, below in ((base, False), (refiner, True)):
        scheduler = copy.deepcopy(scheduler)
        scheduler.set_timesteps(recipe.steps)
        total = scheduler.config.num_train_timesteps
        cutoff = int(
            round(total - recipe.high_noise_fraction * total)
        )  # as StableDiffusionXL(Img2Img)Pipeline computes it
        counts.append(int(((scheduler.timesteps < cutoff) == below).sum()))
    if min(counts) == 0:
        raise InputError(
            "high_noise_fraction",
            recipe.high_noise_fraction,
            f"with {recipe.steps} steps, the base would run "
            f"{counts[0]} and the refiner {counts[1]}: each stage needs at least one (change steps or the fraction)",
        )
