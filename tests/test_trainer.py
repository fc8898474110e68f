import pytest
import torch

from circuitdyn.models import clone_model
from circuitdyn.tasks import Addition
from circuitdyn.train import (
    CFRLConfig,
    DPOConfig,
    GRPOConfig,
    PPOConfig,
    RewardError,
    Trainer,
    TrainingError,
    classifier_parameters,
    train,
)
from circuitdyn.train.checkpoint import CheckpointError
from tests.conftest import zoo_model


def fresh(family="llama"):
    return clone_model(zoo_model(family))


def snapshot(m):
    return {n: p.detach().clone() for n, p in m.bridge.named_parameters()}


SMALL = dict(max_steps=2, eval_steps=0, per_device_train_batch_size=16, learning_rate=1e-3)


@pytest.mark.parametrize("config", [GRPOConfig(num_generations=4, **SMALL), PPOConfig(**SMALL),
                                    DPOConfig(pair_prompts=64, **SMALL)], ids=["grpo", "ppo", "dpo"])
def test_two_steps_change_every_parameter(config):
    m = fresh()
    before = snapshot(m)
    result = train(m, config)
    assert len(result.history) == 2
    unchanged = [n for n, p in m.bridge.named_parameters() if torch.equal(p, before[n])]
    assert not unchanged


def test_cfrl_stage_one_trains_only_the_classifier():
    m = fresh()
    before = snapshot(m)
    trainer = Trainer(m, CFRLConfig(num_generations=4, classifier_steps=2, **{**SMALL, "max_steps": 3}))
    trainer.train_step()
    trainer.train_step()
    ids = {id(p) for p in classifier_parameters(m.bridge)}
    for name, p in m.bridge.named_parameters():
        assert torch.equal(p, before[name]) != (id(p) in ids), name
    logs = trainer.train_step()  # stage 2: everything moves
    assert logs["stage"] == "rl"
    moved = [n for n, p in m.bridge.named_parameters() if not torch.equal(p, before[n])]
    assert len(moved) == len(before)


@pytest.mark.parametrize("loss_type", ["grpo", "dapo", "dr_grpo"])
def test_gradient_accumulation_invariance(loss_type):
    """A batch of 8 in one pass and 8 accumulated micro-batches of 1 give the same gradient. (Compared
    before the optimizer: Adam's first step is ~lr * sign(g), which float noise near 0 would flip.)"""
    grads = []
    for accum in (1, 8):
        m = fresh()
        cfg = GRPOConfig(num_generations=4, gradient_accumulation_steps=accum, loss_type=loss_type,
                         **{**SMALL, "per_device_train_batch_size": 8, "max_steps": 1})
        trainer = Trainer(m, cfg)
        trainer.optimizer.step = lambda *a, **k: None
        trainer.train_step()
        grads.append({n: p.grad.clone() for n, p in m.bridge.named_parameters()})
    for name in grads[0]:
        assert torch.allclose(grads[0][name], grads[1][name], atol=1e-6, rtol=1e-5), name  # grads are ~0.1
    assert any(g.abs().max() > 1e-4 for g in grads[0].values())


@pytest.mark.parametrize("eval_steps", [0, 2], ids=["no-eval", "eval-at-the-checkpoint"])
def test_resume_matches_uninterrupted_run(tmp_path, eval_steps):
    """Also when an evaluation ran just before the checkpoint (its greedy rollouts draw no random stream)."""
    cfg = GRPOConfig(num_generations=4, beta=0.05, **{**SMALL, "max_steps": 4, "save_steps": 2, "eval_steps": eval_steps,
                                                      "output_dir": str(tmp_path / "run")})
    full = fresh()
    train(full, cfg)
    resumed = fresh()
    trainer = Trainer(resumed, cfg, resume_from=tmp_path / "run" / "checkpoint-2")
    assert trainer.step == 2
    trainer.train()
    for (n, a), (_, b) in zip(full.bridge.named_parameters(), resumed.bridge.named_parameters()):
        assert torch.equal(a, b), n


