"""`t2i-engine bench` on the CPU: every field the JSON promises, its arithmetic, and its refusals."""

from __future__ import annotations

import json

import pytest
import torch

from t2i_engine.benchmark.bench import BenchOptions, run_bench

TINY = dict(model="tiny-sd", steps="2", resolution="32", warmup=0, reps=1, device="cpu")


@pytest.fixture(scope="module")
def tiny_result():
    return run_bench(BenchOptions(**TINY, batches=(2,), baseline_batches=(2, 4)), log=lambda line: None)


def test_the_result_carries_every_field_with_nvml_null_on_a_cpu(tiny_result):
    r = tiny_result
    assert r["device"]["type"] == "cpu" and r["device"]["nvml"] is None
    assert r["weights"].startswith("random") and r["settings"]["steps"] == 2 and r["settings"]["height"] == 32
    assert {"torch", "diffusers", "triton"} <= set(r["versions"])
    assert [(x["path"], x["batch"]) for x in r["runs"]] == [("engine:eager", 2), ("baseline:paper", 16),
                                                          ("baseline:diffusers", 2), ("baseline:diffusers", 4)]
    for run in r["runs"]:
        assert run["nvml"] is None and run["peak_memory_bytes"] is None
        assert run["images_per_second"] > 0 and run["end_to_end_images_per_second"] > 0
        # MFU is FLOPs per image x images/sec over the matmul rate measured in the same run
        assert run["mfu"] == pytest.approx(r["flops"]["per_image"] * run["images_per_second"] / r["matmul"]["flops_per_second"], abs=1e-4)
    engine = r["runs"][0]
    assert set(engine["stage_seconds_per_image"]) == {"text_encoding", "denoising", "decoding", "encode_and_write_wait"}
    assert sum(engine["stage_seconds_per_image"].values()) * 2 <= max(engine["batch_seconds"]) * 1.05 + 0.05
    assert r["ceiling_images_per_second"] == pytest.approx(r["matmul"]["flops_per_second"] / r["flops"]["per_image"], rel=1e-3)
    assert sum(1 for x in r["runs"] if x.get("best_batch")) == 1


def test_flops_per_image_are_the_denoiser_forwards_plus_one_decode(tiny_result):
    from t2i_engine.engine.flops import count_flops
    from t2i_engine.engine.tiny import build_tiny_sd

    f = tiny_result["flops"]
    assert f["cfg"] and f["forwards_per_image"] == 2 * 2  # 2 steps, guidance 5 > 1: two forwards per step
    assert f["per_image"] == f["forwards_per_image"] * f["denoiser_forward"] + f["vae_decode"]
    unet = build_tiny_sd().unet  # one forward at the 4x4 latent of 32 px, counted directly
    direct = count_flops(lambda: unet, lambda: ((torch.empty(1, 4, 4, 4), torch.tensor([1])), {"encoder_hidden_states": torch.empty(1, 77, 32)}))
    assert f["denoiser_forward"] == direct


def test_the_headline_ratios_are_ours_over_each_baseline(tiny_result):
    runs = {(x["path"], x["batch"]): x["images_per_second"] for x in tiny_result["runs"]}
    h = tiny_result["headline"]
    assert h["vs_paper_baseline"] == pytest.approx(runs["engine:eager", 2] / runs["baseline:paper", 16], abs=1e-3)
    best = max(runs["baseline:diffusers", 2], runs["baseline:diffusers", 4])
    assert h["vs_diffusers_bf16_best_batch"] == pytest.approx(runs["engine:eager", 2] / best, abs=1e-3)


def test_auto_batch_doubles_until_it_stops_paying():
    r = run_bench(BenchOptions(**{**TINY, "steps": "1"}, batches=("auto",), baselines=()), log=lambda line: None)
    batches = [x["batch"] for x in r["runs"]]
    assert batches == [16 * 2**i for i in range(len(batches))]  # tiny-sd's registry batch is 16
    rates = [x["images_per_second"] for x in r["runs"]]
    (chosen,) = [i for i, x in enumerate(r["runs"]) if x.get("auto_batch")]
    assert all(rates[i + 1] > 1.05 * rates[i] for i in range(chosen))  # each step up paid
    assert chosen == len(rates) - 1 and batches[-1] == 512 or rates[chosen + 1] <= 1.05 * rates[chosen]


@pytest.mark.parametrize("args, flag", [
    (["tiny-sd", "--backend", "tensorrt"], "--backend"),
    (["tiny-sd", "--batch", "0"], "--batch"),
    (["tiny-sd", "--baseline-batch", "auto"], "--baseline-batch"),
    (["tiny-sd", "--steps", "0"], "steps"),
    (["sd15", "--res", "500"], "resolution"),
    (["flux-schnell"], "--backend"),  # the engine's generator does not run FLUX yet; says --backend none
    (["nope"], "model"),
    (["tiny-sd", "--backend", "none", "--baseline", "none"], "--backend"),
])
def test_bad_input_is_refused_before_any_model_is_built(cli, args, flag):
    code, out, err = cli("bench", *args)
    assert code == 2 and flag in err and out == ""


def test_the_cli_writes_the_json_it_prints(cli, tmp_path):
    code, out, _ = cli("bench", "tiny-sd", "--steps", "1", "--res", "32", "--batch", "2", "--baseline", "none", "--reps", "1",
                       "--device", "cpu", "--json", "--out", tmp_path / "r.json")
    assert code == 0 and json.loads(out) == json.loads((tmp_path / "r.json").read_text())
