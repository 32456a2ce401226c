"""Real->synth of sweep cells of an embedded model: the share of each cell's images the digits
judge labels as the digit prompted, and the judge-feature diversity (eval/digits_quality's).

    python bench/frontier/judge.py OUT.json CELL_DIR [CELL_DIR ...]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from t2i_engine.eval.digits_quality import diversity, read_images
from t2i_engine.training.digits_judge import load_judge
from t2i_engine.training.small_cnn import accuracy


def main(out: str, *cells: str) -> None:
    judge = load_judge()
    result = {}
    for cell in cells:
        x, y = read_images(Path(cell) / "data")
        result[Path(cell).name] = {
            "real_to_synth": round(accuracy(judge, x, y), 4),
            "images": len(y),
            "diversity": round(diversity(judge, x, y), 4),
        }
        print(Path(cell).name, result[Path(cell).name], flush=True)
    Path(out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main(*sys.argv[1:])
