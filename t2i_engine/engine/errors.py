"""Errors raised for bad input, before any expensive work starts.

Every message names the input (a recipe field, a flag, a file), the bad value, and what would be
accepted, on one line. The CLI turns them into exit code 2.
"""

from __future__ import annotations


class InputError(ValueError):
    """Bad user input: a recipe field, a flag, a file or an output folder."""

    def __init__(self, field: str, value: object, allowed: str):
        self.field, self.value, self.allowed = field, value, allowed
        shown = _short(value)
        super().__init__(f"{field}: {shown} is not allowed; {allowed}")


class ModelUnavailable(InputError):
    """The weights of a registry model are neither on disk nor reachable."""


def _short(value: object, limit: int = 120) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
