"""Where EAP-IG evaluates gradients along its path, and how it weighs them.

The path runs from the run (alpha = 0) to the counterfactual (alpha = 1); EAP-IG's score of an edge is
delta . integral_0^1 grad(alpha) d alpha, approximated by sum_k w_k grad(alpha_k) over `steps` points:

  midpoint   alpha_k = (k + 1/2) / m, w_k = 1 / m               error O(1/m^2); neither end
  left       alpha_k = k / m (k = 0..m-1), w_k = 1 / m          error O(1/m); includes the run
  right      alpha_k = k / m (k = 1..m), w_k = 1 / m            error O(1/m); includes the counterfactual:
             the points of hannamw/EAP-IG's `get_scores_eap_ig` (corrupted + (k/m)(clean - corrupted),
             k = 0..m-1, seen from the corrupted end)
  trapezoid  alpha_k = k / (m-1) (k = 0..m-1), w = 1/(m-1), halved at both ends (m >= 2)  error O(1/m^2)

A point at an end costs less than an interior one: the run's forward (which every method needs for the
deltas) doubles as the gradient pass at alpha = 0, and a corrupted prompt's forward as the one at alpha = 1.
"""

from __future__ import annotations

from enum import Enum


class Quadrature(str, Enum):
    MIDPOINT = "midpoint"
    LEFT = "left"
    RIGHT = "right"
    TRAPEZOID = "trapezoid"

    @property
    def min_steps(self) -> int:
        return 2 if self is Quadrature.TRAPEZOID else 1


def quadrature_points(rule: Quadrature, steps: int) -> list[tuple[float, float]]:
    """The (alpha, weight) pairs of `rule` with `steps` points, in increasing alpha; the weights sum to 1."""
    if steps < rule.min_steps:
        raise ValueError(f"the {rule.value} rule needs steps >= {rule.min_steps}, got {steps}")
    m = steps
    if rule is Quadrature.MIDPOINT:
        return [((k + 0.5) / m, 1.0 / m) for k in range(m)]
    if rule is Quadrature.LEFT:
        return [(k / m, 1.0 / m) for k in range(m)]
    if rule is Quadrature.RIGHT:
        return [(k / m, 1.0 / m) for k in range(1, m + 1)]
    h = 1.0 / (m - 1)
    return [(k / (m - 1), h / 2 if k in (0, m - 1) else h) for k in range(m)]
