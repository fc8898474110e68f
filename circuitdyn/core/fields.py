"""Field checks shared by every frozen config (attribution, study, training), and the one-line help of each
field that the command line prints and turns into options.

Each check takes the error class of its caller's layer (AttributionError, StudyError, ConfigError), so a
message names the field and the fix whatever config it comes from.
"""

from __future__ import annotations

import math
from dataclasses import MISSING, Field, fields
from enum import Enum
from typing import Any


class ConfigError(ValueError):
    """A config field out of range or an inconsistent combination; the message names the field."""


def is_integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_finite_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_numbers(obj: Any, error: type[Exception] = ConfigError) -> None:
    """Integer fields hold integers (not 2.5, not True), float fields finite numbers (not NaN, not inf);
    `int | None` and `float | None` fields may also be None."""
    for f in fields(obj):
        v = getattr(obj, f.name)
        kind = str(f.type).removesuffix(" | None")
        if kind not in ("int", "float") or (str(f.type).endswith(" | None") and v is None):
            continue
        ok = is_integer(v) if kind == "int" else is_finite_number(v)
        if not ok:
            raise error(f"{f.name} must be {'an integer' if kind == 'int' else 'a finite number'}, got {v!r}")


def check_positive(obj: Any, *names: str, error: type[Exception] = ConfigError) -> None:
    """Each named field is a number > 0."""
    for n in names:
        v = getattr(obj, n)
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not v > 0:
            raise error(f"{n} must be > 0, got {v!r}")


def field_default(f: Field[Any]) -> Any:
    """A field's default as the command line shows it (an Enum by its value; MISSING for none)."""
    default = f.default if f.default is not MISSING else (f.default_factory() if f.default_factory is not MISSING
                                                          else MISSING)
    return default.value if isinstance(default, Enum) else default


def field_help(f: Field[Any]) -> str:
    return str(f.metadata.get("help", ""))


def config_help(kind: type) -> str:
    """One line per field of a config class: name, type, default and its `help` metadata (the CLI's --help)."""
    rows = []
    for f in fields(kind):
        text = field_help(f)
        rows.append(f"  {f.name:<30} {str(f.type):<22} default {field_default(f)!r}" + (f"  {text}" if text else ""))
    return "\n".join(rows)
