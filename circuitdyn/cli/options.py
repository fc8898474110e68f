"""Command-line options generated from a config dataclass, so the CLI cannot drift from the Python API.

Each field becomes `--field-name` (or the `flag` its metadata names), typed from its default: an Enum gives
choices, a bool a switch (`--x` when the default is False, `--no-x` when it is True), a tuple a repeatable
option, an int or a float a number (a None default takes the `type` its metadata names). Its help is the
field's `help` metadata and the default the field's.
Options that were not given are left out of the namespace, so `config_kwargs` passes only what the user
set and the dataclass keeps its defaults and its own validation. A field with `cli: False` in its metadata
has no option.
"""

from __future__ import annotations

import argparse
from dataclasses import MISSING, Field, fields
from enum import Enum
from typing import Any

from circuitdyn.core.fields import field_default, field_help

PREFIX = "config."  # namespace destinations of generated options: never clash with a command's own


def _flag(f: Field[Any], default: Any) -> str:
    name = f.metadata.get("flag")
    if name:
        return str(name)
    stem = f.name.replace("_", "-")
    return f"--no-{stem}" if default is True else f"--{stem}"


def add_config_options(parser: argparse.ArgumentParser, kind: type, *, skip: tuple[str, ...] = ()) -> None:
    """One option per field of `kind` (see the module docstring), except the fields in `skip`."""
    group = parser.add_argument_group(f"{kind.__name__} fields")
    for f in fields(kind):
        if f.name in skip or f.metadata.get("cli", True) is False:
            continue
        default = field_default(f)
        kw: dict[str, Any] = {"dest": PREFIX + f.name, "default": argparse.SUPPRESS,
                              "help": (field_help(f) or f.name.replace("_", " ")) +
                              ("" if default is MISSING else f" (default: {_shown(default)})")}
        plain = f.default if f.default is not MISSING else None
        if isinstance(plain, Enum):
            kw["choices"] = [m.value for m in type(plain)]
        elif isinstance(default, bool):
            kw["action"] = "store_false" if default else "store_true"
            if default:
                kw["help"] = f"switch off {f.name} ({field_help(f) or f.name.replace('_', ' ')}; on by default)"
        elif isinstance(default, tuple):
            kw["action"] = "append"
            if "choices" in f.metadata and "item" not in f.metadata:
                kw["choices"] = list(f.metadata["choices"])
            else:
                kw["metavar"] = f.metadata.get("metavar", "VALUE")
        elif default is None and "type" in f.metadata:  # optional: None means "chosen at run time"
            kw.update(type=f.metadata["type"], metavar=f.name.upper())
        elif isinstance(default, (int, float)):
            kw.update(type=type(default), metavar=f.name.upper())
        group.add_argument(_flag(f, default), **kw)


def _shown(default: Any) -> str:
    return ",".join(map(str, default)) if isinstance(default, tuple) else str(default)


def config_kwargs(args: argparse.Namespace, kind: type) -> dict[str, Any]:
    """The fields of `kind` the user gave on the command line (repeatable ones as tuples)."""
    given = {}
    for f in fields(kind):
        if hasattr(args, PREFIX + f.name):
            value = getattr(args, PREFIX + f.name)
            if isinstance(value, list):  # repeated and/or comma-separated: one tuple, each item converted
                item = f.metadata.get("item", str)
                try:
                    value = tuple(item(v.strip()) for text in value for v in text.split(",") if v.strip())
                except ValueError:
                    raise ValueError(f"--{f.name.replace('_', '-')} takes {item.__name__} values, got {value!r}") from None
            given[f.name] = value
    return given
