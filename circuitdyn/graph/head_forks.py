"""Per-head hooks for attentions that the bridge hands to Hugging Face whole (GPT-J, GPT-Neo, OPT).

For most families the bridge computes attention itself and offers, behind its flags, per-head residual
copies feeding q, k and v (`attn.hook_q_input` / `hook_k_input` / `hook_v_input`, [B, T, heads, d]) and
per-head outputs (`attn.hook_result`, [B, T, H, d]). A plain `AttentionBridge` delegates to the Hugging
Face module and refuses both flags, although its q, k, v and o projections are separate linear bridges.

`head_forks` provides the same hooks there, for the duration of a `with`, by replacing the outputs of
the projections' own linear layers:

- q, k, v: the residual entering the block's attention norm (ln1; the attention's input if it has none)
  is repeated per head, passed through `hook_{q,k,v}_input`, normalised per head by ln1's own module,
  and projected head by head: `out[..., h, :] = W_h norm(x_h) + b_h`.
- o: `result_h = W_O[:, h] z_h` goes through `hook_result`, and the output is `sum_h result_h + b_O`.

Unpatched, the values are the model's own up to float rounding (a sum of per-head products instead of
one matrix product). Each per-head copy carries only its head's gradient: the first-order definition of
an edge into that head's q, k or v input.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor

PROJECTIONS = ("q", "k", "v", "o")
FORKABLE_FLAGS = ("use_attn_result", "use_split_qkv_input")


def wrapped_module(bridge_module: Any) -> Any:
    """The Hugging Face module a bridge component wraps (the module itself when it wraps none)."""
    return getattr(bridge_module, "original_component", bridge_module)


def weight_out_in(linear: Any) -> Tensor:
    """The weight as [out, in]: nn.Linear stores it so, HF's Conv1D transposed."""
    return linear.weight.t() if type(linear).__name__ == "Conv1D" else linear.weight


def is_forkable(attn: Any) -> bool:
    """A Hugging Face attention whose q, k, v, o are separate linear bridges, with the fork hook points.
    (boot_native bridges are not: they ignore parts of their config, e.g. parallel blocks.)"""
    if not type(getattr(attn, "original_component", None)).__module__.startswith("transformers."):
        return False
    children = dict(attn.named_children())
    if not all(p in children for p in PROJECTIONS):
        return False
    if not all(hasattr(attn, h) for h in ("hook_q_input", "hook_k_input", "hook_v_input", "hook_result")):
        return False
    return all(hasattr(wrapped_module(children[p]), "weight") for p in PROJECTIONS)


def forkable(bridge: Any) -> bool:
    """Every block's attention can be forked (see `is_forkable`)."""
    blocks = list(getattr(bridge, "blocks", []))
    return bool(blocks) and all("attn" in dict(b.named_children()) and is_forkable(b.attn) for b in blocks)


def set_flag(bridge: Any, name: str, value: bool) -> bool:
    """Set a per-head attention flag (`use_attn_result`, `use_split_qkv_input`) through the bridge. Where
    the bridge refuses it and every attention is forkable, open the bridge's gate for the flag's hook
    points directly (`head_forks` provides them) and return True; re-raise otherwise."""
    try:
        {"use_attn_result": bridge.set_use_attn_result, "use_split_qkv_input": bridge.set_use_split_qkv_input}[name](value)
        return False
    except NotImplementedError:
        if not forkable(bridge):
            raise
        object.__setattr__(bridge.cfg, name, value)  # the gate the bridge checks when a hook is added
        return True


def _projection_fork(cfg: Any, hook: Any, linear: Any, heads: int, norm: Any, captured: dict[str, Tensor]) -> Any:
    def fork(_module: Any, _args: tuple[Any, ...], output: Tensor) -> Tensor | None:
        residual = captured.get("residual")
        if residual is None or not getattr(cfg, "use_split_qkv_input", False):
            return None
        x = hook(residual[:, :, None, :].expand(-1, -1, heads, -1).contiguous())  # [B, T, heads, d]
        normed = norm(x) if norm is not None else x
        weight = weight_out_in(linear)
        d_head = weight.shape[0] // heads
        out = torch.einsum("bthd,hed->bthe", normed.to(weight.dtype), weight.reshape(heads, d_head, -1))
        bias = getattr(linear, "bias", None)
        if bias is not None:
            out = out + bias.reshape(heads, d_head)
        return out.reshape(*out.shape[:2], heads * d_head).to(output.dtype)
    return fork


def _result_fork(cfg: Any, hook: Any, linear: Any, heads: int) -> Any:
    def fork(_module: Any, args: tuple[Any, ...], output: Tensor) -> Tensor | None:
        if not args or not isinstance(args[0], Tensor) or not getattr(cfg, "use_attn_result", False):
            return None
        z = args[0]
        weight = weight_out_in(linear)  # [d_model, H * d_head]
        d_head = weight.shape[1] // heads
        per_head = torch.einsum("bthe,mhe->bthm", z.reshape(*z.shape[:2], heads, d_head),
                                weight.reshape(weight.shape[0], heads, d_head))
        out = hook(per_head).sum(2)
        bias = getattr(linear, "bias", None)
        return (out + bias if bias is not None else out).to(output.dtype)
    return fork


@contextlib.contextmanager
def head_forks(bridge: Any, active: bool) -> Iterator[list[int]]:
    """When `active`, per-head q/k/v inputs and per-head outputs on every delegated attention (see the module
    docstring), each firing while its flag is set (`set_flag`), as the bridge's own hooks do. Yields the
    forked block indices; removes every hook on exit, also on error."""
    handles: list[Any] = []
    forked = list(range(len(bridge.blocks))) if active else []
    cfg = bridge.cfg
    n_heads = int(cfg.n_heads)
    n_kv = int(getattr(cfg, "n_key_value_heads", None) or n_heads)
    try:
        for index in forked:
            block, attn = bridge.blocks[index], bridge.blocks[index].attn
            out = wrapped_module(attn.o)
            handles.append(out.register_forward_hook(_result_fork(cfg, attn.hook_result, out, n_heads)))
            ln1 = dict(block.named_children()).get("ln1")
            captured: dict[str, Tensor] = {}

            def capture(_module: Any, args: tuple[Any, ...], kwargs: dict[str, Any],
                        captured: dict[str, Tensor] = captured) -> None:
                value = args[0] if args else kwargs.get("hidden_states")
                if isinstance(value, Tensor):
                    captured["residual"] = value
            # ln1's pre-hook sees the residual before any hook on `ln1.hook_in` patches it.
            handles.append((ln1 if ln1 is not None else attn).register_forward_pre_hook(capture, with_kwargs=True))
            norm = wrapped_module(ln1) if ln1 is not None else None
            for kind, heads in (("q", n_heads), ("k", n_kv), ("v", n_kv)):
                linear = wrapped_module(getattr(attn, kind))
                fork = _projection_fork(cfg, getattr(attn, f"hook_{kind}_input"), linear, heads, norm, captured)
                handles.append(linear.register_forward_hook(fork))
        yield forked
    finally:
        for handle in handles:
            handle.remove()
