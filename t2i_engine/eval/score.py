"""`t2i-engine score`: what came out of each image, as columns beside its shard (dataset/scores.py).

Per sample:
- agreement: the judge's probability of the intended class, over the dataset's own classes, and
  its top class. Judges: `clip`, zero-shot over the dataset's class names and prompt templates
  (each class's text feature is the normalised mean of its templates' normalised features, as
  in CLIP's prompt ensembling; `a photo of a {name}.` where the dataset has no templates);
  `digits`, the embedded models' judge (trained on real digits), over its logits of the
  dataset's digit classes;
- degenerate: a near-constant image (the standard deviation of its pixel values below
  MIN_STD) or a saturated one (more than MAX_CLIPPED of its pixel values at 0-2 or 253-255):
  a safety checker's black image, a blown-out one;
- near-duplicate groups: within a class, samples whose judge features have a cosine of at least
  the threshold are linked, and each connected group is named by its first sample in plan order.

Scoring is resumable: a shard's scores are written whole, then recorded in the scores manifest;
a rerun scores only the shards with no record, or whose tar changed since (remade after
`verify --repair`). Groups span shards, so they are computed once every shard is scored, from
the stored features (a new --dedup-threshold regroups without scoring again).
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..dataset.layout import SCORES
from ..dataset.locks import exclusive_lock
from ..dataset.manifest import read_manifest, versions
from ..dataset.scores import (
    FORMAT,
    read_all_scores,
    read_scores_manifest,
    read_shard_scores,
    scores_file,
    write_scores_manifest,
    write_shard_scores,
)
from ..dataset.shards import shard_files
from ..dataset.store import FsspecStore, LocalStore
from ..devices import resolve_device
from ..errors import InputError
from ..files import file_sha256
from ..training.digits_judge import JUDGE_DIR, load_judge
from ..training.sources import LabelledSet, open_set
from .features import Extractor, as_tensor, clip_text_features, load_clip_tokenizer, load_extractor

JUDGES = ("clip", "digits")
CLIP_DEFAULT = "openai/clip-vit-base-patch32"  # the paper's CLIP (ViT-B/32)
DEFAULT_TEMPLATE = "a photo of a {name}."
# Near-duplicate cosine per judge. The digits judge's pooled ReLU features sit close together (two
# real held-out digits of one class: median cosine 0.944, 99.9th percentile 0.995): its threshold
# is that percentile, so a linked pair is closer than 999 in 1,000 pairs of real digits. CLIP's:
# the 0.95 that CLIP-feature deduplication commonly uses.
DEDUP_THRESHOLDS = {"clip": 0.95, "digits": 0.995}
MIN_STD = 0.02
MAX_CLIPPED = 0.9


@dataclass
class Judge:
    """Probabilities over the dataset's classes and normalised features, for a batch of images."""

    name: str
    weights: str
    weights_sha256: str
    settings: dict  # what moves its numbers (templates, input size)
    extractor: Extractor  # the model and its input preparation (eval/features.py)
    class_text: torch.Tensor | None = None  # clip: [classes, dim], normalised
    columns: list[int] = field(default_factory=list)  # digits: the judge's logit of each dataset class

    def prepare(self, images: list[Image.Image]) -> np.ndarray:
        return self.extractor.prepare(images)

    @torch.inference_mode()
    def __call__(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Probabilities over the dataset's classes and normalised features of prepared pixels."""
        model = self.extractor.model
        x = self.extractor.normalise(pixels).to(next(model.parameters()).device)
        if self.name == "clip":
            feats = torch.nn.functional.normalize(as_tensor(model.get_image_features(pixel_values=x)).float())
            logits = model.logit_scale.exp().float() * feats @ self.class_text.to(feats.device).T
        else:
            raw = model.embed(x)
            logits = model.head(raw)[:, self.columns].float()
            feats = torch.nn.functional.normalize(raw.float())
        return logits.softmax(-1).cpu().numpy(), feats.cpu().numpy()


def load_scoring_judge(
    name: str, weights: str | None, data: LabelledSet, templates: tuple[str, ...], device: torch.device
) -> Judge:
    """The judge, checked against the dataset's classes; refused (naming what is missing) before any image is read."""
    if name not in JUDGES:
        raise InputError("--judge", name, f"expected one of {', '.join(JUDGES)}")
    if name == "digits":
        folder = Path(weights) if weights else JUDGE_DIR
        if not (folder / "model.safetensors").is_file():
            raise InputError(
                "--weights", str(folder), "expected a folder holding the digits judge's model.safetensors"
            )
        digits = [str(d) for d in range(10)]
        foreign = [c for c in data.class_ids if c not in digits]
        if foreign:
            raise InputError(
                "--judge", "digits", f"judges the digit classes 0-9; this dataset has class ids {foreign[:5]}"
            )
        # The judge normalises inside and takes [0, 1] pixels at 32 px (as load_extractor("judge")).
        extractor = Extractor("judge", load_judge(folder).to(device), 32, (0, 0, 0), (1, 1, 1), "judge")
        return Judge(
            "digits",
            "embedded" if folder == JUDGE_DIR else str(folder),
            file_sha256(folder / "model.safetensors"),
            {"image_size": 32},
            extractor,
            columns=[int(c) for c in data.class_ids],
        )
    folder = _clip_folder(weights)
    extractor = load_extractor(f"clip={folder}", "--weights", str(device))
    model = extractor.model
    tokenizer = load_clip_tokenizer(str(folder), "--weights")
    templates = templates or (DEFAULT_TEMPLATE,)
    class_text = []
    for c in data.class_ids:
        per_template = clip_text_features(
            model, tokenizer, [t.replace("{name}", data.class_names[c]) for t in templates]
        )
        mean = torch.nn.functional.normalize(per_template, dim=1).mean(0)
        class_text.append(torch.nn.functional.normalize(mean, dim=0))
    return Judge(
        "clip",
        str(weights or CLIP_DEFAULT),
        _weights_sha256(folder),
        {"templates": list(templates), "image_size": extractor.size},
        extractor,
        class_text=torch.stack(class_text),
    )


def _clip_folder(weights: str | None) -> Path:
    spec = weights or CLIP_DEFAULT
    if Path(spec).is_dir():
        return Path(spec)
    fetch = (
        f"fetch them on a machine with a hub connection (`hf download {spec}`, which fills the Hugging Face "
        "cache) or pass --weights DIR, a folder in transformers' layout"
    )
    if spec.count("/") != 1 or spec.startswith(("/", ".")):
        raise InputError("--weights", spec, f"expected a CLIP folder or a hub id in the Hugging Face cache; {fetch}")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(spec, local_files_only=True))
    except (LocalEntryNotFoundError, OSError, ValueError):
        raise InputError(
            "--weights", spec, f"no such CLIP weights in a local folder or the Hugging Face cache; {fetch}"
        ) from None


