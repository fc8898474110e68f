import statistics

import pytest
import torch

from circuitdyn.dynamics import (
    NTKError,
    confidence,
    distinct_n,
    diversity,
    entk,
    feature_variability,
    pass_at_k,
    predicted_logprob_change,
)
from circuitdyn.graph import Granularity
from circuitdyn.models import clone_model
from circuitdyn.tasks import Addition, tokenize_pairs
from tests.conftest import zoo_model


@pytest.mark.parametrize("family", ["llama", "qwen2", "neox"])
def test_feature_plus_backbone_equals_brute_force(family):
    m = zoo_model(family)
    data = tokenize_pairs(m.tokenizer, Addition().examples(4, seed=3))
    k = entk(m, data, brute_force=True)
    assert not k.tied
    assert float((k.full - k.total).abs().max()) <= 1e-5 * float(k.full.abs().max())
    assert torch.allclose(k.feature, k.feature.T) and (torch.linalg.eigvalsh(k.total.double()) > -1e-3).all()


@pytest.mark.parametrize("family", ["llama", "neox"])
def test_feature_and_gradient_kernels_are_the_factors_of_the_classifier_part(family):
    """H from the unembedding's input, A from the softmax, both by hand; their product is the Gram matrix
    of the per-sample gradients of the unembedding (weight and bias) by plain autograd."""
    from circuitdyn.models.surface import classifier_linear

    m = zoo_model(family)
    data = tokenize_pairs(m.tokenizer, Addition().examples(4, seed=3))
    k = entk(m, data)
    weight, bias = classifier_linear(m.bridge)
    rows, pos, ans = torch.arange(4), data.answer_pos, data.answers[:, 0]
    store = {}
    with m.bridge.hooks(fwd_hooks=[("unembed.hook_in", lambda x, hook: store.setdefault("h", x))]):
        logits = m.bridge(data.clean, attention_mask=data.mask.long())
    h = store["h"][rows, pos].detach()
    a = torch.nn.functional.one_hot(ans, logits.shape[-1]).float() - torch.softmax(logits[rows, pos].detach(), -1)
    torch.testing.assert_close(k.feature_kernel, h @ h.T + (1.0 if bias is not None else 0.0), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(k.gradient_kernel, a @ a.T, rtol=1e-5, atol=1e-6)
    params = [weight] + ([bias] if bias is not None else [])
    logp = torch.log_softmax(logits[rows, pos], -1)[rows, ans]
    per = torch.stack([torch.cat([g.flatten() for g in torch.autograd.grad(logp[i], params, retain_graph=True)])
                       for i in range(4)])
    torch.testing.assert_close(k.feature_kernel * k.gradient_kernel, per @ per.T, rtol=1e-4, atol=1e-5)
    assert {"ntk_feature_kernel_diag", "ntk_gradient_kernel_diag"} <= set(k.summary())


def test_tied_unembedding_reports_the_cross_term():
    m = zoo_model("gpt2")
    k = entk(m, tokenize_pairs(m.tokenizer, Addition().examples(3, seed=3)), brute_force=True)
    assert k.tied and float(k.cross.abs().max()) > 1e-3


def test_one_step_prediction_matches_a_real_sgd_step():
    m = clone_model(zoo_model("llama"))
    data = tokenize_pairs(m.tokenizer, Addition().examples(5, seed=7))
    k = entk(m, data)
    lr, advantage, source = 1e-4, 1.0, 2
    predicted = predicted_logprob_change(k, source, lr, advantage)
    opt = torch.optim.SGD(m.bridge.parameters(), lr=lr)
    logits = m.bridge(data.clean[source:source + 1])
    logp = torch.log_softmax(logits[0, data.answer_pos[source]], -1)[data.answers[source, 0]]
    (-advantage * logp).backward()
    opt.step()
    after = entk(m, data).logprob
    actual = after - k.logprob
    assert torch.allclose(actual, predicted, rtol=0.05, atol=1e-6), (actual, predicted)
    assert actual[source] > 0  # the sample itself became more likely


def test_bad_inputs():
    m = zoo_model("llama")
    one = tokenize_pairs(m.tokenizer, Addition().examples(1))
    with pytest.raises(NTKError, match="at least 2"):
        entk(m, one)
    with pytest.raises(NTKError, match="MiB"):
        entk(m, tokenize_pairs(m.tokenizer, Addition().examples(4)), memory_budget=1000)
    with pytest.raises(NTKError, match="at least 2"):
        feature_variability(torch.randn(1, 4))


def test_feature_variability():
    same = feature_variability(torch.ones(5, 3))
    assert same["feature_total_variance"] == 0 and same["feature_mean_cosine"] == pytest.approx(1.0)
    spread = feature_variability(torch.eye(4))
    assert spread["feature_effective_rank"] == pytest.approx(3.0, rel=1e-6)  # centred identity: rank 3, equal values


def test_confidence_and_diversity():
    m = zoo_model("llama")
    data = tokenize_pairs(m.tokenizer, Addition().examples(8))
    c = confidence(m, data)
    # by hand, on the Hugging Face model the bridge wraps, one prompt at a time
    max_p, ent, ans = [], [], []
    with torch.no_grad():
        for b in range(len(data)):
            n = int(data.mask[b].sum())
            logits = m.bridge.original_model(input_ids=data.clean[b:b + 1, :n]).logits[0, int(data.answer_pos[b])]
            p = torch.softmax(logits.double(), -1)
            max_p.append(float(p.max()))
            ent.append(float(-(p * p.log()).sum()))
            ans.append(float(p[int(data.answers[b, 0])].log()))
    assert c["confidence_max_prob"] == pytest.approx(sum(max_p) / len(max_p), rel=1e-5)
    assert c["confidence_entropy"] == pytest.approx(sum(ent) / len(ent), rel=1e-5)
    assert c["confidence_answer_logprob"] == pytest.approx(sum(ans) / len(ans), rel=1e-5)
    assert pass_at_k(4, 0, 1) == 0 and pass_at_k(4, 4, 2) == 1 and pass_at_k(4, 1, 1) == pytest.approx(0.25)
    assert pass_at_k(5, 2, 2) == pytest.approx(1 - 3 / 10)
    assert distinct_n(["aa", "ab"], 1) == pytest.approx(2 / 4)
    ex = Addition().examples(2)
    d = diversity([[ex[0].answer] * 3 + ["0"], ["1", "2", "3", "4"]], ex, Addition(), ks=(1, 2))
    assert d["self_agreement"] == pytest.approx((0.75 + 0.25) / 2)
    assert d["pass@1"] == pytest.approx((0.75 + (1.0 if ex[1].answer in "1234" else 0.0) / 4) / 2)


def test_distinct_n_counts_characters_words_and_tokens():
    class Pairs:  # a tokenizer that reads each pair of characters as one token
        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": [text[i:i + 2] for i in range(0, len(text), 2)]}

    texts = ["the cat sat", "the cat ran"]
    assert distinct_n(texts, 1, unit="word") == pytest.approx(4 / 6)  # the, cat, sat, ran
    assert distinct_n(texts, 2, unit="word") == pytest.approx(3 / 4)  # (the cat) twice
    assert distinct_n(["abab", "abcd"], 1, unit="token", tokenizer=Pairs()) == pytest.approx(2 / 4)  # ab, cd
    assert distinct_n(texts, 1) == pytest.approx(len(set("the cat satthe cat ran")) / 22)
    with pytest.raises(ValueError, match="tokenizer"):
        distinct_n(texts, 1, unit="token")
    ex = Addition().examples(1)
    d = diversity([["12 a", "12 b"]], ex, Addition(), tokenizer=Pairs())
    assert d["distinct_word_1"] == pytest.approx(3 / 4) and d["distinct_token_1"] == pytest.approx(3 / 4)


def test_callbacks_record_without_changing_training(tmp_path):
    from circuitdyn.dynamics.snapshots import CircuitSnapshot, DynamicsRecorder
    from circuitdyn.train import GRPOConfig, train

    cfg = GRPOConfig(max_steps=4, eval_steps=0, per_device_train_batch_size=16, num_generations=4, learning_rate=1e-4)
    plain = clone_model(zoo_model("llama"))
    train(plain, cfg)
    m = clone_model(zoo_model("llama"))
    examples = Addition().examples(6, seed=11)
    probe = tokenize_pairs(m.tokenizer, examples, answer_tokens=2)
    circuits = CircuitSnapshot(probe, every=4)
    rec = DynamicsRecorder(probe, examples, every=2, samples=4, path=tmp_path / "dyn.jsonl", circuits=circuits)
    result = train(m, cfg, callbacks=[rec])
    assert [r["step"] for r in rec.rows] == [0, 2, 4]
    assert [r["step"] for r in rec.rows if "circuit_intensity" in r] == [0, 4]  # the snapshot's own cadence
    assert (tmp_path / "dyn.jsonl").read_text().count("\n") == 3
    for key in ("confidence_max_prob", "pass@1", "distinct_1", "ntk_feature_diag", "ntk_backbone_diag",
                "feature_effective_rank", "circuit_intensity", "circuit_normalized_entropy"):
        assert key in rec.rows[-1]
    assert "ntk_feature_share" in result.history[1]
    for (n, a), (_, b) in zip(plain.bridge.named_parameters(), m.bridge.named_parameters()):
        assert torch.equal(a, b), n


def test_entk_works_while_a_stage_freezes_the_backbone():
    m = clone_model(zoo_model("llama"))
    frozen = [p for n, p in m.bridge.named_parameters() if "lm_head" not in n]
    for p in frozen:
        p.requires_grad_(False)
    k = entk(m, tokenize_pairs(m.tokenizer, Addition().examples(3)))
    assert float(torch.diagonal(k.backbone).min()) > 0
    assert not any(p.requires_grad for p in frozen)


def test_snapshot_choices_are_checked_before_training():
    from circuitdyn.dynamics.snapshots import CircuitSnapshot

    m = zoo_model("llama")
    probe = tokenize_pairs(m.tokenizer, Addition().examples(2))
    assert CircuitSnapshot(probe, granularity="head").granularity is Granularity.HEAD
    for bad, name in [(dict(granularity="edge"), "granularity"), (dict(ablation="blur"), "ablation"),
                      (dict(method="magic"), "method"), (dict(metric="accuracy"), "metric")]:
        with pytest.raises(ValueError, match=name):
            CircuitSnapshot(probe, **bad)


def test_projected_backbone_kernel_converges_to_the_exact_one():
    """CountSketch estimates of the backbone part: unbiased, relative Frobenius error shrinking with k."""
    from circuitdyn.dynamics.projection import relative_frobenius_error

    m = zoo_model("llama")
    data = tokenize_pairs(m.tokenizer, Addition().examples(8, seed=3))
    exact = entk(m, data)
    errors = {k: statistics.mean(relative_frobenius_error(entk(m, data, projection=k, seed=s).backbone, exact.backbone)
                                 for s in range(3)) for k in (64, 1024, 16384)}
    assert errors[64] > errors[1024] > errors[16384] and errors[16384] < 0.05, errors
    again = entk(m, data, projection=1024, seed=1)
    torch.testing.assert_close(again.backbone, entk(m, data, projection=1024, seed=1).backbone)  # one map per seed
    torch.testing.assert_close(again.feature, exact.feature)  # the feature part stays exact


def gram_of_gradients(m, data, params):
    """The brute-force kernel over `params`: Gram matrix of per-sample gradients of log pi(answer)."""
    logits = m.bridge(data.clean, attention_mask=data.mask.long())
    rows = torch.arange(len(data))
    logp = torch.log_softmax(logits[rows, data.answer_pos], -1)[rows, data.answers[:, 0]]
    per = torch.stack([torch.cat([g.flatten() for g in torch.autograd.grad(logp[i], params, retain_graph=True)])
                       for i in range(len(data))])
    return per @ per.T


def test_layer_subset_kernel_equals_brute_force_on_those_blocks():
    m = zoo_model("llama")
    data = tokenize_pairs(m.tokenizer, Addition().examples(4, seed=3))
    k = entk(m, data, layers=[1])
    torch.testing.assert_close(k.backbone, gram_of_gradients(m, data, list(m.bridge.blocks[1].parameters())),
                               rtol=1e-4, atol=1e-6)
    with pytest.raises(NTKError, match="block indices"):
        entk(m, data, layers=[7])


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_sequence_kernel_of_sampled_responses_equals_brute_force(family):
    from circuitdyn.dynamics import sequence_entk
    from circuitdyn.models.sampling import encode_prompts, sample

    m = zoo_model(family)
    prompts = [e.clean for e in Addition().examples(4, seed=3)]
    ids, mask = encode_prompts(m.tokenizer, prompts, torch.device("cpu"))
    roll = sample(m.bridge, m.tokenizer, ids, mask, max_new_tokens=3, generator=torch.Generator().manual_seed(0))
    assert int(roll.completion_mask.sum(1).max()) > 1  # multi-token responses
    k = sequence_entk(m, roll, brute_force=True)
    if k.tied:  # GPT-2 ties its unembedding: the remainder sits in `cross`
        torch.testing.assert_close(k.total + k.cross, k.full)
        assert float(k.cross.abs().max()) > 1e-4
    else:
        assert float((k.full - k.total).abs().max()) <= 1e-4 * float(k.full.abs().max())
    # log-probabilities of the responses, as the trainer scores them
    from circuitdyn.train.rollout import token_logprobs

    with torch.no_grad():
        logp = token_logprobs(m.bridge, roll)[0]
    torch.testing.assert_close(k.logprob, (logp * roll.completion_mask).sum(1), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("layers", [None, [1]])
def test_adapter_kernel_equals_brute_force_over_the_adapters(layers):
    """With LoRA, training moves only the adapters: the backbone part over them is the Gram matrix of
    per-sample gradients of log pi over the adapter parameters alone (here with B != 0, so both A and B
    have gradients)."""
    from peft import LoraConfig

    from circuitdyn.models.lora import apply_lora, is_lora_layer, lora_layers

    m = clone_model(zoo_model("llama"))
    apply_lora(m.bridge, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False))
    data = tokenize_pairs(m.tokenizer, Addition().examples(4, seed=3))
    k = entk(m, data, layers=layers, adapters_only=True, brute_force=True)
    scope = m.bridge if layers is None else m.bridge.blocks[1]
    params = list({id(p): p for mod in scope.modules() if is_lora_layer(mod)
                   for p in [*mod.lora_A.parameters(), *mod.lora_B.parameters()]}.values())
    assert lora_layers(m.bridge) and params
    torch.testing.assert_close(k.backbone, gram_of_gradients(m, data, params), rtol=1e-4, atol=1e-6)
    assert float((k.full - k.total).abs().max()) <= 1e-4 * float(k.full.abs().max())  # untied: the split closes
    everything = entk(m, data, layers=layers)
    assert float(torch.diagonal(everything.backbone).sum()) > float(torch.diagonal(k.backbone).sum())


def test_adapter_kernel_without_adapters_is_refused():
    m = zoo_model("llama")
    with pytest.raises(NTKError, match="no LoRA adapters.*TrainConfig.peft"):
        entk(m, tokenize_pairs(m.tokenizer, Addition().examples(2, seed=3)), adapters_only=True)
