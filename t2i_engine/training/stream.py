"""A labelled set as a shuffled, worker-split stream of (image tensor, label) pairs.

Every random choice is a function of (seed, epoch, ...), never of timing: units are shuffled
by (seed, epoch) and dealt to loader workers round-robin, each worker shuffles through its own
buffer seeded by (seed, epoch, worker), and each sample's augmentation draws from the torch
RNG reseeded by (seed, epoch, key). With a fixed worker count an epoch is therefore the same
sequence of batches on every run, which is what makes `--resume` land on the same weights.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator

import torch
from torch.utils.data import IterableDataset, get_worker_info

from ..seeds import stable_hash
from .sources import LabelledSet


def in_validation(key: str, fraction: float) -> bool:
    """The validation split: a fixed share of the training set's keys, the same on every run."""
    return fraction > 0 and stable_hash("validation", key) / 2**63 < fraction


class LabelledStream(IterableDataset):
    def __init__(
        self,
        data: LabelledSet,
        labels: dict[str, int],
        transform: Callable,
        *,
        split: str = "all",
        val_fraction: float = 0.0,
        seed: int = 0,
        shuffle: bool = False,
        shuffle_buffer: int = 1,
        label_of_key: dict[str, int] | None = None,
    ):
        assert split in ("all", "train", "val")
        self.data, self.labels, self.transform = data, labels, transform
        self.split, self.val_fraction, self.seed = split, val_fraction, seed
        self.shuffle, self.shuffle_buffer = shuffle, shuffle_buffer
        self.label_of_key = label_of_key  # overrides class labels (the shuffled-labels control)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch  # workers are started afresh each epoch, so they see it

    def wanted(self, key: str) -> bool:
        if self.split == "all":
            return True
        return in_validation(key, self.val_fraction) == (self.split == "val")

    def __len__(self) -> int:
        return sum(1 for e in self.data.entries if self.wanted(e.key))

    def __iter__(self) -> Iterator[tuple[torch.Tensor, int]]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        units = list(range(len(self.data.units)))
        if self.shuffle:
            random.Random(stable_hash(self.seed, self.epoch, "units")).shuffle(units)
        mine = units[worker::workers]
        items = (it for u in mine for it in self.data.read_unit(u) if self.wanted(it.key))
        if self.shuffle:
            items = _buffer_shuffle(
                items, self.shuffle_buffer, random.Random(stable_hash(self.seed, self.epoch, "buffer", worker))
            )
        for it in items:
            label = self.label_of_key[it.key] if self.label_of_key is not None else self.labels[it.class_id]
            if self.shuffle:  # training: augmentations draw from the CPU RNG, seeded by the sample
                # (torch.manual_seed would also seed every accelerator: milliseconds per call)
                torch.default_generator.manual_seed(stable_hash(self.seed, self.epoch, it.key))
            yield self.transform(it.image), label


def _buffer_shuffle(items: Iterator, size: int, rng: random.Random) -> Iterator:
    buf = []
    for it in items:
        if len(buf) < size:
            buf.append(it)
            continue
        j = rng.randrange(size)
        yield buf[j]
        buf[j] = it
    rng.shuffle(buf)
    yield from buf


def shuffled_labels(data: LabelledSet, labels: dict[str, int], seed: int) -> dict[str, int]:
    """The leakage control: the set's labels permuted across its samples (class sizes kept)."""
    keys = sorted(e.key for e in data.entries)
    by_key = {e.key: labels[e.class_id] for e in data.entries}
    values = [by_key[k] for k in keys]
    random.Random(stable_hash(seed, "shuffle-labels")).shuffle(values)
    return dict(zip(keys, values, strict=True))
