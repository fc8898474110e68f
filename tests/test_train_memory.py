"""The trainer's memory and speed knobs: gradient checkpointing recomputes exactly, mixed precision keeps
float32 master weights, and a step that cannot fit is refused before it runs, naming the knobs."""

import pytest
import torch

from circuitdyn.models import clone_model
from circuitdyn.train import GRPOConfig, Trainer
from circuitdyn.train import policy as policy_module
from circuitdyn.train.memory import checkpoint_layers, saved_bytes_per_row
from circuitdyn.train.policy import FitError
from tests.conftest import zoo_model

RUN = dict(max_steps=1, eval_steps=0, per_device_train_batch_size=8, num_generations=4, learning_rate=1e-3)


def one_step_gradients(cfg):
    trainer = Trainer(clone_model(zoo_model("llama")), cfg)
    trainer.optimizer.step = lambda *a, **k: None  # keep the gradients of the one update
    trainer.train_step()
    return trainer, {n: p.grad.clone() for n, p in trainer.bridge.named_parameters() if p.grad is not None}


def test_gradient_checkpointing_recomputes_exactly_and_keeps_less():
    _, plain = one_step_gradients(GRPOConfig(**RUN))
    trainer, checkpointed = one_step_gradients(GRPOConfig(**RUN, gradient_checkpointing=True))
    assert plain.keys() == checkpointed.keys() and len(plain) > 10
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], rtol=1e-5, atol=1e-7, msg=name)
    twin = clone_model(zoo_model("llama"))
    from circuitdyn.models.surface import sampling_twin

    model = sampling_twin(twin.bridge)
    before = saved_bytes_per_row(model, 64, 0)
    assert checkpoint_layers(model) == 2
    assert saved_bytes_per_row(model, 64, 0) < 0.6 * before


def test_bf16_autocast_keeps_float32_master_weights():
    trainer, grads = one_step_gradients(GRPOConfig(**RUN, bf16=True))
    _, exact = one_step_gradients(GRPOConfig(**RUN))
    assert all(p.dtype == torch.float32 for p in trainer.bridge.parameters())
    assert all(g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads.values())
    cos = torch.nn.functional.cosine_similarity(torch.cat([g.flatten() for g in grads.values()]),
                                                torch.cat([exact[n].flatten() for n in grads]), dim=0)
    assert cos > 0.9  # the same direction, at bf16's precision


def test_fp16_scales_the_loss_and_trains():
    # the scale starts at 2**16 and halves at each overflowing (skipped) step: some of 8 steps apply
    trainer = Trainer(clone_model(zoo_model("llama")), GRPOConfig(**(RUN | dict(max_steps=8)), fp16=True))
    before = [p.detach().clone() for p in trainer.backbone]
    result = trainer.train()
    assert trainer.scaler is not None and 0 < trainer.scaler.get_scale() < 2**16
    assert all(p.dtype == torch.float32 for p in trainer.bridge.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.backbone)) and len(result.history) == 8


def test_a_step_that_cannot_fit_is_refused_before_it_runs(monkeypatch):
    monkeypatch.setattr(policy_module, "available_bytes", lambda device: 1 << 20)
    with pytest.raises(FitError, match=r"needs about .* MiB .*activations.*gradient_accumulation_steps.*"
                                       r"gradient_checkpointing.*peft"):
        Trainer(clone_model(zoo_model("llama")), GRPOConfig(**RUN))


def test_the_estimate_counts_what_the_knobs_change(monkeypatch):
    from peft import LoraConfig

    full = Trainer(clone_model(zoo_model("llama")), GRPOConfig(**RUN)).memory
    lora = Trainer(clone_model(zoo_model("llama")), GRPOConfig(**RUN, peft=LoraConfig(target_modules="all-linear"))).memory
    micro = Trainer(clone_model(zoo_model("llama")), GRPOConfig(**RUN, gradient_accumulation_steps=4)).memory
    assert lora["optimizer"] < 0.2 * full["optimizer"] and lora["gradients"] < 0.2 * full["gradients"]
    assert micro["activations"] == pytest.approx(full["activations"] / 4, rel=1e-6)
    assert set(full) == {"weights", "gradients", "optimizer", "activations", "reference", "total"}


def test_a_trained_model_is_freed_once_dropped():
    """The memory probes kept their graphs alive through a cycle inside autograd (a node holding its own
    output), which took the whole model with it: the CF-RL study grew by a model per arm."""
    import gc
    import weakref

    from circuitdyn.attribution import attribute
    from circuitdyn.core.saved_tensors import saved_tensor_storages
    from circuitdyn.graph import Graph
    from circuitdyn.tasks import get_task, tokenize_pairs

    model = clone_model(zoo_model("llama"))
    trainer = Trainer(model, GRPOConfig(**RUN))
    trainer.train()
    probe = tokenize_pairs(model.tokenizer, get_task("addition").examples(4, seed=0), answer_tokens=1)
    attribute(model, Graph.from_model(model, "head"), probe, "answer_nll")
    alive = weakref.ref(next(model.bridge.parameters()))
    del model, trainer
    gc.collect()
    assert alive() is None
    with saved_tensor_storages([]) as storages:
        out = torch.ones(3, requires_grad=True).exp()
    assert storages and out.grad_fn is not None
    with pytest.raises(RuntimeError, match="no backward"):
        out.sum().backward()
