"""The protocol every attribution method implements, and what it receives for one batch.

A method scores one batch at a time: either into the shared ScoreAccumulator (EAP, EAP-IG: gradient
contractions) or as explicit per-example effects of every edge (exact patching and its first-order
reference). `attribute()` picks the method from the registry in `attribute.py` and drives the batches.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any, Protocol, runtime_checkable

from jaxtyping import Float
from torch import Tensor

from circuitdyn.attribution.destinations import DestinationReader
from circuitdyn.attribution.engine import ScoreAccumulator
from circuitdyn.attribution.intervention import Counterfactual
from circuitdyn.attribution.objectives import ObjectiveFn
from circuitdyn.attribution.quadrature import Quadrature
from circuitdyn.graph import Graph
from circuitdyn.tasks.base import PairBatch


class Method(str, Enum):
    EAP = "eap"
    EAP_IG_INPUTS = "eap-ig-inputs"
    EAP_IG_ACTIVATIONS = "eap-ig-activations"
    EXACT = "exact"
    FIRST_ORDER = "first-order"  # brute-force per-edge gradient: the slow reference for EAP


@dataclass(frozen=True)
class BatchJob:
    """One batch to score: the run batch (already swapped for denoising), its objective and counterfactual."""

    bridge: Any
    graph: Graph
    batch: PairBatch
    metric: ObjectiveFn
    accumulator: ScoreAccumulator
    counterfactual: Counterfactual
    means: Tensor | None  # per-source means, for the mean counterfactual
    weights: Float[Tensor, "batch seq"]  # per-token weights of the scores (aggregation)
    steps: int  # EAP-IG interpolation steps
    max_rows: int = 1 << 30  # rows one forward/backward may hold within the memory budget (EAP-IG stacking)
    quadrature: Quadrature = Quadrature.MIDPOINT  # EAP-IG's points along the path and their weights


@dataclass(frozen=True)
class BatchResult:
    values: Float[Tensor, " batch"]  # the metric at the run
    effects: Float[Tensor, "batch n_src n_dst"] | None = None  # per-edge methods; None: in the accumulator


@runtime_checkable
class AttributionMethod(Protocol):
    """A registered method, with the properties the driver reads instead of branching on its name."""

    method: Method
    #: it patches destinations one edge at a time (exact patching and its first-order reference): q/k/v
    #: destinations must then be the per-head copies, not read at the projections
    patches_destinations: bool
    #: it integrates gradients along a path in several passes (EAP-IG): the allocator keeps each pass's
    #: summed gradients between passes, and an objective whose gradient vanishes at the run (KL to the clean
    #: run) still gets a signal
    integrates_path: bool

    def buffer_copies(self, graph: Graph, reader: DestinationReader, steps: int) -> float:
        """Float32 buffers per example, in units of the [n_src, T, d] delta buffer (for memory budgets), when
        destination gradients are read by `reader` and EAP-IG takes `steps` steps."""
        ...

    def run(self, job: BatchJob) -> BatchResult: ...
