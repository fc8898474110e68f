"""Per-head attention sources read at the output projection's input.

A head's source value is what it writes into the residual, result_h = z_h W_O^h: the bridge's
`attn.hook_result`, [B, T, H, d]. Reading it there makes every recording pass compute the per-head
products (H times the attention's output), and the gradient pass differentiate them too. Where the output
projection is a plain linear layer, z ([B, T, H * d_head], the input of `attn.o`) gives the same values:
one float32 batched product per layer, written straight into the rows of the source buffer, so the passes
that record sources run with per-head results off: the model's own forward and backward.

The bias b_O is not part of any head's result (it is added after the sum over heads), and a block that
scales its attention's contribution (`_result_contribution_scale`) keeps the bridge's hook. The reading
is all or nothing: per-head results are switched off only when no source needs them.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from circuitdyn.graph import Graph
from circuitdyn.graph.head_forks import weight_out_in, wrapped_module
from circuitdyn.graph.hook_flags import per_head_flag_off


@dataclass(frozen=True)
class HeadSource:
    """One layer's per-head results, read from z at `hook` through the projection `linear`."""

    hook: str  # blocks.L.attn.o.hook_in
    linear: Any  # the Hugging Face output projection (nn.Linear, or Conv1D with its weight transposed)
    n_heads: int

    def weight(self) -> Float[Tensor, "n_heads d_head d_model"]:
        """W_O per head, float32 (converted at each use: a 7B model's would hold 1.4 GB)."""
        w = weight_out_in(self.linear).float()  # [d_model, H * d_head]
        return w.reshape(w.shape[0], self.n_heads, -1).permute(1, 2, 0)

    def write(self, rows: Float[Tensor, "n_heads batch seq d_model"], z: Tensor, subtract: bool = False) -> None:
        """Store (or subtract) the heads' results z_h W_O^h into their rows of a float32 source buffer."""
        w = self.weight()
        flat = rows.view(self.n_heads, -1, rows.shape[-1])
        if subtract:
            flat.baddbmm_(self._heads(z, w), w, alpha=-1.0)
        else:
            torch.bmm(self._heads(z, w), w, out=flat)

    def write_difference(self, rows: Float[Tensor, "n_heads batch seq d_model"], z_counterfactual: Tensor,
                         z: Tensor) -> None:
        """Store (z_cf - z)_h W_O^h: one product for the delta, from the exact difference of the z's."""
        w = self.weight()
        torch.bmm(self._heads(z_counterfactual, w) - self._heads(z, w), w, out=rows.view(self.n_heads, -1, rows.shape[-1]))

    def _heads(self, z: Tensor, w: Tensor) -> Float[Tensor, "n_heads tokens d_head"]:
        return z.detach().reshape(-1, self.n_heads, w.shape[1]).transpose(0, 1).float()


def head_sources(bridge: Any, graph: Graph) -> dict[str, HeadSource]:
    """The z reading of every per-head source of `graph`, by its hook name; empty when any one of them
    cannot be read so (see the module docstring)."""
    out: dict[str, HeadSource] = {}
    for sh in graph.source_hooks:
        if not sh.per_head:
            continue
        attn = bridge.blocks[sh.layer].attn
        o = dict(attn.named_children()).get("o")
        hook = f"blocks.{sh.layer}.attn.o.hook_in"
        linear = wrapped_module(o) if o is not None else None
        if not (_plain_linear(linear) and hook in bridge.hook_dict
                and float(getattr(attn, "_result_contribution_scale", 1.0)) == 1.0
                and weight_out_in(linear).shape[1] % (sh.stop - sh.start) == 0):
            return {}
        out[sh.name] = HeadSource(hook, linear, sh.stop - sh.start)
    return out


def _plain_linear(module: Any) -> bool:
    """A linear map whose float weight is all of it: nn.Linear and its subclasses (Falcon's), or GPT-2's
    Conv1D; not a LoRA wrapper (merged or not) nor a quantized layer."""
    if not (isinstance(module, torch.nn.Linear) or type(module).__name__ == "Conv1D"):
        return False
    weight = getattr(module, "weight", None)
    return isinstance(weight, Tensor) and weight.dtype.is_floating_point


def results_off(bridge: Any, graph: Graph) -> contextlib.AbstractContextManager[Any]:
    """Per-head results off for a pass whose sources are all read at z (else nothing changes)."""
    if head_sources(bridge, graph):  # empty for a graph without per-head sources
        return per_head_flag_off(bridge, "use_attn_result")
    return contextlib.nullcontext()
