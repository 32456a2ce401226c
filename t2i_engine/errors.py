"""Errors raised for bad input, before any expensive work starts.

Every message names the input (a recipe field, a flag, a file), the bad value, and what would be
accepted, on one line. The CLI turns them into exit code 2.
"""

from __future__ import annotations

import reprlib


class InputError(ValueError):
    """Bad user input: a recipe field, a flag, a file or an output folder."""

    def __init__(self, field: str, value: object, allowed: str):
        self.field, self.value, self.allowed = field, value, allowed
        shown = _short(value)
        super().__init__(f"{field}: {shown} is not allowed; {allowed}")


class ModelUnavailable(InputError):
    """The weights of a registry model are neither on disk nor reachable."""


_REPR = reprlib.Repr()
_REPR.maxstring, _REPR.maxother, _REPR.maxlevel = 100, 100, 3


def _short(value: object, limit: int = 120) -> str:
    # reprlib bounds the work too: a YAML alias bomb must not take minutes to print.
    text = _REPR.repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_text(value: str, field: str) -> str:
    """Text must be encodable as UTF-8 (a lone surrogate from JSON/YAML escapes is not)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InputError(field, value, "expected text encodable as UTF-8 (no lone surrogate escapes)") from None
    return value
