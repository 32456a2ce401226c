"""The `t2i-engine` command line: the only place that parses arguments.

Each subcommand maps its flags onto a config and makes one call. Bad input exits with code 2 and
one line naming the input, the value and what is allowed; problems found by `verify` exit 1.
Heavy libraries (torch, diffusers) are imported only by the subcommands that run a model, so
argument and recipe errors come back at once.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import signal
import sys
import threading
import time
from pathlib import Path

from . import __version__
from .dataset.layout import MANIFEST, PREVIEW
from .dataset.manifest import read_manifest
from .dataset.preview import sheet_bytes, write_sheet
from .dataset.store import FsspecStore, open_store
from .dataset.subset import KEEP_BY, FilterRule, cut_subset
from .dataset.verify import repair
from .engine.card import describe_subset
from .engine.manifest import recipe_rows
from .engine.recipe import build_recipe, load_recipe
from .engine.status import dataset_status, format_status
from .engine.verify import load_dataset_recipe, verify_dataset
from .errors import (
    SPACE_ERRNOS,
    InputError,
    OutOfSpace,
    StoreUnavailable,
    Terminated,
    clear_stop,
    raise_if_stopped,
    request_stop,
)
from .eval.report import write_report
from .files import URL, atomic_write_bytes, atomic_write_text, check_local, check_writable
from .models.registry import ADAPTERS, MODELS, TINY_DECODERS, get_model
from .training.sources import open_set, sheet_rows


def local_path(value: str) -> Path:
    """argparse's type for path arguments: a URL (s3://...) is refused (exit 2), not taken for a
    local folder named "s3:" (files.check_local)."""
    try:
        return check_local(value, "path")
    except InputError as e:
        raise argparse.ArgumentTypeError(str(e).removeprefix("path: ")) from None


def file_location(value: str) -> str | Path:
    """argparse's type for a single file (a subset file): a local path, or a URL in a store."""
    if URL.match(value):
        parent, _, name = value.rstrip("/").rpartition("/")
        try:
            open_store(parent, "path")
        except InputError as e:
            raise argparse.ArgumentTypeError(str(e).removeprefix("path: ")) from None
        return value
    return local_path(value)


def dataset_location(value: str) -> str | Path:
    """argparse's type for a dataset's location: a local path, or a URL of a scheme a dataset can
    live at (dataset.store.STORE_SCHEMES); any other URL is refused (exit 2)."""
    try:
        store = open_store(value, "path")
    except InputError as e:
        raise argparse.ArgumentTypeError(str(e).removeprefix("path: ")) from None
    return store.url if isinstance(store, FsspecStore) else Path(value)


# generate flag -> recipe key; every recipe key has a flag.
RECIPE_FLAGS = {
    "model": "model",
    "classes": "classes",
    "prompt_regime": "prompt.regime",
    "template": "prompt.templates",
    "template_mode": "prompt.template_mode",
    "captions": "prompt.captions",
    "images_per_class": "images_per_class",
    "steps": "steps",
    "guidance": "guidance",
    "resolution": "resolution",
    "negative_prompt": "negative_prompt",
    "seed": "seed",
    "batch_size": "batch_size",
    "format": "format",
    "quality": "quality",
    "images_per_shard": "images_per_shard",
    "zero_guidance": "zero_guidance",
    "refiner": "refiner",
    "high_noise_fraction": "high_noise_fraction",
    "sampler": "sampler",
    "guidance_interval": "guidance_interval",
    "cache": "cache",
    "models": "models",
    "preset": "preset",
    "guidance_schedule": "guidance_schedule",
    "apg": "apg",
    "cads": "cads",
    "lora": "lora",
    "tcd_gamma": "tcd_gamma",
    "first_steps": "first_steps",
    "output_size": "output_size",
    "decoder": "decoder",
}
# Closed sets whose home module loads torch (the CLI answers --help and bad flags without it);
# tests/test_cli.py checks each against its home.
ATTENTION = ("sdpa", "cudnn", "flash", "efficient", "triton", "auto")  # engine.runtime.ATTENTION
RUN_PRECISIONS = ("auto", "fp32", "fp16", "bf16", "fp8")  # export.tuning.PRECISIONS
COMPILE_MODES = ("none", "default", "max-autotune")  # export.tuning.COMPILE_MODES
SPEEDS = ("auto", "plain")  # export.speed.SPEEDS
SWITCHES = ("precision", "compile", "fuse_qkv", "channels_last", "regional_compile")  # export.speed.SWITCHES
CONV = ("torch", "fp8")  # engine.runtime.CONV
NORMS = ("triton", "torch")  # benchmark.bench.NORM
BACKENDS = ("eager", "onnx", "tensorrt", "compile")  # export.build.BACKENDS
BUILT = ("onnx", "tensorrt", "compile")  # export.build.BUILT
PRECISIONS = ("fp32", "fp16", "bf16", "fp8")  # export.build.PRECISIONS
EXPORTERS = ("dynamo", "torchscript")  # export.onnx_export.EXPORTERS
PRESETS = ("paper", "small")  # training.presets.PRESETS
TRAIN_PRECISIONS = ("auto", "bf16", "fp32")  # training.presets.OVERRIDES
MEMORY_FORMATS = ("auto", "channels_last", "contiguous")  # training.presets.OVERRIDES
PROBES = ("fft-low", "fft-high", "vae")  # eval.probes.PROBES
JUDGES = ("clip", "digits")  # eval.score.JUDGES


class _UsageError(Exception):
    """A flag argparse refused; main() reports it as one line, exit 2, like any bad input."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        raise _UsageError(_usage_line(message, recipe_flags=self.prog.endswith(" generate")))


def _usage_line(message: str, recipe_flags: bool) -> str:
    """argparse's refusal as this CLI words every bad input: `FIELD: VALUE is not allowed; ALLOWED`.
    A flag of `generate` that sets a recipe key is named by the key, as the recipe's checks name it."""
    match = re.fullmatch(r"argument (\S+?)(?:/\S+)?: (.*)", message, re.S)
    if not match:
        return message
    flag, text = match.groups()
    field = RECIPE_FLAGS.get(flag.removeprefix("--").replace("-", "_"), flag) if recipe_flags else flag
    choice = re.fullmatch(r"invalid choice: (.*) \(choose from (.*)\)", text, re.S)
    if choice:
        allowed = ", ".join(c.strip().strip("'\"") for c in choice.group(2).split(","))
        return f"{field}: {choice.group(1)} is not allowed; expected one of {allowed}"
    return f"{field}: {text}"


def _device_flag(parser, default: str = "auto") -> None:
    parser.add_argument(
        "--device",
        type=str,
        default=default,
        metavar="DEVICE",
        help="auto | cpu | cuda | cuda:N (default: %(default)s)",
    )


def _int(lo: int, hi: int):
    def parse(text: str) -> int:
        if not (text.isascii() and text.isdigit()) or not lo <= int(text) <= hi:
            raise argparse.ArgumentTypeError(f"{text!r} is not allowed; expected an integer from {lo} to {hi}")
        return int(text)

    parse.__name__ = "integer"
    return parse


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not allowed; expected a number") from None