def _weights_sha256(folder: Path) -> str:
    """One hash over every weights file of a folder (name and content), in name order."""
    h = hashlib.sha256()
    files = sorted(p for p in folder.iterdir() if p.suffix in (".safetensors", ".bin", ".pt", ".pth"))
    for p in files:
        h.update(p.name.encode() + b"\0" + file_sha256(p).encode())
    return h.hexdigest()


def degeneracy(images: list[Image.Image]) -> tuple[np.ndarray, np.ndarray]:
    """(pixel_std, clipped) per image: the spread of its pixel values in [0, 1], and the share of
    them within 2 of black or white."""
    stds, clipped = [], []
    for im in images:
        a = np.asarray(im.convert("RGB"))
        stds.append(a.std() / 255)
        clipped.append(((a <= 2) | (a >= 253)).mean())
    return np.array(stds, dtype=np.float32), np.array(clipped, dtype=np.float32)


def dup_groups(keys: np.ndarray, classes: np.ndarray, embedding: np.ndarray, threshold: float) -> np.ndarray:
    """Each sample's group: the key of the group's first sample in the given (plan) order, where
    samples of one class whose normalised features have a cosine >= threshold are linked."""
    from scipy.sparse import coo_matrix  # heavy: scipy
    from scipy.sparse.csgraph import connected_components  # heavy: scipy

    groups = np.array(keys, dtype=object)
    for c in dict.fromkeys(classes.tolist()):
        idx = np.flatnonzero(classes == c)
        x = torch.nn.functional.normalize(torch.from_numpy(np.asarray(embedding[idx], dtype=np.float32)), dim=1)
        rows, cols = [], []
        for start in range(0, len(idx), 2048):  # a block of rows at a time: memory stays O(block x n)
            i, j = torch.nonzero(x[start : start + 2048] @ x.T >= threshold, as_tuple=True)
            rows.append(i.numpy() + start)
            cols.append(j.numpy())
        r, q = np.concatenate(rows), np.concatenate(cols)
        graph = coo_matrix((np.ones(len(r), dtype=np.int8), (r, q)), shape=(len(idx), len(idx)))
        _, label = connected_components(graph, directed=False)
        first = {}
        for pos, lab in enumerate(label):  # idx ascends: the first seen is the first in plan order
            first.setdefault(lab, keys[idx[pos]])
        groups[idx] = [first[lab] for lab in label]
    return groups


