"""Iterative DPO (pairs resampled from the current policy every round, best vs worst, ties skipped and
counted), its mid-round resume, and the report's words for arms: degraded arms, minimum detectable effects,
the online-vs-offline contrast over (family, seed) units."""

import math

import numpy as np
import pytest
import torch

from circuitdyn.analysis.stats import PairedStat, paired_stat
from circuitdyn.study.across import ArmEffect, online_vs_offline
from circuitdyn.study.across_report import change_words
from circuitdyn.study.config import StudyConfig
from circuitdyn.study.statistics import degraded_labels, state_claims
from circuitdyn.train import DPOConfig, Trainer, train
from circuitdyn.train.config import ConfigError
from circuitdyn.train.dpo import best_vs_worst
from tests.test_trainer import SMALL, fresh


def test_best_vs_worst_pairs_and_counts_ties():
    rewards = torch.tensor([[0.0, 1.0, 0.0, 1.0],   # a pair: first best (1), first worst (0)
                            [1.0, 1.0, 1.0, 1.0],   # all correct: skipped, counted
                            [0.0, 0.0, 0.0, 0.0],   # all wrong: skipped, counted
                            [0.2, 0.9, 0.5, 0.1]])  # graded: best 1, worst 3
    chosen, rejected, solved, unsolved = best_vs_worst(rewards)
    assert chosen == [1, 13] and rejected == [0, 15] and (solved, unsolved) == (1, 1)


def test_config_names_the_pair_source():
    assert DPOConfig().pair_source.value == "iterative"
    with pytest.raises(ConfigError, match="unknown pair_source 'online'"):
        DPOConfig(pair_source="online")
    with pytest.raises(ConfigError, match="pair_generations must be >= 2"):
        DPOConfig(pair_generations=1)
    with pytest.raises(ConfigError, match="round_steps must be > 0"):
        DPOConfig(round_steps=0)


def _recording(trainer):
    calls = []
    original = trainer.rollout

    def rollout(examples, repeats, policy=None, greedy=False, first_row=0):
        if not greedy:
            calls.append((trainer.step, policy))
        return original(examples, repeats, policy=policy, greedy=greedy, first_row=first_row)

    trainer.rollout = rollout
    return calls


def test_iterative_rounds_sample_from_the_current_policy():
    trainer = Trainer(fresh(), DPOConfig(pair_prompts=16, round_steps=2, **{**SMALL, "max_steps": 5}))
    calls = _recording(trainer)
    logs, texts = [], []
    for _ in range(5):
        logs.append(trainer.train_step())
        texts.append(trainer.algorithm.pairs[0].texts)
    assert calls == [(0, None), (2, None), (4, None)]  # None: the run's sampler, i.e. the policy being trained
    assert [h["round_start"] for h in logs] == [0, 0, 2, 2, 4]
    assert texts[0] == texts[1] and texts[1] != texts[2]  # fresh pairs each round
    for h in logs:
        assert h["pairs"] + h["prompts_all_correct"] + h["prompts_all_wrong"] == 16


def test_offline_pairs_are_sampled_once_from_the_reference():
    trainer = Trainer(fresh(), DPOConfig(pair_prompts=16, pair_source="offline", **{**SMALL, "max_steps": 3}))
    calls = _recording(trainer)
    for _ in range(3):
        trainer.train_step()
    assert calls == [(0, trainer.reference_scorer)]


