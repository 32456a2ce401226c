"""`t2i-engine bench` on the CPU: every field the JSON promises, its arithmetic, and its refusals."""

from __future__ import annotations

import json

import pytest
import torch

from t2i_engine.benchmark.bench import BenchOptions, run_bench

TINY = dict(model="tiny-sd", steps="2", resolution="32", warmup=0, reps=1, device="cpu")


@pytest.fixture(scope="module")
def tiny_result():
    return run_bench(
        BenchOptions(**TINY, batches=(2,), baseline_batches=(2, 4), ladder=("base", "fuse_qkv+channels_last"), ab=1),
        log=lambda line: None,
    )


def test_the_result_carries_every_field_with_nvml_null_on_a_cpu(tiny_result):
    r = tiny_result
    assert r["device"]["type"] == "cpu" and r["device"]["nvml"] is None
    assert r["weights"].startswith("random") and r["settings"]["steps"] == 2 and r["settings"]["height"] == 32
    assert {"torch", "diffusers", "triton"} <= set(r["versions"])
    assert [(x["path"], x.get("config"), x["batch"]) for x in r["runs"]] == [
        ("baseline:paper", None, 16),  # the baselines first: an FP8 rung would quantise the shared pipeline
        ("baseline:diffusers", None, 2),
        ("baseline:diffusers", None, 4),
        ("engine:eager", "base", 2),
        ("engine:eager", "fuse_qkv+channels_last", 2),
    ]
    for run in r["runs"]:  # the arithmetic of MFU and the ceiling: test_the_arithmetic_against_hand_computed_answers
        assert run["nvml"] is None and run["peak_memory_bytes"] is None
        assert run["images_per_second"] > 0 and run["median_batch_images_per_second"] > 0 and run["mfu"] > 0
    engine = r["runs"][3]
    assert set(engine["stage_seconds_per_image"]) == {
        "text_encoding",
        "denoising",
        "decoding",
        "encode_and_write_wait",
    }
    assert r["ceiling_images_per_second"] > 0 and r["matmul"]["flops_per_second"] > 0
    assert sum(1 for x in r["runs"] if x.get("best_batch")) == 1
    # a CPU has no published bf16 peak: the second MFU is null, not a guess
    assert r["published_peak"] is None and all(x["mfu_published_peak"] is None for x in r["runs"])
    assert r["headline"]["best_mfu_published_peak"] is None


def test_a_ladder_records_each_configuration_its_pixels_and_an_interleaved_ab(tiny_result):
    base, tuned = tiny_result["runs"][3:]
    assert base["tuning"]["fuse_qkv"] is False and "vs_first_config" not in base  # the first is the reference
    assert tuned["tuning"] == {**base["tuning"], "fuse_qkv": True, "channels_last": True}
    assert tuned["vs_first_config"]["max_abs_levels"] <= 2  # fp32: the switches only reorder sums
    assert base["graphs_compiled_while_timed"] == 0 == tuned["graphs_compiled_while_timed"]
    ab = tiny_result["ab"]
    assert ab["config"] == "fuse_qkv+channels_last" and len(ab["rounds"]) == 1
    assert ab["rounds"][0]["engine"] > 0 and ab["rounds"][0]["diffusers"] > 0
    assert ab["ratio_min"] == ab["ratio_median"] == ab["ratio_max"] > 0  # one round


