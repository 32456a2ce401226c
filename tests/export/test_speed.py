"""What a run's unset speed switches become (export.speed): the family's measured defaults on a
GPU, the plain path elsewhere or when asked, a resumed dataset's own switches; a given switch
always wins, and a default never makes a run refused."""

from __future__ import annotations

import itertools
import json
from dataclasses import replace

import pytest
import torch

from t2i_engine.errors import InputError
from t2i_engine.export.speed import CUDA_DEFAULTS, SWITCHES, as_flags, decide
from t2i_engine.export.tuning import Tuning, check_tuning

CPU = torch.device("cpu")
HOPPER = (9, 0)  # the compute capability FLUX's defaults were measured on (an H200)
ALL = frozenset(SWITCHES)
PLAIN = Tuning()
FAST_FLUX = Tuning(compile="default", fuse_qkv=True, regional_compile=True)


def _decide(
    tuning=PLAIN, unset=ALL, speed=None, families=("flux",), capability=HOPPER, stored=None, measured_path=True, **kw
):
    return decide(
        tuning,
        unset,
        speed,
        families=list(families),
        capability=capability,
        stored=stored,
        measured_path=measured_path,
        **kw,
    )


def test_flux_on_a_gpu_gets_its_measured_switches_and_says_on_what_they_rest():
    d = _decide()
    assert d.tuning == FAST_FLUX and d.source == "defaults"
    assert d.defaults == {"compile": "default", "fuse_qkv": True, "regional_compile": True}
    assert d.measured == (CUDA_DEFAULTS["flux"].measured,) and "PSNR" in d.measured[0] and "H200" in d.measured[0]
    assert as_flags(d.defaults) == ["--compile", "default", "--fuse-qkv", "--regional-compile"]
    assert _decide(capability=(9, 1)).tuning == FAST_FLUX  # the same architecture


@pytest.mark.parametrize(
    "case, why",
    [
        (dict(capability=None), ""),  # no GPU here: a CPU, or a Ray driver that sees none
        (dict(families=("sd",)), ""),  # nothing measured to win for SD1.5 yet
        (dict(families=("sdxl",)), ""),
        (dict(speed="plain"), ""),
        (dict(families=("flux", "sd")), ""),  # a mixture of families: no set was measured for it
        (dict(capability=(8, 0)), "capability 9.x, this GPU is 8.0"),  # another architecture: not measured
        (dict(capability=(10, 0)), "this GPU is 10.0"),
        (dict(measured_path=False), "--backend eager"),  # another backend, attention, conv or a cache
        (dict(compiler=False), "C compiler"),  # torch.compile could not run here
        # a switch given that differs from the measured set: the rest of the set was not measured without it
        (dict(tuning=Tuning(precision="fp16"), unset=ALL - {"precision"}), "differ from the measured set"),
        (dict(tuning=Tuning(compile="none"), unset=ALL - {"compile"}), "differ"),
        (dict(tuning=Tuning(compile="max-autotune"), unset=ALL - {"compile"}), "differ"),
        (dict(tuning=Tuning(fuse_qkv=False), unset=ALL - {"fuse_qkv"}), "differ"),
        (dict(tuning=Tuning(channels_last=True), unset=ALL - {"channels_last"}), "differ"),
    ],
)
def test_the_plain_path_where_nothing_measured_applies(case, why):
    given = case.get("tuning", PLAIN)
    d = _decide(**case)
    assert d.source == "plain" and d.defaults == {} and why in d.why and bool(d.why) == bool(why)
    assert d.tuning == given  # the switches given, the rest off


def test_a_mixture_of_one_family_keeps_its_defaults():
    assert _decide(families=("flux", "flux")).tuning == FAST_FLUX


def test_switches_given_that_agree_with_the_measured_set_keep_it():
    for given in (dict(fuse_qkv=True), dict(precision="bf16"), dict(precision="auto"), dict(channels_last=False)):
        d = _decide(tuning=Tuning(**given), unset=ALL - set(given))
        assert d.tuning == replace(FAST_FLUX, **given) and d.source == "defaults"
    assert _decide(tuning=FAST_FLUX, unset=frozenset(), families=("sd",)).tuning == FAST_FLUX  # taken whole
    assert _decide(tuning=FAST_FLUX, unset=frozenset()).source == "given"


