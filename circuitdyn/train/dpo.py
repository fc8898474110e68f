"""DPO on (chosen, rejected) completion pairs, sampled from the reference model or given as user data.

The pairs and the reference's log-probabilities of them are built once and kept as the algorithm's state,
so a resumed run continues on exactly the same pairs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from circuitdyn.train import losses as L
from circuitdyn.train.algorithm import TrainingError, TrainingRun, check_loss, micro_batches
from circuitdyn.train.config import DPOConfig
from circuitdyn.train.parallel import rank_world
from circuitdyn.train.rewards import compute_rewards
from circuitdyn.train.rollout import ROLLOUT_TENSORS, Rollout, completion_rollout, token_logprobs

Pairs = tuple[Rollout, Rollout, Tensor, Tensor]  # chosen, rejected, reference log-probs of each


def _reference_logprobs(run: TrainingRun, chosen: Rollout, rejected: Rollout) -> Pairs:
    with torch.no_grad():
        ref_c = (token_logprobs(run.reference_scorer, chosen)[0] * chosen.completion_mask).sum(1)
        ref_r = (token_logprobs(run.reference_scorer, rejected)[0] * rejected.completion_mask).sum(1)
    return chosen, rejected, ref_c, ref_r


def sampled_pairs(run: TrainingRun, config: DPOConfig) -> Pairs:
    """(chosen, rejected) completions sampled from the reference model, and its log-probs of both."""
    examples = run.prompts(config.pair_prompts)
    roll = run.rollout(examples, config.pair_generations, policy=run.reference_scorer)
    rep = [ex for ex in examples for _ in range(config.pair_generations)]
    rewards = compute_rewards(run.reward_fn, [e.clean for e in rep], roll.texts, rep, step=0).view(len(examples), -1)
    chosen, rejected = [], []
    for i in range(len(examples)):
        good, bad = torch.nonzero(rewards[i] > 0.5).flatten(), torch.nonzero(rewards[i] <= 0.5).flatten()
        if len(good) and len(bad):
            chosen.append(i * config.pair_generations + int(good[0]))
            rejected.append(i * config.pair_generations + int(bad[0]))
    if not chosen:
        raise TrainingError("DPO: no prompt gave both a correct and an incorrect completion from the reference "
                            "model; raise pair_generations or temperature, or pass pairs from user data")
    return _reference_logprobs(run, roll.select(chosen), roll.select(rejected))


def _completion_rollout(run: TrainingRun, prompts: list[str], completions: list[str]) -> Rollout:
    return completion_rollout(run.tokenizer, prompts, completions, run.device)


def pairs_from_data(run: TrainingRun, pairs: Sequence[Sequence[str]]) -> Pairs:
    if not pairs:
        raise TrainingError("preference_pairs is empty: give (prompt, chosen, rejected) triples")
    for i, p in enumerate(pairs):
        if len(p) != 3 or not all(isinstance(x, str) and x for x in p):
            raise TrainingError(f"preference pair {i} must be (prompt, chosen, rejected) non-empty strings, got {p!r}")
    prompts = [p[0] for p in pairs]
    return _reference_logprobs(run, _completion_rollout(run, prompts, [p[1] for p in pairs]),
                               _completion_rollout(run, prompts, [p[2] for p in pairs]))


class DPO:
    def __init__(self, config: DPOConfig) -> None:
        if rank_world()[1] > 1:
            raise TrainingError("data-parallel training supports GRPO and CF-RL; run PPO and DPO in one process")
        self.config = config
        self.extra_modules: dict[str, torch.nn.Module] = {}
        self.needs_reference = True
        self.pairs: Pairs | None = None

    def use_preference_pairs(self, run: TrainingRun, pairs: Sequence[Sequence[str]]) -> None:
        self.pairs = pairs_from_data(run, pairs)

    def step(self, run: TrainingRun) -> dict[str, Any]:
        cfg = self.config
        if self.pairs is None:
            self.pairs = sampled_pairs(run, cfg)
        c, r, ref_c, ref_r = self.pairs
        n = cfg.per_device_train_batch_size
        idx = [run.index(len(c.texts)) for _ in range(n)]
        cs, rs = c.select(idx, texts=False), r.select(idx, texts=False)
        at = torch.tensor(idx, device=run.device)
        run.optimizer.zero_grad(set_to_none=True)
        total, stats = 0.0, {"reward_margin": 0.0, "reward_accuracy": 0.0}
        for rows in micro_batches(n, cfg.gradient_accumulation_steps):
            pc = (token_logprobs(run.scorer, cs, rows=rows)[0] * cs.completion_mask[rows]).sum(1)
            pr = (token_logprobs(run.scorer, rs, rows=rows)[0] * rs.completion_mask[rows]).sum(1)
            loss, st = L.dpo_loss(pc, pr, ref_c[at][rows], ref_r[at][rows], cfg.beta, rpo_alpha=cfg.rpo_alpha,
                                  chosen_tokens=cs.completion_mask[rows].sum(1))
            weight = (rows.stop - rows.start) / n  # micro-batch means recombine into the batch mean
            check_loss(loss, run.step, "DPO")
            run.backward(loss * weight)
            total += loss.item() * weight
            for k in stats:
                stats[k] += float(st[k]) * weight
        grad_norm = run.optimizer_step("DPO loss")
        return {"loss": total, "grad_norm": grad_norm, "pairs": len(c.texts), **stats}

    def state(self) -> tuple[dict[str, Tensor], dict[str, Any]]:
        if self.pairs is None:
            return {}, {}
        c, r, ref_c, ref_r = self.pairs
        tensors = {f"{side}.{k}": getattr(roll, k).contiguous() for side, roll in (("chosen", c), ("rejected", r))
                   for k in ROLLOUT_TENSORS}
        tensors |= {"chosen.reference_logprob": ref_c.contiguous(), "rejected.reference_logprob": ref_r.contiguous()}
        return tensors, {"chosen_texts": list(c.texts), "rejected_texts": list(r.texts)}

    def load_state(self, tensors: dict[str, Tensor], meta: dict[str, Any]) -> None:
        if not tensors:
            return

        def roll(side: str) -> Rollout:
            t = {k: tensors[f"{side}.{k}"] for k in ROLLOUT_TENSORS}
            return Rollout(t["prompt_ids"], t["prompt_mask"], t["completion_ids"], t["completion_mask"],
                           tuple(meta[f"{side}_texts"]))
        self.pairs = (roll("chosen"), roll("rejected"), tensors["chosen.reference_logprob"],
                      tensors["rejected.reference_logprob"])
