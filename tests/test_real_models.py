"""Real pretrained models (`circuitdyn install-real`): slow, run by `make test-slow`."""

import pytest
import torch

from circuitdyn.attribution import attribute
from circuitdyn.graph import Graph, attribution_hooks
from circuitdyn.models import load_model
from circuitdyn.tasks import IOI, tokenize_pairs

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smol():
    return load_model("smollm2-135m", device="cpu")


def test_smollm2_loads_and_answers_ioi(smol):
    assert smol.provenance.architecture == "LlamaForCausalLM" and smol.provenance.n_params > 130_000_000
    data = tokenize_pairs(smol.tokenizer, IOI().examples(8, seed=0), require_single_token_answers=True)
    with torch.no_grad():
        logits = smol.bridge(data.clean, attention_mask=data.mask.long())
    top = logits[torch.arange(len(data)), data.answer_pos].argmax(-1)
    assert float((top == data.answers[:, 0]).float().mean()) >= 0.75


def test_smollm2_gqa_hook_shapes(smol):
    ids = torch.tensor([smol.tokenizer("When Mary and John went to the store").input_ids])
    with attribution_hooks(smol) as bridge:
        _, cache = bridge.run_with_cache(ids)
    T = ids.shape[1]
    assert cache["blocks.0.attn.hook_q_input"].shape == (1, T, 9, 576)
    assert cache["blocks.0.attn.hook_k_input"].shape == (1, T, 3, 576)
    assert cache["blocks.0.attn.hook_result"].shape == (1, T, 9, 576)


def test_smollm2_head_level_eap(smol):
    data = tokenize_pairs(smol.tokenizer, IOI().examples(4, seed=1), require_single_token_answers=True)
    g = Graph.from_model(smol, "head")
    a = attribute(smol, g, data, "logit_diff")
    assert g.n_edges > 70_000 and torch.isfinite(a.scores).all() and a.scores.abs().max() > 0


def test_gemma3_loads_and_answers_ioi():
    gemma = load_model("gemma3-270m", device="cpu")
    assert gemma.provenance.architecture == "Gemma3ForCausalLM"
    data = tokenize_pairs(gemma.tokenizer, IOI().examples(8, seed=0), require_single_token_answers=True)
    with torch.no_grad():
        logits = gemma.bridge(data.clean, attention_mask=data.mask.long())
    top = logits[torch.arange(len(data)), data.answer_pos].argmax(-1)
    assert float((top == data.answers[:, 0]).float().mean()) >= 0.5
    assert Graph.from_model(gemma, "head").spec.post_attn_norm
