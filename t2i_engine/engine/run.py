"""`generate`: one call from a validated recipe to a complete, verified-on-write dataset folder.

Stages, in order (everything that can refuse the input runs before anything is written):
1. check the output folder and that it is new or holds this recipe's dataset (resume), made
   with the same weights and dtype;
2. plan the units and drop those already committed (a finished dataset is left as it is);
3. load the model (a missing model or weights stops here, nothing written);
4. take the folder's lock, look again at what is committed, clear partial files of an
   interrupted run and write the manifest (complete: false);
5. generate batch by batch, handing images to the ShardWriter, committing each unit's shard;
6. write the complete manifest and timm's _info.json; return the run's summary.
"""

from __future__ import annotations

import contextlib
import os
import resource
import shlex
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from tqdm import tqdm

from ..dataset import manifest as dm
from ..dataset.encode import resize_flops
from ..dataset.layout import LOCK
from ..dataset.locks import exclusive_lock, finalize_lock, part_locks
from ..dataset.records import WorkUnit
from ..dataset.runlog import RunLog
from ..dataset.shards import is_committed, read_record
from ..dataset.store import as_store, open_store
from ..devices import resolve_device
from ..errors import InputError, OutOfSpace, StoreUnavailable, Terminated
from ..export.speed import SWITCHES, Decided, as_flags, compiler_found, decide
from ..export.tuning import Tuning
from ..models.decoders import decoder_label
from ..models.lora_fuse import check_adapters
from ..models.registry import get_model
from . import manifest as mf
from . import ray_runner
from .plan import plan_units
from .recipe import Recipe, check_new_seed
from .refiner import check_refiner
from .runtime import (
    ModelOptions,
    check_attention,
    check_cache_runtime,
    check_conv,
    check_family,
    check_runtime,
    flops_countable,
    load_generator,
)
from .units import UnitRunner, default_encode_workers, shard_writer
from .verify import load_dataset_recipe
from .workers import run_workers


@dataclass(frozen=True)
class RunOptions:
    device: str = "auto"
    weights: str | None = None  # a local diffusers folder instead of the hub id
    refiner_weights: str | None = None  # likewise for the recipe's refiner
    encode_workers: int | None = None  # None: default_encode_workers(device)
    progress: bool = True
    part: tuple[int, int] | None = None  # (i, n): only units whose shard number % n == i
    devices: list[str] | None = None  # one worker process per entry (workers.parse_devices)
    ray: str | None = None  # "local" (a Ray instance of this machine) or a cluster address
    attention: str = "sdpa"  # or "triton": our fused kernel (kernels.install); recorded in the manifest
    backend: str = "eager"  # or onnx, tensorrt, compile (export.build.apply_backend); recorded in the manifest
    tuning: Tuning = Tuning()  # precision and the speed switches (export.tuning); recorded in the manifest
    # Switches of `tuning` left unset (the command line's flags not given): `speed` decides them
    # (export.speed: "auto", the family's measured defaults on CUDA; "plain"; None: auto, but a
    # resumed dataset keeps its manifest's). Empty: `tuning` is taken whole, as given.
    unset: frozenset[str] = frozenset()
    speed: str | None = None
    conv: str = "torch"  # or "fp8" (kernels.conv); recorded in the manifest
    command: str | None = None  # the command line, recorded in the manifest and the dataset card

    @property
    def model(self) -> ModelOptions:
        """What the run loads, as every runner (in-process, worker, Ray actor) takes it."""
        return ModelOptions(
            weights=self.weights,
            refiner_weights=self.refiner_weights,
            attention=self.attention,
            backend=self.backend,
            tuning=self.tuning,
            conv=self.conv,
        )


