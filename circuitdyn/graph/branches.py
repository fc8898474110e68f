"""Branch inputs: give each sub-layer of a block a residual input of its own that a hook can read and patch.

Edge attribution needs, for every reader of the residual stream, a hook whose value is that reader's own
copy of the residual and whose gradient flows only through that reader. The bridge provides it for the
attention (per-head `hook_q_input` / `hook_k_input` / `hook_v_input`, or `ln1.hook_in`) and for the MLP
(`blocks.l.hook_mlp_in`, fired on ln2's input), except in parallel blocks whose attention and MLP share
one norm (Falcon, GPT-J, Phi-1/2): there is no ln2, so `hook_mlp_in` exists but never fires, and the MLP
reads the attention's normalised input.

`shared_norm_branches` rewires such blocks for the duration of a `with`: the residual entering the shared
norm is captured, and the MLP receives `norm(hook_mlp_in(residual))`, computed by the norm's own module.
The value is the one the model computes (bit for bit: the same module on the same tensor), but
`hook_mlp_in` now carries the MLP branch's residual input, and its gradient is the MLP branch's alone,
differentiated through the norm: the first-order definition of an edge into `m{l}`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch


def has_shared_norm(block: Any) -> bool:
    """A parallel block whose MLP reads the attention's norm: an `ln1`, an `mlp`, and no `ln2`."""
    names = dict(block.named_children())
    return "ln1" in names and "mlp" in names and "ln2" not in names and "ln2_post" not in names \
        and hasattr(block, "hook_mlp_in")


def shared_norm_blocks(bridge: Any) -> list[int]:
    """Indices of the blocks `shared_norm_branches` rewires."""
    return [i for i, block in enumerate(bridge.blocks) if has_shared_norm(block)]


@contextlib.contextmanager
def shared_norm_branches(bridge: Any) -> Iterator[list[int]]:
    """Route each shared-norm block's MLP input through `blocks.l.hook_mlp_in` (see the module docstring);
    yields the rewired block indices and removes every hook on exit, also on error."""
    handles: list[Any] = []
    rewired = shared_norm_blocks(bridge)
    try:
        for index in rewired:
            block = bridge.blocks[index]
            norm = getattr(block.ln1, "original_component", block.ln1)
            captured: dict[str, torch.Tensor] = {}

            def capture(_module: Any, args: tuple[Any, ...], captured: dict[str, torch.Tensor] = captured) -> None:
                if args and isinstance(args[0], torch.Tensor):
                    captured["residual"] = args[0]

            def branch(
                _module: Any, args: tuple[Any, ...], captured: dict[str, torch.Tensor] = captured,
                norm: Any = norm, hook: Any = block.hook_mlp_in,
            ) -> tuple[Any, ...] | None:
                residual = captured.pop("residual", None)
                if residual is None or not args or not isinstance(args[0], torch.Tensor):
                    return None
                return (norm(hook(residual)),) + tuple(args[1:])

            # ln1's pre-hook sees the residual before any hook on `ln1.hook_in` patches it (that hook is
            # the attention's own input), so a patch of the attention never leaks into the MLP.
            handles.append(block.ln1.register_forward_pre_hook(capture))
            handles.append(block.mlp.register_forward_pre_hook(branch))
        yield rewired
    finally:
        for handle in handles:
            handle.remove()
