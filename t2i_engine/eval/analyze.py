"""`t2i-engine analyze`: how a synthetic set sits against real images of the same classes.

Per class, equal numbers of real and synthetic images are drawn (a seeded sample of the
larger side), embedded once, and measured:
- PRDC (k=5) per class and on all the balanced points together;
- Vendi score and mean pairwise distance within each class (real values beside them);
- FID and KID on all the balanced points (on --fid-features if given, else on --features);
- with --clip: CLIPScore of each synthetic image against its own prompt, and zero-shot label
  alignment (the share of images CLIP assigns to their own class among "a photo of a {name}.").
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import torch

from ..errors import InputError
from ..files import atomic_write_text, check_writable
from ..seeds import stable_hash
from ..training.sources import LabelledSet, match_classes, open_set
from . import metrics
from .features import clip_text_features, load_clip_tokenizer, load_extractor

ZERO_SHOT_TEMPLATE = "a photo of a {name}."


def analyze(
    data_path: str | Path,
    real_path: str | Path,
    out: str | Path,
    *,
    features: str = "judge",
    fid_features: str | None = None,
    clip: str | None = None,
    k: int = 5,
    max_per_class: int | None = None,
    seed: int = 0,
    device: str = "cpu",
    subset: str | Path | None = None,
) -> dict:
    """`subset`: a subset file of the synthetic set (`t2i-engine filter`); only its samples count."""
    out = Path(out)
    check_writable(out, "--out", kind="file")
    if not 1 <= k <= 100:
        raise InputError("--k", k, "expected an integer from 1 to 100")
    # Everything that can be wrong is checked before any image is read.
    synth, real = open_set(data_path, "data", subset), open_set(real_path, "--real")
    match_classes(real.class_ids, synth, "data")
    extractor = load_extractor(features, "--features", device)
    fid_extractor = load_extractor(fid_features, "--fid-features", device) if fid_features else extractor
    clip_model = None
    if clip:
        clip_extractor = (
            extractor
            if extractor.kind == "clip" and features == f"clip={clip}"
            else load_extractor(f"clip={clip}", "--clip", device)
        )
        clip_model, tokenizer = clip_extractor, load_clip_tokenizer(clip)

    chosen = _balanced_keys(real, synth, seed, max_per_class, k)
    extractors = {"features": extractor, "fid": fid_extractor, "clip": clip_model}
    real_side = _embed_stream(real, {k_ for r, _ in chosen.values() for k_ in r}, extractors)
    synth_side = _embed_stream(synth, {k_ for _, s in chosen.values() for k_ in s}, extractors)
    result = {
        "data": synth.describe(),
        "real": real.describe(),
        "features": extractor.name,
        "k": k,
        "seed": seed,
        "fid_features": fid_extractor.name,
        "per_class": {},
    }
    f_real, f_synth = real_side["features"], synth_side["features"]
    real_cls, synth_cls = np.array(real_side["class_ids"]), np.array(synth_side["class_ids"])

    rows = []
    for c in real.class_ids:
        r, s = f_real[torch.from_numpy(real_cls == c)], f_synth[torch.from_numpy(synth_cls == c)]
        row = {
            "name": real.class_names.get(c, c),
            "images_per_side": len(s),
            "vendi": metrics.vendi(s) if len(s) else None,
            "vendi_real": metrics.vendi(r) if len(r) else None,
            "diversity": metrics.pairwise_diversity(s),
            "diversity_real": metrics.pairwise_diversity(r),
        }
        row.update(
            metrics.prdc(r, s, k) if len(r) > k else dict.fromkeys(("precision", "recall", "density", "coverage"))
        )
        result["per_class"][c] = row
        rows.append(row)
    overall = metrics.prdc(f_real, f_synth, k)
    for key in ("vendi", "vendi_real", "diversity", "diversity_real"):
        overall[key] = _mean(row[key] for row in rows)
    for key in ("precision", "recall", "density", "coverage"):
        overall[f"{key}_class_mean"] = _mean(row[key] for row in rows)
    overall["vendi_all"] = metrics.vendi(f_synth)
    overall["fid"] = metrics.fid(real_side["fid"], synth_side["fid"])
    overall["kid"], overall["kid_std"] = metrics.kid(real_side["fid"], synth_side["fid"], seed)
    overall["images_per_side"] = len(f_synth)
    if clip_model is not None:
        overall.update(_alignment(clip_model, tokenizer, synth, synth_side, real_side))
    result["overall"] = overall
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, json.dumps(result, indent=1) + "\n")
    return result


def _mean(values) -> float | None:
    vals = [v for v in values if v is not None and v == v]
    return float(np.mean(vals)) if vals else None


def _balanced_keys(
    real: LabelledSet, synth: LabelledSet, seed: int, cap: int | None, k: int
) -> dict[str, tuple[list[str], list[str]]]:
    by_class = {c: ([], []) for c in real.class_ids}
    for side, data in ((0, real), (1, synth)):
        for e in data.entries:
            by_class[e.class_id][side].append(e.key)
    chosen = {}
    for c, (r, s) in by_class.items():
        n = min(len(r), len(s), cap or len(r))
        # One seed for both sides: a set analysed against itself draws the same images twice.
        chosen[c] = (_pick(r, n, seed, c), _pick(s, n, seed, c))
    total = sum(len(r) for r, _ in chosen.values())
    if total <= k:
        raise InputError(
            "--max-per-class" if cap else "data",
            cap or str(synth.path),
            f"leaves {total} balanced images per side; PRDC with k={k} needs more than {k}",
        )
    return chosen


def _embed_stream(data: LabelledSet, keys: set[str], extractors: dict, batch: int = 64) -> dict:
    """One pass over the chosen images, in batches: the features of every extractor (one that
    is the same object as another is run once), class ids and prompts; no image is kept."""
    out = {"class_ids": [], "prompts": [], **{name: [] for name, ex in extractors.items() if ex is not None}}
    pending = []

    def flush():
        images = [it.image for it in pending]
        done = {}
        for name, ex in extractors.items():
            if ex is not None:
                if id(ex) not in done:  # an extractor serving several roles runs once
                    done[id(ex)] = ex(images)
                out[name].append(done[id(ex)])
        out["class_ids"] += [it.class_id for it in pending]
        out["prompts"] += [it.prompt for it in pending]
        pending.clear()

    for item in data.read(keys):
        pending.append(item)
        if len(pending) == batch:
            flush()
    if pending:
        flush()
    for name, ex in extractors.items():
        if ex is not None:
            out[name] = torch.cat(out[name])
    return out


def _alignment(clip, tokenizer, synth: LabelledSet, synth_side: dict, real_side: dict) -> dict:
    ids = list(synth.class_ids)
    names = [synth.class_names[c] for c in ids]
    class_text = torch.nn.functional.normalize(
        clip_text_features(clip.model, tokenizer, [ZERO_SHOT_TEMPLATE.format(name=n) for n in names]), dim=1
    )
    result = {}
    for side, got in (("synth", synth_side), ("real", real_side)):
        img = torch.nn.functional.normalize(got["clip"], dim=1)
        labels = torch.tensor([ids.index(c) for c in got["class_ids"]])
        result[f"zero_shot_{side}"] = ((img @ class_text.T).argmax(1) == labels).double().mean().item()
        if side == "synth":
            prompts = [p or synth.class_names[c] for p, c in zip(got["prompts"], got["class_ids"], strict=True)]
            result["clipscore"] = metrics.clip_score(img, clip_text_features(clip.model, tokenizer, prompts))
    return result


def _pick(keys, n: int, seed: int, class_id: str) -> list[str]:
    """A seeded sample of n keys of one class and side, in sorted order."""
    return sorted(random.Random(stable_hash(seed, "balance", class_id)).sample(sorted(keys), n))
