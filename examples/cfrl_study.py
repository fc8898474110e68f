"""GRPO vs classifier-first RL (CF-RL): optimisation speed, confidence, the eNTK split and circuits.

Same model, budget and seeds for both: CF-RL spends its first `--classifier-steps` steps training only the
unembedding under the GRPO objective, then runs GRPO on every parameter. Every `--every` steps a recorder
logs held-out accuracy, confidence and diversity, the feature and backbone parts of the eNTK, feature
variability, and zero-ablation circuit intensity and entropy. Writes curves (mean and range over seeds),
a time series JSON and a short markdown summary.

    python examples/cfrl_study.py --out runs/cfrl [--seeds 3] [--steps 120] [--model zoo:llama] [--quick]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from circuitdyn.dynamics.snapshots import CircuitSnapshot, DynamicsRecorder
from circuitdyn.models import clone_model, load_model
from circuitdyn.tasks import Addition, tokenize_pairs
from circuitdyn.train import CFRLConfig, GRPOConfig, Trainer

PANELS = [("eval_accuracy", "held-out accuracy"), ("reward_mean", "sampled reward"),
          ("confidence_max_prob", "confidence (max prob)"), ("confidence_entropy", "next-token entropy"),
          ("ntk_feature_diag", "eNTK feature part (mean diag)"), ("ntk_backbone_diag", "eNTK backbone part (mean diag)"),
          ("circuit_intensity", "circuit intensity"), ("circuit_normalized_entropy", "circuit normalized entropy")]


def run(algo: str, seed: int, args: argparse.Namespace, base: Any) -> list[dict[str, Any]]:
    common = dict(max_steps=args.steps, seed=seed, per_device_train_batch_size=64, num_generations=8,
                  eval_steps=args.every)
    cfg = (CFRLConfig(classifier_steps=args.classifier_steps, classifier_learning_rate=args.classifier_lr, **common)
           if algo == "cfrl" else GRPOConfig(**common))
    model = clone_model(base)
    examples = Addition().examples(args.probes, seed=999, split="test")
    probe = tokenize_pairs(model.tokenizer, examples, answer_tokens=2)
    recorder = DynamicsRecorder(probe, examples[:16], every=args.every, samples=8,
                                circuits=CircuitSnapshot(probe, every=args.every))
    trainer = Trainer(model, cfg, callbacks=[recorder])
    result = trainer.train()
    by_step = {r["step"]: dict(r) for r in recorder.rows}
    by_step[0]["eval_accuracy"] = result.base_accuracy
    for h in result.history:
        by_step.setdefault(h["step"], {"step": h["step"]}).update({k: v for k, v in h.items() if isinstance(v, (int, float))})
    return [by_step[s] for s in sorted(by_step)]


def curves(series: dict[str, list[list[dict[str, Any]]]], path: Path) -> None:
    fig = Figure(figsize=(14, 6.5))
    for i, (key, title) in enumerate(PANELS):
        ax = fig.add_subplot(2, 4, i + 1)
        for algo, runs in series.items():
            steps = sorted({r["step"] for run in runs for r in run if key in r})
            if not steps:
                continue
            vals = np.array([[next((r[key] for r in run if r["step"] == s and key in r), np.nan) for s in steps] for run in runs])
            mean = np.nanmean(vals, 0)
            ax.plot(steps, mean, label=algo.upper())
            ax.fill_between(steps, np.nanmin(vals, 0), np.nanmax(vals, 0), alpha=0.2)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.legend(fontsize=7)
    fig.tight_layout()
    FigureCanvasAgg(fig)
    fig.savefig(str(path), dpi=110)


def _at(runs: list[list[dict[str, Any]]], key: str, step: int) -> list[float]:
    return [next(r[key] for r in run if r["step"] == step and key in r) for run in runs]


def summary(series: dict[str, list[list[dict[str, Any]]]], args: argparse.Namespace, seconds: float) -> str:
    first = args.every
    last = args.steps
    lines = [f"# GRPO vs CF-RL on {args.model} (addition), {args.seeds} seeds, {args.steps} steps", "",
             f"CF-RL: {args.classifier_steps} classifier-only steps (lr {args.classifier_lr}), then GRPO. "
             f"Wall time {seconds:.0f} s.", "",
             "| metric | step | GRPO mean (min..max) | CF-RL mean (min..max) |", "|---|---|---|---|"]
    for key, _ in PANELS:
        for step in (0, first, last):
            cells = []
            for algo in ("grpo", "cfrl"):
                try:
                    v = _at(series[algo], key, step)
                except StopIteration:
                    cells.append("n/a")
                    continue
                cells.append(f"{np.mean(v):.4g} ({min(v):.4g}..{max(v):.4g})")
            lines.append(f"| {key} | {step} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="zoo:llama")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--every", type=int, default=20)
    parser.add_argument("--classifier-steps", type=int, default=30)
    parser.add_argument("--classifier-lr", type=float, default=3e-4)
    parser.add_argument("--probes", type=int, default=64)
    parser.add_argument("--out", default="runs/cfrl_study")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    if args.quick:
        args.seeds, args.steps, args.every, args.classifier_steps, args.probes = 1, 8, 4, 4, 16
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    base = load_model(args.model)
    series = {algo: [run(algo, seed, args, base) for seed in range(args.seeds)] for algo in ("grpo", "cfrl")}
    seconds = time.perf_counter() - t0
    (out / "time_series.json").write_text(json.dumps(series, indent=1))
    curves(series, out / "curves.png")
    text = summary(series, args, seconds)
    (out / "summary.md").write_text(text)
    print(text)
    print(f"wrote {out}; total wall time {seconds:.1f} s")


if __name__ == "__main__":
    main()
