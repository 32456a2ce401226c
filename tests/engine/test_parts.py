"""Static parts (`--part I/N`) into one folder: disjoint shards, the same bytes as one run,
the manifest completed by the last part or by `finalize`, and no two writers racing."""

from __future__ import annotations

import json
import subprocess

import pytest

from t2i_engine.dataset import manifest as dm
from t2i_engine.dataset.locks import exclusive_lock, part_locks
from t2i_engine.engine.run import RunOptions, finalize, generate, parse_part
from t2i_engine.engine.verify import verify_dataset
from t2i_engine.errors import InputError
from tests.conftest import CLI, subprocess_env, tiny_recipe
from tests.engine.test_generate import QUIET, shard_hashes

RECIPE = {"images_per_class": 5, "images_per_shard": 3}  # 15 samples in 5 shards


def part(i: int, n: int) -> RunOptions:
    return RunOptions(device="cpu", progress=False, encode_workers=0, part=(i, n))


@pytest.fixture(scope="module")
def whole(tmp_path_factory):
    out = tmp_path_factory.mktemp("whole") / "out"
    generate(tiny_recipe(**RECIPE), out, QUIET)
    return out


def test_two_parts_write_disjoint_shards_whose_union_is_the_one_run_dataset(whole, tmp_path):
    out = tmp_path / "parts"
    first = generate(tiny_recipe(**RECIPE), out, part(0, 2))
    assert first["part"] == "0/2" and first["shards_written"] == 3 and not first["dataset_complete"]
    assert sorted(shard_hashes(out)) == ["000000.tar", "000002.tar", "000004.tar"]
    assert not json.loads((out / "dataset.json").read_text())["complete"]
    second = generate(tiny_recipe(**RECIPE), out, part(1, 2))
    assert second["shards_written"] == 2 and second["dataset_complete"]  # the last part completed the manifest
    assert shard_hashes(out) == shard_hashes(whole)
    assert verify_dataset(out) == []
    manifest, reference = (json.loads((d / "dataset.json").read_text()) for d in (out, whole))
    assert manifest["shards"] == reference["shards"]


@pytest.mark.alone
def test_parts_started_at_once_as_processes_share_the_folder_without_overlap(whole, tmp_path):
    out, recipe = tmp_path / "concurrent", tmp_path / "recipe.yaml"
    recipe.write_text(
        "model: tiny-sd\nclasses: [cat, dog, goldfish]\nimages_per_class: 5\nsteps: 2\nresolution: 32\n"
        "batch_size: 2\nimages_per_shard: 3\n"
    )  # = tiny_recipe(**RECIPE)
    args = ["generate", str(recipe), "--out", str(out), "--device", "cpu", "--encode-workers", "0", "--no-progress"]
    # at this process's thread count, the reference's: the same bytes (README)
    procs = [
        subprocess.Popen([*CLI, *args, "--part", f"{i}/2"], stderr=subprocess.PIPE, text=True, env=subprocess_env())
        for i in range(2)
    ]
    errors = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errors
    assert shard_hashes(out) == shard_hashes(whole)
    assert json.loads((out / "dataset.json").read_text())["complete"] and verify_dataset(out) == []


