"""End to end on tiny-sd: repeatable bytes, batch-size invariance, resume, verify, readers."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import signal
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from t2i_engine.engine.plan import plan_units
from t2i_engine.engine.run import RunOptions, generate
from t2i_engine.engine.units import shard_writer
from t2i_engine.engine.verify import verify_dataset
from t2i_engine.errors import InputError
from t2i_engine.seeds import sample_seed
from tests.conftest import tiny_recipe

QUIET = RunOptions(device="cpu", progress=False, encode_workers=0)


def shard_hashes(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("*.tar"))}


def shard_pixels(folder: Path) -> dict[str, np.ndarray]:
    """Every PNG member of a dataset's shards, by member name, as an int array."""
    import tarfile

    out = {}
    for shard in sorted(folder.glob("*.tar")):
        with tarfile.open(shard) as tar:
            for m in tar.getmembers():
                if m.name.endswith(".png"):
                    out[m.name] = np.asarray(Image.open(io.BytesIO(tar.extractfile(m).read()))).astype(int)
    return out


def sample_differences(folder: Path, reference: Path, levels: int = 1) -> list[str]:
    """What differs between two datasets' shards beyond rounding: the same shards, members and
    member order, the same labels and metadata byte for byte, and PNG images within `levels`
    per pixel, with at most 1% of an image's values moved (a rounding edge is rare; a shift of
    the whole image is a bug). For runs with other CPU thread counts, whose floats differ in the
    last bits (README); other formats compare as bytes (a lossy re-encoding spreads a moved
    pixel over its block)."""
    import tarfile

    names = [p.name for p in sorted(folder.glob("*.tar"))]
    if names != [p.name for p in sorted(reference.glob("*.tar"))]:
        return [f"shards {names}"]
    out = []
    for name in names:
        with tarfile.open(folder / name) as a, tarfile.open(reference / name) as b:
            if a.getnames() != b.getnames():
                out.append(f"{name}: members differ")
                continue
            for member in a.getnames():
                x, y = a.extractfile(member).read(), b.extractfile(member).read()
                if member.endswith(".png"):
                    diff = np.abs(
                        np.asarray(Image.open(io.BytesIO(x)), int) - np.asarray(Image.open(io.BytesIO(y)), int)
                    )
                    if diff.max() > levels or np.count_nonzero(diff) > diff.size // 100:
                        out.append(f"{name}/{member}: {diff.max()} levels, {np.count_nonzero(diff)} values moved")
                elif x != y:
                    out.append(f"{name}/{member}: bytes differ")
    drop = lambda rows: [{k: v for k, v in r.items() if k != "sha256"} for r in rows]  # noqa: E731 - the images' hashes
    if drop(index_rows(folder)) != drop(index_rows(reference)):
        out.append("index rows differ")
    return out


def index_rows(folder: Path) -> list[dict]:
    return [json.loads(line) for p in sorted(folder.glob("*.index.jsonl")) for line in p.read_text().splitlines()]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ds") / "out"
    summary = generate(tiny_recipe(), out, QUIET)
    assert summary["images"] == 9 and summary["shards_written"] == 3
    return out


@pytest.fixture
def copy(dataset, tmp_path) -> Path:
    return Path(shutil.copytree(dataset, tmp_path / "copy"))


def test_same_recipe_gives_byte_identical_shards(dataset, tmp_path):
    # A second run, through the encoder process pool this time, must write the same bytes.
    again = tmp_path / "again"
    generate(tiny_recipe(), again, RunOptions(device="cpu", progress=False, encode_workers=1))
    assert shard_hashes(again) == shard_hashes(dataset) and len(shard_hashes(dataset)) == 3
    manifest = json.loads((again / "dataset.json").read_text())
    assert manifest["complete"] and [s["sha256"] for s in manifest["shards"]] == list(shard_hashes(dataset).values())


def test_batch_size_one_and_four_give_the_same_samples(tmp_path):
    rows, pixels = {}, {}
    for bs in (1, 4):
        out = tmp_path / f"bs{bs}"
        generate(tiny_recipe(batch_size=bs, format="png"), out, QUIET)
        rows[bs] = [{k: r[k] for k in ("key", "class_index", "class_id", "prompt", "seed")} for r in index_rows(out)]
        import webdataset as wds

        pixels[bs] = {
            s["__key__"]: np.asarray(Image.open(io.BytesIO(s["png"])))
            for s in wds.WebDataset([str(p) for p in sorted(out.glob("*.tar"))], shardshuffle=False)
        }
    assert rows[1] == rows[4]
    # Tolerance: 1 uint8 level; batched fp32 kernels may round differently from unbatched ones.
    worst = max(np.abs(pixels[1][k].astype(int) - pixels[4][k].astype(int)).max() for k in pixels[1])
    assert worst <= 1, f"max pixel difference {worst}"


