"""EAP-IG's quadrature rules: the points and weights, and the path ends that double as the run's and the
counterfactual's forwards (checked against EAP at each end, which is checked against brute force)."""

import pytest
import torch

from circuitdyn.attribution import AttributionError, Quadrature, attribute, logit_diff
from circuitdyn.attribution import eap_ig as eap_ig_module
from circuitdyn.attribution.quadrature import quadrature_points
from circuitdyn.graph import Graph
from tests.conftest import zoo_model
from tests.test_attribution import close, data_for


@pytest.mark.parametrize("rule", list(Quadrature))
def test_points_lie_on_the_path_and_weights_sum_to_one(rule):
    for steps in range(rule.min_steps, 9):
        points = quadrature_points(rule, steps)
        assert len(points) == steps
        assert all(0.0 <= a <= 1.0 for a, _ in points)
        assert [a for a, _ in points] == sorted(a for a, _ in points)
        assert abs(sum(w for _, w in points) - 1.0) < 1e-12


def test_the_rules_have_their_order_of_accuracy():
    """int_0^1 x^2 = 1/3: midpoint and trapezoid err O(1/m^2) (-1/(12 m^2) resp. 1/(6 (m-1)^2)), left and right
    O(1/m); linear integrands are exact for the midpoint and trapezoid rules."""
    def integral(rule, steps, f):
        return sum(w * f(a) for a, w in quadrature_points(rule, steps))
    for m in (2, 5, 16):
        assert abs(integral(Quadrature.MIDPOINT, m, lambda a: a * a) - 1 / 3 + 1 / (12 * m * m)) < 1e-12
        assert abs(integral(Quadrature.TRAPEZOID, m, lambda a: a * a) - 1 / 3 - 1 / (6 * (m - 1) ** 2)) < 1e-12
        assert abs(integral(Quadrature.LEFT, m, lambda a: a) - (m - 1) / (2 * m)) < 1e-12
        assert abs(integral(Quadrature.RIGHT, m, lambda a: a) - (m + 1) / (2 * m)) < 1e-12
        for rule in (Quadrature.MIDPOINT, Quadrature.TRAPEZOID):
            assert abs(integral(rule, m, lambda a: 3 * a - 1) - 0.5) < 1e-12


def test_the_right_rule_has_hannamw_eap_ig_points():
    """hannamw/EAP-IG interpolates corrupted + (k/m)(clean - corrupted), k = 0..m-1: seen from the clean
    run, alpha = 1 - k/m."""
    m = 7
    assert sorted(1 - k / m for k in range(m)) == pytest.approx([a for a, _ in quadrature_points(Quadrature.RIGHT, m)])


@pytest.mark.parametrize("family", ["gpt2", "llama", "gemma3"])
@pytest.mark.parametrize("granularity", ["head", "layer"])
def test_one_step_at_an_end_is_eap_at_that_end(family, granularity):
    """left(1) evaluates the gradient at the run: EAP itself; right(1) at the corrupted prompt, with the same
    deltas: minus EAP's denoising scores (which read the gradient there). Not in a post-norm model (Gemma3):
    there a head's residual delta is its output change carried through the layer's output norm, which
    denoising linearises at the corrupted run instead."""
    m = zoo_model(family)
    data = data_for(m, n=3)
    g = Graph.from_model(m, granularity)
    kw = dict(aggregation="sum", per_example=True)
    noising = attribute(m, g, data, "logit_diff", **kw)
    denoising = attribute(m, g, data, "logit_diff", ablation="denoising", **kw)
    left = attribute(m, g, data, "logit_diff", method="eap-ig-inputs", steps=1, quadrature="left", **kw)
    right = attribute(m, g, data, "logit_diff", method="eap-ig-inputs", steps=1, quadrature="right", **kw)
    assert close(left.per_example, noising.per_example, rel=1e-6)
    if not g.post_norm_hooks:
        assert close(right.per_example, -denoising.per_example, rel=1e-6)
    assert torch.equal(left.metric_values, noising.metric_values)  # the metric at the run, either way
    assert torch.equal(right.metric_values, noising.metric_values)
    assert noising.scores.abs().max() > 1e-3


