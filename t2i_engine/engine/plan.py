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

import bisect
from collections.abc import Sequence

from ..dataset.records import Sample, WorkUnit
from ..seeds import SEED_BITS, sample_seed
from .recipe import Recipe, mixture_counts

# Planning is arithmetic on sample indices: nothing per sample is made until a unit is used, so
# planning 1.3M samples (ImageNet-1k x 1,300) takes milliseconds, and every --part pays only for
# its own units.


class _Lazy(Sequence):
    """A sequence whose items are made when asked for (`_item(i)`, 0 <= i < len): indexing from
    the end and slices (a list) as a list's."""

    def _item(self, i: int):
        raise NotImplementedError

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self._item(k) for k in range(*i.indices(len(self)))]
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(i)
        return self._item(i)


class SamplePlan(_Lazy):
    """The recipe's samples in index order, each made when asked for (`plan[i]`, a slice, or
    iterating): the same Sample objects plan_samples always gave."""

    def __init__(self, recipe: Recipe, seed_bits: int = SEED_BITS):
        self.recipe, self.seed_bits = recipe, seed_bits
        self._classes = recipe.classes
        self._width = max(6, len(str(recipe.images_per_class - 1)))
        self._owners = _owners(recipe)

    def __len__(self) -> int:
        return self.recipe.num_samples

    def _item(self, i: int) -> Sample:
        c, j = i % len(self._classes), i // len(self._classes)
        seed = sample_seed(self.recipe.seed, i, self.seed_bits)
        cls = self._classes[c]
        prompt = self.recipe.prompt.prompt(cls, c, j, seed)
        return Sample(i, f"{cls.id}_{j:0{self._width}d}", c, cls.id, cls.name, prompt, seed, self._owners[j])

    def __eq__(self, other: object) -> bool:  # as the list it stands for
        if not isinstance(other, Sequence) or isinstance(other, str):
            return NotImplemented
        return len(self) == len(other) and all(a == b for a, b in zip(self, other))

    __hash__ = None


def plan_samples(recipe: Recipe, seed_bits: int = SEED_BITS) -> SamplePlan:
    return SamplePlan(recipe, seed_bits)


def _owners(recipe: Recipe) -> list[str]:
    """The generator of image j of every class: a mixture's models in order, each its share of
    the class's images (the first share's images first); "" without a mixture."""
    if not recipe.mixture:
        return [""] * recipe.images_per_class
    counts = mixture_counts([e.share for e in recipe.mixture], recipe.images_per_class)
    return [e.model for e, n in zip(recipe.mixture, counts) for _ in range(n)]


class UnitPlan(_Lazy):
    """The recipe's work units in shard order, each made when asked for. Without a mixture, unit
    k holds samples [k * size, (k+1) * size). In a mixture, model m owns images [a_m, b_m) of every
    class, which are samples [a_m * C, b_m * C): a contiguous run of indices, cut into shards of
    its own (the first model's shards first), so a worker runs one model a unit."""

    def __init__(self, recipe: Recipe, seed_bits: int = SEED_BITS):
        self.samples = SamplePlan(recipe, seed_bits)
        self.shard_size = recipe.images_per_shard
        n_classes = len(recipe.classes)
        if recipe.mixture:
            counts = mixture_counts([e.share for e in recipe.mixture], recipe.images_per_class)
            starts = [sum(counts[:m]) for m in range(len(counts))]
            groups = [(e.model, a * n_classes, n * n_classes) for e, a, n in zip(recipe.mixture, starts, counts)]
        else:
            groups = [("", 0, recipe.num_samples)]
        self._groups = [g for g in groups if g[2] > 0]  # (model, first sample, samples)
        self._first_unit = [0]  # the first shard of each group
        for _, _, n in self._groups:
            self._first_unit.append(self._first_unit[-1] + -(-n // self.shard_size))

    def __len__(self) -> int:
        return self._first_unit[-1]

    def _item(self, k: int) -> WorkUnit:
        g = bisect.bisect_right(self._first_unit, k) - 1
        model, first, n = self._groups[g]
        offset = (k - self._first_unit[g]) * self.shard_size
        size = min(self.shard_size, n - offset)
        return WorkUnit(k, model=model, source=self.samples, start=first + offset, size=size)

    def unit_of(self, index: int) -> WorkUnit:
        """The unit that holds sample `index`."""
        for g, (_, first, n) in enumerate(self._groups):
            if first <= index < first + n:
                return self[self._first_unit[g] + (index - first) // self.shard_size]
        raise IndexError(index)


def plan_units(recipe: Recipe, seed_bits: int = SEED_BITS) -> UnitPlan:
    """Shards of consecutive samples (a mixture's: of one generator each), made on demand."""
    return UnitPlan(recipe, seed_bits)
