"""EAP: one counterfactual forward, then one forward/backward at the run, contracting every destination's
gradient with the (counterfactual - run) deltas of its upstream sources."""

from __future__ import annotations

import torch
from torch import Tensor

from circuitdyn.attribution.destinations import DestinationReader
from circuitdyn.attribution.engine import forward, input_leaf_hook
from circuitdyn.attribution.intervention import delta_hooks, fill_counterfactual, new_deltas
from circuitdyn.attribution.method import BatchJob, BatchResult, Method
from circuitdyn.attribution.objectives import checked
from circuitdyn.graph import Graph


def backward_to(values: Tensor, leaf: Tensor) -> None:
    """Backward from the summed metric to the input leaf: destination gradients arrive in their hooks."""
    torch.autograd.grad(values.sum(), leaf)


class EAP:
    method = Method.EAP

    def buffer_copies(self, graph: Graph, reader: DestinationReader, steps: int) -> float:
        return 1.0

    def run(self, job: BatchJob) -> BatchResult:
        graph, batch, bridge = job.graph, job.batch, job.bridge
        deltas = new_deltas(graph, batch, batch.clean.device)
        fill_counterfactual(bridge, graph, batch, job.counterfactual, deltas.residual, job.means)
        store: dict[str, Tensor] = {}
        hooks = delta_hooks(graph, bridge, deltas) + input_leaf_hook(graph, store) \
            + job.accumulator.contracting_hooks(deltas.residual, job.weights)
        with torch.enable_grad():
            values = checked(job.metric(forward(bridge, batch.clean, batch.mask, hooks), batch), batch)
            backward_to(values, store["leaf"])
        job.accumulator.flush(deltas.residual, job.weights)
        return BatchResult(values.detach())
