"""Model confidence and output diversity on a probe set.

confidence: at the position that predicts the first answer token, the mean max-probability, the mean
token entropy (nats) and the mean log-probability of the correct answer token.
diversity: G sampled completions per prompt give distinct-n (distinct n-grams / all n-grams, per prompt,
averaged; in characters, words and, given the tokenizer, tokens: a real model's diversity is a statement
about its tokens and words, a character count mostly about their spelling), pass@k (the unbiased
estimator 1 - C(G-c, k) / C(G, k) with c correct samples) and self-agreement (share of samples equal to
the prompt's most common completion).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from typing import Any, Literal

import torch

from circuitdyn.models import as_bridge
from circuitdyn.tasks.base import PairBatch, Task, TaskExample


@torch.no_grad()
def confidence(model: Any, batch: PairBatch) -> dict[str, float]:
    bridge = as_bridge(model)
    device = next(bridge.parameters()).device
    logits = bridge(batch.clean.to(device), attention_mask=batch.mask.to(device).long())
    rows = torch.arange(len(batch), device=device)
    logp = torch.log_softmax(logits[rows, batch.answer_pos.to(device)].float(), -1)
    p = logp.exp()
    return {"confidence_max_prob": float(p.max(-1).values.mean()),
            "confidence_entropy": float(-(p * logp).sum(-1).mean()),
            "confidence_answer_logprob": float(logp[rows, batch.answers[:, 0].to(device)].mean())}


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples with c correct (Chen et al. 2021)."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"need 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


Unit = Literal["char", "word", "token"]


def units(text: str, unit: Unit, tokenizer: Any = None) -> list[Any]:
    """A completion as characters, whitespace-separated words, or the tokenizer's token ids."""
    if unit == "char":
        return list(text)
    if unit == "word":
        return text.split()
    if unit == "token":
        if tokenizer is None:
            raise ValueError("token n-grams need the model's tokenizer: distinct_n(..., unit='token', tokenizer=tok)")
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])
    raise ValueError(f"unit must be 'char', 'word' or 'token', got {unit!r}")


def distinct_n(texts: Sequence[str], n: int, *, unit: Unit = "char", tokenizer: Any = None) -> float:
    """Distinct n-grams / all n-grams over `texts`, in characters, words or tokens."""
    seqs = [units(t, unit, tokenizer) for t in texts]
    grams = [tuple(s[i:i + n]) for s in seqs for i in range(max(0, len(s) - n + 1))]
    return len(set(grams)) / len(grams) if grams else 0.0


def diversity(samples: Sequence[Sequence[str]], examples: Sequence[TaskExample], task: Task,
              *, ks: Sequence[int] = (1, 4), tokenizer: Any = None) -> dict[str, float]:
    """`samples[i]` are the G completions of `examples[i]`. distinct_1/2 count character n-grams,
    distinct_word_1/2 word n-grams, and, given the model's tokenizer, distinct_token_1/2 token n-grams."""
    if len(samples) != len(examples) or not samples:
        raise ValueError("give one list of completions per example, and at least one example")
    G = len(samples[0])
    grams: list[tuple[str, Unit]] = [("distinct", "char"), ("distinct_word", "word")]
    if tokenizer is not None:
        grams.append(("distinct_token", "token"))
    out: dict[str, list[float]] = {f"{name}_{n}": [] for name, _ in grams for n in (1, 2)}
    out["self_agreement"] = []
    out.update({f"pass@{k}": [] for k in ks if k <= G})
    for texts, ex in zip(samples, examples):
        for name, unit in grams:
            for n in (1, 2):
                out[f"{name}_{n}"].append(distinct_n(texts, n, unit=unit, tokenizer=tokenizer))
        out["self_agreement"].append(Counter(texts).most_common(1)[0][1] / len(texts))
        c = int(sum(task.reward(ex, t) > 0.5 for t in texts))
        for k in ks:
            if k <= G:
                out[f"pass@{k}"].append(pass_at_k(len(texts), c, k))
    return {k: sum(v) / len(v) for k, v in out.items()}
