"""`score` and `filter`, and the readers that honour a subset: scores against the judges' own
computations, the rule against known answers, resuming, subsets at a URL, refusals."""

from __future__ import annotations

import json
import shutil
import uuid

import fsspec
import numpy as np
import pytest
import torch
from PIL import Image

from t2i_engine.dataset.layout import SCORES
from t2i_engine.dataset.manifest import read_manifest
from t2i_engine.dataset.scores import complete_scores, read_all_scores, scores_hash
from t2i_engine.dataset.store import as_store
from t2i_engine.dataset.subset import FilterRule, cut_subset, select, subset_record, write_subset
from t2i_engine.dataset.verify import repair
from t2i_engine.engine.recipe import build_recipe
from t2i_engine.engine.run import RunOptions, generate
from t2i_engine.engine.verify import verify_dataset
from t2i_engine.errors import InputError
from t2i_engine.eval.score import degeneracy, dup_groups, score
from t2i_engine.training.digits_data import write_real_digits
from t2i_engine.training.digits_judge import load_judge
from t2i_engine.training.sources import open_set

pytestmark = pytest.mark.slow

# 3 shards of 20 (a resume and a subset have shards to skip); 2 steps: the judge disagrees with some
RAW = {"model": "digits", "images_per_class": 6, "steps": 2, "images_per_shard": 20}
OPTIONS = RunOptions(device="cpu", progress=False, encode_workers=0)


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    """A small digits dataset scored by the embedded judge, shared read-only (copy it to change it)."""
    folder = tmp_path_factory.mktemp("scored") / "ds"
    generate(build_recipe(RAW), folder, OPTIONS)
    summary = score(folder, judge="digits", device="cpu", progress=False)
    return folder, summary


def _columns(folder) -> dict:
    store = as_store(folder, "dir")
    return read_all_scores(store, complete_scores(store, read_manifest(store)))


def _pixels(images: list[Image.Image]) -> torch.Tensor:
    return torch.from_numpy(np.stack([np.asarray(im) for im in images])).permute(0, 3, 1, 2).float() / 255


def test_digits_scores_equal_the_judges_own_predictions(scored):
    folder, summary = scored
    cols = _columns(folder)
    items = {it.key: it for it in open_set(folder).read()}
    assert list(cols["key"]) == list(items) and summary["images"] == len(items) == 60  # plan order, every sample
    images = [items[k].image for k in cols["key"]]
    with torch.no_grad():
        judge = load_judge()
        probs = judge(_pixels(images)).softmax(-1).numpy()  # the dataset's classes are all ten digits
        feats = torch.nn.functional.normalize(judge.embed(_pixels(images))).numpy()
    intended = np.array([int(c) for c in cols["class_id"]])
    np.testing.assert_allclose(cols["agreement"], probs[np.arange(60), intended], atol=1e-5)
    assert list(cols["top_class"]) == [str(i) for i in probs.argmax(1)]
    np.testing.assert_allclose(cols["top_prob"], probs.max(1), atol=1e-5)
    np.testing.assert_allclose(cols["embedding"].astype(np.float32), feats, atol=2e-3)  # stored as float16
    seeds = [
        json.loads(line)["seed"] for s in sorted(folder.glob("*.index.jsonl")) for line in s.read_text().splitlines()
    ]
    assert list(cols["seed"]) == seeds
    assert not cols["degenerate"].any()
    assert summary["top_is_intended"] == pytest.approx((probs.argmax(1) == intended).mean(), abs=1e-4)


def test_clip_scores_equal_transformers_zero_shot(tmp_path, scored, tiny_clip):
    from transformers import AutoTokenizer, CLIPImageProcessor, CLIPModel

    folder = tmp_path / "ds"
    shutil.copytree(scored[0], folder)
    with pytest.raises(InputError, match="--replace"):  # scores by another judge are not mixed in
        score(folder, judge="clip", weights=str(tiny_clip), device="cpu", progress=False)
    score(folder, judge="clip", weights=str(tiny_clip), device="cpu", progress=False, replace=True)
    cols = _columns(folder)
    items = {it.key: it for it in open_set(folder).read()}
    model, tok = CLIPModel.from_pretrained(tiny_clip).eval(), AutoTokenizer.from_pretrained(tiny_clip)
    names = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    pixels = processor([items[k].image for k in cols["key"]], return_tensors="pt")["pixel_values"]
    texts = tok([f"a photo of a {n}." for n in names], padding=True, return_tensors="pt")
    with torch.no_grad():
        probs = model(**texts, pixel_values=pixels).logits_per_image.softmax(-1).numpy()
    intended = np.array([int(c) for c in cols["class_id"]])
    np.testing.assert_allclose(cols["agreement"], probs[np.arange(len(intended)), intended], atol=1e-5)
    assert list(cols["top_class"]) == [str(i) for i in probs.argmax(1)]
    manifest = json.loads((folder / SCORES).read_text())
    assert manifest["judge"] == "clip" and manifest["settings"]["templates"] == ["a photo of a {name}."]


