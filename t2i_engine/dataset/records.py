"""What a dataset is made of, as plain records: its samples, its work units (one a shard) and the
record of a written shard. The engine plans them from a recipe (engine/plan.py); the dataset's
readers and writers take them as they are."""

from __future__ import annotations

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


@dataclass(frozen=True)
class WorkUnit:
    shard: int
    samples: tuple[Sample, ...]
    model: str = ""  # a mixture's units each hold one generator's samples

    @property
    def name(self) -> str:
        return shard_name(self.shard)


def shard_name(shard: int) -> str:
    return f"{shard:06d}"


@dataclass(frozen=True)
class ShardRecord:
    name: str  # file name, "NNNNNN.tar"
    sha256: str
    bytes: int
    count: int
    image_bytes: int | None = None  # the encoded images alone (shards written before it was kept: None)
