import pytest
import torch

from circuitdyn.attribution import (
    AttributionError,
    MemoryBudgetError,
    ObjectiveError,
    attribute,
    logit_diff,
)
from circuitdyn.graph import Graph, attribution_hooks
from circuitdyn.tasks import Addition, TaskError, TaskExample, tokenize_pairs
from tests.conftest import ALL_FAMILIES, zoo_model


def data_for(m, n=4, k=1, seed=1):
    return tokenize_pairs(m.tokenizer, Addition().examples(n, seed=seed), answer_tokens=k)


def close(a, b, rel=1e-5):
    scale = max(1.0, float(b.abs().max()))
    return float((a - b).abs().max()) <= rel * scale


@pytest.mark.parametrize("granularity", ["head", "layer"])
@pytest.mark.parametrize("ablation", ["noising", "denoising", "zero", "mean"])
def test_eap_equals_brute_force_first_order(family, granularity, ablation):
    m = zoo_model(family)
    data = data_for(m, n=3, k=2)
    g = Graph.from_model(m, granularity)
    kw = dict(aggregation="sum", ablation=ablation, per_example=True)
    eap = attribute(m, g, data, "answer_nll", method="eap", **kw)
    ref = attribute(m, g, data, "answer_nll", method="first-order", **kw)
    assert close(eap.scores, ref.scores)
    assert close(eap.per_example, ref.per_example)
    assert eap.scores.abs().max() > 1e-3  # not vacuous


def test_matches_transformer_lens_attribution_patch():
    from transformer_lens.tools.analysis.attribution_patching import EdgeAttributionConfig, attribution_patch

    m = zoo_model("gpt2")
    data = data_for(m, n=3, seed=3)
    ours = attribute(m, "head", data, "logit_diff", ablation="denoising", aggregation="sum")
    names = {"embed": "input", "attn_head_out": "a{layer}.h{head}", "mlp_out": "m{layer}",
             "q_input": "a{layer}.h{head}<q>", "k_input": "a{layer}.h{head}<k>", "v_input": "a{layer}.h{head}<v>",
             "mlp_in": "m{layer}", "logits": "logits"}
    summed: dict[tuple[str, str], float] = {}
    for i in range(len(data)):
        a, f, p = int(data.answers[i, 0]), int(data.foils[i]), int(data.answer_pos[i])
        res = attribution_patch(m.bridge, data.clean[i:i + 1], data.corrupt[i:i + 1],
                                lambda lg, a=a, f=f, p=p: lg[0, p, a] - lg[0, p, f], EdgeAttributionConfig(granularity="edge"))
        for (w, r), s in res.edge_scores.items():
            key = (names[w.kind].format(layer=w.layer, head=w.head), names[r.kind].format(layer=r.layer, head=r.head))
            summed[key] = summed.get(key, 0.0) + s / len(data)  # summed over positions, mean over examples
    assert len(summed) == ours.graph.n_edges
    assert max(abs(ours.score(k) - v) for k, v in summed.items()) <= 1e-5 * max(1.0, max(map(abs, summed.values())))


@pytest.mark.parametrize("family", ["gpt2", "llama", "gemma3"])
def test_ig_inputs_completeness(family):
    """IG over inputs: the input's outgoing scores sum to M(corrupt) - M(clean) as steps grow."""
    m = zoo_model(family)
    data = data_for(m, n=2)
    a = attribute(m, "layer", data, "logit_diff", method="eap-ig-inputs", steps=64, aggregation="sum")
    with torch.no_grad():
        clean = logit_diff(m.bridge(data.clean), data)
        corrupt = logit_diff(m.bridge(data.corrupt), data)
    total = a.scores[0].sum()
    target = (corrupt - clean).mean()
    assert abs(float(total - target)) <= 2e-3 * max(1.0, abs(float(target)))


