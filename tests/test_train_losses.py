import math

import pytest
import torch

from circuitdyn.train import losses as L
from circuitdyn.train.config import (
    CFRLConfig,
    ConfigError,
    DPOConfig,
    GRPOConfig,
    LossType,
    PPOConfig,
    ScaleRewards,
)
from circuitdyn.train.registry import config_from_dict


def test_group_advantages_by_hand():
    r = torch.tensor([[1.0, 0.0, 0.0, 1.0], [1.0, 1.0, 1.0, 1.0]])
    std = math.sqrt(1 / 3)  # unbiased std of [1, 0, 0, 1]
    a = L.group_advantages(r, ScaleRewards.GROUP, eps=0.0)
    assert torch.allclose(a[0], torch.tensor([0.5, -0.5, -0.5, 0.5]) / std)
    assert torch.equal(L.group_advantages(r, ScaleRewards.GROUP, eps=1e-4)[1], torch.zeros(4))
    assert torch.allclose(L.group_advantages(r, ScaleRewards.NONE)[0], torch.tensor([0.5, -0.5, -0.5, 0.5]))
    b = L.group_advantages(r, ScaleRewards.BATCH, eps=0.0)
    assert torch.allclose(b[0], torch.tensor([0.5, -0.5, -0.5, 0.5]) / r.std())


def test_k3_kl():
    logp, ref = torch.tensor([-1.0, -2.0]), torch.tensor([-1.5, -2.0])
    d = ref - logp
    assert torch.allclose(L.k3_kl(logp, ref), torch.exp(d) - d - 1)
    assert L.k3_kl(logp, ref)[1] == 0 and (L.k3_kl(logp, ref) >= 0).all()


def test_grpo_loss_by_hand():
    logp = torch.tensor([[math.log(1.5), 0.0], [math.log(0.5), 0.0]])
    old = torch.zeros(2, 2)
    adv = torch.tensor([1.0, -1.0])
    mask = torch.tensor([[1, 0], [1, 1]])
    loss, st = L.grpo_loss(logp, old, adv, mask, epsilon=0.2, epsilon_high=0.28, loss_type=LossType.DAPO,
                           n_sequences=2, n_tokens=3, max_len=2)
    # token (0,0): ratio 1.5, A=+1 -> min(1.5, 1.28) = 1.28; token (1,0): ratio 0.5, A=-1 -> min(-0.5, -0.8) = -0.8;
    # token (1,1): ratio 1, A=-1 -> -1. Per-token loss is the negative; DAPO averages over the 3 tokens.
    assert float(loss) == pytest.approx(-(1.28 - 0.8 - 1.0) / 3)
    assert int(st["clip_high"]) == 1 and int(st["clip_low"]) == 1
    g, _ = L.grpo_loss(logp, old, adv, mask, epsilon=0.2, epsilon_high=0.28, loss_type=LossType.GRPO,
                       n_sequences=2, n_tokens=3, max_len=2)
    assert float(g) == pytest.approx(-(1.28 + (-0.8 - 1.0) / 2) / 2)
    dr, _ = L.grpo_loss(logp, old, adv, mask, epsilon=0.2, epsilon_high=0.28, loss_type=LossType.DR_GRPO,
                        n_sequences=2, n_tokens=3, max_len=2)
    assert float(dr) == pytest.approx(-(1.28 - 0.8 - 1.0) / 4)


def test_grpo_kl_term():
    logp = torch.zeros(1, 2)
    ref = torch.tensor([[-0.5, 0.0]])
    loss, st = L.grpo_loss(logp, logp, torch.zeros(1), torch.ones(1, 2), epsilon=0.2, epsilon_high=0.2,
                           loss_type=LossType.DAPO, n_sequences=1, n_tokens=2, max_len=2, ref_logp=ref, beta=0.1)
    kl0 = math.exp(-0.5) + 0.5 - 1
    assert float(loss) == pytest.approx(0.1 * kl0 / 2)
    assert float(st["kl"]) == pytest.approx(kl0 / 2)


