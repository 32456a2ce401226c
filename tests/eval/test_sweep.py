"""`t2i-engine sweep`: the Pareto marking on constructed points; a 2x2 grid of the embedded model
(tiny: 2 images a class, 6 steps, 1 epoch) that stops mid-way, resumes to the same end without redoing a
finished cell, and writes the frontier files; bad grids exit 2 before anything is written."""

from __future__ import annotations

import json

import pytest

from t2i_engine.eval import sweep
from t2i_engine.eval.sweep import pareto


def test_pareto_marks_the_points_nothing_beats():
    points = [(1, 0.5), (2, 0.7), (2, 0.6), (3, 0.7), (4, 0.9), (0.5, 0.1), (4, 0.9)]
    assert pareto(points) == [True, True, False, False, True, True, True]  # ties on both stay on the front
    assert pareto([]) == [] and pareto([(1.0, 0.2)]) == [True]


GRID = """
base: {model: digits, images_per_class: 2, guidance: 2.0, batch_size: 20, steps: 6}
axes:
  sampler: [ddim, euler]
  guidance_interval: [none, [0.5, 3.0]]
train_seeds: 2
epochs: 1
"""


def test_a_2x2_sweep_resumes_after_a_stop_and_writes_the_frontier(cli, tmp_path, monkeypatch):
    grid = tmp_path / "grid.yaml"
    grid.write_text(GRID)
    calls = []
    real_evaluate = sweep.evaluate_run

    def stop_in_the_third_cell(run, data, **kwargs):
        calls.append(run)
        if len(calls) == 5:  # two seeds a cell: the third cell's first classifier
            raise KeyboardInterrupt
        return real_evaluate(run, data, **kwargs)

    monkeypatch.setattr(sweep, "evaluate_run", stop_in_the_third_cell)
    with pytest.raises(KeyboardInterrupt):
        sweep.run_sweep(grid, tmp_path / "out", device="cpu", log=lambda line: None)
    done = sorted(p.parent.name for p in (tmp_path / "out" / "cells").glob("*/result.json"))
    assert len(done) == 2 and not (tmp_path / "out" / "frontier.csv").exists()
    before = {name: (tmp_path / "out" / "cells" / name / "result.json").read_bytes() for name in done}
    monkeypatch.setattr(sweep, "evaluate_run", real_evaluate)
    code, out, err = cli("sweep", grid, "--out", tmp_path / "out", "--device", "cpu")
    assert code == 0, err
    assert {f.name for f in (tmp_path / "out").iterdir()} >= {
        "frontier.csv",
        "frontier.json",
        "frontier.md",
        "frontier.png",
    }
    rows = json.loads((tmp_path / "out" / "frontier.json").read_text())["rows"]
    assert len(rows) == 4 and all(len(r["synth_real_seeds"]) == 2 for r in rows)
    for name, data in before.items():  # finished cells were read back, not redone
        assert (tmp_path / "out" / "cells" / name / "result.json").read_bytes() == data
    by_interval = {json.dumps(r["guidance_interval"]): r for r in rows if r["sampler"] == "ddim"}
    # an interval skips unconditional forwards: fewer forwards, fewer FLOPs, as counted
    assert (
        by_interval["[0.5, 3.0]"]["denoiser_forwards_per_image"] < by_interval['"none"']["denoiser_forwards_per_image"]
    )
    assert by_interval["[0.5, 3.0]"]["flops_per_image"] < by_interval['"none"']["flops_per_image"]
    marks = pareto([(r["flops_per_image"], r["synth_real"]) for r in rows])
    assert [r["pareto_flops"] for r in rows] == marks and any(marks)
    assert out.count("| ") >= 4 and "pareto_flops" in out  # the table printed
    results = {p: p.read_bytes() for p in sorted((tmp_path / "out" / "cells").glob("*/result.json"))}
    code, again, err = cli("sweep", grid, "--out", tmp_path / "out", "--device", "cpu")  # on the finished grid
    assert code == 0 and "nothing left to do" in err and again == out, err
    assert {p: p.read_bytes() for p in sorted((tmp_path / "out" / "cells").glob("*/result.json"))} == results


