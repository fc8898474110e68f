"""The residual-stream graph: sources (writers), destinations (readers), real edges.

This is the only module that names hooks. Node names follow EAP-IG: sources `input`, `a{l}.h{h}`, `m{l}`;
destinations `a{l}.h{h}<q>`, `<k>`, `<v>`, `m{l}`, `logits`. Under grouped-query attention the key and
value destinations follow the model's kv heads and are named `a{l}.kv{g}<k>` / `<v>`.

At layer granularity (the RL-circuitry paper's graph) the sources are `input`, `a{l}` (the whole attention
output: its heads plus the output bias b_O) and `m{l}`; each attention layer has three destinations,
`a{l}<q>`, `a{l}<k>`, `a{l}<v>`, whose gradients are the per-head q/k/v input gradients summed over that
layer's query heads (q) or kv heads (k, v): 613 edges at 12 sequential layers. `qkv="merged"` gives one
destination `a{l}` per layer reading the attention's input (325 edges), which is NOT the paper's graph.

Sources are ordered input, then per layer (heads..., mlp), so every destination reads a *prefix* of the
source list: that is what lets attribution contract all of a destination's incoming edges at once.
Parallel attention+MLP blocks (GPT-NeoX): `m{l}` does not read layer l's attention.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from circuitdyn.core.choices import parse_choice
from circuitdyn.graph.hook_flags import attribution_hooks
from circuitdyn.graph.liveness import HookProbe, dead_hooks
from circuitdyn.graph.nodes import (
    QKV,
    DestHook,
    Destination,
    Granularity,
    GraphError,
    GraphSpec,
    PostNormHook,
    ProjectionHook,
    Source,
    SourceHook,
)
from circuitdyn.models import as_bridge, logits_finite, logits_not_finite

__all__ = ["Graph", "spec_from_model"]


def spec_from_model(
    model: Any, granularity: Granularity | str = Granularity.HEAD, qkv: QKV | str = QKV.SPLIT
) -> GraphSpec:
    bridge = as_bridge(model)
    cfg = bridge.cfg
    n_heads = int(cfg.n_heads)
    n_kv = getattr(cfg, "n_key_value_heads", None) or n_heads
    children = dict(bridge.blocks[0].named_children())
    granularity = parse_choice(Granularity, granularity, "granularity", GraphError)
    return GraphSpec(
        n_layers=int(cfg.n_layers), n_heads=n_heads, n_kv_heads=int(n_kv), d_model=int(cfg.d_model),
        parallel_attn_mlp=bool(getattr(cfg, "parallel_attn_mlp", False)), post_attn_norm="ln1_post" in children,
        granularity=granularity, qkv=parse_choice(QKV, qkv, "qkv", GraphError), pre_attn_norm="ln1" in children,
    )


@dataclass(frozen=True)
class Graph:
    """Immutable graph with one dense score layout `[n_src, n_dst]` and a mask of real edges."""

    spec: GraphSpec
    sources: tuple[Source, ...] = field(init=False)
    destinations: tuple[Destination, ...] = field(init=False)
    source_hooks: tuple[SourceHook, ...] = field(init=False)
    dest_hooks: tuple[DestHook, ...] = field(init=False)
    post_norm_hooks: tuple[PostNormHook, ...] = field(init=False)
    projection_hooks: tuple[ProjectionHook, ...] = field(init=False)  # per-head q/k/v dests, at the projections
    n_upstream: tuple[int, ...] = field(init=False)

    def __post_init__(self) -> None:
        s, L, H, K = self.spec, self.spec.n_layers, self.spec.n_heads, self.spec.n_kv_heads
        head = s.granularity is Granularity.HEAD
        kv_prefix = "h" if K == H else "kv"
        sources: list[Source] = [Source("input", "input", -1)]
        src_hooks = [SourceHook("blocks.0.hook_resid_pre", 0, 1, False, -1)]
        dests: list[Destination] = []
        dst_hooks: list[DestHook] = []
        n_up: list[int] = []

        def add_dest(hook: str, items: list[Destination], per_head: bool, sum_heads: bool, upstream: int) -> None:
            start = len(dests)
            dests.extend(items)
            n_up.extend([upstream] * len(items))
            dst_hooks.append(DestHook(hook, start, len(dests), per_head, sum_heads, upstream, items[0].kind, items[0].layer))

        for layer in range(L):
            upstream = len(sources)
            attn = f"blocks.{layer}.attn"
            if head:
                for kind, count, prefix in (("q", H, "h"), ("k", K, kv_prefix), ("v", K, kv_prefix)):
                    items = [Destination(f"a{layer}.{prefix}{i}<{kind}>", kind, layer, i) for i in range(count)]  # type: ignore[arg-type]
                    add_dest(f"{attn}.hook_{kind}_input", items, True, False, upstream)
            elif s.qkv is QKV.SPLIT:  # one destination per input kind, gradients summed over its heads
                for kind in ("q", "k", "v"):
                    add_dest(f"{attn}.hook_{kind}_input", [Destination(f"a{layer}<{kind}>", kind, layer)], True, True, upstream)  # type: ignore[arg-type]
            else:  # the attention's residual input: its gradient is the q, k, v gradients summed over heads
                reads = f"blocks.{layer}.ln1.hook_in" if s.pre_attn_norm else f"{attn}.hook_in"
                add_dest(reads, [Destination(f"a{layer}", "attn", layer)], False, False, upstream)
            start = len(sources)
            if head:
                sources.extend(Source(f"a{layer}.h{h}", "head", layer, h) for h in range(H))
                src_hooks.append(SourceHook(f"{attn}.hook_result", start, len(sources), True, layer))
            else:
                sources.append(Source(f"a{layer}", "attn", layer))
                src_hooks.append(SourceHook(f"blocks.{layer}.hook_attn_out", start, start + 1, False, layer))
            mlp_upstream = upstream if s.parallel_attn_mlp else len(sources)
            add_dest(f"blocks.{layer}.hook_mlp_in", [Destination(f"m{layer}", "mlp", layer)], False, False, mlp_upstream)
            sources.append(Source(f"m{layer}", "mlp", layer))
            src_hooks.append(SourceHook(f"blocks.{layer}.hook_mlp_out", len(sources) - 1, len(sources), False, layer))
        add_dest(f"blocks.{L - 1}.hook_resid_post", [Destination("logits", "logits", L)], False, False, len(sources))
        object.__setattr__(self, "sources", tuple(sources))
        object.__setattr__(self, "destinations", tuple(dests))
        object.__setattr__(self, "source_hooks", tuple(src_hooks))
        object.__setattr__(self, "dest_hooks", tuple(dst_hooks))
        object.__setattr__(self, "n_upstream", tuple(n_up))
        post = tuple(
            PostNormHook(f"blocks.{h.layer}.attn.hook_out", f"blocks.{h.layer}.ln1_post", h.layer, h.start, h.stop)
            for h in src_hooks if h.per_head and s.post_attn_norm
        )
        object.__setattr__(self, "post_norm_hooks", post)
        ln1 = s.pre_attn_norm  # the norm the gradient is carried back through, at its input
        object.__setattr__(self, "projection_hooks", tuple(
            ProjectionHook(h, f"blocks.{h.layer}.attn.{h.kind}.hook_out", f"blocks.{h.layer}.ln1.hook_in" if ln1 else None,
                           f"blocks.{h.layer}.ln1" if ln1 else None)
            for h in dst_hooks if h.per_head and h.kind in ("q", "k", "v")))

    # ---- construction -------------------------------------------------------------------------------
    @property
    def needs_split_qkv(self) -> bool:
        """Graphs that read per-head q/k/v inputs, which the bridge only provides with split_qkv_input."""
        return any(h.per_head for h in self.dest_hooks)

    @property
    def needs_attn_result(self) -> bool:
        """Head-level graphs read per-head outputs, which the bridge only provides with attn_result."""
        return any(h.per_head for h in self.source_hooks)

    def enable_hooks(self, model: Any, *, split_qkv: bool = True) -> AbstractContextManager[Any]:
        """`attribution_hooks` with the per-head flags this graph reads (yields the bridge); `split_qkv=False`
        leaves out the per-head q/k/v copies (their gradients then come from `projection_hooks`)."""
        return attribution_hooks(model, split_qkv=split_qkv and self.needs_split_qkv,
                                 attn_result=self.needs_attn_result)

    def hook_probes(self) -> list[HookProbe]:
        """Every hook this graph reads or patches, with the nodes it carries (for the liveness probe)."""
        def role(kind: str, nodes: Sequence[Any]) -> str:
            return f"{kind} {nodes[0].name}" if len(nodes) == 1 else f"{kind}s {nodes[0].name}..{nodes[-1].name}"
        probes = [HookProbe(h.name, h.per_head, role("source", self.sources[h.start:h.stop])) for h in self.source_hooks]
        probes += [HookProbe(h.name, h.per_head and not h.sum_heads, role("destination", self.destinations[h.start:h.stop]))
                   for h in self.dest_hooks]
        probes += [HookProbe(h.name, False, f"pre-norm attention output of layer {h.layer}") for h in self.post_norm_hooks]
        return probes

    @classmethod
    def from_model(
        cls, model: Any, granularity: Granularity | str = Granularity.HEAD, *, qkv: QKV | str = QKV.SPLIT,
        probe: bool = True,
    ) -> "Graph":
        """The graph of a loaded model: at layer granularity the paper's graph (q, k, v destinations per
        layer), or `qkv="merged"` for one attention destination per layer. Every hook the graph uses is
        probed (liveness.py) unless `probe=False`: a dead hook is refused with a GraphError naming it.
        Raises HookFlagsUnavailable if the model has no per-head hooks the graph needs."""
        bridge = as_bridge(model)
        graph = cls(spec_from_model(bridge, granularity, qkv))
        architecture = str(getattr(bridge.cfg, "architecture", type(bridge).__name__))
        with graph.enable_hooks(bridge):
            names = [h.name for h in graph.source_hooks + graph.dest_hooks + graph.post_norm_hooks]
            missing = [n for n in names if n not in bridge.hook_dict]
            if missing:
                raise GraphError(f"{architecture}: the model lacks hook points {missing[:4]}...; it is not a "
                                 "supported bridge (the README lists the supported families)")
            dead = dead_hooks(bridge, graph.hook_probes(), graph.source_hooks[0].name) if probe else []
        if dead:
            if not logits_finite(bridge):  # broken weights or an overflow kill every hook at once: say that
                raise GraphError(f"{architecture}: {logits_not_finite(bridge)}")
            raise GraphError(
                f"{architecture}: {len(dead)} hook point(s) of the {Granularity(graph.spec.granularity).value}-level graph are "
                "dead, so every edge they carry would score exactly 0:\n  " + "\n  ".join(dead[:8]) +
                "\nThis family is not supported at this granularity (the README lists what each family supports)."
            )
        return graph

    def check_model(self, model: Any) -> None:
        """Refuse a model whose shape is not this graph's (a graph built from another model)."""
        bridge = as_bridge(model)
        try:
            own = spec_from_model(bridge, self.spec.granularity, self.spec.qkv)
        except Exception as err:  # not a bridge at all
            raise GraphError(f"cannot read the model's shape ({err}); pass a model from circuitdyn.load_model") from None
        if own != self.spec:
            diff = {k: (v, own.__dict__[k]) for k, v in self.spec.__dict__.items() if own.__dict__[k] != v}
            raise GraphError(f"this graph was built for another model: (graph, model) differ in {diff}; build it "
                             "from this model with Graph.from_model(model, ...)")

    # ---- sizes and lookups --------------------------------------------------------------------------
    @property
    def n_src(self) -> int:
        return len(self.sources)

    @property
    def n_dst(self) -> int:
        return len(self.destinations)

    @property
    def edge_mask(self) -> Bool[Tensor, "n_src n_dst"]:
        up = torch.tensor(self.n_upstream)
        return torch.arange(self.n_src)[:, None] < up[None, :]

    @property
    def n_edges(self) -> int:
        return int(sum(self.n_upstream))

    def source_index(self, name: str) -> int:
        for i in (i for i, s in enumerate(self.sources) if s.name == name):
            return i
        raise GraphError(f"no source {name!r} in this graph; sources look like {[s.name for s in self.sources[:4]]}")

    def dest_index(self, name: str) -> int:
        for i in (i for i, d in enumerate(self.destinations) if d.name == name):
            return i
        raise GraphError(f"no destination {name!r} in this graph; e.g. {[d.name for d in self.destinations[:4]]}")

    def edge_index(self, edge: str | tuple[str, str]) -> tuple[int, int]:
        """(src, dst) indices of an edge given as 'src->dst' or a (src, dst) pair."""
        src, dst = edge.split("->") if isinstance(edge, str) else edge
        i, j = self.source_index(src), self.dest_index(dst)
        if i >= self.n_upstream[j]:
            raise GraphError(f"{src}->{dst} is not an edge: {dst} does not read {src} (it is not upstream)")
        return i, j

    def edges(self) -> Iterator[tuple[int, int]]:
        """All real edges as (src, dst) index pairs, destination-major."""
        for j, up in enumerate(self.n_upstream):
            for i in range(up):
                yield i, j

    def edge_names(self) -> list[str]:
        return [f"{self.sources[i].name}->{self.destinations[j].name}" for i, j in self.edges()]

    def dest_layers(self) -> Tensor:
        return torch.tensor([d.layer for d in self.destinations])

    def owners(self, j: int) -> tuple[str, ...]:
        """Source nodes whose computation reads destination j (kv heads feed their query-head group)."""
        d, H, K = self.destinations[j], self.spec.n_heads, self.spec.n_kv_heads
        if d.kind == "logits":
            return ()
        if d.kind == "mlp":
            return (f"m{d.layer}",)
        if d.kind == "attn" or d.head is None:  # a layer-level attention destination (merged or q/k/v)
            return (f"a{d.layer}",)
        if d.kind == "q":
            return (f"a{d.layer}.h{d.head}",)
        group = H // K
        return tuple(f"a{d.layer}.h{h}" for h in range(d.head * group, (d.head + 1) * group))

    # ---- layer aggregation --------------------------------------------------------------------------
    def layer_aggregation(
        self, qkv: QKV | str = QKV.SPLIT
    ) -> tuple[Float[Tensor, "n_src n_src_layer"], Float[Tensor, "n_dst n_dst_layer"]]:
        """0/1 matrices A_src, A_dst with layer_scores = A_src^T @ head_scores @ A_dst (head graphs only),
        onto the layer graph with split (default) or merged q/k/v destinations. Exact for every ablation
        except where the attention output bias b_O moves: the layer source `a{l}` also carries b_O."""
        if self.spec.granularity is not Granularity.HEAD:
            raise GraphError("layer_aggregation maps a head-level graph onto its layer-level graph")
        coarse = Graph(GraphSpec(**{**self.spec.__dict__, "granularity": Granularity.LAYER, "qkv": QKV(qkv)}))
        split = coarse.spec.qkv is QKV.SPLIT
        a_src = torch.zeros(self.n_src, coarse.n_src)
        for i, s in enumerate(self.sources):
            a_src[i, coarse.source_index(s.name if s.kind != "head" else f"a{s.layer}")] = 1.0
        a_dst = torch.zeros(self.n_dst, coarse.n_dst)
        for j, d in enumerate(self.destinations):
            name = d.name if d.kind in ("mlp", "logits") else f"a{d.layer}<{d.kind}>" if split else f"a{d.layer}"
            a_dst[j, coarse.dest_index(name)] = 1.0
        return a_src, a_dst

    # ---- export -------------------------------------------------------------------------------------
    def to_networkx(self, scores: Tensor | None = None, edge_mask: Tensor | None = None) -> Any:
        """A networkx DiGraph over source and destination names, with `score` edge attributes."""
        import networkx as nx

        g = nx.DiGraph()
        for s in self.sources:
            g.add_node(s.name, layer=s.layer, role="source", kind=s.kind)
        for d in self.destinations:
            g.add_node(d.name, layer=d.layer, role="destination", kind=d.kind, owners=self.owners(self.dest_index(d.name)))
        keep = self.edge_mask if edge_mask is None else edge_mask & self.edge_mask
        for i, j in self.edges():
            if keep[i, j]:
                attrs = {} if scores is None else {"score": float(scores[i, j])}
                g.add_edge(self.sources[i].name, self.destinations[j].name, **attrs)
        return g
