"""Planning at ImageNet scale (issue 35's goal: 1.3M samples, ImageNet-1k x 1,300 with one
template, planned in at most 3 s and 300 MB here): the time to build the recipe, plan its units,
walk every unit's name and size (what a run, a part and `verify`'s listing need), pick one part's
units, and materialise one unit's samples; and the process's peak resident memory.

    python bench/plan_scale.py [--classes 1000] [--images-per-class 1300] [--out FILE]

Run it in a fresh process (peak memory is the process's); the numbers are for this machine.
"""

from __future__ import annotations

import argparse
import platform
import resource
import time
from datetime import date
from pathlib import Path

from record import save_json

from t2i_engine.engine.plan import plan_units
from t2i_engine.engine.recipe import build_recipe


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--images-per-class", type=int, default=1300)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t0 = time.perf_counter()
    recipe = build_recipe(
        {
            "model": "digits",
            "classes": [{"id": f"n{k:08d}", "name": f"class {k}"} for k in range(args.classes)],
            "images_per_class": args.images_per_class,
            "prompt": {"regime": "template", "templates": ["a photo of a {name}"]},
        }
    )
    t1 = time.perf_counter()
    units = plan_units(recipe)
    walked = sum(u.size for u in units)
    names = [u.name for u in units]
    t2 = time.perf_counter()
    part = [u for u in units if u.shard % 8 == 3]
    t3 = time.perf_counter()
    first = units[len(units) // 2].samples
    t4 = time.perf_counter()
    result = {
        "bench": "plan_scale",
        "date": date.today().isoformat(),
        "machine": f"{platform.processor() or platform.machine()}, {platform.system()}, CPU only",
        "samples": recipe.num_samples,
        "units": len(units),
        "seconds": {
            "recipe": round(t1 - t0, 3),
            "plan_and_walk_units": round(t2 - t1, 3),
            "one_part_of_8": round(t3 - t2, 3),
            "one_unit_samples": round(t4 - t3, 4),
            "total": round(t4 - t0, 3),
        },
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "rss_before_mb": round(base_rss, 1),
    }
    assert walked == recipe.num_samples and len(names) == len(units) and len(first) == units[0].size and part
    save_json(result, args.out)


if __name__ == "__main__":
    main()
