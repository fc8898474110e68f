"""Real edge patching: run the model with every edge outside a circuit carrying its counterfactual value.

In the patched run each destination receives, along the edges outside the circuit, the counterfactual
activation of the source (corrupt run, zero or mean), and along circuit edges the source's value in the
patched run itself. For post-norm models (Gemma3) the heads of one layer that are cut from a destination
are replaced jointly before the output norm, so the empty circuit reproduces the counterfactual run and
the full circuit the clean run exactly.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from circuitdyn.attribution.engine import HookList, forward
from circuitdyn.attribution.intervention import (
    Ablation,
    Counterfactual,
    Intervention,
    as_batch,
    fill_counterfactual,
    post_norm,
    source_means,
    write_source,
)
from circuitdyn.attribution.objectives import (
    KL_TO_CLEAN,
    OBJECTIVES,
    ObjectiveError,
    ObjectiveFn,
    checked,
    objective_name,
    resolve_objective,
)
from circuitdyn.attribution.result import Attribution
from circuitdyn.circuits.circuit import Circuit, Scoring, Selection, prune, select
from circuitdyn.core.caller import user_stacklevel
from circuitdyn.graph import Graph
from circuitdyn.models import as_bridge
from circuitdyn.tasks.base import PairBatch, TaskExample


@dataclass(frozen=True)
class Faithfulness:
    n_edges: int
    metric_circuit: float
    metric_full: float  # the clean run
    metric_empty: float  # every edge patched: the counterfactual run
    faithfulness: float  # (circuit - empty) / (full - empty)
    metric: str = "logit_diff"  # the objective it was measured under
    ablation: Ablation = Ablation.NOISING  # the counterfactual the edges outside the circuit carried


class CircuitScoringWarning(UserWarning):
    """A circuit evaluated under another objective or counterfactual than the attribution it was selected from."""


Metric = str | Callable[[Tensor, PairBatch], Tensor]


def judged_by(scoring: Scoring | None, metric: Metric | None, ablation: Ablation | str | None,
              answer_tokens: int | None) -> tuple[Metric, Ablation, int]:
    """The objective, counterfactual and answer length to measure a circuit under: the ones given, else the
    ones its edges were scored by, else logit_diff under noising. A given one that differs from the circuit's
    own is measured as asked, with a CircuitScoringWarning that names both."""
    if scoring is None:
        return metric or "logit_diff", Intervention.of(ablation or Ablation.NOISING).ablation, answer_tokens or 1
    if metric is None:
        if scoring.metric == KL_TO_CLEAN:
            raise ObjectiveError("this circuit was selected by kl_to_clean, which faithfulness cannot measure (it "
                                 "compares with the clean run itself): pass metric='logit_diff' or an answer metric")
        if scoring.metric not in OBJECTIVES:
            raise ObjectiveError(f"this circuit was selected by the custom metric {scoring.metric!r}: pass that "
                                 "function as metric= to measure it under its own objective")
        metric = scoring.metric
    chosen = Intervention.of(ablation).ablation if ablation is not None else scoring.ablation
    other = [f"metric {objective_name(metric)!r}"] if objective_name(metric) != scoring.metric != KL_TO_CLEAN else []
    other += [f"{chosen.value} ablation"] if chosen is not scoring.ablation else []
    if other:
        warnings.warn(CircuitScoringWarning(
            f"this circuit was selected by {scoring.describe()} and is measured under {' and '.join(other)}: its "
            "faithfulness then says how it serves another objective, not how well it was found; leave metric= and "
            "ablation= out to measure it under its own"), stacklevel=user_stacklevel())
    return metric, chosen, answer_tokens or scoring.answer_tokens


def _patch_hooks(graph: Graph, bridge: Any, keep: Tensor, cf: Tensor, cur: Tensor) -> HookList:
    """Hooks for one patched forward: sources record their current value in `cur`; destinations add the
    counterfactual-minus-current value of every source whose edge is not kept."""
    hooks: HookList = []
    outs: dict[int, Tensor] = {}
    norms = {ph.layer: post_norm(bridge, ph.module) for ph in graph.post_norm_hooks}
    linear = torch.ones(graph.n_src, dtype=torch.bool, device=cf.device)
    for ph in graph.post_norm_hooks:
        linear[ph.start:ph.stop] = False
    for sh in graph.source_hooks:
        def record(act: Tensor, hook: Any, sh: Any = sh) -> Tensor:
            write_source(cur, sh.start, sh.stop, sh.per_head, act)
            return act
        hooks.append((sh.name, record))
    for ph in graph.post_norm_hooks:
        def record_out(out: Tensor, hook: Any, ph: Any = ph) -> Tensor:
            outs[ph.layer] = out.detach()
            return out
        hooks.append((ph.name, record_out))
    for dh in graph.dest_hooks:
        def patch(act: Tensor, hook: Any, dh: Any = dh) -> Tensor:
            up = dh.n_upstream
            drop = (~keep[:up, dh.start:dh.stop]).float()  # [up, width]
            diff = cf[:up] - cur[:up]
            add = torch.einsum("sbtd,sw->bwtd", diff * linear[:up, None, None, None], drop)
            for ph in graph.post_norm_hooks:
                if ph.stop > up:
                    continue
                raw = torch.einsum("sbtd,sw->bwtd", diff[ph.start:ph.stop], drop[ph.start:ph.stop])
                out = outs[ph.layer].float()[:, None]
                norm = norms[ph.layer]
                add = add + (norm((out + raw).to(act.dtype)).float() - norm(out.to(act.dtype)).float())
            add = add.permute(0, 2, 1, 3).to(act.dtype)  # [B, T, width, d]
            if dh.per_head:
                return act + add  # width == heads, or 1 broadcast over heads for layer-level attention
            return act + add[:, :, 0]
        hooks.append((dh.name, patch))
    return hooks


@torch.no_grad()
def _patched_run(bridge: Any, circuit: Circuit, batch: PairBatch, metric: ObjectiveFn, cf_kind: Counterfactual,
                 means: Tensor | None) -> Tensor:
    """Metric per example of the run batch (already swapped for denoising), every edge outside `circuit`
    carrying its counterfactual value."""
    graph = circuit.graph
    device = batch.clean.device
    shape = (graph.n_src, *batch.clean.shape, graph.spec.d_model)
    cf, cur = torch.zeros(shape, device=device), torch.zeros(shape, device=device)
    with graph.enable_hooks(bridge):
        if cf_kind is Counterfactual.MEAN and means is None:
            means = source_means(bridge, graph, [batch])
        fill_counterfactual(bridge, graph, batch, cf_kind, cf, means)
        keep = circuit.edges.to(device)
        logits = forward(bridge, batch.clean, batch.mask, _patch_hooks(graph, bridge, keep, cf, cur))
    return checked(metric(logits, batch), batch)


def patched_metric(
    model: Any, circuit: Circuit, batch: PairBatch, metric: ObjectiveFn, ablation: Ablation | str = Ablation.NOISING,
    means: Tensor | None = None,
) -> Tensor:
    """Metric per example of the run with every edge outside `circuit` patched. `batch` is given as built
    (clean, corrupt): denoising runs the corrupt prompts and patches in clean activations."""
    plan = Intervention.of(ablation)
    bridge = as_bridge(model)
    circuit.graph.check_model(bridge)
    plan.check(batch)
    return _patched_run(bridge, circuit, plan.run_batch(batch.to(next(bridge.parameters()).device)), metric,
                        plan.counterfactual, means)


def _prepared(model: Any, graph: Graph, data: PairBatch | Sequence[TaskExample], metric: Any, ablation: Any,
              answer_tokens: int) -> tuple[Any, PairBatch, ObjectiveFn, Intervention, Tensor | None]:
    plan = Intervention.of(ablation)
    bridge = as_bridge(model)
    graph.check_model(bridge)
    given = as_batch(model, data, answer_tokens)
    plan.check(given)
    batch = plan.run_batch(given.to(next(bridge.parameters()).device))
    fn, needs_ref = resolve_objective(metric)
    if needs_ref:
        raise ObjectiveError("kl_to_clean is not supported for faithfulness; use logit_diff or answer metrics")
    means = None
    if plan.needs_means:
        with graph.enable_hooks(bridge):
            means = source_means(bridge, graph, [batch])
    return bridge, batch, fn, plan, means


def evaluate_circuit(
    model: Any, circuit: Circuit, data: PairBatch | Sequence[TaskExample], metric: Metric | None = None, *,
    ablation: Ablation | str | None = None, answer_tokens: int | None = None,
) -> Faithfulness:
    """Faithfulness of a circuit: how much of the full-to-empty metric gap it keeps (means over examples).

    By default it is measured under the objective and counterfactual the circuit was selected by (a hand-built
    circuit: logit_diff under noising); see `judged_by`."""
    return _curve(model, circuit, data, [circuit.n_edges], metric, Selection.TOP_N, ablation, False,
                  answer_tokens)[0]


def faithfulness_curve(
    model: Any, scores: Attribution | Circuit, data: PairBatch | Sequence[TaskExample], sizes: Sequence[int],
    metric: Metric | None = None, *, selection: Selection | str = "top_n", ablation: Ablation | str | None = None,
    prune_circuits: bool = False, answer_tokens: int | None = None,
) -> list[Faithfulness]:
    """Faithfulness of the circuits of each size selected from an attribution (Selection: "top_n" or
    "greedy"); a Circuit is evaluated as given. The full and empty runs are computed once. The objective and
    counterfactual default to the attribution's own (see `judged_by`)."""
    return _curve(model, scores, data, sizes, metric, Selection.parse(selection), ablation, prune_circuits,
                  answer_tokens)


def _curve(model: Any, scores: Attribution | Circuit, data: PairBatch | Sequence[TaskExample], sizes: Sequence[int],
           metric: Metric | None, selection: Selection, ablation: Ablation | str | None, prune_circuits: bool,
           answer_tokens: int | None) -> list[Faithfulness]:
    graph = scores.graph
    scoring = scores.scoring if isinstance(scores, Circuit) else Scoring.of(scores)
    metric, chosen, answer_tokens = judged_by(scoring, metric, ablation, answer_tokens)
    bridge, batch, fn, plan, means = _prepared(model, graph, data, metric, chosen, answer_tokens)

    def run(c: Circuit) -> float:
        return _patched_run(bridge, c, batch, fn, plan.counterfactual, means).mean().item()

    full, empty = run(Circuit.full(graph)), run(Circuit.empty(graph))
    gap = full - empty
    out = []
    for n in sizes:
        circuit = scores if isinstance(scores, Circuit) else select(scores, n, selection)
        circuit = prune(circuit) if prune_circuits else circuit
        value = run(circuit)
        out.append(Faithfulness(circuit.n_edges, value, full, empty, (value - empty) / gap if gap else float("nan"),
                                objective_name(metric), chosen))
    return out
