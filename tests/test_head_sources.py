"""Per-head sources read at z (attribution/head_sources.py) equal the bridge's per-head results.

- On every zoo family and every tiny family with a head graph, the source buffers recorded from z (the
  counterfactual forward's and the run's deltas, and the run activations) equal those read at
  `attn.hook_result` to float32 rounding, under noising, zero and mean ablation; so do EAP's scores.
- Where z is read, the passes that record sources compute no per-head results at all (the bridge's
  per-head product is never called); with the reading switched off they do, so the check can fail.
- A bf16 model's deltas from z are its float32 product, within bf16 rounding of the per-head results.
"""

import pytest
import torch

from circuitdyn.attribution import attribute
from circuitdyn.attribution import head_sources as head_sources_module
from circuitdyn.attribution import intervention as intervention_module
from circuitdyn.attribution.head_sources import head_sources
from circuitdyn.attribution.intervention import Counterfactual, prepare_deltas, source_means
from circuitdyn.graph import Graph
from circuitdyn.graph.hook_flags import attribution_hooks
from circuitdyn.models import load_model
from circuitdyn.tasks import Addition, tokenize_pairs
from tests.conftest import ALL_FAMILIES
from tests.families import HEAD, SUPPORT, TINY_FAMILIES
from tests.test_families import family_model


def read_at_results(m) -> None:
    """Switch the reading at z off: every source is read at its own hook, per-head results stay on."""
    for module in (intervention_module, head_sources_module):
        m.setattr(module, "head_sources", lambda bridge, graph: {})


CASES = [f"zoo:{f}" for f in ALL_FAMILIES] + [f for f in TINY_FAMILIES if HEAD in SUPPORT[f]]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("head_sources")


def deltas_of(model, graph, data, cf, at_z: bool, monkeypatch):
    bridge = model.bridge
    with monkeypatch.context() as m:
        if not at_z:
            read_at_results(m)
        with attribution_hooks(bridge):
            means = source_means(bridge, graph, [data]) if cf is Counterfactual.MEAN else None
            deltas, _ = prepare_deltas(bridge, graph, data, cf, means, raw=True, run=True)
    return deltas


@pytest.mark.parametrize("name", CASES)
def test_sources_read_at_z_equal_the_per_head_results(name, root, monkeypatch):
    model = family_model(name, root)
    graph = Graph.from_model(model, "head")
    data = tokenize_pairs(model.tokenizer, Addition().examples(3, seed=1), answer_tokens=1)
    assert head_sources(model.bridge, graph), f"{name}: no per-head source is read at z"
    for cf in Counterfactual:
        fast, slow = deltas_of(model, graph, data, cf, True, monkeypatch), deltas_of(model, graph, data, cf, False, monkeypatch)
        for part in ("residual", "raw", "run"):
            a, b = getattr(fast, part), getattr(slow, part)
            if b is None:
                assert a is None
                continue
            scale = float(b.abs().max())
            assert scale > 0
            assert torch.allclose(a, b, rtol=0, atol=2e-6 * scale), (name, cf, part, float((a - b).abs().max()) / scale)


@pytest.mark.parametrize("name", ["zoo:gpt2", "zoo:llama", "zoo:gemma3"])
def test_eap_scores_with_sources_at_z_equal_those_read_at_the_results(name, root, monkeypatch):
    model = family_model(name, root)
    data = tokenize_pairs(model.tokenizer, Addition().examples(4, seed=0), answer_tokens=1)
    for method in ("eap", "eap-ig-inputs", "exact"):
        fast = attribute(model, "head", data, "logit_diff", method=method, steps=2)
        with monkeypatch.context() as m:
            read_at_results(m)
            slow = attribute(model, "head", data, "logit_diff", method=method, steps=2)
        scale = float(slow.scores.abs().max())
        assert torch.allclose(fast.scores, slow.scores, rtol=0, atol=1e-5 * scale), (name, method)


def test_passes_reading_z_compute_no_per_head_results(monkeypatch):
    model = family_model("zoo:llama", None)
    graph = Graph.from_model(model, "head")  # its liveness probe runs the model with every hook on
    attn_class = type(model.bridge.blocks[0].attn)
    calls = []
    original = attn_class._compute_per_head_result

    def counted(self, *args, **kwargs):
        calls.append(1)
        return original(self, *args, **kwargs)
    monkeypatch.setattr(attn_class, "_compute_per_head_result", counted)
    data = tokenize_pairs(model.tokenizer, Addition().examples(2, seed=0), answer_tokens=1)
    for ablation in ("noising", "zero"):
        attribute(model, graph, data, "logit_diff", ablation=ablation)
    assert calls == []
    read_at_results(monkeypatch)
    attribute(model, graph, data, "logit_diff")
    assert calls, "with the reading at z off, the per-head results are computed (the check can fail)"


def test_a_bf16_models_deltas_from_z_are_within_bf16_rounding(monkeypatch):
    model = load_model("zoo:llama", dtype=torch.bfloat16)
    graph = Graph.from_model(model, "head")
    data = tokenize_pairs(model.tokenizer, Addition().examples(3, seed=2), answer_tokens=1)
    fast = deltas_of(model, graph, data, Counterfactual.CORRUPT, True, monkeypatch).residual
    slow = deltas_of(model, graph, data, Counterfactual.CORRUPT, False, monkeypatch).residual
    assert fast.dtype == torch.float32
    heads = [r for sh in graph.source_hooks if sh.per_head for r in range(sh.start, sh.stop)]
    scale = float(slow[heads].abs().max())
    err = float((fast[heads] - slow[heads]).abs().max()) / scale
    assert 0 < err < 2 ** -6, err  # bf16 per-head results round at 2^-9 relative to each value
