"""The RL-circuitry paper's selection of a pair's problems: one reference length, three filters, a seeded
sample, and one scored length per cut coefficient.

A pair is a base model and one tuned model (or several training seeds of it). Its rows are the problems
both answer correctly, each with the two prompts' and the two answers' token lengths. Over ALL rows:

    refer   = min(mean base answer length, mean tuned answer length)
    cut_len = max(int(refer * cut_coeff), 1)          one scored length per pair and coefficient

then a row is kept only if (1) its two prompts have the same length, (2) m = (len_base + len_tuned) / 2
lies in [int(small_coeff * refer), int(big_coeff * refer)], and (3) |len_base - len_tuned| / m <=
balance_coeff (each row counts against the first filter it fails). When more than `num_samples` rows
remain, `random.seed(sample_seed); random.sample(rows, num_samples)` picks them: the same call as the
paper's code, so the same file gives the very same rows, in the same order. The selection does not depend
on the cut coefficient. With several seeds of the tuned model, a row's tuned length is the mean over the
seeds (one seed: the paper's rule exactly).
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

FILTERS = ("prompt_length_mismatch", "total_length_out_of_range", "diff_out_of_balance")


@dataclass(frozen=True)
class RowLengths:
    """Token lengths of one row of a pair (the tuned answer length: the mean over seeds)."""

    base_prompt: int
    tuned_prompt: int
    base_answer: int
    tuned_answer: float


@dataclass(frozen=True)
class Selection:
    """Which rows of a pair are scored, and at what length."""

    rows: tuple[int, ...]  # 0-based indices of the pair's rows, in the order the sample drew them
    refer: float
    n_rows: int
    removed: dict[str, int] = field(default_factory=dict)  # rows each filter removed
    n_passed: int = 0  # rows that passed every filter (before the sample)

    def cut_len(self, cut_coeff: float) -> int:
        """max(int(refer x cut_coeff), 1); 0 for a pair without rows (nothing to score)."""
        return max(int(self.refer * cut_coeff), 1) if math.isfinite(self.refer) else 0

    def as_dict(self, cut_coeffs: Sequence[float]) -> dict[str, object]:
        return {"rows": list(self.rows), "refer": self.refer, "n_rows": self.n_rows, "n_passed": self.n_passed,
                "removed": dict(self.removed), "cut_len": {f"{c:g}": self.cut_len(c) for c in cut_coeffs}}


def select_rows(rows: Sequence[RowLengths], *, small_coeff: float, big_coeff: float, balance_coeff: float,
                num_samples: int, sample_seed: int) -> Selection:
    """The paper's selection over a pair's rows (see the module docstring)."""
    if not rows:
        return Selection((), float("nan"), 0, dict.fromkeys(FILTERS, 0), 0)
    refer = float(min(np.mean([r.base_answer for r in rows]), np.mean([r.tuned_answer for r in rows])))
    low, high = int(small_coeff * refer), int(big_coeff * refer)
    removed = dict.fromkeys(FILTERS, 0)
    passed = []
    for i, r in enumerate(rows):
        total = (r.base_answer + r.tuned_answer) / 2
        if r.base_prompt != r.tuned_prompt:
            removed["prompt_length_mismatch"] += 1
        elif total > high or total < low or total <= 0:
            removed["total_length_out_of_range"] += 1
        elif abs(r.base_answer - r.tuned_answer) / total > balance_coeff:
            removed["diff_out_of_balance"] += 1
        else:
            passed.append(i)
    chosen = passed
    if 0 < num_samples < len(passed):
        # a generator seeded like the paper's random.seed(42) draws what its random.sample draws
        chosen = random.Random(sample_seed).sample(passed, num_samples)
    return Selection(tuple(chosen), refer, len(rows), removed, len(passed))
