"""GRPO (and, under a classifier-first schedule, CF-RL): group-relative advantages, clipped surrogate."""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import Tensor

from circuitdyn.train import losses as L
from circuitdyn.train.algorithm import Stateless, TrainingError, TrainingRun, check_loss, micro_batches
from circuitdyn.train.config import GRPOConfig, LossType, ScaleRewards
from circuitdyn.train.parallel import all_reduce_grads, all_sum, rank_world
from circuitdyn.train.rewards import compute_rewards
from circuitdyn.train.rollout import Rollout, token_logprobs

logger = logging.getLogger(__name__)


class GRPO(Stateless):
    def __init__(self, config: GRPOConfig) -> None:
        self.config = config
        self.extra_modules = {}
        self.needs_reference = config.beta > 0
        self.flat_seen = False  # a step whose every group had equal rewards was reported (once per run)

    def step(self, run: TrainingRun) -> dict[str, Any]:
        cfg = self.config
        G = cfg.num_generations
        P = cfg.per_device_train_batch_size // G
        examples = run.prompts(P)  # the global batch: the same on every rank
        rank, world = rank_world()
        if P % world:
            raise TrainingError(f"{P} prompt groups per step cannot be split over {world} ranks: make "
                                "per_device_train_batch_size / num_generations a multiple of the world size")
        mine = examples[rank * P // world:(rank + 1) * P // world]
        roll = run.rollout(mine, G, first_row=rank * P // world * G)
        rep = [ex for ex in mine for _ in range(G)]
        rewards = compute_rewards(run.reward_fn, [e.clean for e in rep], roll.texts, rep, step=run.step)
        return self.update(run, roll, rewards, n_groups=P)

    def update(self, run: TrainingRun, roll: Rollout, rewards: Tensor, *, n_groups: int) -> dict[str, Any]:
        """One GRPO update on this process's rollout (whole groups of num_generations rows). Under
        torch.distributed the token/sequence normalisers and the batch reward spread are global and the
        gradients are summed over ranks, so the update equals a single process on the combined batch."""
        cfg = self.config
        G = cfg.num_generations
        P_local = rewards.numel() // G
        # the batch's reward spread over every rank (the same as rewards.std() in one process)
        r_sum, r_sq, r_n = all_sum(torch.stack([rewards.sum(), (rewards**2).sum(), torch.tensor(float(rewards.numel()))]))
        r_mean = r_sum / r_n
        r_std = torch.sqrt(torch.clamp((r_sq - r_n * r_mean**2) / torch.clamp(r_n - 1, min=1), min=0))
        adv = L.group_advantages(rewards.view(P_local, G), ScaleRewards(cfg.scale_rewards), cfg.advantage_eps,
                                 batch_std=r_std)
        adv = adv.flatten().to(run.device)
        mask = roll.completion_mask
        n_seq, max_len = n_groups * G, cfg.max_completion_length
        n_tok = int(all_sum(mask.sum().float()))
        with torch.no_grad():
            old = token_logprobs(run.scorer, roll)[0] if cfg.num_iterations > 1 else None
            ref = token_logprobs(run.reference_scorer, roll)[0] if run.reference is not None else None
        eps_high = cfg.epsilon_high if cfg.epsilon_high is not None else cfg.epsilon
        stats = torch.zeros(5)  # loss, clip_low, clip_high, kl, entropy (sums over the whole batch)
        grad_norm = 0.0
        for _ in range(cfg.num_iterations):
            run.optimizer.zero_grad(set_to_none=True)
            for rows in micro_batches(rewards.numel(), cfg.gradient_accumulation_steps):
                logp, ent, _ = token_logprobs(run.scorer, roll, rows=rows)
                old_rows = old[rows] if old is not None else logp.detach()
                loss, st = L.grpo_loss(logp, old_rows, adv[rows], mask[rows], epsilon=cfg.epsilon, epsilon_high=eps_high,
                                       loss_type=LossType(cfg.loss_type), n_sequences=n_seq, n_tokens=n_tok, max_len=max_len,
                                       ref_logp=ref[rows] if ref is not None else None, beta=cfg.beta)
                check_loss(loss, run.step, "GRPO")
                run.backward(loss)
                m_tok = float(mask[rows].sum())
                stats += torch.tensor([loss.item(), float(st["clip_low"]), float(st["clip_high"]),
                                       float(st.get("kl", 0.0)) * m_tok, float((ent * mask[rows]).sum())])
            all_reduce_grads(run.optimizer)
            grad_norm = run.optimizer_step("GRPO loss")
        stats = all_sum(stats) / cfg.num_iterations
        zero_std = all_sum(torch.tensor([float((rewards.view(P_local, G).std(1) == 0).sum())]))[0] / n_groups
        if zero_std >= 1 and not self.flat_seen:
            self.flat_seen = True
            logger.warning("GRPO step %d: every group's rewards are equal (mean %.3g), so every advantage is 0 and "
                           "the step has no policy gradient%s. Once the task is solved this is expected; from the start "
                           "it means the reward cannot tell completions apart: check the reward function "
                           "(reported once per run; frac_reward_zero_std in the log counts it)", run.step + 1,
                           float(r_mean), "" if cfg.beta else " and no KL term (beta=0): the weights do not move")
        tok = max(n_tok, 1)
        return {"reward_mean": float(r_mean), "reward_std": float(r_std), "frac_reward_zero_std": float(zero_std),
                "loss": float(stats[0]), "clip_ratio_low": float(stats[1]) / tok, "clip_ratio_high": float(stats[2]) / tok,
                "kl": float(stats[3]) / tok, "entropy": float(stats[4]) / tok,
                "completion_length": n_tok / n_seq, "grad_norm": grad_norm}