def test_the_rule_keeps_the_best_by_agreement_with_ties_broken_by_the_lower_seed():
    cols = {
        "key": np.array(["a", "b", "c", "d", "e", "f"], dtype=object),
        "class_id": np.array(["0", "0", "0", "1", "1", "1"], dtype=object),
        "seed": np.array([5, 3, 9, 1, 2, 3]),
        "agreement": np.array([0.9, 0.9, 0.2, 0.5, 0.8, 0.8]),
        "degenerate": np.array([False, False, False, False, True, False]),
        "dup_group": np.array(["a", "a", "c", "d", "e", "d"], dtype=object),  # a~b, d~f
    }
    keys = lambda rule: list(cols["key"][select(cols, rule)])  # noqa: E731
    assert keys(FilterRule(keep_per_class=1)) == ["b", "e"]  # b: a's tie, lower seed; e: f's tie, lower seed
    assert keys(FilterRule(keep_per_class=1, drop_degenerate=True)) == ["b", "f"]
    assert keys(FilterRule(dedup=True)) == ["b", "c", "e", "f"]  # b beats a (seed), f beats d (agreement)
    assert keys(FilterRule(min_agreement=0.8)) == ["a", "b", "e", "f"]
    assert keys(FilterRule(dedup=True, min_agreement=0.6, keep_per_class=2)) == ["b", "e", "f"]
    assert keys(FilterRule(keep_per_class=2, keep_by="seed")) == ["a", "b", "d", "e"]  # the lowest seeds: a draw
    assert keys(FilterRule(min_agreement=0.6, keep_per_class=1, keep_by="seed")) == ["b", "e"]
    assert keys(FilterRule(min_agreement=0.6, keep_per_class=1, keep_by="hardest")) == ["b", "e"]  # ties: seed
    assert keys(FilterRule(keep_per_class=1, keep_by="hardest")) == ["c", "d"]


def test_near_duplicate_groups_are_linked_within_a_class_and_named_by_their_first_sample():
    v, w, u = np.eye(3)
    near = v + 0.01 * w  # cosine 0.99995 with v
    keys = np.array(["k0", "k1", "k2", "k3", "k4"], dtype=object)
    classes = np.array(["0", "0", "0", "1", "0"], dtype=object)
    emb = np.stack([w, v, u, v, near])  # k1 ~ k4 in class 0; k3 is like k1 but of another class
    assert list(dup_groups(keys, classes, emb, 0.999)) == ["k0", "k1", "k2", "k3", "k1"]
    chain = np.stack([v, v + 0.05 * w, v + 0.10 * w])  # 0~1 and 1~2 link 0~2 (cosine 0.995)
    groups = dup_groups(keys[:3], np.array(["0"] * 3, dtype=object), chain, 0.998)
    assert list(groups) == ["k0", "k0", "k0"]


def test_black_constant_and_saturated_images_are_degenerate():
    rng = np.random.default_rng(0)
    black = Image.new("RGB", (32, 32))
    grey = Image.new("RGB", (32, 32), (128, 128, 128))
    salt = Image.fromarray((rng.random((32, 32, 3)) > 0.5).astype(np.uint8) * 255)
    noise = Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
    std, clipped = degeneracy([black, grey, salt, noise])
    assert std[0] == std[1] == 0 and clipped[2] == 1 and std[3] > 0.2 and clipped[3] < 0.05