def test_the_arithmetic_against_hand_computed_answers():
    """MFU, the ceiling, the headline ratios and the A/B spread on runs whose answers are worked
    out by hand (rather than by the formulas under test)."""
    from t2i_engine.benchmark.bench import finish, ratio_spread

    runs = [
        {"path": "baseline:paper", "batch": 16, "images_per_second": 2.0, "denoiser_forwards_per_image": 4},
        {"path": "baseline:diffusers", "batch": 2, "images_per_second": 3.0, "denoiser_forwards_per_image": 4},
        {"path": "baseline:diffusers", "batch": 4, "images_per_second": 4.0, "denoiser_forwards_per_image": 4},
        {  # counted as run (a cache skipped work): 2 GFLOPs of denoising, not 4 forwards x 1 GFLOP
            "path": "engine:eager",
            "batch": 2,
            "images_per_second": 6.0,
            "denoiser_forwards_per_image": 4,
            "denoiser_flops_per_image": 2e9,
        },
        {"path": "engine:eager", "batch": 4, "error": "out of memory"},
    ]
    peak = {"flops_per_second": 2e11}  # a published peak twice the measured rate
    r = finish(
        {"published_peak": peak}, runs, {"denoiser_forward": 1e9, "vae_decode": 1e9}, {"flops_per_second": 1e11}
    )
    # baselines: 4 x 1 + 1 = 5 GFLOPs an image; the engine: 2 + 1 = 3
    assert [x.get("flops_per_image") for x in r["runs"]] == [5e9, 5e9, 5e9, 3e9, None]
    assert [x.get("mfu") for x in r["runs"]] == [0.1, 0.15, 0.2, 0.18, None]  # 5e9 x 2 / 1e11, ...
    assert [x.get("mfu_published_peak") for x in r["runs"]] == [0.05, 0.075, 0.1, 0.09, None]  # 5e9 x 2 / 2e11, ...
    assert r["ceiling_images_per_second"] == 20.0  # 1e11 / 5e9: the first run's FLOPs an image
    h = r["headline"]
    assert h["vs_paper_baseline"] == 3.0 and h["vs_diffusers_bf16_best_batch"] == 1.5 and h["best_mfu"] == 0.2
    assert h["best_mfu_published_peak"] == 0.1
    assert h["best_engine"] == {"path": "engine:eager", "batch": 2, "images_per_second": 6.0, "mfu": 0.18}
    rounds = [{"engine": 4, "diffusers": 2}, {"engine": 3, "diffusers": 3}, {"engine": 6, "diffusers": 2}]
    assert ratio_spread(rounds) == {"ratio_median": 2.0, "ratio_min": 1.0, "ratio_max": 3.0}


@pytest.mark.parametrize(
    "name, tflops",
    [
        ("NVIDIA H100 80GB HBM3", 989.5),  # torch's name for the SXM board
        ("NVIDIA H100 PCIe", 756.5),  # the PCIe board is listed before the SXM part it also names
        ("NVIDIA H100 NVL", 835.5),
        ("NVIDIA H200", 989.5),
        ("NVIDIA H200 NVL", 835.5),
        ("NVIDIA GH200 480GB", 989.5),
        ("NVIDIA A100-SXM4-80GB", 312.0),
        ("NVIDIA A100 80GB PCIe", 312.0),
        ("NVIDIA L40S", None),  # not in the table: no figure rather than a guess
        ("NVIDIA RTX A1000 Laptop GPU", None),  # whole words: not an A100
        ("NVIDIA H100 80GB HBM3 MIG 1g.10gb", None),  # a slice of the card: not its whole peak
        ("Intel(R) Xeon(R) CPU @ 2.50GHz", None),
    ],
)
def test_the_published_peak_is_the_datasheets_dense_figure_for_the_named_card(name, tflops):
    from t2i_engine.benchmark.measure import published_peak

    peak = published_peak(name)
    assert (peak and peak["flops_per_second"] / 1e12) == tflops
    if peak:  # each figure names where it comes from
        assert "datasheet" in peak["source"] and peak["dtype"] == "bfloat16"


def test_flops_per_image_are_the_denoiser_forwards_plus_one_decode(tiny_result):
    from t2i_engine.models.flops import count_flops
    from t2i_engine.models.tiny import build_tiny_sd

    f = tiny_result["flops"]
    # counted in the runs: 2 DDIM steps, guidance 5 > 1, so two forwards per step, on every path
    assert all(x["denoiser_forwards_per_image"] == 4 for x in tiny_result["runs"]) and f["forwards_per_image"] == 4
    assert f["per_image"] == f["forwards_per_image"] * f["denoiser_forward"] + f["vae_decode"]
    unet = build_tiny_sd().unet  # one forward at the 4x4 latent of 32 px, counted directly
    direct = count_flops(
        lambda: unet,
        lambda: ((torch.empty(1, 4, 4, 4), torch.tensor([1])), {"encoder_hidden_states": torch.empty(1, 77, 32)}),
    )
    assert f["denoiser_forward"] == direct


