"""`t2i-engine report`: the paper-style table and plots from runs and analyses.

Inputs are run folders (their evals/*.json are read), eval JSON files and analysis JSON files.
Rows are synthetic sets (by recipe hash): a synth->real eval fills the row of the set the run
was trained on, a real->synth eval the row of the set it was tested on, an analysis the row of
the set it analysed. Real->real evals give the real baseline line.

Writes table.md, table.csv, table.json and, where there is data for them,
accuracy_vs_release.png, density_vs_coverage.png and accuracy_vs_guidance.png.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from ..engine.errors import InputError
from ..engine.writer import atomic_write_text

COLUMNS = ("model", "guidance", "released", "synth_to_real", "real_to_synth", "precision", "recall", "density",
           "coverage", "diversity", "vendi", "fid", "clipscore")
HEADERS = {"synth_to_real": "synth->real", "real_to_synth": "real->synth"}


def collect(inputs: list[str | Path]) -> tuple[list[dict], list[dict]]:
    """Eval and analysis records from the given paths."""
    evals, analyses = [], []
    for raw in inputs:
        p = Path(raw)
        if p.is_dir() and (p / "run.json").is_file():
            files = sorted((p / "evals").glob("*.json"))
            if not files:
                raise InputError("inputs", str(p), f"this run has no evals yet; run `t2i-engine eval {p} --data DIR` first")
        elif p.is_file() and p.suffix == ".json":
            files = [p]
        else:
            raise InputError("inputs", str(p), "expected a run folder (with run.json), an eval JSON or an analysis JSON")
        for f in files:
            try:
                rec = json.loads(f.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                raise InputError("inputs", str(f), "expected a JSON file written by `t2i-engine eval` or `analyze`") from None
            if "direction" in rec and "top1" in rec:
                evals.append(rec)
            elif "overall" in rec and "data" in rec:
                analyses.append(rec)
            else:
                raise InputError("inputs", str(f), "expected a JSON file written by `t2i-engine eval` or `analyze`")
    return evals, analyses


def _set_key(origin: dict) -> str:
    return origin.get("recipe_hash") or origin.get("path", "?")


def build_rows(evals: list[dict], analyses: list[dict]) -> tuple[list[dict], list[dict]]:
    from ..engine.registry import MODELS

    rows: dict[str, dict] = {}

    def row_for(origin: dict) -> dict:
        key = _set_key(origin)
        if key not in rows:
            model = origin.get("model", "?")
            if origin.get("probe"):
                model = f"{model} ({origin['probe']})"
            spec = MODELS.get(origin.get("model"))
            rows[key] = dict.fromkeys(COLUMNS)
            rows[key].update(model=model, guidance=origin.get("guidance"), released=spec.released if spec else None)
        return rows[key]

    baselines = []
    for e in evals:
        if e["direction"] == "synth->real":
            row_for(e["trained_on"])["synth_to_real"] = e["top1"]
        elif e["direction"] == "real->synth":
            row_for(e["data"])["real_to_synth"] = e["top1"]
        else:
            baselines.append({"direction": e["direction"], "top1": e["top1"], "arch": e["arch"], "data": e["data"].get("path")})
    for a in analyses:
        row, o = row_for(a["data"]), a["overall"]
        for key in ("precision", "recall", "density", "coverage", "diversity", "vendi", "fid", "clipscore"):
            row[key] = o.get(key)
    ordered = sorted(rows.values(), key=lambda r: (r["released"] or "", r["model"], r["guidance"] if r["guidance"] is not None else -1))
    return ordered, baselines


def _fmt(value) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def markdown(rows: list[dict], baselines: list[dict]) -> str:
    lines = ["| " + " | ".join(HEADERS.get(c, c) for c in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(_fmt(r[c]) for c in COLUMNS) + " |" for r in rows]
    for b in baselines:
        lines.append(f"\n{b['direction']} baseline ({b['arch']}, tested on {b['data']}): top-1 {b['top1']:.3f}")
    return "\n".join(lines)


def write_report(inputs: list[str | Path], out: str | Path) -> dict:
    evals, analyses = collect(inputs)
    rows, baselines = build_rows(evals, analyses)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    table = markdown(rows, baselines)
    atomic_write_text(out / "table.md", table + "\n")
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS)
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(out / "table.csv", buf.getvalue())
    atomic_write_text(out / "table.json", json.dumps({"rows": rows, "baselines": baselines}, indent=1) + "\n")
    plots = _plots(rows, baselines, out)
    return {"table": table, "rows": rows, "baselines": baselines, "files": ["table.md", "table.csv", "table.json", *plots]}


def _plots(rows: list[dict], baselines: list[dict], out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    real_line = next((b["top1"] for b in baselines if b["direction"] == "real->real"), None)

    def save(fig, name):
        fig.tight_layout()
        fig.savefig(out / name, dpi=120)
        plt.close(fig)
        written.append(name)

    dated = [r for r in rows if r["released"] and (r["synth_to_real"] is not None or r["real_to_synth"] is not None)]
    if dated:
        import datetime

        fig, ax = plt.subplots(figsize=(7, 4.5))
        for key, marker in (("synth_to_real", "o"), ("real_to_synth", "s")):
            pts = [(datetime.datetime.strptime(r["released"][:7], "%Y-%m"), r[key], r) for r in dated if r[key] is not None]
            if pts:
                ax.scatter([p[0] for p in pts], [p[1] for p in pts], marker=marker, label=HEADERS[key])
                for x, y, r in pts:
                    ax.annotate(_label(r), (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
        if real_line is not None:
            ax.axhline(real_line, ls="--", c="grey", label="real baseline")
        ax.set(xlabel="model release date", ylabel="top-1 accuracy", title="Accuracy vs release date")
        ax.legend()
        save(fig, "accuracy_vs_release.png")
    dc = [r for r in rows if r["density"] is not None and r["coverage"] is not None]
    if dc:
        fig, ax = plt.subplots(figsize=(6, 5))
        ax.scatter([r["coverage"] for r in dc], [r["density"] for r in dc])
        for r in dc:
            ax.annotate(_label(r), (r["coverage"], r["density"]), fontsize=8, xytext=(3, 3), textcoords="offset points")
        ax.set(xlabel="coverage", ylabel="density", title="Density vs coverage (PRDC, k=5)")
        save(fig, "density_vs_coverage.png")
    guided = [r for r in rows if r["guidance"] is not None and (r["synth_to_real"] is not None or r["real_to_synth"] is not None)]
    if len({r["guidance"] for r in guided}) > 1:
        fig, ax = plt.subplots(figsize=(6, 4.5))
        for model in sorted({r["model"] for r in guided}):
            mine = sorted((r for r in guided if r["model"] == model), key=lambda r: r["guidance"])
            for key, style in (("synth_to_real", "o-"), ("real_to_synth", "s--")):
                pts = [(r["guidance"], r[key]) for r in mine if r[key] is not None]
                if pts:
                    ax.plot([p[0] for p in pts], [p[1] for p in pts], style, label=f"{model} {HEADERS[key]}")
        if real_line is not None:
            ax.axhline(real_line, ls=":", c="grey", label="real baseline")
        ax.set(xlabel="guidance scale", ylabel="top-1 accuracy", title="Accuracy vs guidance")
        ax.legend(fontsize=8)
        save(fig, "accuracy_vs_guidance.png")
    return written


def _label(row: dict) -> str:
    return f"{row['model']} g{row['guidance']:g}" if row["guidance"] is not None else row["model"]
