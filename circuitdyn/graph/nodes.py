"""The nodes of the residual-stream graph and the hook points that carry them (see graph.py)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any, Literal

from circuitdyn.core.choices import parse_choice


class Granularity(str, Enum):
    HEAD = "head"
    LAYER = "layer"


class QKV(str, Enum):
    """Layer-level attention destinations: three per layer (the paper's graph) or one merged."""

    SPLIT = "split"
    MERGED = "merged"


class GraphError(ValueError):
    """A graph that cannot be built, or a node/edge that is not in it."""


SourceKind = Literal["input", "head", "attn", "mlp"]
DestKind = Literal["q", "k", "v", "attn", "mlp", "logits"]


@dataclass(frozen=True)
class Source:
    name: str
    kind: SourceKind
    layer: int  # -1 for the input
    head: int | None = None


@dataclass(frozen=True)
class Destination:
    name: str
    kind: DestKind
    layer: int  # n_layers for logits
    head: int | None = None  # query head for q, kv head for k/v


@dataclass(frozen=True)
class SourceHook:
    """A hook whose activation fills sources[start:stop] (per-head tensors fill one source per head)."""

    name: str
    start: int
    stop: int
    per_head: bool
    layer: int


@dataclass(frozen=True)
class DestHook:
    """A hook whose gradient scores destinations[start:stop]; `sum_heads` folds a per-head tensor into one
    layer-level destination. `n_upstream` sources (a prefix) feed it."""

    name: str
    start: int
    stop: int
    per_head: bool
    sum_heads: bool
    n_upstream: int
    kind: DestKind
    layer: int


@dataclass(frozen=True)
class ProjectionHook:
    """Where a per-head q, k or v destination's gradient is read without per-head input copies: at the
    projection's output `output`, carried back through the norm `norm` (module path) at its input
    `norm_input`; both None when the attention reads the residual directly (see qkv_projections.py)."""

    dest: DestHook
    output: str
    norm_input: str | None
    norm: str | None


@dataclass(frozen=True)
class PostNormHook:
    """Post-norm models (Gemma3): the hook on layer `layer`'s pre-norm attention output, and the head
    sources [start, stop) whose residual contribution passes through that layer's output norm."""

    name: str
    module: str  # path of the norm module on the bridge
    layer: int
    start: int
    stop: int


@dataclass(frozen=True)
class GraphSpec:
    n_layers: int
    n_heads: int
    n_kv_heads: int
    d_model: int
    parallel_attn_mlp: bool
    post_attn_norm: bool  # attention output is normalised before the residual add (Gemma3)
    granularity: Granularity | str  # parsed into the Enum in __post_init__
    qkv: QKV | str = QKV.SPLIT  # layer granularity only (head graphs read q, k, v per head); parsed likewise
    pre_attn_norm: bool = True  # the attention reads its input through a norm (ln1); OLMo2 has none

    def __post_init__(self) -> None:
        if self.n_layers < 1 or self.n_heads < 1 or self.d_model < 1:
            raise GraphError(f"invalid model shape: {self}")
        if self.n_kv_heads < 1 or self.n_heads % self.n_kv_heads:
            raise GraphError(f"n_heads {self.n_heads} must be a multiple of n_kv_heads {self.n_kv_heads}")
        if not isinstance(self.granularity, Granularity):
            object.__setattr__(self, "granularity", parse_choice(Granularity, self.granularity, "granularity", GraphError))
        if not isinstance(self.qkv, QKV):
            object.__setattr__(self, "qkv", parse_choice(QKV, self.qkv, "qkv", GraphError))
        if self.granularity is Granularity.HEAD and self.qkv is not QKV.SPLIT:
            raise GraphError("qkv='merged' exists only at layer granularity; head graphs read q, k, v per head")

    def as_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["granularity"] = Granularity(self.granularity).value
        d["qkv"] = QKV(self.qkv).value
        return d
