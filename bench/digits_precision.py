"""What a precision costs in usefulness as training data: the embedded digits model generates the
same samples (same recipe, same seeds) once per precision, the small CNN trains on each set with
several training seeds, and each is tested on the real digits (synth->real top-1). The sets are
also compared image by image (PSNR and mean/max difference in uint8 levels against the first).

    python bench/digits_precision.py OUT [--precisions bf16,fp8] [--seeds 0,1,2] [--device cuda] [--json FILE]

A precision is a `--precision` value, optionally with switches after '+' (e.g. fp8+compile,
bf16+fp8conv for the FP8 convolution kernel); fp8 needs a compile mode, so fp8 alone means
fp8+compile. PNG, so the codec adds no difference.
On a CPU use fp32 (the dry run of the GPU job: `--precisions fp32,fp32+compile --epochs 1`).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from t2i_engine.benchmark.measure import pixel_difference
from t2i_engine.engine.recipe import build_recipe
from t2i_engine.engine.run import RunOptions, generate
from t2i_engine.engine.verify import verify_dataset
from t2i_engine.eval.classify import evaluate_run
from t2i_engine.export.tuning import Tuning
from t2i_engine.training.digits_data import write_real_digits
from t2i_engine.training.loop import train
from t2i_engine.training.presets import resolve_config
from t2i_engine.training.sources import open_set


def tuning_of(text: str) -> Tuning:
    precision, *switches = text.split("+")
    compile_mode = "max-autotune" if "max-autotune" in switches else "default" if "compile" in switches else "none"
    if precision == "fp8" and compile_mode == "none":
        compile_mode = "default"
    return Tuning(precision, compile_mode, "fuse_qkv" in switches, "channels_last" in switches)


def pixels(path: Path) -> dict[str, np.ndarray]:
    return {item.key: np.asarray(item.image) for item in open_set(path).read()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--precisions", default="bf16,fp8")
    ap.add_argument("--seeds", default="0,1,2", help="training seeds per set")
    ap.add_argument("--images-per-class", type=int, default=100)
    ap.add_argument("--guidance", type=float, default=2.0)
    ap.add_argument("--epochs", type=int, default=None, help="default: the small preset's")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--json", type=Path, help="also write the result here")
    args = ap.parse_args()
    precisions = [p for p in args.precisions.split(",") if p]
    seeds = [int(s) for s in args.seeds.split(",") if s]
    real = args.out / "real"
    if not (real / "test").is_dir():
        write_real_digits(real)
    recipe = build_recipe(
        {"model": "digits", "guidance": args.guidance, "images_per_class": args.images_per_class, "format": "png"}
    )
    result = {"recipe_hash": recipe.content_hash(), "guidance": args.guidance, "sets": {}}
    reference = None
    for name in precisions:
        data = args.out / "synthetic" / name.replace("+", "_")
        t0 = time.perf_counter()
        conv = "fp8" if "fp8conv" in name.split("+") else "torch"
        options = RunOptions(device=args.device, progress=False, tuning=tuning_of(name), conv=conv)
        summary = generate(recipe, data, options)
        entry = {"generate_seconds": round(time.perf_counter() - t0, 1), "summary": summary}
        entry["verify_problems"] = verify_dataset(data)  # [] = every planned sample once, its label right
        images = pixels(data)
        if reference is None:
            reference = images
        else:
            keys = sorted(reference)
            entry["vs_first"] = pixel_difference(
                np.stack([reference[k] for k in keys]), np.stack([images[k] for k in keys])
            )
        top1 = []
        for seed in seeds:
            run = args.out / "runs" / f"{name.replace('+', '_')}-seed{seed}"
            config = resolve_config("small", {"seed": seed, **({"epochs": args.epochs} if args.epochs else {})})
            train(config, data, run, resume=True, device=args.device, progress=False)
            top1.append(evaluate_run(run, real / "test", device=args.device)["top1"])
        entry["synth_to_real_top1"] = top1
        entry["synth_to_real_mean"] = round(statistics.fmean(top1), 4)
        result["sets"][name] = entry
        print(json.dumps({name: entry}, default=str), file=sys.stderr, flush=True)
        if args.json:  # after each set: a time limit still leaves what ended
            args.json.write_text(json.dumps(result, indent=1, default=str) + "\n")
    print(json.dumps(result, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
