"""Stable hashes: the same numbers in every process, machine and Python version.

- `sample_seed(recipe_seed, index)`: the seed of a dataset's sample (engine/plan.py), in [0, 2^63),
  so a sample's noise depends on nothing but the recipe and its index.
- `step_seed(seed, stage)`: the seed of the noise a sampler draws during one stage of a
  sample's denoising (ancestral schedulers, a refiner's steps), derived from the sample's.
- `stable_hash(*parts)`: a 63-bit hash of any values' text, for splits, shuffles and names.
"""

from __future__ import annotations

import hashlib
import struct

SEED_BITS = 63  # seeds of new datasets: signed 64-bit integers (Arrow, pandas, parquet, DuckDB) hold them


def sample_seed(recipe_seed: int, index: int, bits: int = SEED_BITS) -> int:
    """The seed of sample `index`: the top `bits` bits of blake2b of both numbers, so nearby
    indices (and nearby recipe seeds) give unrelated streams. Datasets of manifest format 1 were
    made with all 64 bits (engine/manifest.py says which rule a dataset used)."""
    digest = hashlib.blake2b(struct.pack("<QQ", recipe_seed, index), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> (64 - bits)


def step_seed(seed: int, stage: str) -> int:
    """The seed of the noise drawn while sampling `stage` ("steps", "refiner") of the sample
    whose seed is `seed`; the initial noise uses `seed` itself."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{stage}".encode()).digest()[:8], "little")


def stable_hash(*parts: object) -> int:
    """A 63-bit hash of the parts, the same in every process and Python version."""
    digest = hashlib.blake2b("\x1f".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1
