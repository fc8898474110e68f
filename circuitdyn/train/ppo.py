"""PPO: a value head on the final hidden state, per-token KL penalty to the reference, GAE, clipped losses.

The value head reads the hidden state DETACHED and is clipped apart from the policy: the value loss
trains the head alone, so the circuits being measured are shaped by the policy objective only (trl
reaches the same with a separate value model)."""

from __future__ import annotations

from typing import Any

import torch

from circuitdyn.train import losses as L
from circuitdyn.train.algorithm import Stateless, TrainingError, TrainingRun, check_loss, micro_batches
from circuitdyn.train.config import PPOConfig
from circuitdyn.train.parallel import rank_world
from circuitdyn.train.rewards import compute_rewards
from circuitdyn.train.rollout import token_logprobs


class PPO(Stateless):
    def __init__(self, config: PPOConfig, d_model: int, device: torch.device) -> None:
        if rank_world()[1] > 1:
            raise TrainingError("data-parallel training supports GRPO and CF-RL; run PPO and DPO in one process")
        self.config = config
        # initialised to zero, so the (seeded) default initialisation it replaces never matters
        self.value_head = torch.nn.Linear(d_model, 1).to(device)
        torch.nn.init.zeros_(self.value_head.weight)
        torch.nn.init.zeros_(self.value_head.bias)
        self.extra_modules = {"value_head": self.value_head}
        self.needs_reference = True

    def step(self, run: TrainingRun) -> dict[str, Any]:
        cfg = self.config
        n = cfg.per_device_train_batch_size
        examples = run.prompts(n)
        roll = run.rollout(examples, 1)
        rewards = compute_rewards(run.reward_fn, [e.clean for e in examples], roll.texts, examples, step=run.step)
        mask = roll.completion_mask
        with torch.no_grad():
            old_logp, _, old_values = token_logprobs(run.scorer, roll, value_head=self.value_head)
            assert old_values is not None
            ref_logp = token_logprobs(run.reference_scorer, roll)[0]
            kl = (old_logp - ref_logp) * mask
            token_rewards = -cfg.kl_coef * kl
            last = (mask.sum(1) - 1).clamp(min=0)
            token_rewards[torch.arange(n), last] += rewards.to(run.device)
            adv, returns = L.gae(token_rewards, old_values, mask, cfg.gamma, cfg.lam)
            if cfg.whiten_advantages:
                adv = L.whiten(adv, mask)
        n_tok = int(mask.sum())
        totals = {"pg_loss": 0.0, "vf_loss": 0.0, "clip_frac": 0.0, "entropy": 0.0}
        grad_norm = 0.0
        for _ in range(cfg.num_ppo_epochs):
            run.optimizer.zero_grad(set_to_none=True)
            for rows in micro_batches(n, cfg.gradient_accumulation_steps):
                logp, ent, values = token_logprobs(run.scorer, roll, value_head=self.value_head, rows=rows)
                assert values is not None
                pg, vf, st = L.ppo_losses(logp, old_logp[rows], values, old_values[rows], adv[rows], returns[rows],
                                          mask[rows], cliprange=cfg.cliprange, cliprange_value=cfg.cliprange_value,
                                          n_tokens=n_tok)
                loss = pg + cfg.vf_coef * vf
                check_loss(loss, run.step, "PPO")
                run.backward(loss)
                totals["pg_loss"] += pg.item() / cfg.num_ppo_epochs
                totals["vf_loss"] += vf.item() / cfg.num_ppo_epochs
                totals["clip_frac"] += float(st["clip_frac"]) / cfg.num_ppo_epochs
                totals["entropy"] += float((ent * mask[rows]).sum()) / max(n_tok, 1) / cfg.num_ppo_epochs
            grad_norm = run.optimizer_step("PPO loss")
        return {"reward_mean": float(rewards.mean()), "reward_std": float(rewards.std()),
                "kl": float(kl.sum() / max(n_tok, 1)), "completion_length": float(mask.sum(1).float().mean()),
                "grad_norm": grad_norm, **totals}
