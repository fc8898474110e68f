"""The bridge's module names through its wrappers, and the Hugging Face names under them.

A TransformerBridge keeps each Hugging Face module it wraps as the wrapper's `_original_component`, so the
model it holds names `model.layers.0.self_attn.q_proj` as
`model.layers.0._original_component.self_attn._original_component.q_proj._original_component`.
"""

from __future__ import annotations

WRAPPER = "._original_component"


def strip_wrappers(name: str) -> str:
    """The Hugging Face name of a bridge module or parameter name."""
    return name.replace(WRAPPER, "")