def _float_range(lo: float, hi: float, *, above: bool = False):
    """A finite number in [lo, hi], or in (lo, hi] with above=True."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = float("nan")
        if not (value > lo if above else value >= lo) or not value <= hi:
            interval = f"({lo:g}, {hi:g}]" if above else f"[{lo:g}, {hi:g}]"
            raise argparse.ArgumentTypeError(f"{text!r} is not allowed; expected a number in {interval}")
        return value

    parse.__name__ = "number"
    return parse


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="t2i-engine", description="Text-to-image models as training-data factories.")
    parser.add_argument("--version", action="version", version=f"t2i-engine {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_generate_parser(sub)

    ver = sub.add_parser("verify", help="check every shard of a dataset against its plan")
    ver.add_argument(
        "dir", type=dataset_location, metavar="DIR", help="dataset folder, or its s3://, gs:// or memory:// URL"
    )
    ver.add_argument("--repair", action="store_true", help="move bad shards to _rejected/ so `generate` remakes them")
    ver.add_argument(
        "--subset",
        type=file_location,
        metavar="FILE",
        help="check only the shards holding this subset's samples (default: none, all)",
    )

    pl = sub.add_parser(
        "plan",
        help="what a recipe would make and cost, without loading a model: counts, samples, bytes, FLOPs, GPU-hours",
        description="What `generate` would make from a recipe (the same flags), before any model loads.",
    )
    pl.add_argument("recipe", nargs="?", metavar="RECIPE", help="recipe YAML (default: none; the built-in defaults)")
    _add_recipe_flags(pl)
    est = pl.add_argument_group("estimate")
    est.add_argument("--first", type=_int(0, 10_000), default=10, metavar="K", help="samples to list (default: 10)")
    est.add_argument(
        "--gpu",
        type=str,
        metavar="CARD",
        help="price the run on this card: h100 or h200, whose matmul rates were measured (default: none, no price)",
    )
    est.add_argument(
        "--mfu",
        type=_float_range(0, 1, above=True),
        metavar="F",
        help="model-FLOP utilisation to assume (default: the committed bench record of this model on --gpu)",
    )
    est.add_argument(
        "--price", type=_float_range(0, 1e9, above=True), metavar="USD", help="price per GPU-hour (default: none)"
    )
    est.add_argument("--json", action="store_true", help="print JSON")

    st = sub.add_parser(
        "status", help="what a dataset holds and what is writing it: done, rates, ETA, locks, errors (takes no lock)"
    )
    st.add_argument(
        "dir", type=dataset_location, metavar="DIR", help="dataset folder, or its s3://, gs:// or memory:// URL"
    )
    st.add_argument("--json", action="store_true", help="print JSON (every class, every writer)")
    st.add_argument(
        "--watch",
        type=_float_range(0.5, 86400),
        metavar="SECONDS",
        help="print again every SECONDS until Ctrl-C (default: once)",
    )

    rg = sub.add_parser("regenerate", help="remake one stored sample from the dataset's recipe and seed, and compare")
    rg.add_argument(
        "dir", type=dataset_location, metavar="DIR", help="dataset folder, or its s3://, gs:// or memory:// URL"
    )
    rg.add_argument("key", metavar="KEY", help="the sample's key, e.g. goldfish_000042")
    rg.add_argument("--out", type=local_path, metavar="FILE", help="image file to write (default: ./KEY.EXT)")
    rg.add_argument(
        "--device", type=str, metavar="DEVICE", help="cpu | cuda | cuda:N (default: the type the dataset was made on)"
    )

    fin = sub.add_parser("finalize", help="complete the manifest of a folder whose parts have all finished")
    fin.add_argument(
        "dir", type=dataset_location, metavar="DIR", help="dataset folder, or its s3://, gs:// or memory:// URL"
    )

    pv = sub.add_parser("preview", help="a contact sheet of a dataset folder or an ImageFolder tree: a row per class")
    pv.add_argument(
        "dir",
        type=dataset_location,
        metavar="DIR",
        help="dataset folder or URL (finished or not), or ImageFolder tree ROOT/<class id>/<image>",
    )
    pv.add_argument(
        "--per-class", type=_int(1, 64), default=8, metavar="N", help="images per class (default: %(default)s)"
    )
    pv.add_argument(
        "--seed",
        type=_int(0, 2**63 - 1),
        default=0,
        metavar="N",
        help="which images: the same seed, the same sheet; another, others (default: %(default)s)",
    )
    pv.add_argument(
        "--out",
        type=local_path,
        metavar="FILE",
        help="JPEG to write (default: DIR/preview.jpg; with --subset, the subset file's name with .jpg)",
    )
    pv.add_argument(
        "--subset", type=file_location, metavar="FILE", help="draw only this subset's samples (default: none, all)"
    )

    mod = sub.add_parser("models", help="list the registry's models")
    mod.add_argument("--all", action="store_true", help="include test models")
    mod.add_argument("--adapters", action="store_true", help="list the registry's LoRA adapters (--lora NAME) instead")
    mod.add_argument(
        "--decoders", action="store_true", help="list the registry's tiny decoders (--decoder tiny) instead"
    )
    mod.add_argument("--json", action="store_true", help="print JSON instead of a table")

    _add_score_filter_parsers(sub)
    _add_train_eval_parsers(sub)
    _add_bench_parser(sub)
    _add_build_parser(sub)
    return parser


def _add_recipe_flags(gen) -> None:
    """generate's recipe flags, each overriding the recipe key of its name (`plan` takes them too)."""
    rec = gen.add_argument_group("recipe (each overrides the recipe key of the same name)")
    rec.add_argument(
        "--model", type=str, metavar="NAME", help="registry model, see `t2i-engine models` (default: digits)"
    )
    rec.add_argument(
        "--classes",
        type=str,
        metavar="SPEC",
        help="built-in class set, a class file (.txt/.json/.csv), a folder with wnids.txt and words.txt, or "
        "names separated by commas (cat,dog) (default: digits)",
    )
    rec.add_argument(
        "--prompt-regime",
        choices=("class-name", "template", "captions"),
        help="how prompts are made (default: template; --template or --captions alone imply theirs)",
    )
    rec.add_argument(
        "--template",
        action="append",
        type=str,
        metavar="TEXT",
        help="a prompt template holding {name}; repeat for several (default: 'a photo of a {name}')",
    )
    rec.add_argument(
        "--template-mode", choices=("cycle", "sample"), help="how templates are picked per sample (default: cycle)"
    )
    rec.add_argument(
        "--captions",
        type=str,
        metavar="FILE",
        help="captions file (.json/.csv) for the captions regime (default: none)",
    )
    # Numbers stay text here: the recipe checks them, naming the recipe key, as it does in a file.
    rec.add_argument("--images-per-class", type=str, metavar="N", help="images of each class (default: 10)")
    rec.add_argument("--steps", type=str, metavar="N", help="denoising steps (default: the model's)")
    rec.add_argument(
        "--guidance",
        type=str,
        metavar="SCALE[,SCALE...]",
        help="classifier-free guidance scale, or a list (1,2,7.5) of which each sample draws one from its seed "
        "(default: the model's)",
    )
    rec.add_argument(
        "--resolution", type=str, metavar="SIZE", help="SIZE or HEIGHTxWIDTH in pixels (default: the model's native)"
    )
    rec.add_argument("--negative-prompt", type=str, metavar="TEXT", help="the negative prompt (default: empty)")
    rec.add_argument(
        "--seed", type=str, metavar="N", help="the recipe seed every sample's seed derives from (default: 0)"
    )
    rec.add_argument(
        "--batch-size", type=str, metavar="N", help="images per model call; changes no sample (default: the model's)"
    )
    rec.add_argument("--format", choices=("jpeg", "png", "webp"), help="image format (default: jpeg)")
    rec.add_argument("--quality", type=str, metavar="Q", help="JPEG/WebP quality, 1-100 (default: 95)")
    rec.add_argument("--images-per-shard", type=str, metavar="N", help="samples per shard (default: 1000)")
    rec.add_argument(
        "--zero-guidance",
        choices=("conditional", "unconditional"),
        help="what guidance 0 means: the prompt alone (conditional, diffusers') or the empty prompt alone "
        "(unconditional, the paper's code; non-distilled models) (default: conditional)",
    )
    rec.add_argument(
        "--refiner",
        type=str,
        metavar="NAME",
        help="a second-stage model for the last steps (sdxl: sdxl-refiner; none: off) (default: none)",
    )
    rec.add_argument(
        "--high-noise-fraction",
        type=str,
        metavar="F",
        help="with --refiner: the base model's share of the steps (default: 0.8)",
    )
    rec.add_argument(
        "--sampler",
        type=str,
        metavar="NAME",
        help="the scheduler: default (the model's), ddim, pndm, euler, euler-ancestral, heun, dpm++2m, "
        "dpm++2m-karras, dpm++sde, unipc; few-step: lcm, lcm-trailing, tcd, ddim-trailing, euler-trailing "
        "(SD 1.x/2.x, SDXL) (default: default)",
    )
    rec.add_argument(
        "--tcd-gamma",
        type=str,
        metavar="GAMMA",
        help="with --sampler tcd: its stochasticity, 0 (deterministic) to 1 (default: 0.3)",
    )
    rec.add_argument(
        "--guidance-interval",
        type=str,
        metavar="LOW,HIGH",
        help="classifier-free guidance only at noise levels (EDM sigma) in [LOW, HIGH], the prompt alone "
        "elsewhere (one forward instead of two); none: every step (default: none)",
    )
    rec.add_argument(
        "--cache",
        type=str,
        metavar="NAME[:N]",
        help="features reused between steps: deepcache[:CALLS] (SD 1.x/2.x, SDXL; the deep branch recomputed "
        "every CALLS denoiser calls, default 3), first-block[:THRESHOLD] or pyramid[:N] (FLUX); "
        "none (default: none)",
    )
    rec.add_argument(
        "--models",
        type=str,
        metavar="NAME=SHARE,...",
        help="a mixture of generators instead of --model, e.g. digits=0.5,digits-dit=0.5: each model its share of "
        "every class's images (default: none)",
    )
    rec.add_argument(
        "--guidance-schedule",
        type=str,
        metavar="NAME",
        help="constant, linear or cosine: guidance ramped up over the steps with the same mean (default: constant)",
    )
    rec.add_argument(
        "--apg",
        type=str,
        metavar="on|ETA|none",
        help="adaptive projected guidance instead of plain CFG (on: eta 0, norm cap 15, momentum -0.5; a number: "
        "its eta) (default: none)",
    )
    rec.add_argument(
        "--cads",
        type=str,
        metavar="on|NOISE|none",
        help="condition-annealed sampling: noise on the prompt embedding early in sampling, annealed away (on: "
        "noise 0.25, tau 0.6-0.9; a number: its noise scale) (default: none)",
    )
    rec.add_argument(
        "--lora",
        type=str,
        metavar="PATH[:SCALE],...",
        help="LoRA adapters (local .safetensors, diffusers/peft or kohya format) fused into the model's weights "
        "at SCALE (default scale 1.0) for SD 1.x/2.x, SDXL, SD3, FLUX (default: none)",
    )
    rec.add_argument(
        "--output-size",
        type=str,
        metavar="SIZE",
        help="store the images at SIZE or HEIGHTxWIDTH (at most the generated size, same aspect ratio), resized "
        "with an antialiasing Lanczos filter before encoding (default: as generated)",
    )
    rec.add_argument(
        "--decoder",
        type=str,
        metavar="vae|tiny|PATH",
        help="what decodes the latents: the model's VAE, its latent space's tiny decoder (TAESD, TAESDXL, TAESD3, "
        "TAEF1; digits-taesd for the embedded models), or a local AutoencoderTiny folder (default: vae)",
    )
    rec.add_argument(
        "--first-steps",
        type=str,
        metavar="MODEL:K[:GUIDANCE]",
        help="a base model with its CFG (at GUIDANCE; default its own) denoises the first K steps, the model (a "
        "few-step student of one family and latent space) the rest, e.g. --model digits-lcm --first-steps digits:1 "
        "(SD 1.x/2.x, SDXL, SD3) (default: none)",
    )
    rec.add_argument(
        "--preset",
        type=str,
        metavar="NAME",
        help="named sampling settings from the embedded model's measured frontier (UNet families): fast (UniPC, 6 "
        "steps, guidance interval [0.5, 3]: 3.3x fewer denoiser FLOPs), fastest (and DeepCache: 4.5x); recipe keys "
        "and flags set beside it win (default: default)",
    )


