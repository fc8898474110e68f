"""EAP and EAP-IG on one batch.

Costs per batch: EAP = 1 counterfactual forward + 1 forward/backward. EAP-IG(m) over inputs = 2 forwards +
m forward/backwards. EAP-IG over activations: the same, every source output interpolated at once.
"""

from __future__ import annotations

from enum import Enum
from typing import Any, Callable

import torch
from torch import Tensor

from circuitdyn.attribution.engine import (
    Deltas,
    GradientSum,
    HookList,
    ScoreAccumulator,
    counterfactual_hooks,
    delta_hooks,
    forward,
    input_leaf_hook,
)
from circuitdyn.attribution.metrics import checked
from circuitdyn.graph import Graph
from circuitdyn.models import split_qkv_off
from circuitdyn.tasks.base import PairBatch

MetricFn = Callable[[Tensor, PairBatch], Tensor]
STACKED_ROWS = 256  # EAP-IG stacks interpolation points up to this many rows per forward/backward


class Counterfactual(str, Enum):
    """What each source is set to. The batch's `clean` is always the run, its `corrupt` the counterfactual
    input (the API swaps the batch for denoising)."""

    CORRUPT = "corrupt"
    ZERO = "zero"
    MEAN = "mean"


@torch.no_grad()
def source_means(bridge: Any, graph: Graph, batches: list[PairBatch]) -> Tensor:
    """Mean raw activation of every source over all valid tokens of the clean prompts: [n_src, d]."""
    device = next(bridge.parameters()).device
    total = torch.zeros(graph.n_src, graph.spec.d_model, dtype=torch.float64, device=device)
    count = 0
    for batch in batches:
        buf = torch.zeros(graph.n_src, *batch.clean.shape, graph.spec.d_model, device=device)
        mask = batch.mask.to(device)
        with split_qkv_off(bridge):
            forward(bridge, batch.clean.to(device), mask, counterfactual_hooks(graph, buf))
        total += (buf * mask[None, :, :, None]).sum((1, 2)).double()
        count += int(mask.sum())
    return (total / count).float()


def fill_counterfactual(
    bridge: Any, graph: Graph, batch: PairBatch, cf: Counterfactual, buf: Tensor, means: Tensor | None
) -> None:
    if cf is Counterfactual.ZERO:
        buf.zero_()
    elif cf is Counterfactual.MEAN:
        assert means is not None
        buf.copy_(means[:, None, None, :].expand_as(buf))
    else:
        with torch.no_grad(), split_qkv_off(bridge):
            forward(bridge, batch.corrupt, batch.mask, counterfactual_hooks(graph, buf))


def new_deltas(graph: Graph, batch: PairBatch, device: torch.device, *, raw: bool = False, run: bool = False) -> Deltas:
    shape = (graph.n_src, *batch.clean.shape, graph.spec.d_model)
    separate_raw = raw and bool(graph.post_norm_hooks)
    return Deltas(
        residual=torch.zeros(shape, device=device),
        raw=torch.zeros(shape, device=device) if separate_raw else None,
        run=torch.zeros(shape, device=device) if run else None,
    )


def prepare_deltas(
    bridge: Any, graph: Graph, batch: PairBatch, cf: Counterfactual, means: Tensor | None,
    metric: MetricFn | None = None, *, raw: bool = False, run: bool = False,
) -> tuple[Deltas, Tensor | None]:
    """Deltas of the batch (counterfactual forward, then a run forward), without gradients. Returns the
    metric at the run when `metric` is given."""
    deltas = new_deltas(graph, batch, batch.clean.device, raw=raw, run=run)
    fill_counterfactual(bridge, graph, batch, cf, deltas.raw if deltas.raw is not None else deltas.residual, means)
    with torch.no_grad(), split_qkv_off(bridge):
        logits = forward(bridge, batch.clean, batch.mask, delta_hooks(graph, bridge, deltas))
    values = checked(metric(logits, batch), batch) if metric is not None else None
    return deltas, values


def _backward(values: Tensor, leaf: Tensor) -> None:
    torch.autograd.grad(values.sum(), leaf)


