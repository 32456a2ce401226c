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

from dataclasses import dataclass

from ..seeds import SEED_BITS, sample_seed
from .recipe import Recipe


@dataclass(frozen=True)
class Sample:
    index: int
    key: str
    class_index: int
    class_id: str
    class_name: str
    prompt: str
    seed: int


@dataclass(frozen=True)
class WorkUnit:
    shard: int
    samples: tuple[Sample, ...]

    @property
    def name(self) -> str:
        return shard_name(self.shard)


def shard_name(shard: int) -> str:
    return f"{shard:06d}"


def plan_samples(recipe: Recipe, seed_bits: int = SEED_BITS) -> list[Sample]:
    classes, n_classes = recipe.classes, len(recipe.classes)
    width = max(6, len(str(recipe.images_per_class - 1)))
    samples = []
    for i in range(recipe.num_samples):
        c, j = i % n_classes, i // n_classes
        seed = sample_seed(recipe.seed, i, seed_bits)
        cls = classes[c]
        samples.append(
            Sample(i, f"{cls.id}_{j:0{width}d}", c, cls.id, cls.name, recipe.prompt.prompt(cls, c, j, seed), seed)
        )
    return samples


def plan_units(recipe: Recipe, seed_bits: int = SEED_BITS) -> list[WorkUnit]:
    samples = plan_samples(recipe, seed_bits)
    size = recipe.images_per_shard
    return [WorkUnit(s // size, tuple(samples[s : s + size])) for s in range(0, len(samples), size)]