def test_ig_approaches_exact_patching():
    m = zoo_model("llama")
    data = data_for(m, n=8)
    g = Graph.from_model(m, "layer")
    exact = attribute(m, g, data, "logit_diff", method="exact", aggregation="sum").edge_scores()
    corr = {}
    for method, steps in (("eap", 1), ("eap-ig-inputs", 16), ("eap-ig-activations", 16)):
        s = attribute(m, g, data, "logit_diff", method=method, steps=steps, aggregation="sum").edge_scores()
        corr[method] = float(torch.corrcoef(torch.stack([s, exact]))[0, 1])
    assert corr["eap-ig-inputs"] > 0.9 and corr["eap-ig-activations"] > 0.9
    assert corr["eap-ig-inputs"] > corr["eap"]


def test_exact_matches_a_manual_patch():
    m = zoo_model("qwen2")
    data = data_for(m, n=2)
    g = Graph.from_model(m, "head")
    ex = attribute(m, g, data, "logit_diff", method="exact", per_example=True)
    i, j = g.edge_index("a0.h1->m1")
    with attribution_hooks(m) as bridge, torch.no_grad():
        _, clean = bridge.run_with_cache(data.clean)
        _, corrupt = bridge.run_with_cache(data.corrupt)
        delta = corrupt["blocks.0.attn.hook_result"][:, :, 1] - clean["blocks.0.attn.hook_result"][:, :, 1]
        patched = bridge.run_with_hooks(data.clean, fwd_hooks=[("blocks.1.hook_mlp_in", lambda x, hook: x + delta)])
        base = bridge(data.clean)
    manual = logit_diff(patched, data) - logit_diff(base, data)
    assert torch.allclose(ex.per_example[:, i, j], manual, atol=1e-5)


def test_batching_and_padding_invariance():
    m = zoo_model("llama")
    ex = [TaskExample("1+1=", "2+2=", "2", "4"), TaskExample("10+10=", "30+30=", "20", "60"),
          TaskExample("45+7=", "12+9=", "52", "21")]
    data = tokenize_pairs(m.tokenizer, ex)
    whole = attribute(m, "head", data, "logit_diff", batch_size=8, per_example=True)
    ones = attribute(m, "head", data, "logit_diff", batch_size=1)
    assert close(whole.scores, ones.scores)
    assert close(whole.per_example.mean(0), whole.scores, rel=1e-6)
    single = attribute(m, "head", data[1:2], "logit_diff")
    assert close(whole.per_example[1], single.scores)


def test_per_token_averaging_divides_by_prompt_length():
    m = zoo_model("gpt2")
    data = data_for(m, n=1)
    raw = attribute(m, "layer", data, "logit_diff", aggregation="sum")
    avg = attribute(m, "layer", data, "logit_diff")
    assert close(avg.scores * data.mask.sum(), raw.scores)


@pytest.mark.parametrize("family", [f for f in ALL_FAMILIES if f != "gemma3"])
def test_head_scores_sum_to_layer_scores(family):
    m = zoo_model(family)
    data = data_for(m, n=3)
    head = attribute(m, "head", data, "logit_diff")
    layer = attribute(m, "layer", data, "logit_diff")
    a_src, a_dst = head.graph.layer_aggregation()
    assert close(a_src.T @ head.scores @ a_dst, layer.scores)


def test_kl_metric_is_flat_at_the_clean_run():
    m = zoo_model("gpt2")
    data = data_for(m, n=2)
    assert attribute(m, "layer", data, "kl_to_clean").scores.abs().max() < 1e-6
    assert attribute(m, "layer", data, "kl_to_clean", method="eap-ig-inputs", steps=4).scores.abs().max() > 1e-4


def test_bf16_accumulates_in_float32():
    from circuitdyn.models import load_model

    m32 = zoo_model("llama")
    m16 = load_model("zoo:llama", dtype=torch.bfloat16, device="cpu")
    data = data_for(m32, n=4)
    s32 = attribute(m32, "head", data, "logit_diff").edge_scores()
    s16 = attribute(m16, "head", data, "logit_diff")
    assert s16.scores.dtype == torch.float32
    assert float(torch.corrcoef(torch.stack([s32, s16.edge_scores()]))[0, 1]) > 0.98


