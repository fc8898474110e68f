"""Each model answers the problems by greedy generation; the scored batch is built from its own token ids.

Prompts go through the tokenizer's chat template when it has one (the question as the user turn, with the
generation prompt), else they are encoded as plain text. Generation is batched and left-padded with a KV
cache on the plain Hugging Face twin of the bridge (same parameters). A response is the generated ids up
to, not including, the stop token; its text is decoded from those ids only for grading. The scored batch
is never re-tokenized from text: it is the prompt ids followed by the response ids.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from circuitdyn.models import LoadedModel, context_of
from circuitdyn.models.surface import sampling_twin
from circuitdyn.study.config import StudyError
from circuitdyn.tasks.base import PairBatch, check_known
from circuitdyn.tasks.problems import Problem, ProblemSet

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Generation:
    """One model's answer to one problem."""

    prompt_ids: tuple[int, ...]
    response_ids: tuple[int, ...]  # without the stop token
    text: str
    correct: bool
    stopped: bool  # False when max_new_tokens cut the response

    def n_scored(self, fraction: float) -> int:
        """The first `fraction` of the response, at least one token (floor, so 5% of 19 tokens is 1)."""
        return max(1, math.floor(fraction * len(self.response_ids)))


def pad_id(tokenizer: Any) -> int:
    """The tokenizer's pad token, or its eos token where it has none (padding is masked either way)."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def encode_prompt(tokenizer: Any, question: str, *, chat_template: bool) -> list[int]:
    if chat_template and getattr(tokenizer, "chat_template", None):
        from jinja2 import TemplateError

        try:
            ids = tokenizer.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                                tokenize=True)
        except TemplateError as err:  # a syntax error, or what the sandbox refuses (attribute access, imports)
            raise StudyError(f"the tokenizer's chat template cannot be rendered ({type(err).__name__}: {err}): fix "
                             "chat_template in its tokenizer_config.json, or study without it (chat_template=False, "
                             "--no-chat-template)") from None
        ids = ids["input_ids"] if hasattr(ids, "keys") else ids
        return [int(i) for i in ids]
    return [int(i) for i in tokenizer(question, add_special_tokens=True)["input_ids"]]


def prompt_ids(tokenizer: Any, question: str, *, chat_template: bool, template: str | None = None) -> list[int]:
    """A question's prompt ids: in the named template when one is given, else as encode_prompt."""
    if template is not None:
        from circuitdyn.study.templates import template_named

        return template_named(template).encode(tokenizer, question)
    return encode_prompt(tokenizer, question, chat_template=chat_template)


def stop_ids(tokenizer: Any, template: str | None = None) -> set[int]:
    """The tokens that end an answer: eos, and the template's single-token stop strings."""
    if template is not None:
        from circuitdyn.study.templates import template_named

        return template_named(template).stop_ids(tokenizer)
    return {tokenizer.eos_token_id} - {None}


@torch.no_grad()
def generate(model: LoadedModel, problems: Sequence[Problem], source: ProblemSet, *, chat_template: bool,
             max_new_tokens: int, batch_size: int, progress: bool = False, desc: str = "generate",
             template: str | None = None) -> list[Generation]:
    """Greedy answers of `model` to every problem, graded by `source.verify`: transformers' own `generate`
    (greedy, the template's stop tokens, no other processing) on the bridge's plain Hugging Face twin,
    batched by prompt length."""
    tok, device = model.tokenizer, model.device
    twin = sampling_twin(model.bridge, attention="sdpa")  # transformers' default attention, not the bridge's eager
    stops = stop_ids(tok, template)
    prompts = [prompt_ids(tok, p.question, chat_template=chat_template, template=template) for p in problems]
    check_prompts(tok, problems, prompts)
    room = generation_room(model, prompts, max_new_tokens)
    pad = pad_id(tok)
    # longest prompts first, so that each batch pads little; results return in problem order
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    results: dict[int, Generation] = {}
    for start in tqdm(range(0, len(order), batch_size), desc=desc, disable=not progress, leave=False):
        idx = order[start:start + batch_size]
        rows = [prompts[i] for i in idx]
        width = max(map(len, rows))
        ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows], device=device)
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=device)
        out = greedy(twin, ids, mask, min(max_new_tokens, room(width)), sorted(stops), pad)[:, width:].tolist()
        for row, i in enumerate(idx):
            generated = out[row]
            end = next((j for j, t in enumerate(generated) if t in stops), None)
            response = generated if end is None else generated[:end]
            text = tok.decode(response, skip_special_tokens=True)
            results[i] = Generation(tuple(rows[row]), tuple(response), text, bool(source.verify(problems[i], text)),
                                    end is not None)
    return [results[i] for i in range(len(problems))]


