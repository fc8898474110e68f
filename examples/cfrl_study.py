"""GRPO vs classifier-first RL (CF-RL) vs LP-FT: optimisation speed, confidence, the eNTK factors, circuits.

Same model, budget and seeds for every arm. CF-RL spends its first `--classifier-steps` steps training
only the classifier under the GRPO objective, LP-FT the same steps fitting it by supervised cross-entropy
on correct answers; both then run GRPO on everything. Stage-1 steps count inside `--steps`, so the
classifier-first arms get fewer full steps than GRPO: the curves are drawn against both accountings (all
steps, and steps of the full stage). Every `--every` steps a recorder logs held-out accuracy, confidence
and diversity of sampled responses, the eNTK (feature part, backbone part, and the feature and gradient
kernels that factor the feature part), feature variability, and zero-ablation circuit metrics. Writes
curves (mean and range over seeds), a time series JSON and a markdown summary with seed-level 95% CIs.

    python examples/cfrl_study.py --out runs/cfrl                       # the zoo (zoo:llama, 120 steps)
    python examples/cfrl_study.py --model smollm2-135m --out runs/cfrl_smollm2
    python examples/cfrl_study.py --quick                               # smoke test

A real model gets LoRA adapters (r=16 on every linear layer), the `qa_addition` task, 24 steps of 32
completions, stage 1 of 6 steps, and the eNTK's backbone part over the adapters of its last two blocks
(exact there): the parameters LoRA training moves, not the frozen base weights. Circuit snapshots
(zero-ablation EAP on the layer graph, the costliest record) are taken every 12 steps on a real model.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import scipy.stats
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from peft import LoraConfig

from circuitdyn.dynamics.snapshots import CircuitSnapshot, DynamicsRecorder
from circuitdyn.models import clone_model, load_model
from circuitdyn.tasks import distinct_examples, get_task, tokenize_pairs
from circuitdyn.train import CFRLConfig, ClassifierFirst, GRPOConfig, Trainer

PANELS = [("eval_accuracy", "held-out accuracy"), ("reward_mean", "sampled reward"),
          ("confidence_max_prob", "confidence (max prob)"), ("confidence_entropy", "next-token entropy"),
          ("distinct_token_2", "distinct token 2-grams of samples"), ("self_agreement", "self-agreement of samples"),
          ("ntk_feature_kernel_diag", "eNTK feature kernel h.h (mean diag)"),
          ("ntk_gradient_kernel_diag", "eNTK gradient kernel a.a (mean diag)"),
          ("ntk_feature_diag", "eNTK feature part (mean diag)"), ("ntk_backbone_diag", "eNTK backbone part (mean diag)"),
          ("circuit_intensity", "circuit intensity"), ("circuit_normalized_entropy", "circuit normalized entropy")]


ARMS = ("grpo", "cfrl", "lpft")
PROFILES: dict[str, dict[str, Any]] = {
    "zoo": dict(task="addition", steps=120, every=20, classifier_steps=30, classifier_lr=3e-4, probes=64, batch=64,
                lora_r=0, learning_rate=None, ntk_layers=None, eval_size=200, circuit_probes=64, circuit_every=20),
    "real": dict(task="qa_addition", steps=24, every=6, classifier_steps=6, classifier_lr=1e-3, probes=16, batch=32,
                 lora_r=16, learning_rate=5e-4, ntk_layers="last2", eval_size=100, circuit_probes=16, circuit_every=12),
}


def config(algo: str, seed: int, args: argparse.Namespace) -> Any:
    peft = LoraConfig(r=args.lora_r, lora_alpha=2 * args.lora_r, target_modules="all-linear") if args.lora_r else None
    common: dict[str, Any] = dict(task=args.task, max_steps=args.steps, seed=seed, per_device_train_batch_size=args.batch,
                                  num_generations=8, eval_steps=args.every, max_completion_length=args.completion_length,
                                  peft=peft, eval_size=args.eval_size,
                                  **({"learning_rate": args.learning_rate} if args.learning_rate else {}))
    if algo == "cfrl":
        return CFRLConfig(classifier_steps=args.classifier_steps, classifier_learning_rate=args.classifier_lr,
                          untie_classifier=args.untie, **common)
    if algo == "lpft":
        return GRPOConfig(classifier_first=ClassifierFirst(args.classifier_steps, learning_rate=args.classifier_lr,
                                                           objective="supervised", untie=args.untie), **common)
    return GRPOConfig(**common)


def run(algo: str, seed: int, args: argparse.Namespace, base: Any) -> list[dict[str, Any]]:
    model = clone_model(base)
    task = get_task(args.task)
    examples = distinct_examples(task, args.probes, seed=999)  # a repeated probe would count twice
    probe = tokenize_pairs(model.tokenizer, examples, answer_tokens=1)
    circuit_probe = tokenize_pairs(model.tokenizer, examples[:args.circuit_probes], answer_tokens=1)
    n_layers = len(model.bridge.blocks)
    layers = [n_layers - 2, n_layers - 1] if args.ntk_layers == "last2" else None
    circuits = CircuitSnapshot(circuit_probe, every=args.circuit_every)
    recorder = DynamicsRecorder(probe, examples[:16], every=args.every, samples=8, ntk_layers=layers,
                                ntk_adapters_only=bool(args.lora_r), circuits=circuits)
    with warnings.catch_warnings():  # a tied model without --untie: the warning is the study's to report
        warnings.simplefilter("ignore", UserWarning)
        trainer = Trainer(model, config(algo, seed, args), callbacks=[recorder])
    result = trainer.train()
    print(f"  {algo.upper():5s} seed {seed}: held-out accuracy {result.base_accuracy:.3f} -> {result.final_accuracy:.3f} "
          f"({result.seconds:.0f} s)", flush=True)
    by_step = {r["step"]: dict(r) for r in recorder.rows}
    by_step[0]["eval_accuracy"] = result.base_accuracy
    for h in result.history:
        by_step.setdefault(h["step"], {"step": h["step"]}).update({k: v for k, v in h.items() if isinstance(v, (int, float))})
    return [by_step[s] for s in sorted(by_step)]


def _values(runs: list[list[dict[str, Any]]], key: str, steps: list[int]) -> np.ndarray:
    return np.array([[next((r[key] for r in run if r["step"] == s and key in r), np.nan) for s in steps] for run in runs])


def curves(series: dict[str, list[list[dict[str, Any]]]], path: Path, shift: dict[str, int], xlabel: str) -> None:
    """One panel per PANELS entry: mean over seeds and range; each arm's steps moved by `shift[arm]`."""
    fig = Figure(figsize=(16, 9))
    for i, (key, title) in enumerate(PANELS):
        ax = fig.add_subplot(3, 4, i + 1)
        for algo, runs in series.items():
            steps = sorted({r["step"] for run in runs for r in run if key in r})
            if not steps:
                continue
            vals = _values(runs, key, steps)
            x = [s - shift[algo] for s in steps]
            ax.plot(x, np.nanmean(vals, 0), label=algo.upper())
            ax.fill_between(x, np.nanmin(vals, 0), np.nanmax(vals, 0), alpha=0.2)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel(xlabel, fontsize=8)
        ax.legend(fontsize=7)
    fig.tight_layout()
    FigureCanvasAgg(fig)
    fig.savefig(str(path), dpi=100)


