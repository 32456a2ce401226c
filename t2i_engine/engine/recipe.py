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
                                    # dpm++2m-karras, dpm++sde, unipc (SD 1.x/2.x, SDXL)
    guidance_interval: [0.28, 5.42] # CFG only at noise levels (EDM sigma) in this range; the
                                    # prompt alone elsewhere, one forward instead of two (default: none)
    cache: {name: deepcache, interval: 3}  # or deepcache:3; reuse of features between steps:
                                    # deepcache (SD 1.x/2.x, SDXL), first-block:0.05 or pyramid:2
                                    # (FLUX); default none (engine/sampling.py)
    guidance: [1.0, 2.0, 7.5]       # a list: each sample's scale drawn from its seed (engine/diversity.py)
    guidance_schedule: constant     # or linear | cosine: guidance ramped up over the steps, same mean
    apg: none                       # or true | {eta: 0, rescale: 15, momentum: -0.5}: adaptive projected guidance
    cads: none                      # or 0.25 | {noise: 0.25, tau1: 0.6, tau2: 0.9, psi: 1}: condition annealing
    preset: fast                    # named sampling settings (UNet families) from the embedded
                                    # model's measured frontier; keys set here win (default: none)

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

from ..errors import InputError, check_text
from ..models.registry import get_model, get_refiner
from .classes import ClassEntry, load_classes
from .diversity import check_apg, check_cads, check_guidance_list, check_schedule
from .prompts import PromptSpec, load_prompt_spec
from .sampling import BATCH_DEPENDENT_CACHES, check_cache, check_guidance_interval, check_preset, check_sampler

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
}
HIGH_NOISE_FRACTION = 0.8  # the paper's code and diffusers' SDXL example
ZERO_GUIDANCE = ("conditional", "unconditional")
# Fields that change how the work is done, not what the dataset holds.
EXECUTION_FIELDS = ("batch_size",)


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
        for key, off in (("guidance_choices", None), ("guidance_schedule", "constant"), ("apg", None), ("cads", None)):
            if d[key] == off:  # recipes without the diversity levers keep their hashes
                del d[key]
        d["prompt"].pop("captions_file")  # where captions came from is provenance, not content
        blob = json.dumps(d, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return hashlib.sha256(blob.encode()).hexdigest()


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
    )


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
