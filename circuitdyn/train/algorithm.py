"""The protocol every training algorithm implements, and the run it acts on.

An algorithm (GRPO, PPO, DPO) owns what is particular to it: modules it trains beside the policy (PPO's
value head), whether it needs a frozen reference, one step's rollouts, losses and updates, and any state a
resumed run needs (DPO's preference pairs). The generic loop (`loop.py`) owns everything else: optimizer,
random streams, evaluation, callbacks, checkpoints, and the parameter schedule (`cfrl.py`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor

from circuitdyn.tasks.base import Task, TaskExample
from circuitdyn.train.config import TrainConfig
from circuitdyn.train.rewards import RewardFn
from circuitdyn.train.rollout import Rollout


class TrainingError(RuntimeError):
    """Training cannot continue (non-finite loss or gradients); the message names the step and source."""


@runtime_checkable
class TrainingRun(Protocol):
    """What an algorithm may use of the run it belongs to (implemented by `loop.Trainer`)."""

    config: TrainConfig
    bridge: Any
    reference: Any
    #: modules that compute the policy's / reference's log-probs fastest, with their parameters (twins)
    scorer: Any
    reference_scorer: Any
    tokenizer: Any
    task: Task
    reward_fn: RewardFn
    optimizer: torch.optim.Optimizer
    device: torch.device
    step: int

    def prompts(self, n: int) -> list[TaskExample]: ...
    def rollout(self, examples: Sequence[TaskExample], repeats: int, policy: Any = None,
                greedy: bool = False, first_row: int = 0) -> Rollout: ...
    def index(self, n: int) -> int: ...
    def backward(self, loss: Tensor) -> None: ...
    def optimizer_step(self, source: str) -> float: ...


@runtime_checkable
class TrainingAlgorithm(Protocol):
    #: trainable modules beside the policy, optimised and checkpointed under these names
    extra_modules: dict[str, torch.nn.Module]
    #: whether the run must keep a frozen copy of the initial policy
    needs_reference: bool

    def step(self, run: TrainingRun) -> dict[str, Any]:
        """One training step (rollouts, losses, one or more optimizer updates); returns its logs."""
        ...

    def use_preference_pairs(self, run: TrainingRun, pairs: Sequence[Sequence[str]]) -> None:
        """Train on user-given (prompt, chosen, rejected) triples; algorithms without pairs refuse."""
        ...

    def state(self) -> tuple[dict[str, Tensor], dict[str, Any]]:
        """Tensors and JSON-able values a resumed run needs (beyond modules, optimizer and RNGs)."""
        ...

    def load_state(self, tensors: dict[str, Tensor], meta: dict[str, Any]) -> None: ...


class Stateless:
    """Defaults for algorithms that keep no state between steps and take no preference pairs."""

    extra_modules: dict[str, torch.nn.Module]

    def use_preference_pairs(self, run: TrainingRun, pairs: Sequence[Sequence[str]]) -> None:
        raise TypeError("preference_pairs are for DPO (DPOConfig)")

    def state(self) -> tuple[dict[str, Tensor], dict[str, Any]]:
        return {}, {}

    def load_state(self, tensors: dict[str, Tensor], meta: dict[str, Any]) -> None:
        return None


def micro_batches(n: int, accumulation_steps: int) -> list[slice]:
    """`accumulation_steps` equal slices of n rows (the config checks that they divide)."""
    size = n // accumulation_steps
    return [slice(i * size, (i + 1) * size) for i in range(accumulation_steps)]


def check_loss(loss: Tensor, step: int, name: str) -> None:
    if not torch.isfinite(loss):
        raise TrainingError(f"step {step}: the {name} loss is {float(loss)}; training stopped before the update, "
                            "the last checkpoint is intact")
