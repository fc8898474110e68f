"""Random projections of per-sample gradients, for kernels of models whose gradients do not fit N times.

A CountSketch (a sparse Johnson-Lindenstrauss map) sends each parameter coordinate to one of `k` buckets
with a random sign, so <S g, S g'> is an unbiased estimate of <g, g'> with variance about
(|g|^2 |g'|^2 + <g, g'>^2) / k. It costs one pass over each gradient (no k x P matrix) and keeps k
numbers per sample: the kernel of N samples needs N x k floats and one sample's gradient at a time.
The buckets and signs of parameter tensor j come from a generator seeded by (seed, j), so every sample,
and every call with the same seed, uses the same map.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from jaxtyping import Float
from torch import Tensor


def count_sketch(grads: Sequence[Tensor | None], k: int, *, seed: int = 0) -> Float[Tensor, " k"]:
    """S g for the gradient g given as one tensor per parameter (None: zero)."""
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"the projection size must be an integer >= 1, got {k!r}")
    device = next((g.device for g in grads if g is not None), torch.device("cpu"))
    out = torch.zeros(k, dtype=torch.float64, device=device)
    for j, g in enumerate(grads):
        if g is None:
            continue
        gen = torch.Generator(device="cpu").manual_seed(seed * 1_000_003 + j)
        buckets = torch.randint(k, (g.numel(),), generator=gen).to(device)
        signs = (torch.randint(2, (g.numel(),), generator=gen) * 2 - 1).to(device, torch.float64)
        out.index_add_(0, buckets, g.detach().reshape(-1).to(torch.float64) * signs)
    return out.float()


def relative_frobenius_error(estimate: Tensor, exact: Tensor) -> float:
    """|estimate - exact|_F / |exact|_F."""
    return float(torch.linalg.matrix_norm(estimate.double() - exact.double()) / torch.linalg.matrix_norm(exact.double()))
