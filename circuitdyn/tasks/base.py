"""Task protocol and the tokenized clean/corrupt batch that attribution and training consume.

A task is text: prompts, a counterfactual (corrupt) prompt of the same shape, the correct answer and a
foil. Tokenization happens once, here, with the model's own tokenizer, and checks that every clean/corrupt
pair lines up token by token (activations are compared position by position).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Protocol, no_type_check, runtime_checkable

import torch
from jaxtyping import Bool, Int
from torch import Tensor

from circuitdyn.core.choices import parse_choice

logger = logging.getLogger(__name__)


class TaskError(ValueError):
    """Bad task data: the message names the offending example and the fix."""


@dataclass(frozen=True)
class TaskExample:
    """One clean/corrupt pair. `answer` completes `clean`; `foil` is the competing answer (usually the
    answer of `corrupt`). Answers are raw continuations: include a leading space where the tokenizer
    needs one (" Mary")."""

    clean: str
    corrupt: str
    answer: str
    foil: str
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        for name in ("clean", "corrupt", "answer", "foil"):
            value = getattr(self, name)
            if not isinstance(value, str) or value == "":
                raise TaskError(f"TaskExample.{name} must be a non-empty string, got {value!r}")


class Split(str, Enum):
    """Disjoint example pools of a task: training prompts and held-out evaluation prompts."""

    TRAIN = "train"
    TEST = "test"

    @classmethod
    def parse(cls, value: "Split | str") -> "Split":
        return parse_choice(cls, value, "split", TaskError)


@runtime_checkable
class Task(Protocol):
    """What circuitdyn needs from a task."""

    @property
    def name(self) -> str: ...

    @property
    def default_metric(self) -> str:
        """A key of circuitdyn.attribution.objectives.OBJECTIVES."""
        ...

    def examples(self, n: int, *, seed: int = 0, split: Split | str = Split.TEST) -> list[TaskExample]:
        """`n` deterministic examples from `split` ("train" or "test")."""
        ...

    def reward(self, example: TaskExample, completion: str) -> float:
        """Verifiable reward of a sampled completion (1.0 correct, 0.0 otherwise)."""
        ...


def distinct_examples(task: Task, n: int, *, seed: int = 0, split: Split | str = Split.TEST) -> list[TaskExample]:
    """`n` examples of `task` with distinct clean prompts (fewer when the split has fewer), in the order
    the task draws them: tasks draw with replacement, and a repeated prompt would count twice."""
    distinct: dict[str, TaskExample] = {}
    for ex in task.examples(8 * n, seed=seed, split=split):
        distinct.setdefault(ex.clean, ex)  # first occurrences, in order
    if len(distinct) < n:
        logger.warning("%s: %d distinct examples asked for, its %s split gave %d", task.name, n,
                       Split.parse(split).value, len(distinct))
    return list(distinct.values())[:n]


# no_type_check: __post_init__ checks the shapes itself and names the mismatch (static checkers still read them)
@no_type_check
@dataclass(frozen=True)
class PairBatch:
    """Clean/corrupt token ids, right-padded, aligned position by position.

    The sequence is the prompt followed by the first `k - 1` answer tokens (teacher forcing), so the k
    answer tokens are predicted at positions `answer_pos[b] + i`, i < k.
    """

    clean: Int[Tensor, "batch seq"]
    corrupt: Int[Tensor, "batch seq"]
    mask: Bool[Tensor, "batch seq"]
    answer_pos: Int[Tensor, " batch"]
    answers: Int[Tensor, "batch k"]  # padded with -1 where an answer has fewer than k tokens
    foils: Int[Tensor, " batch"]  # first foil token
    texts: tuple[TaskExample, ...] = ()

    def __post_init__(self) -> None:
        if self.clean.shape != self.corrupt.shape or self.clean.shape != self.mask.shape:
            raise TaskError(
                f"clean {tuple(self.clean.shape)}, corrupt {tuple(self.corrupt.shape)} and mask "
                f"{tuple(self.mask.shape)} must have the same shape"
            )
        if self.clean.shape[0] == 0:
            raise TaskError("empty batch: give at least one example")

    def __len__(self) -> int:
        return int(self.clean.shape[0])

    def __getitem__(self, index: slice) -> "PairBatch":
        if not isinstance(index, slice):
            raise TypeError("PairBatch supports slicing only, e.g. batch[0:8]")
        texts = self.texts[index] if self.texts else ()
        mask = self.mask[index]
        width = int(mask.sum(1).max())  # drop columns that are padding for every row of the slice
        return PairBatch(
            self.clean[index, :width], self.corrupt[index, :width], mask[:, :width],
            self.answer_pos[index], self.answers[index], self.foils[index], texts,
        )

    def to(self, device: torch.device | str) -> "PairBatch":
        return PairBatch(
            self.clean.to(device), self.corrupt.to(device), self.mask.to(device),
            self.answer_pos.to(device), self.answers.to(device), self.foils.to(device), self.texts,
        )

    def repeat(self, times: int) -> "PairBatch":
        """The batch stacked `times` times along the batch axis (replica r holds rows r*B .. r*B+B-1)."""
        return PairBatch(
            self.clean.repeat(times, 1), self.corrupt.repeat(times, 1), self.mask.repeat(times, 1),
            self.answer_pos.repeat(times), self.answers.repeat(times, 1), self.foils.repeat(times),
        )

    def fingerprint(self) -> str:
        """sha256 of the token ids, mask, answer positions, answers and foils: two attributions of the same
        data share it, whatever the model or the ablation."""
        digest = hashlib.sha256()
        for name in ("clean", "corrupt", "mask", "answer_pos", "answers", "foils"):
            tensor = getattr(self, name)
            digest.update(f"{name}{tuple(tensor.shape)}".encode())
            digest.update(tensor.detach().to("cpu", torch.int64).contiguous().numpy().tobytes())
        return digest.hexdigest()

    def identical_pairs(self) -> list[int]:
        """Rows whose clean and corrupt ids are the same (a corrupt run would change nothing)."""
        same = ((self.clean == self.corrupt) | ~self.mask).all(1)
        return [int(i) for i in torch.nonzero(same).flatten()]

    def swapped(self) -> "PairBatch":
        """The same batch with clean and corrupt exchanged (answers unchanged)."""
        return PairBatch(self.corrupt, self.clean, self.mask, self.answer_pos, self.answers, self.foils, self.texts)


def _encode(tokenizer: Any, text: str, *, special: bool) -> list[int]:
    return list(tokenizer(text, add_special_tokens=special)["input_ids"])


def check_known(tokenizer: Any, i: int, field_name: str, text: str, ids: list[int], what: str = "pair") -> None:
    """Refuse text the tokenizer maps to its unknown token (two different prompts would look the same)."""
    unk = getattr(tokenizer, "unk_token_id", None)
    if unk is None or unk not in ids or (tokenizer.unk_token and tokenizer.unk_token in text):
        return
    unknown = sorted({c for c in text if unk in _encode(tokenizer, c, special=False)})
    raise TaskError(
        f"{what} {i}: the {field_name} {text!r} contains characters this tokenizer does not know "
        f"({''.join(unknown)!r} -> {tokenizer.unk_token}); replace them (e.g. full-width digits by ASCII)"
    )


def context_length(tokenizer: Any) -> int | None:
    """The tokenizer's model_max_length when it is a real limit (transformers uses ~1e30 for 'none')."""
    limit = getattr(tokenizer, "model_max_length", None)
    return int(limit) if isinstance(limit, int) and 0 < limit < 10**9 else None