def test_resume_refuses_other_config_and_corrupt_files(tmp_path):
    cfg = GRPOConfig(num_generations=4, **{**SMALL, "output_dir": str(tmp_path / "r"), "save_steps": 1})
    train(fresh(), cfg)
    with pytest.raises(CheckpointError, match="different config"):
        Trainer(fresh(), GRPOConfig(num_generations=8, **SMALL), resume_from=tmp_path / "r" / "checkpoint-1")
    meta = tmp_path / "r" / "checkpoint-1" / "checkpoint.json"
    saved = meta.read_text()
    meta.write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        Trainer(fresh(), cfg, resume_from=tmp_path / "r" / "checkpoint-1")
    meta.write_text(saved)
    weights = tmp_path / "r" / "checkpoint-1" / "policy.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="checkpoint-1"):
        Trainer(fresh(), cfg, resume_from=tmp_path / "r" / "checkpoint-1")


def test_bad_rewards_fail_clearly():
    cfg = GRPOConfig(num_generations=4, **SMALL)
    with pytest.raises(RewardError, match="shape"):
        train(fresh(), cfg, reward=lambda prompts, completions, **kw: [1.0])
    with pytest.raises(RewardError, match="NaN"):
        train(fresh(), cfg, reward=lambda prompts, completions, **kw: [float("nan")] * len(completions))
    with pytest.raises(RewardError, match="not a list of numbers"):
        train(fresh(), cfg, reward=lambda prompts, completions, **kw: ["yes"] * len(completions))


def test_user_reward_and_logs():
    seen = {}

    def length_reward(prompts, completions, **columns):
        seen["columns"] = sorted(columns)
        seen.setdefault("rewards", []).append([float(len(c)) for c in completions])
        return seen["rewards"][-1]
    # temperature 2: the zoo model is confident, and completions of one length would tie every group
    result = train(fresh(), GRPOConfig(num_generations=4, temperature=2.0, **SMALL), reward=length_reward)
    assert seen["columns"] == ["examples"]
    first, logs = torch.tensor(seen["rewards"][0]), result.history[0]
    assert logs["reward_mean"] == pytest.approx(float(first.mean()))
    assert logs["reward_std"] == pytest.approx(float(first.std()))
    groups = first.view(-1, 4)
    assert logs["frac_reward_zero_std"] == pytest.approx(float((groups.std(1) == 0).float().mean()))
    assert logs["learning_rate"] == SMALL["learning_rate"] and logs["stage"] == "rl" and logs["step"] == 1
    assert logs["kl"] == 0.0  # beta = 0: no reference, no KL term
    assert 1 <= logs["completion_length"] <= GRPOConfig().max_completion_length
    assert logs["entropy"] > 0
    # zero advantages everywhere (every group's completions equally long) give an exactly zero gradient
    assert (logs["grad_norm"] == 0.0) == (logs["frac_reward_zero_std"] == 1.0)
    assert any(row["grad_norm"] > 0 for row in result.history)
    assert 0 <= logs["clip_ratio_low"] <= 1 and 0 <= logs["clip_ratio_high"] <= 1


def test_training_is_deterministic():
    a, b = fresh(), fresh()
    train(a, GRPOConfig(num_generations=4, **SMALL))
    train(b, GRPOConfig(num_generations=4, **SMALL))
    for (n, x), (_, y) in zip(a.bridge.named_parameters(), b.bridge.named_parameters()):
        assert torch.equal(x, y), n


@pytest.mark.parametrize("config", [
    GRPOConfig(max_steps=40, eval_steps=40, per_device_train_batch_size=64, num_generations=8),
    PPOConfig(max_steps=40, eval_steps=40, per_device_train_batch_size=64),
    DPOConfig(max_steps=40, eval_steps=40, per_device_train_batch_size=32, rpo_alpha=1.0, pair_source="offline",
              pair_prompts=256),
], ids=["grpo", "ppo", "dpo_rpo_offline"])
def test_rl_raises_held_out_accuracy(config):
    result = train(fresh(), config)
    assert result.final_accuracy > result.base_accuracy + 0.03, (result.base_accuracy, result.final_accuracy)


def test_non_finite_loss_stops_with_the_step():
    m = fresh()
    trainer = Trainer(m, GRPOConfig(num_generations=4, **SMALL))
    with torch.no_grad():
        next(m.bridge.parameters()).fill_(float("nan"))
    with pytest.raises(TrainingError, match="step 0: .*non-finite"):
        trainer.train_step()


