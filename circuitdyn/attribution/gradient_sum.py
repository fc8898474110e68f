"""Destination gradients summed over several backward passes (EAP-IG's steps).

The contraction with the deltas is linear in the gradient, so it runs once, on the sum, instead of once
per step. Factored q/k/v gradients are summed factored (head_gradients.py): nothing [heads, B, T, d]-sized
per step. What the sum keeps lives in one allocation sized up front (`DestinationReader.
summed_floats_per_token`): kept piecemeal, small tensors scattered through the passes' freed activations
pin the allocator's heap, and the process's memory grew pass after pass (1.4x the estimate at 5 steps on
a 16-layer GPT-2 shape; 0.8x once kept in one block).
"""

from __future__ import annotations

from typing import Any, cast

import torch
from torch import Tensor

from circuitdyn.attribution.engine import Gradient, ScoreAccumulator
from circuitdyn.attribution.head_gradients import FactoredGradient


class GradientSum:
    """Sums destination gradients over passes: `add` each pass's gradients, call `next_pass` between passes,
    and `flush` the sum into a ScoreAccumulator at the end. `floats`: the numbers it will keep (0: allocate
    as it goes)."""

    def __init__(self, floats: int = 0, device: torch.device | None = None) -> None:
        self.grads: dict[Any, Gradient] = {}
        self._arena = torch.empty(floats, dtype=torch.float32, device=device) if floats else None
        self._used = 0
        self._pass_inputs: dict[tuple[int, tuple[int, ...]], tuple[Tensor, Tensor]] = {}  # this pass's x_hat -> kept

    def _take(self, shape: tuple[int, ...], device: torch.device) -> Tensor:
        n = 1
        for size in shape:
            n *= size
        if self._arena is None or self._used + n > self._arena.numel() or self._arena.device != device:
            return torch.empty(shape, dtype=torch.float32, device=device)
        self._used += n
        return self._arena[self._used - n:self._used].view(shape)

    def _kept(self, x: Tensor) -> Tensor:
        """A copy of a pass's x_hat, once however many hooks of the pass refer to it (the original is held
        until `next_pass`, so its address cannot be reused within the pass)."""
        key = (x.data_ptr(), tuple(x.shape))
        if key not in self._pass_inputs:
            self._pass_inputs[key] = (x, self._take(tuple(x.shape), x.device).copy_(x))
        return self._pass_inputs[key][1]

    def next_pass(self) -> None:
        self._pass_inputs.clear()

    def add(self, dh: Any, grad: Gradient, scale: float) -> None:
        """Add scale * grad in place: one float32 buffer per destination hook for all the steps."""
        held = self.grads.get(dh)
        if isinstance(grad, FactoredGradient):
            kept = FactoredGradient(grad.weight, grad.g, [(c, self._kept(x)) for c, x in grad.corrections], grad.batch)
            if held is None:
                g = torch.mul(grad.g, scale, out=self._take(tuple(grad.g.shape), grad.g.device))
                self.grads[dh] = FactoredGradient(grad.weight, g, [(c * scale, x) for c, x in kept.corrections],
                                                  grad.batch)
            else:
                cast(FactoredGradient, held).add_(kept, scale)
        elif isinstance(held, Tensor):
            held.add_(grad, alpha=scale)
        else:
            self.grads[dh] = torch.mul(grad, scale, out=self._take(tuple(grad.shape), grad.device))

    def flush(self, acc: ScoreAccumulator, deltas: Tensor, weights: Tensor) -> None:
        for dh, g in self.grads.items():
            acc.receive(dh, g, deltas, weights)
        acc.flush(deltas, weights)
        self.grads.clear()
        self.next_pass()
