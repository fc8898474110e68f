"""The bridge's module names through its wrappers, the Hugging Face names under them, and the attentions
whose fused q/k/v projection the bridge splits.

A TransformerBridge keeps each Hugging Face module it wraps as the wrapper's `_original_component`, so the
model it holds names `model.layers.0.self_attn.q_proj` as
`model.layers.0._original_component.self_attn._original_component.q_proj._original_component`.
"""

from __future__ import annotations

from typing import Any

WRAPPER = "._original_component"


def strip_wrappers(name: str) -> str:
    """The Hugging Face name of a bridge module or parameter name."""
    return name.replace(WRAPPER, "")


def joint_attentions(bridge: Any) -> list[Any]:
    """The bridge's attentions that split one fused q/k/v projection (GPT-2's `c_attn`, GPT-NeoX's
    `query_key_value`) into the q, k and v linears it computes with."""
    from transformer_lens.model_bridge.generalized_components.joint_qkv_attention import JointQKVAttentionBridge

    return [m for m in bridge.modules() if isinstance(m, JointQKVAttentionBridge)]
