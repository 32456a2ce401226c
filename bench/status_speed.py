"""How long `status` takes on a folder of 1,300 committed shards (issue 35's goal: under 2 s
here): the command as a user runs it (a new process, imports included) and the call alone,
each the median of a few, on a real dataset of the embedded model made first (1,300 images at
1 image per shard, 2 steps: the shard count is what status's work grows with; it reads no
shard's content, only names, the log and the manifest).

    python bench/status_speed.py [--shards 1300] [--reps 5] [--out FILE]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

from record import save_json

from t2i_engine.engine.recipe import build_recipe
from t2i_engine.engine.run import RunOptions, generate
from t2i_engine.engine.status import dataset_status


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shards", type=int, default=1300)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "ds"
        recipe = build_recipe(
            {"model": "digits", "images_per_class": args.shards // 10, "steps": 2, "images_per_shard": 1}
        )
        t0 = time.perf_counter()
        generate(recipe, out, RunOptions(device="cpu", progress=False, encode_workers=0))
        made = time.perf_counter() - t0
        calls, commands = [], []
        for _ in range(args.reps):
            t = time.perf_counter()
            state = dataset_status(out)
            calls.append(time.perf_counter() - t)
            t = time.perf_counter()
            subprocess.run([sys.executable, "-m", "t2i_engine.cli", "status", str(out)], check=True,
                           capture_output=True)  # fmt: skip
            commands.append(time.perf_counter() - t)
    result = {
        "bench": "status_speed",
        "date": date.today().isoformat(),
        "machine": f"{platform.processor() or platform.machine()}, {platform.system()}, CPU only",
        "shards": state["shards"]["done"],
        "log_lines": state["log_lines"],
        "seconds_to_make_the_dataset": round(made, 1),
        "status_call_seconds": round(statistics.median(calls), 3),
        "status_command_seconds": round(statistics.median(commands), 3),
        "reps": args.reps,
    }
    save_json(result, args.out)


if __name__ == "__main__":
    main()
