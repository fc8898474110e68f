"""Problems a model answers by generating text, and the verifier that grades the answer.

The RL-circuitry study lets each model answer by greedy generation and keeps the problems that every
compared model answers correctly. A `Problem` is the question and its reference final answer; a
`ProblemSet` yields problems and grades responses. Any clean/corrupt `Task` becomes a ProblemSet through
`TaskProblems` (its prompt is the question, its reward the verifier).

Answers are compared after normalisation: numbers (commas, `$`, `%`, trailing periods, decimals and
fractions, LaTeX `\\frac`) compare as exact rationals, anything else as lower-cased text without spaces.
The final answer of a response is the text after its last `####`, else its last `\\boxed{...}`, else its
last number.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Protocol, runtime_checkable

from circuitdyn.tasks.base import Task, TaskError, TaskExample, distinct_examples

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:[eE][+-]?\d+)?(?:\s*/\s*\d+)?|-?\.\d+")
_FRAC = re.compile(r"\\[dt]?frac\s*\{([^{}]*)\}\s*\{([^{}]*)\}")


@dataclass(frozen=True)
class Problem:
    """A question and its reference final answer (already extracted: "72", "3/4", "x^2")."""

    question: str
    answer: str
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        if not isinstance(self.question, str) or not self.question.strip():
            raise TaskError(f"Problem.question must be a non-empty string, got {self.question!r}")
        if not isinstance(self.answer, str) or not self.answer.strip():
            raise TaskError(f"Problem.answer must be a non-empty string, got {self.answer!r} for {self.question[:60]!r}")


@runtime_checkable
class ProblemSet(Protocol):
    """What the study needs: deterministic problems and a verifier of generated responses."""

    @property
    def name(self) -> str: ...

    def problems(self, n: int, *, seed: int = 0) -> list[Problem]:
        """`n` deterministic problems (fewer when the set is smaller)."""
        ...

    def verify(self, problem: Problem, response: str) -> bool:
        """True when the response's final answer is the problem's answer."""
        ...


def boxed_content(text: str) -> str:
    """The content of the last \\boxed{...} (balanced braces), or the text itself."""
    start = text.rfind("\\boxed")
    if start < 0:
        return text
    i = text.find("{", start)
    if i < 0:
        return text
    depth, j = 0, i
    while j < len(text):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i + 1:j]
        j += 1
    return text[i + 1:]


def parse_number(text: str) -> Fraction | None:
    """An exact rational for a number written as 1,234 / -3.5 / 1e3 / 3/4 / \\frac{3}{4} / $12 / 50%; else None."""
    t = _FRAC.sub(r"(\1)/(\2)", text.strip())
    t = t.replace("$", "").replace("\\%", "").replace("%", "").replace("\\!", "").replace(" ", "")
    t = t.replace("{", "").replace("}", "").rstrip(".").replace("(", "").replace(")", "")
    if not re.fullmatch(r"-?(\d[\d,]*(\.\d+)?|\.\d+)([eE][+-]?\d+)?(/-?\d+(\.\d+)?)?", t):
        return None
    if "," in t and not re.fullmatch(r"-?\d{1,3}(,\d{3})+(\.\d+)?(/.*)?", t):
        return None  # "1,2" is a list, not a number
    t = t.replace(",", "")
    try:
        if "/" in t:
            num, den = t.split("/")
            return Fraction(num) / Fraction(den) if Fraction(den) != 0 else None
        return Fraction(t)
    except (ValueError, ZeroDivisionError):
        return None


def normalize_answer(text: str) -> str:
    """A canonical string for comparing answers: "n/d" in lowest terms for numbers, else compact lower text."""
    inner = boxed_content(text).strip()
    number = parse_number(inner)
    if number is not None:
        return str(number)
    compact = _FRAC.sub(r"\1/\2", inner)
    for token in ("\\left", "\\right", "\\,", "\\!", "$", " ", "\\dfrac", "\\tfrac"):
        compact = compact.replace(token, "")
    while True:  # x^{2} -> x^2, \sqrt{2} -> \sqrt2: braces that group a single token
        simpler = re.sub(r"\{([^{}]?)\}", r"\1", compact)
        if simpler == compact:
            break
        compact = simpler
    return compact.rstrip(".").lower()


def final_answer(response: str) -> str | None:
    """The final answer a response states: after its last '####', in its last \\boxed{}, or its last number."""
    if "####" in response:
        tail = response.rsplit("####", 1)[1].strip()
        return tail.splitlines()[0].strip() if tail else None
    if "\\boxed" in response:
        return boxed_content(response[response.rfind("\\boxed"):]).strip()
    numbers = _NUMBER.findall(response)
    return numbers[-1].strip() if numbers else None


def answers_match(reference: str, response: str) -> bool:
    """True when the final answer of `response` equals `reference` after normalisation."""
    stated = final_answer(response)
    return stated is not None and normalize_answer(stated) == normalize_answer(reference)


def problems_sha256(problems: Sequence[Problem]) -> str:
    """Hash of the questions and answers, in order: which data a study ran on."""
    payload = json.dumps([[p.question, p.answer] for p in problems], ensure_ascii=False)
    return hashlib.sha256(payload.encode()).hexdigest()


@dataclass(frozen=True)
class TaskProblems:
    """A clean/corrupt Task seen as a ProblemSet: the clean prompt is the question, the task's reward the
    verifier (correct when the reward is 1). Problems come from the task's test split."""

    task: Task

    @property
    def name(self) -> str:
        return self.task.name

    def problems(self, n: int, *, seed: int = 0) -> list[Problem]:
        """`n` distinct problems (fewer when the test split has fewer): a task's examples are drawn with
        replacement, and a repeated question would count twice in the study's statistics."""
        return [Problem(ex.clean, ex.answer, {"example": ex}) for ex in distinct_examples(self.task, n, seed=seed)]

    def verify(self, problem: Problem, response: str) -> bool:
        example = problem.meta.get("example") or TaskExample(problem.question, problem.question, problem.answer, problem.answer)
        return self.task.reward(example, response) >= 1.0
