"""The attention's q, k and v projections as attribution reads them without per-head input copies.

A head-level graph scores the edge s -> (head h, q) with the gradient at head h's own copy of the residual
entering q. The bridge's `use_split_qkv_input` provides that copy by repeating the residual per head and
normalising each copy (ln1) on its own: about half the cost of an attribution pass. The same gradient is
a closed function of what a plain pass already has, the gradient at the projection's output `g_h`
([B, T, d_head]) and the norm's input x:

    grad(copy_h) = J_ln1(x)^T (W_h^T g_h)          W_h: head h's rows of the projection, [d_head, d_model]

This module gives the two model-side pieces, each projection's weight split by head and ln1's own module,
and says when a bridge cannot be read this way (then attribution keeps the per-head copies).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from circuitdyn.graph.head_forks import weight_out_in, wrapped_module

KINDS = ("q", "k", "v")


def head_counts(cfg: Any) -> dict[str, int]:
    """Heads per projection: query heads for q, key/value heads (grouped-query attention) for k and v."""
    kv = int(getattr(cfg, "n_key_value_heads", None) or cfg.n_heads)
    return {"q": int(cfg.n_heads), "k": kv, "v": kv}


def projection_module(bridge: Any, layer: int, kind: str) -> Any:
    """The linear module of projection `kind` (q, k or v) of `layer`."""
    return wrapped_module(getattr(bridge.blocks[layer].attn, kind))


def head_weights(bridge: Any, layer: int, kind: str, heads: int) -> Tensor:
    """Projection `kind` of `layer` as [heads, d_head, d_model] (row h * d_head + i is head h, dim i), read
    now: under `attribution_hooks` it carries merged LoRA adapters."""
    weight = weight_out_in(projection_module(bridge, layer, kind))
    return weight.reshape(heads, weight.shape[0] // heads, weight.shape[1])


def attention_norm(bridge: Any, layer: int) -> Any:
    """The module of ln1 (the norm in front of q, k and v), as the per-head copies apply it."""
    return wrapped_module(bridge.blocks[layer].ln1)


def projection_refusal(bridge: Any, pre_attn_norm: bool) -> str | None:
    """Why the q/k/v gradients cannot be read at the projections (None when they can): every attention must
    compute q, k and v itself from separate linear projections of [heads * d_head, d_model], from ln1's
    module when it has an ln1, which is what its per-head copies compute too."""
    cfg = bridge.cfg
    counts = head_counts(cfg)
    if getattr(cfg, "gated_q_proj", False):
        return "gated q projections (2 x width)"
    for layer, block in enumerate(bridge.blocks):
        attn = dict(block.named_children()).get("attn")
        if attn is None or not getattr(attn, "supports_split_qkv_fork", False):
            return f"block {layer}: its attention does not compute q, k and v itself"
        children = dict(attn.named_children())
        for kind in KINDS:
            linear = wrapped_module(children.get(kind))
            weight = getattr(linear, "weight", None)
            if not isinstance(weight, Tensor) or weight.dim() != 2 or weight.is_meta:
                return f"block {layer}: no readable {kind} projection weight"
            out, d_in = weight_out_in(linear).shape
            if d_in != int(cfg.d_model) or out % counts[kind]:
                return f"block {layer}: the {kind} projection is {tuple(weight.shape)}, not [heads * d_head, d_model]"
        if pre_attn_norm and getattr(attn, "_ln1_module", None) is not attention_norm(bridge, layer):
            return f"block {layer}: its per-head copies are not normalised by ln1's module"
    return None


def norm_vjp(norm: Any, x: Tensor, grads: Tensor) -> Tensor:
    """J_norm(x)^T g for a stack of cotangents `grads` [n, *x.shape] at one input x: one linearisation of
    the norm, applied to every head's gradient at once."""
    pull = torch.func.vjp(norm, x)[1]
    (out,) = torch.vmap(pull)(grads.to(x.dtype))
    return out


@dataclass(frozen=True)
class AffineNorm:
    """A norm of the form y = gamma * x_hat + beta, x_hat = (x - centre) / sigma, sigma = sqrt(mean((x -
    centre)^2) + eps), with centre the mean of x (LayerNorm) or 0 (RMSNorm). Its Jacobian has a closed
    form: J^T u = (u' - x_hat mean(x_hat u')) / sigma, u' = gamma u centred (LayerNorm) or not (RMSNorm)."""

    gamma: Tensor  # [d], float32
    beta: Tensor | None  # [d], float32
    centred: bool
    eps: float

    def normalise(self, x: Float[Tensor, "*batch d"]) -> tuple[Float[Tensor, "*batch d"], Float[Tensor, " *batch"]]:
        """x_hat and 1 / sigma, in float32."""
        x = x.float()
        if self.centred:
            x = x - x.mean(-1, keepdim=True)
        inv_sigma = torch.rsqrt(x.pow(2).mean(-1) + self.eps)
        return x * inv_sigma[..., None], inv_sigma

    def __call__(self, x: Tensor) -> Tensor:
        y = self.normalise(x)[0] * self.gamma
        return y + self.beta if self.beta is not None else y


#: the eps a norm module without an eps attribute is tried with (e.g. OLMo's LayerNorm, 1e-5)
_DEFAULT_EPS = (1e-5, 1e-6, 1e-12)


def affine_norm(norm: Any, d: int) -> AffineNorm | None:
    """`norm` (ln1's module) as an AffineNorm, or None when it is not one. The form is read from the module's
    weight, bias and eps and then checked by evaluating both on probe inputs of several scales, with and
    without an offset: LayerNorm or RMSNorm, gamma = weight or 1 + weight (Gemma), whatever the class."""
    weight, bias = getattr(norm, "weight", None), getattr(norm, "bias", None)
    if isinstance(weight, Tensor) and tuple(weight.shape) != (d,) or isinstance(bias, Tensor) and tuple(bias.shape) != (d,):
        return None
    probe_dtype = weight.dtype if isinstance(weight, Tensor) else torch.float32
    device = weight.device if isinstance(weight, Tensor) else torch.device("cpu")
    gen = torch.Generator().manual_seed(0)
    probe = torch.cat([torch.randn(3, d, generator=gen) * s + o for s, o in ((1.0, 0.0), (0.01, 0.0), (1.0, 3.0))])
    probe = probe.to(device=device, dtype=probe_dtype)
    with torch.no_grad():
        try:
            want = norm(probe).float()
        except Exception:  # not a per-token norm of [.., d]
            return None
        tol = 1e-4 if probe_dtype in (torch.float32, torch.float64) else 3e-2
        eps_given = next((float(getattr(norm, n)) for n in ("eps", "variance_epsilon", "epsilon") if hasattr(norm, n)), None)
        w = weight.detach().float() if isinstance(weight, Tensor) else torch.ones(d, device=device)
        b = bias.detach().float() if isinstance(bias, Tensor) else None
        for centred in (True, False):
            for gamma in (w, 1 + w):
                for eps in (eps_given,) if eps_given is not None else _DEFAULT_EPS:
                    candidate = AffineNorm(gamma, b, centred, eps)
                    err = (candidate(probe) - want).abs().max() / want.abs().max().clamp_min(1e-30)
                    if bool(err < tol):
                        return candidate
    return None

