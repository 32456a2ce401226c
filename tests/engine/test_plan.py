"""Plan: keys, labels, prompts and seeds are a pure function of the recipe's content."""

from __future__ import annotations

from collections import Counter

from t2i_engine.engine.plan import plan_samples, plan_units
from t2i_engine.seeds import sample_seed
from tests.conftest import tiny_recipe


def test_plan_is_pure_and_ignores_batch_and_shard_size():
    a = plan_samples(tiny_recipe(images_per_class=7))
    assert a == plan_samples(tiny_recipe(images_per_class=7))
    assert a == plan_samples(tiny_recipe(images_per_class=7, batch_size=5, images_per_shard=3))
    units = plan_units(tiny_recipe(images_per_class=7, images_per_shard=4))
    assert [s for u in units for s in u.samples] == a
    assert [len(u.samples) for u in units] == [4, 4, 4, 4, 4, 1] and units[-1].name == "000005"


def test_seed_depends_only_on_recipe_seed_and_index():
    small = plan_samples(tiny_recipe(images_per_class=2))
    large = plan_samples(tiny_recipe(images_per_class=5))
    # Sample i keeps its seed when the dataset grows; another recipe seed changes every seed.
    assert [s.seed for s in small] == [s.seed for s in large[: len(small)]]
    other = plan_samples(tiny_recipe(images_per_class=2, seed=1))
    assert all(a.seed != b.seed for a, b in zip(small, other))
    assert all(0 <= s.seed < 2**64 for s in large) and len({s.seed for s in large}) == len(large)
    assert sample_seed(0, 0) != sample_seed(0, 1) != sample_seed(1, 0)


def test_keys_are_unique_dot_free_and_carry_their_class():
    r = tiny_recipe(classes=[{"id": "n01443537", "name": "goldfish"}, "Mr. Smith's cat"], images_per_class=4)
    samples = plan_samples(r)
    assert len({s.key for s in samples}) == len(samples)
    for s in samples:
        assert "." not in s.key and "/" not in s.key
        assert s.key.startswith(r.classes[s.class_index].id + "_")
        assert (s.class_id, s.class_name) == (r.classes[s.class_index].id, r.classes[s.class_index].name)
    assert samples[1].key == "mr-smith-s-cat_000000"


def test_shards_mix_classes_and_classes_get_equal_counts():
    r = tiny_recipe(images_per_class=8, images_per_shard=6)
    units = plan_units(r)
    assert all(len({s.class_index for s in u.samples}) == len(r.classes) for u in units[:-1])
    assert Counter(s.class_index for u in units for s in u.samples) == {0: 8, 1: 8, 2: 8}
