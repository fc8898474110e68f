"""Objectives: the functions of (logits, batch) that attribution differentiates, one value per example.

An objective takes `logits [batch, seq, vocab]` and the PairBatch and returns `[batch]`; the built-ins read
the answer position(s) of the batch, and any user callable with that signature works too. `attribute()` and
the circuit functions take it as `metric=`, the name EAP's literature gives it; inside the package it is an
objective, so that "metric" means one thing: the circuit metrics computed FROM the scores (intensity,
entropy, concentration), which live in `circuitdyn.analysis.metrics`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from jaxtyping import Float
from torch import Tensor

from circuitdyn.tasks.base import PairBatch

Logits = Float[Tensor, "batch seq vocab"]
PerExample = Float[Tensor, " batch"]


class ObjectiveError(ValueError):
    """An unknown objective, or one that returned something other than one finite value per example."""


class NotFiniteError(ObjectiveError):
    """An objective that returned NaN or inf (the model's logits, or the objective itself)."""


def _rows(batch: PairBatch, device: torch.device) -> Tensor:
    return torch.arange(len(batch), device=device)


def logit_diff(logits: Logits, batch: PairBatch) -> PerExample:
    """logit(answer) - logit(foil) at the position that predicts the first answer token."""
    rows, pos = _rows(batch, logits.device), batch.answer_pos.to(logits.device)
    at = logits[rows, pos].float()
    return at[rows, batch.answers[:, 0].to(logits.device)] - at[rows, batch.foils.to(logits.device)]


def answer_logprob(logits: Logits, batch: PairBatch) -> PerExample:
    """Sum of log p(answer token i | prefix) over the first k answer tokens (teacher forced)."""
    k = batch.answers.shape[1]
    rows = _rows(batch, logits.device)[:, None]
    pos = batch.answer_pos.to(logits.device)[:, None] + torch.arange(k, device=logits.device)[None, :]
    # rows with fewer than k answer tokens (padded with -1) may end before pos: those slots are masked below
    pos = pos.clamp(max=logits.shape[1] - 1)
    logp = torch.log_softmax(logits[rows, pos].float(), dim=-1)  # [batch, k, vocab]
    answers = batch.answers.to(logits.device)
    picked = logp.gather(-1, answers.clamp(min=0)[..., None])[..., 0]
    return (picked * (answers >= 0)).sum(-1)


def answer_nll(logits: Logits, batch: PairBatch) -> PerExample:
    """MEAN teacher-forced negative log-likelihood over the scored answer tokens (the first k, fewer where an
    answer is shorter): the RL-circuitry paper's loss. `-answer_logprob` is the sum over the same tokens."""
    n_scored = (batch.answers >= 0).sum(-1).clamp(min=1).to(logits.device)
    return -answer_logprob(logits, batch) / n_scored


def kl_to_reference(logits: Logits, reference: Logits, batch: PairBatch) -> PerExample:
    """KL(reference || current) of the next-token distribution at the first answer position."""
    rows, pos = _rows(batch, logits.device), batch.answer_pos.to(logits.device)
    logq = torch.log_softmax(logits[rows, pos].float(), -1)
    logp = torch.log_softmax(reference[rows, pos].float(), -1)
    return (logp.exp() * (logp - logq)).sum(-1)


OBJECTIVES: dict[str, Callable[[Tensor, PairBatch], Tensor]] = {
    "logit_diff": logit_diff,
    "answer_logprob": answer_logprob,
    "answer_nll": answer_nll,
}


ObjectiveFn = Callable[[Tensor, PairBatch], Tensor]
#: the objective that compares with the model's own clean run (it needs that run's logits)
KL_TO_CLEAN = "kl_to_clean"


def objective_name(metric: str | ObjectiveFn) -> str:
    """How an objective is recorded: its name, or a callable's __name__."""
    return metric if isinstance(metric, str) else getattr(metric, "__name__", "callable")


def objective_function(metric: str | ObjectiveFn) -> ObjectiveFn:
    if callable(metric):
        return metric
    if metric not in OBJECTIVES:
        raise ObjectiveError(f"unknown metric {metric!r}; choose one of {sorted(OBJECTIVES)} (or {KL_TO_CLEAN!r} for "
                          "attribution) or pass a callable (logits [batch, seq, vocab], batch) -> [batch]")
    return OBJECTIVES[metric]


def resolve_objective(metric: str | ObjectiveFn) -> tuple[Callable[..., Tensor], bool]:
    """The objective's function, and whether it needs the clean run's logits as a reference (KL)."""
    if metric == KL_TO_CLEAN:
        return kl_to_reference, True
    return objective_function(metric), False


def checked(values: Tensor, batch: PairBatch, name: str = "metric") -> Tensor:
    """Validate a metric's output: a finite float tensor of shape [batch]."""
    if not isinstance(values, Tensor):
        raise ObjectiveError(f"{name} returned {type(values).__name__}; it must return a tensor of shape [batch]")
    if values.shape != (len(batch),):
        raise ObjectiveError(
            f"{name} returned shape {tuple(values.shape)}; it must return one value per example, shape "
            f"[{len(batch)}] (do not reduce over the batch: circuitdyn sums it for the backward pass)"
        )
    if not torch.isfinite(values).all():
        bad = torch.nonzero(~torch.isfinite(values)).flatten().tolist()
        raise NotFiniteError(f"{name} is not finite for examples {bad[:8]}: check the answers and the model")
    return values
