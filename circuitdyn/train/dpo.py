"""DPO on (chosen, rejected) completion pairs: resampled from the current policy every round (iterative, the
default), sampled once from the reference model (offline), or given as user data.

A round's pairs, the reference's log-probabilities of them and the step its round began are the algorithm's
state, so a run resumed mid-round continues on exactly the same pairs and samples the next round where an
uninterrupted run would.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from circuitdyn.train import losses as L
from circuitdyn.train.algorithm import TrainingError, TrainingRun, check_loss, micro_batches
from circuitdyn.train.config import DPOConfig, PairSource
from circuitdyn.train.parallel import rank_world
from circuitdyn.train.rewards import compute_rewards
from circuitdyn.train.rollout import ROLLOUT_TENSORS, Rollout, completion_rollout, token_logprobs

Pairs = tuple[Rollout, Rollout, Tensor, Tensor]  # chosen, rejected, reference log-probs of each


def _reference_logprobs(run: TrainingRun, chosen: Rollout, rejected: Rollout) -> Pairs:
    with torch.no_grad():
        ref_c = (token_logprobs(run.reference_scorer, chosen)[0] * chosen.completion_mask).sum(1)
        ref_r = (token_logprobs(run.reference_scorer, rejected)[0] * rejected.completion_mask).sum(1)
    return chosen, rejected, ref_c, ref_r


@dataclass(frozen=True)
class RoundPairs:
    """One round's best-vs-worst pairs, and the prompts that gave none because all their samples scored the same."""

    pairs: Pairs | None
    solved: int  # every sample correct (reward > 0.5): nothing to prefer
    unsolved: int  # every sample wrong


def best_vs_worst(rewards: Tensor) -> tuple[list[int], list[int], int, int]:
    """Per row of [prompts, samples] rewards: the flat index of its first best and first worst sample, for the
    rows whose samples do not all score the same; and the counts of tied rows above / at most 0.5."""
    chosen, rejected, solved, unsolved = [], [], 0, 0
    n = rewards.shape[1]
    for i, row in enumerate(rewards):
        hi, lo = int(torch.argmax(row)), int(torch.argmin(row))
        if row[hi] > row[lo]:
            chosen.append(i * n + hi)
            rejected.append(i * n + lo)
        elif row[hi] > 0.5:
            solved += 1
        else:
            unsolved += 1
    return chosen, rejected, solved, unsolved


def sampled_pairs(run: TrainingRun, config: DPOConfig, policy: Any) -> RoundPairs:
    """`pair_prompts` prompts, `pair_generations` samples of each from `policy`, graded; best vs worst of each
    prompt, with the reference's log-probs of both."""
    examples = run.prompts(config.pair_prompts)
    roll = run.rollout(examples, config.pair_generations, policy=policy)
    rep = [ex for ex in examples for _ in range(config.pair_generations)]
    rewards = compute_rewards(run.reward_fn, [e.clean for e in rep], roll.texts, rep, step=run.step)
    chosen, rejected, solved, unsolved = best_vs_worst(rewards.view(len(examples), -1))
    if not chosen:
        return RoundPairs(None, solved, unsolved)
    return RoundPairs(_reference_logprobs(run, roll.select(chosen), roll.select(rejected)), solved, unsolved)


def _completion_rollout(run: TrainingRun, prompts: list[str], completions: list[str]) -> Rollout:
    return completion_rollout(run.tokenizer, prompts, completions, run.device)


