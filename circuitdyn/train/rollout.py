"""Token log-probabilities of rollouts under the policy (sampling itself lives in circuitdyn.sampling).

They run through a plain Hugging Face module with the bridge's own parameters: the trainer passes the
sampling twin (surface.sampling_twin), whose log-probabilities equal the bridge's bit for bit at less cost
than `bridge.original_model`'s wrapped components (which a bridge given here falls back to).
"""

from __future__ import annotations

from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from circuitdyn.sampling import ROLLOUT_TENSORS, Rollout, encode_prompts, positions, sample

__all__ = ["ROLLOUT_TENSORS", "Rollout", "encode_prompts", "sample", "token_logprobs"]


def token_logprobs(
    model: Any, rollout: Rollout, *, value_head: torch.nn.Module | None = None, rows: slice | None = None,
) -> tuple[Float[Tensor, "N Lc"], Float[Tensor, "N Lc"], Tensor | None]:
    """Log-probability and entropy of each completion token under `model` (a bridge or a Hugging Face
    causal LM, e.g. the sampling twin), and PPO values."""
    rows = rows or slice(None)
    p_ids, p_mask = rollout.prompt_ids[rows], rollout.prompt_mask[rows]
    c_ids, c_mask = rollout.completion_ids[rows], rollout.completion_mask[rows]
    ids = torch.cat([p_ids, c_ids], 1)
    mask = torch.cat([p_mask, c_mask], 1).long()
    hf = getattr(model, "original_model", model)
    out = hf(input_ids=ids, attention_mask=mask, position_ids=positions(mask), use_cache=False,
             output_hidden_states=value_head is not None)
    lp = p_ids.shape[1]
    logits = out.logits[:, lp - 1:-1].float()
    logp_all = torch.log_softmax(logits, -1)
    logp = logp_all.gather(-1, c_ids[..., None])[..., 0]
    entropy = -(logp_all.exp() * logp_all).sum(-1)
    values = None
    if value_head is not None:
        hidden = out.hidden_states[-1][:, lp - 1:-1]
        # detached: the value loss trains the head alone and never reshapes the policy's circuits
        values = value_head(hidden.float().detach())[..., 0]
    return logp, entropy.detach(), values
