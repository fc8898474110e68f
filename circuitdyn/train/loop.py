"""The generic training loop: one algorithm (GRPO, PPO, DPO) on the hooked model itself.

The policy IS the TransformerBridge of a LoadedModel: rollouts, losses and updates run on its parameters,
so attribution can read the model at any step without a copy. The loop owns the optimizer (built from the
classifier, the backbone and the algorithm's own modules), the random streams, the parameter schedule
(classifier-first), evaluation, callbacks, and checkpoints that include the algorithm's state. Dropout
stays off (eval mode) throughout, which makes runs deterministic on CPU for a given seed, and resumable
to the same result.
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from tqdm.auto import tqdm

from circuitdyn.core.lock import claim_folder
from circuitdyn.core.outputs import check_output_folder
from circuitdyn.models import LoadedModel
from circuitdyn.models.export import save_hf_folder
from circuitdyn.models.surface import seeded_generator
from circuitdyn.models.weights import TRAINING_FILE, current_sha256, record_training
from circuitdyn.tasks import get_task
from circuitdyn.tasks.base import Task, TaskExample
from circuitdyn.train.algorithm import TrainingError
from circuitdyn.train.cfrl import ParameterSchedule
from circuitdyn.train.checkpoint import (
    CheckpointError,
    load_algorithm_tensors,
    load_checkpoint,
    read_checkpoint_meta,
    save_checkpoint,
    verify_weights,
)
from circuitdyn.train.config import TrainConfig
from circuitdyn.train.lpft import supervised_step
from circuitdyn.train.parallel import rank_world
from circuitdyn.train.policy import adapt, check_fits, frozen_copy, parameter_groups, scorers, untie_if_asked
from circuitdyn.train.registry import build_algorithm, config_from_dict
from circuitdyn.train.rewards import RewardFn, compute_rewards, task_reward
from circuitdyn.train.rollout import Rollout, encode_prompts, row_seeds, sample
from circuitdyn.train.run_folder import check_resume_folder, open_run_folder, warn_if_diverging

#: config fields that do not change the trajectory: a resumed run may change them
FREE_FIELDS = frozenset({"max_steps", "output_dir", "progress", "save_steps", "logging_steps", "eval_steps",
                         "gradient_checkpointing"})


@runtime_checkable
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


class Trainer:
    def __init__(self, model: LoadedModel, config: TrainConfig, *, task: Task | None = None,
                 reward: RewardFn | None = None, callbacks: Sequence[Callback] = (),
                 resume_from: str | Path | None = None,
                 preference_pairs: Sequence[Sequence[str]] | None = None) -> None:
        """`preference_pairs` (DPO only): user data as (prompt, chosen completion, rejected completion);
        without them, pairs are sampled from the reference model and labelled by the reward."""
        if not isinstance(model, LoadedModel):
            raise TypeError("Trainer needs a LoadedModel from circuitdyn.models.load_model")
        if config.output_dir is not None:
            check_output_folder(config.output_dir)  # before any work: a bad folder must not cost the run
        self.model, self.config = model, config
        self.bridge = model.bridge
        self.bridge.eval()  # no dropout: deterministic, resumable runs
        self.tokenizer = model.tokenizer
        self.task = task or get_task(config.task)
        self.reward_fn = reward or task_reward(self.task)
        self.callbacks = list(callbacks)
        self.device = model.device
        # prompts come from the shared stream (the same on every rank); rollouts draw from per-row streams
        # (see rollout); this per-rank generator is for randomness of an algorithm's own, and is checkpointed
        self.generator = seeded_generator(self.device, config.seed + 1_000_003 * rank_world()[0])
        self.py_random = random.Random(config.seed)
        torch.manual_seed(config.seed)  # modules the algorithm creates
        self.algorithm = build_algorithm(config, model)
        untie_if_asked(self.bridge, config)
        self.reference = frozen_copy(self.bridge) if self.algorithm.needs_reference else None  # before any adapter
        self.adapted = adapt(self.bridge, config)
        self.sampler, self.scorer, self.reference_scorer = scorers(self.bridge, self.reference, config)
        self.scaler = torch.amp.GradScaler(self.device.type) if config.fp16 else None
        self.schedule = ParameterSchedule(config.schedule)
        self.classifier, self.backbone = parameter_groups(self.bridge, config)
        groups = [{"params": self.classifier, "name": "classifier"}, {"params": self.backbone, "name": "backbone"}]
        groups += [{"params": list(m.parameters()), "name": name} for name, m in self.algorithm.extra_modules.items()]
        self.optimizer: torch.optim.Optimizer = torch.optim.AdamW(
            groups, lr=config.learning_rate, weight_decay=config.weight_decay, betas=(config.adam_beta1, config.adam_beta2))
        self.step = 0
        self._rollout_calls: dict[int, int] = {}  # rollouts drawn so far in this step (each its own streams)
        self.history: list[dict[str, Any]] = []
        self.eval_examples = self.task.examples(config.eval_size, seed=config.seed + 10_000, split="test")
        width = max(len(self.tokenizer(ex.clean)["input_ids"]) for ex in self.eval_examples[:64])
        self.memory = check_fits(self.bridge, self.scorer, self.reference, config, width, self.device)
        if preference_pairs is not None:
            self.algorithm.use_preference_pairs(self, preference_pairs)
        self.base_accuracy: float | None = None
        self.resumed_from = Path(resume_from).expanduser() if resume_from is not None else None
        if self.resumed_from is not None:
            if config.output_dir:
                check_resume_folder(Path(config.output_dir).expanduser(), self.resumed_from)
            self._resume(self.resumed_from)

    # ---- what algorithms use (the TrainingRun protocol) -----------------------------------------------
    def prompts(self, n: int) -> list[TaskExample]:
        return self.task.examples(n, seed=self.py_random.randrange(2**31), split="train")

    def index(self, n: int) -> int:
        """A uniform index in [0, n) from the run's (checkpointed) prompt stream."""
        return self.py_random.randrange(n)

    def rollout(self, examples: Sequence[TaskExample], repeats: int, policy: Any = None, greedy: bool = False,
                first_row: int = 0) -> Rollout:
        """Completions of each example, `repeats` per example. Every row draws from its own stream, seeded by
        (seed, step, this step's rollout call, its row in the global batch: `first_row` + its index), so data-
        parallel ranks sampling their share draw exactly what one process would."""
        prompts = [ex.clean for ex in examples for _ in range(repeats)]
        ids, mask = encode_prompts(self.tokenizer, prompts, self.device)
        seeds = None
        if not greedy:  # greedy rollouts (evaluation) draw nothing, so they take no stream of the step
            call = self._rollout_calls.get(self.step, 0)
            self._rollout_calls = {self.step: call + 1}
            seeds = row_seeds(self.config.seed, self.step, call, first_row, len(prompts))
        try:
            return sample(policy or self.sampler, self.tokenizer, ids, mask, max_new_tokens=self.config.max_completion_length,
                          temperature=self.config.temperature, top_p=self.config.top_p, top_k=self.config.top_k,
                          row_seeds=seeds, greedy=greedy, stop_token_ids=self.config.stop_token_ids)
        except FloatingPointError as err:
            raise TrainingError(f"step {self.step}: {err}; the weights are no longer finite. Lower learning_rate; "
                                "the last checkpoint is intact") from None

    def backward(self, loss: torch.Tensor) -> None:
        """loss.backward(), scaled under fp16 so small gradients survive."""
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def optimizer_step(self, source: str) -> float:
        """Clip and apply the gradients; returns the policy's gradient norm. The policy (classifier and
        backbone) and each module the algorithm adds (PPO's value head) are clipped apart, so one never
        scales the other's update."""
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        norms = []
        for names in (("classifier", "backbone"), *((n,) for n in self.algorithm.extra_modules)):
            params = [p for g in self.optimizer.param_groups if g["name"] in names for p in g["params"]
                      if p.grad is not None]
            norms.append(torch.nn.utils.clip_grad_norm_(params, self.config.max_grad_norm) if params
                         else torch.tensor(0.0))
        norm = norms[0]
        if self.scaler is not None:  # a non-finite fp16 gradient skips the step and lowers the scale
            self.scaler.step(self.optimizer)
            self.scaler.update()
            return float(norm)
        if not all(torch.isfinite(n) for n in norms):
            raise TrainingError(f"step {self.step}: non-finite gradient norm from the {source}; the update was "
                                "skipped and the last checkpoint is intact. Lower learning_rate or check the rewards")
        self.optimizer.step()
        return float(norm)

    # ---- evaluation and the loop ----------------------------------------------------------------------
    def accuracy(self, examples: Sequence[TaskExample] | None = None) -> float:
        """Held-out accuracy: mean reward of greedy completions."""
        examples = list(examples or self.eval_examples)
        out = self.rollout(examples, 1, greedy=True)
        return float(compute_rewards(self.reward_fn, [e.clean for e in examples], out.texts, examples, step=self.step).mean())

    def train_step(self) -> dict[str, Any]:
        cfg = self.config
        t0 = time.perf_counter()
        stage = self.schedule.stage(self.step)
        with self.schedule.applied(stage, self.optimizer, self.backbone):
            logs = supervised_step(self) if self.schedule.supervised(stage) else self.algorithm.step(self)
            lr = self.optimizer.param_groups[0]["lr"]
        self.step += 1
        self.schedule.observe(stage, logs)
        base = self.model.provenance
        record_training(self.bridge, {"algorithm": cfg.algorithm.value, "step": self.step, "base_spec": base.spec,
                                      "base_weights_sha256": base.weights_sha256})
        logs = {"step": self.step, "algorithm": cfg.algorithm.value, "stage": stage.value, "learning_rate": lr, **logs}
        if cfg.eval_steps and (self.step % cfg.eval_steps == 0 or self.step == cfg.max_steps):
            logs["eval_accuracy"] = self.accuracy()
        for cb in self.callbacks:
            logs.update(cb.on_step_end(self, self.step, logs) or {})
        logs["seconds"] = time.perf_counter() - t0
        return logs

    def train(self) -> TrainResult:
        """Run to max_steps; with an output_dir, holding that folder (one run at a time) throughout."""
        out_dir = Path(self.config.output_dir).expanduser() if self.config.output_dir else None
        if out_dir is None:
            return self._train(None)
        with claim_folder(out_dir, "training run"):
            open_run_folder(out_dir, resumed=self.resumed_from is not None, step=self.step)
            return self._train(out_dir)

    def _train(self, out_dir: Path | None) -> TrainResult:
        cfg = self.config
        t0 = time.perf_counter()
        if self.base_accuracy is None:
            self.base_accuracy = self.accuracy() if cfg.eval_steps else float("nan")
        log_file = (out_dir / "log.jsonl") if out_dir else None
        for cb in self.callbacks:
            if hasattr(cb, "on_train_begin"):
                cb.on_train_begin(self)
        bar = tqdm(total=cfg.max_steps, initial=self.step, desc=cfg.algorithm.value, disable=not cfg.progress)
        checkpoint = None
        while self.step < cfg.max_steps:
            logs = self.train_step()
            self.history.append(logs)
            warn_if_diverging(logs, cfg)
            logged = self.step % cfg.logging_steps == 0 or self.step == cfg.max_steps
            if log_file is not None and logged:
                with log_file.open("a") as f:
                    f.write(json.dumps(logs) + "\n")
            bar.update(1)
            if logged:
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
    def _modules(self) -> dict[str, torch.nn.Module]:
        return {"policy": self.bridge.original_model, **self.algorithm.extra_modules}

    def training_info(self) -> dict[str, Any]:
        """What produced the current weights: recorded with attributions of the model and in checkpoints."""
        config = self.config.as_dict()
        base = self.model.provenance
        return {"algorithm": self.config.algorithm.value, "step": self.step, "config": config,
                "config_sha256": hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest(),
                "base_spec": base.spec, "base_weights_sha256": base.weights_sha256,
                "weights_sha256": current_sha256(self.bridge)}

    def save(self, folder: Path) -> Path:
        tensors, meta = self.algorithm.state()
        info = self.training_info()
        record_training(self.bridge, info)
        state = {"step": self.step, "config": self.config.as_dict(), "history": self.history,
                 "base_accuracy": self.base_accuracy, "switched": self.schedule.switched, "algorithm": meta,
                 "weights_sha256": info["weights_sha256"]}

        def hugging_face_files(tmp: Path) -> None:
            save_hf_folder(self.bridge, self.tokenizer, tmp, source=self.model.provenance.source)
            (tmp / TRAINING_FILE).write_text(json.dumps(info, indent=1, default=str))
        return save_checkpoint(folder, modules=self._modules(), optimizer=self.optimizer, generator=self.generator,
                               py_random=self.py_random, state=state, algorithm_tensors=tensors,
                               also=hugging_face_files)

    def _resume(self, folder: Path) -> None:
        meta = read_checkpoint_meta(folder)  # checked before any weights are loaded
        if meta["state"]["step"] >= self.config.max_steps:
            raise CheckpointError(f"{folder} is at step {meta['state']['step']} and max_steps is {self.config.max_steps}: "
                                  "nothing is left to run; raise max_steps (--set max_steps=N) to train further")
        try:
            saved = config_from_dict(meta["state"]["config"]).as_dict()
        except (ValueError, TypeError) as err:
            raise CheckpointError(f"{folder}: its config does not load ({err})") from None
        ours = self.config.as_dict()
        if {k: v for k, v in saved.items() if k not in FREE_FIELDS} != {k: v for k, v in ours.items() if k not in FREE_FIELDS}:
            raise CheckpointError(f"{folder}: saved with a different config; resume with the config it was saved with")
        state = load_checkpoint(folder, modules=self._modules(), optimizer=self.optimizer, generator=self.generator,
                                py_random=self.py_random)
        verify_weights(folder, state.get("weights_sha256"), current_sha256(self.bridge))
        tensors = {k: v.to(self.device) for k, v in load_algorithm_tensors(folder).items()}
        self.algorithm.load_state(tensors, state.get("algorithm", {}))
        self.step = int(state["step"])
        self.history = list(state["history"])
        self.base_accuracy = state["base_accuracy"]
        self.schedule.switched = bool(state.get("switched", False))


def train(model: LoadedModel, config: TrainConfig, **kwargs: Any) -> TrainResult:
    """Fine-tune `model` in place with `config` (GRPO, CF-RL, PPO or DPO) and return the history."""
    return Trainer(model, config, **kwargs).train()
