"""The RL-circuitry study's settings, validated once."""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields
from typing import Any, no_type_check

from circuitdyn.core.fields import check_numbers, check_positive
from circuitdyn.graph import Granularity

MIN_RESAMPLES = 1000


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

    samples: int = field(default=100, metadata={"help": "problems generated per model"})
    fraction: float = field(default=0.05, metadata={"help": "share of each response scored (>= 1 token)"})
    max_new_tokens: int = field(default=256, metadata={"help": "greedy generation length per problem"})
    batch_size: int = field(default=16, metadata={"help": "problems per generation and attribution pass"})
    min_kept: int = field(default=8, metadata={"help": "refuse when fewer problems are answered correctly by every model"})
    granularities: tuple[str, ...] = field(default=("layer",), metadata={
        "flag": "--granularity", "choices": [g.value for g in Granularity],
        "help": "graph(s) to attribute (repeatable; layer is the paper's q/k/v-split graph)"})
    chat_template: bool = field(default=True, metadata={"help": "encode questions with the tokenizer's chat template"})
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
        check_numbers(self, StudyError)
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

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}")


def check_label(label: object) -> str:
    """A tuned model's label: it names files (`attributions/LABEL_...`) and table rows, so it is 1-64 letters,
    digits, `_`, `.`, `+` or `-`, starting with a letter or digit (no path separators, no '..', no spaces,
    newlines or markdown/CSV syntax)."""
    if not isinstance(label, str) or not LABEL.fullmatch(label) or ".." in label:
        raise StudyError(f"tuned label {label!r} is not usable: labels name files and table rows, so use 1-64 "
                         "letters, digits, '_', '.', '+' or '-', starting with a letter or digit (e.g. grpo, dpo_rpo)")
    return label
