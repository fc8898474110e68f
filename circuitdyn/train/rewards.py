"""Rewards: the built-in tasks' verifiable rewards, or any callable `reward(prompts, completions, **columns)`."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from circuitdyn.tasks.base import Task, TaskExample

RewardFn = Callable[..., Any]


class RewardError(ValueError):
    """A reward function returned something unusable; the message names the step."""


def task_reward(task: Task) -> RewardFn:
    def reward(prompts: Sequence[str], completions: Sequence[str], *, examples: Sequence[TaskExample], **_: Any) -> list[float]:
        return [task.reward(ex, c) for ex, c in zip(examples, completions)]
    reward.__name__ = f"{task.name}_reward"
    return reward


def compute_rewards(fn: RewardFn, prompts: Sequence[str], completions: Sequence[str],
                    examples: Sequence[TaskExample], *, step: int) -> Tensor:
    """Call the reward function and validate its output: one finite number per completion."""
    name = getattr(fn, "__name__", "reward")
    try:
        raw = fn(list(prompts), list(completions), examples=list(examples))
    except TypeError as err:
        raise RewardError(f"step {step}: calling {name}(prompts, completions, examples=...) failed: {err}. "
                          "A reward takes (prompts, completions, **columns) and returns one float per completion") from err
    except Exception as err:  # the user's function: name it and the batch it failed on, keep the cause
        raise RewardError(f"step {step}: the reward function {name} raised {type(err).__name__}: {err} (on a batch "
                          f"of {len(completions)} completions, the first {completions[0]!r} for the prompt "
                          f"{prompts[0]!r}); fix the function, the last checkpoint is intact") from err
    try:
        values = torch.as_tensor(raw, dtype=torch.float32)
    except (TypeError, ValueError, RuntimeError) as err:
        raise RewardError(f"step {step}: {name} returned {type(raw).__name__}, not a list of numbers ({err})") from None
    if values.shape != (len(completions),):
        raise RewardError(f"step {step}: {name} returned shape {tuple(values.shape)}; expected one reward per "
                          f"completion, shape ({len(completions)},)")
    if not torch.isfinite(values).all():
        bad = torch.nonzero(~torch.isfinite(values)).flatten().tolist()[:5]
        raise RewardError(f"step {step}: {name} returned NaN/inf for completions {bad} "
                          f"(e.g. {completions[bad[0]]!r}); training stopped, the last checkpoint is intact")
    return values