def ci(values: list[float]) -> tuple[float, float, float]:
    """Mean and its seed-level 95% t-interval (n seeds, n - 1 degrees of freedom)."""
    v = np.asarray(values, dtype=float)
    if len(v) < 2:
        return float(v.mean()), float("nan"), float("nan")
    half = float(scipy.stats.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v)))
    return float(v.mean()), float(v.mean()) - half, float(v.mean()) + half


def _at(runs: list[list[dict[str, Any]]], key: str, step: int) -> list[float]:
    return [next(r[key] for r in run if r["step"] == step and key in r) for run in runs]


def _cell(runs: list[list[dict[str, Any]]], key: str, step: int) -> str:
    try:
        m, lo, hi = ci(_at(runs, key, step))
    except StopIteration:
        return "n/a"
    return f"{m:.4g} [{lo:.4g}, {hi:.4g}]"


def verdicts(series: dict[str, list[list[dict[str, Any]]]], args: argparse.Namespace) -> list[str]:
    """The paper's two claims, as measured: faster optimisation and higher confidence with CF-RL."""
    first, last, cs = args.every, args.steps, args.classifier_steps
    out = []
    for key, claim, cf_step, grpo_step in (
            ("eval_accuracy", "CF-RL optimised faster (held-out accuracy)", first, first),
            ("eval_accuracy", f"CF-RL optimised faster per full-stage step (its step {first + cs} against GRPO's "
                              f"{first}: {first} full steps each)", first + cs, first),
            ("eval_accuracy", "CF-RL reached a higher held-out accuracy", last, last),
            ("confidence_max_prob", "CF-RL raised confidence (max prob)", last, last)):
        try:
            diff = [c - g for c, g in zip(_at(series["cfrl"], key, cf_step), _at(series["grpo"], key, grpo_step))]
        except StopIteration:
            continue
        m, lo, hi = ci(diff)
        said = "yes" if lo > 0 else "no: the opposite" if hi < 0 else "not shown: the CI includes 0"
        at = f", step {cf_step}" if cf_step == grpo_step else ""
        out.append(f"- {claim}{at}: CF-RL - GRPO = {m:+.4g} [{lo:+.4g}, {hi:+.4g}] over {len(diff)} seeds "
                   f"(paired by seed): {said}")
    return out


