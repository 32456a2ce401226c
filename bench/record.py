"""The JSON record every benchmark script writes: what ran, where, with which versions."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path


def write_record(bench: str, model: str, results: list[dict], out_dir: str, file_stem: str) -> Path:
    """Write results with the git sha, device, torch threads and library versions."""
    import torch

    from t2i_engine.benchmark.measure import cpu_model
    from t2i_engine.dataset.manifest import versions

    sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    record = {
        "bench": bench,
        "date": time.strftime("%Y-%m-%d"),
        "git": sha,
        "device": f"CPU: {cpu_model()}",
        "torch_threads": torch.get_num_threads(),
        "versions": versions(),
        "model": model,
        "results": results,
    }
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{file_stem}-{record['date']}.json"
    path.write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {path}")
    return path


def save_json(result: dict, out: Path | None) -> None:
    """Print a bench script's result, and write it to `out` when given."""
    print(json.dumps(result, indent=1))
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1) + "\n")


def repeat_generate(recipe, options, repeats: int) -> list[dict]:
    """Run `generate` `repeats` times, each into a fresh temporary folder; returns the summaries."""
    import tempfile

    from t2i_engine.engine.run import generate

    runs = []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as tmp:
            runs.append(generate(recipe, Path(tmp) / "ds", options))
    return runs


def medians(runs: list[dict], keys: tuple[str, ...]) -> dict:
    """`{key}_median` and `{key}_runs` of numeric summary fields; `stage_seconds_runs` always."""
    import statistics

    out = {}
    for key in keys:
        out[f"{key}_median"] = statistics.median(r[key] for r in runs)
        out[f"{key}_runs"] = [r[key] for r in runs]
    out["stage_seconds_runs"] = [r["stage_seconds"] for r in runs]
    return out