def pairs_from_data(run: TrainingRun, pairs: Sequence[Sequence[str]]) -> Pairs:
    if not pairs:
        raise TrainingError("preference_pairs is empty: give (prompt, chosen, rejected) triples")
    for i, p in enumerate(pairs):
        if len(p) != 3 or not all(isinstance(x, str) and x for x in p):
            raise TrainingError(f"preference pair {i} must be (prompt, chosen, rejected) non-empty strings, got {p!r}")
    same = [i for i, p in enumerate(pairs) if p[1].strip() == p[2].strip()]
    if same:
        raise TrainingError(f"preference pairs {same[:8]} ({len(same)} of {len(pairs)}) have the same chosen and "
                            "rejected completion: DPO's loss has no gradient there; drop them or fix the data")
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
        self.user_pairs = False
        self.round_start = 0  # the step the current round's pairs were sampled at
        self.skipped = {"solved": 0, "unsolved": 0}  # of the current round's prompts

    def use_preference_pairs(self, run: TrainingRun, pairs: Sequence[Sequence[str]]) -> None:
        self.pairs = pairs_from_data(run, pairs)
        self.user_pairs = True

    def _new_round(self, run: TrainingRun) -> bool:
        cfg = self.config
        if self.user_pairs:
            return False
        if cfg.pair_source is PairSource.OFFLINE:
            return self.pairs is None
        return self.pairs is None or run.step - self.round_start >= cfg.round_steps

    def _sample_round(self, run: TrainingRun) -> None:
        cfg = self.config
        offline = cfg.pair_source is PairSource.OFFLINE
        found = sampled_pairs(run, cfg, run.reference_scorer if offline else None)
        self.skipped = {"solved": found.solved, "unsolved": found.unsolved}
        if found.pairs is not None:
            self.pairs, self.round_start = found.pairs, run.step
            return
        source = "the reference model" if offline else f"the policy at step {run.step}"
        if self.pairs is None:
            raise TrainingError(f"DPO: no prompt gave both a better and a worse completion from {source} "
                                f"({found.solved} all correct, {found.unsolved} all wrong of {cfg.pair_prompts}); "
                                "raise pair_generations, pair_prompts or temperature, or pass pairs from user data")
        warnings.warn(f"DPO step {run.step}: no prompt gave a pair from {source} ({found.solved} all correct, "
                      f"{found.unsolved} all wrong); training on the previous round's pairs", stacklevel=2)
        self.round_start = run.step

    def step(self, run: TrainingRun) -> dict[str, Any]:
        cfg = self.config
        if self._new_round(run):
            self._sample_round(run)
        assert self.pairs is not None
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
        return {"loss": total, "grad_norm": grad_norm, "pairs": len(c.texts), "round_start": self.round_start,
                "prompts_all_correct": self.skipped["solved"], "prompts_all_wrong": self.skipped["unsolved"], **stats}

    def state(self) -> tuple[dict[str, Tensor], dict[str, Any]]:
        if self.pairs is None:
            return {}, {}
        c, r, ref_c, ref_r = self.pairs
        tensors = {f"{side}.{k}": getattr(roll, k).contiguous() for side, roll in (("chosen", c), ("rejected", r))
                   for k in ROLLOUT_TENSORS}
        tensors |= {"chosen.reference_logprob": ref_c.contiguous(), "rejected.reference_logprob": ref_r.contiguous()}
        return tensors, {"chosen_texts": list(c.texts), "rejected_texts": list(r.texts), "round_start": self.round_start,
                         "skipped": dict(self.skipped), "user_pairs": self.user_pairs}

    def load_state(self, tensors: dict[str, Tensor], meta: dict[str, Any]) -> None:
        if not tensors:
            return

        def roll(side: str) -> Rollout:
            t = {k: tensors[f"{side}.{k}"] for k in ROLLOUT_TENSORS}
            return Rollout(t["prompt_ids"], t["prompt_mask"], t["completion_ids"], t["completion_mask"],
                           tuple(meta[f"{side}_texts"]))
        self.pairs = (roll("chosen"), roll("rejected"), tensors["chosen.reference_logprob"],
                      tensors["rejected.reference_logprob"])
        self.round_start = int(meta.get("round_start", 0))
        self.skipped = {k: int(v) for k, v in meta.get("skipped", {"solved": 0, "unsolved": 0}).items()}
        self.user_pairs = bool(meta.get("user_pairs", False))