def eap_batch(
    bridge: Any, graph: Graph, batch: PairBatch, metric: MetricFn, acc: ScoreAccumulator,
    cf: Counterfactual, means: Tensor | None, weights: Tensor,
) -> Tensor:
    """Plain EAP: gradient at the run, contracted with (counterfactual - run) deltas."""
    deltas = new_deltas(graph, batch, batch.clean.device)
    fill_counterfactual(bridge, graph, batch, cf, deltas.residual, means)
    store: dict[str, Tensor] = {}
    hooks = delta_hooks(graph, bridge, deltas) + input_leaf_hook(graph, store) + acc.contracting_hooks(deltas.residual, weights)
    with torch.enable_grad():
        values = checked(metric(forward(bridge, batch.clean, batch.mask, hooks), batch), batch)
        _backward(values, store["leaf"])
    return values.detach()


def midpoints(steps: int) -> list[float]:
    """Interpolation points of the midpoint rule on [0, 1] (exact for linear paths, O(1/m^2) otherwise)."""
    return [(k + 0.5) / steps for k in range(steps)]


def eap_ig_inputs_batch(
    bridge: Any, graph: Graph, batch: PairBatch, metric: MetricFn, acc: ScoreAccumulator,
    cf: Counterfactual, means: Tensor | None, weights: Tensor, steps: int,
) -> Tensor:
    """EAP-IG over inputs: gradients averaged along the straight path from the run's input embedding to
    the counterfactual one, contracted with the (counterfactual - run) deltas."""
    deltas, values = prepare_deltas(bridge, graph, batch, cf, means, metric)
    delta_input = deltas.residual[0]
    n = len(batch)
    grads = GradientSum()
    alphas = midpoints(steps)
    # Interpolation points are independent: stack several along the batch axis so each forward/backward
    # serves k points (the destination gradients of the k copies are summed before the one contraction).
    k = max(1, min(steps, STACKED_ROWS // n))
    for start in range(0, steps, k):
        chunk = alphas[start:start + k]
        rep = batch.repeat(len(chunk))
        a = torch.tensor(chunk, device=delta_input.device).repeat_interleave(n)[:, None, None]
        shift = delta_input.repeat(len(chunk), 1, 1)
        store: dict[str, Tensor] = {}
        leaf = input_leaf_hook(graph, store, value=lambda x, a=a, shift=shift: x + (a * shift).to(x.dtype))

        def add(dh: Any, g: Tensor, copies: int = len(chunk)) -> None:
            grads.add(dh, g.reshape(copies, n, *g.shape[1:]).sum(0), 1.0 / steps)
        with torch.enable_grad():
            out = checked(metric(forward(bridge, rep.clean, rep.mask, leaf + acc.hooks(add)), rep), rep)
            _backward(out, store["leaf"])
    grads.flush(acc, deltas.residual, weights)
    assert values is not None
    return values


def _interpolating_hooks(graph: Graph, deltas: Deltas, alpha: float, store: dict[str, Tensor]) -> HookList:
    """Every source output becomes run + alpha * (counterfactual - run) in value, while gradients still flow
    through the module that produced it (straight-through)."""
    raw = deltas.raw if deltas.raw is not None else deltas.residual
    assert deltas.run is not None
    hooks: HookList = []
    for sh in graph.source_hooks:
        def fn(act: Tensor, hook: Any, sh: Any = sh) -> Tensor:
            target = deltas.run[sh.start:sh.stop] + alpha * raw[sh.start:sh.stop]
            target = (target.permute(1, 2, 0, 3) if sh.per_head else target[0]).to(act.dtype)
            if sh.layer == -1:
                leaf = target.clone().requires_grad_(True)
                store["leaf"] = leaf
                return leaf
            return act + (target - act).detach()
        hooks.append((sh.name, fn))
    return hooks


def eap_ig_activations_batch(
    bridge: Any, graph: Graph, batch: PairBatch, metric: MetricFn, acc: ScoreAccumulator,
    cf: Counterfactual, means: Tensor | None, weights: Tensor, steps: int,
) -> Tensor:
    """EAP-IG over activations: at each step every source output is interpolated between its run and
    counterfactual value; destination gradients are averaged over the steps."""
    deltas, values = prepare_deltas(bridge, graph, batch, cf, means, metric, raw=True, run=True)
    grads = GradientSum()
    for alpha in midpoints(steps):
        store: dict[str, Tensor] = {}
        hooks = _interpolating_hooks(graph, deltas, alpha, store) + acc.hooks(lambda dh, g: grads.add(dh, g, 1.0 / steps))
        with torch.enable_grad():
            out = checked(metric(forward(bridge, batch.clean, batch.mask, hooks), batch), batch)
            _backward(out, store["leaf"])
    grads.flush(acc, deltas.residual, weights)
    assert values is not None
    return values
