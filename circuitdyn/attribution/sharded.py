"""Attribution over a large dataset on several processes (torch.distributed, any backend).

Each rank scores a contiguous shard of the prompts; score sums are all-reduced and per-example scores and
metric values are gathered back in the original order, so every rank returns the same Attribution as a
single process would. Launch with torchrun, e.g. `torchrun --nproc-per-node 8 my_script.py` on one node
(NCCL on GPUs, one device per rank: pass device=f"cuda:{local_rank}" to load_model), or with
`--nnodes N --rdzv-endpoint HOST:PORT` across nodes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from circuitdyn.attribution.attribute import attribute
from circuitdyn.attribution.errors import AttributionError
from circuitdyn.attribution.intervention import as_batch
from circuitdyn.attribution.result import Attribution
from circuitdyn.graph import Graph
from circuitdyn.tasks.base import PairBatch, TaskExample


def shard_bounds(n: int, world: int) -> list[int]:
    """Start indices of the contiguous shards (and n at the end)."""
    if n < world:
        raise AttributionError(f"{n} examples cannot be split over {world} ranks: give at least one per rank")
    return [n * r // world for r in range(world + 1)]


def _gather_rows(local: Tensor, bounds: list[int], world: int) -> Tensor:
    width = max(b - a for a, b in zip(bounds, bounds[1:]))
    padded = torch.zeros((width, *local.shape[1:]), dtype=local.dtype, device=local.device)
    padded[: local.shape[0]] = local
    parts = [torch.zeros_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    return torch.cat([p[: b - a] for p, a, b in zip(parts, bounds, bounds[1:])])


def attribute_sharded(model: Any, graph: Graph | str, data: PairBatch | Sequence[TaskExample],
                      metric: str | Callable[..., Tensor] = "logit_diff", **overrides: Any) -> Attribution:
    """`attribute()` with the prompts sharded over the ranks of the default process group (or one process
    when torch.distributed is not initialised)."""
    if not (dist.is_available() and dist.is_initialized()):
        return attribute(model, graph, data, metric, **overrides)
    rank, world = dist.get_rank(), dist.get_world_size()
    batch = as_batch(model, data, overrides.get("answer_tokens", 1))
    bounds = shard_bounds(len(batch), world)
    want_per_example = bool(overrides.pop("per_example", False))
    local = attribute(model, graph, batch[bounds[rank]:bounds[rank + 1]], metric, per_example=True, **overrides)
    device = local.scores.device
    n_local = bounds[rank + 1] - bounds[rank]
    total = local.scores.to(torch.float64) * n_local
    dist.all_reduce(total)
    scores = (total / len(batch)).to(torch.float32)
    values = _gather_rows(local.metric_values.to(device), bounds, world)
    assert local.per_example is not None  # asked for above
    per_example = _gather_rows(local.per_example, bounds, world) if want_per_example else None
    provenance = {**local.provenance, "n_examples": len(batch), "world_size": world}
    return Attribution(scores, local.graph, values, local.config, per_example, provenance)
