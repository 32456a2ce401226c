"""Labelled image sets that training, eval and analysis read, whatever their layout.

Two layouts:
- an engine dataset (`dataset.json` + webdataset shards), in a folder or at a store URL
  (s3://, memory://; dataset.store): labels come from each sample's `.json` class id; the
  listing comes from the shards' `index.jsonl` files, so counting and carving never decode an
  image, and a shard is streamed from the store when a loader reads it (nothing is copied);
- an ImageFolder tree (`ROOT/<class id>/<image>`, torchvision's layout): the folder name is the
  class id; an optional `classes.json` ({id: name}) gives names, and an optional
  `t2i-source.json` says where the images came from (real data, a probe of another set).

Classes are always matched by id. A set is read in "units" (a shard, or a chunk of files) so
that loader workers can split it without reading anything twice.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

from PIL import Image

from ..dataset.layout import MANIFEST
from ..dataset.preview import MAX_CLASSES, choose, label
from ..dataset.shards import shard_files
from ..dataset.store import FsspecStore, LocalStore, open_store
from ..dataset.subset import open_subset
from ..engine.verify import load_dataset_recipe
from ..errors import InputError
from ..files import URL, atomic_write_text
from ..seeds import stable_hash

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
FILES_PER_UNIT = 256
SOURCE_FILE = "t2i-source.json"
CLASSES_FILE = "classes.json"


@dataclass(frozen=True)
class Entry:
    key: str  # unique within the set
    class_id: str
    unit: int  # which unit holds it
    prompt: str | None = None


@dataclass(frozen=True)
class Item:
    key: str
    class_id: str
    data: bytes  # the encoded image: shuffle buffers hold these, not decoded pixels
    prompt: str | None

    @property
    def image(self) -> Image.Image:
        """Decoded to RGB (grey, palette and alpha images too), on each access."""
        try:
            with Image.open(io.BytesIO(self.data)) as im:
                return im.convert("RGB")
        except OSError as e:  # PIL's UnidentifiedImageError and truncated files
            raise InputError("data", self.key, f"cannot decode this image ({e}); replace or remove it") from None


@dataclass
class LabelledSet:
    path: Path | str  # a local folder, or a dataset's URL
    layout: str  # "shards" | "folder"
    class_ids: tuple[str, ...]  # in the set's own order
    class_names: dict[str, str]
    entries: list[Entry]
    units: list[object]  # shard tar names (in `store`), or lists of (key, class id, file) per unit
    origin: dict = field(default_factory=dict)  # kind (synthetic | real), model, guidance, recipe hash...
    store: LocalStore | FsspecStore | None = None  # where the shards are (layout "shards")
    subset: frozenset[str] | None = None  # a subset's keys (`--subset`): nothing else is read
    # The main process keeps the encoded bytes of the units it read while they fit in this
    # budget: a small set (the digits) is read from disk once, not once per epoch. Loader
    # workers live one epoch, so they do not cache.
    cache_bytes: int = 1 << 30
    _cache: dict = field(default_factory=dict, repr=False)
    _cached_bytes: int = 0

    def describe(self) -> dict:
        return {"path": str(self.path), "layout": self.layout, "images": len(self.entries), **self.origin}

    @property
    def name(self) -> str:
        """The set's folder name (the last part of its URL)."""
        return self.store.name if self.store is not None else Path(self.path).resolve().name

    def read_unit(self, unit: int) -> Iterator[Item]:
        from torch.utils.data import get_worker_info

        if unit in self._cache:
            yield from self._cache[unit]
            return
        items = []
        for item in self._read_unit(unit):
            yield item
            items.append(item)
        size = sum(len(it.data) for it in items)
        if get_worker_info() is None and self._cached_bytes + size <= self.cache_bytes:
            self._cache[unit] = items
            self._cached_bytes += size

    def _read_unit(self, unit: int) -> Iterator[Item]:
        if self.layout == "shards":
            for item in _read_shard(self.store, self.units[unit]):
                if self.subset is None or item.key in self.subset:
                    yield item
        else:
            for key, class_id, file in self.units[unit]:
                yield Item(key, class_id, Path(file).read_bytes(), None)

    def read(self, keys: set[str] | None = None) -> Iterator[Item]:
        """Every item (or those in `keys`) in listing order, one unit at a time."""
        wanted_units = sorted({e.unit for e in self.entries if keys is None or e.key in keys})
        for u in wanted_units:
            for item in self.read_unit(u):
                if keys is None or item.key in keys:
                    yield item


