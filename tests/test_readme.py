"""The README's commands, as a new user types them: every `t2i-engine` line of its code blocks
parses with the CLI's own parser (each form of a synopsis line: its optional [...] parts left out
and put in, each a|b alternative), every subcommand appears in one, and those that can run on a
CPU run, in order, in one folder, with tiny models in place of hub models and sizes cut to the
smallest that runs. So the README cannot drift from the CLI."""

from __future__ import annotations

import itertools
import re
import shlex

import pytest

from t2i_engine.cli import _parser
from tests.conftest import ROOT

README = ROOT / "README.md"
# Hub models the README names, and the tiny random-weight model of the same family run in their place.
TINY = {"sd15": "tiny-sd", "sdxl": "tiny-sdxl", "flux-schnell": "tiny-flux-schnell"}
# Lines that cannot run here, and why (the first matching piece of the line decides).
CANNOT_RUN = {
    "--ray HEAD": "needs a Ray cluster at that address",
    "fp8": "FP8 needs a GPU of compute capability 8.9 or more",
    "demo": "minutes on a CPU (tests/test_demo.py runs the same loop small)",
    "sweep": "hours on a CPU (tests/eval/test_sweep.py runs a 2x2 grid)",
}
# Lines that run only under --heavy (make test-heavy): seconds to a minute each.
HEAVY = ("t2i-engine bench ", "t2i-engine build ", "--compile")


def readme_commands() -> list[str]:
    """Every `t2i-engine` line of the README's code blocks, continuations joined, comments dropped."""
    commands = []
    for block in re.findall(r"```\w*\n(.*?)```", README.read_text(), re.S):
        lines = iter(block.splitlines())
        for line in lines:
            while line.rstrip().endswith("\\"):
                line = line.rstrip()[:-1] + " " + next(lines).strip()
            line = line.split(" #")[0].strip()
            if line.startswith("t2i-engine "):
                commands.append(" ".join(line.split()))
    return commands


def forms(command: str) -> list[list[str]]:
    """The argument lists a (synopsis) line stands for: optional groups all out, then all in; each
    a|b alternative in turn; `RUN...` as one RUN."""
    without = re.sub(r"\s*\[[^\]]*\]", "", command)
    with_all = re.sub(r"\[([^\]]*)\]", r"\1", command)
    out = []
    for text in dict.fromkeys([without, with_all]):
        words = [w.removesuffix("...") for w in shlex.split(text)[1:]]
        choices = [w.split("|") if "|" in w else [w] for w in words]
        out += [list(c) for c in itertools.product(*choices)]
    return out


COMMANDS = readme_commands()


def test_the_readme_has_commands_for_every_subcommand():
    subcommands = set(_parser()._subparsers._group_actions[0].choices)
    used = {c.split()[1] for c in COMMANDS}
    assert len(COMMANDS) > 20 and subcommands <= used, f"no README command for {sorted(subcommands - used)}"


@pytest.mark.parametrize("command", COMMANDS)
def test_every_readme_command_parses(command):
    for argv in forms(command):
        _parser().parse_args(argv)  # a flag or value the CLI does not take raises here, naming it


RECIPE = "model: tiny-sd\nimages_per_class: 2\nguidance: 2\nsteps: 2\nresolution: 32\n"  # = the next line, cut


def runnable(argv: list[str]) -> list[str]:
    """A README command as it can run here: tiny models for hub models, /shared paths made local,
    `--devices all` two CPU workers, and generate and bench at the smallest sizes that run."""
    argv = [TINY.get(a, a) for a in argv]
    argv = [a.removeprefix("/") if a.startswith("/shared/") else a for a in argv]
    argv = ["cpu:2" if a == "all" and argv[i - 1] == "--devices" else a for i, a in enumerate(argv)]
    for i, a in enumerate(argv):
        if a == "--images-per-class":
            argv[i + 1] = "2"
    if argv[0] == "generate" and "--model" in argv:  # a recipe file brings its own sizes
        argv += ["--steps", "2", "--resolution", "32"]
    if argv[0] == "bench":
        argv += ["--steps", "1", "--res", "32", "--reps", "1", "--warmup", "0"]
    return argv


def _run_readme(cli, tmp_path, monkeypatch, heavy: bool):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "0")  # --part auto, as one task of an array of one
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "1")
    monkeypatch.setenv("T2I_ENGINE_CACHE", str(tmp_path / "cache"))
    (tmp_path / "recipe.yaml").write_text(RECIPE)
    ran, skipped = [], []
    for command in COMMANDS:
        why = next((why for piece, why in CANNOT_RUN.items() if piece in command), None)
        if why is None and any(p.isupper() for p in re.findall(r"\b[A-Z][A-Z.]+\b", command)):
            why = "a synopsis: its placeholders name no real file"
        if why is None and any(piece in command for piece in HEAVY) != heavy:
            why = "runs in the other README test"
        if why is not None:
            skipped.append((command, why))
            continue
        for argv in forms(command):
            argv = runnable(argv)
            code, _, err = cli(*argv)
            assert code == 0, f"`t2i-engine {shlex.join(argv)}` (README: `{command}`) exited {code}: {err}"
            ran.append(argv)
    print("ran:", *[shlex.join(a) for a in ran], "skipped:", *skipped, sep="\n  ")
    return ran


def test_the_readme_commands_that_run_on_a_cpu_run(cli, tmp_path, monkeypatch):
    ran = _run_readme(cli, tmp_path, monkeypatch, heavy=False)
    assert {a[0] for a in ran} >= {"generate", "verify", "preview", "models", "finalize"}


@pytest.mark.heavy
def test_the_readme_bench_build_and_compile_commands_run_on_a_cpu(cli, tmp_path, monkeypatch):
    ran = _run_readme(cli, tmp_path, monkeypatch, heavy=True)
    assert {a[0] for a in ran} == {"bench", "build", "generate"}
