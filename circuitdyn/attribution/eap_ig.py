"""EAP-IG: destination gradients averaged along a path from the run to the counterfactual.

Over inputs: the input embedding interpolated, one forward/backward per point of the quadrature rule
(quadrature.py); the run's forward doubles as the point at the run (left, trapezoid), a corrupted prompt's
forward as the point at the counterfactual (right, trapezoid), and an end the rule does not evaluate
still costs its no-grad recording forward. Over activations: every source output interpolated at once
(straight-through, so gradients still flow through the module that produced it), every point a pass of
its own.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from circuitdyn.attribution.destinations import DestinationReader, HookList
from circuitdyn.attribution.eap import backward_to, gradient_pass
from circuitdyn.attribution.engine import Gradient, forward, input_leaf_hook
from circuitdyn.attribution.gradient_sum import GradientSum
from circuitdyn.attribution.head_gradients import FactoredGradient, as_tensor
from circuitdyn.attribution.intervention import (
    Counterfactual,
    Deltas,
    counterfactual_hooks,
    delta_hooks,
    fill_counterfactual,
    new_deltas,
    post_norm,
    prepare_deltas,
    record_run,
)
from circuitdyn.attribution.method import BatchJob, BatchResult, Method
from circuitdyn.attribution.objectives import checked
from circuitdyn.attribution.qkv_projections import norm_vjp
from circuitdyn.attribution.quadrature import quadrature_points
from circuitdyn.attribution.recompute import observer
from circuitdyn.graph import Graph
from circuitdyn.graph.hook_flags import per_head_flag_off

#: EAP-IG over inputs stacks interpolation points along the batch while a pass holds at most this many
#: tokens: stacking saves the fixed cost of a pass on short prompts, and costs (cache misses, larger
#: buffers) on long ones, where each pass is already large
STACKED_TOKENS = 2048

Point = tuple[float, float]  # (alpha, weight) on the path from the run (0) to the counterfactual (1)


class EAPIGInputs:
    """Gradients averaged along the straight path from the run's input embedding to the counterfactual one,
    contracted with the (counterfactual - run) deltas."""

    method = Method.EAP_IG_INPUTS
    patches_destinations = False
    integrates_path = True

    def buffer_copies(self, graph: Graph, reader: DestinationReader, steps: int) -> float:
        # deltas + the destination gradients summed over the steps
        return 1 + reader.summed_floats_per_token(steps) / (graph.n_src * graph.spec.d_model)

    def run(self, job: BatchJob) -> BatchResult:
        bridge, graph, batch, n = job.bridge, job.graph, job.batch, len(job.batch)
        points = quadrature_points(job.quadrature, job.steps)
        floats = job.accumulator.reader.summed_floats_per_token(len(points)) * batch.clean.numel()
        grads = GradientSum(floats, batch.clean.device)
        deltas = new_deltas(graph, batch, batch.clean.device)
        at_run = next((w for a, w in points if a == 0.0), None)
        at_counterfactual = next((w for a, w in points if a == 1.0), None) \
            if job.counterfactual is Counterfactual.CORRUPT else None
        if at_counterfactual is None:
            fill_counterfactual(bridge, graph, batch, job.counterfactual, deltas.residual, job.means,
                                deltas.counterfactual_z)
        else:  # the corrupted prompt's forward is the point alpha = 1: the same input embedding, the same mask
            recording = counterfactual_hooks(graph, bridge, deltas.residual, deltas.counterfactual_z)
            _gradient_pass(job, batch.corrupt, recording, at_counterfactual, grads)
        if at_run is None:
            values = record_run(bridge, graph, batch, deltas, job.metric)
        else:
            values = _gradient_pass(job, batch.clean, delta_hooks(graph, bridge, deltas), at_run, grads)
        assert values is not None
        interior = [(a, w) for a, w in points if a != 0.0 and not (a == 1.0 and at_counterfactual is not None)]
        # Interpolation points are independent: stack several along the batch axis so each forward/backward
        # serves k points (the destination gradients of the k copies are summed before the one contraction).
        k = max(1, min(len(interior), STACKED_TOKENS // (n * batch.clean.shape[1]), job.max_rows // n))
        # the steps read no source: per-head outputs would only enlarge every forward and backward
        with per_head_flag_off(bridge, "use_attn_result"):
            self._steps(job, deltas, grads, interior, k)
        grads.flush(job.accumulator, deltas.residual, job.weights)
        return BatchResult(values.detach())

    def _steps(self, job: BatchJob, deltas: Deltas, grads: GradientSum, points: list[Point], k: int) -> None:
        bridge, graph, batch = job.bridge, job.graph, job.batch
        delta_input, n = deltas.residual[0], len(batch)
        for start in range(0, len(points), k):
            grads.next_pass()
            chunk = points[start:start + k]
            rep = batch.repeat(len(chunk))
            a = torch.tensor([p[0] for p in chunk], device=delta_input.device).repeat_interleave(n)[:, None, None]
            weight = torch.tensor([p[1] for p in chunk], device=delta_input.device).repeat_interleave(n)
            shift = delta_input.repeat(len(chunk), 1, 1)
            store: dict[str, Tensor] = {}

            def shifted(x: Tensor, a: Tensor = a, shift: Tensor = shift) -> Tensor:
                return x + (a * shift).to(x.dtype)
            leaf = input_leaf_hook(graph, store, value=shifted)

            def add(dh: Any, g: Gradient, copies: int = len(chunk)) -> None:
                if isinstance(g, FactoredGradient):
                    summed: Gradient = g.fold_copies(copies)
                else:
                    summed = g if copies == 1 else g.reshape(g.shape[0], copies, n, *g.shape[2:]).sum(1)
                grads.add(dh, summed, 1.0)
            with torch.enable_grad():
                out = checked(job.metric(forward(bridge, rep.clean, rep.mask, leaf + job.accumulator.hooks(add)), rep), rep)
                backward_to(out * weight.to(out.dtype), store["leaf"])  # each copy's gradient weighed by its point's


def _gradient_pass(job: BatchJob, ids: Tensor, sources: HookList, weight: float, grads: GradientSum) -> Tensor:
    """EAP's pass (`gradient_pass`) at a path end doubling as a quadrature point: its destination gradients,
    weighed by `weight`, are added to `grads`. Returns the metric."""
    grads.next_pass()
    return gradient_pass(job, ids, sources, job.accumulator.hooks(lambda dh, g: grads.add(dh, g, 1.0)), weight)


def _interpolating_hooks(graph: Graph, deltas: Deltas, alpha: float, store: dict[str, Tensor]) -> HookList:
    """Every source output becomes run + alpha * (counterfactual - run) in value, while gradients still flow
    through the module that produced it (straight-through)."""
    raw = deltas.raw if deltas.raw is not None else deltas.residual
    run = deltas.run
    assert run is not None
    hooks: HookList = []
    for sh in graph.source_hooks:
        def fn(act: Tensor, hook: Any, sh: Any = sh) -> Tensor:
            target = run[sh.start:sh.stop] + alpha * raw[sh.start:sh.stop]
            target = (target.permute(1, 2, 0, 3) if sh.per_head else target[0]).to(act.dtype)
            if sh.layer == -1:
                leaf = target.clone().requires_grad_(True)
                store["leaf"] = leaf
                return leaf
            return act + (target - act).detach()
        hooks.append((sh.name, fn))
    return hooks


def _pull_back(norm: Any, out: Tensor, grad: Tensor) -> Tensor:
    """J_N(out)^T grad: a destination gradient (head-major, [w, B, T, d]) carried back through a
    post-attention norm to its input, at the norm input `out` ([B, T, d]), which all w share."""
    return norm_vjp(norm, out.detach(), grad).float()


class EAPIGActivations:
    """At each step every source output is interpolated between its run and counterfactual value;
    destination gradients are averaged over the steps.

    Post-norm models (Gemma2/3, OLMo2): a head's output reaches the residual through its layer's output
    norm N, so along the path its residual contribution moves by J_N(alpha) raw_h, not by a fixed delta.
    Its edges are scored raw_h . mean_alpha J_N(alpha)^T g_v(alpha), the pre-norm gradient taken at each
    step, so that the scores of the edges into a destination sum to the path integral (completeness)."""

    method = Method.EAP_IG_ACTIVATIONS
    patches_destinations = False
    integrates_path = True

    def buffer_copies(self, graph: Graph, reader: DestinationReader, steps: int) -> float:
        return 1 + graph.n_dst / graph.n_src + 2  # deltas, summed gradients (materialised), raw and run activations

    def run(self, job: BatchJob) -> BatchResult:
        bridge, graph, batch, steps = job.bridge, job.graph, job.batch, job.steps
        deltas, values = prepare_deltas(bridge, graph, batch, job.counterfactual, job.means, job.metric,
                                        raw=True, run=True)
        assert values is not None
        raw = deltas.raw if deltas.raw is not None else deltas.residual
        post = [(ph, post_norm(bridge, ph.module)) for ph in graph.post_norm_hooks]
        for ph, _ in post:  # these rows are contracted step by step below, through the norm
            deltas.residual[ph.start:ph.stop] = 0
        grads = GradientSum()
        for alpha, weight in quadrature_points(job.quadrature, steps):
            store: dict[str, Tensor] = {}
            step: dict[Any, Tensor] = {}
            outs: dict[int, Tensor] = {}

            def keep(dh: Any, g: Gradient, step: dict[Any, Tensor] = step) -> None:
                step[dh] = step[dh] + as_tensor(g) if dh in step else as_tensor(g)

            def record(out: Tensor, hook: Any, layer: int, outs: dict[int, Tensor] = outs) -> Tensor:
                outs[layer] = out.detach()
                return out
            hooks = _interpolating_hooks(graph, deltas, alpha, store) + job.accumulator.hooks(keep) + \
                [(ph.name, observer(lambda out, hook, layer=ph.layer: record(out, hook, layer))) for ph, _ in post]
            with torch.enable_grad():
                out = checked(job.metric(forward(bridge, batch.clean, batch.mask, hooks), batch), batch)
                backward_to(out, store["leaf"])
            for dh, g in step.items():
                grads.add(dh, g, weight)
                for ph, norm in post:
                    if dh.n_upstream > ph.start:
                        pulled = _pull_back(norm, outs[ph.layer], g) * weight
                        job.accumulator.contract(dh, pulled, raw, job.weights, rows=slice(ph.start, ph.stop))
        grads.flush(job.accumulator, deltas.residual, job.weights)
        return BatchResult(values)
