"""The RL-circuitry study on SmolLM2-135M-Instruct against a perturbed copy (real model, CPU-sized).

    python benchmarks/study_smollm2.py --samples 32 --out runs/study_smollm2

The tuned model is the base with every weight moved by `--scale` x its tensor's std of Gaussian noise
(seeded): a stand-in for a briefly fine-tuned copy that keeps the base's accuracy. Level 0-1 word
problems with a short-answer instruction, since a 135M model rarely finishes step-by-step reasoning.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from circuitdyn.models import clone_model, load_model
from circuitdyn.study import run_study
from circuitdyn.tasks import WordProblems


def perturbed(model, seed: int, scale: float):
    copy = clone_model(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in copy.bridge.original_model.parameters():
            p.add_(scale * p.float().std() * torch.randn(p.shape, generator=g))
    return copy


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=32)
    ap.add_argument("--scale", type=float, default=0.01)
    ap.add_argument("--min-kept", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--resamples", type=int, default=100_000)
    ap.add_argument("--out", default="runs/study_smollm2")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    base = load_model("smollm2-135m", device="cpu")
    tuned = perturbed(base, 1, args.scale)
    problems = WordProblems(levels=(0, 1), instruction="Answer with just the number.")
    result = run_study(base, {"perturbed": tuned}, problems, samples=args.samples, max_new_tokens=args.max_new_tokens,
                       min_kept=args.min_kept, n_resamples=args.resamples, out=args.out,
                       replace=True)  # a rerun of the benchmark replaces its own study
    total = time.perf_counter() - t0
    summary = {"seconds_total": round(total, 1), "seconds": {k: round(v, 1) for k, v in result.seconds.items()},
               "correct": result.correct, "scored": {label: len(s.rows) for label, s in result.selections.items()}
               or len(result.kept), "n_generated": result.n_generated}
    for metric in ("intensity", "normalized_entropy", "effective_edges", "gini", "kurtosis"):
        s = result.test("perturbed - base", metric).stat
        summary[metric] = {"delta": s.mean, "ci": [s.ci_low, s.ci_high], "q": s.q_value}
    print(json.dumps(summary, indent=1))
    return summary


if __name__ == "__main__":
    main()
