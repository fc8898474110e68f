"""Grade-school arithmetic word problems, generated offline from a seed, with a verifier.

Several templates at four difficulty levels: 0, one step on single digits; 1, one step (add or take
away); 2, two steps (buy several of a price, then pay or share); 3, three steps (rates, totals and
change). Answers are whole numbers. Every problem records its template and level in `meta`. Level 0 is
for very small models (SmolLM2-135M answers about one in eight level-1 problems).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from circuitdyn.tasks.base import TaskError
from circuitdyn.tasks.problems import Problem, answers_match

Level = Literal[1, 2, 3]
NAMES = ("Mary", "John", "Ava", "Liam", "Sofia", "Noah", "Emma", "Lucas", "Mia", "Omar", "Lena", "Ravi")
ITEMS = ("apples", "pencils", "books", "marbles", "stickers", "cookies", "cards", "shells")
Template = Callable[[random.Random], tuple[str, int]]


def _add_small(r: random.Random) -> tuple[str, int]:
    name, item, a, b = r.choice(NAMES), r.choice(ITEMS), r.randint(1, 9), r.randint(1, 9)
    return f"{name} has {a} {item} and gets {b} more. How many {item} does {name} have?", a + b


def _take_small(r: random.Random) -> tuple[str, int]:
    name, item, b = r.choice(NAMES), r.choice(ITEMS), r.randint(1, 4)
    a = b + r.randint(1, 5)
    return f"{name} has {a} {item} and eats {b}. How many {item} are left?", a - b


def _add(r: random.Random) -> tuple[str, int]:
    name, item, a, b = r.choice(NAMES), r.choice(ITEMS), r.randint(2, 20), r.randint(2, 20)
    return f"{name} has {a} {item}. {name} gets {b} more {item}. How many {item} does {name} have now?", a + b


def _take(r: random.Random) -> tuple[str, int]:
    name, item, b = r.choice(NAMES), r.choice(ITEMS), r.randint(2, 15)
    a = b + r.randint(1, 20)
    return f"{name} had {a} {item} and gave away {b}. How many {item} does {name} have left?", a - b


def _buy_and_pay(r: random.Random) -> tuple[str, int]:
    name, item = r.choice(NAMES), r.choice(ITEMS)
    count, price = r.randint(2, 6), r.randint(2, 9)
    paid = count * price + r.randint(1, 20)
    return (f"{name} buys {count} {item} that cost {price} dollars each and pays with {paid} dollars. "
            f"How many dollars of change does {name} get?"), paid - count * price


def _share(r: random.Random) -> tuple[str, int]:
    name, item = r.choice(NAMES), r.choice(ITEMS)
    friends, each = r.randint(2, 5), r.randint(2, 8)
    total = friends * each
    extra = r.randint(1, total - 1)  # some found, some already there: both counts positive
    return (f"{name} has {total - extra} {item} and finds {extra} more. {name} shares them equally among "
            f"{friends} friends. How many {item} does each friend get?"), each


def _rate(r: random.Random) -> tuple[str, int]:
    name = r.choice(NAMES)
    per_day, days, spent = r.randint(2, 9), r.randint(2, 7), r.randint(1, 10)
    bonus = r.randint(1, 10)
    return (f"{name} saves {per_day} dollars every day for {days} days, gets a gift of {bonus} dollars, and "
            f"then spends {spent} dollars on lunch. How many dollars does {name} have?"), per_day * days + bonus - spent


def _groups(r: random.Random) -> tuple[str, int]:
    item = r.choice(ITEMS)
    boxes, per_box, broken, bags = r.randint(2, 6), r.randint(3, 9), r.randint(2, 5), r.randint(2, 4)
    good = boxes * per_box - broken
    per_bag = r.randint(2, 6)
    return (f"A shop has {boxes} boxes with {per_box} {item} in each box. {broken} {item} are damaged and "
            f"thrown away. The shop also receives {bags} bags with {per_bag} {item} each. How many {item} "
            f"does the shop have now?"), good + bags * per_bag


TEMPLATES: dict[int, tuple[tuple[str, Template], ...]] = {
    0: (("add_small", _add_small), ("take_small", _take_small)),
    1: (("add", _add), ("take", _take)),
    2: (("buy_and_pay", _buy_and_pay), ("share", _share)),
    3: (("rate", _rate), ("groups", _groups)),
}
INSTRUCTION = "Solve the problem step by step, then give the final answer as a number after '####'."


@dataclass(frozen=True)
class WordProblems:
    """Seeded arithmetic word problems. `levels` picks the difficulty (0: one step on single digits,
    1: one step, 2: two, 3: three);
    problems cycle through the chosen levels' templates. `instruction` is appended to every question."""

    levels: tuple[int, ...] = (1, 2, 3)
    instruction: str = INSTRUCTION
    name: str = "word_problems"

    def __post_init__(self) -> None:
        if not self.levels or any(level not in TEMPLATES for level in self.levels):
            raise TaskError(f"levels must be a non-empty subset of {sorted(TEMPLATES)}, got {self.levels!r}")

    def problems(self, n: int, *, seed: int = 0) -> list[Problem]:
        if not isinstance(n, int) or n < 1:
            raise TaskError(f"n must be a positive integer, got {n!r}")
        rng = random.Random(f"word_problems:{seed}:{self.levels}")
        templates = [(level, name, fn) for level in self.levels for name, fn in TEMPLATES[level]]
        out = []
        for i in range(n):
            level, name, fn = templates[i % len(templates)]
            text, answer = fn(rng)
            question = f"{text} {self.instruction}".strip()
            out.append(Problem(question, str(answer), {"template": name, "level": level}))
        return out

    def verify(self, problem: Problem, response: str) -> bool:
        return answers_match(problem.answer, response)
