"""The RL-circuitry study's settings, validated once."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any, no_type_check

from circuitdyn.graph import Granularity


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
    and permutation resamples per test; offline: labels (or label prefixes before "_"/"-") of offline
    algorithms, which the paper expects to move the metrics less than online RL.
    """

    samples: int = 100
    fraction: float = 0.05
    max_new_tokens: int = 256
    batch_size: int = 16
    min_kept: int = 8
    granularities: tuple[str, ...] = ("layer",)
    chat_template: bool = True
    seed: int = 0
    n_resamples: int = 400_000
    layer_resamples: int = 5_000
    alpha: float = 0.05
    offline: tuple[str, ...] = ("dpo",)
    per_layer: bool = True
    save_attributions: bool = True
    progress: bool = True

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.type in ("int",) and (isinstance(value, bool) or not isinstance(value, int)):
                raise StudyError(f"{f.name} must be an integer, got {value!r}")
            if f.type in ("float",) and (isinstance(value, bool) or not isinstance(value, (int, float))
                                         or not math.isfinite(value)):
                raise StudyError(f"{f.name} must be a finite number, got {value!r}")
        if not 0 < self.fraction <= 1:
            raise StudyError(f"fraction must be in (0, 1] (the share of each response that is scored), got {self.fraction}")
        for name in ("samples", "max_new_tokens", "batch_size", "min_kept", "n_resamples", "layer_resamples"):
            if getattr(self, name) < 1:
                raise StudyError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0 < self.alpha < 1:
            raise StudyError(f"alpha must be in (0, 1), got {self.alpha}")
        grans = tuple(self.granularities)
        if not grans or any(g not in [x.value for x in Granularity] for g in grans):
            raise StudyError(f"granularities must be a non-empty subset of ('layer', 'head'), got {self.granularities!r}")
        object.__setattr__(self, "granularities", tuple(dict.fromkeys(grans)))
        object.__setattr__(self, "offline", tuple(self.offline))

    def is_offline(self, label: str) -> bool:
        stem = label.lower().replace("-", "_").split("_")[0]
        return label.lower() in self.offline or stem in self.offline

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}
