"""Layer-level scores are the sums of the matching head-level scores plus the attention output bias's own
term: the layer source `a{l}` is the whole attention output (heads + b_O), a head source is one head.

The b_O term of edge a{l} -> j is (b_O' - b_O) . sum_t dM/dx_j(t) with b_O' the bias under the
counterfactual: -b_O for zero ablation, 0 otherwise (the bias is the same in every run). The destination
gradients are taken here by plain autograd on the hook points, independently of the engine.
"""

import pytest
import torch

from circuitdyn.attribution import answer_nll, attribute
from circuitdyn.graph import Graph, attribution_hooks
from circuitdyn.models import clone_model
from circuitdyn.tasks import Addition, tokenize_pairs
from tests.conftest import ALL_FAMILIES, zoo_model

ABLATIONS = ["noising", "denoising", "zero", "mean"]
OUTPUT_BIAS = {"gpt2": "attn.o.bias", "neox": "attention.o.bias"}  # bridge names of b_O  # the others have no b_O


def output_biases(model, family):
    """{layer: b_O} of the attention output projections (empty where the architecture has none)."""
    if family not in OUTPUT_BIAS:
        return {}
    out = {}
    for name, p in model.bridge.original_model.named_parameters():
        clean = name.replace("._original_component", "")
        if clean.endswith(OUTPUT_BIAS[family]):
            out[int(clean.split(".")[-4])] = p
    assert len(out) == model.cfg.n_layers, f"no b_O found for {family}"
    return out


def with_random_biases(family):
    """A copy of the zoo model whose every bias (b_O included) is clearly non-zero."""
    m = clone_model(zoo_model(family))
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for name, p in m.bridge.original_model.named_parameters():
            if name.endswith("bias"):
                p.copy_(0.3 * torch.randn(p.shape, generator=g))
    return m


def destination_gradients(m, graph, batch):
    """dM/d(input of destination j) summed over positions, averaged over examples (as scores are), [n_dst, d],
    by autograd on the hook points."""
    grads = torch.zeros(graph.n_dst, graph.spec.d_model)
    hooks = []
    for dh in graph.dest_hooks:
        def fn(act, hook, dh=dh):
            out = act.view_as(act)  # this branch's own input, not the residual it may alias

            def save(g, dh=dh):
                g = (g * batch.mask[:, :, None, None] if dh.per_head else g * batch.mask[:, :, None]).sum((0, 1))
                grads[dh.start:dh.stop] += g.sum(0, keepdim=True) if dh.sum_heads else g if dh.per_head else g[None]
            out.register_hook(save)
            return out
        hooks.append((dh.name, fn))
    with attribution_hooks(m.bridge), m.bridge.hooks(fwd_hooks=hooks), torch.enable_grad():
        logits = m.bridge(batch.clean, attention_mask=batch.mask.long())
        answer_nll(logits, batch).sum().backward()
    m.bridge.zero_grad(set_to_none=True)
    return grads / len(batch)


@pytest.mark.parametrize("family", ALL_FAMILIES)
@pytest.mark.parametrize("ablation", ABLATIONS)
def test_layer_scores_are_head_sums_plus_the_bias_term(family, ablation):
    m = with_random_biases(family)
    batch = tokenize_pairs(m.tokenizer, Addition().examples(3, seed=4), answer_tokens=2)
    head_g, layer_g = Graph.from_model(m, "head"), Graph.from_model(m, "layer")
    kw = dict(ablation=ablation, aggregation="sum")
    head = attribute(m, head_g, batch, "answer_nll", **kw)
    layer = attribute(m, layer_g, batch, "answer_nll", **kw)
    a_src, a_dst = head_g.layer_aggregation()
    summed = a_src.T @ head.scores @ a_dst
    biases = output_biases(m, family)
    if ablation == "zero" and biases:
        grads = destination_gradients(m, layer_g, batch)
        for l, b in biases.items():
            i = layer_g.source_index(f"a{l}")
            up = torch.tensor(layer_g.n_upstream) > i
            summed[i] += torch.where(up, -(grads @ b.detach()), torch.zeros(()))
    scale = max(1.0, float(layer.scores.abs().max()))
    if layer_g.spec.post_attn_norm:
        # Gemma3 normalises the attention output before the residual add: a head's delta goes through that
        # norm on its own, so head deltas do not add up to the layer's. Every other source row does.
        rows = [i for i, s in enumerate(layer_g.sources) if s.kind != "attn"]
        assert float((summed[rows] - layer.scores[rows]).abs().max()) <= 1e-5 * scale
    else:
        assert float((summed - layer.scores).abs().max()) <= 1e-5 * scale
    if ablation == "zero" and biases:  # the bias term is really there: without it the sums would not match
        bare = a_src.T @ head.scores @ a_dst
        assert float((bare - layer.scores).abs().max()) > 1e-3 * scale
