"""The dataset card: README.md in every finished dataset folder.

Its YAML header is the one Hugging Face `datasets` reads: one config whose train split is the
folder's shards, and the features of a sample (`__key__`; the image under its file extension; `cls`
as a ClassLabel carrying the class names in class-index order; `json`, the per-sample record), so
`datasets.load_dataset(DIR)` gives named labels and the folder can be uploaded as it is. Below
the header, a short summary for people: the model and settings, the counts, the command that
made it, how to load and verify it.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from ..dataset.encode import RESIZE_FILTER
from ..dataset.layout import CARD
from ..dataset.store import LocalStore, as_store
from .recipe import Recipe, sample_meta


def card_header(recipe: Recipe, seed_bits: int) -> dict:
    """The YAML header: configs and features (datasets' README metadata). A dataset of the first
    format drew its seeds from all 64 bits, which Arrow cannot hold even as uint64: its per-sample
    JSON is left out of the features (`datasets` then drops it), the image and label stay."""
    record = [
        {"name": "key", "dtype": "string"},
        {"name": "class_index", "dtype": "int64"},
        {"name": "class_id", "dtype": "string"},
        {"name": "class_name", "dtype": "string"},
        {"name": "prompt", "dtype": "string"},
        {"name": "seed", "dtype": "int64"},
    ]
    record += [_feature(k, v) for k, v in sample_meta(recipe).items()]
    names = {str(i): c.name for i, c in enumerate(recipe.classes)}
    features = [
        {"name": "__key__", "dtype": "string"},
        {"name": recipe.extension, "dtype": "image"},
        {"name": "cls", "dtype": {"class_label": {"names": names}}},
    ]
    if seed_bits < 64:
        features.append({"name": "json", "struct": record})
    return {
        "configs": [{"config_name": "default", "data_files": [{"split": "train", "path": "*.tar"}]}],
        "dataset_info": {"features": features},
    }


def _feature(name: str, value: object) -> dict:
    if isinstance(value, list) and value and all(isinstance(x, dict) for x in value):  # LoRA adapters
        return {"name": name, "list": {"struct": [_feature(k, v) for k, v in value[0].items()]}}
    if isinstance(value, bool):
        return {"name": name, "dtype": "bool"}
    if isinstance(value, int):
        return {"name": name, "dtype": "int64"}
    if isinstance(value, float):
        return {"name": name, "dtype": "float64"}
    if isinstance(value, list):
        return {"name": name, "sequence": "int64" if all(isinstance(x, int) for x in value) else "float64"}
    return {"name": name, "dtype": "string"}


def write_card(
    out_dir: Path | LocalStore, recipe: Recipe, *, shards: int, seed_bits: int, command: str | None
) -> None:
    header = yaml.safe_dump(card_header(recipe, seed_bits), sort_keys=False, allow_unicode=True)
    n_classes = len(recipe.classes)
    names = ", ".join(c.name for c in recipe.classes[:8]) + (f", ... ({n_classes} in all)" if n_classes > 8 else "")
    prompt = recipe.prompt
    prompts = {
        "class-name": "the class name alone",
        "template": f"templates ({prompt.template_mode}): " + "; ".join(f"`{t}`" for t in prompt.templates),
        "captions": "a caption per image, after the class name",
    }[prompt.regime]
    refiner = (
        f", refiner {recipe.refiner} for the last {1 - recipe.high_noise_fraction:.0%} of the steps"
        if recipe.refiner
        else ""
    )
    made_with = f"`{command}`" if command else "the Python API (`t2i_engine.engine.run.generate`)"
    quality = f" quality {recipe.quality}" if recipe.format in ("jpeg", "webp") else ""
    json_note = (
        " This dataset was started before the engine's seeds were kept below 2^63 (manifest format 1): "
        "Arrow cannot hold some of its seeds, so `datasets` loads the image and label and leaves the JSON "
        "out (webdataset reads it)."
        if seed_bits >= 64
        else ""
    )
    store = as_store(out_dir)
    body = f"""# {store.name}

Synthetic images made by t2i-engine: {recipe.num_samples:,} images of {n_classes} classes
({recipe.images_per_class:,} per class) in {shards} webdataset shards.

| | |
|---|---|
| model | `{recipe.model}`{refiner} |
| steps, guidance | {recipe.steps}, {recipe.guidance:g} |
| resolution | {_sizes(recipe)} |
| decoder | {_decoder(recipe)} |
| prompts | {prompts} |
| negative prompt | {f"`{recipe.negative_prompt}`" if recipe.negative_prompt else "(empty)"} |
| seed | {recipe.seed} (each sample's seed derives from it and the sample's index) |
| images | {recipe.format}{quality} |
| classes | {names} |
| recipe hash | `{recipe.content_hash()}` |

![A row per class: some of its images](preview.jpg)

Made with {made_with}. The resolved recipe, the versions that made the images and every shard's
sha256 are in `dataset.json`; `t2i-engine verify DIR` checks every sample against them.

Each sample is `KEY.{recipe.extension}` (the image), `KEY.cls` (its class index) and `KEY.json` (key, class,
prompt, seed and settings).{json_note} To load it:

```python
from datasets import load_dataset
ds = load_dataset("path/to/this/folder", split="train")  # "{recipe.extension}": image, "cls": named class label
```

or with `webdataset` (`WebDataset(sorted(tars)).decode("pil").to_tuple("{recipe.extension}", "cls")`) and timm's
`wds/` reader (`_info.json`).
"""
    store.write_text(CARD, f"---\n{header}---\n\n{body}")


def _sizes(recipe: Recipe) -> str:
    """The stored size, and the generated one where output_size resized it."""
    (gh, gw), (sh, sw) = recipe.resolution, recipe.stored_size
    if recipe.output_size is None:
        return f"{gh}x{gw}"
    return f"{sh}x{sw}, stored; generated at {gh}x{gw} and resized with an antialiasing {RESIZE_FILTER} filter"


def _decoder(recipe: Recipe) -> str:
    if recipe.decoder is None:
        return "the model's VAE"
    if "name" in recipe.decoder:
        return f"tiny (`{recipe.decoder['name']}`, an AutoencoderTiny), not the model's VAE"
    return f"tiny (AutoencoderTiny weights sha256 `{recipe.decoder['sha256'][:16]}...`), not the model's VAE"


SUBSETS_BEGIN, SUBSETS_END = "<!-- t2i-engine subsets -->", "<!-- /t2i-engine subsets -->"


def describe_subset(out_dir: Path | str | LocalStore, subset: dict) -> bool:
    """A row for a subset (`filter`'s summary) in the card's "Subsets" section, replacing the row of
    a subset file of the same name; the rest of the card is left as it is. False if there is no card."""
    store = as_store(out_dir, "dir")
    if not store.exists(CARD):
        return False
    text = store.read_text(CARD)
    name = str(subset["out"]).rstrip("/").rsplit("/", 1)[-1]
    counts = list(subset["per_class"].values())
    scores = subset["scores"]
    row = (
        f"| `{name}` | {_rule_text(subset['rule'])} | {subset['count']:,} of {subset['dataset_count']:,} | "
        f"{min(counts, default=0)}-{max(counts, default=0)} | {scores['judge']} (scores `{scores['hash'][:12]}`) |"
    )
    head, _, rest = text.partition(SUBSETS_BEGIN)
    old, _, tail = rest.partition(SUBSETS_END)
    rows = [line for line in old.splitlines() if line.startswith("| `") and not line.startswith(f"| `{name}` ")]
    section = "\n".join(
        [
            SUBSETS_BEGIN,
            "## Subsets",
            "",
            "Subset files list keys of this dataset, cut by a rule over its per-sample scores (`t2i-engine score`,",
            "`t2i-engine filter`); the shards are unchanged. `train`, `analyze`, `preview` and `verify` take one",
            "with `--subset FILE`.",
            "",
            "| subset file | rule | images | per class | scored by |",
            "|---|---|---|---|---|",
            *rows,
            row,
            SUBSETS_END,
        ]
    )
    store.write_text(CARD, head.rstrip("\n") + "\n\n" + section + "\n" + tail.lstrip("\n"))
    return True


def _rule_text(rule: dict) -> str:
    parts = []
    if rule.get("drop_degenerate"):
        parts.append("degenerate images dropped")
    if rule.get("dedup"):
        parts.append("one per near-duplicate group")
    if rule.get("min_agreement") is not None:
        parts.append(f"agreement >= {rule['min_agreement']:g}")
    if rule.get("keep_per_class") is not None:
        if rule.get("keep_by") == "seed":
            parts.append(f"{rule['keep_per_class']:,} per class drawn at random (lowest seeds)")
        elif rule.get("keep_by") == "hardest":
            parts.append(f"the {rule['keep_per_class']:,} of lowest agreement per class")
        else:
            parts.append(f"the {rule['keep_per_class']:,} best per class by agreement")
    return "; ".join(parts) or ", ".join(f"{k} {v}" for k, v in rule.items())
