"""Output paths and artifacts: refuse a path that cannot be written before any work is done, and a name that
would escape its output folder; one error for files that are not valid circuitdyn artifacts."""

from __future__ import annotations

import os
from pathlib import Path


class ArtifactError(ValueError):
    """A file that is not a valid circuitdyn artifact; the message names the file."""


def safe_child(root: Path, name: str) -> Path:
    """`root / name`, refusing names that would escape `root` (absolute paths, '..')."""
    target = (root / name).resolve()
    if not target.is_relative_to(root.resolve()):
        raise ArtifactError(f"refusing to write {name!r}: it escapes the output folder {root}")
    return target


def check_output_file(path: str | Path, suffix: str = ".safetensors") -> Path:
    """Refuse an output path that cannot be written, before any work is done."""
    path = Path(path)
    if path.is_dir():
        raise ArtifactError(f"{path} is a folder; give a file name, e.g. {path / ('attribution' + suffix)}")
    if path.suffix != suffix:
        raise ArtifactError(f"{path}: the output must be a {suffix} file")
    parent = path.parent if str(path.parent) else Path(".")
    existing = next((p for p in (parent, *parent.parents) if p.exists()), Path("."))
    if not existing.is_dir() or not os.access(existing, os.W_OK):
        raise ArtifactError(f"{path}: cannot create it ({existing} is not a writable folder)")
    return path
