"""Per-model caches in a study's output folder: a rerun with the same settings reuses each model's work.

Each entry is keyed by everything that determines it: for a model's generations, its weights' sha256, the
problems' hash, the prompt template and the generation settings; for an attribution, the weights, the
graph, the scored batch and the attribution settings; for a model's record (what it ran as, so that a
rerun need not load it), its files' sha256 and how it is loaded. The key's sha256 names the file, so a
changed setting never finds an old entry. Files are written atomically (a kill leaves the old file or none)
and verified on reuse: a JSON entry (generations, model record) carries its key and a sha256 of its body, an
attribution file its own hash (attribution/files.py). A file that fails verification is said and
recomputed. `fresh` recomputes every entry and overwrites it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from circuitdyn.attribution import Attribution
from circuitdyn.attribution.files import load_attribution, save_attribution
from circuitdyn.core.atomic import atomic_write_text
from circuitdyn.core.digest import document_sha256
from circuitdyn.core.outputs import ArtifactError
from circuitdyn.graph import Graph
from circuitdyn.study.generation import Generation

logger = logging.getLogger(__name__)

FOLDER = "cache"
SCHEMA = "circuitdyn.study-cache/1"


def key_sha256(key: Mapping[str, Any]) -> str:
    return document_sha256({"schema": SCHEMA, **key})


def _stem(name: str) -> str:
    return name.replace("#", "_seed")


class StudyCache:
    """The caches of one output folder (none without a folder: everything is computed)."""

    def __init__(self, out: Path | None, *, fresh: bool = False) -> None:
        self.folder = out / FOLDER if out is not None else None
        self.fresh = fresh
        self.hits: list[str] = []
        self.misses: list[str] = []

    def path(self, name: str, kind: str, key: Mapping[str, Any], suffix: str) -> Path | None:
        if self.folder is None:
            return None
        return self.folder / f"{_stem(name)}.{kind}.{key_sha256(key)[:32]}{suffix}"

    def has_attribution(self, name: str, key: Mapping[str, Any]) -> bool:
        path = self.path(name, "attribution", key, ".safetensors")
        return path is not None and not self.fresh and path.is_file()

    def generations(self, name: str, key: Mapping[str, Any], compute: Callable[[], list[Generation]]) -> list[Generation]:
        rows = self.cached_generations(name, key)
        if rows is not None:
            return rows
        rows = compute()
        self.put(name, "generations", key, {"rows": _rows(rows)})
        return rows

    def cached_generations(self, name: str, key: Mapping[str, Any]) -> list[Generation] | None:
        body = self.get(name, "generations", key)
        if body is None:
            return None
        return [Generation(tuple(r["prompt_ids"]), tuple(r["response_ids"]), str(r["text"]), bool(r["correct"]),
                           bool(r["stopped"])) for r in body["rows"]]

    def get(self, name: str, kind: str, key: Mapping[str, Any], *, count: bool = True) -> dict[str, Any] | None:
        """A JSON entry's body, or None when there is none, or (said) when it is unreadable, for another key
        or altered. `count`: a generation or an attribution (what `hits` and `misses` count)."""
        path = self.path(name, kind, key, ".json")
        if path is None or self.fresh or not path.is_file():
            return None
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
            body = document["body"]
            if document.get("key") != json.loads(json.dumps(dict(key))):
                raise ValueError("it was written for other settings")
            if document_sha256({"body": body}) != document.get("body_sha256"):
                raise ValueError("its contents do not match their sha256 (altered or damaged)")
        except (OSError, ValueError, KeyError, TypeError) as err:
            logger.warning("cached %s %s cannot be used (%s): computing it again", kind, path, err)
            return None
        if count:
            self.hits.append(path.name)
        return dict(body)

    def put(self, name: str, kind: str, key: Mapping[str, Any], body: dict[str, Any], *, count: bool = True) -> None:
        path = self.path(name, kind, key, ".json")
        if path is None:
            return
        document = {"schema": SCHEMA, "key": dict(key), "body": body, "body_sha256": document_sha256({"body": body})}
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(document))
        if count:
            self.misses.append(path.name)

    def attribution(self, name: str, key: Mapping[str, Any], graph: Graph,
                    compute: Callable[[], Attribution]) -> Attribution:
        path = self.path(name, "attribution", key, ".safetensors")
        if path is not None and not self.fresh and path.is_file():
            try:
                attr = load_attribution(path, expected_graph=graph)
                self.hits.append(path.name)
                return attr
            except ArtifactError as err:
                logger.warning("cached attribution %s cannot be used (%s): computing it again", path, err)
        attr = compute()
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            save_attribution(attr, path)
            self.misses.append(path.name)
            attr = load_attribution(path, expected_graph=graph)  # what a rerun reads: both runs give one result
        return attr


def _rows(rows: list[Generation]) -> list[dict[str, Any]]:
    return [{"prompt_ids": list(g.prompt_ids), "response_ids": list(g.response_ids), "text": g.text,
             "correct": g.correct, "stopped": g.stopped} for g in rows]
