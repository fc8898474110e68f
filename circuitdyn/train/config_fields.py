"""Field checks shared by the frozen training configs, and the one-line help of each field (the CLI's)."""

from __future__ import annotations

import math
from dataclasses import fields
from enum import Enum
from typing import Any


class ConfigError(ValueError):
    """A config field out of range or an inconsistent combination; the message names the field."""


def _enum(kind: type[Enum], value: Any, name: str) -> Any:
    try:
        return kind(value)
    except ValueError:
        raise ConfigError(f"{name}={value!r} is not valid; choose one of {[m.value for m in kind]}") from None


def _check_numbers(obj: Any) -> None:
    """Integer fields hold integers (not 2.5, not True), float fields finite numbers (not NaN, not inf)."""
    for f in fields(obj):
        v = getattr(obj, f.name)
        if f.type not in ("int", "float", "float | None") or (f.type == "float | None" and v is None):
            continue
        ok = isinstance(v, int) and not isinstance(v, bool) if f.type == "int" else \
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
        if not ok:
            raise ConfigError(f"{f.name} must be {'an integer' if f.type == 'int' else 'a finite number'}, got {v!r}")


def _positive(obj: Any, *names: str) -> None:
    for n in names:
        v = getattr(obj, n)
        if not isinstance(v, (int, float)) or v <= 0:
            raise ConfigError(f"{n} must be > 0, got {v!r}")


def config_help(kind: type) -> str:
    """One line per field of a config class: name, type, default and its `help` metadata (the CLI's --help)."""
    rows = []
    for f in fields(kind):
        default = f.default.value if isinstance(f.default, Enum) else f.default
        text = f.metadata.get("help", "")
        rows.append(f"  {f.name:<30} {str(f.type):<22} default {default!r}" + (f"  {text}" if text else ""))
    return "\n".join(rows)
