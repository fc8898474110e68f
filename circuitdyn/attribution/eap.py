"""EAP: one counterfactual forward, then one forward/backward at the run, contracting every destination's
gradient with the (counterfactual - run) deltas of its upstream sources."""

from __future__ import annotations

import torch
from torch import Tensor

from circuitdyn.attribution.destinations import DestinationReader, HookList
from circuitdyn.attribution.engine import forward, input_leaf_hook
from circuitdyn.attribution.head_sources import results_off
from circuitdyn.attribution.intervention import delta_hooks, fill_counterfactual, new_deltas
from circuitdyn.attribution.method import BatchJob, BatchResult, Method
from circuitdyn.attribution.objectives import checked
from circuitdyn.graph import Graph


def backward_to(values: Tensor, leaf: Tensor) -> None:
    """Backward from the summed metric to the input leaf: destination gradients arrive in their hooks."""
    torch.autograd.grad(values.sum(), leaf)


def gradient_pass(job: BatchJob, ids: Tensor, sources: HookList, destinations: HookList, weight: float = 1.0) -> Tensor:
    """A forward of `ids` (with the batch's mask) that records sources (`sources`), and a backward of
    `weight` x the metric whose destination gradients arrive in `destinations`. Returns the metric."""
    store: dict[str, Tensor] = {}
    hooks = sources + input_leaf_hook(job.graph, store) + destinations
    with torch.enable_grad(), results_off(job.bridge, job.graph):  # sources are read at z (head_sources.py)
        values = checked(job.metric(forward(job.bridge, ids, job.batch.mask, hooks), job.batch), job.batch)
        backward_to(values * weight, store["leaf"])  # x 1.0 is exact
    return values.detach()


class EAP:
    method = Method.EAP
    patches_destinations = False
    integrates_path = False

    def buffer_copies(self, graph: Graph, reader: DestinationReader, steps: int) -> float:
        return 1.0

    def run(self, job: BatchJob) -> BatchResult:
        graph, batch, bridge = job.graph, job.batch, job.bridge
        deltas = new_deltas(graph, batch, batch.clean.device)
        fill_counterfactual(bridge, graph, batch, job.counterfactual, deltas.residual, job.means,
                            deltas.counterfactual_z)
        values = gradient_pass(job, batch.clean, delta_hooks(graph, bridge, deltas),
                               job.accumulator.contracting_hooks(deltas.residual, job.weights))
        job.accumulator.flush(deltas.residual, job.weights)
        return BatchResult(values)
