import pytest
import torch

from circuitdyn.attribution import attribute, logit_diff
from circuitdyn.circuits.circuit import Circuit, greedy, prune, threshold, top_n
from circuitdyn.circuits.patching import evaluate_circuit, faithfulness_curve, patched_metric
from circuitdyn.graph import Granularity, Graph, GraphError, GraphSpec
from circuitdyn.tasks import Addition, tokenize_pairs
from tests.conftest import zoo_model


def small_graph():
    return Graph(GraphSpec(2, 2, 2, 8, False, False, Granularity.HEAD))


def test_selection_rules():
    g = small_graph()
    s = torch.randn(g.n_src, g.n_dst) * g.edge_mask
    c = top_n(s, 5, graph=g)
    assert c.n_edges == 5
    kept = s.abs()[c.edges]
    assert kept.min() >= s.abs()[g.edge_mask & ~c.edges].max()
    assert threshold(s, float(kept.min()), graph=g).n_edges == 5
    with pytest.raises(GraphError, match="number of edges"):
        top_n(s, g.n_edges + 1, graph=g)


def test_greedy_is_connected_to_logits():
    g = small_graph()
    s = torch.randn(g.n_src, g.n_dst) * g.edge_mask
    c = greedy(s, 8, graph=g)
    assert c.n_edges == 8
    assert any(name.endswith("->logits") for name in c.edge_names())
    # every chosen edge reads into logits or into a node that already writes into the circuit
    writers = {name.split("->")[0] for name in c.edge_names()}
    for name in c.edge_names():
        j = g.dest_index(name.split("->")[1])
        assert not g.owners(j) or set(g.owners(j)) & writers


def test_prune_removes_dangling_edges():
    g = small_graph()
    c = Circuit.from_edges(g, ["input->a0.h0<q>", "a0.h0->logits", "a0.h1->logits", "input->m1"])
    p = prune(c)
    # a0.h1 is never fed from the input; m1 never reaches the logits
    assert set(p.edge_names()) == {"input->a0.h0<q>", "a0.h0->logits"}
    assert prune(Circuit.full(g)).n_edges == g.n_edges


def test_circuit_rejects_non_edges():
    g = small_graph()
    bad = torch.zeros(g.n_src, g.n_dst, dtype=torch.bool)
    bad[g.source_index("m1"), g.dest_index("a0.h0<q>")] = True
    with pytest.raises(GraphError, match="not an edge"):
        Circuit(g, bad)


@pytest.mark.parametrize("granularity", ["head", "layer"])
@pytest.mark.parametrize("ablation", ["noising", "zero"])
def test_full_circuit_is_clean_and_empty_is_counterfactual(family, granularity, ablation):
    m = zoo_model(family)
    data = tokenize_pairs(m.tokenizer, Addition().examples(4, seed=2))
    g = Graph.from_model(m, granularity)
    with torch.no_grad():
        clean = logit_diff(m.bridge(data.clean), data)
        corrupt = logit_diff(m.bridge(data.corrupt), data)
    full = patched_metric(m, Circuit.full(g), data, logit_diff, ablation=ablation)
    empty = patched_metric(m, Circuit.empty(g), data, logit_diff, ablation=ablation)
    assert torch.allclose(full, clean, atol=1e-5)
    if ablation == "noising":
        assert torch.allclose(empty, corrupt, atol=1e-5)
    res = evaluate_circuit(m, Circuit.full(g), data, "logit_diff", ablation=ablation)
    assert res.faithfulness == pytest.approx(1.0, abs=1e-6)
    assert evaluate_circuit(m, Circuit.empty(g), data, ablation=ablation).faithfulness == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("granularity", ["head", "layer"])