def parse_part(text: str, env: dict | None = None) -> tuple[int, int]:
    """`I/N`, or `auto`: a Slurm array task (SLURM_ARRAY_TASK_ID, _COUNT, _MIN) or a torchrun
    rank (RANK, WORLD_SIZE)."""
    env = os.environ if env is None else env
    allowed = "expected I/N with 0 <= I < N (e.g. 0/4), or auto (SLURM_ARRAY_TASK_ID/COUNT or RANK/WORLD_SIZE)"
    if text == "auto":
        if "SLURM_ARRAY_TASK_ID" in env and "SLURM_ARRAY_TASK_COUNT" in env:
            raw = (env["SLURM_ARRAY_TASK_ID"], env.get("SLURM_ARRAY_TASK_MIN", "0"), env["SLURM_ARRAY_TASK_COUNT"])
            if all(x.isdigit() for x in raw):
                text = f"{int(raw[0]) - int(raw[1])}/{raw[2]}"
        elif "RANK" in env and "WORLD_SIZE" in env:
            text = f"{env['RANK']}/{env['WORLD_SIZE']}"
        else:
            raise InputError(
                "--part",
                "auto",
                "found neither SLURM_ARRAY_TASK_ID and SLURM_ARRAY_TASK_COUNT nor RANK and WORLD_SIZE",
            )
    i, _, n = text.partition("/")
    if not (i.isascii() and i.isdigit() and n.isascii() and n.isdigit()) or not 0 <= int(i) < int(n) <= 100_000:
        raise InputError("--part", text, allowed)
    return int(i), int(n)


def generate(recipe: Recipe, out_dir: Path | str, options: RunOptions = RunOptions()) -> dict:
    """Make (or resume) `recipe`'s dataset at `out_dir`: a local folder, or a URL of a scheme in
    dataset.store.STORE_SCHEMES (memory:// today: one process, so no --devices or --ray)."""
    t_start = time.perf_counter()
    out_dir = open_store(out_dir, "out")
    if out_dir.url.startswith("memory://") and (options.devices or options.ray):
        raise InputError(
            "out",
            out_dir.url,
            "a memory:// dataset lives in this process: its workers could not see it (no --devices, --ray)",
        )
    out_dir.check_writable()
    spec = get_model(recipe.model)
    ray_started = False
    if options.ray:
        gpus, ray_started = ray_runner.connect(None if options.ray == "local" else options.ray)
        device = torch.device("cuda" if gpus else "cpu")  # the actors' device, not this machine's
    else:
        device = resolve_device(options.devices[0] if options.devices else options.device)
    try:
        return _generate(recipe, out_dir, options, spec, device, t_start)
    finally:
        if ray_started:
            ray_runner.shutdown()


