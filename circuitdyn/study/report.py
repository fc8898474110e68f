"""What a study writes: protocol and provenance, generations, tables (CSV and JSON), plots and report.md.

Primary intensity everywhere is the per-prompt one (each prompt's metric, then the mean over prompts), as
the paper's per-sample scores suggest. The metric of the prompt-averaged signed scores, where signs of
different prompts cancel, appears only in model_metrics.csv, named `<metric>_of_mean_scores`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from circuitdyn.analysis import viewer
from circuitdyn.analysis.metrics import circuit_metrics
from circuitdyn.analysis.report import save_records, to_csv
from circuitdyn.attribution.files import save_attribution
from circuitdyn.core.atomic import atomic_write_text
from circuitdyn.core.outputs import safe_child
from circuitdyn.study.paper_report import paper_markdown
from circuitdyn.study.result import CI_MARK, CI_NOTE, StudyResult

PLOT_METRICS = ("intensity", "normalized_entropy", "gini")
PAGE_EDGES = 300  # edges a study's viewer page holds per ranking


def write_generations(out: Path, problems: Sequence[Any], generations: dict[str, list[Any]], kept: Sequence[int],
                      protocol: dict[str, Any]) -> None:
    """Saved before attribution (and before a refusal), so the generation work is never lost."""
    out.mkdir(parents=True, exist_ok=True)
    keep = set(kept)
    lines = []
    for name, gens in generations.items():
        for i, (p, g) in enumerate(zip(problems, gens)):
            lines.append(json.dumps({"model": name, "problem": i, "question": p.question, "reference": p.answer,
                                     "response": g.text, "correct": g.correct, "stopped": g.stopped,
                                     "response_tokens": len(g.response_ids), "kept": i in keep}))
    atomic_write_text(out / "generations.jsonl", "\n".join(lines) + "\n")
    write_protocol(out, protocol)


def write_protocol(out: Path, protocol: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "protocol.json", json.dumps(protocol, indent=1, default=str))


def _model_records(result: StudyResult) -> list[dict[str, Any]]:
    rows = []
    for (name, gran, scope), table in result.metrics.items():
        row: dict[str, Any] = {"model": name, "granularity": gran, "scope": scope, "n": len(result.kept)}
        for metric, values in table.items():
            row[f"{metric}_mean"] = float(np.nanmean(values))
            row[f"{metric}_sd"] = float(np.nanstd(values, ddof=1)) if len(values) > 1 else float("nan")
        if scope == "pooled":
            for metric, value in circuit_metrics(result.attributions[(name, gran)]).items():
                row[f"{metric}_of_mean_scores"] = float(value)
        rows.append(row)
    return rows


def _fmt(x: float) -> str:
    return "nan" if not np.isfinite(x) else f"{x:+.4g}"


def pooled_table(result: StudyResult, gran: str, metrics: Sequence[str] | None = None) -> list[str]:
    """Markdown lines of the pooled tests of one graph (every headline metric, or `metrics`)."""
    alpha = result.config.alpha
    lines = ["| comparison | metric | n | mean delta [95% CI] | q | direction | seed means (min..max) | median | "
             "Wilcoxon p |", "|---|---|---|---|---|---|---|---|---|"]
    for t in result.tests:
        if t.granularity != gran or t.scope != "pooled" or (metrics is not None and t.metric not in metrics):
            continue
        s = t.stat
        seeds = f"{len(t.seed_means)}: {min(t.seed_means):+.3g}..{max(t.seed_means):+.3g}" if len(t.seed_means) > 1 else "-"
        lines.append(f"| {t.comparison} | {t.metric} | {s.n} | {_fmt(s.mean)} [{_fmt(s.ci_low)}, {_fmt(s.ci_high)}] "
                     f"| {s.q_value:.3g} | {s.direction(alpha).value}{' ' + CI_MARK if s.ci_only(alpha) else ''} | "
                     f"{seeds} | {_fmt(s.median)} | {s.wilcoxon_p:.3g} |")
    return lines


def markdown(result: StudyResult) -> str:
    cfg = result.config
    p = result.protocol
    lines = ["# RL-circuitry study", "",
             f"Problems: `{p['problems']['source']}` (sha256 {result.problems_hash[:12]}), {result.n_generated} "
             f"generated per model, greedy, max {cfg.max_new_tokens} new tokens; kept {len(result.kept)} answered "
             "correctly by every model.", "",
             "Correct per model: " + ", ".join(f"{k} {v}/{result.n_generated}" for k, v in result.correct.items()), "",
             f"Attribution: zero-ablation EAP of the mean NLL of the first {cfg.fraction:g} of each model's own "
             "response (at least 1 token), teacher forced on its own token ids, summed over positions, per prompt.",
             "",
             "Statistics: per-prompt paired differences. Primary: mean, BCa bootstrap 95% CI "
             f"({cfg.n_resamples} resamples; {cfg.layer_resamples} per layer) and a sign-flip permutation test of the mean; "
             "q = Benjamini-Hochberg "
             f"adjusted p over all {len(result.tests)} tests of this study. A direction is claimed only when "
             f"q < {cfg.alpha} and the CI excludes 0. Secondary (not used for verdicts): median and Wilcoxon p.",
             "", "## The paper's claims, as measured", ""]
    lines += [f"- {c}" for c in result.claims]
    lines += ["", CI_NOTE]
    for gran in cfg.granularities:
        lines += ["", f"## Pooled metrics, {gran} graph", ""] + pooled_table(result, gran)
    lines += ["", "Per-layer tests: `tests.csv` (scope column). Plots: `per_layer_<metric>_<granularity>.png`, "
              "`ecdf_intensity_<granularity>.png`, `deltas_<granularity>.png`. Circuits, base beside each tuned model "
              "(open in a browser): `view_<model>_<granularity>.html`.", "",
              f"Wall time: {json.dumps(result.protocol.get('seconds', {}))}", ""]
    return "\n".join(lines)


def _cell_file(cell: str) -> str:
    """A cell's name ("grpo@0.1") as a file-name part ("grpo_cut0.1")."""
    label, _, cut = cell.partition("@")
    return f"{label}_cut{cut}" if cut else label


