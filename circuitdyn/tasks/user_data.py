"""A task from user data: records with clean, corrupt, answer, foil (a list of dicts or a JSONL file)."""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from circuitdyn.tasks.base import Split, TaskError, TaskExample
from circuitdyn.tasks.jsonl import read_jsonl

REQUIRED = ("clean", "corrupt", "answer", "foil")


@dataclass(frozen=True)
class UserTask:
    records: tuple[TaskExample, ...]
    name: str = "user"
    default_metric: str = "logit_diff"

    def __post_init__(self) -> None:
        if not self.records:
            raise TaskError("the user dataset is empty: give at least one record with " + ", ".join(REQUIRED))

    def examples(self, n: int, *, seed: int = 0, split: Split | str = Split.TEST) -> list[TaskExample]:
        """The first n records (all of them when n >= len); `seed` shuffles, `split` is ignored."""
        if n < 1:
            raise TaskError(f"n must be >= 1, got {n}")
        items = list(self.records)
        if seed:
            random.Random(seed).shuffle(items)
        return items[:n]

    def reward(self, example: TaskExample, completion: str) -> float:
        return float(completion.strip().startswith(example.answer.strip()))


def from_records(records: Iterable[Mapping[str, Any]], *, name: str = "user") -> UserTask:
    examples = []
    for i, rec in enumerate(records):
        if not isinstance(rec, Mapping):
            raise TaskError(f"record {i} is a {type(rec).__name__}, expected a dict with keys {REQUIRED}")
        missing = [k for k in REQUIRED if k not in rec]
        if missing:
            raise TaskError(f"record {i} lacks {missing}; every record needs {list(REQUIRED)}")
        meta = {k: v for k, v in rec.items() if k not in REQUIRED}
        try:
            examples.append(TaskExample(rec["clean"], rec["corrupt"], rec["answer"], rec["foil"], meta=meta))
        except TaskError as err:
            raise TaskError(f"record {i}: {err}") from None
    return UserTask(tuple(examples), name=name)


def from_jsonl(path: str | Path, *, name: str | None = None) -> UserTask:
    return from_records([row for _, row in read_jsonl(path)], name=name or Path(path).stem)
