"""Memory-efficient attention (models/attention.py) and the device-following memory budget.

- EAP and EAP-IG scores with scaled-dot-product attention equal the bridge's eager attention (1e-5 relative,
  float32) on every zoo family and every tiny family, head and layer graphs, on a right-padded batch; the
  known attention classes run the kernel on every call, the others (Gemma2's softcapping, attention delegated
  to Hugging Face, ALiBi) keep the bridge's attention.
- Under it, autograd keeps no [T, T] tensor; under eager attention it does (the check can fail).
- A hook on the pattern sends that module back to the bridge's attention, and the hook sees the pattern.
- The budget: the caller's bytes when given, else a share of a CUDA device's free memory or of available RAM.
"""

import pytest
import torch

from circuitdyn.attribution import attribute
from circuitdyn.attribution import budget as budget_module
from circuitdyn.attribution.budget import CUDA_SHARE, RAM_SHARE, memory_budget
from circuitdyn.attribution.config import AttributionConfig
from circuitdyn.attribution.errors import AttributionError
from circuitdyn.graph.hook_flags import attribution_hooks
from circuitdyn.models.attention import efficient_attention
from circuitdyn.tasks import Addition, TaskExample, tokenize_pairs
from tests.conftest import ALL_FAMILIES, zoo_model
from tests.families import SUPPORT, TINY_FAMILIES
from tests.test_families import family_model

EAGER_ONLY = {"gemma2", "gptj", "gptneo", "opt"}  # softcapping; attention delegated to Hugging Face
CASES = [f"zoo:{f}" for f in ALL_FAMILIES] + [f for f in TINY_FAMILIES if SUPPORT[f]]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("attention")


def padded_data(model):
    examples = Addition().examples(4, seed=3) + [TaskExample("3+4=", "5+1=", "7", "6")]  # a shorter prompt
    data = tokenize_pairs(model.tokenizer, examples, answer_tokens=1)
    assert not data.mask.all(), "the batch must hold padding"
    return data


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("granularity", ["head", "layer"])
def test_sdpa_scores_equal_the_bridges_eager_attention(name, granularity, root):
    model = family_model(name, root)  # the family tests' loader and cache
    data = padded_data(model)
    for method in ("eap", "eap-ig-inputs"):
        eager = attribute(model, granularity, data, "logit_diff", method=method, steps=3, attention="eager")
        fast = attribute(model, granularity, data, "logit_diff", method=method, steps=3)
        scale = eager.scores.abs().max()
        assert scale > 0
        assert torch.allclose(fast.scores, eager.scores, rtol=0, atol=1e-5 * float(scale)), (name, method)
        calls = fast.provenance["attention_calls"]
        assert eager.provenance["attention_calls"] == {"sdpa": 0, "eager": 0}
        if name in EAGER_ONLY:
            assert calls["sdpa"] == 0
        else:
            assert calls["sdpa"] > 0 and calls["eager"] == 0, calls


def saved_square_tensors(model, enabled: bool, seq: int) -> list[tuple[int, ...]]:
    """Shapes of the tensors autograd saves in one forward whose last two dims are [seq, seq]."""
    bridge = model.bridge
    ids = torch.randint(5, 20, (1, seq))
    found = []

    def pack(t):
        if t.dim() >= 2 and tuple(t.shape[-2:]) == (seq, seq):
            found.append(tuple(t.shape))
        return t
    with attribution_hooks(bridge), efficient_attention(bridge, enabled), \
            torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        bridge(ids, use_cache=False).sum()
    return found


@pytest.mark.parametrize("family", ["gpt2", "neox", "llama", "gemma3"])
def test_no_pattern_is_kept_for_the_backward(family):
    model = zoo_model(family)
    with torch.enable_grad():
        assert saved_square_tensors(model, enabled=False, seq=23), "eager attention keeps the pattern"
        assert saved_square_tensors(model, enabled=True, seq=23) == []