def test_no_default_makes_a_run_refused_that_its_given_switches_allow():
    """Every way of giving some switches and leaving the others, under each speed: where the
    switches given (the rest off) pass the checks, the decided ones do too, and keep what was given."""
    values = {
        "precision": ("auto", "bf16", "fp16"),
        "compile": ("none", "default", "max-autotune"),
        "fuse_qkv": (False, True),
        "channels_last": (False, True),
        "regional_compile": (False, True),
    }
    tried = 0
    for given_names in itertools.chain.from_iterable(itertools.combinations(SWITCHES, n) for n in range(6)):
        for combo in itertools.product(*(values[k] for k in given_names)):
            given = Tuning(**dict(zip(given_names, combo)))
            try:
                check_tuning(given, CPU)
            except InputError:
                continue  # refused for what was given, not for a default
            for speed in (None, "auto", "plain"):
                d = _decide(tuning=given, unset=ALL - set(given_names), speed=speed)
                check_tuning(d.tuning, CPU)
                assert all(getattr(d.tuning, k) == getattr(given, k) for k in given_names)
                tried += 1
    assert tried > 500


def test_a_resumed_dataset_keeps_the_switches_its_manifest_records():
    stored = Tuning(precision="bf16").record(CPU)  # what a plain bf16 dataset's manifest holds
    d = _decide(stored=stored)  # begun under the old defaults (plain): finished as it was begun
    assert d.tuning == Tuning(precision="bf16") and d.source == "dataset"
    # a switch given is kept (and checked against the manifest later: refused if it differs)
    d = _decide(stored=stored, tuning=Tuning(fuse_qkv=True), unset=ALL - {"fuse_qkv"})
    assert d.tuning == Tuning(precision="bf16", fuse_qkv=True)
    assert _decide(stored=stored, speed="auto").tuning == FAST_FLUX  # asked for: the defaults (then refused, below)
    assert _decide(stored=stored, capability=None).tuning == Tuning(precision="bf16")  # on any device


def test_an_unknown_speed_is_refused_naming_it():
    with pytest.raises(InputError, match="speed.*fast.*auto, plain"):
        _decide(speed="fast")


def _digits(cli, out, *flags):
    return cli(
        "generate", "--model", "digits", "--images-per-class", "1", "--steps", "2", "--device", "cpu", "--out", out,
        "--no-progress", *flags,
    )  # fmt: skip


def test_resuming_without_switches_keeps_the_datasets_and_plain_on_it_is_refused(cli, tmp_path):
    """The command line end to end on a CPU (the defaults are the plain path here): a dataset made
    with a switch resumes without it given; --speed plain asks for other pixels and is refused
    before anything runs, with the folder as it was."""
    out = tmp_path / "d"
    code, _, err = _digits(cli, out, "--fuse-qkv", "--images-per-shard", "4")
    assert code == 0, err
    manifest = json.loads((out / "dataset.json").read_text())
    shards = sorted(p.name for p in out.glob("*.tar"))
    (out / shards[-1]).unlink()  # an interrupted run: the last shard never written
    code, _, err = _digits(cli, out, "--images-per-shard", "4", "--json")
    assert code == 0, err
    resumed = json.loads((out / "dataset.json").read_text())
    assert resumed["tuning"] == manifest["tuning"]
    # the command kept pins the switches the dataset gave it (its precision on this CPU: fp32)
    assert resumed["command"].endswith("--json --precision fp32 --fuse-qkv") and "--fuse-qkv" in manifest["command"]
    assert manifest["tuning"]["fuse_qkv"] is True and sorted(p.name for p in out.glob("*.tar")) == shards
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    code, out_text, err = _digits(cli, out, "--images-per-shard", "4", "--speed", "plain")
    assert code == 2 and "fuse_qkv True" in err and err.count("\n") == 1 and out_text == ""
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before


def test_a_bad_speed_is_refused_before_anything_runs(cli, tmp_path):
    code, out, err = _digits(cli, tmp_path / "o", "--speed", "fast")
    assert code == 2 and "--speed" in err and "plain" in err and not (tmp_path / "o").exists()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_flux_on_a_gpu_runs_with_its_defaults_and_records_them(tmp_path):
    """On the architecture they were measured on, FLUX's defaults run through generate and the
    manifest records them, its command pinning them; on another GPU, the plain path says why."""
    from t2i_engine.engine.recipe import build_recipe
    from t2i_engine.engine.run import RunOptions, generate

    recipe = build_recipe({"model": "tiny-flux-schnell", "images_per_class": 2, "batch_size": 2, "format": "png"})
    command = "t2i-engine generate --model tiny-flux-schnell"
    options = RunOptions(device="cuda", progress=False, unset=ALL, command=command)
    summary = generate(recipe, tmp_path / "d", options)
    manifest = json.loads((tmp_path / "d" / "dataset.json").read_text())
    if torch.cuda.get_device_capability()[0] != CUDA_DEFAULTS["flux"].capability_major:
        assert summary["speed"]["source"] == "plain" and "capability" in summary["speed"]["why_plain"]
        return
    assert summary["speed"]["source"] == "defaults"
    assert manifest["tuning"] == FAST_FLUX.record(torch.device("cuda"))  # precision auto: bf16 on CUDA
    assert manifest["command"] == command + " --compile default --fuse-qkv --regional-compile"
