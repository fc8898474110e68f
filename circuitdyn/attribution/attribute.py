"""`attribute()`: edge scores of a model on a dataset, by any registered method.

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

import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from circuitdyn.attribution.budget import memory_budget
from circuitdyn.attribution.config import Aggregation, AttributionConfig
from circuitdyn.attribution.destinations import QKVGradients, destination_reader
from circuitdyn.attribution.eap import EAP
from circuitdyn.attribution.eap_ig import EAPIGActivations, EAPIGInputs
from circuitdyn.attribution.engine import (
    RETAINED_BETWEEN_PASSES,
    MemoryBudgetError,
    ScoreAccumulator,
    examples_per_chunk,
    frozen_parameters,
    peak_estimate,
    stackable_rows,
    token_weights,
)
from circuitdyn.attribution.errors import AttributionError
from circuitdyn.attribution.exact import ExactPatching, FirstOrder
from circuitdyn.attribution.intervention import Intervention, as_batch, source_means
from circuitdyn.attribution.kept import probed_activations
from circuitdyn.attribution.method import AttributionMethod, BatchJob, Method
from circuitdyn.attribution.objectives import (
    NotFiniteError,
    ObjectiveError,
    ObjectiveFn,
    kl_to_reference,
    objective_name,
    resolve_objective,
)
from circuitdyn.attribution.quadrature import Quadrature
from circuitdyn.attribution.recompute import recomputed_blocks
from circuitdyn.attribution.result import Attribution
from circuitdyn.graph import Granularity, Graph
from circuitdyn.models import LoadedModel, as_bridge
from circuitdyn.models.attention import AttentionKernel, efficient_attention
from circuitdyn.models.finite import logits_finite, logits_not_finite
from circuitdyn.models.weights import current_sha256, training_of
from circuitdyn.tasks.base import PairBatch, TaskExample

logger = logging.getLogger(__name__)

#: every attribution method, by name (add one by implementing AttributionMethod and registering it here)
METHODS: dict[Method, AttributionMethod] = {
    m.method: m for m in (EAP(), EAPIGInputs(), EAPIGActivations(), ExactPatching(), FirstOrder())
}


def _with_reference(bridge: Any, batch: PairBatch) -> ObjectiveFn:
    """KL to the clean run: the reference logits are this batch's clean run."""
    with torch.no_grad():
        reference = bridge(batch.clean, attention_mask=batch.mask.long())

    def kl(logits: Tensor, b: PairBatch) -> Tensor:
        # EAP-IG stacks copies of the batch: repeat the reference to match
        return kl_to_reference(logits, reference.repeat(len(b) // reference.shape[0], 1, 1), b)
    return kl


def _model_provenance(model: Any, bridge: Any) -> dict[str, Any]:
    """Where the model came from, with the hash of the weights this attribution ran on (not the ones it
    was loaded with: a model trained in place differs) and the training run that produced them."""
    loaded = model.provenance.as_dict() if isinstance(model, LoadedModel) else \
        {"architecture": str(getattr(bridge.cfg, "architecture", "?"))}
    now = current_sha256(bridge)
    out = {**loaded, "weights_sha256": now, "training": training_of(bridge) or loaded.get("training")}
    if loaded.get("weights_sha256") not in (None, now):
        out["loaded_weights_sha256"] = loaded["weights_sha256"]
    return out


def _with_passes(activations: int, method: AttributionMethod, config: AttributionConfig) -> int:
    """What several backward passes (EAP-IG's steps) hold beyond one pass's activations (engine.py)."""
    return int(activations * (1 + RETAINED_BETWEEN_PASSES)) if method.integrates_path and config.steps > 1 \
        else activations


def _refuse_broken_model(bridge: Any) -> None:
    """A non-finite metric or score whose cause is the model: say so, naming the broken weights."""
    if not logits_finite(bridge):
        raise ObjectiveError(logits_not_finite(bridge)) from None


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
    method = METHODS[Method(config.method)]
    intervention = Intervention.of(config.ablation)
    bridge = as_bridge(model)
    if not isinstance(graph, Graph):
        graph = Graph.from_model(bridge, graph)
    graph.check_model(bridge)
    if bridge.training:
        raise AttributionError("the model is in training mode (dropout would make runs disagree): call model.eval()")
    device = next(bridge.parameters()).device
    given = as_batch(model, data, config.answer_tokens)
    intervention.check(given)
    config = replace(config, answer_tokens=int(given.answers.shape[1]))  # what the batch was built with
    batch_all = intervention.run_batch(given.to(device))
    metric_fn, needs_reference = resolve_objective(metric)
    if metric == "logit_diff":
        tied = torch.nonzero(given.answers[:, 0] == given.foils).flatten().tolist()
        if tied:
            logger.warning("logit_diff is 0 by construction for pairs %s (of %d): their answer and foil start with the "
                           "same token, so those prompts score every edge 0; use answer_nll, or foils whose first "
                           "token differs", tied[:8], len(given))
    if needs_reference and not method.integrates_path and not method.patches_destinations:
        logger.warning("kl_to_clean has a zero gradient at the clean run, so plain EAP scores it as ~0 everywhere; "
                       "use method='eap-ig-inputs' (or 'eap-ig-activations'), which integrate along the path")
    n = len(batch_all)
    t0 = time.perf_counter()
    reader = destination_reader(bridge, graph, QKVGradients(config.qkv_gradients),
                                patches_destinations=method.patches_destinations)
    kernel = AttentionKernel(config.attention) is AttentionKernel.SDPA
    with contextlib.ExitStack() as stack:
        stack.enter_context(graph.enable_hooks(bridge, split_qkv=not reader.projected))
        stack.enter_context(frozen_parameters(bridge))
        attention_use = stack.enter_context(efficient_attention(bridge, kernel))
        seq = batch_all.clean.shape[1]
        budget = memory_budget(device, config.memory_budget)
        copies = method.buffer_copies(graph, reader, config.steps)
        kept = probed_activations(bridge, graph, batch_all.clean[:1], batch_all.mask[:1], AttentionKernel(config.attention).value)
        activations = _with_passes(kept.total + reader.kept_bytes_per_token() * seq, method, config)
        # recomputation saves memory only where a backward reads the activations: EAP and EAP-IG
        recompute = peak_estimate(graph, 1, seq, copies, activations) > budget.bytes and not method.patches_destinations
        if recompute:
            activations = _with_passes(kept.recomputed + reader.kept_bytes_per_token() * seq, method, config)
            logger.info("one example of %d tokens does not fit in %s with every activation kept: recomputing "
                        "activations block by block (checkpointing)", seq, budget.describe())
        try:
            chunk = min(n, config.batch_size, examples_per_chunk(graph, seq, budget, copies, activations))
        except MemoryBudgetError as err:
            raise MemoryBudgetError(f"even with activations recomputed block by block (checkpointing), {err}"
                                    if recompute else str(err)) from None
        stack.enter_context(recomputed_blocks(bridge, recompute))
        batches = [batch_all[i:i + chunk] for i in range(0, len(batch_all), chunk)]
        max_rows = stackable_rows(graph, chunk, seq, copies, activations, budget.bytes)
        means = source_means(bridge, graph, batches) if intervention.needs_means else None
        acc = ScoreAccumulator(graph, n if config.per_example else None, device, reader)
        values_all, effects_all = [], []
        per_batch = len(graph.dest_hooks)  # the bar ticks as each destination block's gradient is contracted
        bar = tqdm(total=len(batches) * per_batch, desc=f"{Method(config.method).value} ({n} prompts)",
                   unit="dest", disable=not config.progress)
        acc.on_contract = lambda: bar.update(1) if bar.n < bar.total else None
        for b, batch in enumerate(batches):
            fn = _with_reference(bridge, batch) if needs_reference else metric_fn
            weights = token_weights(batch, config.aggregation is Aggregation.PER_TOKEN, device)
            try:
                result = method.run(BatchJob(bridge, graph, batch, fn, acc, intervention.counterfactual, means,
                                             weights, config.steps, max_rows, Quadrature(config.quadrature)))
            except NotFiniteError:
                _refuse_broken_model(bridge)
                raise
            if result.effects is not None:
                effects_all.append(result.effects)
            acc.offset += len(batch)
            values_all.append(result.values.detach().float().cpu())
            bar.update((b + 1) * per_batch - bar.n)  # methods that contract otherwise (exact patching)
        bar.close()
    per_example: Tensor | None
    if effects_all:
        effects = torch.cat(effects_all)
        scores = effects.mean(0)
        per_example = effects if config.per_example else None
    else:
        scores = (acc.total / n).cpu()
        per_example = acc.per_example.cpu() if acc.per_example is not None else None
    if not torch.isfinite(scores).all():
        _refuse_broken_model(bridge)
        raise ObjectiveError("attribution produced non-finite scores: check the metric and the model dtype")
    scores = scores * graph.edge_mask
    provenance = {
        "model": _model_provenance(model, bridge),
        "graph": graph.spec.as_dict(),
        "config": config.as_dict(),
        "metric": objective_name(metric),
        "n_examples": n,
        "dataset_sha256": given.fingerprint(),
        "dtype": str(next(bridge.parameters()).dtype).replace("torch.", ""),
        "seconds": round(time.perf_counter() - t0, 3),
        "batch_chunk": chunk,
        "qkv_gradients": ("projected" if reader.projected else "split") if graph.projection_hooks else None,
        "attention_calls": attention_use.as_dict(),
        "memory_budget": budget.describe(),
        "recompute": "blocks" if recompute else "none",
        "peak_bytes_estimate": peak_estimate(graph, chunk, seq, copies, activations),
        "torch": torch.__version__,
    }
    return Attribution(scores, graph, torch.cat(values_all), config, per_example, provenance)
