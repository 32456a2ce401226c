"""The cost model of bench/RESULTS.md: GPU-hours and dollars per million images, and the time of
the paper's whole study (13 models x 100,000 images) on 1 and 8 GPUs.

    python bench/cost_model.py bench/results/h100-2026-11-26 [--price 2.50]

Measured: images/sec of the bench JSONs in the folder (one card, one run). The study needs every
model at its registry settings, most of which were not run; for those the time is an ESTIMATE:
FLOPs per image counted here (denoiser calls = the scheduler's timesteps for the registry's steps)
(real architectures on the meta device, fake tensors) divided by the matmul rate and the MFU
measured in that run for the same family (diffusers bf16 at its best batch). Models with no
builder yet (Sana, Lumina-2, Qwen-Image) are left out and named.
Writes results/cost-model-<date>.json and prints the tables in Markdown.
"""

from __future__ import annotations

import argparse
import json
from datetime import date
from pathlib import Path

import torch

from t2i_engine.models.architectures import PIPELINE_FAMILIES, architecture, build_random_pipeline
from t2i_engine.models.flops import pipeline_flops, uses_cfg
from t2i_engine.models.pipelines import apply_registry_settings
from t2i_engine.models.registry import MODELS

PAPER_MODELS = [
    "sd15",
    "sd21",
    "sdxl",
    "sdxl-turbo",
    "sd3-medium",
    "flux-dev",
    "flux-schnell",
    "sd35-large",
    "sd35-medium",
    "sd35-large-turbo",
    "sana-1.6b",
    "lumina2",
    "qwen-image",
]
STUDY_IMAGES = 100_000


def registry_flops(name: str) -> float | None:
    spec = MODELS[name]
    if spec.family not in PIPELINE_FAMILIES:
        return None
    pipe = build_random_pipeline(spec, torch.device("meta"), torch.bfloat16)
    apply_registry_settings(spec, pipe)
    text = architecture(name)["text"] if spec.family in ("sd3", "flux") else None
    h, w = spec.resolution
    # the scheduler's own timesteps: PNDM (SD1.5) makes 51 denoiser calls for 50 steps
    kw = {"mu": 1.0} if getattr(pipe.scheduler.config, "use_dynamic_shifting", False) else {}
    pipe.scheduler.set_timesteps(spec.steps, **kw)
    calls = len(pipe.scheduler.timesteps)
    return pipeline_flops(
        pipe, spec.family, steps=calls, cfg=uses_cfg(pipe, spec, spec.guidance), height=h, width=w, text=text
    )["per_image"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("results", help="folder of bench-*.json from one GPU run")
    ap.add_argument(
        "--price",
        type=float,
        default=2.50,
        help="dollars per GPU-hour (default 2.50, an on-demand H100 rate; state yours)",
    )
    args = ap.parse_args()
    runs = [json.loads(p.read_text()) for p in sorted(Path(args.results).glob("bench-*.json"))]
    card = runs[0]["device"]["name"]
    rate = sorted(r["matmul"]["flops_per_second"] for r in runs)[len(runs) // 2]

    measured = []
    for r in runs:
        for run in r["runs"]:
            if "images_per_second" not in run:
                continue
            ips = run["images_per_second"]
            hours = 1e6 / ips / 3600
            measured.append(
                {
                    "model": r["model"],
                    "settings": r["settings"],
                    "path": run["path"],
                    "dtype": run["dtype"],
                    "batch": run["batch"],
                    "images_per_second": ips,
                    "mfu": run["mfu"],
                    "gpu_hours_per_million": round(hours, 1),
                    "dollars_per_million": round(hours * args.price),
                }
            )
    family_mfu = {}
    for r in runs:
        best = max(
            (x for x in r["runs"] if x["path"] == "baseline:diffusers" and "mfu" in x),
            key=lambda x: x["mfu"],
            default=None,
        )
        if best:
            family_mfu.setdefault(r["family"], best["mfu"])

    study, left_out = [], []
    for name in PAPER_MODELS:
        spec = MODELS[name]
        flops = registry_flops(name)
        if flops is None or spec.family not in family_mfu:
            left_out.append(name)
            continue
        ips = rate * family_mfu[spec.family] / flops
        study.append(
            {
                "model": name,
                "steps": spec.steps,
                "guidance": spec.guidance,
                "resolution": spec.resolution[0],
                "tflop_per_image": round(flops / 1e12, 1),
                "family_mfu": family_mfu[spec.family],
                "estimated_images_per_second": round(ips, 3),
                "gpu_hours_for_100k": round(STUDY_IMAGES / ips / 3600, 1),
            }
        )
    total = sum(s["gpu_hours_for_100k"] for s in study)
    out = {
        "date": str(date.today()),
        "card": card,
        "matmul_flops_per_second": rate,
        "price_per_gpu_hour": args.price,
        "measured": measured,
        "study_estimate": study,
        "study_left_out": left_out,
        "study_gpu_hours": round(total, 1),
        "study_hours_on_8_gpus": round(total / 8, 1),
        "study_dollars": round(total * args.price),
    }
    path = Path(__file__).parent / "results" / f"cost-model-{out['date']}.json"
    path.write_text(json.dumps(out, indent=1) + "\n")

    print(f"Measured on {card}, at ${args.price:.2f} per GPU-hour:\n")
    print(
        "| model | settings | path | dtype | batch | images/s | MFU | GPU-h per 1M images | $ per 1M images |\n"
        "|---|---|---|---|---|---|---|---|---|"
    )
    for m in measured:
        s = m["settings"]
        print(
            f"| {m['model']} | {s['height']}px {s['steps']} steps g{s['guidance']} | {m['path']} | {m['dtype']} | "
            f"{m['batch']} | "
            f"{m['images_per_second']:.3g} | {m['mfu']:.1%} | {m['gpu_hours_per_million']} | "
            f"{m['dollars_per_million']:,} |"
        )
    print(
        "\nThe paper's study, 100,000 images per model at its registry settings "
        "(ESTIMATE from counted FLOPs and the family's measured MFU):\n"
    )
    print(
        "| model | px | steps | guidance | TFLOP/image | family MFU used | est. images/s | GPU-h for 100k |\n"
        "|---|---|---|---|---|---|---|---|"
    )
    for s in study:
        print(
            f"| {s['model']} | {s['resolution']} | {s['steps']} | {s['guidance']} | {s['tflop_per_image']} | "
            f"{s['family_mfu']:.1%} | "
            f"{s['estimated_images_per_second']:.3g} | {s['gpu_hours_for_100k']} |"
        )
    print(
        f"\n{len(study)} models: {total:.0f} GPU-hours (${total * args.price:,.0f}); {total / 8:.1f} h on 8 GPUs. "
        f"Left out: {', '.join(left_out)}."
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