def greedy(hf: Any, ids: Tensor, mask: Tensor, max_new_tokens: int, stops: list[int], pad: int) -> Tensor:
    """transformers' greedy `generate`, and nothing else: the model's own generation settings
    (generation_config.json: repetition penalties, suppressed tokens, sampling defaults) are set aside for the
    call, so every model decodes the same way."""
    from transformers import GenerationConfig

    config = GenerationConfig(do_sample=False, num_beams=1, max_new_tokens=max_new_tokens, eos_token_id=stops,
                              pad_token_id=pad, return_dict_in_generate=False)
    own = hf.generation_config
    hf.generation_config = GenerationConfig()
    try:
        return hf.generate(input_ids=ids, attention_mask=mask, generation_config=config)
    finally:
        hf.generation_config = own


def distinct_problems(problems: Sequence[Problem], asked: int, source: str) -> list[Problem]:
    """The problems with each question once (a repeated question would count twice as an independent pair),
    saying so when some were dropped or the set holds fewer than were asked for."""
    seen: dict[str, Problem] = {}
    for p in problems:
        seen.setdefault(p.question, p)
    kept = list(seen.values())
    if len(kept) < len(problems):
        logger.warning("%s: %d repeated question(s) dropped (each question counts once in paired tests)", source,
                       len(problems) - len(kept))
    if len(kept) < asked:
        logger.warning("%s: samples=%d asked for, but it holds %d distinct problem(s); the study runs on those",
                       source, asked, len(kept))
    return kept


def check_prompts(tokenizer: Any, problems: Sequence[Problem], prompts: Sequence[list[int]]) -> None:
    """Refuse questions the tokenizer cannot tell apart: characters it maps to its unknown token, or two
    different questions that encode to the same ids (a paired test would count one prompt twice)."""
    for i, (problem, ids) in enumerate(zip(problems, prompts)):
        check_known(tokenizer, i, "question", problem.question, ids, what="problem")
    first: dict[tuple[int, ...], int] = {}
    for i, ids in enumerate(prompts):
        j = first.setdefault(tuple(ids), i)
        if j != i and problems[j].question != problems[i].question:
            raise StudyError(f"problems {j} and {i} encode to the same tokens although their questions differ "
                             f"({problems[j].question[:40]!r} vs {problems[i].question[:40]!r}); fix the questions")


def generation_room(model: LoadedModel, prompts: Sequence[list[int]], max_new_tokens: int) -> Any:
    """New tokens a batch of `width` positions may generate within the model's context. A prompt that fills
    the context is refused; where prompt + max_new_tokens passes it, a model with learned positions (which
    has no embedding past its context) has its responses cut there, a rotary one generates past the context
    it was trained on; both with a warning naming the problems."""
    n_ctx = context_of(model)
    if n_ctx is None:
        return lambda width: max_new_tokens
    too_long = [i for i, p in enumerate(prompts) if len(p) >= n_ctx]
    if too_long:
        raise StudyError(f"problems {too_long[:8]} have prompts of {len(prompts[too_long[0]])}+ tokens, which fill "
                         f"the model's context of {n_ctx} positions; drop or shorten them")
    learned = getattr(model.cfg, "positional_embedding_type", "standard") != "rotary"
    over = [i for i, p in enumerate(prompts) if len(p) + max_new_tokens > n_ctx]
    if over:
        what = "responses are cut at the context" if learned else "it generates past the context it was trained on"
        logger.warning("%d problem(s) (e.g. %s): prompt + max_new_tokens=%d passes the model's context of %d "
                       "positions; %s. Lower max_new_tokens to stay within it", len(over), over[:5], max_new_tokens,
                       n_ctx, what)
    return lambda width: max(1, min(max_new_tokens, n_ctx - width)) if learned else max_new_tokens


def scored_batch(generations: Sequence[Generation], fraction: float | None, pad_id: int, *,
                 cut_len: int | None = None) -> PairBatch:
    """Prompt + own response, teacher forced: the first k answer tokens of each response are scored (predicted
    at the last prompt position onwards), the sequence holds the prompt and the first k - 1 of them. k is
    the response's own `fraction` (common protocol: n_scored), or one `cut_len` for every response (the
    paper's protocol; a shorter response is scored whole). Clean and corrupt are the same ids (zero ablation
    needs no counterfactual input)."""
    if any(not g.response_ids for g in generations):
        raise ValueError("a response is empty: the model stopped at once, so it has no tokens to score")
    if (fraction is None) == (cut_len is None):
        raise ValueError("give either fraction (each response's own share) or cut_len (one length for all)")
    ks = [g.n_scored(fraction) if fraction is not None else min(int(cut_len or 1), len(g.response_ids))
          for g in generations]
    k_max = max(ks)
    rows = [list(g.prompt_ids) + list(g.response_ids[:k - 1]) for g, k in zip(generations, ks)]
    width = max(map(len, rows))
    ids = torch.tensor([r + [pad_id] * (width - len(r)) for r in rows], dtype=torch.long)
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows], dtype=torch.bool)
    answers = torch.tensor([list(g.response_ids[:k]) + [-1] * (k_max - k) for g, k in zip(generations, ks)],
                           dtype=torch.long)
    positions = torch.tensor([len(g.prompt_ids) - 1 for g in generations], dtype=torch.long)
    return PairBatch(ids, ids.clone(), mask, positions, answers, answers[:, 0].clone())
