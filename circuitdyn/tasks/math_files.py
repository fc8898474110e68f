"""Math problems from JSONL files in the GSM8K and MATH formats, offline.

GSM8K: one object per line with `question` and `answer`, the final answer after `####` in `answer`.
MATH: `problem` and `solution`, the final answer in the solution's last `\\boxed{...}` (an `answer` field,
when present, wins). Answers are graded with `answers_match` (numbers, commas, fractions, `\\frac`).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from circuitdyn.tasks.base import TaskError
from circuitdyn.tasks.jsonl import read_jsonl
from circuitdyn.tasks.problems import Problem, answers_match, boxed_content

Format = Literal["gsm8k", "math"]


def _read_objects(path: Path) -> list[tuple[int, dict[str, Any]]]:
    rows = read_jsonl(path)
    for lineno, row in rows:
        if not isinstance(row, dict):
            raise TaskError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
    if not rows:
        raise TaskError(f"{path}: no problems in the file")
    return rows


def _field(path: Path, lineno: int, row: dict[str, Any], key: str, fmt: str) -> str:
    value = row.get(key)
    if not isinstance(value, str) or not value.strip():
        raise TaskError(f"{path}:{lineno}: a {fmt} record needs a non-empty string `{key}` (has {sorted(row)})")
    return value


def _gsm8k(path: Path, lineno: int, row: dict[str, Any]) -> Problem:
    question = _field(path, lineno, row, "question", "GSM8K")
    solution = _field(path, lineno, row, "answer", "GSM8K")
    if "####" not in solution:
        raise TaskError(f"{path}:{lineno}: the GSM8K `answer` has no '####' before its final answer")
    final = solution.rsplit("####", 1)[1].strip()
    if not final:
        raise TaskError(f"{path}:{lineno}: nothing after '####' in the GSM8K `answer`")
    return Problem(question, final, {"line": lineno, "solution": solution})


def _math(path: Path, lineno: int, row: dict[str, Any]) -> Problem:
    question = _field(path, lineno, row, "problem", "MATH")
    if isinstance(row.get("answer"), str) and row["answer"].strip():
        final = row["answer"].strip()
    else:
        solution = _field(path, lineno, row, "solution", "MATH")
        if "\\boxed" not in solution:
            raise TaskError(f"{path}:{lineno}: the MATH `solution` has no \\boxed{{...}} final answer")
        final = boxed_content(solution[solution.rfind("\\boxed"):]).strip()
    meta: dict[str, Any] = {"line": lineno, **{k: row[k] for k in ("level", "type") if k in row}}
    return Problem(question, final, meta)


@dataclass(frozen=True)
class MathFile:
    """Problems read from a GSM8K- or MATH-format JSONL file; `instruction` is appended to each question."""

    path: Path
    format: Format
    instruction: str = ""
    name: str = "math_file"

    def __post_init__(self) -> None:
        if self.format not in ("gsm8k", "math"):
            raise TaskError(f"unknown format {self.format!r}; use 'gsm8k' or 'math'")
        object.__setattr__(self, "path", Path(self.path))

    def all_problems(self) -> list[Problem]:
        parse = _gsm8k if self.format == "gsm8k" else _math
        problems = [parse(self.path, lineno, row) for lineno, row in _read_objects(self.path)]
        if self.instruction:
            problems = [Problem(f"{p.question} {self.instruction}", p.answer, p.meta) for p in problems]
        return problems

    def problems(self, n: int, *, seed: int = 0) -> list[Problem]:
        """The first n problems in file order; a non-zero seed shuffles them first."""
        if not isinstance(n, int) or n < 1:
            raise TaskError(f"n must be a positive integer, got {n!r}")
        items = self.all_problems()
        if seed:
            random.Random(seed).shuffle(items)
        return items[:n]

    def verify(self, problem: Problem, response: str) -> bool:
        return answers_match(problem.answer, response)


def load_gsm8k(path: str | Path, *, instruction: str = "") -> MathFile:
    return MathFile(Path(path), "gsm8k", instruction, name=Path(path).stem)


def load_math(path: str | Path, *, instruction: str = "") -> MathFile:
    return MathFile(Path(path), "math", instruction, name=Path(path).stem)
