"""Reading JSONL files with errors that name the file and line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from circuitdyn.tasks.base import TaskError


def read_jsonl(path: str | Path) -> list[tuple[int, Any]]:
    """(line number, parsed value) for every non-blank line; TaskError naming the line on bad JSON."""
    path = Path(path)
    if not path.is_file():
        raise TaskError(f"no such JSONL file: {path}")
    rows = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append((lineno, json.loads(line)))
        except json.JSONDecodeError as err:
            raise TaskError(f"{path}:{lineno}: not valid JSON ({err.msg})") from None
    return rows
