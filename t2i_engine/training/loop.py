"""`t2i-engine train`: train a classifier on a labelled set, resumably.

A run folder holds:
    config.json      the resolved settings, the classes (ids in label order), the data's origin
    last.pt          model, optimiser, images seen (the schedule's position) and history after
                     the last finished epoch
    best.safetensors the weights of the epoch with the lowest validation loss (model selection
                     never looks at the real test set)
    summary.csv      one row per finished epoch
    run.json         written last: the chosen epoch and its metrics; a run without it is unfinished

Every file is written to a temporary name, synced and renamed, so a run killed at any moment
resumes (`--resume`) from its last finished epoch. Each epoch reseeds every RNG from (seed,
epoch), so a resumed run repeats exactly what the uninterrupted run would have done: bit for
bit on a CPU (tested); on a GPU up to cuDNN's non-deterministic kernels, which we leave on
for speed. The `lr` column of summary.csv is the rate at the end of the epoch.
"""

from __future__ import annotations

import csv
import functools
import io
import json
import os
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from safetensors.torch import save as save_safetensors
from torch.utils.data import DataLoader

from ..dataset.locks import exclusive_lock
from ..dataset.manifest import versions
from ..devices import resolve_device
from ..errors import InputError
from ..files import atomic_write_bytes, atomic_write_text, check_writable, fsync_dir
from ..seeds import stable_hash
from .archs import build_model, check_arch
from .presets import TrainConfig, eval_transform, lr_factor, train_transform
from .sources import LabelledSet, open_set
from .stream import LabelledStream, shuffled_labels

CONFIG, CHECKPOINT, BEST, SUMMARY, RUN = "config.json", "last.pt", "best.safetensors", "summary.csv", "run.json"
SUMMARY_FIELDS = ("epoch", "lr", "train_loss", "train_acc", "val_loss", "val_acc", "images", "seconds")


def train(
    config: TrainConfig,
    data_path: str | Path,
    out: str | Path,
    *,
    resume: bool = False,
    device: str = "auto",
    progress: bool = True,
    subset: str | Path | None = None,
) -> dict:
    """`subset`: a subset file (`t2i-engine filter`); only its samples are trained on."""
    out = Path(out)
    check_writable(out, "--out")
    check_arch(config.arch)
    dev = resolve_device(device)
    data = open_set(data_path, "data", subset)
    if len(data.class_ids) < 2:
        raise InputError("data", str(data_path), "expected images of at least 2 classes")
    labels = {c: i for i, c in enumerate(data.class_ids)}
    header = {
        "config": config.to_dict(),
        "classes": [{"id": c, "name": data.class_names[c]} for c in data.class_ids],
        "data": data.describe(),
    }
    _prepare_out(out, header, resume)
    with exclusive_lock(out) as lock_fd:
        return _train_locked(config, data, labels, header, out, dev, progress, lock_fd)


def _prepare_out(out: Path, header: dict, resume: bool) -> None:
    if out.exists() and not out.is_dir():
        raise InputError("--out", str(out), "expected a folder")
    existing = out / CONFIG
    if existing.is_file():
        if not resume:
            raise InputError(
                "--out", str(out), "already holds a training run; pass --resume to continue it, or choose a new folder"
            )
        before = json.loads(existing.read_text(encoding="utf-8"))
        for key in ("config", "classes"):
            if before.get(key) != header[key]:
                raise InputError(
                    "--out",
                    str(out),
                    f"its run was started with other {key}; resume with the same settings and data, or choose a "
                    "new folder",
                )
        if any(before["data"].get(k) != header["data"].get(k) for k in ("path", "images", "subset")):
            raise InputError(
                "--out",
                str(out),
                "its run was started on other data; resume with the same data, or choose a new folder",
            )
    elif out.is_dir() and any(p for p in out.iterdir() if not p.name.startswith(".")):
        raise InputError("--out", str(out), "expected a new or empty folder (or a run folder with --resume)")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError("--out", str(out), f"cannot create the folder: {e.strerror}") from None
    if not existing.is_file():
        atomic_write_text(existing, json.dumps({**header, "versions": versions()}, indent=1) + "\n")