def check_context(width: int, n_ctx: int | None, where: str) -> None:
    """Refuse sequences longer than the model's context (RoPE models would run past their trained
    positions silently; learned-position models would index out of range)."""
    if n_ctx is not None and width > n_ctx:
        raise TaskError(f"{where}: sequences of {width} tokens exceed the model's context of {n_ctx}; "
                        "shorten the prompts (or the answers scored) or use a model with a longer context")


def tokenize_pairs(
    tokenizer: Any,
    examples: Sequence[TaskExample],
    *,
    answer_tokens: int = 1,
    require_single_token_answers: bool = False,
    max_length: int | None = None,
) -> PairBatch:
    """Tokenize examples into a right-padded, position-aligned PairBatch.

    `answer_tokens` (k) is how many answer tokens the metric scores; the first k-1 are appended to both
    prompts for teacher forcing. Raises TaskError naming the pair when clean and corrupt tokenize to
    different lengths, when a text holds characters the tokenizer maps to its unknown token, when a
    sequence is longer than `max_length` (default: the tokenizer's model_max_length, where it sets one),
    or when an answer is not a single token and `require_single_token_answers`.
    """
    if len(examples) == 0:
        raise TaskError("no examples: the dataset is empty; pass at least one TaskExample")
    if answer_tokens < 1:
        raise TaskError(f"answer_tokens must be >= 1, got {answer_tokens}")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is None:
        raise TaskError("the tokenizer has neither a pad nor an eos token; set tokenizer.pad_token")
    rows_clean, rows_corrupt, positions, answers, foils = [], [], [], [], []
    for i, ex in enumerate(examples):
        clean = _encode(tokenizer, ex.clean, special=True)
        corrupt = _encode(tokenizer, ex.corrupt, special=True)
        if len(clean) != len(corrupt):
            raise TaskError(
                f"pair {i}: clean {ex.clean!r} is {len(clean)} tokens but corrupt {ex.corrupt!r} is "
                f"{len(corrupt)}; activations are compared position by position, so rephrase the corrupt "
                "prompt to the same token length (or drop the pair)"
            )
        answer = _encode(tokenizer, ex.answer, special=False)
        foil = _encode(tokenizer, ex.foil, special=False)
        for field_name, text, ids in (("clean prompt", ex.clean, clean), ("corrupt prompt", ex.corrupt, corrupt),
                                      ("answer", ex.answer, answer), ("foil", ex.foil, foil)):
            check_known(tokenizer, i, field_name, text, ids)
        if not answer or not foil:
            raise TaskError(f"pair {i}: answer {ex.answer!r} or foil {ex.foil!r} tokenizes to nothing")
        if require_single_token_answers and (len(answer) != 1 or len(foil) != 1):
            raise TaskError(
                f"pair {i}: answer {ex.answer!r} -> {len(answer)} tokens, foil {ex.foil!r} -> {len(foil)}; "
                "this metric compares single next tokens: use answer_tokens/answer NLL metrics, or choose "
                "answers that are one token for this tokenizer (often with a leading space)"
            )
        forced = answer[: answer_tokens - 1]
        rows_clean.append(clean + forced)
        rows_corrupt.append(corrupt + forced)
        positions.append(len(clean) - 1)
        answers.append((answer[:answer_tokens] + [-1] * answer_tokens)[:answer_tokens])
        foils.append(foil[0])
    width = max(len(r) for r in rows_clean)
    longest = max(range(len(rows_clean)), key=lambda r: len(rows_clean[r]))
    check_context(width, max_length if max_length is not None else context_length(tokenizer), f"pair {longest}")

    def padded(rows: list[list[int]]) -> Tensor:
        return torch.tensor([r + [pad] * (width - len(r)) for r in rows], dtype=torch.long)

    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows_clean], dtype=torch.bool)
    return PairBatch(
        clean=padded(rows_clean),
        corrupt=padded(rows_corrupt),
        mask=mask,
        answer_pos=torch.tensor(positions, dtype=torch.long),
        answers=torch.tensor(answers, dtype=torch.long),
        foils=torch.tensor(foils, dtype=torch.long),
        texts=tuple(examples),
    )