def test_gae_by_hand():
    rewards = torch.tensor([[0.0, 0.0, 1.0]])
    values = torch.tensor([[0.5, 0.6, 0.7]])
    mask = torch.ones(1, 3)
    gamma, lam = 0.9, 0.8
    d2 = 1.0 - 0.7
    d1 = 0.0 + gamma * 0.7 - 0.6
    d0 = 0.0 + gamma * 0.6 - 0.5
    a2 = d2
    a1 = d1 + gamma * lam * a2
    a0 = d0 + gamma * lam * a1
    adv, ret = L.gae(rewards, values, mask, gamma, lam)
    assert torch.allclose(adv, torch.tensor([[a0, a1, a2]]))
    assert torch.allclose(ret, adv + values)
    # a masked tail is terminal: the last real token bootstraps from nothing
    adv2, _ = L.gae(torch.tensor([[0.0, 1.0, 5.0]]), values, torch.tensor([[1.0, 1.0, 0.0]]), gamma, lam)
    assert adv2[0, 2] == 0 and float(adv2[0, 1]) == pytest.approx(1.0 - 0.6)


def test_ppo_losses_by_hand():
    logp, old = torch.tensor([[math.log(1.5)]]), torch.zeros(1, 1)
    pg, vf, st = L.ppo_losses(logp, old, torch.tensor([[2.0]]), torch.tensor([[1.0]]), torch.tensor([[1.0]]),
                              torch.tensor([[0.0]]), torch.ones(1, 1), cliprange=0.2, cliprange_value=0.5, n_tokens=1)
    assert float(pg) == pytest.approx(-1.2)  # max(-1.5, -1.2)
    assert float(vf) == pytest.approx(0.5 * max(2.0**2, 1.5**2))
    assert float(st["clip_frac"]) == 1.0


def test_dpo_loss_by_hand():
    loss, st = L.dpo_loss(torch.tensor([-1.0]), torch.tensor([-3.0]), torch.tensor([-2.0]), torch.tensor([-2.0]), 0.5)
    assert float(loss) == pytest.approx(-math.log(1 / (1 + math.exp(-0.5 * 2.0))))
    assert float(st["reward_accuracy"]) == 1.0
    rpo, _ = L.dpo_loss(torch.tensor([-1.0]), torch.tensor([-3.0]), torch.tensor([-2.0]), torch.tensor([-2.0]), 0.5,
                        rpo_alpha=2.0, chosen_tokens=torch.tensor([4]))
    assert float(rpo) == pytest.approx(float(loss) + 2.0 * 1.0 / 4)


def test_config_validation():
    with pytest.raises(ConfigError, match="divisible by num_generations"):
        GRPOConfig(per_device_train_batch_size=10, num_generations=4)
    with pytest.raises(ConfigError, match="gradient_accumulation_steps"):
        GRPOConfig(per_device_train_batch_size=16, num_generations=4, gradient_accumulation_steps=3)
    with pytest.raises(ConfigError, match="num_generations must be >= 2"):
        GRPOConfig(num_generations=1, per_device_train_batch_size=4)
    with pytest.raises(ConfigError, match="learning_rate"):
        PPOConfig(learning_rate=0)
    with pytest.raises(ConfigError, match="loss_type"):
        GRPOConfig(loss_type="bogus")
    with pytest.raises(ConfigError, match="classifier_steps"):
        CFRLConfig(max_steps=5, classifier_steps=9)
    with pytest.raises(ConfigError, match="top_p"):
        DPOConfig(top_p=1.5)
    cfg = CFRLConfig(classifier_steps=3)
    assert config_from_dict(cfg.as_dict()) == cfg
    with pytest.raises(ConfigError, match="algorithm"):
        config_from_dict({"algorithm": "a2c"})


def test_batch_scaled_advantages_take_the_global_std():
    """Data-parallel GRPO divides by the std over every rank's rewards, passed in as batch_std."""
    r = torch.tensor([[1.0, 0.0, 0.0, 1.0], [1.0, 1.0, 1.0, 1.0]])
    centred = r - r.mean(1, keepdim=True)
    assert torch.equal(L.group_advantages(r, ScaleRewards.BATCH, eps=0.0, batch_std=torch.tensor(2.0)), centred / 2)
    assert torch.equal(L.group_advantages(r, ScaleRewards.BATCH, eps=0.0), centred / r.std())