def test_sampling_twin_shares_the_policy_weights(family):
    from circuitdyn.models.surface import sampling_twin

    m = fresh(family)
    twin = sampling_twin(m.bridge)
    # the GPT-2 and NeoX bridges compute with split copies of their fused qkv weights (and add an
    # unembedding bias): they must keep the bridge-wrapped module; the others get the fast twin
    assert (twin is m.bridge.original_model) == (family in ("gpt2", "neox"))
    ids = torch.tensor([m.tokenizer("12+34=").input_ids])
    train(m, GRPOConfig(num_generations=4, **SMALL))  # in-place updates of the bridge...
    with torch.no_grad():  # ...are what the twin computes with
        assert torch.allclose(twin(ids).logits, m.bridge(ids), atol=1e-5)


def test_dpo_from_user_pairs_and_stop_tokens():

    pairs = [(e.clean, e.answer, e.foil) for e in Addition().examples(64, split="train")]
    result = train(fresh(), DPOConfig(max_steps=30, eval_steps=30, per_device_train_batch_size=32, rpo_alpha=1.0),
                   preference_pairs=pairs)
    assert result.history[-1]["pairs"] == 64 and result.history[-1]["reward_accuracy"] > 0.5
    with pytest.raises(TrainingError, match="pair 0"):
        Trainer(fresh(), DPOConfig(**SMALL), preference_pairs=[("only prompt",)])
    m = fresh()
    plus = m.tokenizer.convert_tokens_to_ids("1")
    tr = Trainer(m, GRPOConfig(num_generations=4, stop_token_ids=(plus,), **SMALL))
    out = tr.rollout(Addition().examples(4), 4)
    for ids, mask in zip(out.completion_ids, out.completion_mask):
        kept = ids[mask].tolist()
        assert all(t != plus for t in kept[:-1])  # sampling stops at the first stop token


def test_cfrl_switches_early_when_the_reward_criterion_is_met():
    trainer = Trainer(fresh(), CFRLConfig(num_generations=4, classifier_steps=2, classifier_until_reward=0.0,
                                          **{**SMALL, "max_steps": 3}))
    stages = [trainer.train_step()["stage"] for _ in range(3)]
    assert stages == ["classifier", "rl", "rl"]  # reward >= 0 holds after the first step


def test_dpo_resumes_on_the_same_pairs(tmp_path):
    """DPO's preference pairs are checkpointed with the run, so a resumed run equals the uninterrupted one."""
    cfg = DPOConfig(pair_prompts=32, pair_source="offline",
                    **{**SMALL, "max_steps": 4, "save_steps": 2, "output_dir": str(tmp_path / "d")})
    full = fresh()
    train(full, cfg)
    assert (tmp_path / "d" / "checkpoint-2" / "algorithm.safetensors").exists()
    resumed = fresh()
    trainer = Trainer(resumed, cfg, resume_from=tmp_path / "d" / "checkpoint-2")
    assert trainer.step == 2 and trainer.algorithm.pairs is not None
    trainer.train()
    for (n, a), (_, b) in zip(full.bridge.named_parameters(), resumed.bridge.named_parameters()):
        assert torch.equal(a, b), n


def test_classifier_stage_restores_requires_grad_and_learning_rate():
    m = fresh()
    cfg = CFRLConfig(num_generations=4, classifier_steps=2, classifier_learning_rate=5e-3, **SMALL)
    trainer = Trainer(m, cfg)
    logs = trainer.train_step()
    assert logs["stage"] == "classifier" and logs["learning_rate"] == 5e-3
    assert all(p.requires_grad for p in m.bridge.parameters())  # restored on leaving the step
    assert trainer.optimizer.param_groups[0]["lr"] == cfg.learning_rate
    trainer.train()
    assert all(p.requires_grad for p in m.bridge.parameters())


def test_classifier_first_schedule_composes_with_ppo():
    """The CF-RL schedule is not tied to GRPO: under PPO, stage 1 moves only the classifier (and PPO's value
    head), stage 2 everything."""
    from circuitdyn.train import ClassifierFirst

    m = fresh()
    before = snapshot(m)
    trainer = Trainer(m, PPOConfig(classifier_first=ClassifierFirst(steps=1), **SMALL))
    assert trainer.train_step()["stage"] == "classifier"
    ids = {id(p) for p in classifier_parameters(m.bridge)}
    for name, p in m.bridge.named_parameters():
        assert torch.equal(p, before[name]) != (id(p) in ids), name
    assert trainer.train_step()["stage"] == "rl"
    assert all(not torch.equal(p, before[n]) for n, p in m.bridge.named_parameters())


