"""Losses and advantage estimators as pure functions of tensors (closed-form tested).

Shapes: G completions per prompt, `[P, G]` rewards; token tensors `[N, L]` over completion tokens with a
0/1 mask. Normalisers (`n_sequences`, `n_tokens`) are passed in, so that a batch split into micro-batches
sums to exactly the loss of the whole batch.
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor

from circuitdyn.train.config import LossType, ScaleRewards


def group_advantages(rewards: Float[Tensor, "P G"], scale: ScaleRewards = ScaleRewards.GROUP,
                     eps: float = 1e-4, *, batch_std: Tensor | None = None) -> Float[Tensor, "P G"]:
    """GRPO advantages: reward minus its group mean, divided by the group std (unbiased, as trl), the batch
    std, or nothing (Dr. GRPO). `batch_std` replaces the std of `rewards` for batch scaling (data-parallel
    runs pass the std over every rank's rewards)."""
    centred = rewards - rewards.mean(1, keepdim=True)
    if scale is ScaleRewards.GROUP:
        return centred / (rewards.std(1, keepdim=True) + eps)
    if scale is ScaleRewards.BATCH:
        return centred / ((rewards.std() if batch_std is None else batch_std) + eps)
    return centred


def k3_kl(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """Per-token k3 estimator of KL(pi || ref): exp(ref - logp) - (ref - logp) - 1 (>= 0, unbiased)."""
    d = ref_logp - logp
    return torch.exp(d) - d - 1


def aggregate(per_token: Float[Tensor, "N L"], mask: Tensor, loss_type: LossType, *, n_sequences: int,
              n_tokens: int, max_len: int) -> Tensor:
    """Reduce per-token losses of (part of) a batch with the batch-wide normalisers."""
    m = mask.to(per_token.dtype)
    if loss_type is LossType.GRPO:
        return ((per_token * m).sum(1) / m.sum(1).clamp(min=1)).sum() / n_sequences
    if loss_type is LossType.DAPO:
        return (per_token * m).sum() / max(n_tokens, 1)
    return (per_token * m).sum() / (n_sequences * max_len)


def grpo_loss(
    logp: Float[Tensor, "N L"], old_logp: Float[Tensor, "N L"], advantages: Float[Tensor, " N"], mask: Tensor,
    *, epsilon: float, epsilon_high: float, loss_type: LossType, n_sequences: int, n_tokens: int, max_len: int,
    ref_logp: Tensor | None = None, beta: float = 0.0,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Clipped surrogate with separate low/high clips, plus beta * k3 KL to the reference."""
    ratio = torch.exp(logp - old_logp)
    adv = advantages[:, None]
    unclipped = ratio * adv
    clipped = torch.clamp(ratio, 1 - epsilon, 1 + epsilon_high) * adv
    per_token = -torch.minimum(unclipped, clipped)
    stats: dict[str, Tensor] = {}
    if ref_logp is not None and beta > 0:
        kl = k3_kl(logp, ref_logp)
        per_token = per_token + beta * kl
        stats["kl"] = aggregate(kl.detach(), mask, LossType.DAPO, n_sequences=n_sequences, n_tokens=n_tokens, max_len=max_len)
    m = mask.bool()
    stats["clip_low"] = ((ratio < 1 - epsilon) & (adv < 0) & m).sum().detach()
    stats["clip_high"] = ((ratio > 1 + epsilon_high) & (adv > 0) & m).sum().detach()
    loss = aggregate(per_token, mask, loss_type, n_sequences=n_sequences, n_tokens=n_tokens, max_len=max_len)
    return loss, stats


def gae(rewards: Float[Tensor, "N L"], values: Float[Tensor, "N L"], mask: Tensor, gamma: float,
        lam: float) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation over completion tokens (value 0 after the last token).
    Returns (advantages, returns), zero on masked positions."""
    m = mask.to(values.dtype)
    adv = torch.zeros_like(values)
    last = torch.zeros(values.shape[0], dtype=values.dtype, device=values.device)
    for t in reversed(range(values.shape[1])):
        next_value = values[:, t + 1] * m[:, t + 1] if t + 1 < values.shape[1] else torch.zeros_like(last)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        last = (delta + gamma * lam * last * (m[:, t + 1] if t + 1 < values.shape[1] else 0)) * m[:, t]
        adv[:, t] = last
    return adv, (adv + values) * m


def whiten(x: Tensor, mask: Tensor, eps: float = 1e-8) -> Tensor:
    m = mask.to(x.dtype)
    mean = (x * m).sum() / m.sum()
    var = (((x - mean) * m) ** 2).sum() / m.sum()
    return (x - mean) * torch.rsqrt(var + eps) * m


def ppo_losses(
    logp: Tensor, old_logp: Tensor, values: Tensor, old_values: Tensor, advantages: Tensor, returns: Tensor,
    mask: Tensor, *, cliprange: float, cliprange_value: float, n_tokens: int,
) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
    """Clipped policy loss and clipped value loss (token means over the batch)."""
    m = mask.to(logp.dtype)
    ratio = torch.exp(logp - old_logp)
    pg = torch.maximum(-advantages * ratio, -advantages * torch.clamp(ratio, 1 - cliprange, 1 + cliprange))
    v_clipped = old_values + torch.clamp(values - old_values, -cliprange_value, cliprange_value)
    vf = 0.5 * torch.maximum((values - returns) ** 2, (v_clipped - returns) ** 2)
    n = max(n_tokens, 1)
    stats = {"clip_frac": (((ratio - 1).abs() > cliprange) * m).sum().detach() / n}
    return (pg * m).sum() / n, (vf * m).sum() / n, stats


def dpo_loss(chosen_logp: Tensor, rejected_logp: Tensor, ref_chosen_logp: Tensor, ref_rejected_logp: Tensor,
             beta: float, *, rpo_alpha: float = 0.0, chosen_tokens: Tensor | None = None) -> tuple[Tensor, dict[str, Tensor]]:
    """Sigmoid DPO: -log sigmoid(beta * ((pi_c - ref_c) - (pi_r - ref_r))), mean over pairs. Inputs are
    sequence log-probabilities `[N]`. With rpo_alpha > 0, adds rpo_alpha x the per-token NLL of the chosen
    completions (`chosen_tokens`: their lengths)."""
    margin = (chosen_logp - ref_chosen_logp) - (rejected_logp - ref_rejected_logp)
    loss = -torch.nn.functional.logsigmoid(beta * margin)
    if rpo_alpha > 0:
        if chosen_tokens is None:
            raise ValueError("rpo_alpha needs chosen_tokens, the number of tokens of each chosen completion")
        loss = loss + rpo_alpha * (-chosen_logp / chosen_tokens.clamp(min=1))
    return loss.mean(), {"reward_margin": (beta * margin).mean().detach(),
                         "reward_accuracy": (margin > 0).float().mean().detach()}
