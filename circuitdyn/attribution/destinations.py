"""Reading destination gradients in the backward pass, in the one layout the contraction uses: head-major
`[w, B, T, d_model]` (w = the hook's destinations), in the residual space of the sources' deltas.

Two ways to read the per-head q, k and v destinations, with the same gradients (to float rounding):

  split      at the bridge's per-head copies of the residual (`use_split_qkv_input`): each head's copy is
             normalised and projected on its own, in the forward and the backward of every pass
  projected  at the projections' outputs, carried back by hand: head h's gradient is J_ln1(x)^T W_h^T g_h
             (qkv_projections.py), so the pass itself is the model's plain forward and backward

MLP and logits destinations are read at their hooks either way. `QKVGradients.AUTO` takes `projected`
where the bridge allows it (qkv_projections.projection_refusal) and `split` elsewhere.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from torch import Tensor

from circuitdyn.attribution.errors import AttributionError
from circuitdyn.attribution.head_gradients import FactoredGradient
from circuitdyn.attribution.qkv_projections import (
    AffineNorm,
    affine_norm,
    attention_norm,
    head_counts,
    head_weights,
    norm_vjp,
    projection_module,
    projection_refusal,
)
from circuitdyn.attribution.recompute import observer
from circuitdyn.graph import DestHook, Graph, ProjectionHook
from circuitdyn.graph.head_forks import weight_out_in

HookList = list[tuple[str, Callable[..., Any]]]
OnGrad = Callable[[DestHook, "Tensor | FactoredGradient"], None]


class QKVGradients(str, Enum):
    AUTO = "auto"
    PROJECTED = "projected"
    SPLIT = "split"


def head_major(dh: DestHook, grad: Tensor) -> Tensor:
    """The gradient a destination hook receives ([B, T, d], or [B, T, heads, d] per head) as [w, B, T, d]."""
    if not dh.per_head:
        return grad[None]
    return grad.sum(2)[None] if dh.sum_heads else grad.permute(2, 0, 1, 3)


def _as_head_major(dh: DestHook, on_grad: OnGrad) -> Callable[[Tensor], None]:
    return lambda grad: on_grad(dh, head_major(dh, grad))


def _read_at(name: str, receive: Callable[[Tensor], None]) -> tuple[str, Callable[..., Any]]:
    @observer
    def fn(act: Tensor, hook: Any) -> Tensor:
        if not act.requires_grad:
            return act
        # A fresh view: some hook points hand over the residual tensor itself (hook_mlp_in is a pre-hook on
        # ln2), whose gradient would include the skip path; the view's is only this branch's.
        out = act.view_as(act)
        out.register_hook(lambda grad: receive(grad.detach()))
        return out
    return name, fn


@dataclass(frozen=True)
class DestinationReader:
    """Builds the forward hooks that hand each destination's gradient to `on_grad` as it arrives."""

    graph: Graph
    bridge: Any  # read by the projected hooks (weights are read when a gradient arrives)
    projected: bool
    norms: dict[int, AffineNorm | None] = field(init=False)  # ln1's closed form per layer (projected only)

    def __post_init__(self) -> None:
        layers = sorted({p.dest.layer for p in self.graph.projection_hooks if p.norm is not None}) if self.projected else []
        d = self.graph.spec.d_model
        object.__setattr__(self, "norms", {layer: affine_norm(attention_norm(self.bridge, layer), d) for layer in layers})

    def hooks(self, on_grad: OnGrad) -> HookList:
        via_projection = {p.dest: p for p in self.graph.projection_hooks} if self.projected else {}
        hooks = [_read_at(dh.name, _as_head_major(dh, on_grad)) for dh in self.graph.dest_hooks if dh not in via_projection]
        if via_projection:
            hooks += _projected_hooks(self.bridge, list(via_projection.values()), self.norms, on_grad)
        return hooks

    def _factored(self, p: ProjectionHook) -> bool:
        return self.projected and _reads_factored(p, self.norms)

    def kept_bytes_per_token(self) -> int:
        """What the factored hooks keep from the forward for the backward beyond autograd's own saved tensors:
        the q/k/v projections' outputs (an upper bound: where autograd saves them too, they are shared)."""
        element = next(iter(self.bridge.parameters())).element_size()
        return sum(_width(self.bridge, p) * element
                   for p in self.graph.projection_hooks if self._factored(p) and p.norm is not None)

    def summed_floats_per_token(self, steps: int) -> int:
        """Float32 numbers per token that a sum of destination gradients over `steps` passes holds (EAP-IG):
        a factored hook holds its projection-wide gradient and, per pass, its layer's x_hat; others [w, d]."""
        d, factored = self.graph.spec.d_model, {p.dest: p for p in self.graph.projection_hooks if self._factored(p)}
        total = sum(_width(self.bridge, factored[dh]) if dh in factored else (dh.stop - dh.start) * d
                    for dh in self.graph.dest_hooks)
        return total + steps * d * len({p.dest.layer for p in factored.values() if p.norm is not None})


