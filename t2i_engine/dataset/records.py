"""What a dataset is made of, as plain records: its samples, its work units (one a shard) and the
record of a written shard. The engine plans them from a recipe (engine/plan.py); the dataset's
readers and writers take them as they are."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Sample:
    index: int
    key: str
    class_index: int
    class_id: str
    class_name: str
    prompt: str
    seed: int
    model: str = ""  # its generator, in a mixture (recipe.models); "" otherwise

    def identity(self) -> dict:
        """What names a sample in its index line and its JSON: key, label, prompt and seed."""
        return {
            "key": self.key,
            "class_index": self.class_index,
            "class_id": self.class_id,
            "class_name": self.class_name,
            "prompt": self.prompt,
            "seed": self.seed,
        }


class WorkUnit:
    """One shard's samples: given, or planned (`size` samples from index `start` of `source`, a
    sequence of samples made on demand), so a million-sample plan holds no sample until a unit is
    run or checked. A unit sent to another process (a worker, a Ray actor) carries its samples."""

    __slots__ = ("shard", "model", "size", "start", "_samples", "_source")

    def __init__(
        self,
        shard: int,
        samples: Sequence[Sample] | None = None,
        model: str = "",  # a mixture's units each hold one generator's samples
        *,
        source: Sequence[Sample] | None = None,
        start: int = 0,
        size: int | None = None,
    ):
        if (samples is None) == (source is None):
            raise TypeError("a WorkUnit takes its samples or a source to plan them from, not both")
        self.shard, self.model = shard, model
        self._samples = None if samples is None else tuple(samples)
        self._source = source
        self.start = start if source is not None else None  # its first sample's index, when planned
        self.size = len(self._samples) if samples is not None else int(size)

    @property
    def samples(self) -> tuple[Sample, ...]:
        if self._samples is None:  # made once, on first use
            self._samples = tuple(self._source[self.start + q] for q in range(self.size))
        return self._samples

    @property
    def name(self) -> str:
        return shard_name(self.shard)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, WorkUnit):
            return NotImplemented
        return (self.shard, self.model, self.samples) == (other.shard, other.model, other.samples)

    def __hash__(self) -> int:
        return hash((self.shard, self.model, self.size))

    def __repr__(self) -> str:
        return f"WorkUnit(shard={self.shard}, size={self.size}, model={self.model!r})"

    def __reduce__(self):
        return WorkUnit, (self.shard, self.samples, self.model)


def shard_name(shard: int) -> str:
    return f"{shard:06d}"


@dataclass(frozen=True)
class ShardRecord:
    name: str  # file name, "NNNNNN.tar"
    sha256: str
    bytes: int
    count: int
    image_bytes: int | None = None  # the encoded images alone (shards written before it was kept: None)
