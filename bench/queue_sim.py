"""Makespan of the local scheduler's dynamic queue against the ideal and a static even split.

A discrete-event simulation of the policy in t2i_engine/engine/workers.py: every device asks
for the next unit in plan order as soon as it has handed its last one over; a unit takes
`unit_seconds / speed` on a device plus a fixed hand-over latency. The ideal is the total work
spread perfectly (sum of speeds); the static split gives device i every N-th unit, as
`--part i/N` does. Measured, not tested: it shows what the policy can do, not what a machine does.

    python bench/queue_sim.py --out bench/results/queue-sim-2026-11-26.json
"""

from __future__ import annotations

import argparse
import heapq
import json
import math
import sys
from pathlib import Path


def dynamic_makespan(units: int, speeds: list[float], unit_seconds: float, latency: float) -> float:
    free = [(0.0, i) for i in range(len(speeds))]  # (time the device asks, device)
    heapq.heapify(free)
    end = 0.0
    for _ in range(units):
        t, i = heapq.heappop(free)
        done = t + latency + unit_seconds / speeds[i]
        end = max(end, done)
        heapq.heappush(free, (done, i))
    return end


def static_makespan(units: int, speeds: list[float], unit_seconds: float, latency: float) -> float:
    n = len(speeds)
    return max(math.ceil((units - i) / n) * (latency + unit_seconds / s) for i, s in enumerate(speeds))


def ideal_makespan(units: int, speeds: list[float], unit_seconds: float) -> float:
    return units * unit_seconds / sum(speeds)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--units", type=int, default=1000, help="shards (1,000 images each: a million-image dataset)")
    ap.add_argument("--unit-seconds", type=float, default=60.0, help="time of one unit on a full-speed device")
    ap.add_argument("--latency", type=float, default=0.05, help="hand-over time per unit (queue round trip)")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    rows = []
    for n in range(1, 9):
        for label, speeds in (("equal", [1.0] * n), ("one at half speed", [0.5] + [1.0] * (n - 1))):
            if n == 1 and label != "equal":
                continue
            ideal = ideal_makespan(args.units, speeds, args.unit_seconds)
            dyn = dynamic_makespan(args.units, speeds, args.unit_seconds, args.latency)
            sta = static_makespan(args.units, speeds, args.unit_seconds, args.latency)
            rows.append(
                {
                    "devices": n,
                    "speeds": label,
                    "ideal_s": round(ideal, 1),
                    "dynamic_s": round(dyn, 1),
                    "static_s": round(sta, 1),
                    "dynamic_over_ideal": round(dyn / ideal - 1, 4),
                    "static_over_ideal": round(sta / ideal - 1, 4),
                }
            )
    result = {"units": args.units, "unit_seconds": args.unit_seconds, "latency_s": args.latency, "rows": rows}
    print("| devices | speeds | ideal (s) | dynamic queue (s) | over ideal | static split (s) | over ideal |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['devices']} | {r['speeds']} | {r['ideal_s']} | {r['dynamic_s']} | "
            f"{100 * r['dynamic_over_ideal']:.2f}% | "
            f"{r['static_s']} | {100 * r['static_over_ideal']:.2f}% |"
        )
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")
        print(f"-> {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