def _reads_factored(p: ProjectionHook, norms: dict[int, AffineNorm | None]) -> bool:
    """Whether projection hook `p`'s gradient is handed on factored: its projection reads the residual
    itself, or through an ln1 whose closed form is known."""
    return p.norm is None or norms.get(p.dest.layer) is not None


def _width(bridge: Any, p: ProjectionHook) -> int:
    """The output width of a q/k/v projection (heads * d_head)."""
    return int(weight_out_in(projection_module(bridge, p.dest.layer, p.dest.kind)).shape[0])


def _projected_hooks(bridge: Any, projections: list[ProjectionHook], norms: dict[int, AffineNorm | None],
                     on_grad: OnGrad) -> HookList:
    """Hooks at ln1's inputs (kept, detached: autograd keeps them anyway) and at the q/k/v outputs, whose
    gradients are carried back per head through the projection and ln1: factored (head_gradients.py) where
    ln1 is a LayerNorm or RMSNorm, else through ln1's own module, linearised once per hook for all its heads."""
    heads = head_counts(bridge.cfg)
    inputs: dict[int, Tensor] = {}
    hooks: HookList = []
    for layer in sorted({p.dest.layer for p in projections if p.norm_input is not None}):
        name = next(p.norm_input for p in projections if p.dest.layer == layer and p.norm_input)

        @observer
        def keep(act: Tensor, hook: Any, layer: int = layer) -> Tensor:
            inputs[layer] = act.detach()
            return act
        hooks.append((name, keep))
    normalised = _Normalised(inputs, norms, {p.dest.layer: sum(q.dest.layer == p.dest.layer for q in projections)
                                             for p in projections})
    for p in projections:
        dh, n = p.dest, heads[p.dest.kind]
        if _reads_factored(p, norms):
            hooks.append(_factored_hook(bridge, p, n, normalised, on_grad))
            continue

        def receive(g: Tensor, p: ProjectionHook = p, dh: DestHook = dh, n: int = n) -> None:
            w = head_weights(bridge, dh.layer, dh.kind, n)  # [n, d_head, d]
            B, T = g.shape[0], g.shape[1]
            if dh.sum_heads:  # one destination for all heads: W^T g over the whole projection
                back = (g.reshape(B * T, -1) @ w.reshape(-1, w.shape[-1]))[None]
            else:
                back = g.reshape(B * T, n, -1).transpose(0, 1) @ w  # [n, B*T, d]
            back = norm_vjp(attention_norm(bridge, dh.layer), inputs[dh.layer], back.reshape(back.shape[0], B, T, -1))
            on_grad(dh, back)
        hooks.append(_read_at(p.output, receive))
    return hooks


@dataclass
class _Normalised:
    """ln1's x_hat and 1 / sigma per layer, computed from the kept input at the layer's first q/k/v gradient
    and dropped (with the input) once all of the layer's hooks have read them."""

    inputs: dict[int, Tensor]
    norms: dict[int, AffineNorm | None]
    readers: dict[int, int]

    def __post_init__(self) -> None:
        self.cache: dict[int, tuple[Tensor, Tensor]] = {}
        self.read: dict[int, int] = {}

    def __call__(self, layer: int) -> tuple[Tensor, Tensor]:
        if layer not in self.cache:
            norm = self.norms[layer]
            assert norm is not None
            self.cache[layer] = norm.normalise(self.inputs.pop(layer))
        out = self.cache[layer]
        self.read[layer] = self.read.get(layer, 0) + 1
        if self.read[layer] == self.readers[layer]:
            del self.cache[layer]
        return out


