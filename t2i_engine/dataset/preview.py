"""Contact sheets: one JPEG with a row per class, labelled with the class's name, holding N of its
images, so a person can see what a dataset holds at a glance.

The images of each class are chosen by a stable hash of (seed, key): the same sheet every time,
whatever the order of shards or files, and another `seed` shows other images. `generate` writes
DIR/preview.jpg when a dataset is complete (from its shards, `dataset_rows`); `t2i-engine preview`
draws one for any dataset folder, finished or not, or an ImageFolder tree (rows from
training.sources, drawn by `draw_sheet`).
"""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Iterable
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from ..files import atomic_write_bytes
from ..seeds import stable_hash
from .shards import is_committed, shard_files
from .store import LocalStore, as_store

PER_CLASS = 8
MAX_CLASSES = 100  # rows; past that the sheet shows the first classes (a JPEG is at most 65,535 px tall)
CELL = 100  # pixels per image, a white margin of PAD around it (small images are enlarged, large ones shrunk)
PAD = 2
LABEL_WIDTH = 160


def choose(
    entries: Iterable[tuple[str, str]], class_ids: list[str], per_class: int, seed: int = 0
) -> dict[str, list[str]]:
    """class id -> up to `per_class` of its keys, picked by a stable hash of (seed, key)."""
    keys: dict[str, list[str]] = {c: [] for c in class_ids}
    for key, class_id in entries:
        if class_id in keys:
            keys[class_id].append(key)
    return {c: sorted(ks, key=lambda k: stable_hash("preview", seed, k))[:per_class] for c, ks in keys.items()}


def draw_sheet(rows: list[tuple[str, list[Image.Image]]], cell: int = CELL) -> Image.Image:
    """A white sheet: per row its label, then its images scaled to `cell - 2 PAD` pixels on the long side."""
    width = LABEL_WIDTH + cell * max((len(images) for _, images in rows), default=1)
    sheet = Image.new("RGB", (width, max(1, cell * len(rows))), "white")
    draw = ImageDraw.Draw(sheet)
    font = _font()
    for r, (label, images) in enumerate(rows):
        top = r * cell
        draw.text((6, top + cell // 2), _fit(label, font, LABEL_WIDTH - 12), fill="black", font=font, anchor="lm")
        for i, image in enumerate(images):
            im = image.convert("RGB")
            scale = (cell - 2 * PAD) / max(im.size)
            size = (max(1, round(im.width * scale)), max(1, round(im.height * scale)))
            im = im.resize(size, Image.NEAREST if scale > 1 else Image.LANCZOS)  # enlarged pixels stay sharp
            sheet.paste(im, (LABEL_WIDTH + i * cell + (cell - im.width) // 2, top + (cell - im.height) // 2))
    return sheet


def sheet_bytes(rows: list[tuple[str, list[Image.Image]]]) -> bytes:
    buffer = io.BytesIO()
    draw_sheet(rows).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def write_sheet(rows: list[tuple[str, list[Image.Image]]], out_file: Path) -> Path:
    """The sheet as a JPEG file anywhere on this machine (`preview --out FILE`)."""
    atomic_write_bytes(Path(out_file), sheet_bytes(rows))
    return Path(out_file)


def dataset_rows(
    out: Path | LocalStore,
    classes: list[tuple[str, str]],
    shards: list[str],
    extension: str,
    per_class: int = PER_CLASS,
    seed: int = 0,
) -> list[tuple[str, list[Image.Image]]]:
    """The rows of a dataset's sheet, one per class (id, name), from those of `shards` that are
    committed (a dataset still being made shows what it has so far)."""
    store = as_store(out)
    classes = classes[:MAX_CLASSES]
    shard_of: dict[str, str] = {}
    entries = []
    for shard in shards:
        if not is_committed(store, shard):
            continue
        for line in store.read_text(shard_files(shard)[1]).splitlines():
            row = json.loads(line)
            shard_of[row["key"]] = shard
            entries.append((row["key"], row["class_id"]))
    chosen = choose(entries, [cid for cid, _ in classes], per_class, seed)
    images = _read_images(store, extension, [k for keys in chosen.values() for k in keys], shard_of)
    return [(label(cid, name), [images[k] for k in chosen[cid]]) for cid, name in classes]


def _read_images(
    store: LocalStore, extension: str, keys: list[str], shard_of: dict[str, str]
) -> dict[str, Image.Image]:
    """The images of `keys`, each shard read once, front to back."""
    wanted: dict[str, set[str]] = {}
    for key in keys:
        wanted.setdefault(shard_of[key], set()).add(f"{key}.{extension}")
    images = {}
    for shard, members in wanted.items():
        with store.open_read(shard_files(shard)[0]) as raw, tarfile.open(fileobj=raw, mode="r:") as tar:
            for member in tar:
                if member.name in members:
                    with Image.open(io.BytesIO(tar.extractfile(member).read())) as im:
                        images[member.name[: -len(extension) - 1]] = im.convert("RGB")
    return images


def label(class_id: str, name: str) -> str:
    """A row's label: the class name, with its id where the two differ (WordNet ids)."""
    return name if name == class_id else f"{name} ({class_id})"


def _fit(text: str, font, width: int) -> str:
    while text and font.getlength(text) > width:
        text = text[:-2] + "…" if len(text) > 1 else ""
    return text


def _font():
    try:
        return ImageFont.load_default(size=13)  # Pillow >= 10.1: a scalable font
    except TypeError:
        return ImageFont.load_default()
