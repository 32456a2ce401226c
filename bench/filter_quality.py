"""Does filtering synthetic images by the judge's agreement make better training data, at equal
size? Issue 36's measurement, on the embedded digits model (CPU), with the demo's protocol.

For guidance 1 (some images off-class) and 7.5 (near-duplicates abound): generate 2N images per
digit, score them with the digits judge (`t2i-engine score`), and cut subsets (`t2i-engine filter`):
- unfiltered: N per digit drawn at random (`--keep-per-class N --keep-by seed`: the lowest seeds);
- agreement: the N best by agreement (`--keep-per-class N`);
- cleaned (guidance 1): off-class images dropped (`--min-agreement 0.5`), then N drawn at random;
- hardest: off-class images dropped, then the N the judge finds least typical
  (`--min-agreement 0.5 --keep-per-class N --keep-by hardest`);
- dedup (guidance 7.5): one per near-duplicate group (`--dedup`, whatever count it keeps), then
  also N drawn at random from the groups' best, and the N hardest of them. Each subset trains the small CNN (preset
`small`) with 3 seeds; synth->real is top-1 on the 597 held-out real digits (mean and spread over
seeds); recall and coverage come from `analyze` against the real training digits (judge features,
k=5); real->synth is the share the judge labels as intended.

    python bench/filter_quality.py --work /tmp/filter-quality --out bench/results/filter-quality-cpu-DATE.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from record import save_json

from t2i_engine.dataset.manifest import read_manifest, versions
from t2i_engine.dataset.scores import complete_scores, read_all_scores
from t2i_engine.dataset.store import as_store
from t2i_engine.dataset.subset import FilterRule, cut_subset
from t2i_engine.engine.recipe import build_recipe
from t2i_engine.engine.run import RunOptions, generate
from t2i_engine.eval.analyze import analyze
from t2i_engine.eval.classify import evaluate_run
from t2i_engine.eval.score import score
from t2i_engine.training.digits_data import write_real_digits
from t2i_engine.training.loop import train
from t2i_engine.training.presets import resolve_config

SEEDS = (0, 1, 2)


def judged_share(folder: Path, subset: dict) -> float:
    """real->synth: the share of the subset's images whose top class under the judge is the intended one."""
    store = as_store(folder, "dir")
    scores = complete_scores(store, read_manifest(store))
    cols = read_all_scores(store, scores, ["key", "class_id", "top_class"])
    keys = set(subset["keys"])
    mask = np.array([str(k) in keys for k in cols["key"]])
    return float((cols["top_class"][mask] == cols["class_id"][mask]).mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--per-class", type=int, default=100, help="N: images per digit trained on (2N generated)")
    ap.add_argument("--guidance", type=float, nargs="+", default=[1.0, 7.5])
    ap.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS), help="training seeds (default: 0 1 2)")
    ap.add_argument("--subsets", nargs="+", help="only these subsets (default: all)")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    start = time.perf_counter()
    work, n = args.work, args.per_class
    real = work / "real"
    if not (real / "test").is_dir():
        write_real_digits(real)
    rows = []
    for g in args.guidance:
        data = work / f"guidance-{g:g}"
        generate(
            build_recipe({"model": "digits", "guidance": g, "images_per_class": 2 * n}),
            data,
            RunOptions(device="cpu", progress=False),
        )
        scored = score(data, judge="digits", device="cpu", progress=False)
        print(f"guidance {g:g}: scored {scored}", flush=True)
        rules = {
            "unfiltered": FilterRule(keep_per_class=n, keep_by="seed"),
            "agreement": FilterRule(keep_per_class=n),
        }
        if g < 7.5:
            rules["cleaned"] = FilterRule(min_agreement=0.5, keep_per_class=n, keep_by="seed")
        rules["hardest"] = FilterRule(min_agreement=0.5, keep_per_class=n, keep_by="hardest")
        if g >= 7.5:
            rules["dedup"] = FilterRule(dedup=True)
            rules["dedup+random"] = FilterRule(dedup=True, keep_per_class=n, keep_by="seed")
            rules["dedup+hardest"] = FilterRule(dedup=True, min_agreement=0.5, keep_per_class=n, keep_by="hardest")
        if args.subsets:
            rules = {k: v for k, v in rules.items() if k in args.subsets}
        subsets = {}
        for name, rule in rules.items():
            cut_subset(data, rule, work / f"g{g:g}-{name}.json")
            subsets[name] = json.loads((work / f"g{g:g}-{name}.json").read_text())
        for name, subset in subsets.items():
            file = work / f"g{g:g}-{name}.json"
            top1 = []
            for seed in args.seeds:
                run = work / "runs" / f"g{g:g}-{name}-seed{seed}"
                train(
                    resolve_config("small", {"seed": seed}),
                    data,
                    run,
                    resume=True,
                    device="cpu",
                    progress=False,
                    subset=file,
                )
                top1.append(evaluate_run(run, real / "test", device="cpu")["top1"])
            a = analyze(data, real / "train", work / f"analysis-g{g:g}-{name}.json", features="judge", subset=file)
            row = {
                "guidance": g,
                "subset": name,
                "rule": subset["rule"],
                "images": subset["count"],
                "min_per_class": min(subset["per_class"].values()),
                "synth_to_real_mean": round(statistics.mean(top1), 4),
                "synth_to_real_sd": round(statistics.stdev(top1), 4),
                "synth_to_real_runs": top1,
                "real_to_synth": round(judged_share(data, subset), 4),
                "recall": round(a["overall"]["recall"], 4),
                "coverage": round(a["overall"]["coverage"], 4),
                "precision": round(a["overall"]["precision"], 4),
                "diversity": round(a["overall"]["diversity"], 4),
            }
            rows.append(row)
            print({k: v for k, v in row.items() if k != "rule"}, flush=True)
    save_json(
        {
            "bench": "filter_quality",
            "date": time.strftime("%Y-%m-%d"),
            "machine": f"{platform.machine()}, {platform.system()}, CPU only, {torch.get_num_threads()} threads",
            "versions": versions(),
            "model": "digits",
            "protocol": f"{2 * n} generated per digit, subsets of {n}; preset small, seeds {args.seeds}",
            "dedup_threshold": scored["dedup_threshold"],
            "rows": rows,
            "seconds": round(time.perf_counter() - start, 1),
        },
        args.out,
    )


if __name__ == "__main__":
    main()
