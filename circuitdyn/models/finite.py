"""Weights that hold NaN or inf: found by name, so a refusal can say which parameter broke the logits."""

from __future__ import annotations

from typing import Any

import torch

from circuitdyn.models.wrapper_names import strip_wrappers


def nonfinite_weights(model: Any) -> list[str]:
    """'name (k NaN, m inf of n)' for each parameter or buffer of the model that is not finite, in module order."""
    bridge = getattr(model, "bridge", model)
    found = []
    tensors = list(bridge.named_parameters()) + [(n, b) for n, b in bridge.named_buffers() if b.is_floating_point()]
    for name, tensor in tensors:
        with torch.no_grad():
            if bool(torch.isfinite(tensor).all()):
                continue
            nan, inf = int(torch.isnan(tensor).sum()), int(torch.isinf(tensor).sum())
        found.append(f"{strip_wrappers(name)} ({nan} NaN, {inf} inf of {tensor.numel()})")
    return found


def logits_not_finite(model: Any) -> str:
    """Why a model's logits are not finite, in one paragraph that names the fix."""
    broken = nonfinite_weights(model)
    if broken:
        more = f" and {len(broken) - 3} more" if len(broken) > 3 else ""
        return (f"the model's logits are not finite because its weights are not: {'; '.join(broken[:3])}{more}. "
                "Reload the weights, or look at the run that wrote them (a learning rate too high, a float16 "
                "overflow); a checkpoint saved before the first non-finite loss can be resumed")
    return ("the model's logits are not finite though every weight is: an overflow in the forward pass (float16 or "
            "bfloat16 activations); load the model in float32 (load_model(..., dtype=torch.float32))")


def logits_finite(model: Any, tokens: int = 4) -> bool:
    """Whether the model's logits on a few fixed tokens are all finite."""
    bridge = getattr(model, "bridge", model)
    n_ctx = int(getattr(bridge.cfg, "n_ctx", tokens) or tokens)
    ids = torch.arange(min(tokens, n_ctx), device=next(bridge.parameters()).device)[None] % int(bridge.cfg.d_vocab)
    with torch.no_grad():
        return bool(torch.isfinite(bridge(ids)).all())
