"""Rollouts and token log-probabilities on the policy.

Both run through `bridge.original_model`: the Hugging Face module tree that the bridge wraps, so the same
parameters (and the same bridge components) the attribution reads; it accepts a KV cache and explicit
position ids, which sampling from left-padded prompts needs. Sampling draws from a torch.Generator the
trainer owns, so a resumed run continues the same random stream.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor


@dataclass(frozen=True)
class Rollout:
    prompt_ids: Int[Tensor, "N Lp"]  # left-padded
    prompt_mask: Bool[Tensor, "N Lp"]
    completion_ids: Int[Tensor, "N Lc"]  # right-padded; includes the eos token when one was sampled
    completion_mask: Bool[Tensor, "N Lc"]
    texts: tuple[str, ...]

    def select(self, rows: list[int], *, texts: bool = True) -> "Rollout":
        """The rollout restricted to `rows` (repeats allowed), with their texts or without."""
        at = torch.tensor(rows, device=self.prompt_ids.device)
        return Rollout(self.prompt_ids[at], self.prompt_mask[at], self.completion_ids[at], self.completion_mask[at],
                       tuple(self.texts[i] for i in rows) if texts else ())


ROLLOUT_TENSORS = ("prompt_ids", "prompt_mask", "completion_ids", "completion_mask")


def encode_prompts(tokenizer: Any, prompts: list[str], device: torch.device) -> tuple[Tensor, Tensor]:
    rows = [list(tokenizer(p, add_special_tokens=True)["input_ids"]) for p in prompts]
    width = max(map(len, rows))
    pad = tokenizer.pad_token_id
    ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows], device=device)
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], dtype=torch.bool, device=device)
    return ids, mask


def _positions(mask: Tensor) -> Tensor:
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


def _top_p(logits: Tensor, top_p: float) -> Tensor:
    if top_p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
    probs = torch.softmax(sorted_logits, -1)
    drop = probs.cumsum(-1) - probs > top_p  # keep the smallest prefix whose mass reaches top_p
    sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
    return torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)


@torch.no_grad()
def sample(
    bridge: Any, tokenizer: Any, prompt_ids: Tensor, prompt_mask: Tensor, *, max_new_tokens: int,
    temperature: float = 1.0, top_p: float = 1.0, generator: torch.Generator | None = None, greedy: bool = False,
    stop_token_ids: tuple[int, ...] = (),
) -> Rollout:
    """Sample completions with a KV cache; stops a row at the tokenizer's eos token (or any of
    `stop_token_ids`, which are kept in the completion). `bridge` may also be
    a plain Hugging Face causal LM (e.g. a sampling_twin)."""
    hf = getattr(bridge, "original_model", bridge)
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    stops = torch.tensor([eos, *stop_token_ids], device=prompt_ids.device)
    n = prompt_ids.shape[0]
    mask = prompt_mask.long()
    out = hf(input_ids=prompt_ids, attention_mask=mask, position_ids=_positions(mask), use_cache=True)
    next_pos = mask.sum(-1, keepdim=True)
    done = torch.zeros(n, dtype=torch.bool, device=prompt_ids.device)
    tokens, alive = [], []
    for step in range(max_new_tokens):
        logits = out.logits[:, -1].float()
        if not torch.isfinite(logits).all():
            raise FloatingPointError(f"the policy produced non-finite logits at generated token {step}")
        if greedy:
            nxt = logits.argmax(-1)
        else:
            probs = torch.softmax(_top_p(logits / temperature, top_p), -1)
            nxt = torch.multinomial(probs, 1, generator=generator)[:, 0]
        nxt = torch.where(done, torch.full_like(nxt, pad), nxt)
        tokens.append(nxt)
        alive.append(~done)
        done = done | torch.isin(nxt, stops)
        if bool(done.all()) or step == max_new_tokens - 1:
            break
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
        out = hf(input_ids=nxt[:, None], attention_mask=mask, position_ids=next_pos, past_key_values=out.past_key_values,
                 use_cache=True)
        next_pos = next_pos + 1
    ids = torch.stack(tokens, 1)
    cmask = torch.stack(alive, 1)
    texts = tuple(tokenizer.decode(row[m].tolist(), skip_special_tokens=True) for row, m in zip(ids, cmask))
    return Rollout(prompt_ids, prompt_mask, ids, cmask, texts)


def token_logprobs(
    bridge: Any, rollout: Rollout, *, value_head: torch.nn.Module | None = None, rows: slice | None = None,
) -> tuple[Float[Tensor, "N Lc"], Float[Tensor, "N Lc"], Tensor | None]:
    """Log-probability and entropy of each completion token under the policy (and PPO values)."""
    rows = rows or slice(None)
    p_ids, p_mask = rollout.prompt_ids[rows], rollout.prompt_mask[rows]
    c_ids, c_mask = rollout.completion_ids[rows], rollout.completion_mask[rows]
    ids = torch.cat([p_ids, c_ids], 1)
    mask = torch.cat([p_mask, c_mask], 1).long()
    out = bridge.original_model(input_ids=ids, attention_mask=mask, position_ids=_positions(mask),
                                output_hidden_states=value_head is not None)
    lp = p_ids.shape[1]
    logits = out.logits[:, lp - 1:-1].float()
    logp_all = torch.log_softmax(logits, -1)
    logp = logp_all.gather(-1, c_ids[..., None])[..., 0]
    entropy = -(logp_all.exp() * logp_all).sum(-1)
    values = None
    if value_head is not None:
        hidden = out.hidden_states[-1][:, lp - 1:-1]
        values = value_head(hidden.float())[..., 0]
    return logp, entropy.detach(), values
