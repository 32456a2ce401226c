"""`t2i-engine regenerate DIR KEY`: one stored sample made again from the dataset's own record,
its recipe and its seed, and compared with the stored image.

The sample is remade in the very batch it was made in (its unit's samples, cut at the recipe's
batch size), with the model, weights, dtype, attention, backend and speed switches the manifest
records, so that on the same device type, backend and thread count it is the stored image byte
for byte (README: what identity holds under). Costs one batch, not one shard.
"""

from __future__ import annotations

import io
import tarfile

import torch

from ..dataset import manifest as dm
from ..dataset.encode import encode_batch
from ..dataset.records import Sample
from ..dataset.shards import shard_files
from ..dataset.store import FsspecStore, LocalStore, as_store
from ..devices import resolve_device
from ..errors import InputError
from ..export.tuning import Tuning
from .plan import plan_units
from .recipe import Recipe
from .runtime import ModelOptions, load_generator
from .units import sample_json
from .verify import load_dataset_recipe


def find_sample(recipe: Recipe, key: str, seed_bits: int):
    """(the unit, the sample) of `key` in the plan; a key not in it is refused (exit 2)."""
    class_id, _, number = key.rpartition("_")
    ids = {c.id: k for k, c in enumerate(recipe.classes)}
    width = max(6, len(str(recipe.images_per_class - 1)))
    j = int(number) if number.isascii() and number.isdigit() and len(number) == width else -1
    if class_id not in ids or not 0 <= j < recipe.images_per_class:
        example = f"{recipe.classes[0].id}_{0:0{width}d}"
        raise InputError(
            "KEY",
            key,
            f"expected a key of this dataset's plan: CLASS_ID_{'N' * width} with one of its {len(ids)} class ids and "
            f"an image number below {recipe.images_per_class} (e.g. {example!r})",
        )
    units = plan_units(recipe, seed_bits)
    unit = units.unit_of(j * len(recipe.classes) + ids[class_id])
    return unit, next(s for s in unit.samples if s.key == key)


def regenerate(location: str | LocalStore | FsspecStore, key: str, device: str | None = None) -> dict:
    """Remake `key`: returns {sample (its JSON), image (bytes), extension, shard, stored (the
    stored image's bytes, or None if its shard is not there), identical, device}."""
    store = as_store(location, "dir")
    manifest, recipe = load_dataset_recipe(store)
    unit, sample = find_sample(recipe, key, dm.SEED_BITS[manifest["format"]])
    dev = resolve_device(device or torch.device(manifest.get("device", "cpu")).type)
    options = ModelOptions(
        weights=manifest.get("weights"),
        refiner_weights=manifest.get("refiner_weights"),
        attention=manifest.get("attention", "sdpa"),
        backend=manifest.get("backend", "eager"),
        tuning=Tuning(**manifest.get("tuning", {})),
        conv=manifest.get("conv", "torch"),
    )
    position = unit.samples.index(sample)
    start = position - position % recipe.batch_size
    batch: list[Sample] = list(unit.samples[start : start + recipe.batch_size])
    generator = load_generator(recipe.for_model(sample.model or recipe.model), options, dev)
    images = generator.generate(batch)
    data, _ = encode_batch(images[position - start : position - start + 1], recipe.format, recipe.quality,
                           recipe.output_size)[0]  # fmt: skip
    stored = _stored_image(store, unit.name, f"{key}.{recipe.extension}")
    return {
        "sample": sample_json(recipe)(sample),
        "image": data,
        "extension": recipe.extension,
        "shard": unit.name,
        "stored": stored,
        "identical": stored == data if stored is not None else None,
        "device": str(dev),
    }


def _stored_image(store, shard: str, member: str) -> bytes | None:
    tar = shard_files(shard)[0]
    if not store.exists(tar):
        return None
    with tarfile.open(fileobj=io.BytesIO(store.read_bytes(tar))) as f:
        try:
            return f.extractfile(member).read()
        except KeyError:
            return None