def test_denoising_runs_the_corrupt_prompts_and_patches_in_clean(granularity):
    """Denoising is decoded in one place: the full circuit is the corrupt run, the empty one the clean run
    (it used to return the noising result silently)."""
    m = zoo_model("llama")
    data = tokenize_pairs(m.tokenizer, Addition().examples(4, seed=2))
    g = Graph.from_model(m, granularity)
    with torch.no_grad():
        clean = logit_diff(m.bridge(data.clean), data)
        corrupt = logit_diff(m.bridge(data.corrupt), data)
    assert not torch.allclose(clean, corrupt, atol=1e-3)
    full = patched_metric(m, Circuit.full(g), data, logit_diff, ablation="denoising")
    empty = patched_metric(m, Circuit.empty(g), data, logit_diff, ablation="denoising")
    assert torch.allclose(full, corrupt, atol=1e-5)
    assert torch.allclose(empty, clean, atol=1e-5)


@pytest.mark.parametrize("ablation", ["zero", "mean"])
def test_empty_circuit_feeds_the_logits_the_counterfactual_residual(family, ablation):
    """Under zero and mean ablation the empty circuit leaves the logits only counterfactual sources. On the
    layer graph the sources sum to the final residual, so this is the run whose final residual is replaced
    by 0 (zero) or by its mean over the valid tokens of the clean prompts (mean): computed here by a hook."""
    m = zoo_model(family)
    data = tokenize_pairs(m.tokenizer, Addition().examples(4, seed=2))
    g = Graph.from_model(m, "layer")
    final = f"blocks.{g.spec.n_layers - 1}.hook_resid_post"
    mask = data.mask.long()
    with torch.no_grad():
        seen = {}
        with m.bridge.hooks(fwd_hooks=[(final, lambda act, hook: seen.setdefault("resid", act))]):
            clean = logit_diff(m.bridge(data.clean, attention_mask=mask), data)
        valid = data.mask[:, :, None].float()
        mean = (seen["resid"] * valid).sum((0, 1)) / valid.sum()
        value = torch.zeros_like(mean) if ablation == "zero" else mean
        with m.bridge.hooks(fwd_hooks=[(final, lambda act, hook: value.expand_as(act).clone())]):
            reference = logit_diff(m.bridge(data.clean, attention_mask=mask), data)
    assert (reference - clean).abs().max() > 1e-3, "the counterfactual run must differ for the check to bite"
    empty = patched_metric(m, Circuit.empty(g), data, logit_diff, ablation=ablation)
    full = patched_metric(m, Circuit.full(g), data, logit_diff, ablation=ablation)
    torch.testing.assert_close(empty, reference, rtol=0, atol=1e-4)
    torch.testing.assert_close(full, clean, rtol=0, atol=1e-5)


def test_single_edge_circuit_patches_that_edge_only():
    """Keeping every edge but one equals exact patching of that one edge."""
    m = zoo_model("llama")
    data = tokenize_pairs(m.tokenizer, Addition().examples(3, seed=4))
    g = Graph.from_model(m, "head")
    exact = attribute(m, g, data, "logit_diff", method="exact", per_example=True)
    i, j = g.edge_index("a0.h2->a1.kv0<v>")
    keep = g.edge_mask.clone()
    keep[i, j] = False
    with torch.no_grad():
        base = logit_diff(m.bridge(data.clean), data)
    patched = patched_metric(m, Circuit(g, keep), data, logit_diff)
    assert torch.allclose(patched - base, exact.per_example[:, i, j], atol=1e-5)


def test_faithfulness_curve_reaches_one():
    m = zoo_model("gpt2")
    data = tokenize_pairs(m.tokenizer, Addition().examples(6, seed=2))
    a = attribute(m, "layer", data, "logit_diff", method="eap-ig-inputs", steps=8)
    curve = faithfulness_curve(m, a, data, [2, 5, a.graph.n_edges], selection="greedy")
    assert [c.n_edges for c in curve] == [2, 5, a.graph.n_edges]
    assert curve[-1].faithfulness == pytest.approx(1.0, abs=1e-6)


