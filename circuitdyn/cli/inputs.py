"""What the command line reads: argument types, LABEL=MODEL and KEY=VALUE pairs, JSON files, help format.
Every failure is a ValueError (or argparse's own error) that names the input and the fix."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

DTYPES = ("float32", "bfloat16", "float16")


def count(minimum: int) -> Any:
    """An argparse type: an integer >= minimum."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value
    parse.__name__ = f"integer >= {minimum}"
    return parse


def out_path(text: str) -> str:
    """An argparse type: an output path, `~` expanded; the empty string (an unset shell variable) refused."""
    if not text.strip():
        raise argparse.ArgumentTypeError("empty path (an unset shell variable?); give a file or folder name")
    return str(Path(text).expanduser())


def parse_tuned(pairs: list[str], option: str = "--tuned", form: str = "LABEL=MODEL") -> dict[str, list[str]]:
    """LABEL=VALUE pairs; a label given twice holds several values (seeds)."""
    out: dict[str, list[str]] = {}
    for pair in pairs:
        label, sep, spec = pair.partition("=")
        if not sep or not label or not spec:
            raise ValueError(f"{option} takes {form} (e.g. grpo=runs/grpo/final), got {pair!r}")
        out.setdefault(label, []).append(spec)  # a label given twice holds several seeds
    return out


def parse_sets(pairs: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise ValueError(f"--set takes key=value, got {pair!r}")
        key, raw = pair.split("=", 1)
        try:
            out[key] = json.loads(raw)
        except json.JSONDecodeError:
            out[key] = raw
    return out


def read_json(path: str, what: str) -> Any:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"{what} {path}: no such file") from None
    except IsADirectoryError:
        raise ValueError(f"{what} {path} is a folder; give a JSON file") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{what} {path} is not valid JSON ({err})") from None


def read_json_object(path: str, what: str) -> dict[str, Any]:
    value = read_json(path, what)
    if not isinstance(value, dict):
        raise ValueError(f"{what} {path} must hold a JSON object of config fields, got {type(value).__name__}")
    return value


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Descriptions as written, and every option's default."""
