"""Callbacks that record circuits and learning dynamics during training, into one time series.

They read the policy (the trainer's bridge) in place, draw samples from their own generator (recording never
changes the training trajectory), and append one JSON line per record to `path` when given.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from circuitdyn.analysis.metrics import circuit_metrics
from circuitdyn.attribution import Ablation, Method, attribute
from circuitdyn.attribution.objectives import resolve_objective
from circuitdyn.core.choices import parse_choice
from circuitdyn.dynamics.behaviour import confidence, diversity
from circuitdyn.dynamics.ntk import entk, feature_variability
from circuitdyn.graph import Granularity
from circuitdyn.models.sampling import encode_prompts, sample
from circuitdyn.models.surface import seeded_generator
from circuitdyn.tasks.base import PairBatch, TaskExample


def _append(path: Path | None, row: dict[str, Any]) -> None:
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a") as f:
            f.write(json.dumps(row) + "\n")


class _EveryK:
    """Record before training (step 0) and every `every` steps; subclasses define record()."""

    every: int

    def record(self, trainer: Any, step: int) -> dict[str, Any]:
        raise NotImplementedError

    def on_train_begin(self, trainer: Any) -> None:
        if trainer.step == 0:
            self.record(trainer, 0)

    def on_step_end(self, trainer: Any, step: int, logs: dict[str, Any]) -> dict[str, Any] | None:
        return None if step % self.every else self.logged(self.record(trainer, step))

    def logged(self, row: dict[str, Any]) -> dict[str, Any]:
        """What of a record goes into the training log."""
        return row


@dataclass
class CircuitSnapshot(_EveryK):
    """Every `every` steps (and before training): attribution on a fixed probe batch, and its metrics."""

    probe: PairBatch
    every: int = 10
    path: Path | None = None
    granularity: Granularity | str = Granularity.LAYER  # strings are parsed in __post_init__
    metric: str = "answer_nll"
    ablation: Ablation | str = Ablation.ZERO
    method: Method | str = Method.EAP
    rows: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.every < 1:
            raise ValueError(f"every must be >= 1, got {self.every}")
        # refused now, not ten training steps later
        self.granularity = parse_choice(Granularity, self.granularity, "granularity")
        self.ablation = parse_choice(Ablation, self.ablation, "ablation")
        self.method = parse_choice(Method, self.method, "method")
        resolve_objective(self.metric)

    def record(self, trainer: Any, step: int) -> dict[str, Any]:
        a = attribute(trainer.model, self.granularity, self.probe, self.metric, ablation=self.ablation, method=self.method)
        row = {"step": step, **{f"circuit_{k}": float(v) for k, v in circuit_metrics(a).items()}}
        self.rows.append(row)
        _append(self.path, row)
        return row

    def logged(self, row: dict[str, Any]) -> dict[str, Any]:
        return {k: row[k] for k in ("circuit_intensity", "circuit_normalized_entropy")}


@dataclass
class DynamicsRecorder(_EveryK):
    """Every `every` steps: confidence, diversity of `samples` completions per prompt, the eNTK split and
    feature variability on the probe set, and (optionally) circuit metrics: one row per record."""

    probe: PairBatch
    examples: list[TaskExample]
    every: int = 10
    samples: int = 8
    path: Path | None = None
    #: circuit metrics, at the recorder's steps that are multiples of `circuits.every`
    circuits: CircuitSnapshot | None = None
    seed: int = 12345
    #: the eNTK's backbone part on these blocks only / from CountSketches of size k / over the LoRA
    #: adapters only (real models: see entk)
    ntk_layers: list[int] | None = None
    ntk_projection: int | None = None
    ntk_adapters_only: bool = False
    rows: list[dict[str, Any]] = field(default_factory=list)

    def record(self, trainer: Any, step: int) -> dict[str, Any]:
        row: dict[str, Any] = {"step": step, **confidence(trainer.model, self.probe)}
        gen = seeded_generator(trainer.device, self.seed + step)
        prompts = [e.clean for e in self.examples for _ in range(self.samples)]
        ids, mask = encode_prompts(trainer.tokenizer, prompts, trainer.device)
        out = sample(trainer.sampler, trainer.tokenizer, ids, mask, max_new_tokens=trainer.config.max_completion_length,
                     temperature=trainer.config.temperature, generator=gen)
        groups = [list(out.texts[i * self.samples:(i + 1) * self.samples]) for i in range(len(self.examples))]
        row.update(diversity(groups, self.examples, trainer.task, tokenizer=trainer.tokenizer))
        k = entk(trainer.model, self.probe, layers=self.ntk_layers, projection=self.ntk_projection,
                 adapters_only=self.ntk_adapters_only)
        row.update(k.summary())
        row.update(feature_variability(k.features))
        if self.circuits is not None and step % self.circuits.every == 0:  # at its own cadence
            row.update({k2: v for k2, v in self.circuits.record(trainer, step).items() if k2 != "step"})
        self.rows.append(row)
        _append(self.path, row)
        return row
