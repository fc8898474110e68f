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
from circuitdyn.saved_tensors import saved_tensor_storages
from circuitdyn.tasks.base import PairBatch

HookList = list[tuple[str, Callable[..., Any]]]


class MemoryBudgetError(MemoryError):
    """Attribution would not fit in the memory budget even one example at a time."""


def buffer_bytes(graph: Graph, batch: int, seq: int, copies: float = 1) -> int:
    return int(copies * graph.n_src * batch * seq * graph.spec.d_model * 4)


def gradient_bytes(graph: Graph, batch: int, seq: int) -> int:
    """The float32 destination gradients buffered for the largest fused contraction (see fused_groups)."""
    widths = [sum(h.stop - h.start for h in group) for group in fused_groups(graph).values()] or [1]
    return 2 * max(widths) * batch * seq * graph.spec.d_model * 4  # the arrived gradients and the GEMM operand


def saved_activation_bytes(bridge: Any, graph: Graph, ids: Tensor, mask: Tensor) -> int:
    """Bytes autograd keeps for the backward of one run forward of `ids` with the graph's hooks on (call it
    inside `graph.enable_hooks` and `frozen_parameters`): every saved tensor's storage, once, parameters
    excluded. Measured, so it holds for any architecture and hook flag."""
    store: dict[str, Tensor] = {}
    with saved_tensor_storages(bridge.parameters()) as storages:
        logits = forward(bridge, ids, mask, input_leaf_hook(graph, store))
        storages[-1] = logits.untyped_storage().nbytes()  # the logits the metric reads
    return int(sum(storages.values()))


#: the backward's transient memory (gradients of the activations, released layer by layer) as a share of
#: the activations autograd keeps: measured as peak RSS above the estimate without it, on GPT-2 shapes of
#: 16 layers x 64 tokens and 6 layers x 256 tokens, head and layer graphs (0.38-0.53; benchmarks/bench_shapes.py)
BACKWARD_TRANSIENT = 0.45


