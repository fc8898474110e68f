"""Greater-than (Hanna et al. 2023): "The war lasted from the year 1732 to the year 17" -> a year > 32.

The corrupt prompt starts at year 01, so every continuation is valid there. The answer/foil pair for
logit-difference metrics is (XX+1, XX-1): the smallest valid and the largest invalid year ending.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from circuitdyn.tasks.addition import leading_digits
from circuitdyn.tasks.base import Split, TaskError, TaskExample

NOUNS = ("war", "drought", "famine", "dynasty", "expedition", "siege", "reign", "voyage")


@dataclass(frozen=True)
class GreaterThan:
    name: str = "greater_than"
    default_metric: str = "logit_diff"

    def examples(self, n: int, *, seed: int = 0, split: Split | str = Split.TEST) -> list[TaskExample]:
        if n < 1:
            raise TaskError(f"n must be >= 1, got {n}")
        split = Split.parse(split)
        rng = random.Random(seed if split == "test" else 20_000 + seed)
        out = []
        for _ in range(n):
            noun, yy = rng.choice(NOUNS), rng.randrange(11, 89)
            clean = f"The {noun} lasted from the year 17{yy:02d} to the year 17"
            corrupt = f"The {noun} lasted from the year 1701 to the year 17"
            out.append(TaskExample(clean, corrupt, f"{yy + 1:02d}", f"{yy - 1:02d}", {"yy": yy}))
        return out

    def reward(self, example: TaskExample, completion: str) -> float:
        digits = leading_digits(completion)[:2]
        return float(len(digits) == 2 and int(digits) > int(example.meta["yy"]))