def score(
    out_dir: str | Path,
    *,
    judge: str = "digits",
    weights: str | None = None,
    device: str = "auto",
    batch_size: int = 128,
    dedup_threshold: float | None = None,
    replace: bool = False,
    progress: bool = True,
    workers: int = 4,
) -> dict:
    """Score every shard of a complete dataset not yet scored with these settings, then group
    near-duplicates (at `dedup_threshold`, default the judge's in DEDUP_THRESHOLDS); returns a summary.
    `workers`: threads that read and decode shards ahead of the judge."""
    start = time.perf_counter()
    if dedup_threshold is None:
        dedup_threshold = DEDUP_THRESHOLDS.get(judge, 0.95)
    if not 0 < dedup_threshold <= 1:
        raise InputError("--dedup-threshold", dedup_threshold, "expected a cosine in (0, 1]")
    if batch_size < 1:
        raise InputError("--batch-size", batch_size, "expected an integer of at least 1")
    if workers < 1:
        raise InputError("--workers", workers, "expected an integer of at least 1")
    data = open_set(out_dir, "dir")
    if data.layout != "shards":
        raise InputError(
            "dir", str(out_dir), "expected a dataset made by `t2i-engine generate` (scores sit beside its shards)"
        )
    data.cache_bytes = 0  # each shard is read once
    store = data.store
    dataset = read_manifest(store)
    recipe = dataset["recipe"]
    templates = tuple(recipe["prompt"]["templates"]) if recipe["prompt"]["regime"] == "template" else ()
    dev = resolve_device(device)
    j = load_scoring_judge(judge, weights, data, templates, dev)
    settings = {
        **j.settings,
        "classes": list(data.class_ids),
        "degenerate": {"min_std": MIN_STD, "max_clipped": MAX_CLIPPED},
    }
    with exclusive_lock(store):
        manifest = _start_manifest(store, dataset, j, settings, dedup_threshold, replace)
        manifest["device"] = str(dev)
        tar_sha = {s["name"].removesuffix(".tar"): s["sha256"] for s in dataset["shards"]}
        present = set(store.list("*.scores.parquet"))  # one listing: at a URL, a look per file is a request
        done = {
            shard
            for shard, entry in manifest["shards"].items()
            if entry.get("tar_sha256") == tar_sha.get(shard) and scores_file(shard) in present
        }
        todo = [u for u, tar in enumerate(data.units) if tar.removesuffix(".tar") not in done]
        if todo:
            manifest["complete"] = False
            write_scores_manifest(store, manifest)
        todo_units = set(todo)
        bar = _bar(sum(1 for e in data.entries if e.unit in todo_units), progress)
        for u, prepared in _in_order(lambda u: _prepared(data, u, j), todo, workers):
            shard = data.units[u].removesuffix(".tar")
            columns = _score_shard(prepared, list(data.class_ids), j, batch_size, bar)
            sha = write_shard_scores(store, shard, columns)
            manifest["shards"][shard] = {"tar_sha256": tar_sha[shard], "scores_sha256": sha}
            write_scores_manifest(store, manifest)
        if bar is not None:
            bar.close()
        if not manifest.get("complete"):
            _group(store, manifest, dedup_threshold)
            manifest["complete"] = True
            write_scores_manifest(store, manifest)
    summary = summarise(store, manifest)
    summary.update(
        scored=len(todo), skipped=len(data.units) - len(todo), seconds=round(time.perf_counter() - start, 1)
    )
    return summary


def _start_manifest(
    store: LocalStore | FsspecStore, dataset: dict, j: Judge, settings: dict, threshold: float, replace: bool
) -> dict:
    """The scores manifest to continue: the existing one if it was made by this judge with these
    settings (a new dedup threshold only regroups), else a new one (--replace), else refused."""
    fresh = {
        "format": FORMAT,
        "judge": j.name,
        "weights": j.weights,
        "weights_sha256": j.weights_sha256,
        "settings": settings,
        "dedup_threshold": threshold,
        "dataset": dataset["recipe_hash"],
        "versions": versions(),
        "complete": False,
        "shards": {},
    }
    old = None if replace else read_scores_manifest(store)
    if old is None:
        return fresh
    same = {k: old.get(k) for k in ("judge", "weights_sha256", "settings")} == {
        k: fresh[k] for k in ("judge", "weights_sha256", "settings")
    }
    if not same:
        raise InputError(
            "--judge",
            j.name,
            f"the dataset holds scores by the {old.get('judge')} judge with other weights or settings; "
            "pass --replace to score it again from scratch",
        )
    if old.get("dataset") != dataset["recipe_hash"]:
        old["shards"] = {}
    if old.get("dedup_threshold") != threshold:
        old["dedup_threshold"], old["complete"] = threshold, False
    old["dataset"] = dataset["recipe_hash"]
    return old


