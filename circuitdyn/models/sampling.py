"""Sampling completions with a KV cache: the Rollout that training, dynamics and studies share.

Sampling runs on a plain Hugging Face causal LM (the bridge's `original_model`, or the parameter-sharing
`surface.sampling_twin`): it accepts a KV cache and explicit position ids, which sampling from left-padded
prompts needs. It draws from a torch.Generator the caller owns (a trainer checkpoints it, so a resumed run
continues the same random stream). Top-k and top-p filtering are transformers' own logits warpers.
Rows that repeat a prompt (a GRPO group, a diversity probe) share its prefill: each distinct prompt runs
once and its KV cache is copied to its rows, which then decode apart.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Bool, Int
from torch import Tensor
from transformers import LogitsProcessorList, TopKLogitsWarper, TopPLogitsWarper


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


def encode_prompts(tokenizer: Any, prompts: list[str], device: torch.device) -> tuple[Int[Tensor, "N L"], Bool[Tensor, "N L"]]:
    """Left-padded prompt ids and their mask."""
    rows = [list(tokenizer(p, add_special_tokens=True)["input_ids"]) for p in prompts]
    width = max(map(len, rows))
    pad = tokenizer.pad_token_id
    ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows], device=device)
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], dtype=torch.bool, device=device)
    return ids, mask


def positions(mask: Tensor) -> Tensor:
    """Position ids of left-padded rows (0 at each row's first real token)."""
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


def warpers(top_k: int = 0, top_p: float = 1.0) -> LogitsProcessorList:
    """transformers' top-k and top-p warpers (none for top_k=0 and top_p=1: the full distribution)."""
    out = LogitsProcessorList()
    if top_k > 0:
        out.append(TopKLogitsWarper(top_k))
    if top_p < 1.0:
        out.append(TopPLogitsWarper(top_p))
    return out


def _draw(probs: Tensor, streams: list[torch.Generator]) -> Tensor:
    """One token per row by inverting the row's CDF at a uniform from the row's own stream."""
    u = torch.cat([torch.rand(1, generator=g, device=probs.device) for g in streams])
    cdf = probs.double().cumsum(-1)
    u = (u.double() * cdf[:, -1]).clamp_min(torch.finfo(torch.float64).tiny)  # never a zero-probability token
    return torch.searchsorted(cdf, u[:, None])[:, 0].clamp(max=probs.shape[-1] - 1)


def _prefill(hf: Any, prompt_ids: Tensor, mask: Tensor) -> tuple[Tensor, Any]:
    """Last-position logits of every row and the KV cache, each distinct (ids, mask) row run once."""
    key = torch.cat([prompt_ids, mask], 1)
    distinct, inverse = torch.unique(key, dim=0, return_inverse=True)
    width = prompt_ids.shape[1]
    if distinct.shape[0] < key.shape[0]:
        ids, m = distinct[:, :width], distinct[:, width:]
        out = hf(input_ids=ids, attention_mask=m, position_ids=positions(m), use_cache=True)
        cache = out.past_key_values
        if hasattr(cache, "batch_select_indices"):  # a transformers Cache: copy each prompt's cache to its rows
            cache.batch_select_indices(inverse)
            return out.logits[inverse, -1], cache
        # a legacy tuple cache (no model of transformers 5 returns one): run every row instead
    out = hf(input_ids=prompt_ids, attention_mask=mask, position_ids=positions(mask), use_cache=True)
    return out.logits[:, -1], out.past_key_values


@torch.no_grad()
def sample(
    bridge: Any, tokenizer: Any, prompt_ids: Tensor, prompt_mask: Tensor, *, max_new_tokens: int,
    temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0, generator: torch.Generator | None = None,
    greedy: bool = False, stop_token_ids: tuple[int, ...] = (), row_seeds: Sequence[int] | None = None,
) -> Rollout:
    """Sample completions with a KV cache; stops a row at the tokenizer's eos token (or any of
    `stop_token_ids`, which are kept in the completion). `bridge` may also be
    a plain Hugging Face causal LM (e.g. a sampling_twin).

    `row_seeds` gives each row its own random stream (one uniform per token, inverted through the row's
    cumulative distribution), so a row's sample does not depend on which other rows share its batch: data-
    parallel ranks sampling their share of a batch draw what one process drawing the whole batch would."""
    hf = getattr(bridge, "original_model", bridge)
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    stops = torch.tensor([eos, *stop_token_ids], device=prompt_ids.device)
    n = prompt_ids.shape[0]
    mask = prompt_mask.long()
    last, cache = _prefill(hf, prompt_ids, mask)
    next_pos = mask.sum(-1, keepdim=True)
    done = torch.zeros(n, dtype=torch.bool, device=prompt_ids.device)
    warp = warpers(top_k, top_p)
    streams = None
    if row_seeds is not None:
        if len(row_seeds) != n:
            raise ValueError(f"row_seeds has {len(row_seeds)} seeds for {n} rows")
        streams = [torch.Generator(device=prompt_ids.device).manual_seed(int(s)) for s in row_seeds]
    tokens, alive = [], []
    for step in range(max_new_tokens):
        logits = last.float()
        if not torch.isfinite(logits).all():
            raise FloatingPointError(f"the policy produced non-finite logits at generated token {step}")
        if greedy:
            nxt = logits.argmax(-1)
        else:
            probs = torch.softmax(warp(prompt_ids, logits / temperature), -1)  # type: ignore[arg-type]
            nxt = _draw(probs, streams) if streams is not None else \
                torch.multinomial(probs, 1, generator=generator)[:, 0]
        nxt = torch.where(done, torch.full_like(nxt, pad), nxt)
        tokens.append(nxt)
        alive.append(~done)
        done = done | torch.isin(nxt, stops)
        if bool(done.all()) or step == max_new_tokens - 1:
            break
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
        out = hf(input_ids=nxt[:, None], attention_mask=mask, position_ids=next_pos, past_key_values=cache,
                 use_cache=True)
        last, cache = out.logits[:, -1], out.past_key_values
        next_pos = next_pos + 1
    ids = torch.stack(tokens, 1)
    cmask = torch.stack(alive, 1)
    texts = tuple(tokenizer.decode(row[m].tolist(), skip_special_tokens=True) for row, m in zip(ids, cmask))
    return Rollout(prompt_ids, prompt_mask, ids, cmask, texts)


