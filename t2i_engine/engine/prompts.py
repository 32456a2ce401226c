"""Prompt regimes: how a sample's prompt is made from its class.

- `class-name`: the class name alone ("goldfish"), as in the paper's main experiments.
- `template`: a list of templates holding `{name}`; image j of a class takes template j mod T
  (`cycle`) or one chosen by the sample's seed (`sample`). Templates are filled by plain text
  replacement, never `str.format`, so a recipe cannot reach Python attributes through them.
- `captions`: captions per class or per image from a .json/.csv file; image j of a class takes
  caption j mod n of its class and the prompt is "{name}, {caption}" (the paper's regime 2).

Caption files: JSON as a mapping class (id or name) -> list of captions, or a list of
`{class, caption}` rows; CSV with a header holding `class` and `caption`. Rows keep file order.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError, check_text
from .classes import ClassEntry

REGIMES = ("class-name", "template", "captions")
TEMPLATE_MODES = ("cycle", "sample")
PROMPT_KEYS = ("regime", "templates", "template_mode", "captions")


@dataclass(frozen=True)
class PromptSpec:
    regime: str = "class-name"
    templates: tuple[str, ...] = ()
    template_mode: str = "cycle"
    # captions[c] is the caption list of class c, resolved from the captions file
    captions: tuple[tuple[str, ...], ...] = ()
    captions_file: str | None = None

    def prompt(self, cls: ClassEntry, class_index: int, image_in_class: int, seed: int) -> str:
        if self.regime == "class-name":
            return cls.name
        if self.regime == "template":
            t = len(self.templates)
            pick = image_in_class % t if self.template_mode == "cycle" else seed % t
            return self.templates[pick].replace("{name}", cls.name)
        caps = self.captions[class_index]
        return f"{cls.name}, {caps[image_in_class % len(caps)]}"


def load_prompt_spec(raw: object, classes: tuple[ClassEntry, ...], base_dir: Path | None) -> PromptSpec:
    """Validate the recipe's `prompt` value (a regime name or a mapping)."""
    if raw is None:
        return PromptSpec()
    if isinstance(raw, str):
        raw = {"regime": raw}
    if not isinstance(raw, dict):
        raise InputError(
            "prompt",
            raw,
            f"expected a regime name ({', '.join(REGIMES)}) or a mapping with keys {', '.join(PROMPT_KEYS)}",
        )
    unknown = sorted(set(raw) - set(PROMPT_KEYS))
    if unknown:
        raise InputError(
            f"prompt.{unknown[0]}", raw[unknown[0]], f"unknown key; allowed keys: {', '.join(PROMPT_KEYS)}"
        )
    regime = raw.get("regime", "class-name")
    if regime not in REGIMES:
        raise InputError("prompt.regime", regime, f"expected one of {', '.join(REGIMES)}")
    if regime == "template":
        templates = raw.get("templates")
        if not isinstance(templates, list) or not templates:
            raise InputError(
                "prompt.templates", templates, "the template regime needs a non-empty list of templates holding {name}"
            )
        for i, t in enumerate(templates):
            if not isinstance(t, str) or "{name}" not in t:
                raise InputError(f"prompt.templates[{i}]", t, "each template must be a string holding {name}")
            check_text(t, f"prompt.templates[{i}]")
        mode = raw.get("template_mode", "cycle")
        if mode not in TEMPLATE_MODES:
            raise InputError("prompt.template_mode", mode, f"expected one of {', '.join(TEMPLATE_MODES)}")
        return PromptSpec("template", tuple(templates), mode)
    if regime == "captions":
        path = raw.get("captions")
        if not isinstance(path, str) or not path:
            raise InputError(
                "prompt.captions", path, "the captions regime needs the path of a .json or .csv captions file"
            )
        p = Path(path).expanduser()
        if not p.is_absolute() and base_dir is not None:
            p = base_dir / p
        return PromptSpec("captions", captions=_load_captions(p, classes), captions_file=str(p))
    for key in ("templates", "captions"):
        if raw.get(key):
            raise InputError(
                f"prompt.{key}",
                raw[key],
                f"only used by the {'template' if key == 'templates' else 'captions'} regime; set prompt.regime "
                "accordingly",
            )
    return PromptSpec()


def _load_captions(path: Path, classes: tuple[ClassEntry, ...]) -> tuple[tuple[str, ...], ...]:
    field = "prompt.captions"
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(field, str(path), f"expected a readable UTF-8 .json or .csv file ({e})") from None
    rows: list[tuple[str, str]] = []
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise InputError(field, str(path), f"expected valid JSON ({e.msg} at line {e.lineno})") from None
        if isinstance(data, dict):
            for cls, caps in data.items():
                caps = [caps] if isinstance(caps, str) else caps
                if not isinstance(caps, list):
                    raise InputError(f"{field}[{cls!r}]", caps, "expected a caption or a list of captions")
                rows += [(str(cls), c) for c in caps]
        elif isinstance(data, list):
            for i, row in enumerate(data):
                if not isinstance(row, dict) or "class" not in row or "caption" not in row:
                    raise InputError(f"{field}[{i}]", row, "expected a mapping with 'class' and 'caption'")
                rows.append((str(row["class"]), row["caption"]))
        else:
            raise InputError(
                field, str(path), "expected a JSON mapping class -> captions or a list of {class, caption}"
            )
    elif path.suffix.lower() == ".csv":
        reader = list(csv.DictReader(text.splitlines()))
        if not reader or not {"class", "caption"} <= set(reader[0]):
            raise InputError(field, str(path), "expected a CSV with a header row holding 'class' and 'caption'")
        rows = [(r["class"], r["caption"]) for r in reader]
    else:
        raise InputError(field, str(path), "expected a .json or .csv captions file")

    index = {c.id: i for i, c in enumerate(classes)}
    index.update({c.name: i for i, c in enumerate(classes)})
    per_class: list[list[str]] = [[] for _ in classes]
    for cls, caption in rows:
        if cls not in index:
            raise InputError(field, cls, f"captions name a class by id or name; {cls!r} is not in the class set")
        if (
            not isinstance(caption, str)
            or not caption.strip()
            or any(ord(ch) < 32 and ch not in "\t\n" for ch in caption)
        ):
            raise InputError(f"{field}[{cls!r}]", caption, "expected a non-empty caption of printable text")
        per_class[index[cls]].append(check_text(caption.strip(), f"{field}[{cls!r}]"))
    for c, caps in zip(classes, per_class):
        if not caps:
            raise InputError(
                field, str(path), f"every class needs at least one caption; class {c.id!r} ({c.name}) has none"
            )
    return tuple(tuple(c) for c in per_class)
