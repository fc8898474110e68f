"""The attribution config: frozen, validated, recorded with every result."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from enum import Enum
from typing import Any, no_type_check

from circuitdyn.attribution.destinations import QKVGradients
from circuitdyn.attribution.errors import AttributionError
from circuitdyn.attribution.intervention import Ablation
from circuitdyn.attribution.method import Method
from circuitdyn.attribution.quadrature import Quadrature
from circuitdyn.core.choices import parse_choice
from circuitdyn.core.fields import check_numbers, check_positive
from circuitdyn.models.attention import AttentionKernel


class Aggregation(str, Enum):
    PER_TOKEN = "per_token"  # sum over a prompt's positions / its number of tokens
    SUM = "sum"  # the raw sum over positions


# no_type_check: __post_init__ validates every field with an error that names it (static checkers still read
# the field types); a runtime type checker in front of it would answer first, less clearly
@no_type_check
@dataclass(frozen=True)
class AttributionConfig:
    method: Method | str = field(default=Method.EAP, metadata={"help": "how edges are scored"})
    ablation: Ablation | str = field(default=Ablation.NOISING, metadata={
        "help": "the counterfactual: noising (corrupt at the clean run), denoising, zero or mean ablation"})
    steps: int = field(default=5, metadata={"help": "EAP-IG interpolation steps"})
    quadrature: Quadrature | str = field(default=Quadrature.MIDPOINT, metadata={
        "help": "where EAP-IG's steps fall on the path: midpoint, left (the run), right (the counterfactual, as "
                "hannamw/EAP-IG), trapezoid (both ends)"})
    aggregation: Aggregation | str = field(default=Aggregation.PER_TOKEN, metadata={
        "help": "per_token: a prompt's sum over positions / its tokens; sum: the raw sum"})
    batch_size: int = field(default=32, metadata={"help": "prompts per pass (memory_budget may lower it)"})
    per_example: bool = field(default=False, metadata={"cli": False})
    memory_budget: int | None = field(default=None, metadata={"type": int, "help":
        "bytes one pass may hold (difference buffers, kept activations, gradients); default: 0.9 of a CUDA "
        "device's free memory, or 0.5 of the available RAM"})
    answer_tokens: int = field(default=1, metadata={
        "help": "answer tokens scored by NLL / log-prob metrics when tokenizing examples"})
    progress: bool = field(default=False, metadata={"cli": False})
    attention: AttentionKernel | str = field(default=AttentionKernel.SDPA, metadata={
        "help": "sdpa: memory-efficient attention where the model's attention allows it (no [T, T] pattern kept); "
                "eager: the bridge's own attention"})
    qkv_gradients: QKVGradients | str = field(default=QKVGradients.AUTO, metadata={
        "help": "how q/k/v destination gradients are read: auto, projected (at the projections) or split"})

    def __post_init__(self) -> None:
        object.__setattr__(self, "method", parse_choice(Method, self.method, "method", AttributionError))
        object.__setattr__(self, "ablation", parse_choice(Ablation, self.ablation, "ablation", AttributionError))
        object.__setattr__(self, "aggregation", parse_choice(Aggregation, self.aggregation, "aggregation",
                                                             AttributionError))
        object.__setattr__(self, "qkv_gradients", parse_choice(QKVGradients, self.qkv_gradients, "qkv_gradients",
                                                               AttributionError))
        object.__setattr__(self, "attention", parse_choice(AttentionKernel, self.attention, "attention",
                                                           AttributionError))
        object.__setattr__(self, "quadrature", parse_choice(Quadrature, self.quadrature, "quadrature",
                                                            AttributionError))
        check_numbers(self, AttributionError)
        check_positive(self, "steps", "batch_size", "answer_tokens", error=AttributionError)
        if self.memory_budget is not None:
            check_positive(self, "memory_budget", error=AttributionError)
        rule = Quadrature(self.quadrature)
        if self.steps < rule.min_steps:
            raise AttributionError(f"quadrature={rule.value!r} evaluates both ends of the path, so it needs steps >= "
                                   f"{rule.min_steps}, got {self.steps}: raise steps or use 'midpoint'")

    def as_dict(self) -> dict[str, Any]:
        return {f.name: (v.value if isinstance(v := getattr(self, f.name), Enum) else v) for f in fields(self)}
