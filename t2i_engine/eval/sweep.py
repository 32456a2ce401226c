"""`t2i-engine sweep GRID.yaml --out DIR`: a grid of recipes, each generated, trained on, tested
on real images and analysed, ending in the frontier of work per image against usefulness.

    base: {model: digits, images_per_class: 100, guidance: 2.0}   # a recipe (mapping or file)
    axes:                                                           # any recipe keys
      sampler: [ddim, dpm++2m]
      steps: [4, 8]
    train_seeds: 3          # classifiers trained per cell (default 3): the spread of synth->real
    preset: small           # the training preset; epochs: N overrides its epochs
    variants:               # optional: settings each crossed with the axes (levers that are
      - {}                  # not a product: {} is the base alone)
      - {cads: on}
    real: digits            # a folder with train/ and test/ of real images; digits: the shipped
                            # split (the default for the digits model); none: speed and FLOPs only

Each cell (the product of the axes) is DIR/cells/NAME: data/ (the dataset), runs/seed-S/,
analysis.json and result.json, the last written when the cell is done: a sweep stopped anywhere
reruns to the same end, skipping finished cells and resuming the rest (generation and training
resume themselves). Every cell's recipe is checked before anything is generated, and DIR/sweep.json
keeps the grid: a rerun with another grid into the same folder is refused.

Per cell: FLOPs per image of the configuration actually run (the denoiser's FLOPs counted call by
call on one sample, so an interval's skipped forwards, a cache's skipped blocks or a sampler's
extra calls count as they run, plus the decode by the decoder that ran and the resize to output_size:
per stored image), images/s of its generation (model loading excluded), bytes per stored image,
synth->real top-1 (mean and sample standard deviation over the training seeds), and coverage,
recall and Vendi against the real training images (the digits judge's features; digits only).
The frontier files mark the Pareto front: no other cell is as useful for less (FLOPs) or as
useful faster (images/s).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import itertools
import json
import re
import statistics
from pathlib import Path

import torch

from ..benchmark.paths import count_denoiser_images
from ..dataset.encode import resize_flops
from ..devices import resolve_device
from ..engine.generator import Generator
from ..engine.plan import plan_samples
from ..engine.recipe import DEFAULTS, build_recipe, mixture_counts, read_recipe_file
from ..engine.run import RunOptions, generate
from ..errors import InputError
from ..files import atomic_write_text, check_writable
from ..models.decoders import decoder_label, install_decoder
from ..models.pipelines import load_pipeline
from ..models.registry import MODELS, get_model
from ..training.digits_data import write_real_digits
from ..training.loop import train
from ..training.presets import resolve_config
from .analyze import analyze
from .classify import evaluate_run

# the embedded models and their students (the digits latent space): the shipped real digits and judge apply
DIGITS_MODELS = tuple(name for name, spec in MODELS.items() if spec.latent_space == "digits-vae")
GRID_KEYS = ("base", "axes", "variants", "train_seeds", "preset", "epochs", "real")


@dataclasses.dataclass(frozen=True)
class Cell:
    name: str
    settings: dict


def read_grid(path: str | Path) -> tuple[dict, list[Cell], Path]:
    """The grid file, checked, its cells, and the folder its relative paths are read from."""
    path = Path(path)
    grid = read_recipe_file(path)  # safe YAML into a mapping, with the recipe reader's errors
    unknown = sorted(k for k in grid if k not in GRID_KEYS)
    if unknown:
        raise InputError(unknown[0], grid[unknown[0]], f"unknown sweep key; allowed keys: {', '.join(GRID_KEYS)}")
    base_dir = path.resolve().parent
    base = grid.get("base") or {}
    if isinstance(base, str):
        base = read_recipe_file(base_dir / base)
    if not isinstance(base, dict):
        raise InputError("base", base, "expected a recipe: a mapping of recipe keys or a recipe file")
    axes = grid.get("axes") or {}
    variants = grid.get("variants") or [{}]
    if not isinstance(axes, dict) or not (axes or grid.get("variants")):
        raise InputError("axes", axes, "expected a mapping of recipe keys to lists of values, e.g. steps: [4, 8]")
    for key, values in axes.items():
        if key not in DEFAULTS:
            raise InputError(f"axes.{key}", key, f"expected a recipe key: {', '.join(DEFAULTS)}")
        if not isinstance(values, list) or not values:
            raise InputError(f"axes.{key}", values, "expected a non-empty list of values")
    if not isinstance(variants, list) or not all(isinstance(v, dict) for v in variants):
        raise InputError("variants", variants, "expected a list of mappings of recipe keys ({} for the base alone)")
    cells = []
    for combo in itertools.product(*axes.values()):
        for variant in variants:
            settings = {**dict(zip(axes, combo)), **variant}
            build_recipe({**base, **settings}, base_dir=base_dir)  # every cell checked before any work
            cells.append(Cell(cell_name(settings) or "base", settings))
    if len({c.name for c in cells}) != len(cells):
        raise InputError("axes", axes, "two cells would share a folder name: make the values distinct")
    return {**grid, "base": base}, cells, base_dir


def cell_name(settings: dict) -> str:
    def text(v) -> str:
        if isinstance(v, str):
            return v
        if isinstance(v, dict) or (isinstance(v, list) and any(isinstance(x, dict) for x in v)):
            # mappings (a mixture's models, a cache's parameters) by their values: digits:0.5+digits-dit:0.5
            items = v if isinstance(v, list) else [v]
            return "+".join(":".join(map(str, x.values())) if isinstance(x, dict) else str(x) for x in items)
        return json.dumps(v, separators=(",", ":"))

    return re.sub(r"[^A-Za-z0-9=+.,_-]", "_", ",".join(f"{k}={text(v)}" for k, v in settings.items()))


def pareto(points: list[tuple[float, float]]) -> list[bool]:
    """For (cost, value) points: True where no other point costs no more and is worth no less,
    and is strictly better in one of the two."""
    front = []
    for i, (c, v) in enumerate(points):
        dominated = any((c2 <= c and v2 >= v and (c2 < c or v2 > v)) for j, (c2, v2) in enumerate(points) if j != i)
        front.append(not dominated)
    return front


def run_sweep(grid_path: str | Path, out: str | Path, *, device: str = "auto", log=print) -> dict:
    out = Path(out)
    check_writable(out, "--out")
    grid, cells, base_dir = read_grid(grid_path)
    seeds = _int(grid.get("train_seeds", 3), "train_seeds", 1, 20)
    config = resolve_config(grid.get("preset", "small"), {"epochs": grid.get("epochs")})
    model = build_recipe(grid["base"], base_dir=base_dir).model
    real = _real(grid.get("real", "digits" if model in DIGITS_MODELS else None), out, base_dir)
    plan = {"grid": grid, "cells": [dataclasses.asdict(c) for c in cells]}
    stored = out / "sweep.json"
    if stored.exists() and json.loads(stored.read_text())["grid"] != json.loads(json.dumps(grid)):
        raise InputError("--out", str(out), "holds a sweep of another grid; use a new folder")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(stored, json.dumps(plan, indent=1) + "\n")
    rows, probe = [], _Probe(device)
    to_run = [c.name for c in cells if not (out / "cells" / c.name / "result.json").exists()]
    for i, cell in enumerate(cells):
        log(f"[sweep] cell {i + 1}/{len(cells)}: {cell.name}")
        folder = out / "cells" / cell.name
        rows.append(_run_cell(cell, grid, base_dir, folder, real, seeds, config, device, probe, log))
    return {**write_frontier(rows, out), "cells_run": len(to_run), "cells": len(cells)}


def _real(value, out: Path, base_dir: Path) -> Path | None:
    if value in (None, "none"):
        return None
    if value == "digits":
        real = out / "real"
        if not (real / "test").is_dir():
            write_real_digits(real)
        return real
    real = (base_dir / str(value)).resolve()
    if not ((real / "train").is_dir() and (real / "test").is_dir()):
        raise InputError("real", value, "expected a folder with train/ and test/ image sets, digits, or none")
    return real


def _run_cell(cell, grid, base_dir, folder: Path, real, seeds, config, device, probe, log) -> dict:
    done = folder / "result.json"
    if done.exists():
        return json.loads(done.read_text())
    recipe = build_recipe({**grid["base"], **cell.settings}, base_dir=base_dir)
    data = folder / "data"
    speed_file = folder / "generate.json"
    if not speed_file.exists():
        summary = generate(recipe, data, RunOptions(device=device, progress=False))
        speed = {
            "images_per_second": summary["images_per_second"],
            "wall_seconds": summary["wall_seconds"],
            "bytes_per_image": summary["bytes_per_image"],
        }
        speed.update(probe(recipe))
        atomic_write_text(speed_file, json.dumps(speed, indent=1) + "\n")
    resolved = {"model": recipe.model, "steps": recipe.steps, "guidance": recipe.guidance}  # the picture's defaults
    row = {"cell": cell.name, **resolved, **cell.settings, **json.loads(speed_file.read_text())}
    if real is not None:
        scores = []
        for seed in range(seeds):
            run = folder / "runs" / f"seed-{seed}"
            train(dataclasses.replace(config, seed=seed), data, run, resume=True, device=device, progress=False)
            scores.append(evaluate_run(run, real / "test", device=device)["top1"])
        row["synth_real"] = statistics.fmean(scores)
        row["synth_real_std"] = statistics.stdev(scores) if len(scores) > 1 else 0.0
        row["synth_real_seeds"] = scores
        if recipe.model in DIGITS_MODELS:  # the judge's features are the digits'
            overall = analyze(data, real / "train", folder / "analysis.json", features="judge")["overall"]
            row.update({k: overall.get(k) for k in ("coverage", "recall", "precision", "vendi_all")})
    atomic_write_text(done, json.dumps(row, indent=1) + "\n")
    log(f"[sweep] {cell.name}: {json.dumps({k: v for k, v in row.items() if k != 'synth_real_seeds'})}")
    return row


class _Probe:
    """FLOPs per image as run: the denoiser's FLOPs on one sample, counted call by call as they
    run (models.flops.CallFlops: an interval's halved calls, a cache's skipped blocks and a
    sampler's extra calls count as they cost), plus its decode by the decoder that ran (the VAE
    or a tiny one), counted likewise, and the resize to output_size; and the denoiser's forwards
    (images it saw) on that sample. One pipeline per model and decoder for the whole sweep."""

    def __init__(self, device: str):
        self.device = resolve_device(device)
        self.pipes: dict = {}

    def _pipe(self, name: str, decoder: dict | None = None):
        key = (name, decoder_label(decoder))
        if key not in self.pipes:
            spec = get_model(name)
            self.pipes[key] = load_pipeline(spec, None, self.device, torch.float32)
            install_decoder(self.pipes[key], spec, decoder)
        return self.pipes[key]

    def __call__(self, recipe) -> dict:
        if recipe.mixture:  # each generator's, weighted by its share of the images
            counts = mixture_counts([e.share for e in recipe.mixture], recipe.images_per_class)
            parts = [
                (n / recipe.images_per_class, self(recipe.for_model(e.model))) for e, n in zip(recipe.mixture, counts)
            ]
            return {k: sum(w * p[k] for w, p in parts) for k in parts[0][1]}
        spec = get_model(recipe.model)
        pipe = self._pipe(spec.name, recipe.decoder)
        base = self._pipe(recipe.first_steps["model"], recipe.decoder) if recipe.first_steps else None
        generator = Generator.for_recipe(pipe, recipe, first_base=base)
        generator.count_flops()
        with count_denoiser_images(pipe, *([base] if base is not None else [])) as seen:
            generator.generate(plan_samples(recipe)[:1])
        denoiser, decoder = generator.denoiser_flops_per_image, generator.decoder_flops_per_image
        resize = resize_flops(recipe.resolution, recipe.stored_size)
        return {
            "denoiser_forwards_per_image": seen[0],
            "denoiser_flops_per_image": denoiser,
            "decoder_flops_per_image": decoder,
            "flops_per_image": denoiser + decoder + resize,  # per stored image
        }


FIELDS = (
    "cell",
    "flops_per_image",
    "denoiser_flops_per_image",
    "denoiser_forwards_per_image",
    "decoder_flops_per_image",
    "bytes_per_image",
    "images_per_second",
    "synth_real",
    "synth_real_std",
    "coverage",
    "recall",
    "precision",
    "vendi_all",
    "pareto_flops",
    "pareto_speed",
)


def write_frontier(rows: list[dict], out: Path) -> dict:
    useful = [r for r in rows if r.get("synth_real") is not None]
    costs = {"pareto_flops": lambda r: r["flops_per_image"], "pareto_speed": lambda r: -r["images_per_second"]}
    for key, cost in costs.items():
        marks = pareto([(cost(r), r["synth_real"]) for r in useful]) if useful else []
        for r in rows:
            r[key] = None
        for r, mark in zip(useful, marks):
            r[key] = mark
    skip = (*FIELDS, "synth_real_seeds", "wall_seconds")
    axes = list(dict.fromkeys(k for r in rows for k in r if k not in skip))  # a variant's keys too
    columns = ["cell", *axes, *[f for f in FIELDS if f != "cell"]]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(out / "frontier.csv", buffer.getvalue())
    atomic_write_text(out / "frontier.json", json.dumps({"rows": rows}, indent=1) + "\n")
    atomic_write_text(out / "frontier.md", _markdown(rows, columns))
    files = ["frontier.csv", "frontier.json", "frontier.md"]
    if useful:
        _plot(rows, out / "frontier.png")
        files.append("frontier.png")
    return {"rows": rows, "files": files}


def _markdown(rows: list[dict], columns: list[str]) -> str:
    def cell(v):
        if isinstance(v, float):
            return f"{v:.4g}"
        return "" if v is None else str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"


# Lever families, for the picture's markers: the first whose keys a cell sets (a student is a
# model with student_of in the registry; first_steps puts its base's first steps in front).
FAMILY_MARKERS = {
    "student + base's first steps": "*",
    "distilled student": "P",
    "guidance interval / cache": "s",
    "diversity lever": "D",
    "mixture": "X",
    "sampler x steps": "o",
}
DIVERSITY_KEYS = ("apg", "cads", "guidance_schedule", "guidance_choices")
SHORT = {
    "guidance_interval=": "gi=",
    "sampler=": "",
    "steps=": "",
    "guidance=": "g",
    "first_steps=": "first=",
    "cache=": "",
}


def lever_family(row: dict) -> str:
    def on(key):
        return row.get(key) not in (None, "none", "default", "constant", False, "")

    model = row.get("model")
    if on("first_steps"):
        return "student + base's first steps"
    if isinstance(model, str) and model in MODELS and MODELS[model].student_of:
        return "distilled student"
    if on("models"):
        return "mixture"
    if on("guidance_interval") or on("cache"):
        return "guidance interval / cache"
    if any(on(k) for k in DIVERSITY_KEYS) or isinstance(row.get("guidance"), list):
        return "diversity lever"
    return "sampler x steps"


def is_default(row: dict) -> bool:
    """The cell of a model's registry defaults (sampler, steps, guidance, no lever): the reference
    every other cell is read against."""
    model = row.get("model")
    if (
        not isinstance(model, str)
        or model not in MODELS
        or lever_family(row) not in ("sampler x steps", "distilled student")
    ):
        return False
    spec = MODELS[model]
    return (
        row.get("sampler", "default") == "default"
        and row.get("steps", spec.steps) == spec.steps
        and float(row.get("guidance", spec.guidance)) == spec.guidance
        and row.get("preset") in (None, "default")
        and row.get("decoder") in (None, "vae")
        and row.get("output_size") in (None, "none")
    )


def short_label(row: dict) -> str:
    label = row["cell"]
    for long, short in SHORT.items():
        label = label.replace(long, short)
    label = label.replace(",", " ").replace("_", " ").strip()
    model = row.get("model")
    if "model=" not in row["cell"] and model in MODELS and MODELS[model].student_of:
        label = f"{model} {label}"  # a student's cells beside its base's in one frontier
    return f"default: {model}" if is_default(row) else label


def _plot(rows: list[dict], path: Path) -> None:
    """Usefulness against work, one marker per lever family; labels on the Pareto cells and the
    defaults only (the rest are in frontier.md), so the picture stays readable at 80+ cells."""
    import matplotlib  # heavy: matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # heavy: matplotlib

    useful = [r for r in rows if r.get("synth_real") is not None]
    fig, (ax_flops, ax_cov, ax_speed) = plt.subplots(1, 3, figsize=(19, 7.5))
    families = list(dict.fromkeys(lever_family(r) for r in useful))
    colours = {f: f"C{i}" for i, f in enumerate(FAMILY_MARKERS)}
    panels = [
        (
            ax_flops,
            "flops_per_image",
            1e-9,
            "synth_real",
            "GFLOPs per image (as run, decode included)",
            "pareto_flops",
        ),
        (ax_cov, "flops_per_image", 1e-9, "coverage", "GFLOPs per image (as run, decode included)", None),
        (ax_speed, "images_per_second", 1.0, "synth_real", "images/s (generation, this machine)", "pareto_speed"),
    ]
    for ax, xkey, scale, ykey, xlabel, mark in panels:
        points = [r for r in useful if r.get(ykey) is not None]
        for family in families:
            these = [r for r in points if lever_family(r) == family]
            if not these:
                continue
            x = [r[xkey] * scale for r in these]
            y = [r[ykey] for r in these]
            err = [r.get("synth_real_std") or 0 for r in these] if ykey == "synth_real" else None
            ax.errorbar(
                x,
                y,
                yerr=err,
                fmt=FAMILY_MARKERS[family],
                ms=6,
                color=colours[family],
                alpha=0.75,
                label=family,
                elinewidth=0.6,
            )
        if mark:
            front = sorted((r[xkey] * scale, r[ykey]) for r in points if r.get(mark))
            if front:
                ax.plot(*zip(*front), "-", color="k", lw=1, alpha=0.6, label="Pareto front")
        defaults = {}  # one default cell labelled per model (merged sweeps repeat it)
        for r in points:
            if is_default(r):
                defaults.setdefault(r.get("model"), r)
        labelled = [r for r in points if (mark and r.get(mark)) or any(r is d for d in defaults.values())]
        for i, r in enumerate(sorted(labelled, key=lambda r: (r[xkey], -r[ykey]))):
            ax.annotate(
                short_label(r),
                (r[xkey] * scale, r[ykey]),
                xytext=(6, 12 - 8 * (i % 4)),
                textcoords="offset points",
                fontsize=6.5,
                fontweight="bold" if is_default(r) else "normal",
                arrowprops={"arrowstyle": "-", "lw": 0.4, "alpha": 0.5},
            )
        ax.set_xscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(
            "synth->real top-1 (mean ± sd over seeds)" if ykey == "synth_real" else "coverage (judge features)"
        )
        ax.grid(alpha=0.3)
    ax_flops.legend(fontsize=8, loc="lower right")
    ax_cov.set_title("coverage of the real training digits", fontsize=9)
    ax_flops.set_title("labelled: the Pareto cells and the models' defaults (all cells: frontier.md)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _int(value, field: str, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise InputError(field, value, f"expected an integer from {lo} to {hi}")
    return value
