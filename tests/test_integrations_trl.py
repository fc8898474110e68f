"""circuitdyn's circuit snapshots during trl GRPOTrainer and DPOTrainer runs on a zoo model, with full
fine-tuning and with peft LoRA adapters."""

import pytest
import torch
import trl  # a dev requirement: installed by `make test`

from circuitdyn.analysis.metrics import circuit_metrics
from circuitdyn.attribution import attribute
from circuitdyn.dynamics.snapshots import CircuitSnapshot
from circuitdyn.integrations.trl import CircuitSnapshotCallback, bridge_copy
from circuitdyn.models.zoo import zoo_path
from circuitdyn.tasks import Addition, tokenize_pairs


# trl 1.16 calls transformers' deprecated gradient_checkpointing names itself
@pytest.mark.filterwarnings(r"ignore:`\w*gradient_checkpointing\w*` is deprecated:FutureWarning")
def test_snapshots_during_a_trl_grpo_run(tmp_path):
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

    folder = zoo_path("llama")
    tok = PreTrainedTokenizerFast.from_pretrained(str(folder))
    model = AutoModelForCausalLM.from_pretrained(str(folder))
    examples = Addition().examples(64, seed=0, split="train")
    answers = {e.clean: e.answer for e in examples}

    def reward(prompts, completions, **_):
        return [float(c.strip().startswith(answers[p])) for p, c in zip(prompts, completions)]

    probe = tokenize_pairs(tok, Addition().examples(8, seed=3))
    callback = CircuitSnapshotCallback(CircuitSnapshot(probe, every=2, path=tmp_path / "circuits.jsonl"))
    args = trl.GRPOConfig(output_dir=str(tmp_path / "trl"), per_device_train_batch_size=8, num_generations=4,
                          max_completion_length=4, max_steps=4, learning_rate=5e-3, beta=0.0, logging_steps=1000,
                          save_strategy="no", report_to=[], use_cpu=True, bf16=False, disable_tqdm=True, seed=0)
    trainer = trl.GRPOTrainer(model=model, reward_funcs=reward, args=args,
                              train_dataset=Dataset.from_list([{"prompt": e.clean} for e in examples]),
                              processing_class=tok, callbacks=[callback])
    before = [p.detach().clone() for p in trainer.model.parameters()]
    trainer.train()
    assert [r["step"] for r in callback.rows] == [0, 2, 4]
    assert len((tmp_path / "circuits.jsonl").read_text().splitlines()) == 3
    moved = any(not torch.equal(a, b) for a, b in zip(before, trainer.model.parameters()))
    assert moved and trainer.model.training is not None
    final = bridge_copy(trainer.model, tok, spec=str(folder), training={"algorithm": "trl:GRPOTrainer", "step": 4})
    expected = circuit_metrics(attribute(final, "layer", probe, "answer_nll", ablation="zero"))
    assert callback.rows[-1]["circuit_intensity"] == pytest.approx(float(expected["intensity"]), rel=1e-6)
    assert callback.rows[0]["circuit_intensity"] != callback.rows[-1]["circuit_intensity"]
    assert final.provenance.training["algorithm"] == "trl:GRPOTrainer"


@pytest.mark.filterwarnings(r"ignore:`\w*gradient_checkpointing\w*` is deprecated:FutureWarning")
@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_snapshots_during_a_trl_dpo_run(tmp_path, lora):
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

    folder = zoo_path("llama")
    tok = PreTrainedTokenizerFast.from_pretrained(str(folder))
    model = AutoModelForCausalLM.from_pretrained(str(folder))
    examples = Addition().examples(32, seed=0, split="train")
    pairs = [{"prompt": e.clean, "chosen": e.answer + tok.eos_token, "rejected": e.foil + tok.eos_token} for e in examples]
    probe = tokenize_pairs(tok, Addition().examples(8, seed=3))
    callback = CircuitSnapshotCallback(CircuitSnapshot(probe, every=2))
    args = trl.DPOConfig(output_dir=str(tmp_path / "trl"), per_device_train_batch_size=8, max_steps=4, learning_rate=5e-3,
                         logging_steps=1000, save_strategy="no", report_to=[], use_cpu=True, bf16=False,
                         disable_tqdm=True, seed=0)
    peft_config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"]) if lora else None
    trainer = trl.DPOTrainer(model=model, args=args, train_dataset=Dataset.from_list(pairs), processing_class=tok,
                             callbacks=[callback], peft_config=peft_config)
    trainer.train()
    assert [r["step"] for r in callback.rows] == [0, 2, 4]
    final = bridge_copy(trainer.model, tok, spec=str(folder), training={"algorithm": "trl:DPOTrainer", "step": 4})
    assert not any("lora" in n for n, _ in final.bridge.named_parameters())  # adapters merged into the copy
    expected = circuit_metrics(attribute(final, "layer", probe, "answer_nll", ablation="zero"))
    assert callback.rows[-1]["circuit_intensity"] == pytest.approx(float(expected["intensity"]), rel=1e-6)
    assert callback.rows[0]["circuit_intensity"] != callback.rows[-1]["circuit_intensity"]
    if lora:  # the live model still trains its adapters: the snapshot's merge happened on a copy
        assert any("lora_" in n for n, _ in trainer.model.named_parameters())