def _generate(recipe: Recipe, out_dir: Path, options: RunOptions, spec, device, t_start: float) -> dict:
    check_attention(options.attention, device)
    speed = _decide_speed(recipe, out_dir, options, device)
    # The command the manifest and card keep pins what ran: the switches decided for it (the
    # family's defaults, a resumed dataset's) that are not the plain path's, as flags.
    decided = {k: getattr(speed.tuning, k) for k in SWITCHES if k in options.unset}
    pinned = {k: v for k, v in decided.items() if v != getattr(Tuning(), k)}
    if pinned and options.command:
        options = replace(options, command=shlex.join([*shlex.split(options.command), *as_flags(pinned)]))
    options = replace(options, tuning=speed.tuning, unset=frozenset())  # the workers get it decided
    dtype = options.tuning.dtype(device)
    for name in recipe.models:  # a mixture's every generator
        model_spec = get_model(name)
        check_family(model_spec)
        check_runtime(options.backend, options.attention, device, dtype, name, options.tuning)
        check_conv(options.conv, model_spec, device, options.backend)
    if recipe.mixture and options.weights:
        raise InputError("weights", options.weights, "a mixture loads each of its models from the registry's source")
    check_cache_runtime(recipe.cache, options.backend, options.tuning)
    if options.devices or options.ray:  # they load after the manifest is written; a run here loads before
        check_adapters(spec, options.weights, recipe.lora)
    if recipe.refiner and options.backend != "eager":
        raise InputError(
            "backend", options.backend, f"the refiner ({recipe.refiner}) runs in PyTorch: use --backend eager"
        )
    if recipe.first_steps and options.backend != "eager":
        raise InputError(
            "backend",
            options.backend,
            f"the first-steps base model ({recipe.first_steps['model']}) runs in PyTorch: use --backend eager",
        )
    meta = dict(
        device=str(device),
        dtype=str(dtype).removeprefix("torch."),
        weights=options.weights,
        attention=options.attention,
        backend=options.backend,
        tuning=options.tuning.record(device),
        conv=options.conv,
        refiner_weights=options.refiner_weights,
        command=options.command,
    )
    existing = mf.check_resumable(out_dir, recipe, **_kept(meta))
    # A dataset keeps the format it was started in, and so the rule that made its seeds.
    meta["dataset_format"] = existing["format"] if existing else dm.FORMAT
    if dm.SEED_BITS[meta["dataset_format"]] < 64:
        check_new_seed(recipe)
    part = options.part
    units, mine = _plan(recipe, meta["dataset_format"], part)
    todo = _uncommitted(out_dir, mine)
    # nothing to do: no configs needed
    check_refiner(recipe, options.weights, options.refiner_weights, read_configs=bool(todo))
    t_planned = time.perf_counter()
    if not todo and existing is not None and existing.get("complete"):
        # Finished: left untouched, but for a lost _info.json, preview or card (they derive from the
        # shards; a dataset finished by an earlier version gets the ones it never had).
        if not all(as_store(out_dir).exists(name) for name in dm.DERIVED):
            with exclusive_lock(out_dir):
                records = [read_record(out_dir, u.name) for u in units]
                mf.write_derived(out_dir, recipe, records, existing["format"], existing.get("command"))
        times = (t_start, t_planned, t_planned, time.perf_counter())
        return _summary(recipe, out_dir, meta, mine, todo, _Ran(), times, device, options, speed)

    # With worker processes the model loads in each of them, not here.
    remote = bool(options.devices or options.ray)
    if todo and not remote and options.progress and sys.stderr.isatty():  # where the progress bar shows too
        print(f"generate: loading {spec.name} ({meta['dtype']}) on {device}", file=sys.stderr, flush=True)
    first = todo[0].model if todo else ""  # a mixture's: the model of the first unit to run
    generator = (
        load_generator(recipe.for_model(first or recipe.model), options.model, device) if todo and not remote else None
    )
    t_loaded = time.perf_counter()

    as_store(out_dir).makedirs()
    with part_locks(out_dir, part) if part else exclusive_lock(out_dir):
        # Under the lock, look again: a run that just ended may have committed more shards, or
        # (another part, started at once) written the manifest, whose format then holds.
        found = mf.check_resumable(out_dir, recipe, **_kept(meta))
        if found is not None and found["format"] != meta["dataset_format"]:
            meta["dataset_format"] = found["format"]
            units, mine = _plan(recipe, found["format"], part)
        todo = _uncommitted(out_dir, mine)
        if todo and generator is None and not remote:
            first = todo[0].model
            generator = load_generator(recipe.for_model(first or recipe.model), options.model, device)
        dm.remove_stale_temporaries(out_dir, [u.name for u in mine] if part else None)
        with finalize_lock(out_dir):  # parts: the first one in writes it; the others find it
            if not part or dm.read_manifest(out_dir) is None:
                mf.write_manifest(out_dir, recipe, records=None, **meta)

        ran = _Ran(generator=generator)
        part_text = f"{part[0]}/{part[1]}" if part else None
        log = RunLog(as_store(out_dir), part=part_text, device=str(device))
        runs_on = (
            "ray" if options.ray else ("devices " + ",".join(options.devices) if options.devices else "one process")
        )
        log.record("start", units=len(todo), images=sum(u.size for u in todo), runs_on=runs_on,
                   lock=f"{LOCK}.part-{part[0]}-of-{part[1]}" if part else LOCK)  # fmt: skip
        try:
            _generate_units(todo, recipe, out_dir, options, device, generator, first, meta, part_text, ran)
        except OutOfSpace as e:  # say how much the rest needs: the shards of this run still unwritten
            e = OutOfSpace(e.folder, e.shard_bytes, len(_uncommitted(out_dir, mine)), e.error)
            log.record("error", message=str(e)[:500])
            raise e from e.error
        except StoreUnavailable:
            raise  # the log lives in that store: a line written there would only wait out the client's retries
        except Exception as e:
            with contextlib.suppress(Exception):
                log.record("error", message=f"{type(e).__name__}: {e}"[:500])
            raise
        except BaseException as e:
            log.record("stop", reason="terminated" if isinstance(e, Terminated) else "interrupted")
            raise
        log.record("stop", reason="done", images=ran.images)
        if not part:
            mf.write_manifest(out_dir, recipe, records=[read_record(out_dir, u.name) for u in units], **meta)
        else:
            # Still holding the shared lock (no whole-folder run can start in between). Each part
            # commits its shards before it looks, so the last part to finish sees them all.
            with finalize_lock(out_dir):
                if not _uncommitted(out_dir, units) and not (dm.read_manifest(out_dir) or {}).get("complete"):
                    mf.write_manifest(out_dir, recipe, records=[read_record(out_dir, u.name) for u in units], **meta)
    times = (t_start, t_planned, t_loaded, time.perf_counter())
    return _summary(recipe, out_dir, meta, mine, todo, ran, times, device, options, speed)


