"""The command line: bad input fails early and clearly; a killed run resumes into a whole dataset."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import CLI, subprocess_env

FAST = ["--model", "tiny-sd", "--steps", "2", "--resolution", "32", "--images-per-class", "2", "--no-progress"]

# (what is wrong, recipe file text or None, extra flags, field the error must name)
BAD_INPUTS = [
    ("unknown model", None, ["--model", "sd99"], "model"),
    ("bad YAML", "model: [tiny-sd\n", [], "recipe"),
    ("YAML that builds objects", "!!python/object/apply:os.system ['echo pwned']\n", [], "recipe"),
    ("YAML that is not a mapping", "- tiny-sd\n- digits\n", [], "recipe"),
    ("misspelt key", "imagse_per_class: 3\n", [], "imagse_per_class"),
    ("negative count", None, ["--images-per-class", "-3"], "images_per_class"),
    ("number that is not a number", "quality: high\n", [], "quality"),
    ("zero batch size", None, ["--batch-size", "0"], "batch_size"),
    ("empty class list", "classes: []\n", [], "classes"),
    ("duplicate class names", "classes: [cat, dog, Cat]\n", [], "classes[2].name"),
    ("class name that climbs out", "classes: ['../../x']\n", [], "classes[0].name"),
    ("class id that is a path", "classes: [{id: '../x', name: x}]\n", [], "classes[0].id"),
    ("unknown format", None, ["--format", "gif"], "format"),
    ("quality out of range", None, ["--quality", "101"], "quality"),
    ("missing class file", None, ["--classes", "no-such-classes.txt"], "classes"),
    ("resolution off the grid", None, ["--resolution", "100"], "resolution"),
    ("zero steps", None, ["--steps", "0"], "steps"),
    ("negative guidance", None, ["--guidance", "-1"], "guidance"),
    ("template without {name}", None, ["--template", "a photo"], "prompt.templates[0]"),
    ("unknown prompt regime", None, ["--prompt-regime", "poetry"], "prompt.regime"),
    ("captions regime without a file", "prompt: captions\n", [], "prompt.captions"),
    ("negative seed", None, ["--seed", "-1"], "seed"),
    ("seed over 64 bits", f"seed: {2**64}\n", [], "seed"),
    ("zero images per shard", None, ["--images-per-shard", "0"], "images_per_shard"),
    ("unknown device", None, ["--device", "tpu"], "device"),
    ("missing weights folder", None, ["--weights", "no-such-folder"], "weights"),
    ("bad encoder count", None, ["--encode-workers", "lots"], "--encode-workers"),
    ("superscript digit", None, ["--seed", "\u00b2"], "seed"),
    ("lone surrogate in a class name", 'classes: ["\\ud800x", "two"]\n', [], "classes[0].name"),
    ("non-string recipe key", "1: x\nfoo: y\n", [], "1"),
    ("prompt of the wrong type with a prompt flag", "prompt: 5\n", ["--template", "a {name}"], "prompt"),
]


@pytest.mark.parametrize("what,recipe_text,flags,field", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_input_exits_2_naming_the_field_and_writes_nothing(
    cli, tmp_path, monkeypatch, what, recipe_text, flags, field
):
    monkeypatch.chdir(tmp_path)
    args = ["generate"]
    if recipe_text is not None:
        (tmp_path / "recipe.yaml").write_text(recipe_text)
        args.append("recipe.yaml")
    code, out, err = cli(*args, "--out", "out", *FAST[:-1], *flags)
    assert code == 2, (what, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and f"error: {field}:" in lines[0], lines
    assert not (tmp_path / "out").exists()
    assert not (tmp_path / "pwned").exists()


def test_dangling_link_as_output_is_refused(cli, tmp_path):
    (tmp_path / "link").symlink_to(tmp_path / "nowhere")
    code, _, err = cli("generate", "--out", tmp_path / "link", *FAST)
    assert code == 2 and "error: out:" in err and not (tmp_path / "nowhere").exists()


def test_missing_recipe_file_and_unwritable_output(cli, tmp_path):
    code, _, err = cli("generate", tmp_path / "nope.yaml", "--out", tmp_path / "o")
    assert code == 2 and "error: recipe:" in err
    (tmp_path / "file").write_text("x")
    code, _, err = cli("generate", "--out", tmp_path / "file" / "sub", *FAST)
    assert code == 2 and "error: out:" in err and (tmp_path / "file").read_text() == "x"


def test_hub_model_without_weights_names_the_id_and_how_to_fetch(cli, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hub"))
    code, _, err = cli("generate", "--out", tmp_path / "o", "--model", "sd15", "--device", "cpu", "--no-progress")
    assert code == 2 and "stable-diffusion-v1-5/stable-diffusion-v1-5" in err and "hf download" in err
    assert not (tmp_path / "o").exists()


def test_a_weights_folder_of_pickles_is_refused_in_one_line_saying_only_safetensors_load(capfd, tmp_path):
    from t2i_engine.cli import main
    from t2i_engine.models.tiny import build_tiny_sd

    build_tiny_sd().save_pretrained(tmp_path / "bin", safe_serialization=False)  # .bin weights, as older repos hold
    capfd.readouterr()
    code = main(["generate", "--out", str(tmp_path / "o"), *FAST, "--weights", str(tmp_path / "bin")])
    out, err = capfd.readouterr()  # file descriptors: diffusers' own logging line would show here too
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and out == "", err
    assert "only safetensors" in lines[0] and "unet/diffusion_pytorch_model.bin" in lines[0]
    assert not (tmp_path / "o").exists()


def test_classes_takes_a_comma_list_unless_a_file_of_that_name_exists(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    flags = [*FAST, "--images-per-class", "1", "--json"]
    code, out, err = cli("generate", "--out", "a", "--classes", "goldfish, tabby cat", *flags)
    manifest = json.loads((tmp_path / "a" / "dataset.json").read_text())
    assert code == 0 and [c["name"] for c in manifest["recipe"]["classes"]] == ["goldfish", "tabby cat"], err
    Path("cat,dog.txt").write_text("cat, with a comma\nfox\n")  # a file of that name wins; a name may hold a comma
    code, out, err = cli("generate", "--out", "b", "--classes", "cat,dog.txt", *flags)
    manifest = json.loads((tmp_path / "b" / "dataset.json").read_text())
    assert code == 0 and [c["name"] for c in manifest["recipe"]["classes"]] == ["cat, with a comma", "fox"], err
    code, _, err = cli("generate", "--out", "c", "--classes", "cat,,dog", *flags)
    assert code == 2 and "classes" in err and not Path("c").exists(), err


def test_models_lists_the_registry(cli):
    code, out, _ = cli("models")
    assert code == 0 and "sd35-large-turbo" in out and "tiny-sd" not in out
    code, out, _ = cli("models", "--all", "--json")
    assert "tiny-sd" in {m["name"] for m in json.loads(out)}


def test_recipe_less_generate_and_json_summary(cli, tmp_path):
    code, out, _ = cli("generate", "--out", tmp_path / "o", *FAST, "--json")
    summary = json.loads(out)
    assert code == 0 and summary["images"] == 20 and summary["num_samples"] == 20
    assert set(summary["stage_seconds"]) >= {"text_encoding", "denoising", "decoding", "writer_wait"}
    assert cli("verify", tmp_path / "o")[0] == 0


@pytest.mark.alone
def test_sigkill_mid_write_then_resume_gives_the_whole_dataset(cli, tmp_path):
    out = tmp_path / "o"
    args = [
        "generate",
        "--out",
        str(out),
        *FAST,
        "--images-per-class",
        "12",
        "--images-per-shard",
        "3",
        "--batch-size",
        "1",
        "--device",
        "cpu",
    ]
    env = subprocess_env()
    # Only the killed run needs a process of its own; the resume and verify run here.
    proc = subprocess.Popen([*CLI, *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # Kill while a shard is being written (its .tar.tmp exists), or failing that once a few are in.
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
        if list(out.glob("*.tar.tmp")) or len(list(out.glob("*.tar"))) >= 8:
            break
        time.sleep(0.002)
    assert proc.poll() is None, "the run ended before it could be killed"
    mid_write = bool(list(out.glob("*.tar.tmp")))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (out / "dataset.json").exists()  # written before the first shard
    committed = len(list(out.glob("*.tar")))
    assert 0 <= committed < 40
    # Whatever is visible under a final name is whole.
    for tar in out.glob("*.tar"):
        stats = json.loads(tar.with_name(tar.stem + ".stats.json").read_text())
        assert stats["bytes"] == tar.stat().st_size
    code, stdout, err = cli(*args, "--json")
    assert code == 0, err
    summary = json.loads(stdout)
    assert summary["shards_skipped"] == committed and summary["shards_written"] == 40 - committed
    assert not list(out.glob("*.tmp"))
    code, stdout, _ = cli("verify", out)
    assert code == 0, stdout
    print("killed mid-write:", mid_write)


def test_generate_with_only_out_makes_the_default_digits_dataset(cli, tmp_path):
    code, out, err = cli("generate", "--out", tmp_path / "d", "--no-progress", "--json")
    assert "Loading" not in err and "it/s" not in err  # diffusers' and transformers' loading bars stay quiet
    summary = json.loads(out)
    assert code == 0 and summary["model"] == "digits" and summary["images"] == 100
    manifest = json.loads((tmp_path / "d" / "dataset.json").read_text())
    assert [c["name"] for c in manifest["recipe"]["classes"]][:2] == ["zero", "one"]
    assert manifest["recipe"]["batch_size"] == 100 and manifest["recipe"]["steps"] == 15
    assert cli("verify", tmp_path / "d")[0] == 0


def test_generate_help_groups_its_flags_and_states_their_defaults(capsys):
    from t2i_engine.cli import _parser, main

    with pytest.raises(SystemExit) as done:
        main(["generate", "--help"])
    text = capsys.readouterr().out
    assert done.value.code == 0
    groups = ["recipe (each overrides", "devices and scale-out:", "runtime and speed:", "output:"]
    assert all(g in text for g in groups) and [text.index(g) for g in groups] == sorted(text.index(g) for g in groups)
    assert "--steps N" in text and "--backend {eager,onnx,tensorrt,compile}" in text and "(default: auto)" in text
    # Every flag of every command says its default (or that it is required), switches aside.
    commands = next(a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction)).choices
    for name, sub in commands.items():
        for action in sub._actions:
            if action.option_strings and action.nargs != 0:
                assert "default" in action.help or "required" in action.help, (name, action.option_strings)


def test_version(capsys):
    from t2i_engine import __version__
    from t2i_engine.cli import main

    with pytest.raises(SystemExit):
        main(["--version"])
    assert capsys.readouterr().out.strip() == f"t2i-engine {__version__}"


def test_a_typed_flag_is_refused_in_one_line_naming_it(cli, tmp_path):
    code, _, err = cli("eval", tmp_path, "--data", tmp_path, "--batch-size", "lots")
    assert (
        code == 2
        and err.strip()
        == "t2i-engine: error: --batch-size: 'lots' is not allowed; expected an integer from 1 to 65536"
    )
    code, _, err = cli("train", tmp_path, "--out", tmp_path / "r", "--precision", "fp8")
    assert (
        code == 2
        and len(err.strip().splitlines()) == 1
        and "--precision: 'fp8' is not allowed; expected one of auto" in err
    )


def test_the_clis_closed_sets_are_the_librarys():
    # The CLI states them itself so that --help and bad flags answer without importing torch.
    from t2i_engine import cli
    from t2i_engine.benchmark.bench import NORM
    from t2i_engine.engine.runtime import ATTENTION, CONV
    from t2i_engine.eval.probes import PROBES
    from t2i_engine.eval.score import JUDGES
    from t2i_engine.export.build import BACKENDS, BUILT, PRECISIONS
    from t2i_engine.export.onnx_export import EXPORTERS
    from t2i_engine.export.speed import SPEEDS, SWITCHES
    from t2i_engine.export.tuning import COMPILE_MODES, Tuning
    from t2i_engine.export.tuning import PRECISIONS as RUN_PRECISIONS
    from t2i_engine.training.presets import OVERRIDES, PRESETS

    assert (cli.ATTENTION, cli.NORMS, cli.PROBES, cli.EXPORTERS) == (ATTENTION, NORM, PROBES, EXPORTERS)
    assert cli.JUDGES == JUDGES
    assert (cli.BACKENDS, cli.BUILT, cli.PRECISIONS) == (BACKENDS, BUILT, tuple(PRECISIONS))
    assert (cli.RUN_PRECISIONS, cli.COMPILE_MODES, cli.CONV) == (RUN_PRECISIONS, COMPILE_MODES, CONV)
    assert cli.PRESETS == tuple(PRESETS)
    assert (cli.SPEEDS, cli.SWITCHES) == (SPEEDS, SWITCHES) and SWITCHES == tuple(Tuning.__dataclass_fields__)
    assert (cli.TRAIN_PRECISIONS, cli.MEMORY_FORMATS) == (OVERRIDES["precision"][0], OVERRIDES["memory_format"][0])


UNWRITABLE = "/proc/t2i-engine-test"  # no process may create files in /proc, root included


@pytest.mark.parametrize(
    "args, field",
    [
        (["generate", "--out", f"{UNWRITABLE}/out", *FAST], "out"),
        (["train", "{data}", "--out", f"{UNWRITABLE}/run"], "--out"),
        (["eval", "{data}", "--data", "{data}", "--out", f"{UNWRITABLE}/e.json"], "--out"),
        (["analyze", "{data}", "--real", "{data}", "--out", f"{UNWRITABLE}/a.json"], "--out"),
        (["probe", "fft-low", "{data}", "--out", f"{UNWRITABLE}/p"], "--out"),
        (["report", "{data}", "--out", f"{UNWRITABLE}/r"], "--out"),
        (["preview", "{data}", "--out", f"{UNWRITABLE}/p.jpg"], "--out"),
        (["build", "tiny-sd", "--cache-dir", UNWRITABLE], "--cache-dir"),
        (["bench", "tiny-sd", "--out", "/proc/bench.json"], "--out"),
        (["demo", "--out", f"{UNWRITABLE}/demo"], "--out"),
    ],
    ids=lambda x: x[0] if isinstance(x, list) else None,
)
def test_an_output_that_cannot_be_written_is_refused_in_one_line_before_any_work(cli, tmp_path, args, field):
    (tmp_path / "data" / "a").mkdir(parents=True)  # nothing is read before the output is checked
    code, out, err = cli(*[a.format(data=tmp_path / "data") for a in args])
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and f"error: {field}: " in lines[0] and "writable" in lines[0], err


@pytest.mark.alone
def test_a_disk_that_fills_mid_shard_stops_cleanly_and_a_rerun_with_space_completes_the_same_bytes(cli, tmp_path):
    import resource

    from t2i_engine.engine.verify import verify_dataset
    from tests.engine.test_generate import shard_hashes

    out = tmp_path / "out"
    args = ["generate", "--out", str(out), *FAST, "--images-per-shard", "4", "--device", "cpu"]  # 20 samples, 5 shards
    env = subprocess_env(PYTHONDONTWRITEBYTECODE="1")

    def small_disk():  # every file this process writes stops at 16 KiB: the manifest fits, a 20 KiB shard does not
        resource.setrlimit(resource.RLIMIT_FSIZE, (16384, 16384))

    full = subprocess.run([*CLI, *args], env=env, preexec_fn=small_disk, capture_output=True, text=True, timeout=300)
    lines = full.stderr.strip().splitlines()
    assert full.returncode == 1 and len(lines) == 1, full.stderr
    assert str(out) in lines[0] and "no space" in lines[0] and "the 5 still to write about" in lines[0]
    assert (out / "dataset.json").exists() and not list(out.glob("*.tar")) and not list(out.glob("*.jsonl"))
    assert not list(out.glob("*.stats.json")) and not list(out.glob("*.tar.tmp"))

    code, _, err = cli(*args)  # with space: resumes and completes
    assert code == 0, err
    assert verify_dataset(out) == []
    reference = tmp_path / "reference"
    assert cli(*[str(reference) if a == str(out) else a for a in args])[0] == 0  # an uninterrupted run
    assert shard_hashes(out) == shard_hashes(reference)


@pytest.mark.alone
@pytest.mark.slow
@pytest.mark.parametrize(
    "scale_out", [[], ["--part", "0/2"], ["--devices", "cpu:2"]], ids=["one-process", "a-part", "two-workers"]
)
def test_sigterm_stops_a_run_within_seconds_with_only_committed_shards_and_exit_143(cli, tmp_path, scale_out):
    from t2i_engine.engine.verify import verify_dataset

    # The CLI runs in this process, so SIGTERM is sent to it; outside main() a recorder takes the
    # signal instead of pytest's default (ending the test session), should the run end first.
    late = []
    previous = signal.signal(signal.SIGTERM, lambda *_: late.append(True))
    out, sent = tmp_path / "out", []
    args = ["generate", "--out", out, *FAST, "--images-per-class", "4", "--images-per-shard", "3", "--batch-size", "1"]

    def terminate_once_a_shard_is_in():
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and not list(out.glob("*.tar")):
            time.sleep(0.01)
        sent.append(time.monotonic())
        os.kill(os.getpid(), signal.SIGTERM)

    sender = threading.Thread(target=terminate_once_a_shard_is_in, daemon=True)
    try:
        sender.start()
        code, _, err = cli(*args, *scale_out)
        stopped = time.monotonic()
        sender.join()  # it has sent the signal: one sent after the run ended lands in the recorder
        time.sleep(0)  # (Python runs a pending handler at the next bytecode of the main thread)
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert not late, "the signal should land mid-run"
    # "within seconds" (README): 0.03 s measured here with two workers; the bound leaves room for a slow machine
    assert code == 143 and "terminated (SIGTERM)" in err and stopped - sent[0] < 30, (code, err)
    tars = sorted(out.glob("*.tar"))
    assert 1 <= len(tars) < 14 and not json.loads((out / "dataset.json").read_text())["complete"]
    for tar in tars:  # every shard under a final name is whole
        assert json.loads(tar.with_name(tar.stem + ".stats.json").read_text())["bytes"] == tar.stat().st_size

    for rest in (["--part", "0/2"], ["--part", "1/2"]) if scale_out[:1] == ["--part"] else ([],):
        assert cli(*args, *rest)[0] == 0  # the rerun (in this one process) completes it
    assert json.loads((out / "dataset.json").read_text())["complete"] and verify_dataset(out) == []


@pytest.mark.alone
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # the swallowed exception
@pytest.mark.parametrize(
    "signum, code, says, scale_out",
    [
        (signal.SIGTERM, 143, "terminated (SIGTERM)", []),
        (signal.SIGINT, 130, "interrupted", []),
        pytest.param(signal.SIGINT, 130, "interrupted", ["--devices", "cpu:2"], marks=pytest.mark.heavy),
    ],
    ids=["sigterm", "ctrl-c", "ctrl-c-two-workers"],
)
def test_a_stop_whose_exception_a_finalizer_swallows_still_stops_the_run(cli, tmp_path, signum, code, says, scale_out):
    """The handler's exception raised inside a garbage-collector callback (as in a tqdm bar's
    __del__) is swallowed by Python; the stop it asked for is kept and ends the run anyway, in
    one process and in the --devices parent alike (the heavy case: two workers, under --heavy)."""
    import gc

    sent = []

    def signal_inside_a_collection(phase, info):
        if phase == "start" and not sent and threading.current_thread() is threading.main_thread():
            if (tmp_path / "out" / "dataset.json").is_file():  # the run has begun
                sent.append(True)
                os.kill(os.getpid(), signum)  # the handler runs here, inside the callback

    args = ["generate", "--out", tmp_path / "out", *FAST, "--images-per-class", "4", "--images-per-shard", "3",
            "--batch-size", "1", *(scale_out or ["--encode-workers", "0"])]  # fmt: skip
    gc.callbacks.append(signal_inside_a_collection)
    threshold = gc.get_threshold()
    if scale_out:  # the --devices parent mostly waits, allocating next to nothing: collect often
        gc.set_threshold(10)
    # outside main(), nothing to end the session: SIGTERM ignored; Ctrl-C Python's own handler,
    # which main() replaces (it keeps a shell's SIG_IGN, as under nohup)
    previous = signal.signal(signum, signal.SIG_IGN if signum == signal.SIGTERM else signal.default_int_handler)
    try:
        got, _, err = cli(*args)
    finally:
        gc.callbacks.remove(signal_inside_a_collection)
        gc.set_threshold(*threshold)
        signal.signal(signum, previous)
    assert sent and got == code and says in err, (sent, got, err)
    assert not json.loads((tmp_path / "out" / "dataset.json").read_text())["complete"]
    assert len(list((tmp_path / "out").glob("*.tar"))) < 14  # stopped, not run to its end


@pytest.mark.parametrize(
    "args",
    [
        ["generate", "--out", "az://container/ds", "--images-per-class", "1"],
        ["verify", "az://container/ds"],
        ["preview", "hdfs://host/ds"],
        ["sweep", "grid.yaml", "--out", "s3://bucket/sweep"],
    ],
)
def test_an_object_store_url_is_refused_not_taken_for_a_local_folder(cli, tmp_path, monkeypatch, args):
    """A URL of a scheme a dataset cannot live at yet (all but memory://, s3:// and gs://) exits 2 naming
    it, before any work; pathlib alone would have made a local folder named "s3:" and exited 0."""
    monkeypatch.chdir(tmp_path)
    code, _, err = cli(*args)
    assert code == 2 and "://" in err and "copy it to the store" in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "url, says",
    [
        ("s3://", "no bucket after s3://"),  # fsspec would take "s3:" for a local folder
        ("s3:///ds", "no bucket after s3://"),
        ("s3://Bad_Bucket!/ds", "'Bad_Bucket!' is not one"),
        ("s3://bucket/a//ds", "no empty, '.' or '..' parts"),
        ("s3://bucket/../ds", "no empty, '.' or '..' parts"),
        ("memory://", "no name after memory://"),
        ("s3:/bucket/ds", "write s3://bucket/ds (or ./s3:/bucket/ds"),  # one slash lost
        ("gs://", "no bucket after gs://"),
        ("gs://Bad!/ds", "'Bad!' is not one"),
        ("gs://" + "a" * 64 + "/ds", "is not one"),  # 63 at most without dots
    ],
)
def test_a_malformed_store_url_is_refused_before_anything_is_sent_or_written(cli, tmp_path, monkeypatch, url, says):
    monkeypatch.chdir(tmp_path)
    code, _, err = cli("generate", "--out", url, "--images-per-class", "1")
    assert code == 2 and f"--out: {url!r} is not allowed" in err and says in err, err
    assert len(err.strip().splitlines()) == 1 and list(tmp_path.iterdir()) == []


def test_the_python_api_refuses_an_unsupported_store_url_too(tmp_path, monkeypatch):
    from t2i_engine.engine.recipe import build_recipe
    from t2i_engine.engine.run import RunOptions, generate
    from t2i_engine.errors import InputError

    monkeypatch.chdir(tmp_path)
    with pytest.raises(InputError, match="out: 'az://container/ds'"):
        generate(build_recipe({"images_per_class": 1}), "az://container/ds", RunOptions(device="cpu", progress=False))
    assert list(tmp_path.iterdir()) == []
