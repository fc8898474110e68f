import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from circuitdyn.analysis import metrics as M
from circuitdyn.analysis.comparison import ComparisonError, compare, correct_mask, cross_family_table, edge_diff, paired_delta
from circuitdyn.analysis.stats import N_PERMUTATIONS, paired_stat
from circuitdyn.attribution import attribute
from circuitdyn.tasks import Addition, tokenize_pairs
from tests.conftest import zoo_model


def test_uniform_scores():
    s = torch.ones(50)
    assert float(M.normalized_entropy(s)) == pytest.approx(1.0)
    assert float(M.gini(s)) == pytest.approx(0.0, abs=1e-12)
    assert float(M.effective_edges(s)) == pytest.approx(50)
    assert float(M.top_share(s, 0.1)) == pytest.approx(0.1)


def test_one_hot_scores():
    E = 20
    s = torch.zeros(E)
    s[3] = -2.5
    assert float(M.entropy(s)) == pytest.approx(0.0)
    assert float(M.gini(s)) == pytest.approx((E - 1) / E)
    assert float(M.top_share(s, 0.01)) == pytest.approx(1.0)
    assert float(M.intensity(s)) == pytest.approx(2.5 / E)
    assert float(M.total_intensity(s)) == pytest.approx(2.5)


def test_hand_computed_small_vector():
    s = torch.tensor([1.0, -2.0, 3.0, -4.0])
    a = np.abs(s.numpy())
    p = a / a.sum()
    assert float(M.entropy(s)) == pytest.approx(-(p * np.log(p)).sum())
    # Gini by its definition: mean absolute difference over twice the mean
    g = np.abs(a[:, None] - a[None, :]).sum() / (2 * len(a) ** 2 * a.mean())
    assert float(M.gini(s)) == pytest.approx(g)
    assert float(M.kurtosis(s)) == pytest.approx(stats.kurtosis(s.numpy(), fisher=True, bias=True))
    assert float(M.top_share(s, 0.25)) == pytest.approx(0.4)


@settings(max_examples=80, deadline=None)
@given(st.lists(st.floats(-100, 100, allow_nan=False), min_size=2, max_size=60), st.floats(0.01, 50))
def test_scaling_properties(values, c):
    s = torch.tensor(values, dtype=torch.float64)
    if float(s.abs().sum()) < 1e-6 or float(s.std()) < 1e-6:
        return
    for name in ("entropy", "normalized_entropy", "gini", "kurtosis", "top_share_0.1"):
        a, b = M.all_metrics(s)[name], M.all_metrics(c * s)[name]
        assert float(a) == pytest.approx(float(b), rel=1e-6, abs=1e-9)
    assert float(M.intensity(c * s)) == pytest.approx(c * float(M.intensity(s)), rel=1e-9)
    assert 0 <= float(M.normalized_entropy(s)) <= 1 + 1e-12
    assert 0 <= float(M.gini(s)) <= 1
    assert 1 - 1e-9 <= float(M.effective_edges(s)) <= len(values) + 1e-9


def test_batched_metrics_match_rows():
    s = torch.randn(5, 30)
    batched = M.all_metrics(s)
    for i in range(5):
        row = M.all_metrics(s[i])
        for k in row:
            assert float(batched[k][i]) == pytest.approx(float(row[k]))


def test_per_layer_groups_by_destination_layer():
    m = zoo_model("gpt2")
    data = tokenize_pairs(m.tokenizer, Addition().examples(4))
    a = attribute(m, "layer", data, "logit_diff", per_example=True)
    layers = M.per_layer_metrics(a)
    assert sorted(layers) == [0, 1, 2]
    # layer 0 destinations (a0<q>, a0<k>, a0<v>, m0) are the first four columns
    assert [d.name for d in a.graph.destinations[:4]] == ["a0<q>", "a0<k>", "a0<v>", "m0"]
    assert float(layers[0]["total_intensity"]) == pytest.approx(float(a.scores[:, :4].abs().sum()), rel=1e-6)
    assert M.per_layer_metrics(a, per_example=True)[1]["intensity"].shape == (4,)


def test_paired_delta_statistics():
    rng = np.random.default_rng(0)
    base = rng.normal(size=40)
    tuned = base + 0.5 + 0.1 * rng.normal(size=40)
    d = paired_delta("x", base, tuned)
    # one home for the paired test: the study's (BCa CI, sign-flip permutation p, whose floor is 1 / permutations)
    study = paired_stat(tuned - base)
    assert (d.delta, d.ci_low, d.ci_high, d.p_value) == (study.mean, study.ci_low, study.ci_high, study.p_value)
    assert d.ci_low < 0.5 < d.ci_high and d.p_value <= 2 / N_PERMUTATIONS and d.effect_size > 2
    same = paired_delta("x", base, base.copy())
    assert same.delta == 0 and same.p_value == 1.0
    assert paired_delta("x", base, tuned, seed=3).ci_low == paired_delta("x", base, tuned, seed=3).ci_low


def test_compare_two_models():
    base, other = zoo_model("llama"), zoo_model("qwen2")
    data = tokenize_pairs(base.tokenizer, Addition().examples(12, seed=5))
    a = attribute(base, "head", data, "logit_diff", per_example=True)
    b = attribute(other, "head", data, "logit_diff", per_example=True)
    c = compare(a, b, name="qwen2 - llama")
    assert c["intensity"].n == 12
    assert c["intensity"].delta == pytest.approx(c["intensity"].tuned_mean - c["intensity"].base_mean)
    keep = correct_mask(base, data) & correct_mask(other, data)
    assert 0 < int(keep.sum()) <= 12
    assert compare(a, b, keep=keep)["gini"].n == int(keep.sum())
    diff = edge_diff(a, b, 10)
    top_a, top_b = {e for e, _ in a.top_edges(10)}, {e for e, _ in b.top_edges(10)}  # an independent ranking
    assert diff["jaccard"] == pytest.approx(len(top_a & top_b) / len(top_a | top_b))
    assert diff["gained"] == sorted(top_b - top_a) and diff["lost"] == sorted(top_a - top_b)
    assert 0 < diff["jaccard"] < 1  # two different models share some but not all of their strongest edges
    assert edge_diff(a, a, 10)["jaccard"] == 1.0
    rows = cross_family_table([("llama", "zoo:llama", "eap", a), ("qwen2", "zoo:qwen2", "eap", b)])
    assert rows[0]["edges"] == a.graph.n_edges and math.isfinite(rows[1]["normalized_entropy"])


def test_compare_refuses_mismatches():
    m, g2 = zoo_model("llama"), zoo_model("gpt2")
    data = tokenize_pairs(m.tokenizer, Addition().examples(4))
    a = attribute(m, "head", data, "logit_diff", per_example=True)
    with pytest.raises(ComparisonError, match="different graphs"):
        compare(a, attribute(g2, "head", data, "logit_diff", per_example=True))
    with pytest.raises(ComparisonError, match="per_example"):
        compare(a, attribute(m, "head", data, "logit_diff"))
