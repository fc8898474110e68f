"""LP-FT's first stage: the classifier fitted by supervised cross-entropy on the task's correct answers.

Linear probing then fine-tuning (LP-FT) is what the learning-dynamics paper sets classifier-first RL
against: both train the classifier alone first, LP-FT with labels, CF-RL with the RL objective. Selected
by `ClassifierFirst(objective="supervised")`; the backbone is frozen around the step by the parameter
schedule, as for CF-RL.
"""

from __future__ import annotations

from typing import Any

from circuitdyn.train.algorithm import TrainingRun, check_loss, micro_batches
from circuitdyn.train.rollout import completion_rollout, token_logprobs


def supervised_step(run: TrainingRun) -> dict[str, Any]:
    """One update of mean token cross-entropy of (prompt, correct answer + eos) pairs of the training split."""
    cfg = run.config
    n = cfg.per_device_train_batch_size
    examples = run.prompts(n)
    roll = completion_rollout(run.tokenizer, [e.clean for e in examples], [e.answer for e in examples], run.device)
    n_tok = roll.completion_mask.sum()
    run.optimizer.zero_grad(set_to_none=True)
    total = 0.0
    for rows in micro_batches(n, cfg.gradient_accumulation_steps):
        logp, _, _ = token_logprobs(run.scorer, roll, rows=rows)
        loss = -(logp * roll.completion_mask[rows]).sum() / n_tok
        check_loss(loss, run.step, "supervised (LP-FT)")
        run.backward(loss)
        total += loss.item()
    grad_norm = run.optimizer_step("supervised (LP-FT) loss")
    return {"loss": total, "grad_norm": grad_norm}
