"""The trainer: GRPO, CF-RL, PPO and DPO on the hooked model itself.

The policy IS the TransformerBridge of a LoadedModel: rollouts, losses and updates run on its parameters,
so attribution can read the model at any step without a copy. Dropout stays off (eval mode) throughout,
which makes runs deterministic on CPU for a given seed, and resumable to the same result.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, Sequence

import torch
import torch.distributed as dist
from torch import Tensor
from tqdm.auto import tqdm

from circuitdyn.models import LoadedModel, clone_bridge
from circuitdyn.tasks import get_task
from circuitdyn.tasks.base import Task, TaskExample
from circuitdyn.train import losses as L
from circuitdyn.train.checkpoint import load_checkpoint, save_checkpoint
from circuitdyn.train.config import CFRLConfig, DPOConfig, GRPOConfig, PPOConfig, ScaleRewards, TrainConfig
from circuitdyn.train.rewards import RewardFn, compute_rewards, task_reward
from circuitdyn.train.rollout import Rollout, encode_prompts, sample, sampling_twin, token_logprobs


class TrainingError(RuntimeError):
    """Training cannot continue (non-finite loss or gradients); the message names the step and source."""


class Callback(Protocol):
    def on_step_end(self, trainer: "Trainer", step: int, logs: dict[str, Any]) -> dict[str, Any] | None: ...


@dataclass
class TrainResult:
    history: list[dict[str, Any]]
    base_accuracy: float
    final_accuracy: float
    checkpoint: Path | None = None
    seconds: float = 0.0
    snapshots: list[dict[str, Any]] = field(default_factory=list)


def _rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _all_sum(t: Tensor) -> Tensor:
    """Sum over ranks (identity in a single process)."""
    if _rank_world()[1] > 1:
        t = t.clone()
        dist.all_reduce(t)
    return t


def _all_reduce_grads(optimizer: torch.optim.Optimizer) -> None:
    """Sum gradients over ranks: every loss term is already divided by the global normaliser."""
    if _rank_world()[1] == 1:
        return
    for group in optimizer.param_groups:
        for p in group["params"]:
            if p.requires_grad:
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
                dist.all_reduce(p.grad)


def classifier_parameters(bridge: Any, *, final_norm: bool = False) -> list[torch.nn.Parameter]:
    """The classifier: the unembedding (tied to the embedding where the model ties them) and optionally
    the final norm."""
    params = list(bridge.unembed.parameters())
    if final_norm:
        params += list(bridge.ln_final.parameters())
    return params


class Trainer:
    def __init__(self, model: LoadedModel, config: TrainConfig, *, task: Task | None = None,
                 reward: RewardFn | None = None, callbacks: Sequence[Callback] = (),
                 resume_from: str | Path | None = None,
                 preference_pairs: Sequence[tuple[str, str, str]] | None = None) -> None:
        """`preference_pairs` (DPO only): user data as (prompt, chosen completion, rejected completion);
        without them, pairs are sampled from the reference model and labelled by the reward."""
        if not isinstance(model, LoadedModel):
            raise TypeError("Trainer needs a LoadedModel from circuitdyn.models.load_model")
        self.model, self.config = model, config
        self.bridge = model.bridge
        self.bridge.eval()  # no dropout: deterministic, resumable runs
        self.tokenizer = model.tokenizer
        self.task = task or get_task(config.task)
        self.reward_fn = reward or task_reward(self.task)
        self.callbacks = list(callbacks)
        self.device = model.device
        rank, world = _rank_world()
        if world > 1 and isinstance(config, (PPOConfig, DPOConfig)):
            raise TrainingError("data-parallel training supports GRPO and CF-RL; run PPO and DPO in one process")
        # prompts come from the shared stream (the same on every rank); samples from a per-rank stream
        self.generator = torch.Generator(device="cpu").manual_seed(config.seed + 1_000_003 * rank)
        self.py_random = random.Random(config.seed)
        torch.manual_seed(config.seed)  # value-head initialisation
        self.value_head: torch.nn.Module | None = None
        if isinstance(config, PPOConfig):
            self.value_head = torch.nn.Linear(int(self.bridge.cfg.d_model), 1).to(self.device)
            torch.nn.init.zeros_(self.value_head.weight)
            torch.nn.init.zeros_(self.value_head.bias)
        needs_ref = isinstance(config, (PPOConfig, DPOConfig)) or (isinstance(config, GRPOConfig) and config.beta > 0)
        self.reference = self._frozen_copy() if needs_ref else None
        self.sampler = sampling_twin(self.bridge)
        classifier = classifier_parameters(self.bridge, final_norm=getattr(config, "train_final_norm", False))
        ids = {id(p) for p in classifier}
        backbone = [p for p in self.bridge.parameters() if id(p) not in ids]
        groups = [{"params": classifier, "name": "classifier"}, {"params": backbone, "name": "backbone"}]
        if self.value_head is not None:
            groups.append({"params": list(self.value_head.parameters()), "name": "value_head"})
        self.optimizer = torch.optim.AdamW(groups, lr=config.learning_rate, weight_decay=config.weight_decay,
                                           betas=(config.adam_beta1, config.adam_beta2))
        self.classifier, self.backbone = classifier, backbone
        self.step = 0
        self._switched = False  # CF-RL left the classifier stage early (classifier_until_reward reached)
        self.history: list[dict[str, Any]] = []
        self.eval_examples = self.task.examples(config.eval_size, seed=config.seed + 10_000, split="test")
        self.pairs: tuple[Rollout, Rollout, Tensor, Tensor] | None = None
        if preference_pairs is not None:
            if not isinstance(config, DPOConfig):
                raise TypeError("preference_pairs are for DPO (DPOConfig)")
            self.pairs = self._pairs_from_data(preference_pairs)
        self.base_accuracy: float | None = None
        if resume_from is not None:
            self._resume(Path(resume_from))

    # ---- helpers --------------------------------------------------------------------------------------
    def _frozen_copy(self) -> Any:
        ref = clone_bridge(self.bridge)
        ref.eval()
        for p in ref.parameters():
            p.requires_grad_(False)
        return ref

    def _modules(self) -> dict[str, torch.nn.Module]:
        mods: dict[str, torch.nn.Module] = {"policy": self.bridge.original_model}
        if self.value_head is not None:
            mods["value_head"] = self.value_head
        return mods

    def _prompts(self, n: int) -> list[TaskExample]:
        return self.task.examples(n, seed=self.py_random.randrange(2**31), split="train")

    def _rollout(self, examples: Sequence[TaskExample], repeats: int, bridge: Any = None, greedy: bool = False) -> Rollout:
        prompts = [ex.clean for ex in examples for _ in range(repeats)]
        ids, mask = encode_prompts(self.tokenizer, prompts, self.device)
        try:
            return sample(bridge or self.sampler, self.tokenizer, ids, mask, max_new_tokens=self.config.max_completion_length,
                          temperature=self.config.temperature, top_p=self.config.top_p, generator=self.generator,
                          greedy=greedy, stop_token_ids=self.config.stop_token_ids)
        except FloatingPointError as err:
            raise TrainingError(f"step {self.step}: {err}; the weights are no longer finite. Lower learning_rate; "
                                "the last checkpoint is intact") from None

    def accuracy(self, examples: Sequence[TaskExample] | None = None) -> float:
        """Held-out accuracy: mean reward of greedy completions."""
        examples = list(examples or self.eval_examples)
        out = self._rollout(examples, 1, greedy=True)
        return float(compute_rewards(self.reward_fn, [e.clean for e in examples], out.texts, examples, step=self.step).mean())

    def _set_stage(self, classifier_only: bool) -> None:
        for p in self.backbone:
            p.requires_grad_(not classifier_only)
        lr = self.config.learning_rate
        if classifier_only and isinstance(self.config, CFRLConfig) and self.config.classifier_learning_rate:
            lr = self.config.classifier_learning_rate
        self.optimizer.param_groups[0]["lr"] = lr

    def _stage(self) -> str:
        cfg = self.config
        if not isinstance(cfg, CFRLConfig):
            return "rl"
        if self._switched or self.step >= cfg.classifier_steps:
            return "rl"
        return "classifier"

    def _optimizer_step(self, source: str) -> float:
        params = [p for g in self.optimizer.param_groups for p in g["params"] if p.grad is not None]
        norm = torch.nn.utils.clip_grad_norm_(params, self.config.max_grad_norm)
        if not torch.isfinite(norm):
            raise TrainingError(f"step {self.step}: non-finite gradient norm from the {source}; the update was "
                                "skipped and the last checkpoint is intact. Lower learning_rate or check the rewards")
        self.optimizer.step()
        return float(norm)

    def _micro(self, n: int) -> list[slice]:
        k = self.config.gradient_accumulation_steps
        size = n // k
        return [slice(i * size, (i + 1) * size) for i in range(k)]

    @staticmethod
    def _check_loss(loss: Tensor, step: int, name: str) -> None:
        if not torch.isfinite(loss):
            raise TrainingError(f"step {step}: the {name} loss is {float(loss)}; training stopped before the update, "
                                "the last checkpoint is intact")

    # ---- algorithms -----------------------------------------------------------------------------------
    def _grpo_step(self, cfg: GRPOConfig) -> dict[str, Any]:
        G = cfg.num_generations
        P = cfg.per_device_train_batch_size // G
        examples = self._prompts(P)  # the global batch: the same on every rank
        rank, world = _rank_world()
        if P % world:
            raise TrainingError(f"{P} prompt groups per step cannot be split over {world} ranks: make "
                                "per_device_train_batch_size / num_generations a multiple of the world size")
        mine = examples[rank * P // world:(rank + 1) * P // world]
        roll = self._rollout(mine, G)
        rep = [ex for ex in mine for _ in range(G)]
        rewards = compute_rewards(self.reward_fn, [e.clean for e in rep], roll.texts, rep, step=self.step)
        return self.grpo_update(roll, rewards, n_groups=P)

    def grpo_update(self, roll: Rollout, rewards: Tensor, *, n_groups: int) -> dict[str, Any]:
        """One GRPO update on this process's rollout (whole groups of num_generations rows). Under
        torch.distributed the token/sequence normalisers and the batch reward spread are global and the
        gradients are summed over ranks, so the update equals a single process on the combined batch."""
        cfg = self.config
        assert isinstance(cfg, GRPOConfig)
        G = cfg.num_generations
        P_local = rewards.numel() // G
        scale = cfg.scale_rewards
        adv = L.group_advantages(rewards.view(P_local, G), scale if scale is not ScaleRewards.BATCH else ScaleRewards.NONE,
                                 cfg.advantage_eps)
        r_sum, r_sq, r_n = _all_sum(torch.stack([rewards.sum(), (rewards**2).sum(), torch.tensor(float(rewards.numel()))]))
        r_mean = r_sum / r_n
        r_std = torch.sqrt(torch.clamp((r_sq - r_n * r_mean**2) / torch.clamp(r_n - 1, min=1), min=0))
        if scale is ScaleRewards.BATCH:
            adv = adv / (r_std + cfg.advantage_eps)
        adv = adv.flatten().to(self.device)
        mask = roll.completion_mask
        n_seq, max_len = n_groups * G, cfg.max_completion_length
        n_tok = int(_all_sum(mask.sum().float()))
        with torch.no_grad():
            old = token_logprobs(self.bridge, roll)[0] if cfg.num_iterations > 1 else None
            ref = token_logprobs(self.reference, roll)[0] if self.reference is not None else None
        eps_high = cfg.epsilon_high if cfg.epsilon_high is not None else cfg.epsilon
        stats = torch.zeros(5)  # loss, clip_low, clip_high, kl, entropy (sums over the whole batch)
        grad_norm = 0.0
        for _ in range(cfg.num_iterations):
            self.optimizer.zero_grad(set_to_none=True)
            for rows in self._micro(rewards.numel()):
                logp, ent, _ = token_logprobs(self.bridge, roll, rows=rows)
                old_rows = old[rows] if old is not None else logp.detach()
                loss, st = L.grpo_loss(logp, old_rows, adv[rows], mask[rows], epsilon=cfg.epsilon, epsilon_high=eps_high,
                                       loss_type=cfg.loss_type, n_sequences=n_seq, n_tokens=n_tok, max_len=max_len,
                                       ref_logp=ref[rows] if ref is not None else None, beta=cfg.beta)
                self._check_loss(loss, self.step, "GRPO")
                loss.backward()
                m_tok = float(mask[rows].sum())
                stats += torch.tensor([loss.item(), float(st["clip_low"]), float(st["clip_high"]),
                                       float(st.get("kl", 0.0)) * m_tok, float((ent * mask[rows]).sum())])
            _all_reduce_grads(self.optimizer)
            grad_norm = self._optimizer_step("GRPO loss")
        stats = _all_sum(stats) / cfg.num_iterations
        zero_std = _all_sum(torch.tensor([float((rewards.view(P_local, G).std(1) == 0).sum())]))[0] / n_groups
        tok = max(n_tok, 1)
        return {"reward_mean": float(r_mean), "reward_std": float(r_std), "frac_reward_zero_std": float(zero_std),
                "loss": float(stats[0]), "clip_ratio_low": float(stats[1]) / tok, "clip_ratio_high": float(stats[2]) / tok,
                "kl": float(stats[3]) / tok, "entropy": float(stats[4]) / tok,
                "completion_length": n_tok / n_seq, "grad_norm": grad_norm}

    def _ppo_step(self, cfg: PPOConfig) -> dict[str, Any]:
        assert self.value_head is not None and self.reference is not None
        n = cfg.per_device_train_batch_size
        examples = self._prompts(n)
        roll = self._rollout(examples, 1)
        rewards = compute_rewards(self.reward_fn, [e.clean for e in examples], roll.texts, examples, step=self.step)
        mask = roll.completion_mask
        with torch.no_grad():
            old_logp, _, old_values = token_logprobs(self.bridge, roll, value_head=self.value_head)
            ref_logp = token_logprobs(self.reference, roll)[0]
            kl = (old_logp - ref_logp) * mask
            token_rewards = -cfg.kl_coef * kl
            last = (mask.sum(1) - 1).clamp(min=0)
            token_rewards[torch.arange(n), last] += rewards.to(self.device)
            adv, returns = L.gae(token_rewards, old_values, mask, cfg.gamma, cfg.lam)
            if cfg.whiten_advantages:
                adv = L.whiten(adv, mask)
        n_tok = int(mask.sum())
        totals = {"pg_loss": 0.0, "vf_loss": 0.0, "clip_frac": 0.0, "entropy": 0.0}
        grad_norm = 0.0
        for _ in range(cfg.num_ppo_epochs):
            self.optimizer.zero_grad(set_to_none=True)
            for rows in self._micro(n):
                logp, ent, values = token_logprobs(self.bridge, roll, value_head=self.value_head, rows=rows)
                assert values is not None
                pg, vf, st = L.ppo_losses(logp, old_logp[rows], values, old_values[rows], adv[rows], returns[rows],
                                          mask[rows], cliprange=cfg.cliprange, cliprange_value=cfg.cliprange_value, n_tokens=n_tok)
                loss = pg + cfg.vf_coef * vf
                self._check_loss(loss, self.step, "PPO")
                loss.backward()
                totals["pg_loss"] += pg.item() / cfg.num_ppo_epochs
                totals["vf_loss"] += vf.item() / cfg.num_ppo_epochs
                totals["clip_frac"] += float(st["clip_frac"]) / cfg.num_ppo_epochs
                totals["entropy"] += float((ent * mask[rows]).sum()) / max(n_tok, 1) / cfg.num_ppo_epochs
            grad_norm = self._optimizer_step("PPO loss")
        return {"reward_mean": float(rewards.mean()), "reward_std": float(rewards.std()),
                "kl": float(kl.sum() / max(n_tok, 1)), "completion_length": float(mask.sum(1).float().mean()),
                "grad_norm": grad_norm, **totals}

    def _build_pairs(self, cfg: DPOConfig) -> tuple[Rollout, Rollout, Tensor, Tensor]:
        """(chosen, rejected) completions sampled from the reference model, and its log-probs of both."""
        assert self.reference is not None
        examples = self._prompts(cfg.pair_prompts)
        roll = self._rollout(examples, cfg.pair_generations, bridge=self.reference)
        rep = [ex for ex in examples for _ in range(cfg.pair_generations)]
        rewards = compute_rewards(self.reward_fn, [e.clean for e in rep], roll.texts, rep, step=0).view(len(examples), -1)
        chosen, rejected = [], []
        for i in range(len(examples)):
            good, bad = torch.nonzero(rewards[i] > 0.5).flatten(), torch.nonzero(rewards[i] <= 0.5).flatten()
            if len(good) and len(bad):
                chosen.append(i * cfg.pair_generations + int(good[0]))
                rejected.append(i * cfg.pair_generations + int(bad[0]))
        if not chosen:
            raise TrainingError("DPO: no prompt gave both a correct and an incorrect completion from the reference "
                                "model; raise pair_generations or temperature, or pass pairs from user data")

        def pick(idx: list[int]) -> Rollout:
            t = torch.tensor(idx, device=self.device)
            return Rollout(roll.prompt_ids[t], roll.prompt_mask[t], roll.completion_ids[t], roll.completion_mask[t],
                           tuple(roll.texts[i] for i in idx))
        c, r = pick(chosen), pick(rejected)
        with torch.no_grad():
            ref_c = (token_logprobs(self.reference, c)[0] * c.completion_mask).sum(1)
            ref_r = (token_logprobs(self.reference, r)[0] * r.completion_mask).sum(1)
        return c, r, ref_c, ref_r

    def _completion_rollout(self, prompts: list[str], completions: list[str]) -> Rollout:
        ids, mask = encode_prompts(self.tokenizer, prompts, self.device)
        rows = [list(self.tokenizer(c, add_special_tokens=False)["input_ids"]) + [self.tokenizer.eos_token_id] for c in completions]
        width = max(map(len, rows))
        pad = self.tokenizer.pad_token_id
        cids = torch.tensor([r + [pad] * (width - len(r)) for r in rows], device=self.device)
        cmask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows], dtype=torch.bool, device=self.device)
        return Rollout(ids, mask, cids, cmask, tuple(completions))

    def _pairs_from_data(self, pairs: Sequence[tuple[str, str, str]]) -> tuple[Rollout, Rollout, Tensor, Tensor]:
        assert self.reference is not None
        if not pairs:
            raise TrainingError("preference_pairs is empty: give (prompt, chosen, rejected) triples")
        for i, p in enumerate(pairs):
            if len(p) != 3 or not all(isinstance(x, str) and x for x in p):
                raise TrainingError(f"preference pair {i} must be (prompt, chosen, rejected) non-empty strings, got {p!r}")
        prompts = [p[0] for p in pairs]
        c = self._completion_rollout(prompts, [p[1] for p in pairs])
        r = self._completion_rollout(prompts, [p[2] for p in pairs])
        with torch.no_grad():
            ref_c = (token_logprobs(self.reference, c)[0] * c.completion_mask).sum(1)
            ref_r = (token_logprobs(self.reference, r)[0] * r.completion_mask).sum(1)
        return c, r, ref_c, ref_r

    def _dpo_step(self, cfg: DPOConfig) -> dict[str, Any]:
        if self.pairs is None:
            self.pairs = self._build_pairs(cfg)
        c, r, ref_c, ref_r = self.pairs
        n = cfg.per_device_train_batch_size
        idx = torch.tensor([self.py_random.randrange(len(c.texts)) for _ in range(n)], device=self.device)

        def sub(x: Rollout) -> Rollout:
            return Rollout(x.prompt_ids[idx], x.prompt_mask[idx], x.completion_ids[idx], x.completion_mask[idx], ())
        cs, rs = sub(c), sub(r)
        self.optimizer.zero_grad(set_to_none=True)
        total, stats = 0.0, {"reward_margin": 0.0, "reward_accuracy": 0.0}
        for rows in self._micro(n):
            pc = (token_logprobs(self.bridge, cs, rows=rows)[0] * cs.completion_mask[rows]).sum(1)
            pr = (token_logprobs(self.bridge, rs, rows=rows)[0] * rs.completion_mask[rows]).sum(1)
            loss, st = L.dpo_loss(pc, pr, ref_c[idx][rows], ref_r[idx][rows], cfg.beta, rpo_alpha=cfg.rpo_alpha,
                                  chosen_tokens=cs.completion_mask[rows].sum(1))
            weight = (rows.stop - rows.start) / n  # micro-batch means recombine into the batch mean
            self._check_loss(loss, self.step, "DPO")
            (loss * weight).backward()
            total += loss.item() * weight
            for k in stats:
                stats[k] += float(st[k]) * weight
        grad_norm = self._optimizer_step("DPO loss")
        return {"loss": total, "grad_norm": grad_norm, "pairs": len(c.texts), **stats}

    # ---- loop -----------------------------------------------------------------------------------------
    def train_step(self) -> dict[str, Any]:
        cfg = self.config
        t0 = time.perf_counter()
        stage = self._stage()
        if isinstance(cfg, CFRLConfig):
            self._set_stage(stage == "classifier")
        if isinstance(cfg, PPOConfig):
            logs = self._ppo_step(cfg)
        elif isinstance(cfg, DPOConfig):
            logs = self._dpo_step(cfg)
        else:
            assert isinstance(cfg, GRPOConfig)
            logs = self._grpo_step(cfg)
        self.step += 1
        if isinstance(cfg, CFRLConfig) and stage == "classifier" and cfg.classifier_until_reward is not None \
                and logs["reward_mean"] >= cfg.classifier_until_reward:
            self._switched = True
        logs = {"step": self.step, "algorithm": cfg.algorithm.value, "stage": stage,
                "learning_rate": self.optimizer.param_groups[0]["lr"], **logs}
        if cfg.eval_steps and (self.step % cfg.eval_steps == 0 or self.step == cfg.max_steps):
            logs["eval_accuracy"] = self.accuracy()
        for cb in self.callbacks:
            logs.update(cb.on_step_end(self, self.step, logs) or {})
        logs["seconds"] = time.perf_counter() - t0
        return logs

    def train(self) -> TrainResult:
        cfg = self.config
        t0 = time.perf_counter()
        if self.base_accuracy is None:
            self.base_accuracy = self.accuracy() if cfg.eval_steps else float("nan")
        out_dir = Path(cfg.output_dir) if cfg.output_dir else None
        log_file = (out_dir / "log.jsonl") if out_dir else None
        if out_dir:
            out_dir.mkdir(parents=True, exist_ok=True)
        for cb in self.callbacks:
            if hasattr(cb, "on_train_begin"):
                cb.on_train_begin(self)
        bar = tqdm(total=cfg.max_steps, initial=self.step, desc=cfg.algorithm.value, disable=not cfg.progress)
        checkpoint = None
        while self.step < cfg.max_steps:
            logs = self.train_step()
            self.history.append(logs)
            if log_file is not None:
                with log_file.open("a") as f:
                    f.write(json.dumps(logs) + "\n")
            bar.update(1)
            bar.set_postfix(reward=f"{logs.get('reward_mean', logs.get('loss', 0)):.3f}")
            if out_dir and cfg.save_steps and self.step % cfg.save_steps == 0:
                checkpoint = self.save(out_dir / f"checkpoint-{self.step}")
        bar.close()
        final = self.history[-1].get("eval_accuracy") if self.history else None
        if final is None:
            final = self.accuracy() if cfg.eval_steps else float("nan")
        if out_dir:
            checkpoint = self.save(out_dir / "final")
        return TrainResult(self.history, float(self.base_accuracy), float(final), checkpoint, time.perf_counter() - t0)

    # ---- persistence ----------------------------------------------------------------------------------
    def save(self, folder: Path) -> Path:
        state = {"step": self.step, "config": self.config.as_dict(), "history": self.history,
                 "base_accuracy": self.base_accuracy, "switched": self._switched}
        return save_checkpoint(folder, modules=self._modules(), optimizer=self.optimizer, generator=self.generator,
                               py_random=self.py_random, state=state)

    def _resume(self, folder: Path) -> None:
        from circuitdyn.train.checkpoint import CheckpointError, read_checkpoint_meta

        if isinstance(self.config, DPOConfig):
            raise CheckpointError("resuming DPO is not supported: its preference pairs are not checkpointed; "
                                  "DPO runs are short, rerun from the start")
        meta_cfg = read_checkpoint_meta(folder)["state"]["config"]  # checked before any weights are loaded
        ours = json.loads(json.dumps(self.config.as_dict()))  # the form it was saved in (tuples become lists)
        # fields that do not change the trajectory may differ (run longer, write elsewhere, log differently)
        free = {"max_steps", "output_dir", "progress", "save_steps", "logging_steps", "eval_steps"}
        if {k: v for k, v in meta_cfg.items() if k not in free} != \
                {k: v for k, v in ours.items() if k not in free}:
            raise CheckpointError(f"{folder}: saved with a different config; resume with the config it was saved with")
        state = load_checkpoint(folder, modules=self._modules(), optimizer=self.optimizer, generator=self.generator,
                                py_random=self.py_random)
        self.step = int(state["step"])
        self.history = list(state["history"])
        self.base_accuracy = state["base_accuracy"]
        self._switched = bool(state.get("switched", False))


def train(model: LoadedModel, config: TrainConfig, **kwargs: Any) -> TrainResult:
    """Fine-tune `model` in place with `config` (GRPO, CF-RL, PPO or DPO) and return the history."""
    return Trainer(model, config, **kwargs).train()