def _add_generate_parser(sub) -> None:
    gen = sub.add_parser(
        "generate",
        help="generate a dataset into webdataset shards (resumable)",
        description="Generate the dataset a recipe describes into webdataset shards; rerun the same command "
        "to resume. Each recipe flag overrides the recipe file's key of the same name.",
    )
    gen.add_argument(
        "recipe", nargs="?", metavar="RECIPE", help="recipe YAML (default: none; the built-in defaults apply)"
    )
    _add_recipe_flags(gen)
    dev = gen.add_argument_group("devices and scale-out")
    _device_flag(dev)
    dev.add_argument(
        "--devices",
        type=str,
        metavar="LIST",
        help="one worker process per device on a shared queue: all | 0,1,3 | cpu:N (default: one process, --device)",
    )
    dev.add_argument(
        "--ray",
        nargs="?",
        const="local",
        type=str,
        metavar="ADDRESS",
        help="run the units as Ray actors (one per GPU, or per CPU): on a local Ray instance, or the cluster at "
        "ADDRESS (default: off)",
    )
    dev.add_argument(
        "--part",
        type=str,
        metavar="I/N",
        help="only shards whose number %% N == I (Slurm arrays, torchrun); auto: from "
        "SLURM_ARRAY_TASK_ID/COUNT or RANK/WORLD_SIZE; the last part to finish completes the manifest (default: all)",
    )

    run = gen.add_argument_group("runtime and speed")
    run.add_argument(
        "--attention",
        choices=ATTENTION,
        default="sdpa",
        help="sdpa (PyTorch picks its backend per call), cudnn, flash or efficient (PyTorch's SDPA pinned to that "
        "backend, CUDA), triton (our fused attention and GroupNorm + SiLU kernels, CUDA), or auto (per call "
        "shape, the backend measured fastest on this GPU architecture, cached; sdpa on a CPU); recorded in the "
        "manifest (default: %(default)s)",
    )
    _add_tuning_flags(run, speed=True)
    run.add_argument(
        "--backend",
        choices=BACKENDS,
        default="eager",
        help="eager (PyTorch), onnx (ONNX Runtime), tensorrt, or compile (torch.compile); ONNX and TensorRT files are "
        "built into the artifact cache on first use, compile's warm start by `t2i-engine build --backend compile`; "
        "recorded in the manifest (default: %(default)s)",
    )
    run.add_argument(
        "--weights",
        type=str,
        metavar="DIR",
        help="local diffusers folder of the model's weights (default: the hub cache)",
    )
    run.add_argument(
        "--refiner-weights",
        type=str,
        metavar="DIR",
        help="local diffusers folder of the refiner's weights (default: the hub cache)",
    )
    run.add_argument(
        "--encode-workers",
        type=_int(0, 64),
        metavar="N",
        help="image encoder processes, 0: a thread (default: a thread on a CPU, a process per spare core up to 8 "
        "beside a GPU)",
    )

    out = gen.add_argument_group("output")
    out.add_argument(
        "--out",
        type=dataset_location,
        required=True,
        metavar="DIR",
        help="output folder (or s3://, gs:// or memory:// URL): new, empty, or a dataset of the same recipe to resume "
        "(required)",
    )
    out.add_argument(
        "--json", action="store_true", help="print the run summary as JSON on stdout (default: a line on stderr)"
    )
    out.add_argument("--no-progress", action="store_true", help="no progress bar (default: a bar on a terminal)")


def _add_build_parser(sub) -> None:
    bu = sub.add_parser("build", help="export a model's components (ONNX, TensorRT, compiled) into the artifact cache")
    bu.add_argument(
        "model",
        nargs="?",
        type=str,
        metavar="MODEL",
        help="registry model, see `t2i-engine models` (required unless --list)",
    )
    bu.add_argument("--backend", choices=BUILT, default="onnx", help="what to build (default: %(default)s)")
    bu.add_argument(
        "--batch", type=str, metavar="MIN:OPT:MAX", help="images per call the artifacts serve (default: 1:16:32)"
    )
    bu.add_argument("--res", type=str, metavar="SIZE", help="resolution: a size or HxW (default: the model's native)")
    bu.add_argument("--precision", choices=PRECISIONS, help="default: the model's dtype on a GPU, fp32 on a CPU")
    bu.add_argument(
        "--components",
        type=str,
        default="denoiser,vae_decoder,text_encoder",
        metavar="LIST",
        help="comma-separated: denoiser, vae_decoder, text_encoder (default: all three)",
    )
    bu.add_argument(
        "--exporter",
        choices=EXPORTERS,
        default="dynamo",
        help="ONNX exporter; dynamo falls back to TorchScript (default: %(default)s)",
    )
    _device_flag(bu)
    bu.add_argument(
        "--weights",
        type=str,
        metavar="DIR",
        help="a local diffusers folder (default: the hub cache, or random weights for test models)",
    )
    bu.add_argument(
        "--decoder",
        type=str,
        metavar="vae|tiny|PATH",
        help="the decoder to export as vae_decoder, as generate's --decoder (default: vae)",
    )
    bu.add_argument(
        "--cache-dir",
        type=local_path,
        metavar="DIR",
        help="artifact cache folder (default: $T2I_ENGINE_CACHE or ~/.cache/t2i-engine/artifacts)",
    )
    bu.add_argument("--list", action="store_true", help="list the cache's artifacts instead of building")
    bu.add_argument("--json", action="store_true", help="print JSON instead of lines")