def _prepared(data: LabelledSet, unit: int, j: Judge) -> dict:
    """A shard's samples read, decoded and prepared for the judge, with their seeds and pixel statistics."""
    index = data.store.read_text(shard_files(data.units[unit].removesuffix(".tar"))[1]).splitlines()
    seed_of = {row["key"]: row["seed"] for row in map(json.loads, index)}
    items = list(data.read_unit(unit))
    images = [it.image for it in items]
    std, clipped = degeneracy(images)
    return {
        "key": [it.key for it in items],
        "class_id": [it.class_id for it in items],
        "seed": np.array([seed_of[it.key] for it in items], dtype=np.int64),
        "pixels": j.prepare(images),
        "pixel_std": std,
        "clipped": clipped,
    }


def _in_order(fn, units: list[int], threads: int) -> Iterator[tuple[int, dict]]:
    """fn(unit) for each unit, in order, computed `threads` at a time ahead of the caller (PIL
    decodes without the GIL): the judge never waits for a decode, and memory holds a few shards."""
    with ThreadPoolExecutor(threads, thread_name_prefix="score-decode") as pool:
        pending: deque = deque()
        ahead = iter(units)
        for u in islice(ahead, threads + 1):
            pending.append((u, pool.submit(fn, u)))
        while pending:
            u, future = pending.popleft()
            for nxt in islice(ahead, 1):
                pending.append((nxt, pool.submit(fn, nxt)))
            yield u, future.result()


def _score_shard(prepared: dict, class_ids: list[str], j: Judge, batch_size: int, bar) -> dict:
    pixels = prepared.pop("pixels")
    probs, feats = [], []
    for start in range(0, len(pixels), batch_size):
        p, f = j(pixels[start : start + batch_size])
        probs.append(p)
        feats.append(f)
        if bar is not None:
            bar.update(len(p))
    probs = np.concatenate(probs)
    intended = np.array([class_ids.index(c) for c in prepared["class_id"]])
    top = probs.argmax(1)
    rows = np.arange(len(top))
    return {
        **prepared,
        "agreement": probs[rows, intended].astype(np.float32),
        "top_class": [class_ids[t] for t in top],
        "top_prob": probs[rows, top].astype(np.float32),
        "degenerate": (prepared["pixel_std"] < MIN_STD) | (prepared["clipped"] > MAX_CLIPPED),
        "dup_group": list(prepared["key"]),  # grouped once every shard is scored
        "embedding": np.concatenate(feats),
    }


def _group(store: LocalStore | FsspecStore, manifest: dict, threshold: float) -> None:
    """Near-duplicate groups over the whole dataset, from the stored features; a shard whose
    groups changed is rewritten. Every feature is read at once: 2 bytes x its width per image
    (1.3M images x CLIP's 512: 1.3 GB)."""
    shards = sorted(manifest["shards"])
    tables = {s: read_shard_scores(store, s, manifest["shards"][s]["scores_sha256"]) for s in shards}
    keys = np.concatenate([tables[s]["key"] for s in shards])
    classes = np.concatenate([tables[s]["class_id"] for s in shards])
    emb = np.concatenate([tables[s]["embedding"] for s in shards])
    groups = dup_groups(keys, classes, emb, threshold)
    at = 0
    for s in shards:
        table = tables[s]
        mine = groups[at : at + len(table["key"])]
        at += len(table["key"])
        if list(table["dup_group"]) != list(mine):
            table = {k: list(v) if v.dtype == object else v for k, v in table.items()}
            table["dup_group"] = list(mine)
            manifest["shards"][s]["scores_sha256"] = write_shard_scores(store, s, table)
            write_scores_manifest(store, manifest)


def summarise(store: LocalStore | FsspecStore, manifest: dict) -> dict:
    cols = read_all_scores(store, manifest, ["key", "class_id", "agreement", "top_class", "degenerate", "dup_group"])
    n = len(cols["key"])
    return {
        "judge": manifest["judge"],
        "images": n,
        "shards": len(manifest["shards"]),
        "agreement_mean": round(float(cols["agreement"].mean()), 4) if n else None,
        "top_is_intended": round(float((cols["top_class"] == cols["class_id"]).mean()), 4) if n else None,
        "duplicates": int((cols["dup_group"] != cols["key"]).sum()),
        "dedup_threshold": manifest["dedup_threshold"],
        "degenerate": int(cols["degenerate"].sum()),
        "manifest": f"{store.url}/{SCORES}",
    }


def _bar(total: int, progress: bool):
    if not progress or not total:
        return None
    from tqdm import tqdm  # heavy: tqdm

    return tqdm(total=total, desc="scoring", unit="img", file=sys.stderr, leave=False)
