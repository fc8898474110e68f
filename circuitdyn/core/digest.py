"""sha256 digests of what an artifact records about itself: a JSON document without its own hash field, and a
file's bytes."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

HASH_FIELD = "sha256"


def document_sha256(document: dict[str, Any], *, extra: str = "") -> str:
    """The sha256 of `document` as canonical JSON, its own `sha256` field left out, after `extra` (e.g. the
    digest of tensors stored beside it)."""
    body = json.dumps({k: v for k, v in document.items() if k != HASH_FIELD}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256((extra + body).encode()).hexdigest()


def file_sha256(path: Path) -> str:
    """The sha256 of a file's bytes, read in 16 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()
