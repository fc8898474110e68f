"""`attribute()`: edge scores of a model on a dataset, by EAP, EAP-IG or exact patching.

Sign conventions (docs/concepts.md):
  noising    (a_corrupt - a_clean) . dM/dx at the clean run   (EAP-IG's convention)
  denoising  (a_clean - a_corrupt) . dM/dx at the corrupt run (TransformerLens' convention)
  zero       (0 - a_clean) . dM/dx at the clean run           (the RL-circuitry paper)
  mean       (mean(a) - a_clean) . dM/dx at the clean run
Scores are per-token averages (sum over a prompt's positions / its number of tokens), then the mean over
examples; `aggregation="sum"` keeps the raw sums over positions. Exact patching reports the metric change
of each single-edge patch, which is what `aggregation="sum"` EAP approximates.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Callable, Sequence

import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from circuitdyn.attribution import eap, exact
from circuitdyn.attribution.eap import Counterfactual
from circuitdyn.attribution.engine import ScoreAccumulator, examples_per_chunk, frozen_parameters, token_weights
from circuitdyn.attribution.metrics import MetricError, kl_to_reference, resolve_metric
from circuitdyn.graph import Graph, Granularity
from circuitdyn.models import LoadedModel, as_bridge, attribution_hooks
from circuitdyn.tasks.base import PairBatch, TaskExample, tokenize_pairs


class Method(str, Enum):
    EAP = "eap"
    EAP_IG_INPUTS = "eap-ig-inputs"
    EAP_IG_ACTIVATIONS = "eap-ig-activations"
    EXACT = "exact"
    FIRST_ORDER = "first-order"  # brute-force per-edge gradient: the slow reference for EAP


class Ablation(str, Enum):
    NOISING = "noising"
    DENOISING = "denoising"
    ZERO = "zero"
    MEAN = "mean"


class Aggregation(str, Enum):
    PER_TOKEN = "per_token"
    SUM = "sum"


class AttributionError(ValueError):
    """Bad attribution arguments: the message names the fix."""


def _enum(kind: type[Enum], value: Any, field_name: str) -> Any:
    try:
        return kind(value)
    except ValueError:
        raise AttributionError(f"unknown {field_name} {value!r}; choose one of {[m.value for m in kind]}") from None


@dataclass(frozen=True)
class AttributionConfig:
    method: Method = Method.EAP
    ablation: Ablation = Ablation.NOISING
    steps: int = 5  # EAP-IG interpolation steps
    aggregation: Aggregation = Aggregation.PER_TOKEN
    batch_size: int = 32
    per_example: bool = False
    memory_budget: int = 2 * 2**30  # bytes for the float32 activation-difference buffers
    answer_tokens: int = 1  # k: answer tokens scored by NLL / log-prob metrics when tokenizing examples
    progress: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "method", _enum(Method, self.method, "method"))
        object.__setattr__(self, "ablation", _enum(Ablation, self.ablation, "ablation"))
        object.__setattr__(self, "aggregation", _enum(Aggregation, self.aggregation, "aggregation"))
        if not isinstance(self.steps, int) or self.steps < 1:
            raise AttributionError(f"steps must be an integer >= 1, got {self.steps!r}")
        if self.batch_size < 1:
            raise AttributionError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.memory_budget < 1:
            raise AttributionError(f"memory_budget must be a positive number of bytes, got {self.memory_budget}")
        if self.answer_tokens < 1:
            raise AttributionError(f"answer_tokens must be >= 1, got {self.answer_tokens}")

    def as_dict(self) -> dict[str, Any]:
        return {k: (v.value if isinstance(v, Enum) else v) for k, v in self.__dict__.items()}


@dataclass(frozen=True, eq=False)
class Attribution:
    """Edge scores `[n_src, n_dst]` (zero off the real edges), optional per-example scores
    `[n_examples, n_src, n_dst]`, the metric at the run per example, and provenance."""

    scores: Float[Tensor, "n_src n_dst"]
    graph: Graph
    metric_values: Float[Tensor, " n_examples"]
    config: AttributionConfig
    per_example: Float[Tensor, "n_examples n_src n_dst"] | None = None
    provenance: dict[str, Any] = field(default_factory=dict)

    def edge_scores(self) -> Float[Tensor, " n_edges"]:
        """Scores of the real edges, destination-major (the order of graph.edges())."""
        return self.scores.T[self.graph.edge_mask.T]

    def score(self, edge: str | tuple[str, str]) -> float:
        i, j = self.graph.edge_index(edge)
        return float(self.scores[i, j])

    def top_edges(self, k: int = 10) -> list[tuple[str, float]]:
        """The k edges with the largest |score|, strongest first."""
        names = self.graph.edge_names()
        values = self.edge_scores()
        order = torch.argsort(values.abs(), descending=True, stable=True)[:k]
        return [(names[i], float(values[i])) for i in order]

    def to_networkx(self) -> Any:
        return self.graph.to_networkx(self.scores)


def _as_batch(model: Any, data: PairBatch | Sequence[TaskExample], answer_tokens: int) -> PairBatch:
    if isinstance(data, PairBatch):
        return data
    if isinstance(data, (list, tuple)) and data and all(isinstance(x, TaskExample) for x in data):
        tokenizer = model.tokenizer if isinstance(model, LoadedModel) else as_bridge(model).tokenizer
        return tokenize_pairs(tokenizer, list(data), answer_tokens=answer_tokens)
    if isinstance(data, (list, tuple)) and not data:
        raise AttributionError("the dataset is empty: pass at least one example")
    raise AttributionError(f"data must be a PairBatch or a list of TaskExample, got {type(data).__name__}")


def _resolve(metric: str | Callable[..., Tensor]) -> tuple[Callable[..., Tensor], bool]:
    if metric == "kl_to_clean":
        return kl_to_reference, True
    return resolve_metric(metric), False


def attribute(
    model: Any,
    graph: Graph | Granularity | str,
    data: PairBatch | Sequence[TaskExample],
    metric: str | Callable[[Tensor, PairBatch], Tensor] = "logit_diff",
    *,
    config: AttributionConfig | None = None,
    **overrides: Any,
) -> Attribution:
    """Score every edge of `graph` on `data` (see the module docstring for conventions).

    `graph` may be a Graph or a granularity ("head" / "layer"); `overrides` are AttributionConfig fields,
    e.g. `method="eap-ig-inputs", steps=8, ablation="zero", per_example=True`.
    """
    config = AttributionConfig(**{**(config.as_dict() if config else {}), **overrides})
    bridge = as_bridge(model)
    if not isinstance(graph, Graph):
        graph = Graph.from_model(bridge, graph)
    if bridge.training:
        raise AttributionError("the model is in training mode (dropout would make runs disagree): call model.eval()")
    device = next(bridge.parameters()).device
    batch_all = _as_batch(model, data, config.answer_tokens).to(device)
    if config.ablation is Ablation.DENOISING:
        batch_all = batch_all.swapped()
    metric_fn, needs_reference = _resolve(metric)
    cf = {Ablation.ZERO: Counterfactual.ZERO, Ablation.MEAN: Counterfactual.MEAN}.get(config.ablation, Counterfactual.CORRUPT)
    # float32 buffers per example, in units of the delta buffer: IG keeps summed destination gradients too
    # (about n_dst / n_src deltas' worth), activation-IG also the raw and run activations.
    ig_grads = graph.n_dst / graph.n_src if config.method in (Method.EAP_IG_INPUTS, Method.EAP_IG_ACTIVATIONS) else 0
    copies = 1 + ig_grads + (2 if config.method is Method.EAP_IG_ACTIVATIONS else 0)
    chunk = min(config.batch_size, examples_per_chunk(graph, batch_all.clean.shape[1], config.memory_budget, copies))
    batches = [batch_all[i:i + chunk] for i in range(0, len(batch_all), chunk)]
    n = len(batch_all)
    t0 = time.perf_counter()
    with attribution_hooks(bridge, split_qkv=graph.needs_split_qkv), frozen_parameters(bridge):
        means = eap.source_means(bridge, graph, batches) if cf is Counterfactual.MEAN else None
        acc = ScoreAccumulator(graph, n if config.per_example else None, device)
        values_all, effects_all = [], []
        for batch in tqdm(batches, desc=f"{config.method.value}", disable=not config.progress):
            fn = metric_fn
            if needs_reference:
                with torch.no_grad():
                    reference = bridge(batch.clean, attention_mask=batch.mask.long())
                def fn(logits: Tensor, b: PairBatch, r: Tensor = reference) -> Tensor:
                    # EAP-IG stacks copies of the batch: repeat the reference to match
                    return kl_to_reference(logits, r.repeat(len(b) // r.shape[0], 1, 1), b)
            weights = token_weights(batch, config.aggregation is Aggregation.PER_TOKEN, device)
            if config.method is Method.EAP:
                values = eap.eap_batch(bridge, graph, batch, fn, acc, cf, means, weights)
            elif config.method is Method.EAP_IG_INPUTS:
                values = eap.eap_ig_inputs_batch(bridge, graph, batch, fn, acc, cf, means, weights, config.steps)
            elif config.method is Method.EAP_IG_ACTIVATIONS:
                values = eap.eap_ig_activations_batch(bridge, graph, batch, fn, acc, cf, means, weights, config.steps)
            else:
                reference_fn = exact.exact_effects if config.method is Method.EXACT else exact.first_order_effects
                effects, values = reference_fn(bridge, graph, batch, fn, cf, means)
                effects_all.append(effects)
            acc.offset += len(batch)
            values_all.append(values.detach().float().cpu())
    if effects_all:
        per_example = torch.cat(effects_all)
        scores = per_example.mean(0)
        per_example = per_example if config.per_example else None
    else:
        scores = (acc.total / n).cpu()
        per_example = acc.per_example.cpu() if acc.per_example is not None else None
    if not torch.isfinite(scores).all():
        raise MetricError("attribution produced non-finite scores: check the metric and the model dtype")
    scores = scores * graph.edge_mask
    provenance = {
        "model": model.provenance.as_dict() if isinstance(model, LoadedModel) else {"architecture": str(getattr(bridge.cfg, "architecture", "?"))},
        "graph": graph.spec.as_dict(),
        "config": config.as_dict(),
        "metric": metric if isinstance(metric, str) else getattr(metric, "__name__", "callable"),
        "n_examples": n,
        "dtype": str(next(bridge.parameters()).dtype).replace("torch.", ""),
        "seconds": round(time.perf_counter() - t0, 3),
        "torch": torch.__version__,
    }
    return Attribution(scores, graph, torch.cat(values_all), config, per_example, provenance)