def _factored_hook(bridge: Any, p: ProjectionHook, n: int, normalised: _Normalised, on_grad: OnGrad) -> tuple[str, Any]:
    """The hook at a q/k/v projection's output that hands on its gradient as a FactoredGradient: it keeps the
    output's value (W ln1(x) + b, whence W diag(gamma) x_hat) until the gradient arrives."""
    dh = p.dest
    norm = normalised.norms.get(dh.layer)

    @observer
    def fn(act: Tensor, hook: Any) -> Tensor:
        if not act.requires_grad:
            return act
        value = act.detach() if norm is not None else None
        out = act.view_as(act)
        out.register_hook(lambda grad: on_grad(dh, _factored(bridge, dh, n, norm, grad.detach(), value, normalised)))
        return out
    return p.output, fn


def _factored(bridge: Any, dh: DestHook, n: int, norm: AffineNorm | None, g: Tensor, value: Tensor | None,
              normalised: _Normalised) -> FactoredGradient:
    B, T = g.shape[0], g.shape[1]
    w = head_weights(bridge, dh.layer, dh.kind, n).float()  # [n, d_head, d]
    g32 = g.float().reshape(B * T, n, -1)
    if norm is None:  # the projection reads the residual itself
        weight = w.reshape(1, -1, w.shape[-1]) if dh.sum_heads else w
        return FactoredGradient(weight, _head_major(g32, dh.sum_heads), [], (B, T))
    assert value is not None
    x_hat, r = normalised(dh.layer)
    bias = getattr(projection_module(bridge, dh.layer, dh.kind), "bias", None)
    constant = (w @ norm.beta if norm.beta is not None else 0) + (bias.float().reshape(n, -1) if bias is not None else 0)
    folded = value.float().reshape(B * T, n, -1) - constant  # W_h diag(gamma) x_hat
    c = (g32 * folded).sum(-1) * (r.reshape(B * T, 1) / norm.gamma.shape[0])  # [BT, n]
    weight = w * norm.gamma
    if norm.centred:
        weight = weight - weight.mean(-1, keepdim=True)
    if dh.sum_heads:
        weight, c = weight.reshape(1, -1, weight.shape[-1]), c.sum(1, keepdim=True)
    rg = _head_major(g32 * r.reshape(B * T, 1, 1), dh.sum_heads)
    return FactoredGradient(weight, rg, [(c.T[None], x_hat.reshape(1, B * T, -1))], (B, T))


def _head_major(g: Tensor, sum_heads: bool) -> Tensor:
    """[BT, n, d_head] as [n, BT, d_head] (or [1, BT, n * d_head] for one destination over all heads)."""
    return g.reshape(1, g.shape[0], -1) if sum_heads else g.transpose(0, 1).contiguous()


def destination_reader(bridge: Any, graph: Graph, mode: QKVGradients, *, patches_destinations: bool) -> DestinationReader:
    """The reader for `mode`; methods that patch the q/k/v copies themselves (exact patching) keep them."""
    if patches_destinations and mode is QKVGradients.PROJECTED:
        raise AttributionError("exact patching patches the per-head q/k/v copies themselves: qkv_gradients="
                               "'projected' does not apply to it; use 'auto'")
    if not graph.projection_hooks or patches_destinations or mode is QKVGradients.SPLIT:
        return DestinationReader(graph, bridge, projected=False)
    refusal = projection_refusal(bridge, graph.spec.pre_attn_norm)
    if refusal is not None and mode is QKVGradients.PROJECTED:
        raise AttributionError(f"qkv_gradients='projected' is not possible here ({refusal}): use 'auto' or 'split'")
    return DestinationReader(graph, bridge, projected=refusal is None)
