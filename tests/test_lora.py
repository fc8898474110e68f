"""LoRA adapters (peft) on the bridge's own modules: the bridge computes the merged model, attribution of the
adapted model equals attribution of the merged one, adapter gradients are the chain rule of the merged
weight's, and training with `peft=` moves only the adapters and saves Hugging Face folders of the merged
model whose hash the attribution of the trained model records."""

import json

import pytest
import torch
from peft import LoraConfig

from circuitdyn.attribution import attribute
from circuitdyn.graph import Graph
from circuitdyn.models import clone_model, load_model
from circuitdyn.models.export import hf_model
from circuitdyn.models.lora import apply_lora, lora_layers, lora_targets, merge_lora
from circuitdyn.models.lora_config import LoraError
from circuitdyn.models.surface import sampling_twin
from circuitdyn.tasks import Addition, tokenize_pairs
from circuitdyn.train import CFRLConfig, ConfigError, GRPOConfig, Trainer, config_from_dict, train
from tests.conftest import ALL_FAMILIES, zoo_model

RANDOM = dict(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False)  # B != 0: adapters bite


def adapted(family: str, **kw):
    model = clone_model(zoo_model(family))
    torch.manual_seed(1)
    apply_lora(model.bridge, LoraConfig(**(RANDOM | kw)))
    return model


def data_of(model, n=4):
    return tokenize_pairs(model.tokenizer, Addition().examples(n, seed=3))


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_the_bridge_computes_the_merged_model(family):
    model = adapted(family)
    data = data_of(model)
    with torch.no_grad():
        base = zoo_model(family).bridge(data.clean, attention_mask=data.mask.long())
        own = model.bridge(data.clean, attention_mask=data.mask.long())
        merged = hf_model(model.bridge)(data.clean, attention_mask=data.mask.long()).logits
        twin = sampling_twin(model.bridge)(data.clean, attention_mask=data.mask.long()).logits
    assert (own - base).abs().max() > 1e-2, "random adapters must move the logits for the check to bite"
    torch.testing.assert_close(merged, own, rtol=1e-5, atol=1e-5 * float(own.abs().max()))  # merged: other rounding
    torch.testing.assert_close(twin, own, rtol=0, atol=0)


@pytest.mark.parametrize("family", ALL_FAMILIES)
@pytest.mark.parametrize("granularity", ["head", "layer"])
def test_eap_of_the_adapted_model_equals_eap_of_the_merged_model(family, granularity):
    model = adapted(family)
    merged = clone_model(model)
    merge_lora(merged.bridge)
    assert not lora_layers(merged.bridge) and lora_layers(model.bridge)
    data = data_of(model)
    graph = Graph.from_model(model, granularity)
    kw = dict(ablation="noising", aggregation="sum")
    ours = attribute(model, graph, data, "answer_nll", **kw)
    theirs = attribute(merged, graph, data, "answer_nll", **kw)
    base = attribute(zoo_model(family), graph, data, "answer_nll", **kw)
    assert (ours.scores - base.scores).abs().max() > 1e-3
    torch.testing.assert_close(ours.scores, theirs.scores, rtol=1e-4, atol=1e-5)
    assert ours.provenance["model"]["weights_sha256"] == theirs.provenance["model"]["weights_sha256"]