@pytest.mark.parametrize("family", ["gpt2", "llama", "qwen2"])
def test_ends_and_interior_points_add_up_with_their_weights(family):
    """With f(a) the scores of the gradient at alpha = a: left(2) = (f(0) + f(1/2)) / 2, right(2) =
    (f(1/2) + f(1)) / 2, trapezoid(3) = f(0)/4 + f(1/2)/2 + f(1)/4, where f(1/2) = midpoint(1),
    f(0) = EAP and f(1) = -EAP denoising."""
    m = zoo_model(family)
    data = data_for(m, n=3)
    g = Graph.from_model(m, "head")
    kw = dict(aggregation="sum", per_example=True)

    def ig(rule, steps):
        return attribute(m, g, data, "logit_diff", method="eap-ig-inputs", steps=steps, quadrature=rule, **kw).per_example
    f0 = attribute(m, g, data, "logit_diff", **kw).per_example
    f1 = -attribute(m, g, data, "logit_diff", ablation="denoising", **kw).per_example
    half = ig("midpoint", 1)
    assert close(ig("left", 2), (f0 + half) / 2)
    assert close(ig("right", 2), (half + f1) / 2)
    assert close(ig("trapezoid", 3), f0 / 4 + half / 2 + f1 / 4)
    assert (f0 - f1).abs().max() > 1e-2  # the ends differ: the identities are not vacuous


@pytest.mark.parametrize("ablation", ["zero", "mean"])
def test_without_a_corrupted_prompt_the_far_end_is_an_ordinary_step(ablation, monkeypatch):
    """Zero and mean counterfactuals have no forward to reuse: alpha = 1 is stacked with the interior points,
    at its own weight. trapezoid(m + 1) = (left(m) + right(m)) / 2 holds whatever the stacking."""
    m = zoo_model("llama")
    data = data_for(m, n=3)
    g = Graph.from_model(m, "head")
    kw = dict(aggregation="sum", per_example=True, ablation=ablation, method="eap-ig-inputs")

    def ig(rule, steps):
        return attribute(m, g, data, "answer_nll", steps=steps, quadrature=rule, **kw).per_example
    trapezoid = ig("trapezoid", 4)
    assert close(trapezoid, (ig("left", 3) + ig("right", 3)) / 2)
    monkeypatch.setattr(eap_ig_module, "STACKED_TOKENS", 1)  # one point per pass
    assert close(ig("trapezoid", 4), trapezoid)
    assert trapezoid.abs().max() > 1e-3


def test_activation_ig_at_the_run_is_eap():
    m = zoo_model("qwen2")
    data = data_for(m, n=3)
    g = Graph.from_model(m, "head")
    eap = attribute(m, g, data, "logit_diff", aggregation="sum")
    left = attribute(m, g, data, "logit_diff", method="eap-ig-activations", steps=1, quadrature="left", aggregation="sum")
    assert close(left.scores, eap.scores)
    trapezoid = attribute(m, g, data, "logit_diff", method="eap-ig-activations", steps=3, quadrature="trapezoid")
    assert torch.isfinite(trapezoid.scores).all() and trapezoid.scores.abs().max() > 1e-4


def test_trapezoid_is_complete():
    """Its input's outgoing scores sum to M(corrupt) - M(clean) as steps grow."""
    m = zoo_model("gpt2")
    data = data_for(m, n=2)
    a = attribute(m, "layer", data, "logit_diff", method="eap-ig-inputs", steps=48, quadrature="trapezoid",
                  aggregation="sum")
    with torch.no_grad():
        target = (logit_diff(m.bridge(data.corrupt), data) - logit_diff(m.bridge(data.clean), data)).mean()
    assert abs(float(a.scores[0].sum() - target)) <= 2e-3 * max(1.0, abs(float(target)))


@pytest.mark.parametrize(("rule", "forwards"), [("midpoint", 7), ("left", 6), ("right", 6), ("trapezoid", 5)])
def test_path_ends_save_their_forwards(rule, forwards, monkeypatch):
    """At 5 steps, one point per pass: the midpoint rule runs 5 gradient passes and the two recording
    forwards; each end the rule evaluates is one of those forwards."""
    m = zoo_model("gpt2")
    data = data_for(m, n=2)
    calls = []
    monkeypatch.setattr(eap_ig_module, "STACKED_TOKENS", 1)
    handle = m.bridge.register_forward_pre_hook(lambda module, args: calls.append(1))
    try:
        attribute(m, "head", data, "logit_diff")
        eap = len(calls)  # EAP: the counterfactual forward, the run's forward, and the memory probe's
        calls.clear()
        attribute(m, "head", data, "logit_diff", method="eap-ig-inputs", steps=5, quadrature=rule)
    finally:
        handle.remove()
    assert len(calls) - eap == forwards - 2


def test_rules_are_validated_with_the_way_out():
    m = zoo_model("gpt2")
    data = data_for(m, n=1)
    with pytest.raises(AttributionError, match="steps >= 2.*'midpoint'"):
        attribute(m, "head", data, method="eap-ig-inputs", steps=1, quadrature="trapezoid")
    with pytest.raises(AttributionError, match="quadrature"):
        attribute(m, "head", data, method="eap-ig-inputs", quadrature="simpson")