def test_sampling_generator_lives_on_the_model_device():
    trainer = Trainer(fresh(), GRPOConfig(num_generations=4, **SMALL))
    assert trainer.generator.device == trainer.device


def test_top_k_one_samples_the_greedy_completion():
    """Top-k / top-p filtering are transformers' warpers: top_k=1 leaves only the argmax token."""
    from circuitdyn.models.sampling import encode_prompts, sample
    from circuitdyn.models.surface import sampling_twin

    m = zoo_model("llama")
    ids, mask = encode_prompts(m.tokenizer, [e.clean for e in Addition().examples(6, seed=1)], m.device)
    twin = sampling_twin(m.bridge)
    greedy = sample(twin, m.tokenizer, ids, mask, max_new_tokens=4, greedy=True)
    g = torch.Generator().manual_seed(0)
    top1 = sample(twin, m.tokenizer, ids, mask, max_new_tokens=4, top_k=1, temperature=2.0, generator=g)
    assert greedy.texts == top1.texts
    nucleus = sample(twin, m.tokenizer, ids, mask, max_new_tokens=4, top_p=1e-6, temperature=2.0, generator=g)
    assert nucleus.texts == greedy.texts  # the smallest nucleus is the most likely token alone


def test_ppo_value_loss_leaves_the_policy_gradients_unchanged():
    """The value head reads the hidden state detached: with and without the value loss, every policy
    parameter gets the same gradient, and only the head's gradient differs."""
    from circuitdyn.train import losses
    from circuitdyn.train.rollout import token_logprobs

    m = fresh()
    trainer = Trainer(m, PPOConfig(**SMALL))
    head = trainer.algorithm.value_head
    torch.nn.init.normal_(head.weight)
    roll = trainer.rollout(trainer.prompts(8), 1)
    grads = []
    for vf_coef in (0.0, 1.0):
        trainer.optimizer.zero_grad(set_to_none=True)
        logp, _, values = token_logprobs(trainer.scorer, roll, value_head=head)
        mask = roll.completion_mask
        pg, vf, _ = losses.ppo_losses(logp, logp.detach(), values, values.detach() + 1, torch.ones_like(logp),
                                      torch.zeros_like(logp), mask, cliprange=0.2, cliprange_value=0.2,
                                      n_tokens=int(mask.sum()))
        (pg + vf_coef * vf).backward()
        grads.append([p.grad.clone() if p.grad is not None else None for p in m.bridge.parameters()])
        assert (head.weight.grad is not None) == (vf_coef > 0) or head.weight.grad.abs().sum() == 0
    assert any(g is not None for g in grads[0])
    for a, b in zip(*grads):
        assert (a is None and b is None) or torch.equal(a, b)


def test_repeated_prompts_share_their_prefill_and_sample_as_if_alone(family):
    """Rows repeating a prompt run its prefill once and copy the KV cache: every row draws the tokens it
    draws when sampled alone with its own stream, greedy rows decode the same, and the cache copy is taken."""
    from circuitdyn.models import sampling
    from circuitdyn.models.surface import sampling_twin

    m = zoo_model(family)
    twin = sampling_twin(m.bridge)
    prompts = [e.clean for e in Addition().examples(3, seed=2) for _ in range(4)]
    ids, mask = sampling.encode_prompts(m.tokenizer, prompts, m.device)
    seeds = list(range(100, 100 + len(prompts)))
    calls = []
    real = twin.forward

    def counting(*a, **k):
        calls.append(k["input_ids"].shape[0])
        return real(*a, **k)

    twin.forward = counting
    try:
        together = sampling.sample(twin, m.tokenizer, ids, mask, max_new_tokens=4, temperature=1.5, row_seeds=seeds)
        greedy = sampling.sample(twin, m.tokenizer, ids, mask, max_new_tokens=4, greedy=True)
    finally:
        del twin.forward
    assert calls[0] == 3  # the prefill ran the three distinct prompts
    for i in range(len(prompts)):
        alone = sampling.sample(twin, m.tokenizer, ids[i:i + 1], mask[i:i + 1], max_new_tokens=4, temperature=1.5,
                                row_seeds=[seeds[i]])
        assert alone.texts[0] == together.texts[i], i
        one = sampling.sample(twin, m.tokenizer, ids[i:i + 1], mask[i:i + 1], max_new_tokens=4, greedy=True)
        assert one.texts[0] == greedy.texts[i], i
    assert len(set(together.texts)) > 3  # the rows of a prompt decoded apart
