"""A 2-process data-parallel GRPO step equals the single-process step on the combined batch."""

import os

import torch
from safetensors.torch import load_file, save_file

from tests.gloo import run_ranks

CFG = dict(max_steps=1, eval_steps=0, per_device_train_batch_size=16, num_generations=4, learning_rate=1e-3,
           scale_rewards="batch", loss_type="dapo")


def _worker(rank: int, out_dir: str) -> None:
    from circuitdyn.models import load_model
    from circuitdyn.train import GRPOConfig, Trainer

    torch.set_num_threads(1)
    trainer = Trainer(load_model("zoo:llama", device="cpu"), GRPOConfig(**CFG))
    trainer.optimizer.step = lambda *a, **k: None  # compare gradients, not Adam's sign-like first step
    captured = {}
    original = trainer.algorithm.update

    def capture(run, roll, rewards, *, n_groups):
        captured.update(roll=roll, rewards=rewards)
        return original(run, roll, rewards, n_groups=n_groups)
    trainer.algorithm.update = capture
    trainer.train_step()
    roll = captured["roll"]
    tensors = {"prompt_ids": roll.prompt_ids, "prompt_mask": roll.prompt_mask, "completion_ids": roll.completion_ids,
               "completion_mask": roll.completion_mask, "rewards": captured["rewards"]}
    tensors.update({f"grad.{n}": p.grad for n, p in trainer.bridge.named_parameters() if p.grad is not None})
    save_file({k: v.contiguous() for k, v in tensors.items()}, os.path.join(out_dir, f"rank{rank}.safetensors"))


def _cat(a: torch.Tensor, b: torch.Tensor, fill) -> torch.Tensor:
    width = max(a.shape[1], b.shape[1])
    pad = lambda t: torch.cat([t, torch.full((t.shape[0], width - t.shape[1]), fill, dtype=t.dtype)], 1)
    return torch.cat([pad(a), pad(b)])


def test_two_process_grpo_step_equals_one_process(tmp_path):
    from circuitdyn.models import load_model
    from circuitdyn.train import GRPOConfig, Trainer
    from circuitdyn.train.rollout import Rollout

    run_ranks(_worker, 2, tmp_path, str(tmp_path))
    r0, r1 = (load_file(str(tmp_path / f"rank{r}.safetensors")) for r in (0, 1))
    pad = 0
    roll = Rollout(_cat(r0["prompt_ids"], r1["prompt_ids"], pad), _cat(r0["prompt_mask"], r1["prompt_mask"], False),
                   _cat(r0["completion_ids"], r1["completion_ids"], pad),
                   _cat(r0["completion_mask"], r1["completion_mask"], False), ())
    rewards = torch.cat([r0["rewards"], r1["rewards"]])
    trainer = Trainer(load_model("zoo:llama", device="cpu"), GRPOConfig(**CFG))
    trainer.optimizer.step = lambda *a, **k: None
    trainer.algorithm.update(trainer, roll, rewards, n_groups=4)
    grads = {n: p.grad for n, p in trainer.bridge.named_parameters() if p.grad is not None}
    assert grads and set(grads) == {k[5:] for k in r0 if k.startswith("grad.")}
    for name, g in grads.items():
        assert torch.allclose(r0[f"grad.{name}"], g, atol=1e-7, rtol=1e-5), name
        assert torch.equal(r0[f"grad.{name}"], r1[f"grad.{name}"]), name  # every rank takes the same step


TRAJECTORY = dict(CFG, max_steps=6, learning_rate=3e-3)


def _run_worker(rank: int, out_dir: str) -> None:
    from circuitdyn.models import load_model
    from circuitdyn.train import GRPOConfig, train

    torch.set_num_threads(1)
    model = load_model("zoo:llama", device="cpu")
    result = train(model, GRPOConfig(**TRAJECTORY))
    tensors = {n: p.detach().contiguous() for n, p in model.bridge.named_parameters()}
    tensors["rewards"] = torch.tensor([h["reward_mean"] for h in result.history])
    save_file(tensors, os.path.join(out_dir, f"run{rank}.safetensors"))


def test_a_two_process_run_follows_the_one_process_trajectory(tmp_path):
    """Six Adam steps: each row's sample is seeded by its place in the global batch, not by the rank, so the
    ranks together draw the one-process batch, and the weights stay equal to float tolerance."""
    from circuitdyn.models import load_model
    from circuitdyn.train import GRPOConfig, train

    run_ranks(_run_worker, 2, tmp_path, str(tmp_path))
    r0, r1 = (load_file(str(tmp_path / f"run{r}.safetensors")) for r in (0, 1))
    model = load_model("zoo:llama", device="cpu")
    result = train(model, GRPOConfig(**TRAJECTORY))
    rewards = torch.tensor([h["reward_mean"] for h in result.history])
    assert torch.equal(r0["rewards"], rewards), "the two ranks together drew the one-process samples"
    base = {n: p.detach() for n, p in load_model("zoo:llama", device="cpu").bridge.named_parameters()}
    for name, p in model.bridge.named_parameters():
        moved = float((p.detach() - base[name]).abs().max())
        assert moved > 1e-3, f"{name}: training moved every weight for the check to bite"
        # Adam divides by sqrt(v): float noise in a gradient near 0 becomes a visible, but small, difference
        assert float((r0[name] - p.detach()).abs().max()) <= 0.01 * moved, name
        assert torch.equal(r0[name], r1[name]), name
