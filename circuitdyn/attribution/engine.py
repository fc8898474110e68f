"""The attribution engine: memory budgets, forward hooks and gradient contraction.

For one batch, `delta[s]` holds, for every source s, the change of s's residual contribution when s alone
is set to its counterfactual value (see `intervention.py`). It is laid out `[n_src, B, T, d]` so that the
incoming edges of any destination (always a prefix of the sources) contract against the destination's
gradient in one matmul, inside a backward tensor hook: no Python loop over edges.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from circuitdyn.attribution.budget import Budget
from circuitdyn.attribution.destinations import DestinationReader, HookList
from circuitdyn.attribution.head_gradients import FactoredGradient
from circuitdyn.attribution.recompute import installed
from circuitdyn.core.grads import requires_grad
from circuitdyn.graph import Granularity, Graph
from circuitdyn.tasks.base import PairBatch

__all__ = ["HookList", "ScoreAccumulator"]

Gradient = Tensor | FactoredGradient  # a destination hook's gradient, head-major or factored


class MemoryBudgetError(MemoryError):
    """Attribution would not fit in the memory budget even one example at a time."""


def buffer_bytes(graph: Graph, batch: int, seq: int, copies: float = 1) -> int:
    return int(copies * graph.n_src * batch * seq * graph.spec.d_model * 4)


def gradient_bytes(graph: Graph, batch: int, seq: int) -> int:
    """The float32 destination gradients buffered for the largest fused contraction (see fused_groups),
    plus one hook's gradient arriving into it."""
    group = max(g[-1].stop - g[0].start for g in fused_groups(graph).values())
    hook = max(h.stop - h.start for h in graph.dest_hooks)
    return (group + hook) * batch * seq * graph.spec.d_model * 4


#: the backward's transient memory (gradients of the activations, released layer by layer) as a share of
#: the activations autograd keeps: measured as peak RSS above the estimate without it, on GPT-2 shapes of
#: 16 layers x 64 tokens and 6 layers x 256 tokens, head and layer graphs (0.38-0.53; benchmarks/bench_shapes.py)
BACKWARD_TRANSIENT = 0.45

#: what the process holds beyond that when a method runs several backward passes (EAP-IG's steps), as a
#: share of the activations: glibc serves the first pass's activations from mmap, then raises its mmap
#: threshold and serves later passes from its heap, which grows past one pass's live set and keeps it.
#: Measured as peak RSS over the live-set estimate at 5 steps: 0.82 (GPT-2 16 layers x 64 tokens) and 0.59
#: (SmolLM2-135M) of the activations; with a fixed mmap threshold the live set stayed under the estimate
RETAINED_BETWEEN_PASSES = 0.8