def _write_views(result: StudyResult, out: Path) -> list[dict[str, Any]]:
    """Attribution files, plots and model metrics of the study, or of each of its cells (paper protocol)."""
    from circuitdyn.study import plots

    family = next(iter(result.protocol["models"].values()))["family"]
    models = []
    for cell, view in (result.cells or {"": result}).items():
        suffix = f"_{_cell_file(cell)}" if cell else ""
        models += [{"cell": cell, **row} if cell else row for row in _model_records(view)]
        if result.config.save_attributions:
            folder = out / "attributions"
            folder.mkdir(exist_ok=True)
            for (name, gran), attr in view.attributions.items():
                save_attribution(attr, safe_child(folder, f"{name.replace('#', '_seed')}{suffix}_{gran}.safetensors"))
        for gran in result.config.granularities:
            for metric in PLOT_METRICS:
                plots.per_layer(view, gran, metric, out / f"per_layer_{metric}_{gran}{suffix}.png", family)
            plots.ecdf(view, gran, "intensity", out / f"ecdf_intensity_{gran}{suffix}.png", family)
            plots.deltas(view, gran, out / f"deltas_{gran}{suffix}.png", family)
            where = f"{family}, {cell}" if cell else family
            _write_pages(view, gran, out, f"_cut{cell.partition('@')[2]}" if cell else "", where)
    return models


def _write_pages(result: StudyResult, gran: str, out: Path, suffix: str, where: str) -> None:
    """One viewer page per tuned model and graph: its circuit beside the base's, with the change."""
    base = result.attributions[("base", gran)]
    for (name, g), tuned in result.attributions.items():
        if g == gran and name != "base":
            viewer.view(base, tuned, out=safe_child(out, f"view_{name.replace('#', '_seed')}{suffix}_{gran}.html"),
                 labels=("base", name), title=f"{name} vs base: {gran} graph ({where})", max_edges=PAGE_EDGES,
                 n_resamples=result.config.layer_resamples)


def write_study(result: StudyResult, out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    write_protocol(out, result.protocol)
    records = [t.record(result.config.alpha) for t in result.tests]
    to_csv(records, out / "tests.csv")
    save_records(records, out / "tests.json")
    models = _write_views(result, out)
    to_csv(models, out / "model_metrics.csv")
    save_records(models, out / "model_metrics.json")
    path = out / "report.md"
    atomic_write_text(path, paper_markdown(result) if result.cells else markdown(result))
    return path
