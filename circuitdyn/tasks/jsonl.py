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
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        lineno = raw[:err.start].count(b"\n") + 1
        raise TaskError(f"{path}:{lineno}: not UTF-8 (byte {raw[err.start]:#04x}; JSONL files are UTF-8): convert it, "
                        f"e.g. iconv -f latin1 -t utf-8 {path} > converted.jsonl") from None
    rows = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append((lineno, json.loads(line)))
        except json.JSONDecodeError as err:
            raise TaskError(f"{path}:{lineno}: not valid JSON ({err.msg})") from None
    return rows
