"""Every family the bridge loads is either correct or refused with a clear message: no silent zeros.

For each tiny random-weight family (tests/families.py) and each zoo family, and each graph it supports:
- logits through the bridge, with the graph's hooks on, equal a freshly loaded Hugging Face model's;
- destination gradients are conserved across every block, by plain autograd independent of the engine:
  dM/d(resid_pre) = dM/d(resid_post) + the gradients of the block's own destinations. A dead destination
  hook (gradient 0) or one shared between branches (counted twice) breaks it;
- EAP equals the brute-force first-order effect of each edge (which perturbs only that destination's input:
  the bridge's per-head copies), and so do the gradients EAP reads at the q/k/v projections instead;
- EAP-IG over activations is complete: the edges into `logits` sum to M(corrupt) - M(clean) within 0.5%;
- exact patching: the full circuit reproduces the run, the empty circuit the counterfactual run.
Unsupported combinations are tested for their refusal message.
"""

import contextlib

import pytest
import torch

from circuitdyn.attribution import attribute
from circuitdyn.attribution.objectives import objective_function
from circuitdyn.attribution.qkv_projections import affine_norm, attention_norm
from circuitdyn.circuits.circuit import Circuit
from circuitdyn.circuits.patching import patched_metric
from circuitdyn.graph import Graph, GraphError, HookFlagsUnavailable
from circuitdyn.graph import hook_flags as hook_flags_module
from circuitdyn.models import clone_model, load_model
from circuitdyn.tasks import Addition, tokenize_pairs
from tests.conftest import ALL_FAMILIES, zoo_model
from tests.families import ALL_GRAPHS, HEAD, MERGED, SUPPORT, TINY_FAMILIES, tiny_folder

ZOO = tuple(f"zoo:{f}" for f in ALL_FAMILIES)
SUPPORTED = [(f, g) for f in TINY_FAMILIES for g in SUPPORT[f]] + [(f, g) for f in ZOO for g in ALL_GRAPHS]
REFUSED = [(f, g) for f in TINY_FAMILIES for g in ALL_GRAPHS if g not in SUPPORT[f]]
_MODELS: dict[str, object] = {}


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("families")


def family_model(name, root):
    if name.startswith("zoo:"):
        return zoo_model(name[4:])
    if name not in _MODELS:
        _MODELS[name] = load_model(str(tiny_folder(name, root)), device="cpu")
    return _MODELS[name]


def build_graph(model, kind):
    if kind == HEAD:
        return Graph.from_model(model, "head")
    return Graph.from_model(model, "layer", qkv="merged" if kind == MERGED else "split")


def data_for(model):
    return tokenize_pairs(model.tokenizer, Addition().examples(4, seed=0), answer_tokens=1)


@pytest.mark.parametrize("name", TINY_FAMILIES)
def test_bridge_logits_equal_the_hugging_face_model(name, root):
    from transformers import AutoModelForCausalLM

    m = family_model(name, root)
    hf = AutoModelForCausalLM.from_pretrained(str(tiny_folder(name, root))).eval()
    ids = data_for(m).clean
    with torch.no_grad():
        ref = hf(ids).logits
        assert torch.allclose(m.bridge(ids), ref, atol=1e-5)
        for kind in SUPPORT[name]:
            with build_graph(m, kind).enable_hooks(m):
                assert torch.allclose(m.bridge(ids), ref, atol=1e-5), kind


@pytest.mark.parametrize(("name", "kind"), SUPPORTED)
def test_destination_gradients_are_conserved_across_each_block(name, kind, root):
    m = family_model(name, root)
    graph = build_graph(m, kind)
    L = graph.spec.n_layers
    views: dict[str, torch.Tensor] = {}

    def grab(act, hook, key):
        if key == "blocks.0.hook_resid_pre":
            act = act.detach().requires_grad_(True)
        views[key] = act.view_as(act)
        return views[key]
    names = [f"blocks.{layer}.hook_resid_{w}" for layer in range(L) for w in ("pre", "post")]
    dests = [dh for dh in graph.dest_hooks if dh.kind != "logits"]
    names += [dh.name for dh in dests]
    hooks = [(n, lambda act, hook, n=n: grab(act, hook, n)) for n in names]
    ids = data_for(m).clean[:2]
    with graph.enable_hooks(m), torch.enable_grad(), m.bridge.hooks(fwd_hooks=hooks):
        logits = m.bridge(ids)
    w = torch.randn(logits.shape[-1], generator=torch.Generator().manual_seed(3))
    grads = dict(zip(names, torch.autograd.grad((logits * w).sum(), [views[n] for n in names])))
    for layer in range(L):
        branches = sum(grads[dh.name].sum(2) if dh.per_head else grads[dh.name] for dh in dests if dh.layer == layer)
        pre, post = grads[f"blocks.{layer}.hook_resid_pre"], grads[f"blocks.{layer}.hook_resid_post"]
        assert all(grads[dh.name].abs().amax() > 0 for dh in dests if dh.layer == layer), "a dead destination"
        torch.testing.assert_close(pre, post + branches, rtol=1e-4, atol=1e-5 * float(pre.abs().max()))


@pytest.mark.parametrize(("name", "kind"), SUPPORTED)
def test_eap_equals_the_first_order_effect_of_each_edge(name, kind, root):
    m = family_model(name, root)
    graph, data = build_graph(m, kind), data_for(m)
    eap = attribute(m, graph, data, "logit_diff", aggregation="sum")
    reference = attribute(m, graph, data, "logit_diff", method="first-order")
    assert eap.scores.abs().max() > 0
    torch.testing.assert_close(eap.scores, reference.scores, rtol=1e-3, atol=1e-5 * float(reference.scores.abs().max()))


