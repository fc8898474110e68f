"""Indirect object identification (Wang et al. 2022) with the standard ABC corruption.

Names are chosen to be single tokens with a leading space in GPT-2 style BPE (SmolLM2) and in Gemma's
SentencePiece vocabulary, so clean and corrupt prompts align token by token there. On the zoo's
character tokenizer names are several tokens: use an answer-NLL metric with answer_tokens > 1.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from circuitdyn.tasks.base import Split, TaskError, TaskExample

NAMES = ("Mary", "John", "Tom", "James", "Dan", "Sid", "Kate", "Paul", "Anne", "Mark", "Lisa", "Jack")
PLACES = ("store", "park", "garden", "school", "office", "station")
OBJECTS = ("drink", "ring", "book", "bone", "kiss", "snack")
TEMPLATES = (
    "When {A} and {B} went to the {place}, {B} gave a {obj} to",
    "After {A} and {B} went to the {place}, {B} handed a {obj} to",
    "Then, {A} and {B} had a long day at the {place}. {B} gave a {obj} to",
)


@dataclass(frozen=True)
class IOI:
    name: str = "ioi"
    default_metric: str = "logit_diff"

    def examples(self, n: int, *, seed: int = 0, split: Split | str = Split.TEST) -> list[TaskExample]:
        if n < 1:
            raise TaskError(f"n must be >= 1, got {n}")
        split = Split.parse(split)
        rng = random.Random(seed if split == "test" else 10_000 + seed)
        out = []
        for _ in range(n):
            template = rng.choice(TEMPLATES)
            a, b, c, d, e = rng.sample(NAMES, 5)
            place, obj = rng.choice(PLACES), rng.choice(OBJECTS)
            clean = template.format(A=a, B=b, place=place, obj=obj)
            # ABC corruption: three unrelated names, so no name is the indirect object any more.
            corrupt = template.replace("{B} gave", "{E} gave").replace("{B} handed", "{E} handed")
            corrupt = corrupt.format(A=c, B=d, E=e, place=place, obj=obj)
            out.append(TaskExample(clean, corrupt, f" {a}", f" {b}", {"template": template}))
        return out

    def reward(self, example: TaskExample, completion: str) -> float:
        words = completion.strip().split()
        return float(bool(words) and words[0].strip(".,") == example.answer.strip())
