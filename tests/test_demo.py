"""`t2i-engine demo` at a reduced size: the whole loop, and its table agrees with `eval`."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.slow


def test_demo_runs_the_whole_loop_and_its_table_matches_a_separate_eval(cli, tmp_path):
    out = tmp_path / "demo"
    code, stdout, err = cli(
        "demo",
        "--out",
        out,
        "--guidance",
        "2",
        "--guidance",
        "7.5",
        "--images-per-class",
        "5",
        "--epochs",
        "2",
        "--device",
        "cpu",
        "--json",
    )
    assert code == 0, err
    result = json.loads(stdout)
    table = json.loads((out / "report" / "table.json").read_text())
    assert [r["guidance"] for r in table["rows"]] == [2.0, 7.5]
    for name in (
        "table.md",
        "table.csv",
        "accuracy_vs_guidance.png",
        "density_vs_coverage.png",
        "accuracy_vs_release.png",
    ):
        assert (out / "report" / name).is_file()

    code, stdout, _ = cli(
        "eval", out / "runs" / "synthetic-guidance-2", "--data", out / "real" / "test", "--out", tmp_path / "e.json"
    )
    assert code == 0 and stdout.startswith("synth->real: top-1")
    again = json.loads((tmp_path / "e.json").read_text())["top1"]
    assert table["rows"][0]["synth_to_real"] == again == result["evals"]["synth->real g2"]
    assert f"{again:.3f}" in result["table"]

    # A second demo in the same folder resumes: nothing is regenerated or retrained.
    before = (out / "runs" / "real" / "best.safetensors").stat().st_mtime_ns
    code, stdout2, _ = cli(
        "demo",
        "--out",
        out,
        "--guidance",
        "2",
        "--guidance",
        "7.5",
        "--images-per-class",
        "5",
        "--epochs",
        "2",
        "--device",
        "cpu",
        "--json",
    )
    assert code == 0 and json.loads(stdout2)["table"] == result["table"]
    assert (out / "runs" / "real" / "best.safetensors").stat().st_mtime_ns == before
