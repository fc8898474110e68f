"""A loaded model: the TransformerBridge, the tokenizer it was trained with, and where it came from.

`LoadedModel` is what every layer above takes; `as_bridge` accepts it or a bare bridge. Cloning copies a
model to fine-tune while keeping the base.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch

from circuitdyn.models.weights import current_sha256


@dataclass(frozen=True)
class Provenance:
    spec: str
    architecture: str
    family: str
    dtype: str
    device: str
    n_params: int
    weights_sha256: str  # as loaded; attributions record the hash of the weights they ran on (weights.py)
    source: str
    training: dict[str, Any] | None = None  # the training run that wrote a checkpoint folder, when it is one

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True, eq=False)
class LoadedModel:
    """A TransformerBridge with the tokenizer it was trained with and where it came from."""

    bridge: Any
    tokenizer: Any
    provenance: Provenance

    @property
    def cfg(self) -> Any:
        return self.bridge.cfg

    @property
    def device(self) -> torch.device:
        return next(self.bridge.parameters()).device

    def __call__(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self.bridge(*args, **kwargs)


def weights_sha256(model: Any) -> str:
    """Hash of the weights a model (LoadedModel or bridge) runs on now: see circuitdyn.models.weights."""
    return current_sha256(as_bridge(model))


def as_bridge(model: Any) -> Any:
    return model.bridge if isinstance(model, LoadedModel) else model


def context_of(model: Any) -> int | None:
    """The model's context length (positions it was built for), when its config says."""
    n_ctx = getattr(getattr(as_bridge(model), "cfg", None), "n_ctx", None)
    return int(n_ctx) if isinstance(n_ctx, int) and n_ctx > 0 else None


def clone_bridge(bridge: Any) -> Any:
    """A deep copy of a bridge. Tensors the bridge caches on its modules during a forward with gradients
    (non-leaf tensors, which deepcopy refuses) are copied detached.

    A block that has run wires capture hooks (hook_mlp_in, the split q/k/v fork) whose closures point at
    ITS modules; deepcopy copies the hooks but not the closures, so the copy's `hook_mlp_in` would never
    fire (every edge into an MLP silently 0). They are removed from the copy, which re-wires its own on
    its first forward."""
    memo: dict[int, Any] = {}
    for module in bridge.modules():
        for value in vars(module).values():
            if isinstance(value, torch.Tensor) and value.grad_fn is not None:
                memo[id(value)] = value.detach().clone()
    clone = copy.deepcopy(bridge, memo)
    for module in clone.modules():
        teardown = getattr(module, "_teardown_capture_hooks", None)
        if callable(teardown):
            teardown()
    return clone


def clone_model(model: LoadedModel) -> LoadedModel:
    """An independent copy of a loaded model (same provenance), e.g. to fine-tune while keeping the base."""
    if not isinstance(model, LoadedModel):
        raise TypeError(f"clone_model takes a LoadedModel (from circuitdyn.load_model), got {type(model).__name__}; "
                        "for a bare bridge use clone_bridge")
    return LoadedModel(clone_bridge(model.bridge), model.tokenizer, model.provenance)