def test_an_engine_run_with_a_cache_counts_the_flops_it_ran(cli, tmp_path):
    out = tmp_path / "r.json"
    flags = ["--batch", "2", "--reps", "1", "--steps", "4", "--res", "32", "--device", "cpu", "--out", out]
    code, _, err = cli(
        "bench", "tiny-sd", "--baseline", "diffusers", "--baseline-batch", "2", "--cache", "deepcache:2", *flags
    )
    assert code == 0, err
    result = json.loads(out.read_text())
    runs = {r["path"]: r for r in result["runs"]}
    engine, plain = runs["engine:eager"], runs["baseline:diffusers"]
    assert engine["cache"] == {"name": "deepcache", "interval": 2}
    assert engine["denoiser_forwards_per_image"] == plain["denoiser_forwards_per_image"] == 8  # same calls...
    assert engine["flops_per_image"] < plain["flops_per_image"]  # ...of which half skip the deep blocks
    assert engine["flops_per_image"] == engine["denoiser_flops_per_image"] + result["flops"]["vae_decode"]


def test_forwards_are_counted_not_assumed_pndm_runs_one_more_step():
    from diffusers import PNDMScheduler

    from t2i_engine.benchmark.paths import count_denoiser_images
    from t2i_engine.engine.generator import Generator
    from t2i_engine.engine.plan import plan_units
    from t2i_engine.models.tiny import build_tiny_sd
    from tests.conftest import tiny_recipe

    sample = plan_units(tiny_recipe())[0].samples[:1]
    pipe = build_tiny_sd()
    counts = {}
    for name, scheduler in (
        ("ddim", pipe.scheduler),
        ("pndm", PNDMScheduler.from_config(pipe.scheduler.config, skip_prk_steps=True)),
    ):
        pipe.scheduler = scheduler
        with count_denoiser_images(pipe) as seen:
            Generator(pipe, steps=2, guidance=5.0, height=32, width=32).generate(list(sample))
        counts[name] = seen[0]
    assert counts == {"ddim": 2 * 2, "pndm": 2 * 3}  # SD1.5's PNDM (skip_prk_steps) makes 51 calls for 50 steps


def test_encoding_that_cannot_keep_up_shows_in_the_engines_rate(monkeypatch):
    import time

    from t2i_engine.dataset import shards as writer

    def slow_encode(images, fmt, quality, size=None):
        time.sleep(1.0)  # per batch of 2: at most 2 images/s, whatever the model does
        return real_encode(images, fmt, quality, size)

    real_encode = writer.encode_batch
    monkeypatch.setattr(writer, "encode_batch", slow_encode)
    r = run_bench(BenchOptions(**{**TINY, "steps": "1", "reps": 3}, batches=(2,), baselines=()), log=lambda line: None)
    (run,) = r["runs"]
    # The model's own batch (tiny-sd, 1 step, 32 px: ~0.03 s here) need only beat 0.95 s.
    assert run["images_per_second"] <= 2.1 < run["median_batch_images_per_second"]


def test_auto_batch_doubles_until_it_stops_paying():
    r = run_bench(BenchOptions(**{**TINY, "steps": "1"}, batches=("auto",), baselines=()), log=lambda line: None)
    batches = [x["batch"] for x in r["runs"]]
    assert batches == [16 * 2**i for i in range(len(batches))]  # tiny-sd's registry batch is 16
    rates = [x["images_per_second"] for x in r["runs"]]
    (chosen,) = [i for i, x in enumerate(r["runs"]) if x.get("auto_batch")]
    assert all(rates[i + 1] > 1.05 * rates[i] for i in range(chosen))  # each step up paid
    assert chosen == len(rates) - 1 and batches[-1] == 512 or rates[chosen + 1] <= 1.05 * rates[chosen]