def test_a_hook_on_the_pattern_gets_the_bridges_attention():
    model = zoo_model("llama")
    bridge = model.bridge
    seen = []
    ids = torch.randint(5, 20, (2, 9))
    with efficient_attention(bridge) as use:
        with bridge.hooks(fwd_hooks=[("blocks.1.attn.hook_pattern", lambda p, hook: seen.append(p.shape))]):
            hooked = bridge(ids)
        plain = bridge(ids)
    assert seen == [torch.Size([2, 4, 9, 9])]
    assert use.eager == 1 and use.sdpa == 3
    assert torch.allclose(hooked, plain, atol=1e-5)
    assert "forward" not in vars(bridge.blocks[0].attn)  # restored on exit


def test_the_budget_is_the_callers_or_a_share_of_the_devices_free_memory(monkeypatch):
    assert memory_budget(torch.device("cpu"), 123).bytes == 123

    class Memory:
        available = 10 * 2**30
    monkeypatch.setattr(budget_module.psutil, "virtual_memory", lambda: Memory())
    cpu = memory_budget(torch.device("cpu"))
    assert cpu.bytes == int(10 * 2**30 * RAM_SHARE) and "available RAM" in cpu.describe()
    monkeypatch.setattr(budget_module.torch.cuda, "mem_get_info", lambda device: (8 * 2**30, 80 * 2**30))
    gpu = memory_budget(torch.device("cuda", 0))
    assert gpu.bytes == int(8 * 2**30 * CUDA_SHARE) and "free on cuda:0" in gpu.describe()


def test_a_refusal_names_the_budget_and_where_it_came_from():
    model = zoo_model("gpt2")
    data = tokenize_pairs(model.tokenizer, Addition().examples(2, seed=0), answer_tokens=1)
    with pytest.raises(MemoryError, match=r"the budget is 0 MiB \(memory_budget\)"):
        attribute(model, "head", data, "logit_diff", memory_budget=1000)
    with pytest.raises(AttributionError, match="memory_budget must be > 0"):
        AttributionConfig(memory_budget=0)
    with pytest.raises(AttributionError, match="attention"):
        AttributionConfig(attention="flash")


def with_recompute(model, graph, data, method):
    """Scores under a budget that one example fits only when its activations are recomputed block by block."""
    plain = attribute(model, graph, data, "logit_diff", method=method, steps=3, batch_size=1)
    one = plain.provenance["peak_bytes_estimate"]
    assert plain.provenance["recompute"] == "none"
    for share in (0.97, 0.93, 0.9, 0.85, 0.8, 0.75, 0.7):
        try:
            return plain, attribute(model, graph, data, "logit_diff", method=method, steps=3,
                                    memory_budget=int(one * share))
        except MemoryError:
            continue
    raise AssertionError("no budget between the recomputed and the full estimate")


@pytest.mark.parametrize("family", ["gpt2", "neox", "llama", "gemma3"])
@pytest.mark.parametrize("method", ["eap", "eap-ig-inputs", "eap-ig-activations"])
def test_recomputing_blocks_gives_the_same_scores_when_one_example_does_not_fit(family, method):
    model = zoo_model(family)
    data = padded_data(model)
    for granularity in ("head", "layer"):
        plain, recomputed = with_recompute(model, granularity, data, method)
        assert recomputed.provenance["recompute"] == "blocks"
        assert recomputed.provenance["peak_bytes_estimate"] < plain.provenance["peak_bytes_estimate"]
        scale = float(plain.scores.abs().max())
        assert torch.allclose(recomputed.scores, plain.scores, rtol=0, atol=1e-5 * scale), (family, granularity)
        assert torch.allclose(recomputed.metric_values, plain.metric_values, atol=1e-6)


def test_a_refusal_says_recomputation_was_tried():
    model = zoo_model("llama")
    data = padded_data(model)
    with pytest.raises(MemoryError, match=r"even with activations recomputed block by block \(checkpointing\)"):
        attribute(model, "layer", data, "logit_diff", memory_budget=50_000)