def _add_tuning_flags(group, speed: bool = False) -> None:
    """The speed switches (export.tuning), each its own flag so its gain is measured alone. With
    `speed` (generate): --speed, and each switch unset unless given (export.speed decides the rest)."""
    if speed:
        group.add_argument(
            "--speed",
            choices=SPEEDS,
            help="what the switches below are when not given: auto (on a GPU, the switches measured to win for the "
            "model's family without moving its pixels: FLUX's fused QKV and regional compile; the plain path "
            "elsewhere) or plain (all off) (default: auto; resuming a dataset, the switches its manifest records)",
        )
    unset = " (default: per --speed)" if speed else ""
    flag = argparse.BooleanOptionalAction if speed else "store_true"
    group.add_argument(
        "--precision",
        choices=RUN_PRECISIONS,
        default=None if speed else "auto",
        help="auto (bf16 on a GPU, fp32 on a CPU), fp32, fp16, bf16, or fp8 (the denoiser's Linear layers in FP8 "
        "through torchao; GPUs of compute capability 8.9+, with --compile)"
        + (" (default: auto; resuming, the dataset's)" if speed else " (default: %(default)s)"),
    )
    group.add_argument(
        "--compile",
        choices=COMPILE_MODES,
        default=None if speed else "none",
        help="torch.compile the denoiser and the VAE decode, whole graphs, one per batch size"
        + (unset or " (default: %(default)s)"),
    )
    group.add_argument(
        "--fuse-qkv", action=flag, help="run each attention's Q, K and V projections as one matmul" + unset
    )
    group.add_argument("--channels-last", action=flag, help="the UNet's and VAE's convolutions in NHWC layout" + unset)
    group.add_argument(
        "--conv",
        choices=CONV,
        default="torch",
        help="torch (cuDNN) or fp8: a UNet's inner convolutions through our FP8 implicit-GEMM kernel (GPUs of "
        "compute capability 8.9+) (default: %(default)s)",
    )
    group.add_argument(
        "--regional-compile",
        action=flag,
        help="with --compile: compile the denoiser's repeated blocks once each instead of the whole (much shorter "
        "compiles for big transformers)" + unset,
    )


def _add_bench_parser(sub) -> None:
    be = sub.add_parser(
        "bench", help="images/sec and model-FLOP utilisation of our backends against diffusers baselines, same run"
    )
    be.add_argument(
        "model",
        type=str,
        metavar="MODEL",
        help="registry model; without weights here, its real architecture with random weights",
    )
    be.add_argument(
        "--backend",
        type=str,
        default="eager",
        metavar="LIST",
        help=f"our backends, comma-separated from {', '.join(BACKENDS)}, or none (default: %(default)s)",
    )
    be.add_argument(
        "--batch",
        type=str,
        metavar="LIST",
        help="engine batch sizes, comma-separated, or auto (doubles while it pays) (default: the registry's)",
    )
    be.add_argument(
        "--baseline",
        type=str,
        default="paper,diffusers",
        metavar="LIST",
        help="paper (diffusers, fp16, batch 16) and/or diffusers (bf16, SDPA, best of --baseline-batch), or none "
        "(default: %(default)s)",
    )
    be.add_argument(
        "--baseline-batch",
        type=str,
        default="16,32",
        metavar="LIST",
        help="batch sizes tried for the diffusers bf16 baseline (default: %(default)s)",
    )
    be.add_argument("--steps", type=str, metavar="N", help="denoising steps (default: the model's)")
    be.add_argument("--res", type=str, metavar="SIZE", help="resolution: a size (default: the model's native)")
    be.add_argument("--guidance", type=str, metavar="SCALE", help="guidance scale (default: the model's)")
    be.add_argument(
        "--warmup",
        type=_int(0, 1000),
        default=1,
        metavar="N",
        help="untimed batches before each measurement (default: %(default)s)",
    )
    be.add_argument(
        "--reps",
        type=_int(1, 1000),
        default=3,
        metavar="N",
        help="timed batches: images/sec over all of them, the median batch beside it (default: %(default)s)",
    )
    _device_flag(be)
    be.add_argument(
        "--weights",
        type=str,
        metavar="DIR",
        help="a local diffusers folder (default: the hub cache if it has the model, else random weights)",
    )
    be.add_argument(
        "--attention",
        choices=ATTENTION,
        default="sdpa",
        help="the engine's attention; baselines keep diffusers' (default: %(default)s)",
    )
    be.add_argument(
        "--norm",
        choices=NORMS,
        help="the engine's GroupNorm (+ SiLU) (default: triton with --attention triton, else torch)",
    )
    _add_tuning_flags(be)
    be.add_argument(
        "--ladder",
        type=str,
        metavar="LIST",
        help="engine configurations measured one after another on one pipeline, each 'base' or '+'-joined changes "
        "to the switches given: sdpa, cudnn, flash, efficient, triton, auto, channels_last, fuse_qkv, compile, "
        "max-autotune, regional, fp8conv, fp8 (last rung only); e.g. base,cudnn,cudnn+channels_last+compile "
        "(default: the base alone)",
    )
    be.add_argument(
        "--ab",
        type=_int(0, 100),
        default=0,
        metavar="N",
        help="then N interleaved rounds of the last configuration against diffusers bf16 at its best batch "
        "(default: %(default)s)",
    )
    be.add_argument("--ab-steps", type=str, metavar="N", help="steps of the A/B rounds (default: the model's)")
    for flag, metavar, what in (
        ("--sampler", "NAME", "sampler"),
        ("--guidance-interval", "LOW,HIGH", "guidance interval"),
        ("--cache", "NAME[:N]", "feature cache"),
        ("--preset", "NAME", "named sampling settings"),
    ):
        be.add_argument(
            flag,
            type=str,
            metavar=metavar,
            help=f"the engine's {what}, as generate's (the baselines keep diffusers' defaults) (default: none)",
        )
    be.add_argument(
        "--decoder",
        type=str,
        metavar="vae|tiny|PATH",
        help="what decodes, as generate's, for every path (the baselines too: pipe.vae = AutoencoderTiny); a model "
        "on random weights gets its tiny decoder's architecture on random weights (default: vae)",
    )
    be.add_argument(
        "--output-size",
        type=str,
        metavar="SIZE",
        help="the stored size, as generate's: its resize counts in the FLOPs and bytes per image "
        "(default: as generated)",
    )
    be.add_argument(
        "--out", type=local_path, metavar="FILE", help="write the results JSON here, atomically (default: none)"
    )
    be.add_argument("--json", action="store_true", help="print the results JSON instead of the table")


def _add_score_filter_parsers(sub) -> None:
    sc = sub.add_parser(
        "score",
        help="per-sample scores beside each shard: agreement with the intended class, near-duplicates, "
        "degenerate images",
    )
    sc.add_argument("dir", type=dataset_location, metavar="DIR", help="a complete dataset folder, or its URL")
    sc.add_argument(
        "--judge",
        choices=JUDGES,
        required=True,
        help="clip: zero-shot over the dataset's class names and templates; digits: the embedded judge (required)",
    )
    sc.add_argument(
        "--weights",
        type=str,
        metavar="PATH",
        help="clip: a transformers folder or a hub id in the Hugging Face cache (default: "
        "openai/clip-vit-base-patch32); digits: a judge folder (default: the embedded one)",
    )
    sc.add_argument(
        "--dedup-threshold",
        type=_float_range(0, 1, above=True),
        metavar="COS",
        help="cosine of the judge's features at which two images of a class are near-duplicates "
        "(default: 0.95 for clip, 0.995 for digits)",
    )
    sc.add_argument(
        "--batch-size", type=_int(1, 65536), default=128, metavar="N", help="images per forward (default: %(default)s)"
    )
    _device_flag(sc)
    sc.add_argument(
        "--workers",
        type=_int(1, 256),
        default=4,
        metavar="N",
        help="threads decoding shards ahead (default: %(default)s)",
    )
    sc.add_argument("--replace", action="store_true", help="discard scores made by another judge or settings")
    sc.add_argument("--no-progress", action="store_true", help="no progress bar")

    fl = sub.add_parser("filter", help="a subset file of a scored dataset's keys, cut by a rule (shards unchanged)")
    fl.add_argument("dir", type=dataset_location, metavar="DIR", help="a scored dataset folder, or its URL")
    fl.add_argument(
        "--out", type=file_location, required=True, metavar="SUBSET.json", help="subset file to write (required)"
    )
    fl.add_argument(
        "--min-agreement",
        type=_float_range(0, 1),
        metavar="P",
        help="keep samples whose probability of the intended class is at least P (default: none)",
    )
    fl.add_argument(
        "--dedup", action="store_true", help="keep one sample of each near-duplicate group (the best by agreement)"
    )
    fl.add_argument(
        "--keep-per-class",
        type=_int(1, 10**12),
        metavar="N",
        help="keep the N best of each class by agreement, ties to the lower seed (default: none)",
    )
    fl.add_argument(
        "--keep-by",
        choices=KEEP_BY,
        default="agreement",
        help="which N --keep-per-class keeps: the best by agreement, the hardest (lowest agreement; floor it "
        "with --min-agreement), or those of lowest seed, a random draw (default: %(default)s)",
    )
    fl.add_argument("--drop-degenerate", action="store_true", help="drop near-constant and saturated images")