def test_variants_are_crossed_with_the_axes(tmp_path):
    grid = tmp_path / "g.yaml"
    grid.write_text("base: {model: digits}\naxes: {guidance: [2.0, 7.5]}\nvariants: [{}, {cads: on}, {apg: on}]")
    _, cells, _ = sweep.read_grid(grid)
    assert [c.settings for c in cells] == [
        {"guidance": g, **v}
        for g in (2.0, 7.5)
        for v in ({}, {"cads": True}, {"apg": True})  # YAML reads on as true
    ]
    assert len({c.name for c in cells}) == 6
    grid.write_text("base: {model: digits}\nvariants: [{}, {cads: on}]")  # variants alone
    assert [c.name for c in sweep.read_grid(grid)[1]] == ["base", "cads=true"]
    mixture = [{"model": "digits", "share": 0.5}, {"model": "tiny-sd", "share": 0.5}]
    assert (
        sweep.cell_name({"models": mixture, "cache": "deepcache:2"})
        == "models=digits_0.5+tiny-sd_0.5,cache=deepcache_2"
    )


def test_a_bad_grid_exits_2_before_anything_is_written(cli, tmp_path):
    for text, needle in (
        ("axes: {stepz: [1, 2]}", "axes.stepz"),
        ("axes: {steps: []}", "non-empty list"),
        ("axes: {sampler: [ddim, lms]}", "sampler"),
        ("base: {model: digits}\naxes: {steps: [2]}\nseeds: 3", "unknown sweep key"),
        ("axes: {steps: [2]}\nvariants: [{cads: loud}]", "cads.noise"),
        ("axes: {steps: [2]}\nvariants: 3", "variants"),
    ):
        grid = tmp_path / "g.yaml"
        grid.write_text(text)
        code, _, err = cli("sweep", grid, "--out", tmp_path / "o", "--device", "cpu")
        assert code == 2 and needle in err and not (tmp_path / "o").exists(), (text, err)


def test_the_picture_marks_lever_families_and_labels_only_the_front_and_the_defaults(tmp_path, monkeypatch):
    """At many cells the picture labels only the Pareto cells and each model's default cell; every
    cell gets its lever family's marker."""

    def row(cell, flops, top1, **settings):
        return {
            "cell": cell,
            "flops_per_image": flops,
            "images_per_second": 1e9 / flops,
            "synth_real": top1,
            "synth_real_std": 0.001,
            "coverage": 0.5,
            **settings,
        }

    rows = [row("default", 3e9, 0.96, model="digits", steps=15, guidance=2.0)]
    rows += [
        row(f"sampler=ddim,steps={s}", s * 1e8, 0.90 + s / 1000, model="digits", sampler="ddim", steps=s)
        for s in range(4, 40)
    ]
    rows += [
        row(f"gi={i}", 2e9 + i * 1e7, 0.95, model="digits", steps=6, guidance_interval=[0.5, 3.0 + i])
        for i in range(30)
    ]
    rows += [row("steps=1", 1e8, 0.95, model="digits-lcm", steps=1, guidance=2.0)]
    rows += [row("steps=4,first_steps=digits_1", 2e8, 0.97, model="digits-lcm", steps=4, first_steps="digits:1")]
    rows += [row("apg", 3e9, 0.965, model="digits", apg=True)]
    assert len(rows) > 60
    families = {sweep.lever_family(r) for r in rows}
    assert families == {
        "sampler x steps",
        "guidance interval / cache",
        "distilled student",
        "student + base's first steps",
        "diversity lever",
    }
    assert [r["cell"] for r in rows if sweep.is_default(r)] == [
        "default"
    ]  # digits-lcm at 1 step is not its default (2)

    labels = []
    import matplotlib.axes

    real = matplotlib.axes.Axes.annotate
    monkeypatch.setattr(
        matplotlib.axes.Axes, "annotate", lambda ax, text, *a, **k: labels.append(text) or real(ax, text, *a, **k)
    )
    sweep.write_frontier(rows, tmp_path)
    assert (tmp_path / "frontier.png").stat().st_size > 0
    front = {sweep.short_label(r) for r in rows if r["pareto_flops"] or r["pareto_speed"] or sweep.is_default(r)}
    assert set(labels) == front and len(front) < 10  # not 70 labels over each other
    assert "default: digits" in labels
