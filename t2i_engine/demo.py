"""`t2i-engine demo`: the paper's whole loop on the embedded digits model, on a CPU.

    real digits -> OUT/real/{train,test}           (scikit-learn's digits, the fixed split)
    generate    -> OUT/synthetic/guidance-G        (one set per guidance scale)
    train       -> OUT/runs/real, OUT/runs/synthetic-guidance-G   (preset small)
    eval        synth->real on real/test, real->synth on each synthetic set, real->real baseline
    analyze     each synthetic set against real/train with the judge's features
    report      -> OUT/report (table.md/csv/json and PNGs); the table is printed

Every step resumes or is skipped when its output exists, so an interrupted demo continues.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from .engine.recipe import build_recipe
from .engine.run import RunOptions, generate
from .errors import InputError
from .eval.analyze import analyze
from .eval.classify import evaluate_run
from .eval.report import write_report
from .files import check_writable
from .training.digits_data import write_real_digits
from .training.loop import train
from .training.presets import resolve_config

GUIDANCES = (1.0, 2.0, 7.5)


def run_demo(
    out: str | Path,
    *,
    guidances=GUIDANCES,
    images_per_class: int = 100,
    epochs: int | None = None,
    device: str = "auto",
    progress: bool = True,
) -> dict:
    out = Path(out)
    check_writable(out, "--out")
    recipes = {
        g: build_recipe({"model": "digits", "guidance": g, "images_per_class": images_per_class}) for g in guidances
    }
    config = resolve_config("small", {"epochs": epochs})
    start = time.perf_counter()

    def step(message: str) -> None:
        print(f"[demo {time.perf_counter() - start:6.1f} s] {message}", file=sys.stderr, flush=True)

    real = out / "real"
    if not (real / "test").is_dir():
        step("writing the real digits (train 1,200 / test 597)")
        write_real_digits(real)
    synthetic = {}
    for g, recipe in recipes.items():
        synthetic[g] = out / "synthetic" / f"guidance-{g:g}"
        step(f"generating {recipe.num_samples} digits at guidance {g:g}")
        generate(recipe, synthetic[g], RunOptions(device=device, progress=progress))
    runs = {"real": out / "runs" / "real"}
    runs.update({g: out / "runs" / f"synthetic-guidance-{g:g}" for g in guidances})
    for name, run in runs.items():
        data = real / "train" if name == "real" else synthetic[name]
        step(f"training {config.arch} on {data}")
        train(config, data, run, resume=True, device=device, progress=False)
    step("evaluating: real->real, synth->real, real->synth")
    evals = {"real->real": evaluate_run(runs["real"], real / "test", device=device)}
    for g in guidances:
        evals[f"synth->real g{g:g}"] = evaluate_run(runs[g], real / "test", device=device)
        evals[f"real->synth g{g:g}"] = evaluate_run(runs["real"], synthetic[g], device=device)
    analyses = []
    for g in guidances:
        step(f"analyzing guidance {g:g} against the real training digits (judge features)")
        path = out / "analysis" / f"guidance-{g:g}.json"
        analyze(synthetic[g], real / "train", path, features="judge", device="cpu")
        analyses.append(path)
    report = write_report([*runs.values(), *analyses], out / "report")
    step(f"report written to {out / 'report'}: {', '.join(report['files'])}")
    return {
        "table": report["table"],
        "evals": {k: v["top1"] for k, v in evals.items()},
        "runs": {str(k): str(v) for k, v in runs.items()},
        "report": str(out / "report"),
        "seconds": round(time.perf_counter() - start, 1),
    }


def check_guidances(values: list[str] | None) -> tuple[float, ...]:
    if not values:
        return GUIDANCES
    out = []
    for v in values:
        try:
            g = float(v)
        except ValueError:
            raise InputError("--guidance", v, "expected a number from 0 to 30") from None
        if not 0 <= g <= 30:
            raise InputError("--guidance", v, "expected a number from 0 to 30")
        out.append(g)
    return tuple(dict.fromkeys(out))