def _add_train_eval_parsers(sub) -> None:
    tr = sub.add_parser("train", help="train a classifier on a dataset folder or an ImageFolder tree (resumable)")
    tr.add_argument(
        "data",
        type=dataset_location,
        metavar="DATA",
        help="dataset folder or s3:// / gs:// URL from `generate` (shards streamed), or an ImageFolder tree "
        "ROOT/<class id>/<image>",
    )
    tr.add_argument(
        "--out",
        type=local_path,
        required=True,
        metavar="DIR",
        help="run folder: new or empty; an unfinished run with --resume (required)",
    )
    tr.add_argument(
        "--preset",
        choices=PRESETS,
        default="small",
        help="the recipe every other flag overrides (default: %(default)s)",
    )
    tr.add_argument(
        "--arch",
        type=str,
        metavar="NAME",
        help="small-cnn, resnet18, resnet50, vit-ti/16, convnext-t, swin-t, or any torchvision/timm name "
        "(default: the preset's)",
    )
    # Ranges are the preset table's (training.presets.OVERRIDES), checked there.
    for flag, kind, metavar in (
        ("image-size", int, "PX"),
        ("epochs", int, "N"),
        ("batch-size", int, "N"),
        ("lr", float, "LR"),
        ("warmup-epochs", float, "N"),
        ("val-fraction", float, "F"),
        ("workers", int, "N"),
        ("seed", int, "N"),
        ("shuffle-buffer", int, "N"),
    ):
        tr.add_argument(f"--{flag}", type=str, metavar=metavar, help=f"({kind.__name__}; default: the preset's)")
    tr.add_argument(
        "--shuffle-labels",
        type=str,
        metavar="SEED",
        help="control experiment: permute the labels across samples (default: off)",
    )
    tr.add_argument(
        "--precision", choices=TRAIN_PRECISIONS, help="auto: bf16 autocast on a GPU, fp32 on a CPU (default: auto)"
    )
    tr.add_argument("--memory-format", choices=MEMORY_FORMATS, help="auto: channels_last on a GPU (default: auto)")
    tr.add_argument(
        "--subset", type=file_location, metavar="FILE", help="train on this subset of DATA only (default: none, all)"
    )
    tr.add_argument("--resume", action="store_true", help="continue the run in --out from its last finished epoch")
    _device_flag(tr)
    tr.add_argument("--no-progress", action="store_true", help="no progress bar")

    ev = sub.add_parser("eval", help="top-1/top-5, per-class accuracy and confusion matrix of a run on a labelled set")
    ev.add_argument("run", type=local_path, metavar="RUN", help="a finished run folder")
    ev.add_argument(
        "--data",
        type=dataset_location,
        required=True,
        metavar="DIR",
        help="dataset folder or ImageFolder tree with the run's class ids (required)",
    )
    ev.add_argument("--out", type=local_path, metavar="FILE", help="JSON file (default: RUN/evals/<data>.json)")
    _device_flag(ev)
    ev.add_argument(
        "--batch-size", type=_int(1, 65536), default=256, metavar="N", help="images per forward (default: %(default)s)"
    )
    ev.add_argument(
        "--workers", type=_int(0, 256), default=0, metavar="N", help="loader processes (default: %(default)s)"
    )

    an = sub.add_parser(
        "analyze", help="PRDC, Vendi, diversity, FID/KID and CLIP alignment of a synthetic set against real images"
    )
    an.add_argument(
        "data",
        type=dataset_location,
        metavar="DATA",
        help="the synthetic set (dataset folder or URL, or ImageFolder tree)",
    )
    an.add_argument(
        "--real", type=local_path, required=True, metavar="DIR", help="real images of the same class ids (required)"
    )
    an.add_argument(
        "--subset", type=file_location, metavar="FILE", help="analyze this subset of DATA only (default: none, all)"
    )
    an.add_argument("--out", type=local_path, required=True, metavar="FILE", help="JSON file to write (required)")
    an.add_argument(
        "--features",
        type=str,
        default="judge",
        metavar="SPEC",
        help="judge | clip=DIR | inception=FILE | timm:NAME=FILE | torchvision:NAME=FILE (default: %(default)s)",
    )
    an.add_argument(
        "--fid-features", type=str, metavar="SPEC", help="another extractor for FID/KID (default: --features)"
    )
    an.add_argument(
        "--clip",
        type=str,
        metavar="DIR",
        help="CLIP folder (transformers layout) for CLIPScore and zero-shot alignment (default: none)",
    )
    an.add_argument(
        "--k", type=_int(1, 100), default=5, metavar="K", help="PRDC neighbourhood size (default: %(default)s)"
    )
    an.add_argument(
        "--max-per-class",
        type=_int(1, 10**9),
        metavar="N",
        help="at most this many images per class and side (default: all)",
    )
    an.add_argument(
        "--seed",
        type=_int(0, 2**63 - 1),
        default=0,
        metavar="N",
        help="the balancing sample's seed (default: %(default)s)",
    )
    _device_flag(an, "cpu")

    pr = sub.add_parser("probe", help="write a probed copy of a set: fft-low, fft-high, or a VAE round trip")
    pr.add_argument("kind", choices=PROBES, help="the probe")
    pr.add_argument("data", type=dataset_location, metavar="DATA", help="dataset folder or URL, or ImageFolder tree")
    pr.add_argument(
        "--out", type=local_path, required=True, metavar="DIR", help="new ImageFolder tree to write (required)"
    )
    pr.add_argument(
        "--cutoff", type=_float, default=0.1, metavar="F", help="FFT cutoff in cycles per pixel (default: %(default)s)"
    )
    pr.add_argument(
        "--vae-model", type=str, metavar="MODEL", help="registry model whose VAE makes the round trip (vae: required)"
    )
    pr.add_argument(
        "--weights",
        type=str,
        metavar="DIR",
        help="local diffusers folder of that model (default: the hub cache or shipped weights)",
    )
    _device_flag(pr, "cpu")

    rp = sub.add_parser("report", help="the paper-style table (md/csv/json) and plots from runs and analyses")
    rp.add_argument(
        "inputs", nargs="+", type=local_path, metavar="INPUT", help="run folders, eval JSONs, analysis JSONs"
    )
    rp.add_argument(
        "--out", type=local_path, required=True, metavar="DIR", help="folder for the table and PNGs (required)"
    )

    sw = sub.add_parser(
        "sweep",
        help="a grid of recipes, each generated, trained on, tested on real images: the frontier of FLOPs "
        "and images/s against synth->real",
    )
    sw.add_argument(
        "grid", type=local_path, metavar="GRID", help="the grid: base recipe, axes, train_seeds, preset, real"
    )
    sw.add_argument(
        "--out", type=local_path, required=True, metavar="DIR", help="work folder; an existing one resumes (required)"
    )
    sw.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default: auto)")

    de = sub.add_parser(
        "demo", help="the whole loop on the embedded digits model: generate, train, eval, analyze, report"
    )
    de.add_argument(
        "--out",
        type=local_path,
        default=Path("out/demo"),
        metavar="DIR",
        help="work folder; an existing one resumes (default: %(default)s)",
    )
    de.add_argument(
        "--guidance",
        action="append",
        type=str,
        metavar="SCALE",
        help="guidance scale of one synthetic set; repeat (default: 1, 2 and 7.5)",
    )
    de.add_argument(
        "--images-per-class",
        type=_int(1, 100_000),
        default=100,
        metavar="N",
        help="images of each digit per set (default: %(default)s)",
    )
    de.add_argument(
        "--epochs", type=_int(1, 10_000), metavar="N", help="training epochs (default: the small preset's 30)"
    )
    _device_flag(de)
    de.add_argument("--json", action="store_true", help="print the results as JSON")


