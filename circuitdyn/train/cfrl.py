"""Classifier-first RL as a parameter schedule, composable with any algorithm.

Stage 1 trains only the classifier (the unembedding, optionally the final norm) for `steps` steps, or until
the mean reward reaches `until_reward`, under the algorithm's objective (CF-RL) or supervised cross-entropy
(LP-FT, `lpft.py`); stage 2 trains everything. The backbone is frozen inside a context
around each stage-1 step and restored on exit, so nothing outside the step ever sees it frozen.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from enum import Enum
from typing import Any

import torch

from circuitdyn.core.grads import requires_grad
from circuitdyn.train.config import ClassifierFirst, Stage1Objective


class Stage(str, Enum):
    CLASSIFIER = "classifier"  # only the classifier trains
    RL = "rl"  # every parameter trains


class ParameterSchedule:
    """Which parameters a step trains, at which learning rate. Without a plan every step is `Stage.RL`."""

    def __init__(self, plan: ClassifierFirst | None) -> None:
        self.plan = plan
        self.switched = False  # stage 1 ended early: until_reward was reached

    def stage(self, step: int) -> Stage:
        if self.plan is None or self.switched or step >= self.plan.steps:
            return Stage.RL
        return Stage.CLASSIFIER

    @contextlib.contextmanager
    def applied(self, stage: Stage, optimizer: torch.optim.Optimizer,
                backbone: Sequence[torch.nn.Parameter]) -> Iterator[None]:
        """Freeze the backbone (and set the classifier's learning rate, optimizer group 0) for a stage-1 step;
        restore both on exit."""
        if stage is Stage.RL or self.plan is None:
            yield
            return
        group = optimizer.param_groups[0]
        lr = group["lr"]
        if self.plan.learning_rate:
            group["lr"] = self.plan.learning_rate
        try:
            with requires_grad(backbone, False):
                yield
        finally:
            group["lr"] = lr

    def supervised(self, stage: Stage) -> bool:
        """Whether this stage-1 step fits the classifier by supervised cross-entropy (LP-FT)."""
        return stage is Stage.CLASSIFIER and self.plan is not None and self.plan.objective is Stage1Objective.SUPERVISED

    def observe(self, stage: Stage, logs: dict[str, Any]) -> None:
        """Leave stage 1 once the step's mean reward reached `until_reward`."""
        if stage is Stage.CLASSIFIER and self.plan is not None and self.plan.until_reward is not None \
                and logs["reward_mean"] >= self.plan.until_reward:
            self.switched = True
