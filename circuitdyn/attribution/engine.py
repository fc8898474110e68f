"""The attribution engine: memory budgets, forward hooks and gradient contraction.

For one batch, `delta[s]` holds, for every source s, the change of s's residual contribution when s alone
is set to its counterfactual value (see `intervention.py`). It is laid out `[n_src, B, T, d]` so that the
incoming edges of any destination (always a prefix of the sources) contract against the destination's
gradient in one matmul, inside a backward tensor hook: no Python loop over edges.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor

from circuitdyn.graph import Graph
from circuitdyn.tasks.base import PairBatch

HookList = list[tuple[str, Callable[..., Any]]]


class MemoryBudgetError(MemoryError):
    """Attribution would not fit in the memory budget even one example at a time."""


def buffer_bytes(graph: Graph, batch: int, seq: int, copies: float = 1) -> int:
    return int(copies * graph.n_src * batch * seq * graph.spec.d_model * 4)


def examples_per_chunk(graph: Graph, seq: int, budget: int, copies: float = 1) -> int:
    """How many examples fit in `budget` bytes of float32 delta buffers; refuses with the estimate."""
    one = buffer_bytes(graph, 1, seq, copies)
    if one > budget:
        raise MemoryBudgetError(
            f"one example needs {one / 2**20:.1f} MiB of activation-difference buffers ({graph.n_src} sources x "
            f"{seq} tokens x d_model {graph.spec.d_model} x 4 bytes x {copies:.1f} buffers) but memory_budget is "
            f"{budget / 2**20:.1f} MiB. Raise memory_budget, shorten the prompts, or use granularity='layer'."
        )
    return max(1, budget // one)


@contextlib.contextmanager
def frozen_parameters(bridge: Any) -> Iterator[None]:
    """No parameter gradients during attribution: the backward pass computes only what scores need."""
    params = [p for p in bridge.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


class ScoreAccumulator:
    """Contracts destination gradients with the residual deltas into `[n_src, n_dst]` scores."""

    def __init__(self, graph: Graph, n_examples: int | None, device: torch.device) -> None:
        self.graph = graph
        self.total = torch.zeros(graph.n_src, graph.n_dst, dtype=torch.float32, device=device)
        self.per_example: Tensor | None = None
        if n_examples is not None:
            self.per_example = torch.zeros(n_examples, graph.n_src, graph.n_dst, dtype=torch.float32, device=device)
        self.offset = 0  # index of the first example of the current batch (per-example scores)
        self.on_contract: Callable[[], Any] | None = None  # called once per destination hook contracted (progress)

    def contract(self, dh: Any, grad: Tensor, deltas: Tensor, weights: Tensor, rows: slice | None = None) -> None:
        """Add delta . grad for every incoming edge of the destinations of hook `dh` (or only for the
        sources in `rows`, a sub-range of its upstream prefix)."""
        rows = slice(0, dh.n_upstream) if rows is None else rows
        g = grad.float()
        g = g if dh.per_head else g[:, :, None]
        if dh.sum_heads:
            g = g.sum(2, keepdim=True)
        g = g * weights[:, :, None, None]
        up = deltas[rows]
        width = dh.stop - dh.start
        flat = g.permute(0, 1, 3, 2).reshape(-1, width)  # [B*T*d, width], same order as up
        self.total[rows, dh.start:dh.stop] += up.reshape(up.shape[0], -1) @ flat
        if self.per_example is not None:
            ex = torch.einsum("sbtd,bthd->bsh", up, g)
            self.per_example[self.offset:self.offset + g.shape[0], rows, dh.start:dh.stop] += ex
        if self.on_contract is not None and rows.start == 0:
            self.on_contract()

    def hooks(self, on_grad: Callable[[Any, Tensor], None]) -> HookList:
        """Forward hooks that call `on_grad(dest_hook, gradient)` when each destination's gradient arrives."""
        hooks: HookList = []
        for dh in self.graph.dest_hooks:
            def fn(act: Tensor, hook: Any, dh: Any = dh) -> Tensor:
                if not act.requires_grad:
                    return act
                # A fresh view: some hook points hand over the residual tensor itself (hook_mlp_in is a
                # pre-hook on ln2), whose gradient would include the skip path. The view's gradient is
                # only what flows through this destination's own branch.
                out = act.view_as(act)
                out.register_hook(lambda grad: on_grad(dh, grad.detach()))
                return out
            hooks.append((dh.name, fn))
        return hooks

    def contracting_hooks(self, deltas: Tensor, weights: Tensor) -> HookList:
        """Contract each destination gradient as soon as it arrives (one backward pass)."""
        return self.hooks(lambda dh, g: self.contract(dh, g, deltas, weights))


class GradientSum:
    """Sums destination gradients over several backward passes (EAP-IG steps), so that the contraction
    with the deltas, which is linear in the gradient, runs once instead of once per step."""

    def __init__(self) -> None:
        self.grads: dict[Any, Tensor] = {}

    def add(self, dh: Any, grad: Tensor, scale: float) -> None:
        g = grad.float() * scale
        if dh in self.grads:
            self.grads[dh] += g
        else:
            self.grads[dh] = g

    def flush(self, acc: ScoreAccumulator, deltas: Tensor, weights: Tensor) -> None:
        for dh, g in self.grads.items():
            acc.contract(dh, g, deltas, weights)
        self.grads.clear()


def token_weights(batch: PairBatch, per_token: bool, device: torch.device) -> Tensor:
    mask = batch.mask.to(device).float()
    if per_token:
        return mask / mask.sum(1, keepdim=True)
    return mask


def input_leaf_hook(graph: Graph, store: dict[str, Tensor], value: Callable[[Tensor], Tensor] | None = None) -> HookList:
    """Replace the input residual by a leaf that requires grad (optionally by `value(x)` first)."""
    name = graph.source_hooks[0].name

    def fn(act: Tensor, hook: Any) -> Tensor:
        x = act.detach() if value is None else value(act.detach())
        leaf = x.clone().requires_grad_(True)
        store["leaf"] = leaf
        return leaf
    return [(name, fn)]


def forward(bridge: Any, ids: Tensor, mask: Tensor, hooks: HookList) -> Tensor:
    with bridge.hooks(fwd_hooks=hooks):
        return bridge(ids, attention_mask=mask.long())
