"""Per-head q/k/v destination gradients kept factored until they are contracted.

Head h's gradient at its copy of the residual entering q (or k, v) is J_ln1(x)^T W_h^T g_h, with g_h the
gradient at its slice of the projection's output (qkv_projections.py). Where ln1 is a LayerNorm or RMSNorm
(`AffineNorm`), its Jacobian has a closed form, and with gamma folded into the weight, W'_h = W_h diag(gamma)
(rows centred for a LayerNorm), the gradient is

    grad_h = r W'_h^T g_h - r c_h x_hat,      r = 1 / sigma,  c_h = g_h . (W_h diag(gamma) x_hat) / d

per token, where W_h diag(gamma) x_hat is the projection's own output less its constant part. So a pass
needs, per hook, only its d-wide `r g` and the per-head scalars `r c` (plus x_hat, shared by q, k and v),
not the [heads, B, T, d] gradients. Passes add up factored (EAP-IG sums its steps so, before anything is
materialised), and the [w, B, T, d] gradients are written once, straight into the contraction's buffer:
one bmm and K rank-one updates (K = passes summed).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from jaxtyping import Float
from torch import Tensor


@dataclass
class FactoredGradient:
    """sum_k (W^T G_k - C_k x_hat_k) for one q/k/v destination hook, over n heads (n = 1 for a layer-level
    destination, whose weight spans every head). All float32."""

    weight: Float[Tensor, "n d_head d_model"]  # W diag(gamma), rows centred for a LayerNorm (fixed over passes)
    g: Float[Tensor, "n BT d_head"]  # sum_k r_k g_k
    corrections: list[tuple[Tensor, Tensor]] = field(default_factory=list)  # (C_k [K, n, BT], x_hat_k [K, BT, d])
    batch: tuple[int, int] = (0, 0)  # (B, T)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """The shape of the materialised gradient, head-major: [n, B, T, d]."""
        return (self.weight.shape[0], *self.batch, self.weight.shape[-1])

    def add_(self, other: "FactoredGradient", scale: float = 1.0) -> "FactoredGradient":
        """Add `scale * other` (a later pass over the same batch) in place."""
        self.g.add_(other.g, alpha=scale)
        self.corrections.extend((c * scale, x) for c, x in other.corrections)
        return self

    def fold_copies(self, copies: int) -> "FactoredGradient":
        """Sum `copies` stacked copies of the batch (batch axis [copies * B]) into one gradient over B."""
        if copies == 1:
            return self
        (B, T), n = self.batch, self.g.shape[0]
        b = B // copies
        g = self.g.reshape(n, copies, b * T, -1).sum(1)
        corrections = [(c.reshape(c.shape[0], n, copies, b * T).transpose(1, 2).reshape(-1, n, b * T),
                        x.reshape(x.shape[0] * copies, b * T, -1)) for c, x in self.corrections]
        return FactoredGradient(self.weight, g, corrections, (b, T))

    def materialise(self, weights: Float[Tensor, "B T"] | None = None, out: Tensor | None = None) -> Tensor:
        """The gradients [n, B, T, d], each token's multiplied by `weights` (written into `out` if given)."""
        n, B, T, d = self.shape
        g = self.g if weights is None else self.g * weights.reshape(1, B * T, 1)
        flat = torch.empty((n, B * T, d), dtype=torch.float32, device=g.device) if out is None else out.view(n, B * T, d)
        torch.bmm(g, self.weight, out=flat)
        for c, x in self.corrections:  # K in-place rank-one passes: faster here than any batched form
            if weights is not None:
                c = c * weights.reshape(1, 1, B * T)
            for k in range(c.shape[0]):
                flat.addcmul_(c[k][..., None], x[k][None], value=-1.0)
        return flat.view(n, B, T, d) if out is None else out


def as_tensor(grad: Tensor | FactoredGradient) -> Tensor:
    """A destination gradient as a head-major tensor, materialised if it is factored."""
    return grad.materialise() if isinstance(grad, FactoredGradient) else grad
