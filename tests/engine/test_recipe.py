"""Recipes: sources of classes, prompt regimes, defaults, overrides and the content hash."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from t2i_engine.engine.recipe import Recipe, build_recipe, load_recipe
from t2i_engine.errors import InputError
from t2i_engine.models.registry import MODELS


def test_defaults_take_the_models_settings():
    r = build_recipe({"model": "sd15"})
    assert (r.steps, r.guidance, r.resolution) == (50, 7.5, (512, 512))
    assert r.format == "jpeg" and r.quality == 95 and r.images_per_shard == 1000
    assert [c.name for c in r.classes][:3] == ["zero", "one", "two"] and r.classes[9].id == "9"


def test_flag_overrides_beat_recipe_values(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("model: tiny-sd\nsteps: 7\nseed: 3\nprompt: {regime: template, templates: ['a {name}']}\n")
    r = load_recipe(path, {"steps": "9", "seed": None, "prompt.template_mode": "sample", "resolution": "32x64"})
    assert r.steps == 9 and r.seed == 3 and r.resolution == (32, 64)
    assert r.prompt.templates == ("a {name}",) and r.prompt.template_mode == "sample"


def test_class_sources_agree(tmp_path):
    (tmp_path / "c.txt").write_text("# comment\ngoldfish\n\ngreat white shark\n")
    (tmp_path / "c.json").write_text(json.dumps([{"id": "goldfish", "name": "goldfish"}, "great white shark"]))
    (tmp_path / "c.csv").write_text("id,name\ngoldfish,goldfish\ngreat-white-shark,great white shark\n")
    inline = build_recipe({"classes": ["goldfish", "great white shark"]}).classes
    for f in ("c.txt", "c.json", "c.csv"):
        assert build_recipe({"classes": str(tmp_path / f)}).classes == inline, f
    assert inline[1].id == "great-white-shark"


def test_imagenet_folder_uses_wnids_order_and_first_synonym(tmp_path):
    (tmp_path / "wnids.txt").write_text("n02084071\nn01443537\n")
    (tmp_path / "words.txt").write_text(
        "n01443537\tgoldfish, Carassius auratus\nn02084071\tdog, domestic dog\nn0000\tunused\n"
    )
    classes = build_recipe({"classes": str(tmp_path)}).classes
    assert [(c.id, c.name) for c in classes] == [("n02084071", "dog"), ("n01443537", "goldfish")]


def test_relative_class_file_resolves_beside_the_recipe(tmp_path):
    (tmp_path / "names.txt").write_text("a\nb\n")
    (tmp_path / "r.yaml").write_text("classes: names.txt\n")
    assert [c.name for c in load_recipe(tmp_path / "r.yaml").classes] == ["a", "b"]


@pytest.mark.parametrize(
    "captions",
    [
        {"cat": ["on a sofa", "in the sun"], "dog": "running"},
        [
            {"class": "cat", "caption": "on a sofa"},
            {"class": "dog", "caption": "running"},
            {"class": "cat", "caption": "in the sun"},
        ],
    ],
)
def test_captions_per_class_and_per_image(tmp_path, captions):
    (tmp_path / "caps.json").write_text(json.dumps(captions))
    r = build_recipe(
        {"classes": ["cat", "dog"], "prompt": {"regime": "captions", "captions": str(tmp_path / "caps.json")}}
    )
    assert r.prompt.captions == (("on a sofa", "in the sun"), ("running",))
    cat = r.classes[0]
    assert [r.prompt.prompt(cat, 0, j, 0) for j in range(3)] == ["cat, on a sofa", "cat, in the sun", "cat, on a sofa"]


def test_captions_csv(tmp_path):
    (tmp_path / "caps.csv").write_text("class,caption\ncat,on a sofa\ndog,running\n")
    r = build_recipe(
        {"classes": ["cat", "dog"], "prompt": {"regime": "captions", "captions": str(tmp_path / "caps.csv")}}
    )
    assert r.prompt.prompt(r.classes[1], 1, 0, 0) == "dog, running"


def test_templates_cycle_or_follow_the_seed():
    templates = ["a photo of a {name}", "a drawing of a {name}", "{name}"]
    cyc = build_recipe({"prompt": {"regime": "template", "templates": templates}}).prompt
    cls = build_recipe({}).classes[7]
    assert [cyc.prompt(cls, 7, j, 0) for j in range(4)] == [
        "a photo of a seven",
        "a drawing of a seven",
        "seven",
        "a photo of a seven",
    ]
    smp = build_recipe({"prompt": {"regime": "template", "templates": templates, "template_mode": "sample"}}).prompt
    assert smp.prompt(cls, 7, 0, seed=4) == "a drawing of a seven" and smp.prompt(cls, 7, 0, seed=5) == "seven"


def test_template_is_filled_by_replacement_not_format():
    r = build_recipe({"prompt": {"regime": "template", "templates": ["{name.__class__} {name}"]}})
    assert r.prompt.prompt(r.classes[0], 0, 0, 0) == "{name.__class__} zero"


def test_hash_ignores_batch_size_and_tracks_content():
    base = build_recipe({"model": "tiny-sd"})
    assert base.content_hash() == build_recipe({"model": "tiny-sd", "batch_size": 3}).content_hash()
    for change in (
        {"seed": 1},
        {"guidance": 2.0},
        {"classes": ["a", "b"]},
        {"format": "png"},
        {"negative_prompt": "blurry"},
    ):
        assert build_recipe({"model": "tiny-sd", **change}).content_hash() != base.content_hash(), change


def test_recipe_round_trips_through_json(tmp_path):
    (tmp_path / "caps.json").write_text(json.dumps({"cat": ["x"], "dog": ["y"]}))
    r = build_recipe(
        {"classes": ["cat", "dog"], "prompt": {"regime": "captions", "captions": str(tmp_path / "caps.json")}}
    )
    again = Recipe.from_dict(json.loads(json.dumps(r.to_dict())))
    assert again == r and again.content_hash() == r.content_hash()


def test_registry_has_the_papers_models():
    paper = {
        "sd15",
        "sd21",
        "sdxl",
        "sdxl-turbo",
        "sd3-medium",
        "flux-dev",
        "flux-schnell",
        "sd35-large",
        "sd35-medium",
        "sd35-large-turbo",
        "sana-1.6b",
        "lumina2",
        "qwen-image",
    }
    assert paper | {"sd20", "sdxl-refiner", "pixart-alpha", "tiny-sd"} <= set(MODELS)
    assert MODELS["sd3-medium"].dtype == "bfloat16" and MODELS["flux-schnell"].steps == 4
    with pytest.raises(InputError, match="sdxl-refiner"):
        build_recipe({"model": "sdxl-refiner"})


def test_example_recipes_validate(tmp_path):
    examples = Path(__file__).resolve().parents[2] / "examples"
    r = load_recipe(examples / "digits-templates.yaml")
    assert r.prompt.template_mode == "sample" and r.num_samples == 200
    (tmp_path / "tiny-imagenet-200").mkdir()
    (tmp_path / "tiny-imagenet-200" / "wnids.txt").write_text("n01443537\n")
    (tmp_path / "tiny-imagenet-200" / "words.txt").write_text("n01443537\tgoldfish, Carassius auratus\n")
    (tmp_path / "paper.yaml").write_text((examples / "paper-sd15.yaml").read_text())
    paper = load_recipe(tmp_path / "paper.yaml")
    assert (paper.steps, paper.guidance, paper.resolution, paper.quality) == (50, 2.0, (512, 512), 95)