def examples_per_chunk(graph: Graph, seq: int, budget: int, copies: float = 1, activations: int = 0) -> int:
    """How many examples fit in `budget` bytes: `copies` float32 delta buffers, the destination gradients
    of one fused contraction and `activations` bytes per example (what autograd saves, probed by
    `saved_activation_bytes`) plus the backward's transient share of them. Refuses with the estimate when
    not even one fits."""
    deltas, grads = buffer_bytes(graph, 1, seq, copies), gradient_bytes(graph, 1, seq)
    one = peak_estimate(graph, 1, seq, copies, activations)
    if one > budget:
        raise MemoryBudgetError(
            f"one example needs {one / 2**20:.1f} MiB: {deltas / 2**20:.1f} MiB of activation-difference buffers "
            f"({graph.n_src} sources x {seq} tokens x d_model {graph.spec.d_model} x 4 bytes x {copies:.1f} "
            f"buffers), {activations / 2**20:.1f} MiB of activations kept for the backward and "
            f"{grads / 2**20:.1f} MiB of gradients, but memory_budget is {budget / 2**20:.1f} MiB. Raise "
            "memory_budget, shorten the prompts, or use granularity='layer'."
        )
    return max(1, budget // one)


def peak_estimate(graph: Graph, batch: int, seq: int, copies: float, activations: int) -> int:
    """The bytes one pass over `batch` examples needs (what examples_per_chunk budgets)."""
    return batch * (buffer_bytes(graph, 1, seq, copies) + gradient_bytes(graph, 1, seq)
                    + int(activations * (1 + BACKWARD_TRANSIENT)))


def stackable_rows(graph: Graph, chunk: int, seq: int, copies: float, activations: int, budget: int) -> int:
    """How many rows one forward/backward may hold (EAP-IG over inputs stacks interpolation points along
    the batch): the chunk's buffers stay, and what is left of the budget pays each row's activations."""
    spare = budget - peak_estimate(graph, chunk, seq, copies, 0)
    return max(chunk, spare // max(int(activations * (1 + BACKWARD_TRANSIENT)), 1))


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
    """Contracts destination gradients with the residual deltas into `[n_src, n_dst]` scores.

    A destination's incoming edges are the prefix of sources `deltas[:n_upstream]`, so each contraction is
    one GEMM `[n_upstream, B*T*d] x [B*T*d, width]` (both operands contiguous along the long inner axis).
    Reading that slab dominates the cost, and an MLP's single column would pay it alone: so the q, k and v
    destinations of a layer and the neighbouring MLP are buffered until all have arrived and contracted in
    one GEMM (`fused_groups`). With per-example scores, one batched GEMM gives them and the total is their
    sum (no second pass over the slab)."""

    def __init__(self, graph: Graph, n_examples: int | None, device: torch.device) -> None:
        self.graph = graph
        self.total = torch.zeros(graph.n_src, graph.n_dst, dtype=torch.float32, device=device)
        self.per_example: Tensor | None = None
        if n_examples is not None:
            self.per_example = torch.zeros(n_examples, graph.n_src, graph.n_dst, dtype=torch.float32, device=device)
        self.offset = 0  # index of the first example of the current batch (per-example scores)
        self.on_contract: Callable[[], Any] | None = None  # called once per destination hook contracted (progress)
        self.groups = fused_groups(graph)
        self._pending: dict[int, dict[Any, Tensor]] = {}

    @staticmethod
    def _gradients(hooks: list[Any], grads: list[Tensor], weights: Tensor, per_example: bool) -> Tensor:
        """The hooks' gradients, token-weighted and summed over heads where a hook sums them, written side by
        side into one float32 buffer laid out for the GEMM: [B, W, T*d] (per example) or [W, B*T*d]."""
        parts = []
        for dh, grad in zip(hooks, grads):
            g = grad if dh.per_head else grad[:, :, None]
            parts.append(g.sum(2, keepdim=True) if dh.sum_heads else g)  # [B, T, w, d]
        B, T, _, d = parts[0].shape
        W = sum(p.shape[2] for p in parts)
        buf = torch.empty((B, W, T, d) if per_example else (W, B, T, d), dtype=torch.float32, device=parts[0].device)
        w0 = 0
        for part in parts:
            w = part.shape[2]
            if per_example:
                buf[:, w0:w0 + w].copy_(part.permute(0, 2, 1, 3)).mul_(weights[:, None, :, None])
            else:
                buf[w0:w0 + w].copy_(part.permute(2, 0, 1, 3)).mul_(weights[None, :, :, None])
            w0 += w
        return buf.reshape(B, W, T * d) if per_example else buf.reshape(W, B * T * d)

    def contract(self, dh: Any, grad: Tensor, deltas: Tensor, weights: Tensor, rows: slice | None = None) -> None:
        """Add delta . grad for every incoming edge of the destinations of hook `dh` (or only for the
        sources in `rows`, a sub-range of its upstream prefix)."""
        self.contract_many([dh], [grad], deltas, weights, rows)

    def contract_many(self, hooks: list[Any], grads: list[Tensor], deltas: Tensor, weights: Tensor,
                      rows: slice | None = None) -> None:
        """`contract` for destination hooks with consecutive columns in one GEMM over the largest upstream
        prefix among them; a hook with a shorter prefix gets nothing from the rows past its own."""
        rows = slice(0, max(h.n_upstream for h in hooks)) if rows is None else rows
        cols = slice(hooks[0].start, hooks[-1].stop)
        up = deltas[rows]  # [S, B, T, d]
        S, B = up.shape[0], up.shape[1]
        if self.per_example is not None:
            g = self._gradients(hooks, grads, weights, per_example=True)  # [B, W, T*d]
            block = torch.bmm(up.reshape(S, B, -1).transpose(0, 1), g.transpose(1, 2))  # [B, S, W]
        else:
            g = self._gradients(hooks, grads, weights, per_example=False)  # [W, B*T*d]
            block = (up.reshape(S, -1) @ g.T)[None]  # [1, S, W]; both operands contiguous along B*T*d
        for dh in hooks:  # rows past a hook's own prefix are not its edges
            if dh.n_upstream < rows.stop:
                block[:, max(dh.n_upstream - rows.start, 0):, dh.start - cols.start:dh.stop - cols.start] = 0
        if self.per_example is not None:
            self.per_example[self.offset:self.offset + B, rows, cols] += block
        self.total[rows, cols] += block.sum(0)
        if self.on_contract is not None and rows.start == 0:
            for _ in hooks:
                self.on_contract()

    def receive(self, dh: Any, grad: Tensor, deltas: Tensor, weights: Tensor) -> None:
        """A destination gradient arrives: contract it, or its fused group (`fused_groups`) once complete."""
        group = self.groups.get(dh)
        if group is None:
            self.contract(dh, grad, deltas, weights)
            return
        pending = self._pending.setdefault(group[0].start, {})
        pending[dh] = grad
        if len(pending) == len(group):
            del self._pending[group[0].start]
            self.contract_many(list(group), [pending[h] for h in group], deltas, weights)

    def flush(self, deltas: Tensor, weights: Tensor) -> None:
        """Contract what is left of incomplete groups (a destination whose gradient never arrived)."""
        for key in list(self._pending):
            pending = self._pending.pop(key)
            for dh, grad in pending.items():
                self.contract(dh, grad, deltas, weights)

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
        """Contract destination gradients as they arrive (one backward pass); call `flush` after it."""
        return self.hooks(lambda dh, g: self.receive(dh, g, deltas, weights))


def fused_groups(graph: Graph) -> dict[Any, tuple[Any, ...]]:
    """Destination hooks contracted together (one read of the upstream slab for all of them): the q, k and
    v hooks of attention layer l with the MLP of layer l - 1 (sequential blocks; its prefix is one source
    shorter) or of layer l (parallel blocks; the same prefix), and the last MLP with the logits. Their
    columns are consecutive. Hooks that stand alone are left out."""
    hooks = list(graph.dest_hooks)
    groups: list[list[Any]] = []
    current: list[Any] = []
    parallel = graph.spec.parallel_attn_mlp
    for dh in hooks:
        starts_group = dh.kind == "q" or (dh.kind == "mlp" and not parallel) or (dh.kind == "logits" and parallel)
        if starts_group and current and not (dh.kind == "q" and current[-1].kind == "mlp" and not parallel):
            groups.append(current)
            current = []
        current.append(dh)
    groups.append(current)
    out: dict[Any, tuple[Any, ...]] = {}
    for group in groups:
        consecutive = all(a.stop == b.start for a, b in zip(group, group[1:]))
        if len(group) > 1 and consecutive:
            for dh in group:
                out[dh] = tuple(group)
    return out


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
            acc.receive(dh, g, deltas, weights)
        acc.flush(deltas, weights)
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
