"""Edge attribution: EAP, EAP-IG, exact patching, and the metrics they score."""

from circuitdyn.attribution.attribute import (
    Ablation,
    Aggregation,
    Attribution,
    AttributionConfig,
    AttributionError,
    Method,
    attribute,
)
from circuitdyn.attribution.engine import MemoryBudgetError
from circuitdyn.attribution.metrics import METRICS, MetricError, answer_logprob, answer_nll, logit_diff

__all__ = [
    "Ablation", "Aggregation", "Attribution", "AttributionConfig", "AttributionError", "METRICS", "MemoryBudgetError",
    "MetricError", "Method", "answer_logprob", "answer_nll", "attribute", "logit_diff",
]
