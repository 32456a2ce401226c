"""Contact sheets: `generate` writes preview.jpg when a dataset is complete, and `t2i-engine preview`
draws one for any dataset folder or ImageFolder tree: a row per class, its images chosen by seed."""

from __future__ import annotations

import io
import tarfile

import numpy as np
from PIL import Image

from t2i_engine.dataset.layout import PREVIEW
from t2i_engine.dataset.preview import CELL, LABEL_WIDTH, PAD, choose
from t2i_engine.engine.run import RunOptions, generate
from tests.conftest import tiny_recipe
from tests.engine.test_generate import index_rows


def _cell(sheet: np.ndarray, row: int, col: int) -> np.ndarray:
    return sheet[row * CELL : (row + 1) * CELL, LABEL_WIDTH + col * CELL : LABEL_WIDTH + (col + 1) * CELL]


def test_the_choice_is_stable_per_seed_whatever_the_order():
    entries = [(f"{c}_{i:06d}", c) for i in range(20) for c in ("cat", "dog")]
    a = choose(entries, ["cat", "dog"], 4, seed=0)
    assert a == choose(list(reversed(entries)), ["cat", "dog"], 4, seed=0)
    assert [len(v) for v in a.values()] == [4, 4] and all(k.startswith("cat") for k in a["cat"])
    assert choose(entries, ["cat", "dog"], 4, seed=1) != a


def test_an_image_folder_gets_a_row_per_class_with_its_own_images(cli, tmp_path):
    colours = {"blue": (0, 0, 255), "green": (0, 160, 0), "red": (255, 0, 0)}
    for name, rgb in colours.items():
        (tmp_path / "tree" / name).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (20, 30), rgb).save(tmp_path / "tree" / name / f"{i}.png")
    code, _, err = cli("preview", tmp_path / "tree", "--per-class", "2", "--out", tmp_path / "sheet.jpg")
    assert code == 0, err
    sheet = np.asarray(Image.open(tmp_path / "sheet.jpg"), dtype=int)
    assert sheet.shape == (3 * CELL, LABEL_WIDTH + 2 * CELL, 3)
    for row, rgb in enumerate(colours.values()):  # rows in class order, each class's images in its row
        for col in range(2):
            centre = _cell(sheet, row, col)[CELL // 2 - 5 : CELL // 2 + 5, CELL // 2 - 5 : CELL // 2 + 5]
            assert np.abs(centre - rgb).max() <= 12, (row, col)
        label = sheet[row * CELL : (row + 1) * CELL, :LABEL_WIDTH]
        assert (label < 128).any()  # the class name is written in its row


def test_generate_writes_the_preview_when_the_dataset_is_complete(tmp_path, cli):
    recipe = tiny_recipe(images_per_class=4, images_per_shard=6)
    out = tmp_path / "out"
    generate(recipe, out, RunOptions(device="cpu", progress=False, encode_workers=0, part=(0, 2)))
    assert not (out / PREVIEW).exists()  # half a dataset: no preview yet
    code, _, err = cli("preview", out, "--out", tmp_path / "partial.jpg")  # but one can be asked for
    assert code == 0, err
    generate(recipe, out, RunOptions(device="cpu", progress=False, encode_workers=0, part=(1, 2)))
    sheet = np.asarray(Image.open(out / PREVIEW), dtype=int)
    assert sheet.shape == (3 * CELL, LABEL_WIDTH + 4 * CELL, 3)
    # each cell is a sample of its row's class, enlarged 3x (32 -> 96 px) with its pixels kept
    assert CELL - 2 * PAD == 96
    rows = {r["key"]: r for r in index_rows(out)}
    chosen = choose(((k, r["class_id"]) for k, r in rows.items()), ["cat", "dog", "goldfish"], 8)
    originals = {}
    for tar_path in sorted(out.glob("*.tar")):
        with tarfile.open(tar_path) as tar:
            for m in tar:
                if m.name.endswith(".jpg"):
                    originals[m.name[:-4]] = np.asarray(Image.open(io.BytesIO(tar.extractfile(m).read())), dtype=int)
    for row, class_id in enumerate(["cat", "dog", "goldfish"]):
        for col, key in enumerate(chosen[class_id]):
            shrunk = _cell(sheet, row, col)[PAD + 1 : CELL - PAD : 3, PAD + 1 : CELL - PAD : 3]
            assert np.abs(shrunk - originals[key]).mean() < 6, (class_id, key)
    again = tmp_path / "again.jpg"
    assert cli("preview", out, "--out", again)[0] == 0 and again.read_bytes() == (out / PREVIEW).read_bytes()


def test_preview_refuses_a_folder_without_images(cli, tmp_path):
    (tmp_path / "empty").mkdir()
    code, _, err = cli("preview", tmp_path / "empty")
    assert code == 2 and "error: dir:" in err and not (tmp_path / "empty" / PREVIEW).exists()