def _generate_units(todo, recipe, out_dir, options, device, generator, first, meta, part_text, ran) -> None:
    """Run `todo` here, on local worker processes or on Ray, filling in `ran`."""
    if todo and options.ray:
        ran.images, ran.rates, ran.restarts = ray_runner.run_ray(
            todo, recipe, out_dir, model=options.model, dtype=meta["dtype"], progress=options.progress, part=part_text
        )
    elif todo and options.devices:
        ran.images, ran.rates, ran.restarts = run_workers(
            todo,
            recipe,
            out_dir,
            devices=options.devices,
            model=options.model,
            progress=options.progress,
            part=part_text,
        )
    elif todo:
        workers = default_encode_workers(device) if options.encode_workers is None else options.encode_workers
        loader = (lambda m: load_generator(recipe.for_model(m), options.model, device)) if recipe.mixture else None
        log = {"part": part_text, "worker": "main", "device": str(device)}
        runner = UnitRunner(
            generator, shard_writer(recipe, out_dir, workers, log=log), recipe.batch_size, loader, first
        )
        if flops_countable(options.backend, options.tuning, options.attention, options.conv, device):
            generator.count_flops()
        try:
            ran.images = _run_units(todo, runner, options.progress)
        except BaseException:
            # Stopping (Ctrl-C, SIGTERM, an error): shards already committed are finished; a
            # second failure on the way out (encoders stopped by the same SIGTERM) must not
            # hide the first.
            with contextlib.suppress(Exception):
                runner.writer.close()
            raise
        runner.writer.close()
        ran.stages, ran.writer_wait = runner.stages(), runner.writer.wait_seconds


