"""Recomputing activations block by block (checkpointing), for an example whose kept activations do not fit.

Inside `recomputed_blocks(bridge)`, every block's forward with gradients runs under torch's non-reentrant
checkpoint: autograd keeps each block's inputs only, and the backward runs the block again, one block at a
time, for what its own backward needs. The attribution hooks inside a block are of two kinds:

  observers   record a source, keep a norm input, register a gradient hook: side effects, and the value
              passes on unchanged (tagged with `observer`);
  transforms  an input leaf, an interpolated source: a pure function of the value and fixed buffers.

The backward runs after the pass's forward has removed its hooks, so each recomputation installs the pass's
hooks again for its block: it runs the transforms (it must reproduce the values) and skips the observers (a
source recorded twice would be subtracted twice; a gradient hook on a recomputed tensor would never fire).
`installed` is how every pass (engine.forward) installs its hooks.
"""

from __future__ import annotations

import contextlib
import types
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch
from torch.utils.checkpoint import checkpoint

Hook = TypeVar("Hook", bound=Callable[..., Any])
_OBSERVER = "_circuitdyn_observer"


def observer(fn: Hook) -> Hook:
    """Tag a hook that only observes: it returns its input unchanged and acts by side effect."""
    setattr(fn, _OBSERVER, True)
    return fn


@dataclass
class Recompute:
    blocks: int = 0  # blocks wrapped
    recomputing: bool = False  # inside a block's recomputation (during the backward)
    recomputations: int = 0
    hooks: list[tuple[str, Any]] = field(default_factory=list)  # the last pass's hooks, guarded
    live: bool = False  # those hooks are installed (the pass's forward is running)


_ACTIVE: weakref.WeakKeyDictionary[Any, Recompute] = weakref.WeakKeyDictionary()


@contextlib.contextmanager
def recomputed_blocks(bridge: Any, enabled: bool = True) -> Iterator[Recompute]:
    """Checkpoint every block of `bridge` until exit (see the module docstring)."""
    state = Recompute()
    if not enabled:
        yield state
        return
    wrapped = []
    try:
        for block in bridge.blocks:
            if "forward" not in vars(block):
                vars(block)["forward"] = types.MethodType(_checkpointed(type(block).forward, bridge, state), block)
                wrapped.append(block)
        state.blocks = len(wrapped)
        _ACTIVE[bridge] = state
        yield state
    finally:
        _ACTIVE.pop(bridge, None)
        for block in wrapped:
            vars(block).pop("forward", None)


def _checkpointed(forward: Callable[..., Any], bridge: Any, state: Recompute) -> Callable[..., Any]:
    @contextlib.contextmanager
    def recomputing() -> Iterator[None]:
        state.recomputing, state.recomputations = True, state.recomputations + 1
        try:
            with contextlib.nullcontext() if state.live else bridge.hooks(fwd_hooks=state.hooks):
                yield
        finally:
            state.recomputing = False

    def run(self: Any, *args: Any, **kwargs: Any) -> Any:
        if not torch.is_grad_enabled():
            return forward(self, *args, **kwargs)
        return checkpoint(forward, self, *args, use_reentrant=False,
                          context_fn=lambda: (contextlib.nullcontext(), recomputing()), **kwargs)
    return run


@contextlib.contextmanager
def installed(bridge: Any, hooks: list[tuple[str, Any]]) -> Iterator[None]:
    """Install a pass's hooks on the bridge for its forward. When checkpointing is on, every observer is
    skipped while a block is recomputed, and the hooks are kept for the recomputations of the backward."""
    state = _ACTIVE.get(bridge)
    if state is None:
        with bridge.hooks(fwd_hooks=hooks):
            yield
        return

    def skip_in_recompute(fn: Any) -> Any:
        def hook(act: Any, hook: Any) -> Any:
            return act if state.recomputing else fn(act, hook)
        return hook
    state.hooks = [(name, skip_in_recompute(fn) if getattr(fn, _OBSERVER, False) else fn) for name, fn in hooks]
    state.live = True
    try:
        with bridge.hooks(fwd_hooks=state.hooks):
            yield
    finally:
        state.live = False
