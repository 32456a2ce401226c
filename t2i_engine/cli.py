"""The `t2i-engine` command line: the only place that parses arguments.

Each subcommand maps its flags onto a config and makes one call. Bad input exits with code 2 and
one line naming the input, the value and what is allowed; problems found by `verify` exit 1.
Heavy libraries (torch, diffusers) are imported only by the subcommands that run a model, so
argument and recipe errors come back at once.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from .engine.errors import InputError

# generate flag -> recipe key; every recipe key has a flag.
RECIPE_FLAGS = {
    "model": "model", "classes": "classes", "prompt_regime": "prompt.regime", "template": "prompt.templates",
    "template_mode": "prompt.template_mode", "captions": "prompt.captions", "images_per_class": "images_per_class",
    "steps": "steps", "guidance": "guidance", "resolution": "resolution", "negative_prompt": "negative_prompt",
    "seed": "seed", "batch_size": "batch_size", "format": "format", "quality": "quality",
    "images_per_shard": "images_per_shard", "zero_guidance": "zero_guidance", "refiner": "refiner",
    "high_noise_fraction": "high_noise_fraction",
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
    gen.add_argument("--zero-guidance", help="what guidance 0 means: conditional (diffusers: the prompt alone) or unconditional "
                     "(the paper's code: the empty prompt alone, on non-distilled models)")
    gen.add_argument("--refiner", help="a second-stage model for the last steps (sdxl: sdxl-refiner; none: off)")
    gen.add_argument("--high-noise-fraction", help="with --refiner: the base model's share of the steps (default 0.8)")
    gen.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    gen.add_argument("--devices", help="one worker process per device on a shared queue: all | 0,1,3 | cpu:N")
    gen.add_argument("--ray", nargs="?", const="local", metavar="ADDRESS",
                     help="run the units as Ray actors (one per GPU, or per CPU): on a local Ray instance, or the cluster at ADDRESS")
    gen.add_argument("--weights", help="local diffusers folder holding the model's weights")
    gen.add_argument("--refiner-weights", help="local diffusers folder holding the refiner's weights")
    gen.add_argument("--encode-workers", help="image encoder processes (0: a thread)")
    gen.add_argument("--part", help="I/N: only shards whose number %% N == I (for Slurm arrays, torchrun); auto: from "
                     "SLURM_ARRAY_TASK_ID/COUNT or RANK/WORLD_SIZE. The last part to finish completes the manifest")
    gen.add_argument("--json", action="store_true", help="print the run summary as JSON on stdout")
    gen.add_argument("--no-progress", action="store_true", help="no progress bar")
    gen.add_argument("--attention", default="sdpa", help="sdpa (PyTorch) or triton (our fused attention and GroupNorm + SiLU "
                     "kernels, CUDA); recorded in the manifest")
    gen.add_argument("--backend", default="eager", help="eager (PyTorch), onnx (ONNX Runtime), tensorrt, or compile (torch.compile); "
                     "ONNX and TensorRT files are built into the artifact cache on first use, compile's warm start by "
                     "`t2i-engine build --backend compile`; recorded in the manifest")

    ver = sub.add_parser("verify", help="check every shard of a dataset against its plan")
    ver.add_argument("dir", help="dataset folder")
    ver.add_argument("--repair", action="store_true", help="move bad shards to _rejected/ so `generate` remakes them")

    fin = sub.add_parser("finalize", help="complete the manifest of a folder whose parts have all finished")
    fin.add_argument("dir", help="dataset folder")

    mod = sub.add_parser("models", help="list the registry's models")
    mod.add_argument("--all", action="store_true", help="include test models")
    mod.add_argument("--json", action="store_true")

    _add_train_eval_parsers(sub)
    _add_bench_parser(sub)
    _add_build_parser(sub)
    return parser


def _add_build_parser(sub) -> None:
    bu = sub.add_parser("build", help="export a model's components (ONNX, TensorRT, compiled) into the artifact cache")
    bu.add_argument("model", nargs="?", help="registry model (see `t2i-engine models`)")
    bu.add_argument("--backend", default="onnx", help="onnx | tensorrt | compile")
    bu.add_argument("--batch", help="MIN:OPT:MAX images per call the artifacts serve (default 1:16:32)")
    bu.add_argument("--res", help="resolution: a size or HxW (default: the model's native)")
    bu.add_argument("--precision", help="fp32 | fp16 | bf16 | fp8 (default: the model's dtype on a GPU, fp32 on a CPU)")
    bu.add_argument("--components", default="denoiser,vae_decoder,text_encoder", help="which: denoiser, vae_decoder, text_encoder")
    bu.add_argument("--exporter", default="dynamo", help="ONNX exporter: dynamo (TorchScript if it fails) or torchscript")
    bu.add_argument("--device", default="auto")
    bu.add_argument("--weights", help="a local diffusers folder (default: the hub cache, or random weights for test models)")
    bu.add_argument("--cache-dir", help="artifact cache folder (default: $T2I_ENGINE_CACHE or ~/.cache/t2i-engine/artifacts)")
    bu.add_argument("--list", action="store_true", help="list the cache's artifacts instead of building")
    bu.add_argument("--json", action="store_true")


def _add_bench_parser(sub) -> None:
    be = sub.add_parser("bench", help="images/sec and model-FLOP utilisation of our backends against diffusers baselines, same run")
    be.add_argument("model", help="registry model; without weights here, its real architecture with random weights")
    be.add_argument("--backend", default="eager", help="our backends, comma-separated (eager), or none")
    be.add_argument("--batch", help="engine batch sizes, comma-separated, or auto (doubles while it pays); default: the registry's")
    be.add_argument("--baseline", default="paper,diffusers",
                    help="paper (diffusers, fp16, batch 16) and/or diffusers (bf16, SDPA, best of --baseline-batch), or none")
    be.add_argument("--baseline-batch", default="16,32", help="batch sizes tried for the diffusers bf16 baseline")
    be.add_argument("--steps")
    be.add_argument("--res", help="resolution: a size or HxW (default: the model's native)")
    be.add_argument("--guidance")
    be.add_argument("--warmup", default="1", help="untimed batches before each measurement")
    be.add_argument("--reps", default="3", help="timed batches: images/sec over all of them, the median batch beside it")
    be.add_argument("--device", default="auto")
    be.add_argument("--weights", help="a local diffusers folder (default: the hub cache if it has the model, else random weights)")
    be.add_argument("--attention", default="sdpa", help="the engine's attention: sdpa or triton (our fused kernel); baselines keep diffusers'")
    be.add_argument("--norm", help="the engine's GroupNorm (+ SiLU): torch or triton (fused kernel); default: triton with --attention triton")
    be.add_argument("--out", help="write the results JSON here (atomically)")
    be.add_argument("--json", action="store_true", help="print the results JSON instead of the table")


def _add_train_eval_parsers(sub) -> None:
    tr = sub.add_parser("train", help="train a classifier on a dataset folder or an ImageFolder tree (resumable)")
    tr.add_argument("data", help="dataset folder from `generate`, or an ImageFolder tree ROOT/<class id>/<image>")
    tr.add_argument("--out", required=True, help="run folder (new or empty; an unfinished run with --resume)")
    tr.add_argument("--preset", default="small", help="paper | small (default small)")
    tr.add_argument("--arch", help="small-cnn, resnet18, resnet50, vit-ti/16, convnext-t, swin-t, or any torchvision/timm name")
    for flag in ("image-size", "epochs", "batch-size", "lr", "warmup-epochs", "val-fraction", "workers", "seed", "shuffle-buffer"):
        tr.add_argument(f"--{flag}")
    tr.add_argument("--shuffle-labels", metavar="SEED", help="control experiment: permute the labels across samples")
    tr.add_argument("--precision", help="auto (bf16 autocast on a GPU, fp32 on a CPU) | bf16 | fp32")
    tr.add_argument("--memory-format", help="auto (channels_last on a GPU) | channels_last | contiguous")
    tr.add_argument("--resume", action="store_true", help="continue the run in --out from its last finished epoch")
    tr.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    tr.add_argument("--no-progress", action="store_true")

    ev = sub.add_parser("eval", help="top-1/top-5, per-class accuracy and confusion matrix of a run on a labelled set")
    ev.add_argument("run", help="a finished run folder")
    ev.add_argument("--data", required=True, help="dataset folder or ImageFolder tree with the run's class ids")
    ev.add_argument("--out", help="JSON file (default RUN/evals/<data>.json)")
    ev.add_argument("--device", default="auto")
    ev.add_argument("--batch-size", default="256")
    ev.add_argument("--workers", default="0")

    an = sub.add_parser("analyze", help="PRDC, Vendi, diversity, FID/KID and CLIP alignment of a synthetic set against real images")
    an.add_argument("data", help="the synthetic set (dataset folder or ImageFolder tree)")
    an.add_argument("--real", required=True, help="real images of the same class ids")
    an.add_argument("--out", required=True, help="JSON file to write")
    an.add_argument("--features", default="judge", help="judge | clip=DIR | inception=FILE | timm:NAME=FILE | torchvision:NAME=FILE")
    an.add_argument("--fid-features", help="another extractor for FID/KID (default: --features)")
    an.add_argument("--clip", help="CLIP folder (transformers layout) for CLIPScore and zero-shot alignment")
    an.add_argument("--k", default="5", help="PRDC neighbourhood size (default 5)")
    an.add_argument("--max-per-class", help="at most this many images per class and side")
    an.add_argument("--seed", default="0")
    an.add_argument("--device", default="cpu")

    pr = sub.add_parser("probe", help="write a probed copy of a set: fft-low, fft-high, or a VAE round trip")
    pr.add_argument("kind", help="fft-low | fft-high | vae")
    pr.add_argument("data", help="dataset folder or ImageFolder tree")
    pr.add_argument("--out", required=True, help="new ImageFolder tree to write")
    pr.add_argument("--cutoff", default="0.1", help="FFT cutoff in cycles per pixel (default 0.1)")
    pr.add_argument("--vae-model", help="registry model whose VAE makes the round trip")
    pr.add_argument("--weights", help="local diffusers folder of that model")
    pr.add_argument("--device", default="cpu")

    rp = sub.add_parser("report", help="the paper-style table (md/csv/json) and plots from runs and analyses")
    rp.add_argument("inputs", nargs="+", help="run folders, eval JSONs, analysis JSONs")
    rp.add_argument("--out", required=True, help="folder for the table and PNGs")

    de = sub.add_parser("demo", help="the whole loop on the embedded digits model: generate, train, eval, analyze, report")
    de.add_argument("--out", default="out/demo", help="work folder (default out/demo; an existing one resumes)")
    de.add_argument("--guidance", action="append", help="guidance scale of one synthetic set; repeat (default 1, 2, 7.5)")
    de.add_argument("--images-per-class", default="100")
    de.add_argument("--epochs", help="training epochs (default: the small preset's 30)")
    de.add_argument("--device", default="auto")
    de.add_argument("--json", action="store_true", help="print the results as JSON")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return {"generate": _generate, "verify": _verify, "models": _models, "finalize": _finalize, "train": _train, "eval": _eval,
                "analyze": _analyze, "probe": _probe, "report": _report, "demo": _demo,
                "bench": _bench, "build": _build}[args.command](args)
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

    from .engine.run import RunOptions, generate, parse_part

    part = parse_part(args.part) if args.part is not None else None
    devices = None
    if args.devices is not None and args.ray is not None:
        raise InputError("--ray", args.ray, "choose --devices (this machine) or --ray (a Ray cluster), not both")
    if args.devices is not None:
        from .engine.workers import parse_devices

        devices = parse_devices(args.devices)
    summary = generate(recipe, Path(args.out), RunOptions(device=args.device, weights=args.weights, refiner_weights=args.refiner_weights,
                                                          encode_workers=workers,
                                                          progress=not args.no_progress, part=part, devices=devices,
                                                          ray=args.ray, attention=args.attention, backend=args.backend))
    if args.json:
        print(json.dumps(summary, indent=1))
    else:
        s = summary
        print(f"{s['images']} images in {s['wall_seconds']:.1f} s ({s['images_per_second']:.2f} images/s) on {s['device']}; "
              f"{s['shards_written']} shards written, {s['shards_skipped']} already done -> {s['out']}", file=sys.stderr)
        if s["part"]:
            print(f"part {s['part']}: " + ("the dataset is complete" if s["dataset_complete"] else "other parts are still to finish"),
                  file=sys.stderr)
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


def _finalize(args) -> int:
    from .engine.run import finalize

    r = finalize(Path(args.dir))
    print(f"complete: {r['num_samples']} samples in {r['shards']} shards -> {r['out']}", file=sys.stderr)
    return 0


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


def _int_flag(flag: str, raw: str | None, lo: int, hi: int) -> int | None:
    if raw is None:
        return None
    if not (raw.isascii() and raw.isdigit()) or not lo <= int(raw) <= hi:
        raise InputError(flag, raw, f"expected an integer from {lo} to {hi}")
    return int(raw)


def _train(args) -> int:
    from .training.presets import OVERRIDES, resolve_config

    overrides = {key: getattr(args, key) for key in OVERRIDES}
    config = resolve_config(args.preset, overrides)
    from .training.loop import train

    result = train(config, args.data, args.out, resume=args.resume, device=args.device, progress=not args.no_progress)
    best = result["best"]
    val = f"val loss {best['val_loss']:.4f}, val acc {best['val_acc']:.4f}" if result["val_images"] else "no validation split"
    print(f"chosen epoch {result['best_epoch']}/{config.epochs}: {val} "
          f"({result['train_images']} training, {result['val_images']} validation images) -> {args.out}", file=sys.stderr)
    return 0


def _eval(args) -> int:
    from .eval.classify import evaluate_run

    r = evaluate_run(args.run, args.data, out=args.out, device=args.device,
                     batch_size=_int_flag("--batch-size", args.batch_size, 1, 65536), workers=_int_flag("--workers", args.workers, 0, 256))
    top5 = f", top-5 {r['top5']:.4f}" if r["top5"] is not None else ""
    print(f"{r['direction']}: top-1 {r['top1']:.4f}{top5} on {r['images']} images -> {r['path']}")
    return 0


def _analyze(args) -> int:
    from .eval.analyze import analyze

    r = analyze(args.data, args.real, args.out, features=args.features, fid_features=args.fid_features, clip=args.clip,
                k=_int_flag("--k", args.k, 1, 100), max_per_class=_int_flag("--max-per-class", args.max_per_class, 1, 10**9),
                seed=_int_flag("--seed", args.seed, 0, 2**63 - 1), device=args.device)
    print(json.dumps(r["overall"], indent=1))
    return 0


def _probe(args) -> int:
    from .eval.probes import write_probe

    try:
        cutoff = float(args.cutoff)
    except ValueError:
        raise InputError("--cutoff", args.cutoff, "expected a frequency between 0 and 0.5 cycles per pixel") from None
    out = write_probe(args.data, args.out, args.kind, cutoff=cutoff, vae_model=args.vae_model, weights=args.weights, device=args.device)
    print(f"wrote {out}", file=sys.stderr)
    return 0


def _report(args) -> int:
    from .eval.report import write_report

    r = write_report(args.inputs, args.out)
    print(r["table"])
    print(f"wrote {', '.join(r['files'])} to {args.out}", file=sys.stderr)
    return 0


def _demo(args) -> int:
    from .demo import check_guidances, run_demo

    guidances = check_guidances(args.guidance)
    per_class = _int_flag("--images-per-class", args.images_per_class, 1, 100_000)
    epochs = _int_flag("--epochs", args.epochs, 1, 10_000)
    r = run_demo(args.out, guidances=guidances, images_per_class=per_class, epochs=epochs, device=args.device)
    print(json.dumps(r, indent=1) if args.json else r["table"])
    return 0


def _bench(args) -> int:
    from .benchmark.bench import BASELINES, BACKENDS, BenchOptions, check_options, parse_batches, parse_list, run_bench
    from .benchmark.report import table
    from .engine.writer import atomic_write_text

    opts = BenchOptions(
        model=args.model, backends=parse_list(args.backend, "--backend", BACKENDS),
        batches=parse_batches(args.batch) if args.batch else (), steps=args.steps, resolution=args.res, guidance=args.guidance,
        baselines=parse_list(args.baseline, "--baseline", BASELINES),
        baseline_batches=parse_batches(args.baseline_batch, "--baseline-batch", allow_auto=False),
        warmup=_int_flag("--warmup", args.warmup, 0, 1000), reps=_int_flag("--reps", args.reps, 1, 1000),
        device=args.device, weights=args.weights, attention=args.attention, norm=args.norm,
    )
    check_options(opts)
    if args.out:
        out = Path(args.out)
        if out.is_dir() or not out.parent.is_dir() or not os.access(out.parent, os.W_OK):
            raise InputError("--out", args.out, "expected a file path for the results JSON in an existing, writable folder")
    result = run_bench(opts, log=lambda line: print(line, file=sys.stderr))
    print(json.dumps(result, indent=1) if args.json else table(result), flush=True)  # first: a failed write loses nothing
    if args.out:
        atomic_write_text(Path(args.out), json.dumps(result, indent=1) + "\n")
    return 0


def _build(args) -> int:
    from .export.cache import ArtifactCache

    if args.list:
        entries = ArtifactCache(Path(args.cache_dir) if args.cache_dir else None).entries()
        if args.json:
            print(json.dumps(entries, indent=1))
        for e in [] if args.json else entries:
            profile = e.get("profile", {})
            print(f"{e['name']}  {profile.get('height')}x{profile.get('width')}  batch {profile.get('batch', 'any')}  "
                  f"{e.get('arch')}  {e['bytes'] / 2**20:.1f} MiB  built {e.get('built_at')}  {e['path']}")
        return 0
    if not args.model:
        raise InputError("model", None, "expected a registry model to build (see `t2i-engine models`), or --list")
    from .engine.registry import get_model
    from .export.build import BUILT, BuildOptions, build
    from .export.onnx_export import EXPORTERS
    from .export.specs import parse_profile

    spec = get_model(args.model)
    if args.backend not in BUILT:
        raise InputError("--backend", args.backend, f"expected one of {', '.join(BUILT)}")
    if args.exporter not in EXPORTERS:
        raise InputError("--exporter", args.exporter, f"expected one of {', '.join(EXPORTERS)}")
    kinds = ("denoiser", "vae_decoder", "text_encoder")
    components = tuple(c.strip() for c in args.components.split(","))
    if not components or any(c not in kinds for c in components):
        raise InputError("--components", args.components, f"expected a comma-separated list of {', '.join(kinds)}")
    if args.cache_dir and Path(args.cache_dir).exists() and not Path(args.cache_dir).is_dir():
        raise InputError("--cache-dir", args.cache_dir, "expected a folder")
    opts = BuildOptions(model=spec.name, backend=args.backend, profile=parse_profile(args.batch, args.res, spec.resolution, spec.resolution_multiple),
                        precision=args.precision, device=args.device, weights=args.weights, exporter=args.exporter,
                        components=components, cache_dir=args.cache_dir)
    results = build(opts, log_line=lambda line: print(line, file=sys.stderr))
    if args.json:
        print(json.dumps(results, indent=1))
    else:
        for r in results:
            print(f"{r['component']}: {'built' if r['built'] else 'already built'} -> {r['path']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