def open_set(path: str | Path, field_name: str = "data", subset: str | Path | None = None) -> LabelledSet:
    """The set at `path`; with `subset` (a file written by `t2i-engine filter`), only its keys."""
    data = _open(path, field_name)
    if subset is not None:
        data = _restrict(data, subset)
    return data


def _restrict(data: LabelledSet, subset: str | Path) -> LabelledSet:
    if data.layout != "shards":
        raise InputError(
            "--subset", str(subset), "takes a dataset made by `t2i-engine generate`, not an ImageFolder tree"
        )
    record, keys = open_subset(subset, data.store)
    present = {e.key for e in data.entries}
    unknown = [k for k in record["keys"] if k not in present]
    if unknown:
        raise InputError("--subset", str(subset), f"names {len(unknown)} keys this dataset lacks, e.g. {unknown[0]}")
    entries = [e for e in data.entries if e.key in keys]
    kept = sorted({e.unit for e in entries})  # shards holding none of the subset are not read at all
    renumber = {u: i for i, u in enumerate(kept)}
    data.units = [data.units[u] for u in kept]
    data.entries = [replace(e, unit=renumber[e.unit]) for e in entries]
    data.subset = keys
    data.origin = {
        **data.origin,
        "subset": {"file": str(subset), "rule": record["rule"], "images": len(keys), "scores": record["scores"]},
    }
    return data


def _open(path: str | Path, field_name: str) -> LabelledSet:
    if isinstance(path, str) and URL.match(path):
        store = open_store(path, field_name)
        if not store.exists(MANIFEST):
            raise InputError(
                field_name,
                path,
                "expected a dataset made by `t2i-engine generate` there (ImageFolder trees: local folders only)",
            )
        return _open_shards(store, field_name)
    path = Path(path).resolve()
    if not path.is_dir():
        raise InputError(
            field_name,
            str(path),
            "expected a dataset folder made by `t2i-engine generate` or an ImageFolder tree (ROOT/<class id>/<image>)",
        )
    if (path / MANIFEST).is_file():
        return _open_shards(LocalStore(path, field_name), field_name)
    return _open_folder(path, field_name)


def _open_shards(store: LocalStore | FsspecStore, field_name: str) -> LabelledSet:
    path = store.path() if isinstance(store, LocalStore) else store.url
    try:
        manifest, recipe = load_dataset_recipe(store)
    except InputError as e:
        raise InputError(field_name, str(path), e.allowed) from None
    if not manifest.get("complete"):
        raise InputError(
            field_name,
            str(path),
            "the dataset is incomplete; finish it with `t2i-engine generate` (same recipe) first",
        )
    entries, units = [], []
    present = set(store.list("*"))  # one listing, not a look per file (at a URL each is a request)
    for shard in manifest["shards"]:
        tar, index, _ = shard_files(shard["name"].removesuffix(".tar"))
        if tar not in present or index not in present:
            raise InputError(
                field_name, str(path), f"shard {tar} or its index is missing; run `t2i-engine verify {path}`"
            )
        for line in store.read_text(index).splitlines():
            row = json.loads(line)
            entries.append(Entry(row["key"], row["class_id"], len(units), row.get("prompt")))
        units.append(tar)
    origin = {
        "kind": "synthetic",
        "model": recipe.model,
        "guidance": recipe.guidance,
        "steps": recipe.steps,
        "recipe_hash": manifest["recipe_hash"],
        "images_per_class": recipe.images_per_class,
    }
    return LabelledSet(
        path,
        "shards",
        tuple(c.id for c in recipe.classes),
        {c.id: c.name for c in recipe.classes},
        entries,
        units,
        origin,
        store,
    )


