"""An embedded model's quality figures (digits, digits-dit), the paper's loop in miniature.

For each guidance scale: generate 500 images per digit with the engine (default settings
otherwise), then
- Real->Synth: the judge (trained on real digits) labels the first 100 images per digit;
  the share labelled as the digit prompted;
- Synth->Real: a SmallCNN trained only on the 5,000 generated images, top-1 on the 597
  held-out real digits; the same CNN trained on the real generator-training split is the
  real baseline;
- diversity: mean pairwise distance between L2-normalised judge features of the images of
  one digit, averaged over digits (the held-out real digits give the reference value).

    python -m t2i_engine.eval.digits_quality --work /tmp/digits-quality --out results.json
"""

from __future__ import annotations

import argparse
import io
import json
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..engine.recipe import build_recipe
from ..engine.run import RunOptions, generate
from ..engine.verify import load_dataset_recipe
from ..training.digits_data import load_split
from ..training.digits_judge import load_judge
from ..training.small_cnn import SmallCNN, accuracy, train_classifier
from .metrics import pairwise_diversity

GUIDANCES = (1.0, 2.0, 4.0, 7.5)
CLASSIFIER_SEED = 1


def read_images(out_dir: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """All images of a dataset folder in plan order: [N, 3, H, W] in [0, 1], labels [N]."""
    import webdataset as wds

    manifest, recipe = load_dataset_recipe(out_dir)
    urls = [str(out_dir / s["name"]) for s in manifest["shards"]]
    images, labels = [], []
    for data, cls in wds.WebDataset(urls, shardshuffle=False, empty_check=False).to_tuple(recipe.extension, "cls"):
        images.append(np.asarray(Image.open(io.BytesIO(data)).convert("RGB")))
        labels.append(int(cls))
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255
    return x, torch.tensor(labels)


@torch.inference_mode()
def diversity(judge: SmallCNN, images: torch.Tensor, labels: torch.Tensor) -> float:
    feats = judge.embed(images)
    return float(np.mean([pairwise_diversity(feats[labels == c]) for c in labels.unique()]))


def evaluate(
    work_dir: Path,
    guidances=GUIDANCES,
    images_per_class: int = 500,
    judged_per_class: int = 100,
    model: str = "digits",
) -> dict:
    split = load_split()
    judge = load_judge()
    real_model = train_classifier(split.train_images, split.train_labels, seed=CLASSIFIER_SEED)
    result = {
        "real_baseline_synth_to_real": accuracy(real_model, split.test_images, split.test_labels),
        "judge_heldout_real_accuracy": accuracy(judge, split.test_images, split.test_labels),
        "real_heldout_diversity": diversity(judge, split.test_images, split.test_labels),
        "model": model,
        "images_per_class": images_per_class,
        "judged_per_class": judged_per_class,
        "rows": [],
    }
    for g in guidances:
        recipe = build_recipe({"model": model, "guidance": g, "images_per_class": images_per_class, "batch_size": 100})
        start = time.perf_counter()
        summary = generate(recipe, work_dir / f"guidance-{g}", RunOptions(device="cpu", progress=False))
        images, labels = read_images(work_dir / f"guidance-{g}")
        judged = slice(0, judged_per_class * 10)  # plan order: the first 100 images of every digit
        synth_model = train_classifier(images, labels, seed=CLASSIFIER_SEED)
        row = {
            "guidance": g,
            "steps": recipe.steps,
            "real_to_synth": accuracy(judge, images[judged], labels[judged]),
            "synth_to_real": accuracy(synth_model, split.test_images, split.test_labels),
            "diversity": diversity(judge, images[judged], labels[judged]),
            "generate_images_per_second": summary["images_per_second"],
            "seconds": round(time.perf_counter() - start, 1),
        }
        result["rows"].append(row)
        print(json.dumps(row), flush=True)
    return result


def markdown_table(result: dict) -> str:
    lines = [
        "| guidance | Real->Synth (judge) | Synth->Real (SmallCNN) | diversity (judge features) |",
        "|---|---|---|---|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['guidance']} | {100 * r['real_to_synth']:.1f}% | {100 * r['synth_to_real']:.1f}% | "
            f"{r['diversity']:.3f} |"
        )
    lines.append(
        f"| real digits | {100 * result['judge_heldout_real_accuracy']:.1f}% (held-out) | "
        f"{100 * result['real_baseline_synth_to_real']:.1f}% (real baseline) | "
        f"{result['real_heldout_diversity']:.3f} (held-out) |"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", type=Path, required=True, help="folder for the generated datasets")
    ap.add_argument("--out", type=Path, required=True, help="JSON file for the figures")
    ap.add_argument("--images-per-class", type=int, default=500)
    ap.add_argument("--model", default="digits", choices=("digits", "digits-dit"), help="the embedded model")
    args = ap.parse_args(argv)
    result = evaluate(args.work, images_per_class=args.images_per_class, model=args.model)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(markdown_table(result))


if __name__ == "__main__":
    main()
