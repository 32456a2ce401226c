"""`--backend compile` on every tiny family, on the CPU: does Dynamo take each denoiser whole
(graph breaks, and why), how many graphs a run compiles, whether a second identical run compiles
any more (a recompile), and whether the compiled run writes what eager writes.

    python bench/compile_families.py [--out bench/results/cpu-DATE/compile_families.json] [FAMILY ...]

Each family: one eager run and two compiled runs of the same small recipe (2 steps, 4 images in
batches of 2, 32 px) in one process; the denoiser's first call is captured and handed to
torch._dynamo.explain for the fullgraph status. Minutes per family on a laptop CPU (inductor).
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from t2i_engine.engine.recipe import build_recipe
from t2i_engine.engine.run import RunOptions, generate
from t2i_engine.engine.verify import verify_dataset
from t2i_engine.export.tuning import compiled_graphs
from t2i_engine.models.pipelines import denoiser, load_pipeline
from t2i_engine.models.registry import MODELS

FAMILIES = [
    "tiny-sd",
    "tiny-sd2",
    "tiny-sdxl",
    "tiny-sd3",
    "tiny-flux",
    "tiny-flux-schnell",
    "tiny-pixart",
    "tiny-sana",
    "tiny-lumina2",
    "tiny-qwen-image",
]


def _images(folder: Path) -> dict:
    out = {}
    for shard in sorted(folder.glob("*.tar")):
        with tarfile.open(shard) as tar:
            for m in tar.getmembers():
                if m.name.endswith(".png"):
                    out[m.name] = np.asarray(Image.open(io.BytesIO(tar.extractfile(m).read()))).astype(int)
    return out


def fullgraph_status(model: str) -> dict:
    """Dynamo's view of the denoiser's forward on the call a generation makes."""
    pipe = load_pipeline(MODELS[model], None, torch.device("cpu"), torch.float32)
    module = denoiser(pipe)
    captured = {}

    def grab(_, args, kwargs):
        captured.setdefault("call", (args, kwargs))

    handle = module.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        from t2i_engine.dataset.records import Sample
        from t2i_engine.engine.generator import Generator

        spec = MODELS[model]
        gen = Generator(pipe, steps=2, guidance=spec.guidance, height=32, width=32, family=spec.family)
        gen.generate([Sample(i, f"s{i}", 0, "c", "c", "a photo", i) for i in range(2)])
    finally:
        handle.remove()
    args, kwargs = captured["call"]
    torch._dynamo.reset()
    with torch.no_grad():
        explained = torch._dynamo.explain(module.forward)(*args, **kwargs)
    reasons = sorted({str(b.reason).splitlines()[0][:160] for b in explained.break_reasons})
    return {
        "denoiser": type(module).__name__,
        "graphs": explained.graph_count,
        "graph_breaks": explained.graph_break_count,
        "break_reasons": reasons,
    }


def compiled_runs(model: str, folder: Path) -> dict:
    recipe = build_recipe(
        {
            "model": model,
            "classes": ["cat", "dog"],
            "images_per_class": 2,
            "steps": 2,
            "resolution": 32,
            "batch_size": 2,
            "format": "png",
        }
    )
    generate(recipe, folder / "eager", RunOptions(device="cpu", progress=False))
    torch._dynamo.reset()
    start = compiled_graphs()
    t = time.perf_counter()
    generate(recipe, folder / "compile", RunOptions(device="cpu", progress=False, backend="compile"))
    first_s, first = time.perf_counter() - t, compiled_graphs() - start
    generate(recipe, folder / "again", RunOptions(device="cpu", progress=False, backend="compile"))
    again = compiled_graphs() - start - first
    eager, compiled = _images(folder / "eager"), _images(folder / "compile")
    worst = max(int(np.abs(eager[k] - compiled[k]).max()) for k in eager) if eager.keys() == compiled.keys() else None
    return {
        "valid": verify_dataset(folder / "compile") == [],
        "images": len(compiled),
        "graphs_first_run": first,
        "graphs_second_run": again,
        "first_run_s": round(first_s, 1),
        "worst_pixel_vs_eager": worst,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("families", nargs="*", default=FAMILIES)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    rows = []
    for model in args.families:
        row = {"model": model}
        try:
            row.update(fullgraph_status(model))
            with tempfile.TemporaryDirectory() as tmp:
                row.update(compiled_runs(model, Path(tmp)))
        except Exception as e:  # noqa: BLE001 - one family's failure is a row, not the end of the table
            row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
        print(json.dumps(row), flush=True)
        rows.append(row)
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            meta = {"torch": torch.__version__, "machine": platform.processor() or platform.machine(), "cpu": True}
            args.out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
