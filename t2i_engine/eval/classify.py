"""`t2i-engine eval`: a trained run's accuracy on any labelled set.

Top-1, top-5 (with at least 5 classes), per-class accuracy and the confusion matrix (rows: true
class, columns: predicted, both in the run's class order). Classes are matched by id; a set
whose class ids differ from the run's is refused. Synth->Real is a synthetic-trained run on
real data; Real->Synth a real-trained run on a synthetic set: the record keeps the origin of
both sides, which is how `report` knows which is which.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from ..devices import resolve_device
from ..files import atomic_write_text, check_writable
from ..seeds import stable_hash
from ..training.loop import load_run
from ..training.presets import TrainConfig, eval_transform
from ..training.sources import match_classes, open_set
from ..training.stream import LabelledStream


def evaluate_run(
    run: str | Path,
    data_path: str | Path,
    *,
    out: str | Path | None = None,
    device: str = "auto",
    batch_size: int = 256,
    workers: int = 0,
) -> dict:
    run = Path(run)
    check_writable(Path(out) if out else run / "evals", "--out", kind="file" if out else "folder")
    record, model = load_run(run)
    data = open_set(data_path, "--data")
    run_ids = tuple(c["id"] for c in record["classes"])
    labels = match_classes(run_ids, data)
    dev = resolve_device(device)
    model = model.to(dev)
    config = TrainConfig(**record["config"])
    stream = LabelledStream(data, labels, eval_transform(config))
    n = len(run_ids)
    confusion = torch.zeros(n, n, dtype=torch.long)
    top5 = 0
    with torch.inference_mode():
        for images, targets in DataLoader(stream, batch_size=batch_size, num_workers=workers):
            logits = model(images.to(dev)).float().cpu()
            confusion += torch.bincount(targets * n + logits.argmax(1), minlength=n * n).view(n, n)
            if n >= 5:
                top5 += (logits.topk(5, dim=1).indices == targets[:, None]).any(1).sum().item()
    total = int(confusion.sum())
    per_class = {
        c: (confusion[i, i] / confusion[i].sum()).item() if confusion[i].sum() else None for i, c in enumerate(run_ids)
    }
    result = {
        "run": str(run),
        "data": data.describe(),
        "trained_on": record["data"],
        "arch": record["config"]["arch"],
        "images": total,
        "top1": confusion.diag().sum().item() / total,
        "top5": top5 / total if n >= 5 else None,
        "per_class": per_class,
        "class_ids": list(run_ids),
        "confusion": confusion.tolist(),
    }
    result["direction"] = direction(record["data"], result["data"])
    path = Path(out) if out else run / "evals" / f"{_slug(data)}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(result, indent=1) + "\n")
    result["path"] = str(path)
    return result


def direction(trained_on: dict, tested_on: dict) -> str:
    """synth->real, real->synth, or train->test of one kind (e.g. real->real, the baseline)."""
    short = {"synthetic": "synth", "real": "real"}
    return f"{short.get(trained_on.get('kind'), 'other')}->{short.get(tested_on.get('kind'), 'other')}"


def _slug(data) -> str:
    where = data.path if isinstance(data.path, str) else str(data.path.resolve())  # a URL, or a folder
    name = "".join(ch if ch.isalnum() or ch in "-_" else "-" for ch in data.name)
    return f"{name}-{stable_hash(where) % 16**8:08x}"