def summary(series: dict[str, list[list[dict[str, Any]]]], args: argparse.Namespace, seconds: float) -> str:
    first, last, cs = args.every, args.steps, args.classifier_steps
    lora = (f"LoRA r={args.lora_r} on every linear layer (the eNTK's backbone part: over the adapters only"
            + (", of the last two blocks)" if args.ntk_layers == "last2" else ")")) if args.lora_r else "every weight trained"
    lines = [f"# GRPO vs CF-RL vs LP-FT on {args.model} ({args.task}), {args.seeds} seeds, {args.steps} steps", "",
             f"CF-RL and LP-FT: {cs} classifier-only steps (lr {args.classifier_lr}; CF-RL under the GRPO objective, "
             f"LP-FT by cross-entropy on correct answers), then GRPO; {lora}; {args.batch} completions per step. "
             f"Wall time {seconds:.0f} s. Cells: mean over seeds [95% t-interval over seeds].", "",
             "## What was measured", "", *verdicts(series, args), "",
             "Budgets: stage-1 steps count inside the total, so at the last step the classifier-first arms had "
             f"{last - cs} full steps to GRPO's {last}; `curves_full_steps.png` aligns them by full-stage steps "
             f"(GRPO's step {last - cs} against their step {last}).", "",
             "| metric | step | GRPO | CF-RL | LP-FT |", "|---|---|---|---|---|"]
    for key, _ in PANELS:
        for step in sorted({0, first, last}):
            lines.append(f"| {key} | {step} | " + " | ".join(_cell(series[a], key, step) for a in ARMS) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="zoo:llama")
    parser.add_argument("--seeds", type=int, default=3)
    for name, kind in (("task", str), ("steps", int), ("every", int), ("classifier-steps", int), ("classifier-lr", float),
                       ("probes", int), ("batch", int), ("lora-r", int), ("learning-rate", float), ("eval-size", int),
                       ("circuit-probes", int), ("circuit-every", int)):
        parser.add_argument(f"--{name}", type=kind, help="default: by model kind (zoo or real), see the docstring")
    parser.add_argument("--completion-length", type=int, default=3)
    parser.add_argument("--untie", action="store_true", help="tied embeddings: untie the classifier for stage 1")
    parser.add_argument("--out", default="runs/cfrl_study")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    kind = "zoo" if args.model.startswith("zoo:") else "real"
    for k, v in PROFILES[kind].items():
        if getattr(args, k, None) is None:
            setattr(args, k, v)
    if args.quick:
        args.seeds, args.steps, args.every, args.classifier_steps, args.probes = 1, 8, 4, 4, 16
        args.circuit_probes, args.circuit_every = 16, 4
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    base = load_model(args.model)
    series: dict[str, list[list[dict[str, Any]]]] = {algo: [] for algo in ARMS}
    for algo in ARMS:
        for seed in range(args.seeds):
            series[algo].append(run(algo, seed, args, base))
            gc.collect()  # a finished run's model sits in reference cycles (hook closures): free it before the next
    seconds = time.perf_counter() - t0
    (out / "time_series.json").write_text(json.dumps(series, indent=1))
    curves(series, out / "curves.png", dict.fromkeys(ARMS, 0), "step (all steps)")
    curves(series, out / "curves_full_steps.png", {"grpo": 0, "cfrl": args.classifier_steps, "lpft": args.classifier_steps},
           "full-stage steps (stage 1 not counted)")
    text = summary(series, args, seconds)
    (out / "summary.md").write_text(text)
    print(text)
    print(f"wrote {out}; total wall time {seconds:.1f} s")


if __name__ == "__main__":
    from circuitdyn.cli import run_command

    sys.exit(run_command("cfrl_study.py", main))