@pytest.mark.parametrize(("name", "kind"), [(f, g) for f, g in SUPPORTED if g != MERGED])
def test_projected_qkv_gradients_equal_the_per_head_copies(name, kind, root):
    """q/k/v gradients read at the projections (J_ln1^T W_h^T g_h) score as the bridge's per-head residual
    copies do, in every family: EAP, and EAP-IG, whose steps move ln1's input (4 steps, stacked along the
    batch). Every family's ln1 has the closed form, so these are the factored gradients (head_gradients.py)."""
    m = family_model(name, root)
    graph, data = build_graph(m, kind), data_for(m)
    if graph.spec.pre_attn_norm:
        assert all(affine_norm(attention_norm(m.bridge, layer), graph.spec.d_model) is not None
                   for layer in range(graph.spec.n_layers))
    for method in ("eap", "eap-ig-inputs"):
        fast = attribute(m, graph, data, "logit_diff", method=method, steps=4)
        split = attribute(m, graph, data, "logit_diff", method=method, steps=4, qkv_gradients="split")
        assert (fast.provenance["qkv_gradients"], split.provenance["qkv_gradients"]) == ("projected", "split")
        torch.testing.assert_close(fast.scores, split.scores, rtol=1e-4, atol=1e-6 * float(split.scores.abs().max()))


@pytest.mark.parametrize(("name", "kind"), SUPPORTED)
def test_eap_ig_activations_is_complete_at_32_steps(name, kind, root):
    m = family_model(name, root)
    graph, data = build_graph(m, kind), data_for(m)
    metric = objective_function("logit_diff")
    with torch.no_grad():
        gap = (metric(m.bridge(data.corrupt, attention_mask=data.mask.long()), data)
               - metric(m.bridge(data.clean, attention_mask=data.mask.long()), data)).mean()
    scores = attribute(m, graph, data, "logit_diff", method="eap-ig-activations", steps=32, aggregation="sum").scores
    total = scores[:, graph.dest_index("logits")].sum()
    assert abs(float(total / gap) - 1) < 0.005, f"completeness {float(total / gap):.4f}"


@pytest.mark.parametrize(("name", "kind"), SUPPORTED)
@pytest.mark.parametrize("ablation", ["noising", "denoising"])
def test_exact_patching_full_circuit_is_the_run_and_empty_the_counterfactual(name, kind, ablation, root):
    m = family_model(name, root)
    graph, data = build_graph(m, kind), data_for(m)
    metric = objective_function("logit_diff")
    run, other = (data.clean, data.corrupt) if ablation == "noising" else (data.corrupt, data.clean)
    with torch.no_grad():
        at_run = metric(m.bridge(run, attention_mask=data.mask.long()), data)
        at_other = metric(m.bridge(other, attention_mask=data.mask.long()), data)
    full = patched_metric(m, Circuit.full(graph), data, metric, ablation=ablation)
    empty = patched_metric(m, Circuit.empty(graph), data, metric, ablation=ablation)
    scale = float(at_run.abs().max() + at_other.abs().max())
    torch.testing.assert_close(full, at_run, rtol=0, atol=1e-5 * scale)
    torch.testing.assert_close(empty, at_other, rtol=0, atol=1e-5 * scale)
    assert (at_run - at_other).abs().max() > 1e-4 * scale, "clean and corrupt must differ for the check to bite"


@pytest.mark.parametrize(("name", "kind"), REFUSED)
def test_unsupported_graphs_are_refused_with_the_reason_and_the_way_out(name, kind, root):
    m = family_model(name, root)
    architecture = m.provenance.architecture
    with pytest.raises((HookFlagsUnavailable, GraphError)) as err:
        build_graph(m, kind)
    message = str(err.value)
    assert architecture in message and "dead" in message and "hook_mlp_in" in message


def test_the_probe_refuses_falcon_without_its_mlp_branch_input(root, monkeypatch):
    """Before branches.py, Falcon's hook_mlp_in existed but never fired: every edge into an MLP scored 0."""
    m = family_model("falcon", root)
    monkeypatch.setattr(hook_flags_module, "shared_norm_branches", lambda bridge: contextlib.nullcontext([]))
    with pytest.raises(GraphError, match=r"blocks\.0\.hook_mlp_in \(destination m0\)"):
        Graph.from_model(m, "head")


def test_a_clone_of_a_model_that_has_run_scores_like_the_original():
    """deepcopy used to copy the bridge's capture hooks with closures still pointing at the original, so a
    clone's hook_mlp_in never fired and its edges into MLPs were all 0."""
    m = zoo_model("llama")
    data = data_for(m)
    original = attribute(m, "head", data, "logit_diff")
    copy = attribute(clone_model(m), "head", data, "logit_diff")
    assert original.scores[:, [j for j, d in enumerate(original.graph.destinations) if d.kind == "mlp"]].abs().max() > 0
    assert torch.equal(original.scores, copy.scores)


def test_gptj_without_separate_projections_is_refused_with_the_merged_layer_graph_named(root, monkeypatch):
    """GPT-J's bridge delegates attention to Hugging Face; head_forks provides its per-head hooks from its
    separate q, k, v, o projections. An attention without them (fused qkv) is refused, naming the way out."""
    from circuitdyn.graph import head_forks

    m = family_model("gptj", root)
    monkeypatch.setattr(head_forks, "forkable", lambda bridge: False)
    with pytest.raises(HookFlagsUnavailable, match=r"GPTJForCausalLM: .*no per-head hooks.*qkv='merged'"):
        Graph.from_model(m, "head")
    assert Graph.from_model(m, "layer", qkv="merged").n_edges > 0
    assert not m.bridge.cfg.use_attn_result and not m.bridge.cfg.use_split_qkv_input, "flags restored"