def finalize(out_dir: Path) -> dict:
    """Write the complete manifest of a folder whose parts have all finished (what the last
    part does by itself; for when it could not, e.g. it was killed after its last shard)."""
    out_dir = open_store(out_dir, "dir")
    manifest, recipe = load_dataset_recipe(out_dir)
    units = plan_units(recipe, dm.SEED_BITS[manifest["format"]])
    with exclusive_lock(out_dir):
        missing = [u.name for u in _uncommitted(out_dir, units)]
        if missing:
            raise InputError(
                "dir",
                str(out_dir),
                f"{len(missing)} of {len(units)} shards are not written yet "
                f"({', '.join(missing[:5])}{'...' if len(missing) > 5 else ''}); run the parts that hold them first",
            )
        summary = {"out": str(out_dir), "shards": len(units), "num_samples": recipe.num_samples}
        if manifest.get("complete") and all(as_store(out_dir).exists(name) for name in dm.DERIVED):
            return {**summary, "already_complete": True}  # a rerun: the manifest stays as it is
        mf.write_manifest(
            out_dir,
            recipe,
            records=[read_record(out_dir, u.name) for u in units],
            device=manifest["device"],
            dtype=manifest["dtype"],
            weights=manifest["weights"],
            attention=manifest.get("attention", "sdpa"),
            backend=manifest.get("backend", "eager"),
            tuning=dm.stored_tuning(manifest),
            conv=manifest.get("conv", "torch"),
            refiner_weights=manifest.get("refiner_weights"),
            dataset_format=manifest["format"],
            command=manifest.get("command"),
        )
    return {**summary, "already_complete": False}


def _plan(recipe: Recipe, dataset_format: str, part: tuple[int, int] | None) -> tuple[list[WorkUnit], list[WorkUnit]]:
    """Every unit (with the seed rule of the dataset's format), and those of this run's part."""
    units = plan_units(recipe, dm.SEED_BITS[dataset_format])
    return units, [u for u in units if u.shard % part[1] == part[0]] if part else units


def _decide_speed(recipe: Recipe, out_dir: Path, options: RunOptions, device: torch.device) -> Decided:
    """The run's speed switches with its unset ones decided (export.speed): a resumed dataset's
    from its manifest unless `speed` is given."""
    store = as_store(out_dir)
    manifest = dm.read_manifest(store) if options.unset and options.speed is None and store.exists() else None
    here = device.type == "cuda" and torch.cuda.is_available()  # a Ray driver may see no GPU: no defaults
    return decide(
        options.tuning,
        options.unset,
        options.speed,
        families=[get_model(name).family for name in recipe.models],
        capability=torch.cuda.get_device_capability(device) if here else None,
        stored=dm.stored_tuning(manifest) if manifest else None,
        measured_path=options.backend == "eager"
        and options.attention == "sdpa"
        and options.conv == "torch"
        and not recipe.cache,
        compiler=compiler_found(),
    )


def _kept(meta: dict) -> dict:
    """The settings a resumed run must share with the folder's shards (all but the device; the
    dataset's format is the folder's own)."""
    return {k: v for k, v in meta.items() if k not in ("device", "dataset_format", "command")}


def _uncommitted(out_dir: Path, units: list[WorkUnit]) -> list[WorkUnit]:
    store = as_store(out_dir)
    if not store.exists():  # looked at once, not per unit (a listing, at a URL)
        return list(units)
    return [u for u in units if not is_committed(store, u.name)]


@dataclass
class _Ran:
    """What a run did (nothing, for a rerun that finds every shard of its units written)."""

    images: int = 0
    stages: dict = field(default_factory=dict)
    writer_wait: float = 0.0
    rates: dict = field(default_factory=dict)  # per device (workers) or the actors (Ray)
    restarts: int = 0
    generator: object = None  # the in-process generator, which counted the FLOPs


