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


def _eager_plan(recipe, seed_bits):
    """The planning rule as it stood before planning became lazy (every sample, then every unit,
    made up front), kept here as the reference the lazy plan must equal sample for sample."""
    from t2i_engine.dataset.records import Sample
    from t2i_engine.engine.recipe import mixture_counts

    n_classes, width = len(recipe.classes), max(6, len(str(recipe.images_per_class - 1)))
    owners = [""] * recipe.images_per_class
    if recipe.mixture:
        counts = mixture_counts([e.share for e in recipe.mixture], recipe.images_per_class)
        owners = [e.model for e, n in zip(recipe.mixture, counts) for _ in range(n)]
    samples = []
    for i in range(recipe.num_samples):
        c, j = i % n_classes, i // n_classes
        seed = sample_seed(recipe.seed, i, seed_bits)
        cls = recipe.classes[c]
        prompt = recipe.prompt.prompt(cls, c, j, seed)
        samples.append(Sample(i, f"{cls.id}_{j:0{width}d}", c, cls.id, cls.name, prompt, seed, owners[j]))
    groups = [[s for s in samples if s.model == m] for m in recipe.models] if recipe.mixture else [samples]
    units = []
    for group in groups:
        for s in range(0, len(group), recipe.images_per_shard):
            units.append((len(units), tuple(group[s : s + recipe.images_per_shard])))
    return samples, units


def test_the_lazy_plan_equals_the_eager_rule_on_a_mid_size_recipe_and_a_mixture():
    from t2i_engine.engine.recipe import build_recipe

    classes = [f"class {k}" for k in range(37)]
    recipes = [
        build_recipe({"model": "digits", "classes": classes, "images_per_class": 29, "images_per_shard": 16,
                      "prompt": {"regime": "template", "templates": ["a {name}", "the {name}"],
                                 "template_mode": "sample"}}),
        build_recipe({"classes": classes[:11], "images_per_class": 23, "images_per_shard": 7,
                      "models": [{"model": "digits", "share": 0.3}, {"model": "digits-dit", "share": 0.7}]}),
    ]  # fmt: skip
    for recipe in recipes:
        for bits in (63, 64):
            samples, units = _eager_plan(recipe, bits)
            lazy = plan_units(recipe, bits)
            assert list(plan_samples(recipe, bits)) == samples and len(lazy) == len(units)
            assert [(u.shard, u.samples, u.size, u.model) for u in lazy] == [
                (k, chunk, len(chunk), chunk[0].model) for k, chunk in units
            ]
            assert lazy[-1] == lazy[len(lazy) - 1] and lazy[2:4] == [lazy[2], lazy[3]]
