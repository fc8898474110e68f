"""The RL-circuitry study's settings, validated once."""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields
from enum import Enum
from typing import Any, no_type_check

import torch

from circuitdyn.core.choices import parse_choice
from circuitdyn.core.fields import check_numbers, check_positive
from circuitdyn.graph import Granularity

MIN_RESAMPLES = 1000


class Protocol(str, Enum):
    PAPER = "paper"  # per pair: both-correct rows, the paper's filters and seeded sample, one cut length per pair
    COMMON = "common"  # circuitdyn's: one set that every model answers, each response scored on its own fraction


class StudyDtype(str, Enum):
    AUTO = "auto"  # bfloat16 on a CUDA device, float32 elsewhere
    FLOAT32 = "float32"
    BFLOAT16 = "bfloat16"
    FLOAT16 = "float16"


class StudyError(ValueError):
    """A study that cannot run as asked: the message says what to change."""


# no_type_check: __post_init__ validates every field with an error that names it; a runtime type checker in
# front of it would answer first, less clearly (static checkers still read the field types)
@no_type_check
@dataclass(frozen=True)
class StudyConfig:
    """How the paper's protocol runs.

    samples: problems generated per model; fraction: share of each model's own response that is scored
    (at least one token); min_kept: refuse when fewer problems are answered correctly by every model;
    granularities: graphs to attribute ("layer" is the paper's q/k/v-split graph); n_resamples: bootstrap
    and permutation resamples per test; offline: labels of offline algorithms (see is_offline), which the
    paper expects to move the metrics less than online RL.
    """

    protocol: Protocol | str = field(default=Protocol.PAPER, metadata={
        "help": "paper: each tuned label is a pair with the base (its both-correct rows, the paper's length filters "
                "and seeded sample, one scored length per pair and cut coefficient); common: one set of problems "
                "every model answers, each response scored on its own `fraction`"})
    samples: int = field(default=100, metadata={"help": "problems generated per model"})
    cut_coeffs: tuple[float, ...] = field(default=(0.1,), metadata={
        "flag": "--cut-coeffs", "item": float, "metavar": "C[,C...]",
        "help": "paper protocol: scored length = max(int(refer x C), 1) per pair, for each C (the paper swept "
                "0.03,0.1,0.3,0.5)"})
    num_samples: int = field(default=100, metadata={"help": "paper protocol: rows sampled per pair (seeded)"})
    small_coeff: float = field(default=0.5, metadata={"help": "paper protocol: shortest mean answer kept, x refer"})
    big_coeff: float = field(default=1.5, metadata={"help": "paper protocol: longest mean answer kept, x refer"})
    balance_coeff: float = field(default=0.5, metadata={
        "help": "paper protocol: largest |len_base - len_tuned| / mean kept"})
    sample_seed: int = field(default=42, metadata={"help": "paper protocol: random.seed of the row sample"})
    fraction: float = field(default=0.05, metadata={"help": "share of each response scored (>= 1 token)"})
    max_new_tokens: int = field(default=256, metadata={"help": "greedy generation length per problem"})
    batch_size: int = field(default=16, metadata={"help": "problems per generation and attribution pass"})
    min_kept: int = field(default=8, metadata={"help": "refuse when fewer problems are answered correctly by every model"})
    granularities: tuple[str, ...] = field(default=("layer",), metadata={
        "flag": "--granularity", "choices": [g.value for g in Granularity],
        "help": "graph(s) to attribute (repeatable; layer is the paper's q/k/v-split graph)"})
    chat_template: bool = field(default=True, metadata={"help": "encode questions with the tokenizer's chat template"})
    template: str | None = field(default=None, metadata={
        "type": str, "help": "a named prompt template instead of the chat template: plain, or one of the paper's "
                             "(deepseek-math, mistral, qwen25-math-cot); its stop strings end the answers"})
    dtype: StudyDtype | str = field(default=StudyDtype.AUTO, metadata={
        "help": "weights of the models loaded from specs (auto: bfloat16 on CUDA, float32 elsewhere); scores are "
                "float32 either way"})
    device: str | None = field(default=None, metadata={"type": str, "help": "cpu, cuda, cuda:1 (default: cuda when "
                                                                            "available)"})
    model_dir: str | None = field(default=None, metadata={
        "type": str, "help": "a folder of local model copies: a hub id org/name is loaded from DIR/org/name or "
                             "DIR/name when that folder exists (offline machines)"})
    seed: int = field(default=0, metadata={"help": "seed of the statistics' resampling"})
    n_resamples: int = field(default=400_000, metadata={"flag": "--resamples",
                                                        "help": "bootstrap resamples per pooled test"})
    layer_resamples: int = field(default=5_000, metadata={"help": "resamples per per-layer test"})
    alpha: float = field(default=0.05, metadata={"help": "false discovery rate of the verdicts"})
    offline: tuple[str, ...] = field(default=("dpo",), metadata={
        "metavar": "LABEL", "help": "offline algorithms (repeatable): a tuned label is offline when it is one of "
                                    "these or starts with one followed by a non-letter (dpo1, dpo_rpo); the rest "
                                    "are online RL"})
    per_layer: bool = field(default=True, metadata={"help": "per-layer metrics, tests and plots"})
    save_attributions: bool = field(default=True, metadata={"help": "write each model's attribution files"})
    progress: bool = field(default=True, metadata={"cli": False})

    def __post_init__(self) -> None:
        object.__setattr__(self, "protocol", parse_choice(Protocol, self.protocol, "protocol", StudyError))
        object.__setattr__(self, "dtype", parse_choice(StudyDtype, self.dtype, "dtype", StudyError))
        if self.template is not None:
            from circuitdyn.study.templates import template_named

            try:
                template_named(self.template)  # refused here, by name, when unknown
            except ValueError as err:
                raise StudyError(str(err)) from None
        for name in ("device", "model_dir"):
            if getattr(self, name) is not None and not (isinstance(getattr(self, name), str) and getattr(self, name)):
                raise StudyError(f"{name} must be a non-empty string or None, got {getattr(self, name)!r}")
        cuts = self.cut_coeffs
        if not isinstance(cuts, (tuple, list)) or not cuts or not all(
                isinstance(c, (int, float)) and not isinstance(c, bool) and 0 < c <= 1 for c in cuts):
            raise StudyError(f"cut_coeffs must be numbers in (0, 1] (e.g. 0.03,0.1,0.3,0.5), got {cuts!r}")
        object.__setattr__(self, "cut_coeffs", tuple(dict.fromkeys(float(c) for c in cuts)))
        check_numbers(self, StudyError)
        check_positive(self, "num_samples", "small_coeff", "big_coeff", "balance_coeff", error=StudyError)
        if self.small_coeff > self.big_coeff:
            raise StudyError(f"small_coeff {self.small_coeff} > big_coeff {self.big_coeff}: no row could pass")
        if not 0 < self.fraction <= 1:
            raise StudyError(f"fraction must be in (0, 1] (the share of each response that is scored), got {self.fraction}")
        check_positive(self, "samples", "max_new_tokens", "batch_size", "min_kept", "n_resamples", "layer_resamples",
                       error=StudyError)
        for name in ("n_resamples", "layer_resamples"):
            if getattr(self, name) < MIN_RESAMPLES:
                raise StudyError(f"{name}={getattr(self, name)}: a 95% CI from fewer than {MIN_RESAMPLES} resamples "
                                 "is resampling noise; use at least that many")
        if not 0 < self.alpha < 1:
            raise StudyError(f"alpha must be in (0, 1), got {self.alpha}")
        grans = tuple(self.granularities)
        if not grans or any(g not in [x.value for x in Granularity] for g in grans):
            raise StudyError(f"granularities must be a non-empty subset of ('layer', 'head'), got {self.granularities!r}")
        object.__setattr__(self, "granularities", tuple(dict.fromkeys(grans)))
        object.__setattr__(self, "offline", tuple(self.offline))

    def is_offline(self, label: str) -> bool:
        """A label is offline when it is one of `offline` or starts with one followed by a non-letter:
        with offline=("dpo",), dpo, dpo1, dpo-2, dpo_rpo and DPO are offline; dpox and grpo are online RL."""
        label = label.lower()
        return any(label == o or (label.startswith(o) and not label[len(o)].isalpha())
                   for o in map(str.lower, self.offline))

    def torch_dtype(self) -> torch.dtype:
        """The dtype models loaded from specs get (`auto`: bfloat16 on a CUDA device, float32 elsewhere)."""
        if self.dtype is StudyDtype.AUTO:
            on_cuda = (self.device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda")
            return torch.bfloat16 if on_cuda else torch.float32
        return getattr(torch, StudyDtype(self.dtype).value)

    def as_dict(self) -> dict[str, Any]:
        return {f.name: (v.value if isinstance(v := getattr(self, f.name), Enum) else v) for f in fields(self)}


LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}")


def check_label(label: object) -> str:
    """A tuned model's label: it names files (`attributions/LABEL_...`) and table rows, so it is 1-64 letters,
    digits, `_`, `.`, `+` or `-`, starting with a letter or digit (no path separators, no '..', no spaces,
    newlines or markdown/CSV syntax)."""
    if not isinstance(label, str) or not LABEL.fullmatch(label) or ".." in label:
        raise StudyError(f"tuned label {label!r} is not usable: labels name files and table rows, so use 1-64 "
                         "letters, digits, '_', '.', '+' or '-', starting with a letter or digit (e.g. grpo, dpo_rpo)")
    return label
