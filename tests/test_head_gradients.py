"""Per-head q/k/v gradients kept factored (head_gradients.py) and ln1's closed form (qkv_projections.py):
checked against autograd through the norm's own module and against explicit sums."""

import pytest
import torch

from circuitdyn.attribution import attribute
from circuitdyn.attribution import destinations as destinations_module
from circuitdyn.attribution.head_gradients import FactoredGradient
from circuitdyn.attribution.qkv_projections import affine_norm
from circuitdyn.tasks import Addition, tokenize_pairs
from tests.conftest import zoo_model

D = 16


class GemmaLikeNorm(torch.nn.Module):
    """RMSNorm with gamma = 1 + weight, as Gemma writes it."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(D) * 0.1)
        self.eps = 1e-6

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * (1 + self.weight)


class NotANorm(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(D))

    def forward(self, x):
        return torch.tanh(x) * self.weight


def affine_layer_norm():
    norm = torch.nn.LayerNorm(D)
    with torch.no_grad():
        norm.weight.normal_()
        norm.bias.normal_()
    return norm


@pytest.mark.parametrize("make", [affine_layer_norm, lambda: torch.nn.LayerNorm(D, elementwise_affine=False),
                                  lambda: torch.nn.RMSNorm(D, eps=1e-6), GemmaLikeNorm])
def test_affine_norm_reproduces_the_module_and_its_vector_jacobian_product(make):
    torch.manual_seed(0)
    norm = make()
    form = affine_norm(norm, D)
    assert form is not None
    x, u = torch.randn(5, D) * 3 + 1, torch.randn(5, D)
    torch.testing.assert_close(form(x), norm(x).detach(), rtol=1e-5, atol=1e-5)
    ref = torch.func.vjp(norm, x)[1](u)[0]
    x_hat, r = form.normalise(x)
    v = form.gamma * u
    if form.centred:
        v = v - v.mean(-1, keepdim=True)
    mine = r[:, None] * (v - x_hat * (x_hat * form.gamma * u).mean(-1, keepdim=True))
    torch.testing.assert_close(mine, ref, rtol=1e-5, atol=1e-6)


def test_affine_norm_refuses_what_is_not_a_layer_or_rms_norm():
    assert affine_norm(NotANorm(), D) is None
    assert affine_norm(torch.nn.LayerNorm(D + 1), D) is None  # another width


def test_factored_gradients_add_fold_and_weigh_as_their_materialised_sum():
    gen = torch.Generator().manual_seed(0)
    n, B, T, d_head = 3, 4, 5, 2

    def one(b):
        return FactoredGradient(weight, torch.randn(n, b * T, d_head, generator=gen),
                                [(torch.randn(1, n, b * T, generator=gen), torch.randn(1, b * T, D, generator=gen))],
                                (b, T))
    weight = torch.randn(n, d_head, D, generator=gen)
    a, b = one(B), one(B)
    want = a.materialise() + 0.5 * b.materialise()
    total = FactoredGradient(weight, a.g.clone(), list(a.corrections), a.batch).add_(b, 0.5)
    torch.testing.assert_close(total.materialise(), want)
    weights = torch.rand(B, T, generator=gen)
    torch.testing.assert_close(total.materialise(weights), want * weights[None, :, :, None])
    stacked = one(3 * B)  # three copies of the batch along the batch axis
    full = stacked.materialise()
    torch.testing.assert_close(stacked.fold_copies(3).materialise(), full.reshape(n, 3, B, T, D).sum(1))


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_a_norm_without_closed_form_is_carried_back_through_its_own_module(family, monkeypatch):
    """Where ln1 is not recognised, projected gradients go through its module (torch.func.vjp): same scores."""
    m = zoo_model(family)
    data = tokenize_pairs(m.tokenizer, Addition().examples(4, seed=2), answer_tokens=1)
    for method in ("eap", "eap-ig-inputs"):
        factored = attribute(m, "head", data, "logit_diff", method=method, steps=3)
        monkeypatch.setattr(destinations_module, "affine_norm", lambda norm, d: None)
        generic = attribute(m, "head", data, "logit_diff", method=method, steps=3)
        monkeypatch.undo()
        torch.testing.assert_close(factored.scores, generic.scores, rtol=1e-4, atol=1e-6 * float(generic.scores.abs().max()))


@pytest.mark.parametrize("family", ["gpt2", "llama"])
@pytest.mark.parametrize("granularity", ["head", "layer"])
def test_the_summed_gradients_fill_exactly_the_block_the_memory_estimate_counts(family, granularity, monkeypatch):
    """EAP-IG keeps its summed gradients in one block of reader.summed_floats_per_token(steps) numbers per
    token (what the memory estimate counts): every kept number lands in it, and nothing is left over."""
    from circuitdyn.attribution import eap_ig
    from circuitdyn.attribution.gradient_sum import GradientSum

    sums = []

    class Recorded(GradientSum):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            sums.append(self)
    monkeypatch.setattr(eap_ig, "GradientSum", Recorded)
    m = zoo_model(family)
    data = tokenize_pairs(m.tokenizer, Addition().examples(4, seed=2), answer_tokens=1)
    attribute(m, granularity, data, "logit_diff", method="eap-ig-inputs", steps=3)
    (total,) = sums
    assert total._arena is not None and total._used == total._arena.numel()