def test_a_circuit_is_measured_under_what_it_was_selected_by(tmp_path):
    """A circuit selected from an attribution carries its objective, counterfactual and method (through
    pruning and a save/load of the attribution), and evaluate_circuit / faithfulness_curve use them by default:
    the same numbers as naming them, where the old default (logit_diff under noising) measured another thing."""
    from circuitdyn.attribution import load_attribution, save_attribution
    from circuitdyn.circuits.circuit import Scoring

    m = zoo_model("llama")
    data = tokenize_pairs(m.tokenizer, Addition().examples(8, seed=3), answer_tokens=2)
    a = attribute(m, "head", data, "answer_nll", ablation="zero")
    save_attribution(a, tmp_path / "a.pt")
    for scores in (a, load_attribution(tmp_path / "a.pt")):
        circuit = top_n(scores, 20)
        assert circuit.scoring == Scoring("answer_nll", "zero", "eap", 2)
        assert prune(circuit).scoring == circuit.scoring and greedy(scores, 5).scoring == circuit.scoring
        own = evaluate_circuit(m, circuit, data)
        named = evaluate_circuit(m, Circuit(circuit.graph, circuit.edges), data, "answer_nll", ablation="zero")
        assert (own.metric, own.ablation.value) == ("answer_nll", "zero")
        assert own.faithfulness == pytest.approx(named.faithfulness, abs=1e-6)
        assert own.metric_empty == pytest.approx(named.metric_empty) and own.metric_empty != pytest.approx(
            evaluate_circuit(m, Circuit(circuit.graph, circuit.edges), data).metric_empty)
        curve = faithfulness_curve(m, scores, data, [20])
        assert curve[0].faithfulness == pytest.approx(own.faithfulness, abs=1e-6)
    hand = evaluate_circuit(m, Circuit.full(a.graph), data)  # no scoring: logit_diff under noising
    assert (hand.metric, hand.ablation.value) == ("logit_diff", "noising")


def test_measuring_a_circuit_under_another_objective_warns_by_name():
    from circuitdyn.circuits.patching import CircuitScoringWarning

    m = zoo_model("llama")
    data = tokenize_pairs(m.tokenizer, Addition().examples(6, seed=3))
    circuit = top_n(attribute(m, "layer", data, "answer_nll", ablation="zero"), 5)
    with pytest.warns(CircuitScoringWarning, match=r"selected by answer_nll under zero \(eap\).*metric 'logit_diff'"
                      r" and noising ablation") as seen:
        evaluate_circuit(m, circuit, data, "logit_diff", ablation="noising")
    assert seen[0].filename == __file__  # the warning points at the caller's line
    with pytest.warns(CircuitScoringWarning, match="mean ablation"):
        faithfulness_curve(m, circuit, data, [5], ablation="mean")
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        evaluate_circuit(m, circuit, data, "answer_nll", ablation="zero")  # its own: no warning


def test_a_circuit_from_a_custom_or_kl_objective_asks_for_a_metric():
    from circuitdyn.attribution.objectives import ObjectiveError

    m = zoo_model("llama")
    data = tokenize_pairs(m.tokenizer, Addition().examples(6, seed=3))

    def my_margin(logits, batch):
        return logit_diff(logits, batch) * 2

    custom = top_n(attribute(m, "layer", data, my_margin), 5)
    with pytest.raises(ObjectiveError, match="custom metric 'my_margin': pass that function as metric="):
        evaluate_circuit(m, custom, data)
    assert evaluate_circuit(m, custom, data, my_margin).metric == "my_margin"
    kl = top_n(attribute(m, "layer", data, "kl_to_clean", method="eap-ig-inputs", steps=2), 5)
    with pytest.raises(ObjectiveError, match="kl_to_clean.*pass metric='logit_diff'"):
        evaluate_circuit(m, kl, data)
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        evaluate_circuit(m, kl, data, "logit_diff")  # a kl circuit can only be measured under another objective


def test_the_face_docstring_example_is_faithful():
    """The package's first example selects a circuit and measures it the way it was selected: faithful."""
    import textwrap

    import circuitdyn

    block = next(p for p in circuitdyn.__doc__.split("\n\n") if p.startswith("    ")).splitlines()
    code = textwrap.dedent("\n".join(block))
    *setup, last = code.splitlines()
    scope: dict = {"circuitdyn": circuitdyn}
    exec("\n".join(setup), scope)
    value = eval(last.split("#")[0], scope)
    assert value > 0.9 and "0.95" in last and f"{value:.2f}" == "0.95"
