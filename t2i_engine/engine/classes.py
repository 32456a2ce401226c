"""Class sets: where the class names and ids of a dataset come from.

A class set is a tuple of `ClassEntry(id, name)`; a class's index is its position. Sources:

- a built-in set by name (`digits`: "zero" ... "nine", ids "0" ... "9");
- an inline list of names, or of `{id, name}` mappings;
- a file: `.txt` (one name per line, `#` comments), `.json` (a list of names, a list of
  `{id, name}`, or a mapping id -> name), `.csv` (a header with `name` and optionally `id`);
- a Tiny-ImageNet or ImageNet folder holding `wnids.txt` and `words.txt` (the name of a class is
  the first synonym of its `words.txt` line, as the paper uses).

Ids become part of sample keys and so of file names inside shards: they are restricted to
`[A-Za-z0-9_-]`. Where a source has no ids they are derived from the names (a slug). Names are
prompts, so they may hold spaces and punctuation, but never a path separator or a control
character.
"""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError, check_text

BUILTIN_SETS: dict[str, tuple[tuple[str, str], ...]] = {
    "digits": tuple(
        (str(i), name)
        for i, name in enumerate(["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"])
    ),
}

_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
_MAX_NAME = 200


@dataclass(frozen=True)
class ClassEntry:
    id: str
    name: str


def load_classes(source: object, *, field: str = "classes", base_dir: Path | None = None) -> tuple[ClassEntry, ...]:
    """Resolve a `classes` recipe value into validated class entries."""
    if isinstance(source, str) and source in BUILTIN_SETS:
        pairs = list(BUILTIN_SETS[source])
    elif isinstance(source, list):
        pairs = _pairs_from_list(source, field)
    elif isinstance(source, str):
        pairs = _pairs_from_path(_resolve(source, base_dir), field)
    else:
        raise InputError(
            field,
            source,
            f"expected a built-in set ({', '.join(BUILTIN_SETS)}), a list of names, or a path to a .txt/.json/.csv "
            "file or a wnids.txt+words.txt folder",
        )
    return _validate(pairs, field)


def _resolve(path: str, base_dir: Path | None) -> Path:
    p = Path(path).expanduser()
    if not p.is_absolute() and base_dir is not None:
        p = base_dir / p
    return p


def _pairs_from_list(items: list, field: str) -> list[tuple[str | None, str]]:
    pairs: list[tuple[str | None, str]] = []
    for i, item in enumerate(items):
        if isinstance(item, str):
            pairs.append((None, item))
        elif isinstance(item, dict) and set(item) <= {"id", "name"} and "name" in item:
            pairs.append((None if item.get("id") is None else str(item["id"]), item["name"]))
        else:
            raise InputError(
                f"{field}[{i}]", item, "expected a class name or a mapping with 'name' and optionally 'id'"
            )
    return pairs


def _pairs_from_path(path: Path, field: str) -> list[tuple[str | None, str]]:
    if path.is_dir():
        return _pairs_from_imagenet_folder(path, field)
    if not path.is_file():
        raise InputError(
            field,
            str(path),
            f"expected a built-in set ({', '.join(BUILTIN_SETS)}), an existing class file or folder, or a list of "
            "names (on the command line: --classes cat,dog)",
        )
    suffix = path.suffix.lower()
    text = _read_text(path, field)
    if suffix == ".txt":
        return [
            (None, line.strip()) for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")
        ]
    if suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise InputError(field, str(path), f"expected valid JSON ({e.msg} at line {e.lineno})") from None
        if isinstance(data, dict):
            return [(str(k), v) for k, v in data.items()]
        if isinstance(data, list):
            return _pairs_from_list(data, f"{field} ({path.name})")
        raise InputError(
            field, str(path), "expected a JSON list of names, a list of {id, name}, or a mapping id -> name"
        )
    if suffix == ".csv":
        rows = list(csv.DictReader(text.splitlines()))
        if not rows or "name" not in rows[0]:
            raise InputError(field, str(path), "expected a CSV with a header row holding 'name' (and optionally 'id')")
        return [(r.get("id") or None, r["name"]) for r in rows]
    raise InputError(
        field, str(path), "expected a .txt, .json or .csv class file, or a folder with wnids.txt and words.txt"
    )


def _pairs_from_imagenet_folder(path: Path, field: str) -> list[tuple[str | None, str]]:
    wnids_file, words_file = path / "wnids.txt", path / "words.txt"
    for f in (wnids_file, words_file):
        if not f.is_file():
            raise InputError(
                field,
                str(path),
                f"a class folder must hold wnids.txt and words.txt (Tiny-ImageNet/ImageNet layout); {f.name} is "
                "missing",
            )
    words: dict[str, str] = {}
    for line in _read_text(words_file, field).splitlines():
        wnid, _, synonyms = line.partition("\t")
        if synonyms:
            words[wnid.strip()] = synonyms.split(",")[0].strip()
    pairs = []
    for wnid in (w.strip() for w in _read_text(wnids_file, field).splitlines()):
        if not wnid:
            continue
        if wnid not in words:
            raise InputError(field, wnid, f"every id in {wnids_file} needs a line in {words_file}")
        pairs.append((wnid, words[wnid]))
    return pairs


def _read_text(path: Path, field: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(field, str(path), f"expected a readable UTF-8 file ({e})") from None


def slug(name: str) -> str:
    """A file-name-safe id derived from a class name ("Granny Smith" -> "granny-smith")."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:64]


def _validate(pairs: list[tuple[str | None, str]], field: str) -> tuple[ClassEntry, ...]:
    if not pairs:
        raise InputError(field, [], "expected at least one class")
    entries, seen_names, seen_ids = [], {}, {}
    for i, (cid, name) in enumerate(pairs):
        where = f"{field}[{i}]"
        if not isinstance(name, str) or not name.strip():
            raise InputError(f"{where}.name", name, "expected a non-empty class name")
        name = check_text(name.strip(), f"{where}.name")
        if (
            len(name) > _MAX_NAME
            or any(c in name for c in "/\\")
            or any(ord(c) < 32 or ord(c) == 127 for c in name)
            or name in {".", ".."}
        ):
            raise InputError(
                f"{where}.name",
                name,
                f"class names are prompts of at most {_MAX_NAME} characters with no '/', '\\' or control characters",
            )
        cid = cid.strip() if cid is not None else (slug(name) or f"class{i}")
        if not _ID_RE.fullmatch(cid):
            raise InputError(
                f"{where}.id",
                cid,
                "class ids become file names: 1-64 characters of A-Z a-z 0-9 _ -, starting with a letter or digit",
            )
        if name.lower() in seen_names:
            raise InputError(
                f"{where}.name", name, f"class names must be unique; the same name is class {seen_names[name.lower()]}"
            )
        if cid in seen_ids:
            raise InputError(
                f"{where}.id",
                cid,
                f"class ids must be unique; the same id is class {seen_ids[cid]} (ids derived from names must "
                "differ too)",
            )
        seen_names[name.lower()], seen_ids[cid] = i, i
        entries.append(ClassEntry(cid, name))
    return tuple(entries)
