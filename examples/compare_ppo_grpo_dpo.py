"""Fine-tune one base model with PPO, GRPO and DPO, then compare how each changes its circuits.

For every model family (default: the five zoo families, offline), copies of the pre-trained base are
fine-tuned with PPO, GRPO and iterative DPO (as the paper's DPO model: pairs of the best and worst of 8
answers sampled from the current policy every few steps, the initial model the reference), matched budgets
(the same steps, the same completions sampled and trained on per step) and the same training seeds (default
3 on the zoo). Base and tuned models then go through the RL-circuitry paper's protocol pair by pair
(`circuitdyn.study.run_study`): each model answers the same probe problems greedily; each algorithm is a
pair with the base, holding the problems the base and every seed of it answer correctly, filtered and
sampled by the paper's rules; each model is scored on its own answer (mean NLL of its first cut_len tokens)
by zero-ablation EAP on the q/k/v-split layer graph and on the head graph, summed over positions. The report
opens with one answer across families and seeds (does online RL move intensity, entropy, kurtosis more than
DPO?), one table (family x arm) and a forest plot; then per family the paper's Table 1, tuned - base and
(A - base) - (B - base) deltas with BCa CIs, permutation q-values under Benjamini-Hochberg control, and the
paper's claims stated as measured (an arm that answers fewer probes than its base is left out of them).

A real model (`--model smollm2-135m`) gets the real-model profile: LoRA adapters (r=16 on every linear
layer, learning rate 5e-4; DPO 5e-5, as 5e-4 collapses it), the `qa_addition_160` task (single-digit sums
asked as a question, 160 of its 200 problems held out: the model answers a third of them, so each pair keeps
enough), 24 steps of 32 completions, one seed, every one of the 160 held-out problems as probes.

    python examples/compare_ppo_grpo_dpo.py --out runs/compare            # default: the zoo
    python examples/compare_ppo_grpo_dpo.py --model smollm2-135m --out runs/smollm2
    python examples/compare_ppo_grpo_dpo.py --quick --out runs/quick      # smoke test
    python examples/compare_ppo_grpo_dpo.py --dpo-rpo                     # also a DPO+RPO arm, reported apart
    python examples/compare_ppo_grpo_dpo.py --dpo-offline                 # also offline DPO (pairs from the base)
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path
from typing import Any

from peft import LoraConfig

from circuitdyn.analysis import plot
from circuitdyn.core.outputs import safe_child
from circuitdyn.models import LoadedModel, clone_model, load_model
from circuitdyn.models.zoo import FAMILIES
from circuitdyn.study import StudyError, run_study
from circuitdyn.study.across_report import first_screen
from circuitdyn.study.paper_report import pooled_lines, table_one
from circuitdyn.study.result import CI_NOTE
from circuitdyn.train import DPOConfig, GRPOConfig, PPOConfig, TrainConfig, train

#: defaults by kind of model; a command-line option overrides its field
PROFILES: dict[str, dict[str, Any]] = {
    "zoo": dict(task="addition", steps=120, seeds=3, probes=256, completion_length=4, batch=64, lora_r=0,
                learning_rate=None, dpo_learning_rate=None, eval_size=None),
    # DPO's LoRA learning rate, chosen on SmolLM2 (seed 0, held-out accuracy from 0.370 after 24 steps): 5e-4 (the
    # online arms' rate) 0.090, its policy collapsing to all-wrong answers; 1e-4 0.780; 5e-5 0.930
    "real": dict(task="qa_addition_160", steps=24, seeds=1, probes=160, completion_length=3, batch=32, lora_r=16,
                 learning_rate=5e-4, dpo_learning_rate=5e-5, eval_size=100),
}


#: iterative DPO: steps trained on one round's pairs before the next round is sampled from the current policy,
#: and the KL weight. Chosen on the zoo (5 families x 3 seeds, held-out accuracy gain after 120 steps, min / mean):
#: round 5, beta 0.2: +0.005 / +0.067 (every run gains); round 10, beta 0.2: 0.000 / +0.068; round 10, beta 0.1:
#: -0.005 / +0.052; learning rate 5e-5 or above: -0.14 / -0.04 or worse (DPO collapses again)
ROUND_STEPS = 5
DPO_BETA = 0.2


def configs(args: argparse.Namespace, seed: int) -> dict[str, TrainConfig]:
    """Matched budgets: the same steps, the same completions sampled and trained on per step (`batch`; DPO:
    batch/2 pairs per step, and each round samples round_steps x batch completions from the current policy,
    8 per prompt), the same seed."""
    peft = LoraConfig(r=args.lora_r, lora_alpha=2 * args.lora_r, target_modules="all-linear") if args.lora_r else None
    common: dict[str, Any] = dict(task=args.task, max_steps=args.steps, seed=seed, eval_steps=max(1, args.steps // 4),
                                  max_completion_length=args.completion_length, progress=True, peft=peft)
    if args.learning_rate is not None:
        common["learning_rate"] = args.learning_rate
    if args.eval_size is not None:
        common["eval_size"] = args.eval_size
    rounds = min(ROUND_STEPS, args.steps)
    dpo: dict[str, Any] = dict(per_device_train_batch_size=args.batch // 2, pair_generations=8, beta=DPO_BETA, **common)
    if args.dpo_learning_rate is not None:
        dpo["learning_rate"] = args.dpo_learning_rate
    arms: dict[str, TrainConfig] = {
        "ppo": PPOConfig(per_device_train_batch_size=args.batch, **common),
        "grpo": GRPOConfig(per_device_train_batch_size=args.batch, num_generations=8, **common),
        # pure sigmoid DPO, iterative as the paper's DPO model (RLHFlow): best vs worst of 8 from the policy
        "dpo": DPOConfig(pair_source="iterative", round_steps=rounds, pair_prompts=max(1, rounds * args.batch // 8),
                         **dpo),
    }
    if args.dpo_offline:  # the earlier arm: one set of pairs sampled from the base before training
        arms["dpo_offline"] = DPOConfig(pair_source="offline", pair_prompts=4 * args.batch, **dpo)
    if args.dpo_rpo:  # DPO plus the NLL of the chosen answer (trl's RPO): keeps the chosen answer likely
        arms["dpo_rpo"] = DPOConfig(pair_source="iterative", round_steps=rounds,
                                    pair_prompts=max(1, rounds * args.batch // 8), rpo_alpha=1.0, **dpo)
    return arms


def run_family(spec: str, family: str, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    base = load_model(spec)
    tuned: dict[str, list[LoadedModel]] = {}
    results: dict[str, list[Any]] = {}
    for seed in range(args.seeds):
        for algo, cfg in configs(args, args.seed + seed).items():
            model = clone_model(base)
            res = train(model, cfg)
            tuned.setdefault(algo, []).append(model)
            results.setdefault(algo, []).append(res)
            print(f"  [{family}] {algo.upper():7s} seed {args.seed + seed}: held-out accuracy {res.base_accuracy:.3f} -> "
                  f"{res.final_accuracy:.3f} ({res.seconds:.1f} s, {cfg.max_steps} steps)", flush=True)
    fam_dir = safe_child(out, family)
    fam_dir.mkdir(parents=True, exist_ok=True)
    training_curves(results, fam_dir / "training_curves.png", family)
    try:
        study = run_study(base, tuned, args.task, out=fam_dir, samples=args.probes, max_new_tokens=args.completion_length,
                          granularities=("layer", "head"), n_resamples=args.resamples, seed=args.seed, progress=False,
                          chat_template=False,  # the models were trained on the task's own prompts, so probe with them
                          offline=("dpo", "dpo_rpo", "dpo_offline"), replace=True)  # a rerun replaces its study
    except StudyError as err:  # e.g. a collapsed arm leaves too few problems every model answers: report it, go on
        print(f"  [{family}] study skipped: {err}", flush=True)
        study, skipped = None, str(err)
    else:
        skipped = None
        cut = study.config.cut_coeffs[0]
        for algo in tuned:  # each pair's own cell: its rows, its scored length (none for a pair left out)
            cell = study.cells.get(f"{algo}@{cut:g}")
            if cell is None:
                continue
            plot.delta_heatmap(cell.attributions[("base", "head")], cell.attributions[(f"{algo}#0", "head")],
                               fam_dir / f"delta_heatmap_{algo}_head.png",
                               title=f"{family}: {algo.upper()} (seed {args.seed}) - base, zero-ablation EAP, head graph")
    return {"family": family, "study": study, "skipped": skipped,
            "accuracy": {a: [(r.base_accuracy, r.final_accuracy) for r in rs] for a, rs in results.items()},
            "histories": {a: [r.history for r in rs] for a, rs in results.items()}}


def training_curves(results: dict[str, list[Any]], path: Path, family: str) -> None:
    """Sampled reward (online arms) and held-out greedy accuracy (every arm, DPO included), one line per seed."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 3.5))
    FigureCanvasAgg(fig)
    ax1, ax2 = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    for k, (algo, runs) in enumerate(results.items()):
        for r, res in enumerate(runs):
            label = algo.upper() if r == 0 else None
            steps = [h["step"] for h in res.history]
            if "reward_mean" in res.history[0]:
                ax1.plot(steps, [h["reward_mean"] for h in res.history], color=f"C{k}", alpha=0.7, label=label)
            ev = [(h["step"], h["eval_accuracy"]) for h in res.history if "eval_accuracy" in h]
            ax2.plot([0] + [s for s, _ in ev], [res.base_accuracy] + [a for _, a in ev], marker="o", ms=3,
                     color=f"C{k}", alpha=0.7, label=label)
    ax1.set_title(f"{family}: sampled reward (PPO, GRPO), one line per seed", fontsize=8)
    ax1.set_ylabel("mean reward (fraction correct)")
    ax2.set_title(f"{family}: held-out greedy accuracy, one line per seed", fontsize=8)
    ax2.set_ylabel("accuracy")
    for ax in (ax1, ax2):
        ax.set_xlabel("training step")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(str(path), dpi=120)


