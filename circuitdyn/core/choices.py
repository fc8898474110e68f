"""Parsing string choices into Enums, with one error message everywhere."""

from __future__ import annotations

from enum import Enum
from typing import Any, TypeVar

E = TypeVar("E", bound=Enum)


def parse_choice(kind: type[E], value: Any, name: str, error: type[Exception] = ValueError) -> E:
    """`kind(value)`, or `error` naming the field and the valid values."""
    try:
        return kind(value)
    except ValueError:
        raise error(f"unknown {name} {value!r}; choose one of {[m.value for m in kind]}") from None
