"""Slow references: exact edge patching and the brute-force first-order effect of each edge.

`exact`: for each edge u -> v, run the model with only v's input changed by u's delta (u set to its
counterfactual along that one edge) and report metric(patched) - metric(run). `first_order`: the derivative
of the same patched metric with respect to a scale on that delta, at 0, computed by autograd per edge: the
quantity EAP approximates in one backward pass. Edges are batched by replicating the prompts.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from circuitdyn.attribution.destinations import DestinationReader
from circuitdyn.attribution.engine import HookList, forward
from circuitdyn.attribution.intervention import Counterfactual, prepare_deltas
from circuitdyn.attribution.method import BatchJob, BatchResult, Method
from circuitdyn.attribution.objectives import ObjectiveFn, checked
from circuitdyn.graph import Graph
from circuitdyn.tasks.base import PairBatch

MAX_ROWS = 512


def _edge_patch_hooks(graph: Graph, edges: list[tuple[int, int]], residual: Tensor, scale: Tensor) -> HookList:
    """Hooks adding scale[r] * delta[u] to destination v's input in replica r of the batch."""
    batch = residual.shape[1]
    hooks: HookList = []
    for dh in graph.dest_hooks:
        mine = [(r, i, j) for r, (i, j) in enumerate(edges) if dh.start <= j < dh.stop]
        if not mine:
            continue

        def fn(act: Tensor, hook: Any, dh: Any = dh, mine: Any = mine) -> Tensor:
            act = act.clone()
            for r, i, j in mine:
                rows = slice(r * batch, (r + 1) * batch)
                d = (residual[i] * scale[r]).to(act.dtype)
                if dh.per_head and not dh.sum_heads:
                    act[rows, :, j - dh.start] = act[rows, :, j - dh.start] + d
                elif dh.per_head:
                    act[rows] = act[rows] + d[:, :, None]
                else:
                    act[rows] = act[rows] + d
            return act
        hooks.append((dh.name, fn))
    return hooks


def _per_edge(
    bridge: Any, graph: Graph, batch: PairBatch, metric: ObjectiveFn, cf: Counterfactual, means: Tensor | None,
    edges: list[tuple[int, int]] | None, derivative: bool,
) -> tuple[Tensor, Tensor]:
    """[n_examples, n_src, n_dst] effects (exact or first-order) and the metric at the run."""
    deltas, base = prepare_deltas(bridge, graph, batch, cf, means, metric)
    assert base is not None
    edges = list(graph.edges()) if edges is None else edges
    n = len(batch)
    out = torch.zeros(n, graph.n_src, graph.n_dst)
    chunk = max(1, MAX_ROWS // n)
    for start in range(0, len(edges), chunk):
        part = edges[start:start + chunk]
        rep = batch.repeat(len(part))
        # exact: the full delta (scale 1); first order: d/dscale at scale 0, i.e. at the unpatched run.
        scale = torch.full((len(part),), 0.0 if derivative else 1.0, device=batch.clean.device, requires_grad=derivative)
        with torch.set_grad_enabled(derivative):
            logits = forward(bridge, rep.clean, rep.mask, _edge_patch_hooks(graph, part, deltas.residual, scale))
            values = checked(metric(logits, rep), rep).view(len(part), n)
            if derivative:
                # d/dscale_r of sum_b M_b gives the summed effect; per example needs one grad per row b.
                effects = torch.stack([torch.autograd.grad(values[:, b].sum(), scale, retain_graph=True)[0]
                                       for b in range(n)], dim=1)
            else:
                effects = values - base[None, :]
        for r, (i, j) in enumerate(part):
            out[:, i, j] = effects[r].detach().cpu()
    return out, base


class ExactPatching:
    """metric(patched) - metric(run) of every single-edge patch."""

    method = Method.EXACT
    patches_destinations = True
    integrates_path = False
    derivative = False

    def buffer_copies(self, graph: Graph, reader: DestinationReader, steps: int) -> float:
        return 1.0

    def run(self, job: BatchJob) -> BatchResult:
        effects, values = _per_edge(job.bridge, job.graph, job.batch, job.metric, job.counterfactual, job.means,
                                    None, derivative=self.derivative)
        return BatchResult(values, effects)


class FirstOrder(ExactPatching):
    """d metric(patched) / d scale at scale 0 for every edge, by autograd per edge: what EAP approximates."""

    method = Method.FIRST_ORDER
    derivative = True

