"""Plan: a pure function from a recipe to work units, one unit per output shard.

Sample i of the dataset (0 <= i < classes x images_per_class) belongs to class i mod C and is
image i div C of that class, so every shard mixes all classes (a shuffle buffer then sees
every class). Its key is "{class id}_{image in class:06d}": unique, free of dots (webdataset
splits a tar member's name at the first dot), and safe as a file name because class ids are.
Its seed is a number in [0, 2^63) derived only from (recipe seed, sample index), so a sample's
initial noise does not depend on devices, workers, batch size or interruptions (datasets of the
first manifest format used 64 bits; `seed_bits` reproduces their plans).
"""

from __future__ import annotations

from ..dataset.records import Sample, WorkUnit
from ..seeds import SEED_BITS, sample_seed
from .recipe import Recipe, mixture_counts


def plan_samples(recipe: Recipe, seed_bits: int = SEED_BITS) -> list[Sample]:
    classes, n_classes = recipe.classes, len(recipe.classes)
    width = max(6, len(str(recipe.images_per_class - 1)))
    owners = _owners(recipe)
    samples = []
    for i in range(recipe.num_samples):
        c, j = i % n_classes, i // n_classes
        seed = sample_seed(recipe.seed, i, seed_bits)
        cls = classes[c]
        prompt = recipe.prompt.prompt(cls, c, j, seed)
        samples.append(Sample(i, f"{cls.id}_{j:0{width}d}", c, cls.id, cls.name, prompt, seed, owners[j]))
    return samples


def _owners(recipe: Recipe) -> list[str]:
    """The generator of image j of every class: a mixture's models in order, each its share of
    the class's images (the first share's images first); "" without a mixture."""
    if not recipe.mixture:
        return [""] * recipe.images_per_class
    counts = mixture_counts([e.share for e in recipe.mixture], recipe.images_per_class)
    return [e.model for e, n in zip(recipe.mixture, counts) for _ in range(n)]


def plan_units(recipe: Recipe, seed_bits: int = SEED_BITS) -> list[WorkUnit]:
    """Shards of consecutive samples; in a mixture, each generator's samples in shards of their
    own (the first model's shards first), so a worker runs one model a unit."""
    samples = plan_samples(recipe, seed_bits)
    size = recipe.images_per_shard
    groups = [[s for s in samples if s.model == name] for name in recipe.models] if recipe.mixture else [samples]
    units: list[WorkUnit] = []
    for group in groups:
        for s in range(0, len(group), size):
            chunk = tuple(group[s : s + size])
            units.append(WorkUnit(len(units), chunk, chunk[0].model))
    return units