def test_adapter_gradients_are_the_chain_rule_of_the_merged_weights():
    """dL/dB = s G A^T and dL/dA = s B^T G, with G = dL/dW of the merged weight (brute-force autograd)."""
    model = adapted("llama", target_modules=["q_proj", "down_proj"])
    data = data_of(model)
    loss = model.bridge(data.clean, attention_mask=data.mask.long()).logsumexp(-1).mean()
    loss.backward()
    merged = hf_model(model.bridge)
    for p in merged.parameters():
        p.requires_grad_(True)
    merged(data.clean, attention_mask=data.mask.long()).logits.logsumexp(-1).mean().backward()
    weights = dict(merged.named_parameters())
    layers = lora_layers(model.bridge)
    assert len(layers) == 4
    for name, layer in layers.items():
        g = weights[f"{name}.weight"].grad
        a, b, s = layer.lora_A["default"].weight, layer.lora_B["default"].weight, layer.scaling["default"]
        torch.testing.assert_close(layer.lora_B["default"].weight.grad, s * g @ a.T, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(layer.lora_A["default"].weight.grad, s * b.T @ g, rtol=1e-4, atol=1e-6)
        assert layer.get_base_layer().weight.grad is None  # the base stays frozen


@pytest.mark.parametrize(("family", "target", "expected"), [
    ("gpt2", ["c_attn"], {"attn.q", "attn.k", "attn.v"}),  # the bridge computes the fused matrix split
    ("neox", ["query_key_value"], {"attention.q", "attention.k", "attention.v"}),
    ("llama", ["q_proj", "v_proj"], {"self_attn.q_proj", "self_attn.v_proj"}),
    ("llama", None, {"self_attn.q_proj", "self_attn.v_proj"}),  # peft's default for the model type
])
def test_targets_are_named_as_peft_names_them(family, target, expected):
    names = lora_targets(zoo_model(family).bridge, LoraConfig(target_modules=target))
    assert {n.split(".", 3)[3] for n in names} == expected
    assert len(names) == 2 * len(expected)  # both layers


def test_bad_adapter_configs_fail_clearly():
    bridge = clone_model(zoo_model("llama")).bridge
    with pytest.raises(LoraError, match="match no linear module.*q_proj"):
        apply_lora(bridge, LoraConfig(target_modules=["query"]))
    with pytest.raises(ConfigError, match="lora_dropout=0.05.*set lora_dropout=0"):
        GRPOConfig(peft=LoraConfig(lora_dropout=0.05))
    with pytest.raises(ConfigError, match="use_dora"):
        GRPOConfig(peft=LoraConfig(use_dora=True))
    with pytest.raises(ConfigError, match="modules_to_save is not supported"):
        GRPOConfig(peft=LoraConfig(modules_to_save=["lm_head"]))
    with pytest.raises(ConfigError, match="peft.LoraConfig"):
        GRPOConfig(peft={"r": 8})
    apply_lora(bridge, LoraConfig(target_modules=["q_proj"]))
    with pytest.raises(LoraError, match="already carries LoRA adapters"):
        apply_lora(bridge, LoraConfig(target_modules=["v_proj"]))


def test_configs_with_adapters_round_trip_through_json():
    cfg = GRPOConfig(peft=LoraConfig(r=16, lora_alpha=32, target_modules=["q_proj", "v_proj"]))
    back = config_from_dict(json.loads(json.dumps(cfg.as_dict())))
    assert back.as_dict() == cfg.as_dict() and back.peft.r == 16 and set(back.peft.target_modules) == {"q_proj", "v_proj"}


LORA_RUN = dict(max_steps=2, eval_steps=0, per_device_train_batch_size=8, num_generations=4, learning_rate=5e-2,
                peft=LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_training_with_adapters_moves_only_them_and_saves_the_merged_model(family, tmp_path):
    from transformers import AutoModelForCausalLM

    model = clone_model(zoo_model(family))
    base = {k: v.clone() for k, v in model.bridge.state_dict().items()}
    trainer = Trainer(model, GRPOConfig(**LORA_RUN, output_dir=str(tmp_path / "run")))
    n_trainable = sum(p.numel() for g in trainer.optimizer.param_groups for p in g["params"])
    assert 0 < n_trainable < 0.2 * sum(p.numel() for p in zoo_model(family).bridge.parameters())
    trainer.train()
    after = model.bridge.state_dict()
    moved = {k for k in after if k in base and not torch.equal(after[k], base[k])}
    assert moved == set(), f"base weights moved: {sorted(moved)[:3]}"
    assert any(not torch.equal(layer.lora_B["default"].weight, torch.zeros_like(layer.lora_B["default"].weight))
               for layer in lora_layers(model.bridge).values())
    data = data_of(model)
    with torch.no_grad():
        own = model.bridge(data.clean, attention_mask=data.mask.long())
        folder = tmp_path / "run" / "final"
        hf = AutoModelForCausalLM.from_pretrained(str(folder)).eval()
        near = dict(rtol=1e-5, atol=1e-5 * float(own.abs().max()))  # the merged weights round differently
        torch.testing.assert_close(hf(data.clean, attention_mask=data.mask.long()).logits, own, **near)
        again = load_model(str(folder), device="cpu")
        torch.testing.assert_close(again.bridge(data.clean, attention_mask=data.mask.long()), own, **near)
    tuned = attribute(model, "layer", data, "answer_nll", ablation="zero").provenance["model"]
    saved = json.loads((folder / "checkpoint.json").read_text())["state"]["weights_sha256"]
    assert tuned["weights_sha256"] == saved == again.provenance.weights_sha256 != zoo_model(family).provenance.weights_sha256


def test_a_resumed_adapter_run_equals_the_uninterrupted_one(tmp_path):
    whole = clone_model(zoo_model("llama"))
    train(whole, GRPOConfig(**(LORA_RUN | dict(max_steps=3))))
    first = clone_model(zoo_model("llama"))
    train(first, GRPOConfig(**LORA_RUN, save_steps=2, output_dir=str(tmp_path / "a")))
    resumed = clone_model(zoo_model("llama"))
    Trainer(resumed, GRPOConfig(**(LORA_RUN | dict(max_steps=3)), output_dir=str(tmp_path / "a")),
            resume_from=tmp_path / "a" / "checkpoint-2").train()
    for (name, a), b in zip(whole.bridge.state_dict().items(), resumed.bridge.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)


def test_classifier_first_with_adapters_trains_the_unembedding_first():
    model = clone_model(zoo_model("llama"))
    cfg = CFRLConfig(**(LORA_RUN | dict(max_steps=4)), classifier_steps=1)
    trainer = Trainer(model, cfg)
    unembed = model.bridge.unembed.original_component.weight
    before_u = unembed.detach().clone()
    adapters = {n: p.detach().clone() for n, p in model.bridge.named_parameters() if "lora_" in n}
    trainer.train_step()  # stage 1: the classifier alone
    assert not torch.equal(unembed, before_u)
    assert all(torch.equal(p, adapters[n]) for n, p in model.bridge.named_parameters() if "lora_" in n)
    for _ in range(3):  # stage 2: the adapters too (a step whose groups all tie has no gradient)
        trainer.train_step()
    assert any(not torch.equal(p, adapters[n]) for n, p in model.bridge.named_parameters() if "lora_" in n)
