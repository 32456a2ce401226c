"""Every command rerun on its own finished output, through the CLI, as a Slurm requeue or a
cautious user reruns it: exit 0, a line saying there was nothing left to do, nothing already
written changed, and (generate --json) a summary with the same fields as the run that did the
work. `--devices` and `--ray` reruns: test_mixture.py (which already runs both); a killed
`train` resumed through the CLI: test_train.py."""

from __future__ import annotations

import json
import shutil

import pytest

from tests.conftest import copy_run

pytestmark = pytest.mark.slow

GENERATE = [
    "generate",
    "--model",
    "tiny-sd",
    "--classes",
    "cat,dog",
    "--steps",
    "2",
    "--resolution",
    "32",
    "--images-per-class",
    "3",
    "--images-per-shard",
    "2",
    "--device",
    "cpu",
    "--no-progress",
]  # 6 samples in 3 shards


def _files(folder) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file() and not p.name.startswith(".")}


@pytest.mark.parametrize("part", [[], ["--part", "1/2"]], ids=["whole", "a-part"])
def test_generate_rerun_on_a_finished_dataset_or_part_does_nothing_and_says_so(cli, tmp_path, part):
    out = tmp_path / "d"
    code, first, err = cli(*GENERATE, "--out", out, *part, "--json")
    assert code == 0, err
    first = json.loads(first)
    before = _files(out)
    code, again, err = cli(*GENERATE, "--out", out, *part, "--json")
    assert code == 0 and "nothing left to do" in err and "Traceback" not in err, err
    again = json.loads(again)
    assert set(again) == set(first)  # the same fields, none dropped
    assert again["shards_written"] == again["images"] == 0 and again["shards_skipped"] == first["shards_written"]
    assert again["dataset_complete"] == first["dataset_complete"] == (not part)
    code, _, err = cli(*GENERATE, "--out", out, *part)  # the same without --json: its lines, no KeyError
    assert code == 0 and "nothing left to do" in err and "Traceback" not in err, err
    assert _files(out) == before


def test_a_rerun_after_verify_repair_remakes_the_bad_shard_then_has_nothing_left(cli, tmp_path):
    out = tmp_path / "d"
    assert cli(*GENERATE, "--out", out)[0] == 0
    good = (out / "000001.tar").read_bytes()
    (out / "000001.tar").write_bytes(good[:1000])
    code, stdout, err = cli("verify", out, "--repair")
    assert code == 1 and "000001" in stdout and "moved" in err
    code, summary, err = cli(*GENERATE, "--out", out, "--json")
    summary = json.loads(summary)
    assert code == 0 and summary["shards_written"] == 1 and summary["dataset_complete"], err
    assert (out / "000001.tar").read_bytes() == good  # in this process, at its thread count: the same bytes
    code, _, err = cli(*GENERATE, "--out", out)
    assert code == 0 and "nothing left to do" in err
    assert cli("verify", out)[0] == 0


def test_finalize_of_a_complete_folder_and_verify_of_an_unfinished_or_foreign_one(cli, tmp_path):
    out = tmp_path / "d"
    assert cli(*GENERATE, "--out", out)[0] == 0
    before = _files(out)
    code, _, err = cli("finalize", out)
    assert code == 0 and "nothing left to do" in err and _files(out) == before, err

    unfinished = tmp_path / "u"
    assert cli(*GENERATE, "--out", unfinished, "--part", "0/2")[0] == 0
    code, stdout, err = cli("verify", unfinished)
    assert code == 1 and "000001.tar: missing" in stdout and "unfinished" in err, (stdout, err)

    foreign = tmp_path / "f"
    foreign.mkdir()
    code, stdout, err = cli("verify", foreign)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "dataset.json" in lines[0] and stdout == "", err


def test_train_eval_report_and_probe_rerun_into_their_own_output(cli, digits_world, digits_runs, tmp_path):
    data = digits_world["synthetic"]
    run = copy_run(digits_runs["synth"], tmp_path / "run")
    # train --resume of a finished run: nothing trained, nothing rewritten
    before = _files(run)
    code, _, err = cli("train", data, "--out", run, "--preset", "small", "--epochs", "2", "--resume", "--no-progress")
    assert code == 0 and "nothing left to do" in err and _files(run) == before, err

    test = digits_world["real_test"]
    assert cli("eval", run, "--data", test)[0] == 0
    evals = _files(run / "evals")
    code, _, err = cli("eval", run, "--data", test)
    assert code == 0 and _files(run / "evals") == evals, err  # the same record, rewritten

    assert cli("report", run, "--out", tmp_path / "report")[0] == 0
    table = (tmp_path / "report" / "table.json").read_bytes()
    code, _, err = cli("report", run, "--out", tmp_path / "report")
    assert code == 0 and (tmp_path / "report" / "table.json").read_bytes() == table, err

    probe = tmp_path / "low"
    assert cli("probe", "fft-low", test, "--out", probe)[0] == 0
    images = {p: p.read_bytes() for p in sorted(probe.rglob("*.png"))}
    code, _, err = cli("probe", "fft-low", test, "--out", probe)
    assert code == 0 and "nothing left to do" in err, err
    code, _, err = cli("probe", "fft-high", test, "--out", probe)  # another probe: refused, nothing lost
    assert code == 2 and "--out" in err and len(err.strip().splitlines()) == 1, err
    assert {p: p.read_bytes() for p in sorted(probe.rglob("*.png"))} == images
    shutil.rmtree(run)