def write_report(out: Path, runs: list[dict[str, Any]], args: argparse.Namespace, seconds: float) -> Path:
    arms = list(runs[0]["accuracy"])
    lines: list[str] = ["# PPO vs GRPO vs DPO: circuit changes after RL fine-tuning", "",
             f"Task `{args.task}`, {args.steps} steps per algorithm ({args.batch} completions per step), {args.seeds} "
             f"training seeds from {args.seed}, {args.probes} probe problems, "
             + (f"LoRA r={args.lora_r} on every linear layer" if args.lora_r else "every weight trained")
             + (f", learning rate {args.learning_rate:g}" if args.learning_rate is not None else "")
             + (f" (DPO {args.dpo_learning_rate:g})" if args.dpo_learning_rate is not None else "")
             + f"; wall time {seconds:.0f} s.", ""]
    studies = {r["family"]: r["study"] for r in runs if r["study"] is not None}
    accuracy = {r["family"]: {a: (sum(b for b, _ in v) / len(v), [f for _, f in v]) for a, v in r["accuracy"].items()}
                for r in runs}
    if studies:
        lines += first_screen(studies, accuracy, out, n_resamples=args.resamples, seed=args.seed)
    lines += ["## Held-out accuracy (greedy), mean over seeds [min, max]", "",
             "| family | base | " + " | ".join(a.upper() for a in arms) + " |", "|---" * (len(arms) + 2) + "|"]
    for r in runs:
        acc = r["accuracy"]
        cells = []
        for a in arms:
            final = [f for _, f in acc[a]]
            cells.append(f"{sum(final) / len(final):.3f} [{min(final):.3f}, {max(final):.3f}]")
        lines.append(f"| {r['family']} | {acc[arms[0]][0][0]:.3f} | " + " | ".join(cells) + " |")
    lines += ["", "## Protocol", "",
              "The RL-circuitry paper's, pair by pair: each model's own greedy answers; each algorithm is a pair with "
              "the base, holding the problems the base and every seed of it answer correctly; the paper's length "
              "filters and seeded sample (at most 100 rows); one scored length per pair, cut_len = max(int(refer x "
              "0.1), 1) with refer the shorter mean answer length; zero-ablation EAP of the mean NLL of the first "
              "cut_len tokens of each model's own answer, summed over positions, on the q/k/v-split layer graph and "
              "the head graph. A label's per-prompt delta is the mean over its seeds. CIs: BCa bootstrap 95% of the "
              "mean; q: sign-flip permutation p, Benjamini-Hochberg adjusted over every test of that family's study "
              "(pooled and per layer); sample diversity by resampling rows. A direction is stated only when q < 0.05 "
              "and the CI excludes 0. " + CI_NOTE, ""]
    for r in runs:
        study = r["study"]
        if study is None:
            lines += [f"## {r['family']}: study skipped", "", r["skipped"], ""]
            continue
        pairs = study.protocol["pairs"]
        rows = ", ".join(f"{label} {len(s.rows)} of {s.n_rows}" + (" (left out: fewer than min_kept)"
                                                                   if "skipped" in pairs[label] else "")
                         for label, s in study.selections.items())
        lines += [f"## {r['family']} (rows scored per pair: {rows}; of {study.n_generated} problems, correct: "
                  + ", ".join(f"{k} {v}" for k, v in study.correct.items()) + ")", ""]
        lines += [f"- {c}" for c in study.claims if "[head]" in c or "[layer]" in c]
        for gran in ("layer", "head"):
            cross = [t for t in study.tests if t.granularity == gran and t.scope == "pooled" and t.comparison.startswith("(")
                     and t.metric in ("intensity", "normalized_entropy")]
            lines += ["", f"### {gran} graph", ""] + table_one(study, gran) + [""] + pooled_lines(cross, 0.05)
        lines.append("")
    lines += ["Per family: `<family>/report.md` (every metric), `tests.csv` (per layer too), `per_layer_*.png`, "
              "`ecdf_intensity_*.png`, `deltas_*.png`, `delta_heatmap_<algo>_head.png`, `training_curves.png`, and one "
              "interactive page per pair (`view_<algo>_seed<s>_cut<c>_<granularity>.html`: base and tuned circuits "
              "on one layout, their change, the metric deltas; open it in a browser).", ""]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", help="model spec (repeatable); default: every zoo family")
    parser.add_argument("--task", help="training task (zoo: addition, real models: qa_addition_160)")
    parser.add_argument("--steps", type=int, help="training steps per algorithm (zoo: 120, real: 24)")
    parser.add_argument("--seeds", type=int, help="training seeds per algorithm (zoo: 3, real: 1)")
    parser.add_argument("--probes", type=int, help="problems each model answers (zoo: 256, real: 160)")
    parser.add_argument("--completion-length", type=int, help="max completion tokens (zoo: 4, real: 3)")
    parser.add_argument("--batch", type=int, help="completions per training step (zoo: 64, real: 32)")
    parser.add_argument("--lora-r", type=int, help="LoRA rank on every linear layer, 0: full fine-tuning (zoo: 0, real: 16)")
    parser.add_argument("--learning-rate", type=float, help="(zoo: each config's default, real: 5e-4)")
    parser.add_argument("--dpo-learning-rate", type=float, help="the DPO arms' (zoo: the config's default, real: 5e-5)")
    parser.add_argument("--eval-size", type=int, help="held-out problems per evaluation (zoo: 200, real: 100)")
    parser.add_argument("--resamples", type=int, default=100_000, help="bootstrap resamples per pooled test")
    parser.add_argument("--dpo-rpo", action="store_true", help="add a DPO+RPO arm (reported separately)")
    parser.add_argument("--dpo-offline", action="store_true",
                        help="add an offline DPO arm (pairs sampled once from the base), reported separately")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/compare_ppo_grpo_dpo")
    parser.add_argument("--quick", action="store_true", help="zoo: two families, 8 steps, 2 seeds, 64 probes; "
                        "real: 4 steps")
    args = parser.parse_args(argv)
    specs = args.model or [f"zoo:{f}" for f in (("llama", "neox") if args.quick else sorted(FAMILIES))]
    kinds = {"zoo" if s.startswith("zoo:") else "real" for s in specs}
    if len(kinds) > 1:
        parser.error("run zoo models and real models in separate runs: their defaults differ (see --help)")
    kind = kinds.pop()
    if args.quick:
        # real: every held-out problem still, as the study keeps only those all models answer (base: 1 in 3)
        quick = dict(steps=8, probes=64, seeds=2) if kind == "zoo" else dict(steps=4, eval_size=16)
        args.resamples = 5_000
        for k, v in quick.items():
            if getattr(args, k) is None:
                setattr(args, k, v)
    for k, v in PROFILES[kind].items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    runs = []
    for n, spec in enumerate(specs, 1):
        # a folder name for the spec: never a path that could leave the output folder
        family = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(spec.split(":", 1)[-1]).name) or "model"
        print(f"[{n}/{len(specs)}] {family}", flush=True)
        runs.append(run_family(spec, family, args, out))
        print(f"[{n}/{len(specs)}] {family} done ({time.perf_counter() - t0:.0f} s so far)", flush=True)
    seconds = time.perf_counter() - t0
    (out / "training.json").write_text(json.dumps({r["family"]: {"accuracy": r["accuracy"], "histories": r["histories"]}
                                                   for r in runs}, indent=1))
    report = write_report(out, runs, args, seconds)
    print(report.read_text())
    print(f"wrote {out}; total wall time {seconds:.1f} s")
    return {"runs": runs, "seconds": seconds, "report": report}


if __name__ == "__main__":
    from circuitdyn.cli import run_command

    sys.exit(run_command("compare_ppo_grpo_dpo.py", main))