def test_a_killed_score_resumes_and_a_repaired_shard_is_scored_again(tmp_path, scored):
    folder = tmp_path / "ds"
    shutil.copytree(scored[0], folder)
    whole = {p.name: p.read_bytes() for p in folder.glob("*.scores.parquet")}
    # what a kill after the first shard leaves: its scores written and recorded, the rest not,
    # a partial file of the second, and no groups yet
    manifest = json.loads((folder / SCORES).read_text())
    manifest["complete"] = False
    del manifest["shards"]["000001"], manifest["shards"]["000002"]
    (folder / SCORES).write_text(json.dumps(manifest))
    (folder / "000001.scores.parquet").write_bytes(b"PAR1 cut short")
    (folder / "000002.scores.parquet").unlink()
    resumed = score(folder, judge="digits", device="cpu", progress=False)
    assert (resumed["scored"], resumed["skipped"]) == (2, 1)
    assert {p.name: p.read_bytes() for p in folder.glob("*.scores.parquet")} == whole
    assert score(folder, judge="digits", device="cpu", progress=False)["scored"] == 0

    tar = folder / "000002.tar"
    tar.write_bytes(tar.read_bytes()[:-1024])  # damaged
    moved = repair(folder, verify_dataset(folder))
    assert any(m.endswith("000002.scores.parquet") for m in moved)
    with pytest.raises(InputError, match="expected a complete dataset"):  # remade shards first
        cut_subset(folder, FilterRule(keep_per_class=1), tmp_path / "s.json")
    generate(build_recipe(RAW), folder, OPTIONS)
    again = score(folder, judge="digits", device="cpu", progress=False)
    assert (again["scored"], again["skipped"]) == (1, 2)
    assert {p.name: p.read_bytes() for p in folder.glob("*.scores.parquet")} == whole


def test_a_subset_is_honoured_by_train_analyze_preview_and_verify(cli, tmp_path, scored):
    folder = tmp_path / "ds"
    shutil.copytree(scored[0], folder)
    subset = tmp_path / "best.json"
    code, out, err = cli("filter", folder, "--out", subset, "--keep-per-class", "2", "--dedup")
    assert code == 0, err
    record = json.loads(subset.read_text())
    keys = set(record["keys"])
    assert record["count"] == len(keys) == 20 and set(record["per_class"].values()) == {2}
    assert "`best.json`" in (folder / "README.md").read_text()  # the card describes it

    run = tmp_path / "run"
    code, _, err = cli("train", folder, "--out", run, "--subset", subset, "--epochs", "1", "--val-fraction", "0")
    assert code == 0, err
    config = json.loads((run / "config.json").read_text())
    summary = (run / "summary.csv").read_text().splitlines()
    assert config["data"]["images"] == 20 and config["data"]["subset"]["rule"]["keep_per_class"] == 2
    assert summary[1].split(",")[6] == "20"  # the epoch saw the subset's 20 images, not the 60

    write_real_digits(tmp_path / "real")
    code, out, err = cli(
        "analyze", folder, "--real", tmp_path / "real" / "test", "--out", tmp_path / "a.json", "--subset", subset
    )
    assert code == 0, err
    analysis = json.loads((tmp_path / "a.json").read_text())
    assert analysis["data"]["images"] == 20 and analysis["overall"]["images_per_side"] == 20

    code, _, err = cli("preview", folder, "--subset", subset, "--per-class", "8")
    assert code == 0, err
    with Image.open(tmp_path / "best.jpg") as sheet:  # a row per digit, 2 images wide: 160 px label + 2 x 100
        assert sheet.size == (360, 1000)

    shard0 = [json.loads(line)["key"] for line in (folder / "000000.index.jsonl").read_text().splitlines()]
    store = as_store(folder, "dir")
    in_shard0 = tmp_path / "shard0.json"
    write_subset(
        in_shard0,
        subset_record(
            shard0[:3],
            ["0"] * 3,
            rule={"by_hand": True},
            dataset={"recipe_hash": read_manifest(store)["recipe_hash"]},
            scores={"hash": scores_hash(json.loads((folder / SCORES).read_text()))},
            dataset_count=60,
        ),
    )
    tar = folder / "000002.tar"
    tar.write_bytes(tar.read_bytes()[:-1024])
    assert cli("verify", folder, "--subset", in_shard0)[0] == 0  # shard 2 holds none of its samples
    only0 = open_set(folder, "data", in_shard0)
    assert only0.units == ["000000.tar"] and [it.key for it in only0.read()] == shard0[:3]  # nothing else read
    code, out, _ = cli("verify", folder)
    assert code == 1 and "000002.tar" in out


