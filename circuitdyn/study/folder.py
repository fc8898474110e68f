"""A study's output folder: one study at a time (a lock naming its holder), never two studies' files mixed.

A study records what it is in `study.json` when it starts (labels, status "running", the files that were
there before it) and, when it ends, status "complete" and every file it wrote. A study of the same labels
into that folder resumes it: its per-model caches (study/cache.py) are reused where their settings match,
and its tables are written again. A study of other labels (or into the files of a study from before this
record) is refused unless told to replace it; it then deletes exactly the files the earlier study wrote,
before any work. A study killed part-way leaves status "running": the folder says so, and a rerun resumes.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from circuitdyn.core.atomic import atomic_write_text
from circuitdyn.core.lock import LOCK_FILE, claim_folder
from circuitdyn.study.config import StudyError

MANIFEST = "study.json"
#: what a study writes that marks a folder as holding one (studies from before the manifest)
STUDY_MARKS = ("protocol.json", "tests.csv", "generations.jsonl")
#: what a study from before the manifest wrote, for `replace` to delete
STUDY_FILES = ("protocol.json", "tests.csv", "tests.json", "model_metrics.csv", "model_metrics.json", "report.md",
               "generations.jsonl", "per_layer_*.png", "ecdf_*.png", "deltas_*.png", "attributions/*",
               "generations/*")


def _files(out: Path) -> set[str]:
    return {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file() and p.name != LOCK_FILE}


def _read(out: Path) -> dict[str, Any] | None:
    path = out / MANIFEST
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        return record if isinstance(record, dict) else {}
    except ValueError:
        return {}


def _clear(out: Path, earlier: dict[str, Any] | None) -> None:
    """Delete the earlier study's files: those its record lists, else the files a study writes."""
    listed = (earlier or {}).get("files")
    names = listed if isinstance(listed, list) else \
        [p.relative_to(out).as_posix() for pattern in STUDY_FILES for p in out.glob(pattern)]
    for name in [*names, MANIFEST]:
        target = (out / str(name)).resolve()
        if target.is_relative_to(out.resolve()) and target.is_file():
            target.unlink()
    for folder in sorted((p for p in out.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
        if not any(folder.iterdir()):
            folder.rmdir()


@contextmanager
def study_folder(out: Path, labels: Sequence[str], *, replace: bool) -> Iterator[None]:
    """Hold `out` for one study: refuse (or, with `replace`, clear) an earlier study's files, mark this one
    running, and on success record it complete with the files it wrote."""
    with claim_folder(out, "study"):
        earlier = _read(out)
        legacy = earlier is None and any((out / mark).exists() for mark in STUDY_MARKS)
        resume = earlier is not None and earlier.get("labels") == list(labels) and not replace
        if (earlier is not None or legacy) and not resume:
            what = (f"a study of {', '.join(earlier.get('labels', [])) or '?'} ({earlier.get('status', 'unknown')})"
                    if earlier else "a study's files")
            if not replace:
                raise StudyError(f"{out} already holds {what}: writing another study there would mix their files; "
                                 "write to a new folder, or pass replace=True (circuitdyn study --replace) to "
                                 "replace it whole")
            _clear(out, earlier)
        before = _files(out) - {MANIFEST}
        if resume and earlier is not None:  # the files that were there before the first try, not its own
            kept = earlier.get("preexisting")
            before = set(kept) if isinstance(kept, list) else before - set(earlier.get("files") or [])
        record: dict[str, Any] = {"status": "running", "labels": list(labels), "preexisting": sorted(before),
                                  "started": time.strftime("%Y-%m-%d %H:%M:%S"), "resumed": resume}
        atomic_write_text(out / MANIFEST, json.dumps(record, indent=1))
        yield
        record.update(status="complete", finished=time.strftime("%Y-%m-%d %H:%M:%S"),
                      files=sorted(_files(out) - before - {MANIFEST}))
        atomic_write_text(out / MANIFEST, json.dumps(record, indent=1))
