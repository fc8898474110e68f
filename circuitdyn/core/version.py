"""circuitdyn's installed version, as the command line and the pages it writes name it."""

from __future__ import annotations

from importlib import metadata


def package_version() -> str:
    """The installed distribution's version, or "unknown (not installed)" when run from a bare source tree."""
    try:
        return metadata.version("circuitdyn")
    except metadata.PackageNotFoundError:
        return "unknown (not installed)"