def _open_folder(path: Path, field_name: str) -> LabelledSet:
    class_dirs = sorted(d for d in path.iterdir() if d.is_dir() and not d.name.startswith((".", "_")))
    files = []
    for d in class_dirs:
        mine = sorted(p for p in d.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not mine:
            raise InputError(
                field_name,
                str(d),
                f"this class folder holds no images ({'|'.join(IMAGE_SUFFIXES)}); remove it or add its images",
            )
        stems = [f.stem for f in mine]
        if len(set(stems)) != len(stems):
            dup = next(x for x in stems if stems.count(x) > 1)
            raise InputError(
                field_name, str(d / dup), "two images share this name with different extensions; keys must be unique"
            )
        files += [(f"{d.name}/{f.stem}", d.name, f) for f in mine]
    if not files:
        raise InputError(
            field_name,
            str(path),
            "found no images; expected a dataset folder with dataset.json or "
            f"an ImageFolder tree ROOT/<class id>/<image{'|'.join(IMAGE_SUFFIXES)}>",
        )
    # Units mix classes (files in a fixed hashed order): a unit of one class would make the
    # batches of a small shuffle buffer nearly single-class.
    files.sort(key=lambda f: stable_hash("unit", f[0]))
    units = [files[i : i + FILES_PER_UNIT] for i in range(0, len(files), FILES_PER_UNIT)]
    entries = [Entry(key, cid, u) for u, unit in enumerate(units) for key, cid, _ in unit]
    names = {d.name: d.name for d in class_dirs}
    names.update(_read_json(path / CLASSES_FILE, field_name, {}))
    origin = _read_json(path / SOURCE_FILE, field_name, {"kind": "real"})
    ids = tuple(d.name for d in class_dirs)
    return LabelledSet(path, "folder", ids, {i: str(names.get(i, i)) for i in ids}, entries, units, origin)


def _read_json(path: Path, field_name: str, default: dict) -> dict:
    if not path.is_file():
        return default
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        value = None
    if not isinstance(value, dict):
        raise InputError(field_name, str(path), "expected a JSON object")
    return value


def _read_shard(store: LocalStore | FsspecStore, tar: str) -> Iterator[Item]:
    """A shard's samples, streamed from its store (webdataset's tar reader over the open file)."""
    from webdataset.tariterators import group_by_keys, tar_file_expander

    with store.open_read(tar) as stream:
        samples = list(group_by_keys(tar_file_expander([{"url": tar, "stream": stream}])))
    for sample in samples:
        meta = json.loads(sample["json"])
        data = next(v for k, v in sample.items() if k in ("png", "jpg", "jpeg", "webp"))
        yield Item(meta["key"], meta["class_id"], data, meta.get("prompt"))


def match_classes(run_ids: tuple[str, ...], data: LabelledSet, field_name: str = "--data") -> dict[str, int]:
    """class id -> the run's class index; the data must hold exactly the run's classes."""
    missing = [c for c in run_ids if c not in data.class_ids]
    extra = [c for c in data.class_ids if c not in run_ids]
    if missing or extra:
        raise InputError(
            field_name,
            str(data.path),
            "expected the same class ids as the other side; "
            f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unknown {extra[:5]}{'...' if len(extra) > 5 else ''}",
        )
    return {c: i for i, c in enumerate(run_ids)}


def write_image_folder(out: Path, items, class_ids: list[str], class_names: dict[str, str], origin: dict) -> Path:
    """Write (name, class id, image) items - PIL images or uint8 HWC arrays - as
    ROOT/<class id>/<name>.png (lossless) as they come, with classes.json and t2i-source.json;
    the folder is built under a temporary name and renamed into place when complete."""
    import os
    import shutil

    out = Path(out)
    if out.exists():
        raise InputError("--out", str(out), "expected a folder that does not exist yet")
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    for c in class_ids:
        (tmp / c).mkdir(parents=True)
    for name, class_id, image in items:
        im = image if isinstance(image, Image.Image) else Image.fromarray(image)
        im.save(tmp / class_id / f"{name}.png")
    atomic_write_text(tmp / CLASSES_FILE, json.dumps(class_names, indent=1) + "\n")
    atomic_write_text(tmp / SOURCE_FILE, json.dumps(origin, indent=1) + "\n")
    os.replace(tmp, out)
    return out


def sheet_rows(data: LabelledSet, per_class: int, seed: int = 0) -> list[tuple[str, list[Image.Image]]]:
    """The rows of a contact sheet of any labelled set (dataset/preview.py draws them)."""
    ids = list(data.class_ids)[:MAX_CLASSES]
    chosen = choose(((e.key, e.class_id) for e in data.entries), ids, per_class, seed)
    images = {it.key: it.image for it in data.read({k for keys in chosen.values() for k in keys})}
    return [(label(c, data.class_names[c]), [images[k] for k in chosen[c]]) for c in ids]
