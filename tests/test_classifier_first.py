"""Classifier-first schedules beyond CF-RL: LP-FT's supervised first stage, and untying a tied classifier."""

import json

import pytest
import torch

from circuitdyn.models import clone_model
from circuitdyn.tasks import Addition
from circuitdyn.train import CFRLConfig, ClassifierFirst, ConfigError, GRPOConfig, Trainer, config_from_dict
from circuitdyn.train.rollout import completion_rollout
from tests.conftest import zoo_model

RUN = dict(eval_steps=0, per_device_train_batch_size=16, num_generations=4, learning_rate=1e-3)


def test_lpft_fits_the_classifier_by_cross_entropy_then_runs_rl():
    model = clone_model(zoo_model("llama"))
    trainer = Trainer(model, GRPOConfig(max_steps=3, classifier_first=ClassifierFirst(steps=2, objective="supervised"), **RUN))
    backbone = [p.detach().clone() for p in trainer.backbone]
    unembed = model.bridge.unembed.original_component.weight
    before = unembed.detach().clone()
    # the stage-1 loss, by hand: mean NLL of each correct answer and eos under the model before the update
    state = trainer.py_random.getstate()
    examples = Addition().examples(16, seed=trainer.py_random.randrange(2**31), split="train")
    trainer.py_random.setstate(state)
    roll = completion_rollout(model.tokenizer, [e.clean for e in examples], [e.answer for e in examples], trainer.device)
    ids = torch.cat([roll.prompt_ids, roll.completion_ids], 1)
    with torch.no_grad():
        logits = model.bridge(ids, attention_mask=torch.cat([roll.prompt_mask, roll.completion_mask], 1).long())
    lp = roll.prompt_ids.shape[1]
    logp = torch.log_softmax(logits[:, lp - 1:-1], -1).gather(-1, roll.completion_ids[..., None])[..., 0]
    expected = float(-(logp * roll.completion_mask).sum() / roll.completion_mask.sum())
    first = trainer.train_step()
    assert first["stage"] == "classifier" and first["loss"] == pytest.approx(expected, rel=1e-4)
    assert "reward_mean" not in first
    second = trainer.train_step()
    assert second["loss"] < first["loss"]  # the classifier fits the answers
    assert all(torch.equal(a, b) for a, b in zip(backbone, trainer.backbone)) and not torch.equal(unembed, before)
    third = trainer.train_step()
    assert third["stage"] == "rl" and "reward_mean" in third


def test_untying_gives_the_classifier_its_own_copy():
    base = zoo_model("gpt2")  # ties its unembedding to the embedding
    model = clone_model(base)
    trainer = Trainer(model, CFRLConfig(max_steps=2, classifier_steps=1, untie_classifier=True, **RUN))
    embed = model.bridge.embed.original_component.weight
    assert embed is not model.bridge.unembed.original_component.weight
    data = torch.tensor([[1, 5, 7, 9]])
    with torch.no_grad():
        torch.testing.assert_close(model.bridge(data), base.bridge(data), rtol=0, atol=0)  # the same function
    before = embed.detach().clone()
    trainer.train_step()
    assert torch.equal(embed, before)  # stage 1 moved the classifier alone
    assert not model.bridge.original_model.config.tie_word_embeddings


def test_a_tied_classifier_first_run_warns_and_names_the_option():
    with pytest.warns(UserWarning, match="tied to the input embedding.*untie_classifier=True"):
        Trainer(clone_model(zoo_model("gpt2")), CFRLConfig(max_steps=2, classifier_steps=1, **RUN))


def test_schedule_configs_are_checked_and_round_trip():
    with pytest.raises(ConfigError, match="until_reward.*supervised"):
        ClassifierFirst(steps=2, until_reward=0.5, objective="supervised")
    with pytest.raises(ConfigError, match="objective"):
        ClassifierFirst(objective="probe")
    cfg = GRPOConfig(classifier_first=ClassifierFirst(steps=2, objective="supervised", untie=True))
    back = config_from_dict(json.loads(json.dumps(cfg.as_dict())))
    assert back.schedule.objective.value == "supervised" and back.schedule.untie and back.as_dict() == cfg.as_dict()