def test_rerun_skips_committed_shards_and_remakes_a_lost_one_exactly(copy):
    before = shard_hashes(copy)
    assert generate(tiny_recipe(), copy, QUIET)["shards_skipped"] == 3
    for suffix in (".tar", ".index.jsonl", ".stats.json"):
        (copy / f"000001{suffix}").unlink()
    summary = generate(tiny_recipe(), copy, QUIET)
    assert (summary["shards_written"], summary["images"]) == (1, 4)
    assert shard_hashes(copy) == before and verify_dataset(copy) == []


def test_batch_size_may_change_on_resume_but_the_recipe_may_not(copy):
    assert generate(tiny_recipe(batch_size=3), copy, QUIET)["shards_skipped"] == 3
    before = {p.relative_to(copy).as_posix(): p.read_bytes() for p in copy.rglob("*") if p.is_file()}
    with pytest.raises(InputError, match="another recipe.*guidance"):
        generate(tiny_recipe(guidance=2.0), copy, QUIET)
    assert {p.relative_to(copy).as_posix(): p.read_bytes() for p in copy.rglob("*") if p.is_file()} == before


def test_a_foreign_nonempty_folder_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="holds other files"):
        generate(tiny_recipe(), tmp_path, QUIET)
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def test_webdataset_reads_shards_with_their_labels(dataset):
    import webdataset as wds

    urls = [str(p) for p in sorted(dataset.glob("*.tar"))]
    planned = {r["key"]: r for r in index_rows(dataset)}
    seen = []
    for image, label, meta in wds.WebDataset(urls, shardshuffle=False).decode("pil").to_tuple("jpg", "cls", "json"):
        assert image.size == (32, 32)
        assert label == planned[meta["key"]]["class_index"] == meta["class_index"]
        assert meta["prompt"] == planned[meta["key"]]["prompt"] and meta["model"] == "tiny-sd"
        seen.append(meta["key"])
    assert sorted(seen) == sorted(planned)


def test_timm_wds_reader_takes_info_json(dataset):
    from timm.data import create_dataset

    ds = create_dataset("wds/synthetic", root=str(dataset), split="train", is_training=False)
    labels = sorted(int(target) for _, target in ds)
    assert len(ds) == 9 and labels == sorted(r["class_index"] for r in index_rows(dataset))


def test_hugging_face_datasets_loads_every_row_with_its_image_label_and_seed(dataset, tmp_path):
    from datasets import load_dataset

    # Seeds now lie in [0, 2^63): the old rule's (all 64 bits) would have overflowed Arrow's int64 here.
    assert any(sample_seed(tiny_recipe().seed, i, bits=64) >= 2**63 for i in range(9))
    tars = [str(p) for p in sorted(dataset.glob("*.tar"))]
    ds = load_dataset("webdataset", data_files=tars, split="train", cache_dir=str(tmp_path))
    planned = {r["key"]: r for r in index_rows(dataset)}
    assert len(ds) == len(planned) == 9
    for row in ds:
        meta = planned[row["__key__"]]
        assert row["cls"] == meta["class_index"] and row["json"]["seed"] == meta["seed"] < 2**63
        assert row["jpg"].size == (32, 32)


def test_a_new_dataset_refuses_a_recipe_seed_past_2_63_with_the_reason(tmp_path):
    recipe = tiny_recipe(seed=2**63)  # a recipe may hold it: datasets of the first format were made with such seeds
    with pytest.raises(InputError, match=r"seed: .*2\^63 - 1\): seeds must fit the signed 64-bit integers of Arrow"):
        generate(recipe, tmp_path / "out", QUIET)
    assert not (tmp_path / "out").exists()


def test_the_dataset_card_lets_datasets_open_the_folder_with_named_labels(dataset, tmp_path):
    from datasets import load_dataset

    card = (dataset / "README.md").read_text()
    assert card.startswith("---\n") and "tiny-sd" in card and "9 images of 3 classes" in card
    ds = load_dataset(str(dataset), split="train", cache_dir=str(tmp_path))
    assert ds.features["cls"].names == ["cat", "dog", "goldfish"] and len(ds) == 9
    planned = {r["key"]: r for r in index_rows(dataset)}
    for row in ds:
        meta = planned[row["__key__"]]
        assert ds.features["cls"].int2str(row["cls"]) == meta["class_name"] and row["json"]["prompt"] == meta["prompt"]
        assert row["jpg"].size == (32, 32)


