"""Recipes: what dataset to make, validated into a frozen dataclass before any work starts.

A recipe is safe-loaded YAML (data only: no tags that build Python objects). Every key is
optional; missing keys take the defaults below, and the model's defaults fill `steps`,
`guidance` and `resolution`. Flags of `generate` override recipe keys one by one.

    model: digits
    classes: digits                 # built-in set, inline list, file, or wnids/words folder
    prompt: {regime: template, templates: ["a photo of a {name}"], template_mode: cycle}
    images_per_class: 10
    steps: 20
    guidance: 5.0
    resolution: 64                  # or [height, width]
    negative_prompt: ""
    seed: 0
    batch_size: 16                  # default: the model's (16; 100 for the small digits model)
    format: jpeg                    # jpeg | png | webp
    quality: 95                     # jpeg and webp
    images_per_shard: 1000
    zero_guidance: conditional      # or unconditional: guidance 0 on a non-distilled model means
                                    # the empty prompt alone, as in the paper's code (not diffusers')
    refiner: sdxl-refiner           # a second stage (model sdxl only; default none): the base
    high_noise_fraction: 0.8        # model denoises the first 80% of the steps, the refiner the
                                    # rest (diffusers' "ensemble of expert denoisers")
    sampler: default                # or ddim, pndm, euler, euler-ancestral, heun, dpm++2m,
                                    # dpm++2m-karras, dpm++sde, unipc; few-step: lcm, lcm-trailing,
                                    # tcd, ddim-trailing, euler-trailing (SD 1.x/2.x, SDXL)
    tcd_gamma: 0.3                  # with sampler tcd: its stochasticity (0 deterministic .. 1)
    guidance_interval: [0.28, 5.42] # CFG only at noise levels (EDM sigma) in this range; the
                                    # prompt alone elsewhere, one forward instead of two (default: none)
    cache: {name: deepcache, interval: 3}  # or deepcache:3; reuse of features between steps:
                                    # deepcache (SD 1.x/2.x, SDXL), first-block:0.05 or pyramid:2
                                    # (FLUX); default none (engine/sampling.py)
    guidance: [1.0, 2.0, 7.5]       # a list: each sample's scale drawn from its seed (engine/diversity.py)
    guidance_schedule: constant     # or linear | cosine: guidance ramped up over the steps, same mean
    apg: none                       # or true | {eta: 0, rescale: 15, momentum: -0.5}: adaptive projected guidance
    cads: none                      # or 0.25 | {noise: 0.25, tau1: 0.6, tau2: 0.9, psi: 1}: condition annealing
    models:                         # a mixture of generators instead of `model`: each sample's
      - {model: digits, share: 0.5} # model fixed by the plan (sample j of each class by its
      - {model: digits-dit, share: 0.5}  # position: the first 50% to the first model, ...)
    preset: fast                    # or fastest: named sampling settings (UNet families) from the embedded
                                    # model's measured frontier; keys set here win (default: none)
    lora: [style.safetensors, {path: detail.safetensors, scale: 0.8}]  # adapters fused into the
                                    # weights (SD 1.x/2.x, SDXL, SD3, FLUX); the dataset records each
                                    # file's sha256 and scale (models/lora.py; default: none)
    first_steps: {model: digits, steps: 1, guidance: 2.0}  # or digits:1[:2.0]: that base model with
                                    # its CFG denoises the first 1 step(s), the recipe's model (a few-step
                                    # student) the rest, on the student's grid; one family and latent
                                    # space (SD 1.x/2.x, SDXL, SD3; engine/first_steps.py; default: none)
    output_size: 64                 # or [height, width]: images stored at this size, resized from the
                                    # generated one with an antialiasing filter (Lanczos; dataset/encode.py)
                                    # before encoding; at most the generated size, its aspect ratio kept
                                    # (default: none, stored as generated)
    decoder: tiny                   # or vae (the default), or PATH (a local AutoencoderTiny folder): the
                                    # latents decoded by the latent space's tiny decoder (TAESD, TAESDXL,
                                    # TAESD3, TAEF1; the embedded models' digits-taesd; models/decoders.py)

The recipe is stored resolved (class list and captions included) in the dataset's manifest, so
`verify` and resume never re-read the class or caption files. Its hash covers everything that
decides what the dataset holds; `batch_size` does not, since it only changes how samples are
grouped for the model (keys, labels, prompts and seeds stay put).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from ..dataset.encode import RESIZE_FILTER
from ..errors import InputError, check_text
from ..files import file_sha256
from ..models.lora import LORA_FAMILIES, Adapter, hub_adapter_file, read_adapter
from ..models.registry import (
    TINY_DECODERS,
    AdapterSpec,
    get_adapter,
    get_model,
    get_refiner,
    tiny_decoder,
    vae_latent_channels,
)
from .classes import ClassEntry, load_classes
from .diversity import check_apg, check_cads, check_guidance_list, check_schedule
from .prompts import PromptSpec, load_prompt_spec
from .sampling import (
    BATCH_DEPENDENT_CACHES,
    FIRST_STEPS_FAMILIES,
    check_cache,
    check_guidance_interval,
    check_preset,
    check_sampler,
    check_tcd_gamma,
)

FORMATS = ("jpeg", "png", "webp")
EXTENSIONS = {"jpeg": "jpg", "png": "png", "webp": "webp"}
SEED_MAX = 2**64 - 1  # what datasets of the first manifest format took; new ones are held to NEW_SEED_MAX
NEW_SEED_MAX = 2**63 - 1  # signed 64-bit integers (Arrow, pandas, parquet, DuckDB) hold it, and every sample's seed

DEFAULTS: dict[str, object] = {
    "model": "digits",
    "classes": "digits",
    "prompt": "class-name",
    "images_per_class": 10,
    "steps": None,
    "guidance": None,
    "resolution": None,
    "negative_prompt": "",
    "seed": 0,
    "batch_size": None,
    "format": "jpeg",
    "quality": 95,
    "images_per_shard": 1000,
    "zero_guidance": "conditional",
    "refiner": None,
    "high_noise_fraction": None,
    "sampler": "default",
    "guidance_interval": None,
    "cache": None,
    "guidance_schedule": "constant",
    "apg": None,
    "cads": None,
    "preset": None,
    "models": None,
    "lora": None,
    "tcd_gamma": None,
    "first_steps": None,
    "output_size": None,
    "decoder": None,
}
MAX_MODELS = 8
MAX_ADAPTERS = 8
HIGH_NOISE_FRACTION = 0.8  # the paper's code and diffusers' SDXL example
ZERO_GUIDANCE = ("conditional", "unconditional")
# Fields that change how the work is done, not what the dataset holds.
EXECUTION_FIELDS = ("batch_size",)


@dataclass(frozen=True)
class MixEntry:
    """One generator of a mixture: its share of each class's images and its own resolved steps
    and guidance (the recipe's if it sets them, else the model's)."""

    model: str
    share: float
    steps: int
    guidance: float


@dataclass(frozen=True)
class Recipe:
    model: str
    classes: tuple[ClassEntry, ...]
    prompt: PromptSpec
    images_per_class: int
    steps: int
    guidance: float
    resolution: tuple[int, int]
    negative_prompt: str
    seed: int
    batch_size: int
    format: str
    quality: int
    images_per_shard: int
    # What guidance 0 means: "conditional" (diffusers: guidance <= 1 runs the prompt alone) or
    # "unconditional" (the paper's code: the CFG formula at 0, i.e. the negative prompt's branch alone)
    zero_guidance: str = "conditional"
    # A second-stage registry model (registry.get_refiner) and the share of the denoising the base
    # model does before handing its latents over; both None without a refiner
    refiner: str | None = None
    high_noise_fraction: float | None = None
    # engine.sampling: the scheduler, and the noise levels (EDM sigma) where CFG applies (None: all)
    sampler: str = "default"
    guidance_interval: tuple[float, float] | None = None
    # engine.sampling.check_cache's {"name": ..., its parameters}: features reused between steps
    cache: dict | None = None
    # engine.diversity: guidance drawn per sample from these (`guidance` is then their largest, the
    # pipeline's CFG scale), ramped over the steps, adaptive projected guidance, condition annealing
    guidance_choices: tuple[float, ...] | None = None
    guidance_schedule: str = "constant"
    apg: dict | None = None
    cads: dict | None = None
    # a mixture of generators (None: `model` alone); `model`, `steps` and `guidance` are then its first's
    mixture: tuple[MixEntry, ...] | None = None
    # LoRA adapters fused into the model's weights (models/lora.py); the hash holds their bytes and scales
    lora: tuple[Adapter, ...] = ()
    # engine.sampling: TCD's gamma (sampler tcd only; None otherwise)
    tcd_gamma: float | None = None
    # engine.first_steps: {"model", "steps", "guidance"}: a base model's CFG for the first steps (None: off)
    first_steps: dict | None = None
    # the stored image size (None: as generated), resized with encode.RESIZE_FILTER before encoding
    output_size: tuple[int, int] | None = None
    # models/decoders.py: None (the VAE), {"name": registry tiny decoder} or {"path", "sha256"}
    decoder: dict | None = None

    @property
    def models(self) -> list[str]:
        return [e.model for e in self.mixture] if self.mixture else [self.model]

    def for_model(self, name: str) -> Recipe:
        """The recipe one generator of a mixture runs (the recipe itself without a mixture)."""
        if not self.mixture:
            return self
        entry = next(e for e in self.mixture if e.model == name)
        return dataclasses.replace(self, model=name, steps=entry.steps, guidance=entry.guidance, mixture=None)

    @property
    def stored_size(self) -> tuple[int, int]:
        """(height, width) of the stored images."""
        return self.output_size or self.resolution

    @property
    def num_samples(self) -> int:
        return len(self.classes) * self.images_per_class

    @property
    def extension(self) -> str:
        return EXTENSIONS[self.format]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Recipe:
        """Rebuild a recipe stored in a manifest (already validated when it was written)."""
        d = dict(d)
        d["classes"] = tuple(ClassEntry(**c) for c in d["classes"])
        p = dict(d["prompt"])
        p["templates"] = tuple(p["templates"])
        p["captions"] = tuple(tuple(c) for c in p["captions"])
        d["prompt"] = PromptSpec(**p)
        d["resolution"] = tuple(d["resolution"])
        if d.get("guidance_interval") is not None:
            d["guidance_interval"] = tuple(d["guidance_interval"])
        if d.get("guidance_choices") is not None:
            d["guidance_choices"] = tuple(d["guidance_choices"])
        if d.get("mixture") is not None:
            d["mixture"] = tuple(MixEntry(**e) for e in d["mixture"])
        d["lora"] = tuple(Adapter(**a) for a in d.get("lora") or ())
        if d.get("output_size") is not None:
            d["output_size"] = tuple(d["output_size"])
        return cls(**d)

    def content_hash(self) -> str:
        """sha256 of the fields that decide the dataset's content (not execution fields)."""
        d = {k: v for k, v in self.to_dict().items() if k not in EXECUTION_FIELDS}
        if d["zero_guidance"] == "conditional" or d["guidance"] != 0:  # no effect on the images: old hashes hold
            del d["zero_guidance"]
        if d["refiner"] is None:  # likewise: recipes without a refiner keep their hashes
            del d["refiner"], d["high_noise_fraction"]
        if d["sampler"] == "default":  # and those with the model's own scheduler, CFG at every step
            del d["sampler"]
        if d["guidance_interval"] is None:
            del d["guidance_interval"]
        if d["cache"] is None:
            del d["cache"]
        elif d["cache"]["name"] in BATCH_DEPENDENT_CACHES:  # its decisions are the batch's: the batch decides images
            d["batch_size"] = self.batch_size
        for key, off in (
            ("guidance_choices", None),
            ("guidance_schedule", "constant"),
            ("apg", None),
            ("cads", None),
            ("mixture", None),
        ):
            if d[key] == off:  # recipes without the diversity levers keep their hashes
                del d[key]
        if d["tcd_gamma"] is None:
            del d["tcd_gamma"]
        if d["first_steps"] is None:
            del d["first_steps"]
        if d["output_size"] is None:  # stored as generated: earlier hashes hold
            del d["output_size"]
        else:  # the filter decides the pixels too
            d["resize_filter"] = RESIZE_FILTER
        if d["decoder"] is None:
            del d["decoder"]
        elif "sha256" in d["decoder"]:  # a folder's decoder is its weights, wherever it lies
            d["decoder"] = {"sha256": d["decoder"]["sha256"]}
        if not d["lora"]:
            del d["lora"]
        else:  # an adapter is its bytes and its scale, wherever the file lies
            d["lora"] = [Adapter(**a).record() for a in d["lora"]]
        d["prompt"].pop("captions_file")  # where captions came from is provenance, not content
        blob = json.dumps(d, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return hashlib.sha256(blob.encode()).hexdigest()


def sample_meta(recipe: Recipe) -> dict:
    """Settings every sample's KEY.json repeats, so one image file says how it was made."""
    meta = {
        "model": recipe.model,
        "steps": recipe.steps,
        "guidance": recipe.guidance,
        "resolution": list(recipe.resolution),  # as generated
        "negative_prompt": recipe.negative_prompt,
    }
    if recipe.output_size is not None:  # stored at another size; without, samples keep earlier versions' bytes
        meta.update(stored_size=list(recipe.output_size), resize_filter=RESIZE_FILTER)
    if recipe.decoder is not None:  # a registry tiny decoder's name, or a folder's weights (not its path)
        meta["decoder"] = recipe.decoder.get("name") or f"AutoencoderTiny sha256:{recipe.decoder['sha256']}"
    if recipe.refiner:
        meta.update(refiner=recipe.refiner, high_noise_fraction=recipe.high_noise_fraction)
    if recipe.sampler != "default":
        meta["sampler"] = recipe.sampler
    if recipe.tcd_gamma is not None:
        meta["tcd_gamma"] = recipe.tcd_gamma
    if recipe.guidance_interval is not None:
        meta["guidance_interval"] = list(recipe.guidance_interval)
    if recipe.cache is not None:
        meta["cache"] = dict(recipe.cache)
    if recipe.guidance_choices is not None:  # each sample's JSON says its own guidance (_add_sample)
        meta["guidance_choices"] = list(recipe.guidance_choices)
    if recipe.guidance_schedule != "constant":
        meta["guidance_schedule"] = recipe.guidance_schedule
    for key in ("apg", "cads"):
        if getattr(recipe, key) is not None:
            meta[key] = dict(getattr(recipe, key))
    if recipe.lora:
        meta["lora"] = [a.record() for a in recipe.lora]
    if recipe.first_steps is not None:
        meta["first_steps"] = dict(recipe.first_steps)
    return meta


def read_recipe_file(path: str | Path) -> dict:
    """Safe-load a YAML recipe into a plain mapping."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise InputError("recipe", str(p), f"expected a readable UTF-8 YAML file ({e.__class__.__name__})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        where = getattr(e, "problem_mark", None)
        at = f" at line {where.line + 1}, column {where.column + 1}" if where else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise InputError("recipe", str(p), f"expected valid YAML (plain data, no tags): {problem}{at}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise InputError("recipe", str(p), f"expected a YAML mapping of recipe keys, got a {type(data).__name__}")
    return data


def build_recipe(raw: dict, overrides: dict | None = None, base_dir: Path | None = None) -> Recipe:
    """Validate a raw recipe mapping (plus flag overrides) into a `Recipe`."""
    unknown = sorted((k for k in raw if k not in DEFAULTS), key=str)
    if unknown:
        raise InputError(unknown[0], raw[unknown[0]], f"unknown recipe key; allowed keys: {', '.join(DEFAULTS)}")
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    if raw.get("models") is not None or overrides.get("models") is not None:
        lora = overrides.get("lora", raw.get("lora"))
        if lora not in (None, "none", []):
            raise InputError("lora", lora, "a mixture's models take no adapters: make each model's share apart")
        first = overrides.get("first_steps", raw.get("first_steps"))
        if first not in (None, "none"):
            raise InputError("first_steps", first, "a mixture runs without a first-steps base model")
        return _mixture(raw, overrides, base_dir)
    merged = {**DEFAULTS, **raw}
    prompt_raw = merged["prompt"]
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        if key.startswith("prompt."):
            if prompt_raw is not None and not isinstance(prompt_raw, (str, dict)):
                raise InputError(
                    "prompt",
                    prompt_raw,
                    "expected a regime name or a mapping with keys regime, templates, template_mode, captions",
                )
            prompt_raw = {"regime": prompt_raw} if isinstance(prompt_raw, str) else dict(prompt_raw or {})
            prompt_raw[key.split(".", 1)[1]] = value
        else:
            merged[key] = value
    merged["prompt"] = prompt_raw

    spec = get_model(merged["model"])
    given = set(raw) | {k for k, v in (overrides or {}).items() if v is not None}
    adapters = _lora_items(merged["lora"], spec, base_dir)  # read (and hashed) below, once the rest is checked
    published = next((a for _, _, a in adapters if a is not None), None)
    if published is not None:  # a registry adapter's published setting, where the recipe sets none
        for key, value in {
            "sampler": published.sampler,
            "steps": published.steps,
            "guidance": published.guidance,
        }.items():
            if key not in given:
                merged[key] = value
                given.add(key)
    for key, value in check_preset(merged.pop("preset"), spec.family).items():
        if key not in given:  # the recipe's or a flag's own value wins
            merged[key] = value
    classes = load_classes(merged["classes"], base_dir=base_dir)
    prompt = load_prompt_spec(merged["prompt"], classes, base_dir)
    steps = spec.steps if merged["steps"] is None else _int(merged["steps"], "steps", 1, 10_000)
    choices = None
    if isinstance(merged["guidance"], str) and "," in merged["guidance"]:  # a flag's list: 1,2,7.5
        merged["guidance"] = [p.strip() for p in merged["guidance"].strip("[]").split(",")]
    if isinstance(merged["guidance"], (list, tuple)):
        choices = check_guidance_list(list(merged["guidance"]), spec.family, spec.distilled)
        merged["guidance"] = max(choices)  # the pipeline's CFG scale; each sample gets its own (diversity.py)
    guidance = spec.guidance if merged["guidance"] is None else _number(merged["guidance"], "guidance", 0.0, 100.0)
    guides = guidance > 1.0 and not spec.distilled
    resolution = (
        spec.resolution
        if merged["resolution"] is None
        else _resolution(merged["resolution"], spec.resolution_multiple)
    )
    negative = merged["negative_prompt"]
    if negative is None:
        negative = ""
    if not isinstance(negative, str):
        raise InputError("negative_prompt", negative, "expected a string (may be empty)")
    check_text(negative, "negative_prompt")
    fmt = merged["format"]
    if isinstance(fmt, str) and fmt.lower() == "jpg":
        fmt = "jpeg"
    if fmt not in FORMATS:
        raise InputError("format", fmt, f"expected one of {', '.join(FORMATS)}")
    return Recipe(
        model=spec.name,
        classes=classes,
        prompt=prompt,
        images_per_class=_int(merged["images_per_class"], "images_per_class", 1, 10**8),
        steps=steps,
        guidance=guidance,
        resolution=resolution,
        negative_prompt=negative,
        seed=_int(merged["seed"], "seed", 0, SEED_MAX),
        batch_size=spec.batch_size
        if merged["batch_size"] is None
        else _int(merged["batch_size"], "batch_size", 1, 4096),
        format=fmt,
        quality=_int(merged["quality"], "quality", 1, 100),
        images_per_shard=_int(merged["images_per_shard"], "images_per_shard", 1, 10**6),
        zero_guidance=_zero_guidance(merged["zero_guidance"], spec),
        **_refiner(merged["refiner"], merged["high_noise_fraction"], spec, steps),
        sampler=check_sampler(merged["sampler"], spec.family),
        guidance_interval=check_guidance_interval(merged["guidance_interval"], spec.family, guides),
        cache=check_cache(merged["cache"], spec.family),
        guidance_choices=choices,
        guidance_schedule=check_schedule(merged["guidance_schedule"], spec.family, guides),
        apg=check_apg(merged["apg"], spec.family, guides),
        cads=check_cads(merged["cads"], spec.family, guides),
        lora=_read_adapters(adapters),
        tcd_gamma=check_tcd_gamma(merged["tcd_gamma"], merged["sampler"]),
        first_steps=_first_steps(merged["first_steps"], spec, steps, merged),
        output_size=_output_size(merged["output_size"], resolution),
        decoder=_decoder(merged["decoder"], spec, base_dir),
    )


def _mixture(raw: dict, overrides: dict, base_dir: Path | None) -> Recipe:
    """A recipe of several generators: each entry's recipe is built and checked as a recipe of
    its own (its family's rules, its defaults), then joined; they must make one dataset."""
    entries = overrides.get("models", raw.get("models"))
    if isinstance(entries, str):  # the flag's form: NAME=SHARE,NAME=SHARE
        pairs = [p.partition("=") for p in entries.split(",")]
        entries = [{"model": name.strip(), "share": share.strip()} for name, _, share in pairs]
    if "model" in raw or "model" in overrides:
        raise InputError("model", overrides.get("model", raw.get("model")), "a recipe names model or models, not both")
    allowed = (
        f"expected a list of 2 to {MAX_MODELS} mappings {{model: NAME, share: FRACTION}}, distinct models, shares "
        "above 0 adding up to 1"
    )
    if not isinstance(entries, list) or not 2 <= len(entries) <= MAX_MODELS:
        raise InputError("models", entries, allowed)
    if not all(isinstance(e, dict) and set(e) == {"model", "share"} for e in entries):
        raise InputError("models", entries, allowed)
    shares = [_number(e["share"], "models.share", 0.0, 1.0) for e in entries]
    if min(shares) <= 0 or abs(sum(shares) - 1) > 1e-6 or len({e["model"] for e in entries}) != len(entries):
        raise InputError("models", entries, allowed)
    rest = {k: v for k, v in raw.items() if k != "models"}
    flags = {k: v for k, v in overrides.items() if k != "models"}
    subs = [build_recipe({**rest, "model": e["model"]}, flags, base_dir) for e in entries]
    first = subs[0]
    for sub in subs[1:]:
        if sub.resolution != first.resolution:
            raise InputError(
                "resolution",
                list(sub.resolution),
                f"{sub.model} and {first.model} make other sizes by default; set resolution for the mixture",
            )
        if sub.refiner or first.refiner:
            raise InputError("refiner", sub.refiner or first.refiner, "a mixture runs without a refiner")
    decoders = {label for label in (s.decoder and (s.decoder.get("name") or s.decoder["sha256"]) for s in subs)}
    if len(decoders) > 1:
        raise InputError(
            "decoder",
            overrides.get("decoder", raw.get("decoder")),
            f"the mixture's models have different tiny decoders ({', '.join(sorted(map(str, decoders)))}): mix "
            "models of one latent space, or decode with their VAEs",
        )
    mixture = tuple(MixEntry(s.model, share, s.steps, s.guidance) for s, share in zip(subs, shares))
    return dataclasses.replace(first, mixture=mixture)


def mixture_counts(shares: list[float], n: int) -> list[int]:
    """Images of each generator in a class of n: the shares rounded by largest remainder, so the
    counts add up to n and every split of the plan agrees."""
    exact = [share * n for share in shares]
    counts = [int(x) for x in exact]
    order = sorted(range(len(shares)), key=lambda i: (-(exact[i] - counts[i]), i))
    for i in order[: n - sum(counts)]:
        counts[i] += 1
    return counts


def _read_adapters(items: list[tuple[Path, object, AdapterSpec | None]]) -> tuple[Adapter, ...]:
    """Each `lora` entry's file (a registry adapter's from the hub cache) checked and hashed."""
    return tuple(
        read_adapter(hub_adapter_file(published), scale, name=published.name)
        if published
        else read_adapter(path, scale)
        for path, scale, published in items
    )


def _lora_items(value: object, spec, base_dir: Path | None) -> list[tuple[Path, object, AdapterSpec | None]]:
    """`lora`: adapters, each a file or a registry adapter's name (registry.ADAPTERS), with an
    optional scale: NAME_OR_PATH[:SCALE] (a flag's comma list, or a list of those or of
    {path, scale} mappings); paths relative to the recipe's folder. Returns (path, raw scale, the
    registry adapter if it names one) for each; no file is read here."""
    if value in (None, "none", []):
        return []
    allowed = (
        f"expected up to {MAX_ADAPTERS} LoRA files or registry adapters (t2i-engine models --adapters): NAME, "
        "PATH or either with :SCALE, comma-separated, or a list of those or of {path: FILE, scale: NUMBER}"
    )
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list) or not 1 <= len(items) <= MAX_ADAPTERS:
        raise InputError("lora", value, allowed)
    if spec.family not in LORA_FAMILIES:
        raise InputError(
            "lora",
            value,
            f"the {spec.family} family takes no adapters here; families that do: {', '.join(LORA_FAMILIES)}",
        )

    def resolve(path: str) -> Path:
        full = Path(path.strip()).expanduser()
        return base_dir / full if not full.is_absolute() and base_dir is not None else full

    out = []
    for item in items:
        if isinstance(item, str):
            path, scale = item.strip(), 1.0
            head, colon, tail = path.rpartition(":")
            if colon and head and not resolve(path).exists():  # PATH:SCALE (a path may hold a colon)
                path, scale = head, tail.strip()
        elif isinstance(item, dict) and set(item) <= {"path", "scale"} and "path" in item:
            path, scale = str(item["path"]), item.get("scale", 1.0)
        else:
            raise InputError("lora", item, allowed)
        full = resolve(path)
        out.append((full, scale, None if full.exists() else get_adapter(path, spec)))  # a file of that name wins
    return out


def _zero_guidance(value: object, spec) -> str:
    if value not in ZERO_GUIDANCE:
        raise InputError("zero_guidance", value, f"expected one of {', '.join(ZERO_GUIDANCE)}")
    if value == "unconditional" and spec.distilled:
        raise InputError(
            "zero_guidance",
            value,
            f"{spec.name} is guidance-distilled: guidance 0 is its normal setting, and it "
            "has no unconditional branch to fall back to (use conditional)",
        )
    return value


def _refiner(name: object, fraction: object, spec, steps: int) -> dict:
    if name == "none":  # said outright (a flag turning off a recipe file's refiner): a fraction beside it is moot
        return {}
    if name is None:
        if fraction is not None:
            raise InputError(
                "high_noise_fraction",
                fraction,
                "is the base model's share of the steps before a refiner; "
                "it needs a refiner (recipe key refiner; none: off)",
            )
        return {}
    refiner = get_refiner(name, spec)
    fraction = HIGH_NOISE_FRACTION if fraction is None else _number(fraction, "high_noise_fraction", 0.0, 1.0)
    if steps < 2:
        raise InputError("steps", steps, f"a refiner ({refiner.name}) takes some of the steps: expected at least 2")
    if not 0 < fraction < 1:  # that each stage gets a step depends on the scheduler's grid: refiner.check_refiner
        raise InputError("high_noise_fraction", fraction, "expected a number between 0 and 1 (both excluded)")
    return {"refiner": refiner.name, "high_noise_fraction": fraction}


def _first_steps(value: object, spec, steps: int, merged: dict) -> dict | None:
    """`first_steps`: {model, steps, guidance} or "MODEL:K[:GUIDANCE]"; the base model of the
    recipe's model's family and latent space, k below the recipe's steps, guidance the base's own
    default where not given."""
    if value is None or value == "none":
        return None
    allowed = (
        "expected {model: NAME, steps: K, guidance: G} or NAME:K[:G]: a base model denoising the first K steps "
        "(fewer than the recipe's) with its CFG at G (default: its own)"
    )
    if isinstance(value, str):
        parts = [p.strip() for p in value.split(":")]
        if not 2 <= len(parts) <= 3:
            raise InputError("first_steps", value, allowed)
        value = dict(zip(("model", "steps", "guidance"), parts))
    if not isinstance(value, dict) or "model" not in value or "steps" not in value:
        raise InputError("first_steps", value, allowed)
    unknown = sorted(k for k in value if k not in ("model", "steps", "guidance"))
    if unknown:
        raise InputError(f"first_steps.{unknown[0]}", value[unknown[0]], "first_steps takes: model, steps, guidance")
    base = get_model(value["model"], "first_steps.model")
    if spec.family not in FIRST_STEPS_FAMILIES:
        raise InputError(
            "first_steps", base.name, f"not for the {spec.family} family (families: {', '.join(FIRST_STEPS_FAMILIES)})"
        )
    if base.family != spec.family or not base.standalone:
        raise InputError(
            "first_steps.model",
            base.name,
            f"is of the {base.family} family{'' if base.standalone else ' (a refiner)'}; {spec.name} needs a "
            f"text-to-image model of its own family ({spec.family})",
        )
    if base.latent_space != spec.latent_space:
        raise InputError(
            "first_steps.model",
            base.name,
            f"its latent space ({base.latent_space}) differs from {spec.name}'s ({spec.latent_space}): the student "
            "could not read the base's latents",
        )
    k = value["steps"]
    if isinstance(k, str) and _INT_RE.fullmatch(k.strip()):
        k = int(k)
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k < steps:
        raise InputError(
            "first_steps.steps", k, f"expected an integer from 1 to {steps - 1}: below the recipe's {steps} steps"
        )
    guidance = (
        base.guidance
        if value.get("guidance") is None
        else _number(value["guidance"], "first_steps.guidance", 0.0, 100.0)
    )
    for key in ("refiner", "cache"):
        if merged[key] not in (None, "none"):
            raise InputError(key, merged[key], "does not combine with first_steps")
    return {"model": base.name, "steps": k, "guidance": guidance}


def _output_size(value: object, generated: tuple[int, int]) -> tuple[int, int] | None:
    """`output_size`: a size or [height, width], at most the generated size and of its aspect
    ratio (within a pixel's rounding): the images are resized down, never up or out of shape."""
    if value is None or value == "none":
        return None
    gh, gw = generated
    allowed = (
        f"expected a size or [height, width] in pixels: positive integers, at most the generated {gh}x{gw} and of "
        "its aspect ratio"
    )
    if isinstance(value, str):
        parts = [p.strip() for p in value.lower().replace("x", ",").split(",")]
        if all(_INT_RE.fullmatch(p) for p in parts) and len(parts) in (1, 2):
            value = int(parts[0]) if len(parts) == 1 else [int(p) for p in parts]
    hw = [value, value] if isinstance(value, int) and not isinstance(value, bool) else value
    if not isinstance(hw, (list, tuple)) or len(hw) != 2:
        raise InputError("output_size", value, allowed)
    if any(isinstance(x, bool) or not isinstance(x, int) or x < 1 for x in hw):
        raise InputError("output_size", value, allowed)
    h, w = hw
    if h > gh or w > gw:
        raise InputError("output_size", value, f"{allowed}: it would enlarge the images (resolution {gh}x{gw})")
    if abs(w - h * gw / gh) > 1 and abs(h - w * gh / gw) > 1:
        raise InputError("output_size", value, f"{allowed}: it would stretch them (resolution {gh}x{gw})")
    return (h, w)


def _decoder(value: object, spec, base_dir: Path | None) -> dict | None:
    """`decoder`: vae (default), tiny (the registry's tiny decoder of the model's latent space) or
    PATH, a local AutoencoderTiny folder (hashed: its weights decide the images)."""
    if value is None or value == "vae":
        return None
    have = sorted({d.name for d in TINY_DECODERS.values()})
    if value == "tiny":
        tiny = tiny_decoder(spec)
        if tiny is None:
            raise InputError(
                "decoder",
                value,
                f"{spec.name}'s latent space ({spec.latent_space}) has no tiny decoder; tiny decoders: "
                f"{', '.join(have)} (t2i-engine models --decoders), or give a local AutoencoderTiny folder",
            )
        expected, channels = tiny.latent_channels, vae_latent_channels(spec)
        if expected is not None and channels is not None and expected != channels:
            raise InputError(
                "decoder", value, f"{tiny.name} decodes {expected}-channel latents; {spec.name} makes {channels}"
            )
        return {"name": tiny.name}
    if not isinstance(value, str):
        raise InputError("decoder", value, "expected vae, tiny, or the path of a local AutoencoderTiny folder")
    folder = Path(value).expanduser()
    if not folder.is_absolute() and base_dir is not None:
        folder = base_dir / folder
    config_file = folder / "config.json"
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        config = None
    weights = sorted(folder.glob("*.safetensors")) if config is not None else []
    if not isinstance(config, dict) or config.get("_class_name") != "AutoencoderTiny" or not weights:
        raise InputError(
            "decoder",
            value,
            "expected vae, tiny, or the path of a local AutoencoderTiny folder (config.json with _class_name "
            "AutoencoderTiny, and safetensors weights)",
        )
    channels = vae_latent_channels(spec)
    if channels is not None and config.get("latent_channels", 4) != channels:
        raise InputError(
            "decoder",
            value,
            f"it decodes {config.get('latent_channels', 4)}-channel latents; {spec.name}'s VAE makes {channels}",
        )
    digest = hashlib.sha256()
    for path in weights:
        digest.update(file_sha256(path).encode())
    return {"path": str(folder.resolve()), "sha256": digest.hexdigest()}


def load_recipe(path: str | Path | None, overrides: dict | None = None) -> Recipe:
    """Read and validate a recipe file (or the built-in defaults when `path` is None)."""
    if path is None:
        return build_recipe({}, overrides, base_dir=Path.cwd())
    return build_recipe(read_recipe_file(path), overrides, base_dir=Path(path).resolve().parent)


_INT_RE = re.compile(r"-?[0-9]+")


def _int(value: object, field: str, lo: int, hi: int) -> int:
    if isinstance(value, str) and _INT_RE.fullmatch(value.strip()):
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise InputError(field, value, f"expected an integer from {lo} to {hi}")
    return value


def check_new_seed(recipe: Recipe) -> None:
    """A new dataset (and one of the current format) takes recipe seeds up to 2^63 - 1; one of the
    first format, resumed, keeps the seed it was made with."""
    if recipe.seed > NEW_SEED_MAX:
        raise InputError(
            "seed",
            recipe.seed,
            f"expected an integer from 0 to {NEW_SEED_MAX} (2^63 - 1): seeds must fit the signed 64-bit integers of "
            "Arrow, pandas, parquet and DuckDB, which read the datasets",
        )


def _number(value: object, field: str, lo: float, hi: float) -> float:
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            pass
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= value <= hi:
        raise InputError(field, value, f"expected a number from {lo} to {hi}")
    return float(value)


def _resolution(value: object, multiple: int) -> tuple[int, int]:
    allowed = f"expected a size or [height, width] in pixels, each a multiple of {multiple} from {multiple} to 4096"
    if isinstance(value, str):
        parts = value.lower().replace("x", ",").split(",")
        value = [int(p) if _INT_RE.fullmatch(p.strip()) else p for p in parts] if len(parts) == 2 else value
        if isinstance(value, str) and _INT_RE.fullmatch(value.strip()):
            value = int(value)
    hw = [value, value] if isinstance(value, int) and not isinstance(value, bool) else value
    if not isinstance(hw, (list, tuple)) or len(hw) != 2:
        raise InputError("resolution", value, allowed)
    for x in hw:
        if isinstance(x, bool) or not isinstance(x, int) or x < multiple or x > 4096 or x % multiple:
            raise InputError("resolution", value, allowed)
    return (hw[0], hw[1])