def _terminate(signum, frame) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # one is enough; a second must not cut the cleanup short
    request_stop(Terminated)  # kept, should the exception below land in a finalizer and be swallowed
    raise Terminated()


def _interrupt(signum, frame) -> None:
    """Ctrl-C: Python's KeyboardInterrupt, and the stop kept as for SIGTERM (a second Ctrl-C
    still interrupts the cleanup, as a user pressing it again expects)."""
    request_stop(KeyboardInterrupt)
    raise KeyboardInterrupt()


def main(argv: list[str] | None = None) -> int:
    if threading.current_thread() is not threading.main_thread():  # handlers can be set in the main thread only
        return _main(argv)
    # SIGTERM stops a run as Ctrl-C does (exit 143). Past a file-size limit (ulimit -f) a write
    # fails with EFBIG, reported like a full disk, instead of SIGXFSZ killing the process mid-shard.
    clear_stop()
    previous = {
        signal.SIGTERM: signal.signal(signal.SIGTERM, _terminate),
        signal.SIGXFSZ: signal.signal(signal.SIGXFSZ, signal.SIG_IGN),
    }
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # not where Ctrl-C is ignored (nohup, &)
        previous[signal.SIGINT] = signal.signal(signal.SIGINT, _interrupt)
    try:
        return _main(argv)
    finally:
        clear_stop()
        for signum, handler in previous.items():
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)  # None: set outside Python