@pytest.mark.alone
def test_encoder_processes_leave_sigterm_to_the_run(tmp_path):
    # Slurm sends SIGTERM to every process of a job: the encoders must outlive it (the run stops
    # them), or the run's clean stop would end on a broken process pool instead of exit 143.
    recipe = tiny_recipe(images_per_class=1, images_per_shard=3)
    unit = plan_units(recipe)[0]
    writer = shard_writer(recipe, tmp_path, encode_workers=1)
    try:
        writer.start_encoders()
        for pid in list(writer._pool._processes):
            os.kill(pid, signal.SIGTERM)
        time.sleep(0.3)
        writer.add(unit, list(unit.samples), np.full((3, 32, 32, 3), 128, np.uint8))
        writer.commit(unit)
    finally:
        records = writer.close()
    assert [r.name for r in records] == ["000000.tar"]


def test_verify_finds_a_truncated_shard_and_a_flipped_byte(copy):
    assert verify_dataset(copy) == []
    tar0, tar2 = copy / "000000.tar", copy / "000002.tar"
    tar0.write_bytes(tar0.read_bytes()[:3000])
    data = bytearray(tar2.read_bytes())
    data[700] ^= 0x01  # inside the first image's bytes
    tar2.write_bytes(bytes(data))
    problems = verify_dataset(copy)
    bad = {p.shard for p in problems}
    assert bad == {"000000", "000002"}, problems
    assert any("sha256" in p.message for p in problems if p.shard == "000002")


def test_verify_repair_then_generate_restores_the_exact_dataset(copy, cli):
    before = shard_hashes(copy)
    (copy / "000001.tar").write_bytes(b"\0" * 1024)
    code, out, _ = cli("verify", copy, "--repair")
    assert code == 1 and "000001.tar" in out
    assert not (copy / "000001.tar").exists() and list((copy / "_rejected").rglob("000001.tar"))
    assert not (copy / "README.md").exists() and not (copy / "preview.jpg").exists()  # they described it whole
    assert generate(tiny_recipe(), copy, QUIET)["shards_written"] == 1
    assert (copy / "README.md").is_file() and (copy / "preview.jpg").is_file()
    assert shard_hashes(copy) == before
    assert cli("verify", copy)[0] == 0


def test_verify_reports_damaged_sidecars_and_generate_remakes_them(copy):
    before = shard_hashes(copy)
    (copy / "000000.stats.json").write_bytes(b"\xff garbage")
    index = copy / "000001.index.jsonl"
    rows = [json.loads(line) for line in index.read_text().splitlines()]
    rows[0]["class_index"] = (rows[0]["class_index"] + 1) % 3  # a relabelled sample, index only
    index.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert {p.shard for p in verify_dataset(copy)} == {"000000", "000001"}
    (copy / "000001.index.jsonl").unlink()
    assert generate(tiny_recipe(), copy, QUIET)["shards_written"] == 2
    assert shard_hashes(copy) == before and verify_dataset(copy) == []


def test_a_damaged_manifest_recipe_is_refused_not_replanned(copy):
    manifest = json.loads((copy / "dataset.json").read_text())
    manifest["recipe"]["seed"] = 1
    (copy / "dataset.json").write_text(json.dumps(manifest))
    with pytest.raises(InputError, match="damaged"):
        verify_dataset(copy)


def test_leftovers_of_a_kill_before_the_first_manifest_do_not_block_a_run(tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    (out / "dataset.json.tmp").write_text("{")
    assert generate(tiny_recipe(), out, QUIET)["images"] == 9
    assert not list(out.glob("*.tmp"))


def test_a_lost_info_json_card_or_preview_is_recreated(copy):
    for name in ("_info.json", "README.md", "preview.jpg"):
        (copy / name).unlink()
    assert generate(tiny_recipe(), copy, QUIET)["images"] == 0
    assert json.loads((copy / "_info.json").read_text())["splits"]["train"]["num_samples"] == 9
    assert (copy / "README.md").is_file() and (copy / "preview.jpg").is_file()


def test_resume_with_other_weights_is_refused(copy, tmp_path):
    with pytest.raises(InputError, match="weights"):
        generate(tiny_recipe(), copy, RunOptions(device="cpu", progress=False, weights=str(tmp_path)))


def test_two_runs_on_one_folder_are_refused_by_the_lock(copy):
    from t2i_engine.dataset.locks import exclusive_lock

    (copy / "000002.tar").unlink()
    with exclusive_lock(copy):
        with pytest.raises(InputError, match="another t2i-engine process"):
            generate(tiny_recipe(), copy, QUIET)
    assert generate(tiny_recipe(), copy, QUIET)["shards_written"] == 1
