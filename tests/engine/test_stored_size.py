"""`output_size`: images stored at the training size, resized with an antialiasing filter before
encoding; in the recipe hash only when set; each sample's JSON, the card, the run summary and a
resume know it."""

from __future__ import annotations

import io
import json
import tarfile

import numpy as np
import pytest
from PIL import Image

from t2i_engine.dataset.encode import RESIZE_FILTER, resize, resize_flops
from t2i_engine.engine.recipe import build_recipe
from t2i_engine.engine.run import RunOptions, generate
from t2i_engine.errors import InputError


def test_the_resize_removes_detail_finer_than_the_new_pixels_instead_of_aliasing_it():
    """Vertical stripes one pixel wide (the finest detail a 64 px image holds) shrunk to 16 px: an
    antialiasing filter averages them to even grey; sampling every 4th column (what nearest
    neighbour does) keeps one stripe colour and makes a flat black or white image: aliasing."""
    stripes = np.zeros((64, 64, 3), np.uint8)
    stripes[:, ::2] = 255
    image = Image.fromarray(stripes)
    ours = np.asarray(resize(image, (16, 16))).astype(float)
    aliased = np.asarray(image.resize((16, 16), Image.Resampling.NEAREST)).astype(float)
    assert ours.shape == (16, 16, 3) and abs(ours.mean() - 127.5) < 2
    assert ours[:, 1:-1].std() < 2 and np.abs(ours - 127.5).max() < 12  # Lanczos rings a little at the edges
    assert abs(aliased.mean() - 127.5) > 100  # the stripes' average is lost
    flat = Image.fromarray(np.full((64, 48, 3), 77, np.uint8))
    assert np.all(np.asarray(resize(flat, (16, 12))) == 77)  # a flat image stays flat
    assert resize(image, (64, 64)) is image and resize(image, None) is image  # nothing to do
    assert RESIZE_FILTER == "lanczos"


def test_resize_flops_grow_with_the_reduction_and_vanish_without_one():
    assert resize_flops((32, 32), (32, 32)) == 0
    quarter, eighth = resize_flops((256, 256), (64, 64)), resize_flops((512, 512), (64, 64))
    # twice the input per output pixel, and a support twice as wide per pass: about 4x for the first pass
    assert 3 * quarter < eighth < 5 * quarter


@pytest.mark.parametrize(
    ("value", "expected"),
    [(16, (16, 16)), ("16", (16, 16)), ("16x16", (16, 16)), ([16, 16], (16, 16)), (32, (32, 32))],
)
def test_output_size_takes_a_size_or_height_and_width(value, expected):
    assert build_recipe({"model": "digits", "output_size": value}).output_size == expected


@pytest.mark.parametrize(
    ("value", "why"),
    [(64, "enlarge"), ([32, 64], "enlarge"), (0, "positive"), (-4, "positive"), ("big", "positive"),
     (True, "positive"), ([16, 8], "stretch"), (2.5, "positive")],
)  # fmt: skip
def test_a_bad_output_size_is_refused_naming_the_field(value, why):
    with pytest.raises(InputError, match="output_size") as e:
        build_recipe({"model": "digits", "output_size": value})
    assert why in str(e.value) and "32x32" in str(e.value)


def test_output_size_keeps_the_aspect_ratio_within_a_pixels_rounding():
    raw = {"model": "tiny-sd", "resolution": [64, 40]}
    assert build_recipe({**raw, "output_size": [32, 20]}).output_size == (32, 20)
    assert build_recipe({**raw, "output_size": [13, 8]}).output_size == (13, 8)  # 8.125 wide, rounded
    with pytest.raises(InputError, match="stretch"):
        build_recipe({**raw, "output_size": [32, 32]})


def test_output_size_is_in_the_hash_only_when_set():
    plain = build_recipe({"model": "digits"})
    assert build_recipe({"model": "digits", "output_size": None}).content_hash() == plain.content_hash()
    assert "output_size" not in json.dumps(plain.content_hash())
    small = build_recipe({"model": "digits", "output_size": 16})
    assert small.content_hash() != plain.content_hash() and small.stored_size == (16, 16)
    assert plain.stored_size == plain.resolution


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    """One small digits dataset stored at 16 px and the same recipe stored as generated (PNG:
    lossless, so stored pixels can be compared)."""
    root = tmp_path_factory.mktemp("stored")
    raw = {"model": "digits", "images_per_class": 1, "steps": 2, "format": "png", "images_per_shard": 6}
    small = generate(
        build_recipe({**raw, "output_size": 16}), root / "small", RunOptions(device="cpu", progress=False)
    )
    full = generate(build_recipe(raw), root / "full", RunOptions(device="cpu", progress=False))
    return root, small, full


def _members(folder):
    out = {}
    for shard in sorted(folder.glob("*.tar")):
        with tarfile.open(shard) as tar:
            for m in tar.getmembers():
                out[m.name] = tar.extractfile(m).read()
    return out


def test_generate_stores_the_generated_images_resized(stored):
    root, summary, _ = stored
    small, full = _members(root / "small"), _members(root / "full")
    pngs = sorted(k for k in small if k.endswith(".png"))
    assert len(pngs) == 10 and pngs == sorted(k for k in full if k.endswith(".png"))
    for key in pngs:  # the same generation, resized by the filter before encoding
        generated = Image.open(io.BytesIO(full[key]))
        kept = Image.open(io.BytesIO(small[key]))
        assert kept.size == (16, 16) and generated.size == (32, 32)
        assert np.array_equal(np.asarray(kept), np.asarray(resize(generated.convert("RGB"), (16, 16))))
        meta = json.loads(small[key.replace(".png", ".json")])
        assert meta["resolution"] == [32, 32] and meta["stored_size"] == [16, 16]
        assert meta["resize_filter"] == RESIZE_FILTER
        assert "stored_size" not in json.loads(full[key.replace(".png", ".json")])  # as generated: as before
    image_bytes = [len(small[k]) for k in pngs]
    assert summary["bytes_per_image"] == pytest.approx(sum(image_bytes) / len(image_bytes), abs=0.1)
    assert summary["stored_size"] == [16, 16] and summary["resize_flops_per_image"] == resize_flops((32, 32), (16, 16))
    assert summary["flops_per_stored_image"] == pytest.approx(
        summary["denoiser_flops_per_image"] + summary["decoder_flops_per_image"] + summary["resize_flops_per_image"]
    )
    card = (root / "small" / "README.md").read_text()
    assert "16x16, stored; generated at 32x32" in card and "lanczos" in card
    assert Image.open(root / "small" / "preview.jpg").size[1] >= 10 * 16  # a row per class


def test_resuming_with_another_output_size_is_refused_and_keeps_the_dataset(stored, tmp_path):
    import shutil

    root, _, _ = stored
    folder = shutil.copytree(root / "small", tmp_path / "small")
    before = {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    raw = {"model": "digits", "images_per_class": 1, "steps": 2, "format": "png", "images_per_shard": 6}
    for other in (None, 8):
        with pytest.raises(InputError, match="output_size"):
            generate(build_recipe({**raw, "output_size": other}), folder, RunOptions(device="cpu", progress=False))
    assert {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()} == before