def test_bad_inputs_fail_clearly():
    m = zoo_model("gpt2")
    data = data_for(m, n=2)
    with pytest.raises(AttributionError, match="steps"):
        attribute(m, "head", data, method="eap-ig-inputs", steps=0)
    with pytest.raises(AttributionError, match="eap-ig-inputs"):
        attribute(m, "head", data, method="magic")
    with pytest.raises(ObjectiveError, match="one value per example"):
        attribute(m, "head", data, lambda logits, b: logits.sum())
    with pytest.raises(ObjectiveError, match="not finite"):
        attribute(m, "head", data, lambda logits, b: logits[:, 0, 0] * float("nan"))
    with pytest.raises(ObjectiveError, match="unknown metric"):
        attribute(m, "head", data, "accuracy")
    with pytest.raises(AttributionError, match="empty"):
        attribute(m, "head", [], "logit_diff")
    with pytest.raises(MemoryBudgetError, match="memory_budget.*or use granularity='layer'"):
        attribute(m, "head", data, memory_budget=1024)
    with pytest.raises(MemoryBudgetError, match="memory_budget") as refused:  # already layer: not suggested
        attribute(m, "layer", data, memory_budget=1024)
    assert "granularity='layer'" not in str(refused.value)
    with pytest.raises(TaskError, match="same shape"):
        from circuitdyn.tasks import PairBatch
        PairBatch(data.clean, data.corrupt[:, :-1], data.mask, data.answer_pos, data.answers, data.foils)
    m.bridge.train()
    try:
        with pytest.raises(AttributionError, match="eval"):
            attribute(m, "head", data)
    finally:
        m.bridge.eval()


def test_memory_budget_chunks_automatically_and_holds():
    """The budget counts the difference buffers, the activations autograd keeps (probed) and the buffered
    gradients; a budget of two examples' worth runs in chunks of two, with the same scores."""
    from circuitdyn.attribution.engine import frozen_parameters, peak_estimate
    from circuitdyn.attribution.kept import saved_activation_bytes

    m = zoo_model("gpt2")
    data = data_for(m, n=6)
    g = Graph.from_model(m, "head")
    seq = data.clean.shape[1]
    with g.enable_hooks(m.bridge), frozen_parameters(m.bridge):
        one = saved_activation_bytes(m.bridge, g, data.clean[:1], data.mask[:1])
        four = saved_activation_bytes(m.bridge, g, data.clean[:4], data.mask[:4])
    assert 3.5 * one < four < 4.5 * one  # what autograd keeps grows with the batch: a per-example estimate
    budget = peak_estimate(g, 2, seq, 1.0, one)
    for per_example in (False, True):
        small = attribute(m, g, data, "logit_diff", memory_budget=budget, per_example=per_example)
        assert small.provenance["batch_chunk"] == 2 and small.provenance["peak_bytes_estimate"] <= budget
        big = attribute(m, g, data, "logit_diff", per_example=per_example)
        assert big.provenance["batch_chunk"] == 6
        assert close(small.scores, big.scores, rel=1e-6)


def test_same_seed_gives_bit_identical_scores():
    m = zoo_model("gemma3")
    data = data_for(m, n=4, k=2)
    runs = [attribute(m, "head", data, "answer_nll", method="eap-ig-inputs", steps=3, per_example=True) for _ in range(2)]
    assert torch.equal(runs[0].scores, runs[1].scores) and torch.equal(runs[0].per_example, runs[1].per_example)


def test_kl_with_plain_eap_warns_through_logging(caplog):
    m = zoo_model("llama")
    data = tokenize_pairs(m.tokenizer, Addition().examples(2))
    with caplog.at_level("WARNING", logger="circuitdyn.attribution.attribute"):
        attribute(m, "layer", data, "kl_to_clean")
    assert any("eap-ig-inputs" in r.getMessage() for r in caplog.records)
    caplog.clear()
    with caplog.at_level("WARNING", logger="circuitdyn.attribution.attribute"):
        attribute(m, "layer", data, "kl_to_clean", method="eap-ig-inputs", steps=2)
    assert not caplog.records


