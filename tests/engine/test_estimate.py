"""`plan RECIPE`: what `generate` then makes (counts, shards, the first samples, FLOPs per image
as the run counts them), before any model loads; bad prices and utilisations refused."""

from __future__ import annotations

import json

import pytest


@pytest.mark.parametrize(
    "levers",
    [
        ["--model", "digits"],
        ["--model", "digits", "--cache", "deepcache:2", "--guidance-interval", "0.5,20"],
        ["--model", "tiny-flux", "--cache", "pyramid:2"],
    ],
    ids=["plain", "deepcache-interval", "flux-pyramid"],
)
def test_plan_says_what_generate_then_makes(cli, tmp_path, levers):
    """The FLOPs too, as the run counts them: with DeepCache and a guidance interval (its whole
    and shallow calls, CFG's batch switching on and off), and FLUX's resolution-shifted timesteps
    under pyramid attention broadcast (which skips by timestep)."""
    args = ["--classes", "a,b,c", "--images-per-class", "5", "--steps", "6", "--images-per-shard", "4",
            "--format", "png", *levers]  # fmt: skip
    code, text, err = cli("plan", *args, "--first", "6", "--json")
    assert code == 0, err
    plan = json.loads(text)
    code, summary, err = cli("generate", *args, "--out", tmp_path / "ds", "--device", "cpu", "--no-progress", "--json")
    assert code == 0, err
    summary = json.loads(summary)
    tars = sorted((tmp_path / "ds").glob("*.tar"))
    rows = [json.loads(line) for line in (tmp_path / "ds" / "000000.index.jsonl").read_text().splitlines()]
    rows += [json.loads(line) for line in (tmp_path / "ds" / "000001.index.jsonl").read_text().splitlines()]
    assert (plan["samples"], plan["classes"], plan["shards"], plan["unique_prompts"]) == (15, 3, len(tars), 3)
    assert plan["first_samples"] == [{k: r[k] for k in ("key", "class_id", "prompt", "seed")} for r in rows[:6]]
    assert plan["flops"]["per_image"] == pytest.approx(summary["flops_per_stored_image"], rel=1e-3)
    written = sum(t.stat().st_size for t in tars)
    assert written / 4 < plan["bytes"]["dataset"] < written * 4  # an estimate, calibrated on stand-in images


def test_plan_prices_a_run_from_the_committed_bench_record_and_names_it(cli):
    code, text, err = cli("plan", "--model", "sd15", "--images-per-class", "2", "--gpu", "h100", "--price", "2",
                          "--first", "0", "--json")  # fmt: skip
    assert code == 0, err
    cost = json.loads(text)["cost"]
    assert cost["mfu_from"].startswith("sd15: bench/results/h100-") and 0 < cost["mfu"] <= 1
    flops = json.loads(text)["flops"]["per_image"]
    hours = 20 * flops / (cost["matmul_flops_per_second"] * cost["mfu"]) / 3600
    assert cost["gpu_hours"] == pytest.approx(hours, abs=1e-3) and cost["cost"] == pytest.approx(2 * hours, abs=0.01)


@pytest.mark.parametrize(
    "args, says",
    [
        (["--gpu", "h100", "--mfu", "0"], "--mfu: '0' is not allowed; expected a number in (0, 1]"),
        (["--gpu", "h100", "--mfu", "1.5"], "--mfu: '1.5' is not allowed"),
        (["--gpu", "h100", "--mfu", "0.3", "--price", "0"], "--price: '0' is not allowed; expected a number in (0,"),
        (["--gpu", "h100", "--mfu", "0.3", "--price", "cheap"], "--price: 'cheap' is not allowed"),
        (["--gpu", "a100"], "--gpu: 'a100' is not allowed; expected a card with a measured matmul rate: h100, h200"),
        (["--gpu", "h200"], "no committed bench record of digits on it"),
        (["--mfu", "0.3"], "--mfu and --price price a run on a card"),
        (["--images-per-class", "0"], "images_per_class"),
    ],
)
def test_plan_refuses_bad_estimates_in_one_line(cli, args, says):
    code, _, err = cli("plan", *args)
    assert code == 2 and says in err and len(err.strip().splitlines()) == 1, err
