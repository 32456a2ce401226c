"""The `t2i-engine` command line: the only place that parses arguments.

Each subcommand maps its flags onto a config and makes one call. Bad input exits with code 2 and
one line naming the input, the value and what is allowed; problems found by `verify` exit 1.
Heavy libraries (torch, diffusers) are imported only by the subcommands that run a model, so
argument and recipe errors come back at once.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .engine.errors import InputError

# generate flag -> recipe key; every recipe key has a flag.
RECIPE_FLAGS = {
    "model": "model", "classes": "classes", "prompt_regime": "prompt.regime", "template": "prompt.templates",
    "template_mode": "prompt.template_mode", "captions": "prompt.captions", "images_per_class": "images_per_class",
    "steps": "steps", "guidance": "guidance", "resolution": "resolution", "negative_prompt": "negative_prompt",
    "seed": "seed", "batch_size": "batch_size", "format": "format", "quality": "quality",
    "images_per_shard": "images_per_shard",
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="t2i-engine", description="Text-to-image models as training-data factories.")
    sub = parser.add_subparsers(dest="command", required=True)

    gen = sub.add_parser("generate", help="generate a dataset into webdataset shards (resumable)")
    gen.add_argument("recipe", nargs="?", help="recipe YAML; without it the built-in defaults apply")
    gen.add_argument("--out", required=True, help="output folder (new, empty, or a dataset of the same recipe to resume)")
    gen.add_argument("--model", help="registry model (see `t2i-engine models`)")
    gen.add_argument("--classes", help="built-in class set, a class file, or a wnids.txt+words.txt folder")
    gen.add_argument("--prompt-regime", help="class-name | template | captions")
    gen.add_argument("--template", action="append", help="a prompt template holding {name}; repeat for several")
    gen.add_argument("--template-mode", help="cycle | sample")
    gen.add_argument("--captions", help="captions file (.json/.csv) for the captions regime")
    gen.add_argument("--images-per-class")
    gen.add_argument("--steps")
    gen.add_argument("--guidance")
    gen.add_argument("--resolution", help="SIZE or HEIGHTxWIDTH in pixels")
    gen.add_argument("--negative-prompt")
    gen.add_argument("--seed")
    gen.add_argument("--batch-size")
    gen.add_argument("--format", help="jpeg | png | webp")
    gen.add_argument("--quality", help="JPEG/WebP quality, 1-100 (default 95)")
    gen.add_argument("--images-per-shard")
    gen.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    gen.add_argument("--weights", help="local diffusers folder holding the model's weights")
    gen.add_argument("--encode-workers", help="image encoder processes (0: a thread)")
    gen.add_argument("--json", action="store_true", help="print the run summary as JSON on stdout")
    gen.add_argument("--no-progress", action="store_true", help="no progress bar")

    ver = sub.add_parser("verify", help="check every shard of a dataset against its plan")
    ver.add_argument("dir", help="dataset folder")
    ver.add_argument("--repair", action="store_true", help="move bad shards to _rejected/ so `generate` remakes them")

    mod = sub.add_parser("models", help="list the registry's models")
    mod.add_argument("--all", action="store_true", help="include test models")
    mod.add_argument("--json", action="store_true")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return {"generate": _generate, "verify": _verify, "models": _models}[args.command](args)
    except InputError as e:
        print(f"t2i-engine {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"t2i-engine {args.command}: interrupted; committed shards are kept, rerun the same command to resume", file=sys.stderr)
        return 130


def _generate(args) -> int:
    from .engine.recipe import load_recipe

    overrides = {key: getattr(args, flag) for flag, key in RECIPE_FLAGS.items()}
    if overrides["prompt.regime"] is None:  # --template or --captions alone imply their regime
        overrides["prompt.regime"] = "template" if args.template else "captions" if args.captions else None
    if args.recipe is not None and not Path(args.recipe).is_file():
        raise InputError("recipe", args.recipe, "expected the path of an existing YAML recipe file")
    recipe = load_recipe(args.recipe, overrides)
    workers = None
    if args.encode_workers is not None:
        if not (args.encode_workers.isascii() and args.encode_workers.isdigit()) or int(args.encode_workers) > 64:
            raise InputError("--encode-workers", args.encode_workers, "expected an integer from 0 to 64")
        workers = int(args.encode_workers)

    from .engine.run import RunOptions, generate

    summary = generate(recipe, Path(args.out), RunOptions(device=args.device, weights=args.weights,
                                                          encode_workers=workers, progress=not args.no_progress))
    if args.json:
        print(json.dumps(summary, indent=1))
    else:
        s = summary
        print(f"{s['images']} images in {s['wall_seconds']:.1f} s ({s['images_per_second']:.2f} images/s) on {s['device']}; "
              f"{s['shards_written']} shards written, {s['shards_skipped']} already done -> {s['out']}", file=sys.stderr)
        print("time per stage (s): " + ", ".join(f"{k} {v:.2f}" for k, v in s["stage_seconds"].items()), file=sys.stderr)
    return 0


def _verify(args) -> int:
    from .engine.verify import repair, verify_dataset

    out = Path(args.dir)
    problems = verify_dataset(out)
    for p in problems:
        print(p)
    if not problems:
        print(f"ok: every planned sample of {out} is present exactly once with its planned label", file=sys.stderr)
        return 0
    if args.repair:
        moved = repair(out, problems)
        print(f"moved {len(moved)} files of bad shards aside; rerun `t2i-engine generate` with the same recipe to remake them", file=sys.stderr)
    return 1


def _models(args) -> int:
    from .engine.registry import MODELS

    rows = [m for m in MODELS.values() if args.all or not m.test_model]
    if args.json:
        print(json.dumps([m.__dict__ for m in rows], indent=1))
        return 0
    print(f"{'name':<18}{'pipeline':<34}{'dtype':<10}{'res':>6}{'steps':>6}{'cfg':>6}  hub id")
    for m in rows:
        print(f"{m.name:<18}{m.pipeline:<34}{m.dtype:<10}{m.resolution[0]:>6}{m.steps:>6}{m.guidance:>6}  {m.hub_id or '(built from config)'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
