"""One frontier from several sweeps of the same model (phase 1's samplers x steps, phase 2's
levers): every finished cell's result.json, the Pareto fronts marked over all of them, written
as frontier.md/csv/json/png by the sweep's own writer.

    python bench/frontier/merge.py OUT SWEEP_DIR [SWEEP_DIR ...]

Cells of sweeps run before the denoiser's FLOPs were counted on their own (phase 1) get them as
their FLOPs per image less one decode (the decode is the same in every cell of a model and size).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from t2i_engine.eval.sweep import write_frontier
from t2i_engine.models.registry import get_model


def main(out: str, *sweeps: str) -> None:
    rows = []
    for sweep in sweeps:
        base = json.loads((Path(sweep) / "sweep.json").read_text())["grid"]["base"]
        spec = get_model(base.get("model", "digits"))
        # cells of sweeps run before each row said its model, steps and guidance get the grid's
        resolved = {
            "model": spec.name,
            "steps": base.get("steps", spec.steps),
            "guidance": base.get("guidance", spec.guidance),
        }
        for result in sorted(Path(sweep).glob("cells/*/result.json")):
            rows.append({"sweep": Path(sweep).name, **resolved, **json.loads(result.read_text())})
    decodes = {r["flops_per_image"] - r["denoiser_flops_per_image"] for r in rows if "denoiser_flops_per_image" in r}
    if len(decodes) != 1:
        raise SystemExit(f"expected one decode cost across the sweeps, found {sorted(decodes)}")
    decode = decodes.pop()
    for r in rows:
        r.setdefault("denoiser_flops_per_image", r["flops_per_image"] - decode)
    Path(out).mkdir(parents=True, exist_ok=True)
    written = write_frontier(rows, Path(out))
    print(f"{len(rows)} cells -> {', '.join(written['files'])} in {out}")


if __name__ == "__main__":
    main(*sys.argv[1:])
