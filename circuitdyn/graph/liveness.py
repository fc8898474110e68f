"""Liveness of hook points: is a hook the graph reads or patches really on the model's computation path?

A bridge can expose a hook point that never fires, or that fires on a tensor the model does not use
(Falcon's `hook_mlp_in` before branches.py rewired it): every edge it carries would then score exactly 0,
silently. `dead_hooks` probes each hook on a tiny input in two ways:

- forward: adding noise to the hook's value (one replica of the input per hook, all in one batch) must
  change the logits;
- gradient: a random projection of the logits must have a non-zero gradient at the hook's value (for a
  per-head hook, at every head), taken on a fresh view so that only the hook's own branch counts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

PROBE_TOKENS = 4
SEED = 0


@dataclass(frozen=True)
class HookProbe:
    """A hook to probe: its name, whether its value is per head ([B, T, H, d]), and the role it plays."""

    name: str
    per_head: bool
    role: str  # e.g. "source a0.h*", "destination m3"


def _probe_input(bridge: Any, copies: int, device: torch.device) -> Tensor:
    gen = torch.Generator().manual_seed(SEED)
    n_ctx = int(getattr(bridge.cfg, "n_ctx", PROBE_TOKENS) or PROBE_TOKENS)
    ids = torch.randint(0, int(bridge.cfg.d_vocab), (1, min(PROBE_TOKENS, n_ctx)), generator=gen)
    return ids.repeat(copies, 1).to(device)


def _projection(logits: Tensor) -> Tensor:
    gen = torch.Generator().manual_seed(SEED + 1)
    return torch.randn(logits.shape[-1], generator=gen).to(logits.device)


def forward_dead(bridge: Any, probes: Sequence[HookProbe]) -> list[HookProbe]:
    """Hooks whose perturbation leaves the logits exactly unchanged (replica 0 is the unperturbed run)."""
    device = next(bridge.parameters()).device
    ids = _probe_input(bridge, len(probes) + 1, device)
    gen = torch.Generator().manual_seed(SEED + 2)
    hooks = []
    for r, probe in enumerate(probes, start=1):
        def perturb(act: Tensor, hook: Any, r: int = r) -> Tensor:
            noise = torch.randn(act.shape[1:], generator=gen).to(act.device, act.dtype)
            out = act.clone()
            out[r] = out[r] + noise * (act[r].float().std().to(act.dtype) + 1)
            return out
        hooks.append((probe.name, perturb))
    with torch.no_grad(), bridge.hooks(fwd_hooks=hooks):
        logits = bridge(ids)
    return [p for r, p in enumerate(probes, start=1) if torch.equal(logits[r], logits[0])]


def gradient_dead(bridge: Any, probes: Sequence[HookProbe], input_hook: str) -> list[tuple[HookProbe, list[int]]]:
    """Hooks (with the dead heads of per-head hooks; [] means the whole hook) that receive no gradient."""
    device = next(bridge.parameters()).device
    views: dict[str, Tensor] = {}

    def grab(act: Tensor, hook: Any, name: str) -> Tensor:
        if name == input_hook:
            act = act.detach().requires_grad_(True)
        out = act.view_as(act)
        views[name] = out
        return out
    names = list(dict.fromkeys([input_hook] + [p.name for p in probes]))
    hooks = [(n, lambda act, hook, n=n: grab(act, hook, n)) for n in names]
    with torch.enable_grad():
        with bridge.hooks(fwd_hooks=hooks):
            logits = bridge(_probe_input(bridge, 1, device))
        found = [p for p in probes if p.name in views and views[p.name].requires_grad]
        target = (logits.float() * _projection(logits)).sum()
        grads = torch.autograd.grad(target, [views[p.name] for p in found], allow_unused=True) if found else ()
    by_name = {p.name: g for p, g in zip(found, grads)}
    dead: list[tuple[HookProbe, list[int]]] = []
    for p in probes:
        g = by_name.get(p.name)
        if g is None or not bool(g.abs().amax() > 0):
            dead.append((p, []))
        elif p.per_head:
            heads = [h for h in range(g.shape[2]) if not bool(g[:, :, h].abs().amax() > 0)]
            if heads:
                dead.append((p, heads))
    return dead


def dead_hooks(bridge: Any, probes: Sequence[HookProbe], input_hook: str) -> list[str]:
    """A line per dead hook (empty when every hook is live). Run it inside `attribution_hooks`."""
    lines = [f"{p.name} ({p.role}): adding noise to it leaves the logits exactly unchanged"
             for p in forward_dead(bridge, probes)]
    for p, heads in gradient_dead(bridge, probes, input_hook):
        where = f"heads {heads} of " if heads else ""
        lines.append(f"{where}{p.name} ({p.role}): no gradient reaches it")
    return lines