def _main(argv: list[str] | None) -> int:
    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    try:
        args = _parser().parse_args(argv)
    except _UsageError as e:
        print(f"t2i-engine: error: {e}", file=sys.stderr)
        return 2
    args.argv = argv  # the command line as given, for the records that say how a dataset was made
    try:
        code = {
            "generate": _generate,
            "verify": _verify,
            "status": _status,
            "plan": _plan,
            "regenerate": _regenerate,
            "models": _models,
            "preview": _preview,
            "finalize": _finalize,
            "score": _score,
            "filter": _filter,
            "train": _train,
            "eval": _eval,
            "analyze": _analyze,
            "probe": _probe,
            "report": _report,
            "demo": _demo,
            "sweep": _sweep,
            "bench": _bench,
            "build": _build,
        }[args.command](args)
        raise_if_stopped()  # a signal whose exception a finalizer swallowed: it still ends the run as one
        return code
    except InputError as e:
        print(f"t2i-engine {args.command}: error: {e}", file=sys.stderr)
        return 2
    except OutOfSpace as e:
        print(f"t2i-engine {args.command}: error: {e}", file=sys.stderr)  # names the folder that is full
        return 1
    except StoreUnavailable as e:
        print(f"t2i-engine {args.command}: error: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        if e.errno not in SPACE_ERRNOS:
            raise
        print(
            f"t2i-engine {args.command}: error: {e.filename or 'out'}: no space left to write it ({e.strerror}); "
            "free space and rerun the same command",
            file=sys.stderr,
        )
        return 1
    except KeyboardInterrupt as e:
        why = "terminated (SIGTERM)" if isinstance(e, Terminated) else "interrupted"
        print(
            f"t2i-engine {args.command}: {why}; committed shards are kept, rerun the same command to resume",
            file=sys.stderr,
        )
        return 143 if isinstance(e, Terminated) else 130


def _class_names(value: str | None, recipe: str | None) -> str | list[str] | None:
    """--classes: a comma-separated list of names, unless a class file or folder of that name exists
    (here or beside the recipe, where the recipe's own paths resolve). A name holding a comma goes
    in a class file."""
    if value is None or "," not in value:
        return value
    places = [Path(value).expanduser()] + ([Path(recipe).parent / value] if recipe else [])
    if any(p.exists() for p in places):
        return value
    return [name.strip() for name in value.split(",")]


def _recipe_of(args):
    """The recipe a `generate` or `plan` command line names: its file, each flag overriding."""
    overrides = {key: getattr(args, flag) for flag, key in RECIPE_FLAGS.items()}
    overrides["classes"] = _class_names(args.classes, args.recipe)
    if overrides["prompt.regime"] is None:  # --template or --captions alone imply their regime
        overrides["prompt.regime"] = "template" if args.template else "captions" if args.captions else None
    if args.recipe is not None and not Path(args.recipe).is_file():
        raise InputError("recipe", args.recipe, "expected the path of an existing YAML recipe file")
    return load_recipe(args.recipe, overrides)


def _plan(args) -> int:
    recipe = _recipe_of(args)
    if (args.mfu is not None or args.price is not None) and args.gpu is None:
        raise InputError("--gpu", None, "--mfu and --price price a run on a card: name it, e.g. --gpu h100")
    from .engine.estimate import format_plan, plan_report  # heavy: torch and diffusers, to count FLOPs

    report = plan_report(recipe, first=args.first, gpu=args.gpu, mfu=args.mfu, price=args.price)
    print(json.dumps(report, indent=1, ensure_ascii=False) if args.json else format_plan(report))
    return 0


def _generate(args) -> int:
    recipe = _recipe_of(args)
    if args.devices is not None and args.ray is not None:
        raise InputError("--ray", args.ray, "choose --devices (this machine) or --ray (a Ray cluster), not both")
    # heavy: torch (the checks above answer without it)
    from .engine.run import RunOptions, generate, parse_part
    from .engine.workers import parse_devices

    part = parse_part(args.part) if args.part is not None else None
    devices = parse_devices(args.devices) if args.devices is not None else None
    tuning, unset = _tuning(args)
    summary = generate(
        recipe,
        args.out,
        RunOptions(
            device=args.device,
            weights=args.weights,
            refiner_weights=args.refiner_weights,
            encode_workers=args.encode_workers,
            progress=not args.no_progress,
            part=part,
            devices=devices,
            ray=args.ray,
            attention=args.attention,
            backend=args.backend,
            tuning=tuning,
            unset=unset,
            speed=args.speed,
            conv=args.conv,
            command=shlex.join(["t2i-engine", *args.argv]),
        ),
    )
    s = summary
    if args.json:
        print(json.dumps(s, indent=1))
    if not s["shards_written"]:  # a rerun of a finished dataset (or part): a Slurm requeue, a cautious user
        what = f"part {s['part']}" if s["part"] else "the whole dataset"
        print(
            f"nothing left to do: {what} is already written ({s['shards_skipped']} shards) -> {s['out']}",
            file=sys.stderr,
        )
    elif not args.json:
        print(
            f"{s['images']} images in {s['wall_seconds']:.1f} s ({s['images_per_second']:.2f} images/s) on "
            f"{s['device']}; "
            f"{s['shards_written']} shards written, {s['shards_skipped']} already done -> {s['out']}",
            file=sys.stderr,
        )
        print(
            "time per stage (s): " + ", ".join(f"{k} {v:.2f}" for k, v in s["stage_seconds"].items()), file=sys.stderr
        )
        if s["speed"]["source"] == "defaults":  # a run made faster than asked for says so, and on what it rests
            on = ", ".join(f"{k} {v}" if not isinstance(v, bool) else k for k, v in s["speed"]["defaults"].items())
            print(
                f"speed: {on} (this family's measured defaults on a GPU: {'; '.join(s['speed']['measured'])}); "
                "--speed plain for the plain path",
                file=sys.stderr,
            )
        if isinstance(s["denoiser_flops_per_image"], float):
            print(f"denoiser FLOPs per image as run: {s['denoiser_flops_per_image'] / 1e9:.3f} G", file=sys.stderr)
        if isinstance(s["flops_per_stored_image"], float):
            print(
                f"FLOPs per stored image: {s['flops_per_stored_image'] / 1e9:.3f} G (decoder {s['decoder']} "
                f"{s['decoder_flops_per_image'] / 1e9:.4f} G, resize {s['resize_flops_per_image'] / 1e9:.4f} G)",
                file=sys.stderr,
            )
        if s["bytes_per_image"] is not None:
            h, w = s["stored_size"]
            print(
                f"bytes per image: {s['bytes_per_image']:,.0f} ({h}x{w} images), {s['shard_bytes_per_image']:,.0f} "
                "in the shards (tar headers, labels and JSON included)",
                file=sys.stderr,
            )
    if s["part"] and not args.json:
        print(
            f"part {s['part']}: "
            + ("the dataset is complete" if s["dataset_complete"] else "other parts are still to finish"),
            file=sys.stderr,
        )
    return 0


def _status(args) -> int:
    while True:
        state = dataset_status(args.dir)
        print(json.dumps(state, indent=1) if args.json else format_status(state), flush=True)
        if args.watch is None:
            return 0
        time.sleep(args.watch)
        if not args.json:
            print(flush=True)


def _regenerate(args) -> int:
    out = args.out  # checked before the model loads
    if out is not None:
        check_writable(out, "--out", kind="file")
    from .engine.regenerate import regenerate  # heavy: torch

    made = regenerate(args.dir, args.key, args.device)
    out = out or Path(f"{args.key}.{made['extension']}")
    check_writable(out, "--out", kind="file")
    atomic_write_bytes(out, made["image"])
    print(json.dumps(made["sample"], indent=1, sort_keys=True, ensure_ascii=False))
    where = f"shard {made['shard']} of {args.dir}"
    if made["identical"] is None:
        print(f"{args.key} -> {out}; its shard is not in the dataset yet: nothing to compare with", file=sys.stderr)
        return 0
    if made["identical"]:
        print(f"{args.key} -> {out}: identical to the stored image ({where})", file=sys.stderr)
        return 0
    print(
        f"{args.key} -> {out}: differs from the stored image ({where}); identity holds on the device type, backend "
        f"and thread count it was made with ({made['device']} here)",
        file=sys.stderr,
    )
    return 1


def _verify(args) -> int:
    problems = verify_dataset(args.dir, subset=args.subset)
    for p in problems:
        print(p)
    if not problems:
        which = f"sample of the subset {args.subset}" if args.subset else "planned sample"
        print(f"ok: every {which} of {args.dir} is present exactly once with its planned label", file=sys.stderr)
        return 0
    if args.repair:
        moved = repair(args.dir, problems)
        print(
            f"moved {len(moved)} files of bad shards aside; rerun `t2i-engine generate` with the same recipe to "
            "remake them",
            file=sys.stderr,
        )
    elif not (read_manifest(args.dir) or {}).get("complete"):
        print(
            f"{len(problems)} problems: {args.dir} is unfinished; rerun the `t2i-engine generate` command that made "
            "it (in its dataset.json) to complete it",
            file=sys.stderr,
        )
    else:
        print(
            f"{len(problems)} problems; `t2i-engine verify --repair` moves the bad shards aside, and rerunning the "
            "`t2i-engine generate` command that made the dataset remakes them",
            file=sys.stderr,
        )
    return 1


def _finalize(args) -> int:
    from .engine.run import finalize  # heavy: torch

    r = finalize(args.dir)
    done = "nothing left to do: already complete" if r["already_complete"] else "complete"
    print(f"{done}: {r['num_samples']} samples in {r['shards']} shards -> {r['out']}", file=sys.stderr)
    return 0


def _preview(args) -> int:
    if args.subset is not None:
        return _preview_subset(args)
    if isinstance(args.dir, str):  # a dataset at a URL: its sheet beside it, or at --out
        _, recipe = load_dataset_recipe(args.dir)
        rows = recipe_rows(args.dir, recipe, args.per_class, args.seed)
        if args.out:
            check_writable(args.out, "--out", kind="file")
            write_sheet(rows, args.out)
        else:
            open_store(args.dir).write_bytes(PREVIEW, sheet_bytes(rows))
        print(
            f"{len(rows)} classes x up to {args.per_class} images -> {args.out or args.dir + '/' + PREVIEW}",
            file=sys.stderr,
        )
        return 0
    out = args.out or args.dir / PREVIEW
    check_writable(out, "--out", kind="file")
    if (args.dir / MANIFEST).is_file():
        _, recipe = load_dataset_recipe(args.dir)
        rows = recipe_rows(args.dir, recipe, args.per_class, args.seed)
    else:
        rows = sheet_rows(open_set(args.dir, "dir"), args.per_class, args.seed)
    write_sheet(rows, out)
    print(f"{len(rows)} classes x up to {args.per_class} images -> {out}", file=sys.stderr)
    return 0


def _preview_subset(args) -> int:
    if args.out is None and isinstance(args.subset, str):
        raise InputError("--out", None, "expected a local JPEG file to write when the subset file is at a URL")
    out = args.out or Path(args.subset).with_suffix(".jpg")
    check_writable(out, "--out", kind="file")
    rows = sheet_rows(open_set(args.dir, "dir", args.subset), args.per_class, args.seed)
    write_sheet(rows, out)
    print(f"{len(rows)} classes x up to {args.per_class} images of the subset -> {out}", file=sys.stderr)
    return 0


def _score(args) -> int:
    from .eval.score import score  # heavy: torch

    r = score(
        args.dir,
        judge=args.judge,
        weights=args.weights,
        device=args.device,
        batch_size=args.batch_size,
        dedup_threshold=args.dedup_threshold,
        replace=args.replace,
        progress=not args.no_progress,
        workers=args.workers,
    )
    print(json.dumps(r, indent=1))
    done = "nothing left to score" if not r["scored"] else f"scored {r['scored']} shards"
    print(
        f"{done} ({r['skipped']} already scored): {r['images']} images; mean agreement {r['agreement_mean']}, "
        f"{r['duplicates']} near-duplicates, {r['degenerate']} degenerate -> {r['manifest']}",
        file=sys.stderr,
    )
    return 0


def _filter(args) -> int:
    rule = FilterRule(args.min_agreement, args.dedup, args.keep_per_class, args.drop_degenerate, args.keep_by).check()
    r = cut_subset(args.dir, rule, args.out)
    describe_subset(args.dir, r)
    print(json.dumps(r, indent=1))
    print(
        f"kept {r['count']} of {r['dataset_count']} samples (mean agreement {r['agreement_mean']['dataset']} -> "
        f"{r['agreement_mean']['subset']}) -> {args.out}; the shards are unchanged",
        file=sys.stderr,
    )
    return 0


def _weights_note(m) -> str:
    if m.student_of:
        return f"(shipped; a few-step student of {m.student_of})"
    return "(shipped in the package)" if m.bundled else "(built from config)"


def _models(args) -> int:
    if args.adapters:
        if args.json:
            print(json.dumps([a.__dict__ for a in ADAPTERS.values()], indent=1))
            return 0
        print(f"{'name':<22}{'for':<7}{'sampler':<16}{'steps':>6}{'cfg':>6}  hub id / file")
        for a in ADAPTERS.values():
            print(f"{a.name:<22}{a.base:<7}{a.sampler:<16}{a.steps:>6}{a.guidance:>6}  {a.hub_id} / {a.filename}")
        return 0
    if args.decoders:
        if args.json:
            print(json.dumps([d.__dict__ for d in TINY_DECODERS.values()], indent=1))
            return 0
        print(f"{'name':<14}{'latents':<12}{'channels':>9}  {'weights':<44}models")
        for d in TINY_DECODERS.values():
            users = ", ".join(m.name for m in MODELS.values() if m.latent_space == d.latent_space and m.standalone)
            print(
                f"{d.name:<14}{d.latent_space:<12}{d.latent_channels:>9}  "
                f"{d.hub_id or '(shipped in the package)':<44}{users}"
            )
        return 0
    rows = [m for m in MODELS.values() if args.all or not m.test_model]
    if args.json:
        print(json.dumps([m.__dict__ for m in rows], indent=1))
        return 0
    print(f"{'name':<18}{'pipeline':<34}{'dtype':<10}{'res':>6}{'steps':>6}{'cfg':>6}  hub id")
    for m in rows:
        print(
            f"{m.name:<18}{m.pipeline:<34}{m.dtype:<10}{m.resolution[0]:>6}{m.steps:>6}{m.guidance:>6}  "
            f"{m.hub_id or _weights_note(m)}"
        )
    return 0


def _train(args) -> int:
    # heavy: torch
    from .training.loop import RUN, train
    from .training.presets import OVERRIDES, resolve_config

    config = resolve_config(args.preset, {key: getattr(args, key) for key in OVERRIDES})
    finished = args.resume and (Path(args.out) / RUN).is_file()  # train checks it is this run's data and settings
    result = train(
        config,
        args.data,
        args.out,
        resume=args.resume,
        device=args.device,
        progress=not args.no_progress,
        subset=args.subset,
    )
    if finished:
        print(f"nothing left to do: {args.out} is a finished run", file=sys.stderr)
    best = result["best"]
    val = (
        f"val loss {best['val_loss']:.4f}, val acc {best['val_acc']:.4f}"
        if result["val_images"]
        else "no validation split"
    )
    print(
        f"chosen epoch {result['best_epoch']}/{config.epochs}: {val} "
        f"({result['train_images']} training, {result['val_images']} validation images) -> {args.out}",
        file=sys.stderr,
    )
    return 0


def _eval(args) -> int:
    from .eval.classify import evaluate_run  # heavy: torch

    r = evaluate_run(
        args.run, args.data, out=args.out, device=args.device, batch_size=args.batch_size, workers=args.workers
    )
    top5 = f", top-5 {r['top5']:.4f}" if r["top5"] is not None else ""
    print(f"{r['direction']}: top-1 {r['top1']:.4f}{top5} on {r['images']} images -> {r['path']}")
    return 0


def _analyze(args) -> int:
    from .eval.analyze import analyze  # heavy: torch

    r = analyze(
        args.data,
        args.real,
        args.out,
        features=args.features,
        fid_features=args.fid_features,
        clip=args.clip,
        k=args.k,
        max_per_class=args.max_per_class,
        seed=args.seed,
        device=args.device,
        subset=args.subset,
    )
    print(json.dumps(r["overall"], indent=1))
    return 0


def _probe(args) -> int:
    from .eval.probes import write_probe  # heavy: torch

    done_before = Path(args.out).exists()  # write_probe refuses it unless it is this probe's output
    out = write_probe(
        args.data,
        args.out,
        args.kind,
        cutoff=args.cutoff,
        vae_model=args.vae_model,
        weights=args.weights,
        device=args.device,
    )
    print(f"nothing left to do: {out} already holds this probe" if done_before else f"wrote {out}", file=sys.stderr)
    return 0


def _report(args) -> int:
    r = write_report(args.inputs, args.out)
    print(r["table"])
    print(f"wrote {', '.join(r['files'])} to {args.out}", file=sys.stderr)
    return 0


def _demo(args) -> int:
    from .demo import check_guidances, run_demo  # heavy: torch

    guidances = check_guidances(args.guidance)
    r = run_demo(
        args.out, guidances=guidances, images_per_class=args.images_per_class, epochs=args.epochs, device=args.device
    )
    print(json.dumps(r, indent=1) if args.json else r["table"])
    return 0


def _sweep(args) -> int:
    from .eval.sweep import run_sweep  # heavy: torch

    result = run_sweep(args.grid, args.out, device=args.device, log=lambda line: print(line, file=sys.stderr))
    if not result["cells_run"]:
        print(
            f"nothing left to do: all {result['cells']} cells were finished; frontier written again", file=sys.stderr
        )
    print((args.out / "frontier.md").read_text(), end="")
    print(f"frontier: {', '.join(str(args.out / f) for f in result['files'])}", file=sys.stderr)
    return 0


def _tuning(args):
    """generate's switches as given, and the names of those not given (export.speed decides them)."""
    from .export.tuning import Tuning  # heavy: torch

    given = {k: getattr(args, k) for k in SWITCHES if getattr(args, k) is not None}
    return Tuning(**given), frozenset(SWITCHES) - set(given)


def _bench(args) -> int:
    # heavy: torch
    from .benchmark import bench
    from .benchmark.report import table

    opts = bench.BenchOptions(
        model=args.model,
        backends=bench.parse_list(args.backend, "--backend", BACKENDS),
        batches=bench.parse_batches(args.batch) if args.batch else (),
        steps=args.steps,
        resolution=args.res,
        guidance=args.guidance,
        baselines=bench.parse_list(args.baseline, "--baseline", bench.BASELINES),
        baseline_batches=bench.parse_batches(args.baseline_batch, "--baseline-batch", allow_auto=False),
        warmup=args.warmup,
        reps=args.reps,
        device=args.device,
        weights=args.weights,
        attention=args.attention,
        norm=args.norm,
        precision=args.precision,
        compile=args.compile,
        fuse_qkv=args.fuse_qkv,
        channels_last=args.channels_last,
        regional_compile=args.regional_compile,
        conv=args.conv,
        ladder=bench.parse_ladder(args.ladder) if args.ladder else (),
        ab=args.ab,
        ab_steps=args.ab_steps,
        sampler=args.sampler,
        guidance_interval=args.guidance_interval,
        cache=args.cache,
        preset=args.preset,
        decoder=args.decoder,
        output_size=args.output_size,
    )
    bench.check_options(opts)
    if args.out:
        if not args.out.parent.is_dir():
            raise InputError("--out", str(args.out), "expected a file path for the results JSON in an existing folder")
        check_writable(args.out, "--out", kind="file")

    def checkpoint(partial: dict) -> None:  # a time limit still leaves the runs that ended
        atomic_write_text(args.out, json.dumps({**partial, "partial": True}, indent=1) + "\n")

    result = bench.run_bench(
        opts, log=lambda line: print(line, file=sys.stderr), checkpoint=checkpoint if args.out else None
    )
    print(
        json.dumps(result, indent=1) if args.json else table(result), flush=True
    )  # first: a failed write loses nothing
    if args.out:
        atomic_write_text(args.out, json.dumps(result, indent=1) + "\n")
    return 0


def _build(args) -> int:
    from .export.cache import ArtifactCache  # heavy: torch

    if args.list:
        entries = ArtifactCache(args.cache_dir).entries()
        if args.json:
            print(json.dumps(entries, indent=1))
        for e in [] if args.json else entries:
            profile = e.get("profile", {})
            print(
                f"{e['name']}  {profile.get('height')}x{profile.get('width')}  batch {profile.get('batch', 'any')}  "
                f"{e.get('arch')}  {e['bytes'] / 2**20:.1f} MiB  built {e.get('built_at')}  {e['path']}"
            )
        return 0
    if not args.model:
        raise InputError("model", None, "expected a registry model to build (see `t2i-engine models`), or --list")
    # heavy: torch
    from .engine.runtime import build_artifacts
    from .export.build import BuildOptions
    from .export.specs import parse_profile

    spec = get_model(args.model)
    kinds = ("denoiser", "vae_decoder", "text_encoder")
    components = tuple(c.strip() for c in args.components.split(","))
    if not components or any(c not in kinds for c in components):
        raise InputError("--components", args.components, f"expected a comma-separated list of {', '.join(kinds)}")
    if args.cache_dir:
        check_writable(args.cache_dir, "--cache-dir")
    decoder = build_recipe({"model": spec.name, "decoder": args.decoder}, base_dir=Path.cwd()).decoder
    opts = BuildOptions(
        model=spec.name,
        backend=args.backend,
        profile=parse_profile(args.batch, args.res, spec.resolution, spec.resolution_multiple),
        precision=args.precision,
        device=args.device,
        weights=args.weights,
        exporter=args.exporter,
        components=components,
        cache_dir=str(args.cache_dir) if args.cache_dir else None,
        decoder=decoder,
    )
    results = build_artifacts(opts, log_line=lambda line: print(line, file=sys.stderr))
    if args.json:
        print(json.dumps(results, indent=1))
    else:
        for r in results:
            if r["path"] is None:
                print(f"{r['component']}: stays in PyTorch ({r['why']})")
            else:
                print(f"{r['component']}: {'built' if r['built'] else 'already built'} -> {r['path']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
