"""Where a warning should point: the first line outside circuitdyn that led to it."""

from __future__ import annotations

import sys
from pathlib import Path

_PACKAGE = str(Path(__file__).resolve().parent.parent)
_WRAPPERS = ("jaxtyping", "beartype", "typeguard")  # run-time type checkers wrap the package's functions


def user_stacklevel() -> int:
    """The `stacklevel` that makes `warnings.warn`, called by the function that calls this, point at the first
    frame outside the package (and outside run-time type-checking wrappers): the user's own line."""
    frame = sys._getframe(1)
    while _wrapper(frame.f_code.co_filename) and frame.f_back is not None:  # a type checker's wrapper of this one
        frame = frame.f_back
    level = 1  # warnings.warn(stacklevel=1) points at the caller's own line
    while frame.f_back is not None and (frame.f_code.co_filename.startswith(_PACKAGE)
                                        or _wrapper(frame.f_code.co_filename)):
        frame, level = frame.f_back, level + 1
    return level


def _wrapper(filename: str) -> bool:
    return any(f"/{w}/" in filename.replace("\\", "/") for w in _WRAPPERS)