@pytest.mark.parametrize(
    "args, flag",
    [
        (["tiny-sd", "--backend", "tensorrt"], "--backend"),
        (["tiny-sd", "--batch", "0"], "--batch"),
        (["tiny-sd", "--baseline-batch", "auto"], "--baseline-batch"),
        (["tiny-sd", "--steps", "0"], "steps"),
        (["sd15", "--res", "500"], "resolution"),
        (["tiny-sd", "--ladder", "base,turbo"], "--ladder"),
        (["tiny-sd", "--ladder", "fp8,base"], "--ladder"),  # FP8 quantises the pipeline: the last rung only
        (["tiny-sd", "--ladder", "base,compile", "--backend", "onnx"], "--ladder"),
        (["tiny-sd", "--ab", "2", "--baseline", "paper"], "--ab"),
        (["tiny-sd", "--ladder", "base,cudnn", "--device", "cpu"], "--ladder"),  # cuDNN attention needs CUDA
        (["nope"], "model"),
        (["tiny-sd", "--backend", "none", "--baseline", "none"], "--backend"),
        (["tiny-sd", "--cache", "deepcache", "--backend", "onnx"], "cache"),
        (["tiny-sd", "--cache", "deepcache", "--ladder", "base,compile"], "--ladder"),
        (["tiny-sd", "--sampler", "lms"], "sampler"),
    ],
)
def test_bad_input_is_refused_before_any_model_is_built(cli, args, flag):
    code, out, err = cli("bench", *args)
    assert code == 2 and flag in err and out == ""


def test_the_cli_prints_the_table_and_writes_the_json(cli, tmp_path):
    code, out, _ = cli(
        "bench",
        "tiny-sd",
        "--steps",
        "1",
        "--res",
        "32",
        "--batch",
        "2",
        "--baseline",
        "none",
        "--reps",
        "1",
        "--device",
        "cpu",
        "--out",
        tmp_path / "r.json",
    )
    (run,) = json.loads((tmp_path / "r.json").read_text())["runs"]
    row = next(line for line in out.splitlines() if line.startswith("| engine:eager"))
    assert code == 0 and f"| {run['images_per_second']:.4g} |" in row and f"{run['mfu']:.1%} | - |" in row
    assert "| MFU (measured matmul) | MFU (published peak) |" in out  # both yardsticks, labelled


def test_an_unwritable_out_is_refused_before_the_run(cli, tmp_path):
    code, out, err = cli("bench", "tiny-sd", "--out", tmp_path / "missing" / "r.json")
    assert code == 2 and "--out" in err and out == ""


def test_the_newer_transformer_families_bench_with_their_flops_counted_through_the_export_specs():
    """PixArt, Sana, Lumina-2, Qwen-Image: FLOPs counted through the export wrappers equal those
    of diffusers' own forward where fake tensors can run it (all but Lumina-2, whose forward reads
    its mask as Python numbers); and a bench of Lumina-2 (no attn_processors property) runs, its
    baseline included."""
    from t2i_engine.benchmark.bench import model_flops
    from t2i_engine.engine.recipe import build_recipe
    from t2i_engine.export.specs import Profile, denoiser_spec
    from t2i_engine.models.flops import count_flops
    from t2i_engine.models.pipelines import load_pipeline
    from t2i_engine.models.registry import get_model

    for name in ("tiny-pixart", "tiny-sana", "tiny-qwen-image", "tiny-lumina2"):
        spec = get_model(name)
        pipe = load_pipeline(spec, None, torch.device("cpu"), torch.float32)
        recipe = build_recipe({"model": name, "steps": 2, "resolution": 32, "guidance": 4.0})
        flops = model_flops(pipe, spec, recipe)
        assert flops["forwards_per_image"] == 4 and flops["vae_decode"] > 0
        den = denoiser_spec(pipe, Profile((1, 1, 1), 32, 32))
        if name != "tiny-lumina2":
            extra = {"img_shapes": [den.notes["fixed"]["img_shapes"]]} if "fixed" in den.notes else {}

            def inputs(den=den, extra=extra):
                return (), {i.name: t for i, t in zip(den.inputs, den.sample_inputs(1))} | extra

            assert flops["denoiser_forward"] == count_flops(lambda den=den: den.source, inputs) > 0
    result = run_bench(
        BenchOptions(**{**TINY, "model": "tiny-lumina2"}, batches=(2,), baseline_batches=(2,)), log=lambda line: None
    )
    assert {r["path"] for r in result["runs"]} == {"baseline:paper", "baseline:diffusers", "engine:eager"}
    assert all(r["images_per_second"] > 0 and "error" not in r for r in result["runs"])