def examples_per_chunk(graph: Graph, seq: int, budget: Budget | int, copies: float = 1, activations: int = 0) -> int:
    """How many examples fit in `budget` bytes: `copies` float32 delta buffers, the destination gradients
    of one fused contraction and `activations` bytes per example (what autograd saves, probed by
    `saved_activation_bytes`) plus the backward's transient share of them. Refuses with the estimate when
    not even one fits."""
    budget = budget if isinstance(budget, Budget) else Budget(budget, "memory_budget")
    deltas, grads = buffer_bytes(graph, 1, seq, copies), gradient_bytes(graph, 1, seq)
    one = peak_estimate(graph, 1, seq, copies, activations)
    if one > budget.bytes:
        raise MemoryBudgetError(
            f"one example needs {one / 2**20:.1f} MiB: {deltas / 2**20:.1f} MiB of activation-difference buffers "
            f"({graph.n_src} sources x {seq} tokens x d_model {graph.spec.d_model} x 4 bytes x {copies:.1f} "
            f"buffers), {activations / 2**20:.1f} MiB of activations kept for the backward and "
            f"{grads / 2**20:.1f} MiB of gradients, but the budget is {budget.describe()}. Raise "
            "memory_budget or shorten the prompts"
            + (", or use granularity='layer'." if Granularity(graph.spec.granularity) is Granularity.HEAD else ".")
        )
    return max(1, budget.bytes // one)


def peak_estimate(graph: Graph, batch: int, seq: int, copies: float, activations: int) -> int:
    """The bytes one pass over `batch` examples needs (what examples_per_chunk budgets)."""
    return batch * (buffer_bytes(graph, 1, seq, copies) + gradient_bytes(graph, 1, seq)
                    + int(activations * (1 + BACKWARD_TRANSIENT)))


def stackable_rows(graph: Graph, chunk: int, seq: int, copies: float, activations: int, budget: int) -> int:
    """How many rows one forward/backward may hold (EAP-IG over inputs stacks interpolation points along
    the batch): the chunk's buffers stay, and what is left of the budget pays each row's activations."""
    spare = budget - peak_estimate(graph, chunk, seq, copies, 0)
    return max(chunk, spare // max(int(activations * (1 + BACKWARD_TRANSIENT)), 1))


def frozen_parameters(bridge: Any) -> contextlib.AbstractContextManager[list[torch.nn.Parameter]]:
    """No parameter gradients during attribution: the backward pass computes only what scores need."""
    return requires_grad(bridge.parameters(), False)


class ScoreAccumulator:
    """Contracts destination gradients with the residual deltas into `[n_src, n_dst]` scores.

    A destination's incoming edges are the prefix of sources `deltas[:n_upstream]`, so each contraction is
    one GEMM `[n_upstream, B*T*d] x [B*T*d, width]` (both operands contiguous along the long inner axis).
    Reading that slab dominates the cost, and an MLP's single column would pay it alone: so the q, k and v
    destinations of a layer, the neighbouring MLP and neighbouring layers (up to FUSED_WIDTH columns) are
    written into one buffer as they arrive and contracted in one GEMM (`fused_groups`). With per-example
    scores, one batched GEMM gives them and the total is their sum (no second pass over the slab)."""

    def __init__(self, graph: Graph, n_examples: int | None, device: torch.device,
                 reader: DestinationReader | None = None) -> None:
        self.graph = graph
        self.reader = reader or DestinationReader(graph, None, projected=False)
        self.total = torch.zeros(graph.n_src, graph.n_dst, dtype=torch.float32, device=device)
        self.per_example: Tensor | None = None
        if n_examples is not None:
            self.per_example = torch.zeros(n_examples, graph.n_src, graph.n_dst, dtype=torch.float32, device=device)
        self.offset = 0  # index of the first example of the current batch (per-example scores)
        self.on_contract: Callable[[], Any] | None = None  # called once per destination hook contracted (progress)
        self.groups = fused_groups(graph)
        self._pending: dict[int, tuple[Tensor, set[Any]]] = {}  # group start -> (weighted gradients, arrived)
        self._spare: Tensor | None = None  # a completed group's buffer (flat), for the next group

    def contract(self, dh: Any, grad: Gradient, deltas: Tensor, weights: Tensor, rows: slice | None = None) -> None:
        """Add delta . grad for every incoming edge of the destinations of hook `dh` (or only for the
        sources in `rows`, a sub-range of its upstream prefix); `grad` is head-major, [w, B, T, d]."""
        buf = torch.empty(grad.shape, dtype=torch.float32, device=weights.device)
        self._contract_block([dh], weighted(grad, weights, buf), deltas, rows)

    def _contract_block(self, hooks: list[Any], g: Tensor, deltas: Tensor, rows: slice | None = None) -> None:
        """One GEMM of the weighted gradients `g` ([W, B, T, d], float32) of hooks with consecutive columns
        over the largest upstream prefix among them; a hook with a shorter prefix gets nothing from the rows
        past its own."""
        rows = slice(0, max(h.n_upstream for h in hooks)) if rows is None else rows
        cols = slice(hooks[0].start, hooks[-1].stop)
        up = deltas[rows]  # [S, B, T, d]
        (S, B), W = up.shape[:2], g.shape[0]
        if self.per_example is not None:
            g_b = g.reshape(W, B, -1).permute(1, 2, 0)  # [B, T*d, W]
            block = torch.bmm(up.reshape(S, B, -1).transpose(0, 1), g_b)  # [B, S, W]
        else:
            block = (up.reshape(S, -1) @ g.reshape(W, -1).T)[None]  # [1, S, W]; both contiguous along B*T*d
        for dh in hooks:  # rows past a hook's own prefix are not its edges
            if dh.n_upstream < rows.stop:
                block[:, max(dh.n_upstream - rows.start, 0):, dh.start - cols.start:dh.stop - cols.start] = 0
        if self.per_example is not None:
            self.per_example[self.offset:self.offset + B, rows, cols] += block
        self.total[rows, cols] += block.sum(0)
        if self.on_contract is not None and rows.start == 0:
            for _ in hooks:
                self.on_contract()

    def receive(self, dh: Any, grad: Gradient, deltas: Tensor, weights: Tensor) -> None:
        """A destination gradient arrives (head-major): weighted, it is written into its fused group's
        buffer (`fused_groups`), which is contracted once every hook of the group has arrived."""
        group = self.groups[dh]
        key = group[0].start
        if key not in self._pending:
            self._pending[key] = (self._buffer((group[-1].stop - key, *grad.shape[1:]), weights.device), set())
        buf, arrived = self._pending[key]
        weighted(grad, weights, buf[dh.start - key:dh.stop - key])
        arrived.add(dh)
        if len(arrived) == len(group):
            del self._pending[key]
            self._contract_block(list(group), buf, deltas)
            flat = (buf if buf._base is None else buf._base).view(-1)  # the whole allocation
            if self._spare is None or self._spare.numel() < flat.numel():
                self._spare = flat  # the next group reuses it: no fresh pages per group

    def _buffer(self, shape: tuple[int, ...], device: torch.device) -> Tensor:
        """A float32 group buffer, carved from the last completed group's when it is large enough."""
        n = math.prod(shape)
        spare, self._spare = self._spare, None
        if spare is not None and spare.numel() >= n and spare.device == device:
            return spare[:n].view(shape)
        return torch.empty(shape, dtype=torch.float32, device=device)

    def flush(self, deltas: Tensor, weights: Tensor) -> None:
        """Contract what is left of incomplete groups: a destination whose gradient never arrived has none."""
        for key in list(self._pending):
            buf, arrived = self._pending.pop(key)
            group = self.groups[next(iter(arrived))]
            for dh in group:
                if dh not in arrived:
                    buf[dh.start - key:dh.stop - key] = 0
            self._contract_block(list(group), buf, deltas)

    def hooks(self, on_grad: Callable[[Any, Gradient], None]) -> HookList:
        """Forward hooks that call `on_grad(dest_hook, gradient)` when each destination's gradient arrives
        (head-major, [w, B, T, d], or factored; see destinations.py)."""
        return self.reader.hooks(on_grad)

    def contracting_hooks(self, deltas: Tensor, weights: Tensor) -> HookList:
        """Contract destination gradients as they arrive (one backward pass); call `flush` after it."""
        return self.hooks(lambda dh, g: self.receive(dh, g, deltas, weights))


#: the widest fused contraction (destination columns): one read of the upstream slab serves them all. The
#: GEMM reads the slab at memory speed, so wider is cheaper per column (on one core, 127 sources x 2^19:
#: 8 columns 60 ms, 25: 114 ms, 50: 124 ms, 100: 205 ms), while the buffered gradients grow with it
FUSED_WIDTH = 96


def fused_groups(graph: Graph) -> dict[Any, tuple[Any, ...]]:
    """Destination hooks contracted together, for every hook: the q, k and v hooks of attention layer l with
    the MLP of layer l - 1 (sequential blocks; its prefix is one source shorter) or of layer l (parallel
    blocks; the same prefix), and the last MLP with the logits; then neighbouring such groups merged while
    they span at most FUSED_WIDTH columns. A group's columns are consecutive."""
    groups: list[list[Any]] = []
    parallel = graph.spec.parallel_attn_mlp
    for dh in graph.dest_hooks:
        starts_group = dh.kind == "q" or (dh.kind == "mlp" and not parallel) or (dh.kind == "logits" and parallel)
        joins_mlp = dh.kind == "q" and bool(groups) and groups[-1][-1].kind == "mlp" and not parallel
        if not groups or (starts_group and not joins_mlp) or groups[-1][-1].stop != dh.start:
            groups.append([])
        groups[-1].append(dh)
    merged: list[list[Any]] = []
    for group in groups:
        if merged and group[-1].stop - merged[-1][0].start <= FUSED_WIDTH and merged[-1][-1].stop == group[0].start:
            merged[-1].extend(group)
        else:
            merged.append(list(group))
    return {dh: tuple(group) for group in merged for dh in group}


def weighted(grad: Gradient, weights: Tensor, out: Tensor) -> Tensor:
    """Write the gradient, each token's multiplied by its weight, into `out` (float32, [w, B, T, d])."""
    if isinstance(grad, FactoredGradient):
        return grad.materialise(weights, out=out)
    return torch.mul(grad, weights[None, :, :, None], out=out)


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
    with installed(bridge, hooks):
        return bridge(ids, attention_mask=mask.long(), use_cache=False)  # no KV cache: nothing decodes
