"""What autograd keeps for the backward of one forward, measured: the memory estimates of attribute() rest on it.

Every saved tensor's storage is counted once, the parameters excluded, and attributed to the block that first
saved it; measured rather than modelled, it holds for any architecture, hook flag and attention kernel.
"""

from __future__ import annotations

import weakref
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from circuitdyn.attribution.engine import forward, input_leaf_hook
from circuitdyn.attribution.head_sources import results_off
from circuitdyn.core.saved_tensors import saved_tensor_storages
from circuitdyn.graph import Graph
from circuitdyn.graph.hook_flags import HOOK_FLAGS


def saved_activation_bytes(bridge: Any, graph: Graph, ids: Tensor, mask: Tensor) -> int:
    """Bytes autograd keeps for the backward of one run forward of `ids` with the graph's hooks on (call it
    inside `graph.enable_hooks` and `frozen_parameters`): every saved tensor's storage, once, parameters
    excluded. Measured, so it holds for any architecture and hook flag."""
    return saved_activations(bridge, graph, ids, mask).total


@dataclass(frozen=True)
class SavedActivations:
    """What autograd keeps for one forward, by where it was saved: outside the blocks (and the logits), and
    inside each block."""

    outside: int
    per_block: tuple[int, ...]
    block_inputs: int  # the residual entering every block: what recomputation keeps of them

    @property
    def total(self) -> int:
        return self.outside + sum(self.per_block)

    @property
    def recomputed(self) -> int:
        """Kept when every block is recomputed in the backward (recompute.py): the blocks' inputs, what lies
        outside them, and one block's own activations at a time."""
        return self.outside + self.block_inputs + max(self.per_block, default=0)


#: probes already measured, per bridge: what autograd keeps depends on the shapes, not on the values
_PROBED: weakref.WeakKeyDictionary[Any, dict[Hashable, SavedActivations]] = weakref.WeakKeyDictionary()


def probed_activations(bridge: Any, graph: Graph, ids: Tensor, mask: Tensor, kernel: str) -> SavedActivations:
    """`saved_activations`, measured once per bridge and everything that shapes it: the graph, the ids' shape,
    whether the mask pads (a padded mask is a tensor the attention keeps), the hook flags, the attention
    `kernel` in effect, and the parameters (an added adapter keeps more). A repeated attribution of the
    same shapes (every batch of a study's cell) skips the probe's forward."""
    flags = tuple(bool(getattr(bridge.cfg, f, False)) for f in HOOK_FLAGS + ("use_attn_in",))
    params = tuple((tuple(p.shape), p.dtype, p.device) for p in bridge.parameters())
    key = (graph.spec, tuple(ids.shape), bool(mask.all()), flags, kernel, hash(params))
    cache = _PROBED.setdefault(bridge, {})
    if key not in cache:
        cache[key] = saved_activations(bridge, graph, ids, mask)
    return cache[key]


def saved_activations(bridge: Any, graph: Graph, ids: Tensor, mask: Tensor) -> SavedActivations:
    """`saved_activation_bytes`, split by block (each storage counted where autograd first saved it)."""
    store: dict[str, Tensor] = {}
    where: list[int] = [-1]
    handles = []
    for i, block in enumerate(bridge.blocks):
        handles.append(block.register_forward_pre_hook(lambda m, a, i=i: where.__setitem__(0, i)))
        handles.append(block.register_forward_hook(lambda m, a, o: where.__setitem__(0, -1)))
    tags: dict[Any, int] = {}
    try:
        with saved_tensor_storages(bridge.parameters(), tags, lambda: where[0]) as storages, \
                results_off(bridge, graph):  # as the gradient pass runs (head_sources.py)
            logits = forward(bridge, ids, mask, input_leaf_hook(graph, store))
            storages["logits"] = logits.untyped_storage().nbytes()  # the logits the metric reads
    finally:
        for h in handles:
            h.remove()
    per_block = [0] * len(bridge.blocks)
    for key, n in storages.items():
        if tags.get(key, -1) >= 0:
            per_block[tags[key]] += n
    element = next(bridge.parameters()).element_size()
    inputs = len(per_block) * ids.numel() * graph.spec.d_model * element
    return SavedActivations(sum(storages.values()) - sum(per_block), tuple(per_block), inputs)
