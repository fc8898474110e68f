"""The residual-stream graph: its nodes, the hook points that carry them, and the hooks a model must provide.

Layout: `nodes.py` (sources, destinations, their hook names) under `graph.py` (the Graph, the only place that
maps nodes to a model's hooks, probed by `liveness.py`); `hook_flags.py` switches on what attribution reads,
with `head_forks.py` (per-head hooks where the bridge hands attention to Hugging Face whole) and
`branches.py` (an MLP input of its own in shared-norm parallel blocks).
"""

from circuitdyn.graph.graph import Graph, spec_from_model
from circuitdyn.graph.hook_flags import HookFlagsUnavailable, attribution_hooks, per_head_flag_off, split_qkv_off
from circuitdyn.graph.nodes import (
    QKV,
    DestHook,
    Destination,
    DestKind,
    Granularity,
    GraphError,
    GraphSpec,
    PostNormHook,
    ProjectionHook,
    Source,
    SourceHook,
    SourceKind,
)

__all__ = ["QKV", "DestHook", "DestKind", "Destination", "Granularity", "Graph", "GraphError", "GraphSpec",
           "HookFlagsUnavailable", "PostNormHook", "ProjectionHook", "Source", "SourceHook", "SourceKind",
           "attribution_hooks", "per_head_flag_off", "spec_from_model", "split_qkv_off"]
