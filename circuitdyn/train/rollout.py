"""Token log-probabilities of rollouts under the policy (sampling itself lives in circuitdyn.models.sampling).

They run through a plain Hugging Face module with the bridge's own parameters: the trainer passes the
sampling twin (surface.sampling_twin), whose log-probabilities equal the bridge's bit for bit at less cost
than `bridge.original_model`'s wrapped components (which a bridge given here falls back to).
"""

from __future__ import annotations

from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from circuitdyn.models.sampling import ROLLOUT_TENSORS, Rollout, encode_prompts, positions, sample

__all__ = ["ROLLOUT_TENSORS", "Rollout", "completion_rollout", "encode_prompts", "row_seeds", "sample", "token_logprobs"]


def row_seeds(seed: int, step: int, call: int, first_row: int, n: int) -> list[int]:
    """One sampling seed per row: a function of the run's seed, the step, the step's rollout call and the
    row's place in the global batch (never of the process that draws it)."""
    return [((seed * 1_000_003 + step) * 1_009 + call) * 1_000_033 + first_row + i for i in range(n)]


def completion_rollout(tokenizer: Any, prompts: list[str], completions: list[str], device: torch.device) -> Rollout:
    """Given completions (each followed by the eos token) of given prompts, as a Rollout to score."""
    ids, mask = encode_prompts(tokenizer, prompts, device)
    rows = [list(tokenizer(c, add_special_tokens=False)["input_ids"]) + [tokenizer.eos_token_id] for c in completions]
    width = max(map(len, rows))
    cids = torch.tensor([r + [tokenizer.pad_token_id] * (width - len(r)) for r in rows], device=device)
    cmask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows], dtype=torch.bool, device=device)
    return Rollout(ids, mask, cids, cmask, tuple(completions))


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