def test_a_whole_run_and_a_part_exclude_each_other_and_a_part_runs_once(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    with part_locks(out, (0, 2)):
        with pytest.raises(InputError, match="another t2i-engine process is writing"):
            generate(tiny_recipe(**RECIPE), out, QUIET)
        with pytest.raises(InputError, match="--part.*already running"):
            generate(tiny_recipe(**RECIPE), out, part(0, 2))
        generate(tiny_recipe(**RECIPE), out, part(1, 2))  # another part may run beside it
    with exclusive_lock(out):
        with pytest.raises(InputError, match="a run of the whole dataset"):
            generate(tiny_recipe(**RECIPE), out, part(0, 2))
    assert generate(tiny_recipe(**RECIPE), out, part(0, 2))["dataset_complete"]


def test_finalize_completes_a_folder_whose_last_part_died_and_refuses_one_with_parts_missing(cli, whole, tmp_path):
    out = tmp_path / "out"
    generate(tiny_recipe(**RECIPE), out, part(0, 2))
    code, _, err = cli("finalize", out)
    assert code == 2 and "2 of 5 shards are not written yet (000001, 000003)" in err
    generate(tiny_recipe(**RECIPE), out, part(1, 2))
    dm.mark_incomplete(out)  # as if the last part was killed between its last shard and the manifest
    assert finalize(out)["shards"] == 5
    assert verify_dataset(out) == [] and (out / dm.INFO).is_file()
    assert (
        json.loads((out / "dataset.json").read_text())["shards"]
        == json.loads((whole / "dataset.json").read_text())["shards"]
    )


def test_a_part_removes_only_its_own_temporaries(tmp_path):
    out = tmp_path / "out"
    generate(tiny_recipe(**RECIPE), out, part(0, 2))
    theirs, mine = out / "000001.tar.tmp", out / "000000.tar.tmp"
    theirs.write_bytes(b"another part is writing this")
    (out / "000000.tar").unlink()  # part 0 must redo shard 0; its stale temporary goes
    mine.write_bytes(b"stale")
    generate(tiny_recipe(**RECIPE), out, part(0, 2))
    assert theirs.exists() and not mine.exists()


@pytest.mark.parametrize(
    "text, env, expected",
    [
        ("1/2", {}, (1, 2)),
        ("auto", {"SLURM_ARRAY_TASK_ID": "5", "SLURM_ARRAY_TASK_MIN": "4", "SLURM_ARRAY_TASK_COUNT": "3"}, (1, 3)),
        ("auto", {"SLURM_ARRAY_TASK_ID": "2", "SLURM_ARRAY_TASK_COUNT": "4"}, (2, 4)),
        ("auto", {"RANK": "3", "WORLD_SIZE": "8"}, (3, 8)),
    ],
)
def test_parse_part(text, env, expected):
    assert parse_part(text, env) == expected


@pytest.mark.parametrize(
    "text, env",
    [
        ("2/2", {}),
        ("0/0", {}),
        ("a/b", {}),
        ("1", {}),
        ("-1/2", {}),
        ("auto", {}),
        ("auto", {"RANK": "4", "WORLD_SIZE": "4"}),
    ],
)
def test_bad_parts_are_refused(text, env):
    with pytest.raises(InputError, match="--part"):
        parse_part(text, env)


def test_cli_refuses_a_bad_part_before_writing(cli, tmp_path):
    code, _, err = cli("generate", "--out", tmp_path / "out", "--model", "tiny-sd", "--part", "3/2")
    assert code == 2 and "--part" in err and not (tmp_path / "out").exists()


def test_parts_of_another_split_are_refused_while_they_run(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    with part_locks(out, (0, 2)):
        with pytest.raises(InputError, match=r"another split \(part 0/2\)"):
            generate(tiny_recipe(**RECIPE), out, part(0, 3))
    # nothing of split 2 runs any more: a split of 3 may take over
    for i in range(3):
        generate(tiny_recipe(**RECIPE), out, part(i, 3))
    assert verify_dataset(out) == [] and json.loads((out / "dataset.json").read_text())["complete"]


def test_a_manifest_written_by_another_part_while_this_one_looks_is_taken(tmp_path, monkeypatch):
    """Parts started at once: this one finds no manifest, another part writes it, and this one's
    listing of the folder then sees it. That folder holds this run's dataset, not other files."""
    from t2i_engine.engine import manifest as mf

    recipe = tiny_recipe(**RECIPE)
    mf.write_manifest(tmp_path, recipe, records=None, device="cpu", dtype="float32", weights=None)
    reads = []

    def not_yet_then_there(store):  # the other part's write lands between the first read and the listing
        reads.append(store)
        return None if len(reads) == 1 else dm.read_manifest(store)

    monkeypatch.setattr(mf, "read_manifest", not_yet_then_there)
    found = mf.check_resumable(tmp_path, recipe, weights=None, dtype="float32")
    assert found is not None and found["recipe_hash"] == recipe.content_hash() and len(reads) == 2