@pytest.mark.parametrize("at", [2, 4])
def test_iterative_resume_mid_round_is_bit_exact(tmp_path, at):
    """Checkpoints at steps 2 and 4 fall inside rounds (round_steps=3): a resumed run keeps the round's pairs
    and samples the next round where the uninterrupted run did."""
    cfg = DPOConfig(pair_prompts=16, round_steps=3, **{**SMALL, "max_steps": 7, "save_steps": 2,
                                                      "output_dir": str(tmp_path / "d")})
    full = fresh()
    train(full, cfg)
    resumed = fresh()
    trainer = Trainer(resumed, cfg, resume_from=tmp_path / "d" / f"checkpoint-{at}")
    assert trainer.step == at and trainer.algorithm.round_start == 3 * (at // 3)
    trainer.train()
    for (n, a), (_, b) in zip(full.bridge.named_parameters(), resumed.bridge.named_parameters()):
        assert torch.equal(a, b), n


@pytest.mark.slow
def test_pure_iterative_dpo_raises_held_out_accuracy():
    result = train(fresh(), DPOConfig(max_steps=40, eval_steps=40, per_device_train_batch_size=32, pair_prompts=80,
                                      round_steps=10))
    assert result.final_accuracy > result.base_accuracy + 0.03, (result.base_accuracy, result.final_accuracy)


def test_degraded_arm_is_named_and_left_out_of_the_claims():
    correct = {"base": 100, "grpo#0": 120, "grpo#1": 110, "dpo#0": 60, "dpo#1": 150}
    assert degraded_labels(correct, ["grpo", "dpo"]) == {}  # dpo: the mean over seeds, (60 + 150) / 2 = 105
    correct["dpo#1"] = 90
    why = degraded_labels(correct, ["grpo", "dpo"])
    assert list(why) == ["dpo"] and "75.0 probe problems" in why["dpo"] and "the base 100" in why["dpo"]
    cfg = StudyConfig(granularities=("layer",))
    assert state_claims(cfg, [], ["dpo"], why) == [f"[layer] dpo left out of the claims: {why['dpo']}"]


def stat(mean, lo, hi, n=100, p=0.5, q=0.5):
    return PairedStat(n, mean, lo, hi, p, mean, p, q)


def test_minimum_detectable_effect_closed_form():
    s = stat(0.0, -0.1, 0.1)
    se = 0.2 / (2 * 1.959963984540054)
    assert math.isclose(s.minimum_detectable_effect(), (1.959963984540054 + 0.8416212335729143) * se, rel_tol=1e-12)
    assert change_words(s) == "+0 [-0.1, +0.1] no detectable change (could have seen >= 0.14)"
    assert change_words(stat(0.3, 0.1, 0.5, p=0.001, q=0.001)) == "+0.3 [+0.1, +0.5] up"
    assert change_words(stat(0.3, 0.1, 0.5, n=3)) == "+0.3 [+0.1, +0.5] too few to test"
    assert change_words(stat(0.3, 0.1, 0.5)).startswith("+0.3 [+0.1, +0.5] no detectable change \u2020 (could")


def effect(family, arm, seeds, sd=2.0, degraded=None):
    return ArmEffect(family, arm, "intensity", "layer", stat(float(np.mean(seeds)), -1, 1), sd, tuple(seeds), degraded)


def test_online_vs_offline_contrasts_magnitudes_per_family_and_seed():
    effects = [effect("a", "grpo", [0.4, -0.6]), effect("a", "dpo", [0.2, 0.2]),
               effect("b", "grpo", [1.0, 1.0], sd=4.0), effect("b", "dpo", [-2.0, 0.0], sd=4.0),
               effect("c", "grpo", [1.0]), effect("c", "dpo", [1.0], degraded="degraded: dpo answers less"),
               effect("d", "grpo", [1.0])]
    c = online_vs_offline(effects, "grpo", "dpo", "intensity", n_resamples=2000)
    expected = [0.4 / 2 - 0.1, 0.6 / 2 - 0.1, 0.25 - 0.5, 0.25 - 0.0]  # |online| / sd - |offline| / sd
    assert c.units == ("a seed 0", "a seed 1", "b seed 0", "b seed 1")
    assert c.left_out == ("c: degraded: dpo answers less", "d: no dpo pair")
    assert math.isclose(c.stat.mean, float(np.mean(expected)), rel_tol=1e-12)
    assert c.stat == paired_stat(np.asarray(expected), n_resamples=2000)


def test_an_untested_contrast_says_which_units_it_had():
    from circuitdyn.study.across import ArmContrast
    from circuitdyn.study.across_report import contrast_line

    one = contrast_line(ArmContrast("ppo", "dpo", "intensity", None, ("smollm2-135m seed 0",), ()), math.nan)
    assert one == ("- intensity: |ppo| - |dpo|: not tested (fewer than two family-seed units: only smollm2-135m "
                   "seed 0; more seeds or families give more units)")
    none = contrast_line(ArmContrast("ppo", "dpo", "intensity", None, (), ("neox: no dpo pair",)), math.nan)
    assert "units: none; neox: no dpo pair; more" in none
