"""The attribution config: frozen, validated, recorded with every result."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any

from circuitdyn.attribution.destinations import QKVGradients
from circuitdyn.attribution.errors import AttributionError
from circuitdyn.attribution.intervention import Ablation
from circuitdyn.attribution.method import Method
from circuitdyn.attribution.quadrature import Quadrature
from circuitdyn.choices import parse_choice


class Aggregation(str, Enum):
    PER_TOKEN = "per_token"  # sum over a prompt's positions / its number of tokens
    SUM = "sum"  # the raw sum over positions


@dataclass(frozen=True)
class AttributionConfig:
    method: Method | str = Method.EAP  # strings are parsed into the Enum in __post_init__
    ablation: Ablation | str = Ablation.NOISING
    steps: int = 5  # EAP-IG interpolation steps
    quadrature: Quadrature | str = Quadrature.MIDPOINT  # where along the path EAP-IG's steps fall (quadrature.py)
    aggregation: Aggregation | str = Aggregation.PER_TOKEN
    batch_size: int = 32
    per_example: bool = False
    memory_budget: int = 2 * 2**30  # bytes one pass may hold: difference buffers, kept activations, gradients
    answer_tokens: int = 1  # k: answer tokens scored by NLL / log-prob metrics when tokenizing examples
    progress: bool = False
    qkv_gradients: QKVGradients | str = QKVGradients.AUTO  # how q/k/v destination gradients are read

    def __post_init__(self) -> None:
        object.__setattr__(self, "method", parse_choice(Method, self.method, "method", AttributionError))
        object.__setattr__(self, "ablation", parse_choice(Ablation, self.ablation, "ablation", AttributionError))
        object.__setattr__(self, "aggregation", parse_choice(Aggregation, self.aggregation, "aggregation",
                                                             AttributionError))
        object.__setattr__(self, "qkv_gradients", parse_choice(QKVGradients, self.qkv_gradients, "qkv_gradients",
                                                               AttributionError))
        object.__setattr__(self, "quadrature", parse_choice(Quadrature, self.quadrature, "quadrature",
                                                            AttributionError))
        if not isinstance(self.steps, int) or self.steps < 1:
            raise AttributionError(f"steps must be an integer >= 1, got {self.steps!r}")
        rule = Quadrature(self.quadrature)
        if self.steps < rule.min_steps:
            raise AttributionError(f"quadrature={rule.value!r} evaluates both ends of the path, so it needs steps >= "
                                   f"{rule.min_steps}, got {self.steps}: raise steps or use 'midpoint'")
        if self.batch_size < 1:
            raise AttributionError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.memory_budget < 1:
            raise AttributionError(f"memory_budget must be a positive number of bytes, got {self.memory_budget}")
        if self.answer_tokens < 1:
            raise AttributionError(f"answer_tokens must be >= 1, got {self.answer_tokens}")

    def as_dict(self) -> dict[str, Any]:
        return {k: (v.value if isinstance(v, Enum) else v) for k, v in self.__dict__.items()}
