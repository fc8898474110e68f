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


def output_path(path: str | Path, what: str = "output") -> Path:
    """`path` with `~` expanded, refusing the empty path (what `--out "$RUN"` gives when RUN is unset)."""
    if not str(path).strip():
        raise ArtifactError(f"the {what} path is empty (an unset shell variable?); give a file or folder name")
    return Path(path).expanduser()


def _creatable(path: Path, *, folder: bool = False) -> None:
    """Refuse a path whose folders cannot be made: tried for real (what permission bits do not tell, e.g.
    /proc or a read-only mount), and the folders made for the trial removed again."""
    parent = path.parent if str(path.parent) else Path(".")
    existing = next((p for p in (parent, *parent.parents) if p.exists()), Path("."))
    if not existing.is_dir() or not os.access(existing, os.W_OK):
        raise ArtifactError(f"{path}: cannot create it ({existing} is not a writable folder)")
    chain = [p for p in ((path,) if folder else ()) + (parent, *parent.parents) if not p.exists()]
    made: list[Path] = []
    try:
        for step in reversed(chain):
            step.mkdir()
            made.append(step)
    except OSError as err:
        raise ArtifactError(f"{path}: cannot create it ({err.strerror or err}); give a folder you can write") from None
    finally:
        for step in reversed(made):
            step.rmdir()


def check_output_folder(path: str | Path, what: str = "output folder") -> Path:
    """Refuse an output folder that cannot be written (empty path, an existing file, under a file, no write
    permission), before any work is done. Returns it with `~` expanded."""
    path = output_path(path, what)
    if path.exists() and not path.is_dir():
        raise ArtifactError(f"{what} {path} exists and is not a folder; give a folder path")
    if path.is_dir():
        if not os.access(path, os.W_OK):
            raise ArtifactError(f"{what} {path} is not writable")
    else:
        _creatable(path, folder=True)
    return path


def check_output_file(path: str | Path, suffix: str = ".safetensors") -> Path:
    """Refuse an output path that cannot be written, before any work is done."""
    path = output_path(path)
    if path.is_dir():
        raise ArtifactError(f"{path} is a folder; give a file name, e.g. {path / ('attribution' + suffix)}")
    if path.suffix != suffix:
        raise ArtifactError(f"{path}: the output must be a {suffix} file")
    _creatable(path)
    return path
