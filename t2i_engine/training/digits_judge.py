"""The judge: a SmallCNN trained on the real generator-training split of the digits.

It labels generated images (Real->Synth) and gives the feature space for diversity figures. It
never sees the held-out real split, on which its accuracy is measured and written beside it.

    python -m t2i_engine.training.digits_judge --out t2i_engine/assets/digits-judge
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .digits_data import load_split
from .small_cnn import SmallCNN, accuracy, train_classifier

JUDGE_DIR = Path(__file__).resolve().parents[1] / "assets" / "digits-judge"
SEED = 0


def train_judge(out_dir: Path) -> dict:
    start = time.perf_counter()
    split = load_split()
    model = train_classifier(split.train_images, split.train_labels, seed=SEED)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file(model.state_dict(), out_dir / "model.safetensors")
    record = {
        "architecture": "SmallCNN(width=32)",
        "seed": SEED,
        "trained_on": "real generator-training split (1,200 images)",
        "heldout_real_accuracy": accuracy(model, split.test_images, split.test_labels),
        "train_seconds": round(time.perf_counter() - start, 1),
        "torch": torch.__version__,
    }
    (out_dir / "judge.json").write_text(json.dumps(record, indent=1) + "\n")
    return record


def load_judge(folder: Path = JUDGE_DIR) -> SmallCNN:
    model = SmallCNN()
    model.load_state_dict(load_file(folder / "model.safetensors"))
    return model.eval()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=JUDGE_DIR)
    print(json.dumps(train_judge(ap.parse_args(argv).out), indent=1))


if __name__ == "__main__":
    main()
