"""Two-digit addition, "23+58=" -> "81": the RL and zoo workhorse.

Every prompt is exactly six characters (operands 10..99), so clean/corrupt pairs align under any
tokenizer that splits digits. The corrupt prompt uses other operands whose sum starts with a different
digit, so the first answer token separates clean from corrupt.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from functools import lru_cache

from circuitdyn.tasks.base import Split, TaskError, TaskExample

_PAIRS = [(a, b) for a in range(10, 100) for b in range(10, 100)]
_TEST_FRACTION = 0.2


def _split(split: Split | str) -> tuple[tuple[int, int], ...]:
    return _split_pairs(Split.parse(split))


@lru_cache(maxsize=2)
def _split_pairs(split: str) -> tuple[tuple[int, int], ...]:
    order = list(range(len(_PAIRS)))
    random.Random(1234).shuffle(order)
    n_test = int(len(order) * _TEST_FRACTION)
    chosen = order[:n_test] if split == "test" else order[n_test:]
    return tuple(_PAIRS[i] for i in sorted(chosen))


def leading_digits(text: str) -> str:
    out = []
    for ch in text.lstrip(" "):
        if not ch.isdigit():
            break
        out.append(ch)
    return "".join(out)


def sum_pairs(pool: tuple[tuple[int, int], ...], n: int, seed: int, template: str,
              same_shape: bool = False) -> list[TaskExample]:
    """`n` problems a + b from `pool` (seeded, with replacement), each with a corrupt problem from the pool
    whose sum starts with another digit (and whose first operand has as many digits, when `same_shape`)."""
    if not isinstance(n, int) or n < 1:
        raise TaskError(f"n must be an integer >= 1, got {n!r}")
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        a, b = pool[rng.randrange(len(pool))]
        answer = str(a + b)
        while True:
            c, d = pool[rng.randrange(len(pool))]
            foil = str(c + d)
            if foil[0] != answer[0] and (not same_shape or len(str(c)) == len(str(a))):
                break
        out.append(TaskExample(template.format(a=a, b=b), template.format(a=c, b=d), answer, foil, {"a": a, "b": b}))
    return out


@dataclass(frozen=True)
class Addition:
    name: str = "addition"
    default_metric: str = "logit_diff"

    def examples(self, n: int, *, seed: int = 0, split: Split | str = Split.TEST) -> list[TaskExample]:
        return sum_pairs(_split(split), n, seed, "{a}+{b}=")

    def reward(self, example: TaskExample, completion: str) -> float:
        return float(leading_digits(completion) == example.answer)

    def training_text(self, example: TaskExample, eos: str) -> tuple[str, str]:
        """(prompt, target) for supervised pre-training: the target ends with the eos token."""
        return example.clean, example.answer + eos