def _train_locked(
    config: TrainConfig,
    data: LabelledSet,
    labels: dict[str, int],
    header: dict,
    out: Path,
    dev: torch.device,
    progress: bool,
    lock_fd: int,
) -> dict:
    if (out / RUN).is_file():  # finished already: resuming is a no-op
        return json.loads((out / RUN).read_text(encoding="utf-8"))
    torch.manual_seed(config.seed)
    model = build_model(config.arch, len(labels), config.image_size).to(dev)
    channels_last = config.use_channels_last(dev.type)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    label_of_key = shuffled_labels(data, labels, config.shuffle_labels) if config.shuffle_labels is not None else None
    train_set = LabelledStream(
        data,
        labels,
        train_transform(config),
        split="train",
        val_fraction=config.val_fraction,
        seed=config.seed,
        shuffle=True,
        shuffle_buffer=config.shuffle_buffer,
        label_of_key=label_of_key,
    )
    val_set = LabelledStream(
        data, labels, eval_transform(config), split="val", val_fraction=config.val_fraction, label_of_key=label_of_key
    )
    n_train, n_val = len(train_set), len(val_set)
    if n_train == 0:
        raise InputError("--val-fraction", config.val_fraction, "leaves no training images; lower it")
    steps_per_epoch = -(-n_train // config.batch_size)  # at least: each loader worker ends on its own partial batch

    def lr_at(images_seen: int) -> float:
        # The schedule runs on images seen, not steps: with several loader workers the number
        # of (partial) batches per epoch varies, the number of images does not.
        return config.lr * lr_factor(
            images_seen,
            n_train * config.epochs,
            round(n_train * config.warmup_epochs),
            config.warmup_start_factor,
            config.min_lr / config.lr,
        )

    state = {"epoch": 0, "rows": [], "best_val_loss": None, "best_epoch": None, "images_seen": 0}
    if (out / CHECKPOINT).is_file():
        ckpt = torch.load(out / CHECKPOINT, map_location=dev, weights_only=True)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        state = ckpt["state"]
    cutmix = _cutmix(len(labels)) if config.cutmix else None
    use_amp = config.use_bf16(dev.type)
    release = functools.partial(_release_lock, lock_fd)
    start = time.perf_counter()
    for epoch in range(state["epoch"] + 1, config.epochs + 1):
        t0 = time.perf_counter()
        torch.manual_seed(stable_hash(config.seed, epoch, "model"))  # dropout, CutMix
        train_set.set_epoch(epoch)
        loader = DataLoader(
            train_set,
            batch_size=config.batch_size,
            num_workers=config.workers,
            pin_memory=dev.type == "cuda",
            worker_init_fn=release,
        )
        model.train()
        seen, loss_sum, correct = 0, 0.0, 0
        bar = _progress(progress, steps_per_epoch, f"epoch {epoch}/{config.epochs}")
        for images, targets in loader:
            images, targets = images.to(dev, non_blocking=True), targets.to(dev, non_blocking=True)
            if channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            hard = targets
            if cutmix is not None:
                # its own draws: with workers=0 the global RNG was just reseeded for a sample
                torch.default_generator.manual_seed(stable_hash(config.seed, epoch, state["images_seen"], "cutmix"))
                images, targets = cutmix(images, targets)
            for group in optimizer.param_groups:
                group["lr"] = lr_at(state["images_seen"])
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=use_amp):
                logits = model(images)
                loss = F.cross_entropy(logits.float(), targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if config.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            optimizer.step()
            state["images_seen"] += len(hard)
            seen += len(hard)
            loss_sum += loss.item() * len(hard)
            correct += (logits.argmax(1) == hard).sum().item()
            if bar:
                bar.update(1)
        if bar:
            bar.close()
        val_loss, val_acc = _validate(model, val_set, config, dev, release) if n_val else (None, None)
        row = {
            "epoch": epoch,
            "lr": lr_at(state["images_seen"]),
            "train_loss": loss_sum / max(seen, 1),
            "train_acc": correct / max(seen, 1),
            "val_loss": val_loss,
            "val_acc": val_acc,
            "images": seen,
            "seconds": round(time.perf_counter() - t0, 2),
        }
        state["rows"].append(row)
        state["epoch"] = epoch
        # No validation split: the last epoch is the chosen one.
        if n_val == 0 or state["best_val_loss"] is None or val_loss < state["best_val_loss"]:
            state["best_val_loss"], state["best_epoch"] = (None if n_val == 0 else val_loss), epoch
            _atomic_save_weights(model, out / BEST)
        _atomic_torch_save(
            {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "state": state}, out / CHECKPOINT
        )
        _write_summary(out / SUMMARY, state["rows"])
        if progress:
            val = f"val loss {val_loss:.4f} acc {val_acc:.3f}" if n_val else "no validation split"
            print(
                f"epoch {epoch}: train loss {row['train_loss']:.4f} acc {row['train_acc']:.3f}, {val} "
                f"({row['seconds']:.1f} s)",
                flush=True,
            )
    best = state["rows"][state["best_epoch"] - 1]
    result = {
        **header,
        "train_images": n_train,
        "val_images": n_val,
        "best_epoch": state["best_epoch"],
        "best": best,
        "last": state["rows"][-1],
        "device": str(dev),
        "versions": versions(),
        "seconds_this_session": round(time.perf_counter() - start, 1),
    }
    atomic_write_text(out / RUN, json.dumps(result, indent=1) + "\n")
    return result


def _release_lock(lock_fd: int, worker_id: int) -> None:
    # A forked loader worker shares the run's lock; were the run killed, an orphaned worker
    # would hold it for seconds and refuse the `--resume` that follows.
    os.close(lock_fd)


@torch.inference_mode()
def _validate(
    model, val_set: LabelledStream, config: TrainConfig, dev: torch.device, worker_init
) -> tuple[float, float]:
    model.eval()
    loss_sum, correct, n = 0.0, 0, 0
    for images, targets in DataLoader(
        val_set, batch_size=config.batch_size, num_workers=config.workers, worker_init_fn=worker_init
    ):
        images, targets = images.to(dev), targets.to(dev)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=config.use_bf16(dev.type)):
            logits = model(images).float()
        loss_sum += F.cross_entropy(logits, targets, reduction="sum").item()
        correct += (logits.argmax(1) == targets).sum().item()
        n += len(targets)
    return loss_sum / n, correct / n


