"""Single-digit addition asked as a question, for instruction-tuned language models.

"Question: What is 13 + 5?\\nAnswer: " -> "18". A bare "3+5=" is not how a chat model is asked:
SmolLM2-135M-Instruct answers single-digit sums that way 2% of the time, in this question form 35-40%
greedily (12-19% sampled at temperature 1), so RL has room to act and a verifiable reward. Operands
a in 0..19 and b in 0..9: 200 problems, 60 held out (`held_out=0.3`). The model answers few sums beyond this
range (measured greedily: 11% for b in 10..19 with a < 10, 1% with a >= 10; 8-14% for larger a), so a study that
needs many problems it answers takes a larger held-out share of the same 200 instead: `qa_addition_160`
(`held_out=0.8`: 160 held out, 40 to train on). The prompt ends with the space before the answer,
as the tokenizer splits " 8" (space, digit). A corrupt prompt has operands of the same digit counts (so
clean and corrupt align token by token under a digit-splitting tokenizer), and its sum starts with
another digit, so the first answer token separates them.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from functools import lru_cache

from circuitdyn.tasks.addition import leading_digits, sum_pairs
from circuitdyn.tasks.base import Split, TaskError, TaskExample

TEMPLATE = "Question: What is {a} + {b}?\nAnswer: "


@lru_cache(maxsize=4)
def _pairs(split: str, held_out: float) -> tuple[tuple[int, int], ...]:
    """The held-out share is the first `held_out` of one fixed shuffle: a larger share holds the smaller's."""
    pairs = [(a, b) for a in range(20) for b in range(10)]
    random.Random(4321).shuffle(pairs)
    n_test = int(len(pairs) * held_out)
    return tuple(sorted(pairs[:n_test] if split == "test" else pairs[n_test:]))


@dataclass(frozen=True)
class QAAddition:
    name: str = "qa_addition"
    default_metric: str = "logit_diff"
    held_out: float = 0.3  # share of the 200 problems in the test split

    def __post_init__(self) -> None:
        if not 0 < self.held_out < 1:
            raise TaskError(f"held_out must be in (0, 1): the share of the problems held out, got {self.held_out}")

    def examples(self, n: int, *, seed: int = 0, split: Split | str = Split.TEST) -> list[TaskExample]:
        return sum_pairs(_pairs(Split.parse(split), self.held_out), n, seed, TEMPLATE, same_shape=True)

    def reward(self, example: TaskExample, completion: str) -> float:
        return float(leading_digits(completion) == example.answer)

    def training_text(self, example: TaskExample, eos: str) -> tuple[str, str]:
        """(prompt, target) for supervised training: the target ends with the eos token."""
        return example.clean, example.answer + eos


def qa_addition_160() -> QAAddition:
    """The same 200 problems with 160 held out (40 to train on): enough problems a 135M model answers for a
    study (the real-model main job's probes)."""
    return QAAddition(name="qa_addition_160", held_out=0.8)
