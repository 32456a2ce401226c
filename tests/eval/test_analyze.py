"""`analyze`, `probe` and `report` on the digits: invariants, known answers, refusals."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from t2i_engine.eval.analyze import analyze
from t2i_engine.eval.classify import evaluate_run
from t2i_engine.eval.probes import fft_filter, write_probe
from t2i_engine.eval.report import write_report
from t2i_engine.training.sources import open_set
from tests.conftest import copy_run

pytestmark = pytest.mark.slow


def test_a_set_analyzed_against_itself_is_complete_and_at_zero_distance(digits_world, tmp_path):
    r = analyze(
        digits_world["real_test"], digits_world["real_test"], tmp_path / "a.json", features="judge", max_per_class=30
    )
    o = r["overall"]
    assert o["precision"] == o["recall"] == o["coverage"] == 1.0
    assert abs(o["fid"]) < 1e-6 and o["diversity"] == pytest.approx(o["diversity_real"])
    assert all(row["images_per_side"] == 30 for row in r["per_class"].values())
    assert json.loads((tmp_path / "a.json").read_text())["overall"] == o


def test_synthetic_digits_against_real_ones_balanced_per_class(digits_world, tmp_path):
    r = analyze(digits_world["synthetic"], digits_world["real_train"], tmp_path / "a.json", features="judge")
    # 60 synthetic per class against 120 real: both sides are cut to 60
    assert {row["images_per_side"] for row in r["per_class"].values()} == {60}
    o = r["overall"]
    assert 0 <= o["precision"] <= 1 and 0 <= o["coverage"] <= 1 and o["fid"] > 0
    assert 1 <= o["vendi"] <= 60


def test_clip_features_give_clipscore_and_zero_shot_alignment(digits_world, tiny_clip, tmp_path):
    clip = f"clip={tiny_clip}"
    r = analyze(
        digits_world["synthetic"],
        digits_world["real_test"],
        tmp_path / "a.json",
        features=clip,
        clip=str(tiny_clip),
        max_per_class=12,
    )
    o = r["overall"]
    assert 0 <= o["clipscore"] <= 100 and 0 <= o["zero_shot_synth"] <= 1 and 0 <= o["zero_shot_real"] <= 1
    self_check = analyze(
        digits_world["real_test"], digits_world["real_test"], tmp_path / "b.json", features=clip, max_per_class=12
    )
    assert self_check["overall"]["coverage"] == 1.0 and abs(self_check["overall"]["fid"]) < 1e-6


@pytest.mark.parametrize(
    "flag, value, needed",
    [
        ("--features", "clip={missing}", "config.json"),
        ("--features", "inception={missing}/pt.pth", "pt_inception-2015-12-05"),
        ("--features", "timm:resnet50={missing}/w.safetensors", "local weights file"),
        ("--features", "clip", "expected judge, clip=DIR"),
        ("--clip", "{missing}", "CLIP weights"),
    ],
)
def test_analyze_says_which_weights_file_is_needed(cli, digits_world, tmp_path, flag, value, needed):
    value = value.format(missing=tmp_path / "absent")
    code, _, err = cli(
        "analyze",
        digits_world["synthetic"],
        "--real",
        digits_world["real_test"],
        "--out",
        tmp_path / "a.json",
        flag,
        value,
    )
    assert code == 2 and flag in err and needed in err and not (tmp_path / "a.json").exists()


def test_fft_probe_writes_the_same_keys_and_classes(digits_world, tmp_path):
    out = write_probe(digits_world["real_test"], tmp_path / "low", "fft-low")
    src, probed = open_set(digits_world["real_test"]), open_set(out)
    assert [(e.key, e.class_id) for e in src.entries] == [(e.key, e.class_id) for e in probed.entries]
    assert probed.origin["probe"] == "fft-low" and probed.origin["kind"] == "real"
    first_src, first_probed = next(src.read()), next(probed.read())
    x = torch.from_numpy(np.array(first_src.image)).permute(2, 0, 1).float()[None] / 255
    expected = (fft_filter(x, "low").clamp(0, 1) * 255).round().to(torch.uint8)[0].permute(1, 2, 0).numpy()
    assert np.array_equal(np.asarray(first_probed.image), expected)


def test_vae_probe_round_trips_real_digits_through_the_embedded_vae(digits_world, tmp_path):
    out = write_probe(digits_world["real_test"], tmp_path / "vae", "vae", vae_model="digits")
    src, probed = open_set(digits_world["real_test"]), open_set(out)
    assert len(probed.entries) == len(src.entries) and probed.origin["vae_model"] == "digits"
    a = np.stack([np.asarray(it.image, dtype=np.float32) for it in src.read()])
    b = np.stack([np.asarray(it.image, dtype=np.float32) for it in probed.read()])
    # the VAE was trained on these digits: the round trip is close but not the identity
    assert 0 < np.abs(a - b).mean() < 0.1 * 255


def test_report_table_and_plots_carry_the_eval_and_analysis_numbers(digits_world, digits_runs, tmp_path):
    copy_run(digits_runs["synth"], tmp_path / "synth")
    copy_run(digits_runs["real"], tmp_path / "real")
    s2r = evaluate_run(tmp_path / "synth", digits_world["real_test"], device="cpu")
    r2s = evaluate_run(tmp_path / "real", digits_world["synthetic"], device="cpu")
    base = evaluate_run(tmp_path / "real", digits_world["real_test"], device="cpu")
    a = analyze(digits_world["synthetic"], digits_world["real_train"], tmp_path / "a.json")
    r = write_report([tmp_path / "synth", tmp_path / "real", tmp_path / "a.json"], tmp_path / "report")
    (row,) = r["rows"]
    assert row["model"] == "digits" and row["released"] == "2026-11" and row["guidance"] == 2.0
    assert row["synth_to_real"] == s2r["top1"] and row["real_to_synth"] == r2s["top1"]
    assert row["density"] == a["overall"]["density"] and row["coverage"] == a["overall"]["coverage"]
    assert r["baselines"] == [
        {
            "direction": "real->real",
            "top1": base["top1"],
            "arch": "small-cnn",
            "run": base["run"],
            "trained_on": "real digits-real-train",
            "data": "real digits-real-test",
            "probed": False,
        }
    ]
    csv_lines = (tmp_path / "report" / "table.csv").read_text().splitlines()
    assert csv_lines[0].startswith("model,arch,guidance,released,synth_to_real") and len(csv_lines) == 2
    # The synthetic-trained run tested on a low-passed real set is a probe: it is listed beside
    # the table and leaves the row's synth->real alone.
    low = write_probe(digits_world["real_test"], tmp_path / "low", "fft-low")
    probe_eval = evaluate_run(tmp_path / "synth", low, device="cpu")
    assert probe_eval["direction"] == "synth->real"
    again = write_report([tmp_path / "synth", tmp_path / "real", tmp_path / "a.json"], tmp_path / "report2")
    assert again["rows"][0]["synth_to_real"] == s2r["top1"]
    assert any(b["probed"] and b["top1"] == probe_eval["top1"] for b in again["baselines"])
    for name in ("accuracy_vs_release.png", "density_vs_coverage.png"):
        with Image.open(tmp_path / "report" / name) as im:
            pixels = np.asarray(im.convert("L"))
        assert im.size[0] > 300 and len(np.unique(pixels)) > 10  # a drawn plot, not a blank canvas


@pytest.mark.parametrize("lib", ["timm", "torchvision"])
def test_any_timm_or_torchvision_model_serves_as_features_from_a_local_file(lib, tmp_path):
    from safetensors.torch import save_file

    from t2i_engine.eval.features import load_extractor
    from t2i_engine.training.archs import build_model

    model = build_model("resnet18", 1000, 224)  # torchvision's and timm's resnet18 share their layout
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp_path / "w.safetensors")
    ex = load_extractor(f"{lib}:resnet18={tmp_path / 'w.safetensors'}")
    images = [Image.fromarray(np.full((40, 40, 3), v, dtype=np.uint8)) for v in (0, 128, 255)]
    feats = ex(images)
    assert feats.shape == (3, 512)  # the pooled features before the classifier
    model.fc = torch.nn.Identity()
    with torch.no_grad():
        assert torch.allclose(feats, model.eval()(ex.to_tensor(images)), atol=1e-5)


def test_probes_take_images_of_mixed_sizes_and_modes(tmp_path):
    src = tmp_path / "mixed"
    rng = np.random.default_rng(0)
    for cls, shapes in (("a", [(20, 30), (32, 32)]), ("b", [(17, 9)])):
        (src / cls).mkdir(parents=True)
        for i, (h, w) in enumerate(shapes):
            Image.fromarray(rng.integers(0, 255, (h, w), dtype=np.uint8), mode="L").save(src / cls / f"{i}.png")
    out = write_probe(src, tmp_path / "high", "fft-high")
    sizes = sorted(it.image.size for it in open_set(out).read())
    assert sizes == [(9, 17), (30, 20), (32, 32)]


def test_a_feature_file_that_cannot_be_used_is_an_input_error(cli, digits_world, tmp_path):
    bad = tmp_path / "w.safetensors"
    bad.write_bytes(b"not safetensors")
    code, _, err = cli(
        "analyze",
        digits_world["synthetic"],
        "--real",
        digits_world["real_test"],
        "--out",
        tmp_path / "a.json",
        "--features",
        f"timm:resnet18={bad}",
    )
    assert code == 2 and "cannot read weights" in err
    pth = tmp_path / "pt_inception.pth"
    pth.write_bytes(b"x")
    code, _, err = cli(
        "analyze",
        digits_world["synthetic"],
        "--real",
        digits_world["real_test"],
        "--out",
        tmp_path / "a.json",
        "--features",
        f"inception={pth}",
    )
    assert code == 2 and "--features" in err and ("torch-fidelity" in err or "cannot load it" in err)
