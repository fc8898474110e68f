"""The hook flags edge attribution switches on, and restores after: per-head outputs, per-head q/k/v
inputs and the MLP's input hook.

The bridge's own flags work for most families; where the bridge refuses a per-head flag (attention
delegated to Hugging Face: GPT-J, GPT-Neo, OPT), head_forks.py provides the same hooks, and where a
parallel block's MLP shares the attention's norm, branches.py gives it an input of its own.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from circuitdyn.graph.branches import shared_norm_branches
from circuitdyn.graph.head_forks import FORKABLE_FLAGS, head_forks, set_flag
from circuitdyn.models.loaded import as_bridge
from circuitdyn.models.lora import adapters_merged

HOOK_FLAGS = ("use_attn_result", "use_split_qkv_input", "use_hook_mlp_in")


class HookFlagsUnavailable(RuntimeError):
    """The model cannot provide the per-head hooks that edge attribution needs."""


@contextlib.contextmanager
def attribution_hooks(model: Any, *, split_qkv: bool = True, attn_result: bool = True) -> Iterator[Any]:
    """Switch on the hooks edge attribution needs and restore every flag afterwards, also on error. Yields
    the bridge. Always on: `hook_mlp_in` (made live in shared-norm parallel blocks, see branches.py).
    Where the bridge delegates attention to Hugging Face and refuses the per-head flags (GPT-J, GPT-Neo,
    OPT), head_forks.py provides the same hooks.
    `attn_result` (per-head outputs) and `split_qkv` (per-head q/k/v inputs, about 30% of a forward) are
    what head-level graphs read; layer-level graphs need only what their hooks name."""
    bridge = as_bridge(model)
    old = {name: bool(getattr(bridge.cfg, name, False)) for name in HOOK_FLAGS + ("use_attn_in",)}
    wanted = {"use_attn_result": attn_result, "use_split_qkv_input": split_qkv, "use_hook_mlp_in": True}
    forked = False  # the bridge refused a per-head flag: head_forks provides its hooks
    try:
        if old["use_attn_in"]:
            bridge.set_use_attn_in(False)
        for name in HOOK_FLAGS:
            try:
                forked |= _set_hook_flag(bridge, name, wanted[name])
            except Exception as err:  # the bridge refuses
                raise HookFlagsUnavailable(_flag_refusal(bridge, name, err)) from err
        with shared_norm_branches(bridge), head_forks(bridge, forked), adapters_merged(bridge):
            yield bridge
    finally:
        for name in HOOK_FLAGS:
            with contextlib.suppress(Exception):
                _set_hook_flag(bridge, name, old[name])
        if old["use_attn_in"]:
            with contextlib.suppress(Exception):
                bridge.set_use_attn_in(True)


def _set_hook_flag(bridge: Any, name: str, value: bool) -> bool:
    """Set one of HOOK_FLAGS; True when head_forks must provide the hooks (see head_forks.set_flag)."""
    if name in FORKABLE_FLAGS:
        return set_flag(bridge, name, value)
    bridge.set_use_hook_mlp_in(value)
    return False


def _flag_refusal(bridge: Any, flag: str, err: Exception) -> str:
    architecture = str(getattr(bridge.cfg, "architecture", type(bridge).__name__))
    attention = type(bridge.blocks[0].attn).__name__ if len(bridge.blocks) else "?"
    if "native" in type(getattr(bridge, "original_model", None)).__module__:  # a boot_native random-init bridge
        return (f"this bridge cannot provide per-head hooks ({flag}: {err}). Load the model with "
                "circuitdyn.load_model (TransformerBridge.boot_transformers over a Hugging Face model); "
                "boot_native bridges do not support attn_result / split q,k,v input hooks.")
    return (f"{architecture}: the bridge's attention ({attention}) has no per-head hooks ({flag}), which "
            "head-level graphs and the q/k/v-split layer graph read. Use the layer graph with one attention "
            "destination per layer: Graph.from_model(model, 'layer', qkv='merged'), passed to attribute() as "
            "the graph. The README lists what each family supports.")


@contextlib.contextmanager
def per_head_flag_off(bridge: Any, flag: str) -> Iterator[None]:
    """Temporarily drop one of the per-head attention flags (`use_split_qkv_input`, `use_attn_result`) for
    passes that read none of its hooks: the per-head copies cost a share of every forward and backward."""
    was = bool(getattr(bridge.cfg, flag, False))
    if was:
        set_flag(bridge, flag, False)
    try:
        yield
    finally:
        if was:
            set_flag(bridge, flag, True)


def split_qkv_off(bridge: Any) -> contextlib.AbstractContextManager[None]:
    """Temporarily drop the per-head q/k/v copies (for passes that read no q/k/v destination)."""
    return per_head_flag_off(bridge, "use_split_qkv_input")