def test_projected_qkv_gradients_are_refused_where_the_bridge_cannot_and_auto_keeps_the_copies(monkeypatch):
    """qkv_gradients='projected' needs q, k and v as plain per-head projections; where they are not (here a
    gated q projection), it is refused with the reason and the way out, and 'auto' keeps the per-head copies."""
    m = zoo_model("gpt2")
    data = data_for(m, n=2)
    reference = attribute(m, "head", data, "logit_diff")
    assert reference.provenance["qkv_gradients"] == "projected"
    monkeypatch.setattr(m.bridge.cfg, "gated_q_proj", True, raising=False)
    with pytest.raises(AttributionError, match=r"gated q projections.*use 'auto' or 'split'"):
        attribute(m, "head", data, "logit_diff", qkv_gradients="projected")
    auto = attribute(m, "head", data, "logit_diff")
    assert auto.provenance["qkv_gradients"] == "split"
    torch.testing.assert_close(auto.scores, reference.scores, rtol=1e-4, atol=1e-7)
    with pytest.raises(AttributionError, match="qkv_gradients"):
        attribute(m, "head", data, "logit_diff", qkv_gradients="fast")
    with pytest.raises(AttributionError, match="exact patching patches the per-head q/k/v copies"):
        attribute(m, "head", data, "logit_diff", method="exact", qkv_gradients="projected")
    merged = attribute(m, Graph.from_model(m, "layer", qkv="merged"), data, "logit_diff")
    assert merged.provenance["qkv_gradients"] is None  # no per-head q/k/v destinations to read


def test_scores_do_not_depend_on_how_destinations_are_fused(monkeypatch):
    """Fused groups of any width, their buffers reused from group to group, give the same scores."""
    from circuitdyn.attribution import engine

    m = zoo_model("gpt2")
    data = data_for(m, n=3)
    for method in ("eap", "eap-ig-inputs"):
        wide = attribute(m, "head", data, "logit_diff", method=method, steps=2, per_example=True)
        with monkeypatch.context() as patch:
            patch.setattr(engine, "FUSED_WIDTH", 1)  # every layer's group on its own
            narrow = attribute(m, "head", data, "logit_diff", method=method, steps=2, per_example=True)
        assert len(set(engine.fused_groups(wide.graph).values())) < 2 * wide.graph.spec.n_layers
        torch.testing.assert_close(narrow.scores, wide.scores, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(narrow.per_example, wide.per_example, rtol=1e-5, atol=1e-7)


def test_recording_forwards_stop_before_the_unembedding_and_record_every_source():
    """The counterfactual forward records every source as a full forward does, and never unembeds."""
    from circuitdyn.attribution.head_sources import results_off
    from circuitdyn.attribution.intervention import Counterfactual, counterfactual_hooks, fill_counterfactual
    from circuitdyn.graph import split_qkv_off

    for family in ("gpt2", "neox", "gemma3"):
        m = zoo_model(family)
        graph, data = Graph.from_model(m, "head"), data_for(m, n=3)
        shape = (graph.n_src, *data.clean.shape, graph.spec.d_model)
        stopped, full = torch.full(shape, float("nan")), torch.full(shape, float("nan"))
        calls = []
        handle = m.bridge.unembed.register_forward_hook(lambda *a, calls=calls: calls.append(1))
        try:
            with graph.enable_hooks(m), torch.no_grad():
                fill_counterfactual(m.bridge, graph, data, Counterfactual.CORRUPT, stopped, None)
                assert not calls
                with split_qkv_off(m.bridge), results_off(m.bridge, graph), \
                        m.bridge.hooks(fwd_hooks=counterfactual_hooks(graph, m.bridge, full)):
                    m.bridge(data.corrupt, attention_mask=data.mask.long())
                assert calls
        finally:
            handle.remove()
        assert torch.equal(stopped, full)