def test_scores_and_subsets_live_at_a_store_url_too(tmp_path):
    root = f"/t2i-test-{uuid.uuid4().hex}"
    url = f"memory://{root}/ds"
    try:
        generate(build_recipe({**RAW, "images_per_class": 2}), url, OPTIONS)
        summary = score(url, judge="digits", device="cpu", progress=False)
        assert summary["images"] == 20 and summary["manifest"] == f"{url}/{SCORES}"
        cut_subset(url, FilterRule(keep_per_class=1), f"memory://{root}/best.json")
        data = open_set(url, "data", f"memory://{root}/best.json")
        assert len(data.entries) == len(list(data.read())) == 10
        assert verify_dataset(url, subset=f"memory://{root}/best.json") == []
    finally:
        fsspec.filesystem("memory").rm(root, recursive=True)


def test_a_subset_of_other_scores_or_another_dataset_is_refused(tmp_path, scored):
    folder = tmp_path / "ds"
    shutil.copytree(scored[0], folder)
    cut_subset(folder, FilterRule(keep_per_class=1), tmp_path / "s.json")
    score(folder, judge="digits", device="cpu", progress=False, dedup_threshold=0.9)  # regrouped: other scores
    with pytest.raises(InputError, match="scores changed"):
        open_set(folder, "data", tmp_path / "s.json")
    other = tmp_path / "other"
    generate(build_recipe({**RAW, "seed": 1, "images_per_class": 1}), other, OPTIONS)
    with pytest.raises(InputError, match="another dataset"):
        open_set(other, "data", tmp_path / "s.json")


@pytest.mark.parametrize(
    "args, needed",
    [
        (("filter", "{ds}", "--out", "{tmp}/s.json", "--min-agreement", "1.5"), "--min-agreement: '1.5'"),
        (("filter", "{ds}", "--out", "{tmp}/s.json", "--min-agreement", "-0.1"), "expected a number in [0, 1]"),
        (("filter", "{ds}", "--out", "{tmp}/s.json", "--min-agreement", "nan"), "--min-agreement: 'nan'"),
        (("filter", "{ds}", "--out", "{tmp}/s.json", "--keep-per-class", "0"), "--keep-per-class: '0'"),
        (("filter", "{ds}", "--out", "{tmp}/s.json", "--keep-per-class", "2.5"), "--keep-per-class: '2.5'"),
        (("filter", "{ds}", "--out", "{tmp}/s.json"), "expected at least one of --min-agreement"),
        (("filter", "{ds}", "--out", "{tmp}/s.json", "--keep-per-class", "1", "--keep-by", "x"), "--keep-by: 'x'"),
        (("score", "{ds}", "--judge", "digits", "--dedup-threshold", "0"), "--dedup-threshold: '0'"),
        (("score", "{ds}", "--judge", "digits", "--dedup-threshold", "1.5"), "expected a number in (0, 1]"),
        (("score", "{ds}", "--judge", "clip", "--weights", "nobody/no-clip"), "hf download nobody/no-clip"),
        (("score", "{ds}", "--judge", "sharp"), "--judge: 'sharp' is not allowed"),
        (("train", "{ds}", "--out", "{tmp}/r", "--subset", "{tmp}/none.json"), "expected a subset file"),
    ],
)
def test_bad_thresholds_and_judges_exit_2_with_one_line(cli, tmp_path, scored, args, needed):
    before = sorted(p.name for p in scored[0].iterdir())
    code, _, err = cli(*(a.format(ds=scored[0], tmp=tmp_path) for a in args))
    assert code == 2 and len(err.strip().splitlines()) == 1 and needed in err, err
    assert sorted(p.name for p in scored[0].iterdir()) == before and not (tmp_path / "s.json").exists()


@pytest.mark.gpu
def test_scores_on_the_gpu_agree_with_the_cpus(tmp_path, scored):
    folder = tmp_path / "ds"
    shutil.copytree(scored[0], folder)
    cpu = _columns(folder)
    score(folder, judge="digits", device="cuda", progress=False, replace=True)
    gpu = _columns(folder)
    assert list(gpu["key"]) == list(cpu["key"])
    np.testing.assert_allclose(gpu["agreement"], cpu["agreement"], atol=1e-3)  # TF32 and cuDNN's own kernels
