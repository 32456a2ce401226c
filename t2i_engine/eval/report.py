"""`t2i-engine report`: the paper-style table and plots from runs and analyses.

Inputs are run folders (their evals/*.json are read), eval JSON files and analysis JSON files.
Rows are synthetic sets (by recipe hash): a synth->real eval fills the row of the set the run
was trained on, a real->synth eval the row of the set it was tested on, an analysis the row of
the set it analysed, each per architecture. Real->real evals (the real baseline) and evals with a
probed set on either side are listed beside the table; a probe of a set gets a row of its own.

Writes table.md, table.csv, table.json and, where there is data for them,
accuracy_vs_release.png, density_vs_coverage.png and accuracy_vs_guidance.png.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from ..errors import InputError
from ..files import atomic_write_text, check_writable
from ..models.registry import MODELS

COLUMNS = (
    "model",
    "arch",
    "guidance",
    "released",
    "synth_to_real",
    "real_to_synth",
    "precision",
    "recall",
    "density",
    "coverage",
    "diversity",
    "vendi",
    "fid",
    "clipscore",
)
HEADERS = {"synth_to_real": "synth->real", "real_to_synth": "real->synth"}


def collect(inputs: list[str | Path]) -> tuple[list[dict], list[dict]]:
    """Eval and analysis records from the given paths."""
    evals, analyses = [], []
    for raw in inputs:
        p = Path(raw)
        if p.is_dir() and (p / "run.json").is_file():
            files = sorted((p / "evals").glob("*.json"))
            if not files:
                raise InputError(
                    "inputs", str(p), f"this run has no evals yet; run `t2i-engine eval {p} --data DIR` first"
                )
        elif p.is_file() and p.suffix == ".json":
            files = [p]
        else:
            raise InputError(
                "inputs", str(p), "expected a run folder (with run.json), an eval JSON or an analysis JSON"
            )
        for f in files:
            try:
                rec = json.loads(f.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                raise InputError(
                    "inputs", str(f), "expected a JSON file written by `t2i-engine eval` or `analyze`"
                ) from None
            if "direction" in rec and "top1" in rec:
                evals.append(rec)
            elif "overall" in rec and "data" in rec:
                analyses.append(rec)
            else:
                raise InputError("inputs", str(f), "expected a JSON file written by `t2i-engine eval` or `analyze`")
    return evals, analyses


def _set_key(origin: dict) -> str:
    key = origin.get("recipe_hash") or origin.get("path", "?")
    return f"{key}|{origin['probe']}|{origin.get('cutoff', '')}" if origin.get("probe") else key


def build_rows(evals: list[dict], analyses: list[dict]) -> tuple[list[dict], list[dict]]:
    """Rows per (synthetic set, architecture); evals that are not plain synth->real or
    real->synth (the real baseline, probes on either side) are listed beside the table."""
    rows: dict[tuple, dict] = {}
    sources: dict[tuple, str] = {}

    def row_for(origin: dict, arch: str | None) -> dict:
        key = (_set_key(origin), arch)
        if key not in rows:
            model = origin.get("model", "?")
            if origin.get("probe"):
                model = f"{model} ({origin['probe']})"
            spec = MODELS.get(origin.get("model"))
            rows[key] = dict.fromkeys(COLUMNS)
            rows[key].update(
                model=model, arch=arch, guidance=origin.get("guidance"), released=spec.released if spec else None
            )
        return rows[key]

    def put(origin: dict, arch: str | None, column: str, value, source: str) -> None:
        row = row_for(origin, arch)
        cell = (_set_key(origin), arch, column)
        if row[column] is not None and row[column] != value:
            raise InputError(
                "inputs",
                source,
                f"gives {column} {value} for {row['model']} ({arch}), but {sources[cell]} "
                f"gives {row[column]}; report one run per set and architecture",
            )
        row[column] = value
        sources[cell] = source

    others = []
    for e in evals:
        trained, tested = e["trained_on"], e["data"]
        plain_real = lambda o: o.get("kind") == "real" and not o.get("probe")  # noqa: E731
        if e["direction"] == "synth->real" and plain_real(tested):
            put(trained, e["arch"], "synth_to_real", e["top1"], e["run"])
        elif e["direction"] == "real->synth" and plain_real(trained):
            put(tested, e["arch"], "real_to_synth", e["top1"], e["run"])
        else:
            others.append(
                {
                    "direction": e["direction"],
                    "top1": e["top1"],
                    "arch": e["arch"],
                    "run": e["run"],
                    "trained_on": _describe(trained),
                    "data": _describe(tested),
                    "probed": bool(trained.get("probe") or tested.get("probe")),
                }
            )
    for a in analyses:
        key = _set_key(a["data"])
        targets = [r for (k, _), r in rows.items() if k == key] or [row_for(a["data"], None)]
        for row in targets:
            for col in ("precision", "recall", "density", "coverage", "diversity", "vendi", "fid", "clipscore"):
                row[col] = a["overall"].get(col)
    ordered = sorted(
        rows.values(),
        key=lambda r: (
            r["released"] or "",
            r["model"],
            r["guidance"] if r["guidance"] is not None else -1,
            r["arch"] or "",
        ),
    )
    return ordered, others


def _describe(origin: dict) -> str:
    name = origin.get("name") or origin.get("model") or origin.get("path", "?")
    text = f"{origin.get('kind', '?')} {name}"
    if origin.get("guidance") is not None:
        text += f" g{origin['guidance']:g}"
    return text + (f" ({origin['probe']})" if origin.get("probe") else "")


def _fmt(value) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def markdown(rows: list[dict], baselines: list[dict]) -> str:
    lines = ["| " + " | ".join(HEADERS.get(c, c) for c in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(_fmt(r[c]) for c in COLUMNS) + " |" for r in rows]
    if baselines:
        lines.append("\nOther evaluations (the real baseline, probes):\n")
        lines += [
            f"- {b['direction']} ({b['arch']}): trained on {b['trained_on']}, tested on {b['data']}: top-1 "
            f"{b['top1']:.3f}"
            for b in baselines
        ]
    return "\n".join(lines)


def write_report(inputs: list[str | Path], out: str | Path) -> dict:
    check_writable(Path(out), "--out")
    evals, analyses = collect(inputs)
    rows, baselines = build_rows(evals, analyses)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError("--out", str(out), "expected a folder for the table and plots")
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
    return {
        "table": table,
        "rows": rows,
        "baselines": baselines,
        "files": ["table.md", "table.csv", "table.json", *plots],
    }


def _plots(rows: list[dict], baselines: list[dict], out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    real_line = next((b["top1"] for b in baselines if b["direction"] == "real->real" and not b["probed"]), None)

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
            pts = [
                (datetime.datetime.strptime(r["released"][:7], "%Y-%m"), r[key], r)
                for r in dated
                if r[key] is not None
            ]
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
            ax.annotate(
                _label(r), (r["coverage"], r["density"]), fontsize=8, xytext=(3, 3), textcoords="offset points"
            )
        ax.set(xlabel="coverage", ylabel="density", title="Density vs coverage (PRDC, k=5)")
        save(fig, "density_vs_coverage.png")
    guided = [
        r
        for r in rows
        if r["guidance"] is not None and (r["synth_to_real"] is not None or r["real_to_synth"] is not None)
    ]
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