def _cutmix(num_classes: int):
    from torchvision.transforms import v2

    return v2.CutMix(num_classes=num_classes, alpha=1.0)


def _progress(enabled: bool, total: int, desc: str):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, leave=False, unit="batch")


def _atomic_torch_save(obj: dict, path: Path) -> None:
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())
    fsync_dir(path.parent)


def _atomic_save_weights(model: torch.nn.Module, path: Path) -> None:
    atomic_write_bytes(
        path, save_safetensors({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()})
    )
    fsync_dir(path.parent)


def _write_summary(path: Path, rows: list[dict]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=SUMMARY_FIELDS)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def load_run(run: str | Path, field_name: str = "run") -> tuple[dict, torch.nn.Module]:
    """A finished run's record and its chosen weights, in eval mode on the CPU."""
    run = Path(run)
    if not (run / RUN).is_file() or not (run / BEST).is_file():
        raise InputError(
            field_name,
            str(run),
            f"expected a finished training run folder (with {RUN} and {BEST}); "
            "finish it with `t2i-engine train ... --resume`",
        )
    record = json.loads((run / RUN).read_text(encoding="utf-8"))
    cfg = record["config"]
    model = build_model(cfg["arch"], len(record["classes"]), cfg["image_size"])
    model.load_state_dict(load_file(run / BEST))
    return record, model.eval()
