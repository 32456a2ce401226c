"""MFU by two yardsticks (issue 37, item 2) for every GPU bench record committed under
bench/results: against the dense bf16 matmul rate measured in the same run (the `mfu` the record
holds) and against the card's published dense bf16 peak (t2i_engine.benchmark.measure
.PUBLISHED_BF16_PEAKS). Records made before bench wrote the second figure get it here from the
same numbers: FLOPs per image x images/s / the published peak; nothing is re-measured.

    python bench/mfu_yardsticks.py [--json FILE]

Prints a Markdown table (bench/RESULTS.md quotes it).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from t2i_engine.benchmark.measure import published_peak

ROOT = Path(__file__).resolve().parent.parent


def rows() -> list[dict]:
    out = []
    for path in sorted((ROOT / "bench/results").rglob("bench-*.json")):
        if "first-run" in path.parts:  # a card's first try, superseded by the records beside it
            continue
        record = json.loads(path.read_text())
        if record.get("device", {}).get("type") != "cuda" or "matmul" not in record:
            continue
        peak = published_peak(record["device"]["name"])
        for run in record["runs"]:
            if "images_per_second" not in run:
                continue
            achieved = run["flops_per_image"] * run["images_per_second"]
            out.append(
                {
                    "record": path.relative_to(ROOT).as_posix(),
                    "card": record["device"]["name"],
                    "model": record["model"],
                    "steps": record["settings"]["steps"],
                    "path": run["path"] + (f" [{run['config']}]" if run.get("config") else ""),
                    "dtype": run.get("dtype"),
                    "batch": run["batch"],
                    "images_per_second": run["images_per_second"],
                    "achieved_tflops": round(achieved / 1e12, 1),
                    "measured_matmul_tflops": round(record["matmul"]["flops_per_second"] / 1e12, 1),
                    "mfu_measured_matmul": run["mfu"],
                    "published_peak_tflops": None if peak is None else peak["flops_per_second"] / 1e12,
                    "mfu_published_peak": None if peak is None else round(achieved / peak["flops_per_second"], 4),
                }
            )
    return out


def table(found: list[dict]) -> str:
    lines = [
        "| card | model | steps | path | dtype | batch | images/s | achieved TFLOP/s | MFU vs measured matmul "
        "(TFLOP/s) | MFU vs published peak (TFLOP/s) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in found:
        published = (
            "-"
            if r["mfu_published_peak"] is None
            else (f"{r['mfu_published_peak']:.1%} ({r['published_peak_tflops']:g})")
        )
        lines.append(
            f"| {r['card']} | {r['model']} | {r['steps']} | {r['path']} | {r['dtype']} | {r['batch']} "
            f"| {r['images_per_second']:.4g} "
            f"| {r['achieved_tflops']:g} | {r['mfu_measured_matmul']:.1%} ({r['measured_matmul_tflops']:g}) "
            f"| {published} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", type=Path, help="also write the rows as JSON here")
    args = ap.parse_args()
    found = rows()
    print(table(found))
    if args.json:
        args.json.write_text(json.dumps(found, indent=1) + "\n")


if __name__ == "__main__":
    main()
