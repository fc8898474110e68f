"""The attention's q, k and v projections as attribution reads them without per-head input copies.

A head-level graph scores the edge s -> (head h, q) with the gradient at head h's own copy of the residual
entering q. The bridge's `use_split_qkv_input` provides that copy by repeating the residual per head and
normalising each copy (ln1) on its own: about half the cost of an attribution pass. The same gradient is
a closed function of what a plain pass already has, the gradient at the projection's output `g_h`
([B, T, d_head]) and the norm's input x:

    grad(copy_h) = J_ln1(x)^T (W_h^T g_h)          W_h: head h's rows of the projection, [d_head, d_model]

This module gives the two model-side pieces, each projection's weight split by head and ln1's own module,
and says when a bridge cannot be read this way (then attribution keeps the per-head copies).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from circuitdyn.head_forks import weight_out_in, wrapped_module

KINDS = ("q", "k", "v")


def head_counts(cfg: Any) -> dict[str, int]:
    """Heads per projection: query heads for q, key/value heads (grouped-query attention) for k and v."""
    kv = int(getattr(cfg, "n_key_value_heads", None) or cfg.n_heads)
    return {"q": int(cfg.n_heads), "k": kv, "v": kv}


def head_weights(bridge: Any, layer: int, kind: str, heads: int) -> Tensor:
    """Projection `kind` of `layer` as [heads, d_head, d_model] (row h * d_head + i is head h, dim i), read
    now: under `attribution_hooks` it carries merged LoRA adapters."""
    weight = weight_out_in(wrapped_module(getattr(bridge.blocks[layer].attn, kind)))
    return weight.reshape(heads, weight.shape[0] // heads, weight.shape[1])


def attention_norm(bridge: Any, layer: int) -> Any:
    """The module of ln1 (the norm in front of q, k and v), as the per-head copies apply it."""
    return wrapped_module(bridge.blocks[layer].ln1)


def projection_refusal(bridge: Any, pre_attn_norm: bool) -> str | None:
    """Why the q/k/v gradients cannot be read at the projections (None when they can): every attention must
    compute q, k and v itself from separate linear projections of [heads * d_head, d_model], from ln1's
    module when it has an ln1, which is what its per-head copies compute too."""
    cfg = bridge.cfg
    counts = head_counts(cfg)
    if getattr(cfg, "gated_q_proj", False):
        return "gated q projections (2 x width)"
    for layer, block in enumerate(bridge.blocks):
        attn = dict(block.named_children()).get("attn")
        if attn is None or not getattr(attn, "supports_split_qkv_fork", False):
            return f"block {layer}: its attention does not compute q, k and v itself"
        children = dict(attn.named_children())
        for kind in KINDS:
            linear = wrapped_module(children.get(kind))
            weight = getattr(linear, "weight", None)
            if not isinstance(weight, Tensor) or weight.dim() != 2 or weight.is_meta:
                return f"block {layer}: no readable {kind} projection weight"
            out, d_in = weight_out_in(linear).shape
            if d_in != int(cfg.d_model) or out % counts[kind]:
                return f"block {layer}: the {kind} projection is {tuple(weight.shape)}, not [heads * d_head, d_model]"
        if pre_attn_norm and getattr(attn, "_ln1_module", None) is not attention_norm(bridge, layer):
            return f"block {layer}: its per-head copies are not normalised by ln1's module"
    return None


def norm_vjp(norm: Any, x: Tensor, grads: Tensor) -> Tensor:
    """J_norm(x)^T g for a stack of cotangents `grads` [n, *x.shape] at one input x: one linearisation of
    the norm, applied to every head's gradient at once."""
    pull = torch.func.vjp(norm, x)[1]
    (out,) = torch.vmap(pull)(grads.to(x.dtype))
    return out