def _summary(
    recipe, out_dir, meta, units, todo, ran: _Ran, times: tuple, device, options: RunOptions, speed: Decided
) -> dict:
    """The run summary; the same keys whether the run wrote shards or found nothing left to do."""
    t_start, t_planned, t_loaded, t_end = times
    images, stages, part = ran.images, ran.stages, options.part
    wall = (t_end - t_start) - (t_loaded - t_planned)  # model loading is reported apart
    model_seconds = sum(stages.values())
    peak = (
        torch.cuda.max_memory_allocated(device)
        if device.type == "cuda"
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    )
    summary = {
        "out": str(out_dir),
        "model": recipe.model,
        "device": meta["device"],
        "dtype": meta["dtype"],
        "tuning": meta["tuning"],
        "speed": speed.record(),
        "images": images,
        "shards_written": len(todo),
        "shards_skipped": len(units) - len(todo),
        "part": f"{part[0]}/{part[1]}" if part else None,
        "dataset_complete": bool((dm.read_manifest(out_dir) or {}).get("complete"))
        if as_store(out_dir).exists()
        else False,
        "num_samples": recipe.num_samples,
        "wall_seconds": round(wall, 3),
        "images_per_second": round(images / wall, 3) if images else 0.0,
        "model_load_seconds": round(t_loaded - t_planned, 3),
        "stage_seconds": {
            **{k: round(v, 3) for k, v in stages.items()},
            "planning": round(t_planned - t_start, 3),
            "writer_wait": round(ran.writer_wait, 3),
        },
        "outside_model_share": round(1 - model_seconds / wall, 4) if images and stages else None,
        "peak_memory_bytes": peak,
        "denoiser_flops_per_image": _flops_as_run(ran.generator, options, images),
        "decoder": decoder_label(recipe.decoder),
        "decoder_flops_per_image": _flops_as_run(ran.generator, options, images, "decoder"),
        "stored_size": list(recipe.stored_size),
        "resize_flops_per_image": resize_flops(recipe.resolution, recipe.stored_size),
        **_bytes_per_image(out_dir, units),
    }
    counted = [summary["denoiser_flops_per_image"], summary["decoder_flops_per_image"]]
    summary["flops_per_stored_image"] = (
        sum(counted) + summary["resize_flops_per_image"] if all(isinstance(c, float) for c in counted) else None
    )
    if options.ray:
        summary["ray"] = ran.rates
        summary["ray_units_retried"] = ran.restarts  # put back because their actor (or its node) was lost
    elif options.devices:
        summary["devices"] = options.devices
        summary["device_images_per_second"] = ran.rates
        summary["worker_restarts"] = ran.restarts
    return summary


def _bytes_per_image(out_dir: Path, units: list[WorkUnit]) -> dict:
    """Bytes per image of the shards of `units` on disk: the encoded images alone, and the whole
    shard's (tar headers, class and JSON files included); None where no shard records them."""
    store = as_store(out_dir)
    records = [read_record(store, u.name) for u in units if is_committed(store, u.name)] if store.exists() else []
    kept = [r for r in records if r.image_bytes is not None]
    return {
        "bytes_per_image": round(sum(r.image_bytes for r in kept) / sum(r.count for r in kept), 1) if kept else None,
        "shard_bytes_per_image": round(sum(r.bytes for r in records) / sum(r.count for r in records), 1)
        if records
        else None,
    }


def _flops_as_run(generator, options: RunOptions, images: int, part: str = "denoiser") -> float | str | None:
    """The denoiser's (or the decoder's) FLOPs per image of this run's first batch, counted as it
    ran (a guidance interval's or a cache's savings included), or why it was not counted."""
    counted = getattr(generator, f"{part}_flops_per_image", None)
    if counted is not None:
        return counted
    if not images:
        return None
    if options.ray or options.devices:
        return "not counted: counted in one-process runs (the same recipe without --devices or --ray)"
    return (
        "not counted: the counter sees eager PyTorch ops, not compiled graphs or our Triton kernels "
        f"(this run: --backend {options.backend}, --compile {options.tuning.compile}, "
        f"--precision {options.tuning.precision}, --attention {options.attention}, --conv {options.conv})"
    )


def _run_units(units: list[WorkUnit], runner: UnitRunner, progress: bool) -> int:
    with tqdm(
        total=sum(u.size for u in units),
        unit="img",
        desc="generate",
        disable=None if progress else True,
        dynamic_ncols=True,
    ) as bar:
        return sum(runner.run(unit, on_batch=bar.update) for unit in units)
