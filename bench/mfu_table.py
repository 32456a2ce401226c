"""The table `t2i-engine plan` prices runs with (t2i_engine/assets/bench-records.json), made from
the bench records committed under bench/results: per card, its measured dense matmul rate (the
median over its records) and, per model, the MFU of `generate`'s own path (engine:eager; the
diffusers baseline where the engine was not run) at its largest measured batch, naming the record.

    python bench/mfu_table.py [--out t2i_engine/assets/bench-records.json]

Rerun it after committing new GPU records.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CARDS = {"NVIDIA H100 80GB HBM3": "h100", "NVIDIA H200": "h200"}  # the device names records carry


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "t2i_engine/assets/bench-records.json")
    args = ap.parse_args()
    cards: dict[str, dict] = {}
    for path in sorted((ROOT / "bench/results").rglob("bench-*.json")):
        if "first-run" in path.parts:  # a card's first try, superseded by the records beside it
            continue
        record = json.loads(path.read_text())
        if "matmul" not in record or record.get("device", {}).get("name") not in CARDS:
            continue
        card = cards.setdefault(
            CARDS[record["device"]["name"]], {"name": record["device"]["name"], "rates": [], "models": {}}
        )
        card["rates"].append(record["matmul"]["flops_per_second"])
        runs = [r for r in record["runs"] if r.get("mfu")]
        engine = [r for r in runs if r["path"] == "engine:eager"] or [
            r for r in runs if r["path"] == "baseline:diffusers"
        ]
        if not engine:
            continue
        best = max(engine, key=lambda r: r["batch"])  # the largest batch measured: the one a run would use
        card["models"][record["model"]] = {
            "mfu": best["mfu"],
            "path": best["path"],
            "batch": best["batch"],
            "dtype": best.get("dtype"),
            "record": path.relative_to(ROOT).as_posix(),
        }
    table = {
        key: {"name": c["name"], "matmul_flops_per_second": statistics.median(c["rates"]), "models": c["models"]}
        for key, c in sorted(cards.items())
    }
    args.out.write_text(json.dumps(table, indent=1, sort_keys=True) + "\n")
    print(json.dumps(table, indent=1))


if __name__ == "__main__":
    main()
