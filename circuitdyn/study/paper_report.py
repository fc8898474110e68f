"""report.md of a paper-protocol study: the pairs' selection, then a table laid out like the paper's Table 1
(per pair and cut coefficient, base -> tuned for intensity, entropy, kurtosis and sample diversity, with the
delta, its 95% CI and q), the claims, and every pooled test."""

from __future__ import annotations

import json

import numpy as np

from circuitdyn.analysis.metrics import edge_vector, sample_diversity
from circuitdyn.study.pairs import DIVERSITY
from circuitdyn.study.result import CI_MARK, CI_NOTE, StudyResult, Test

TABLE_ONE = ("intensity", "entropy", "kurtosis", DIVERSITY)


def _g(x: float) -> str:
    return "nan" if not np.isfinite(x) else f"{x:.4g}"


def _selection_lines(result: StudyResult) -> list[str]:
    coeffs = result.config.cut_coeffs
    lines = ["| pair | rows from | both-correct rows | refer | removed: prompt length / mean length / balance | "
             "passed | scored | " + " | ".join(f"cut_len @{c:g}" for c in coeffs) + " |",
             "|---|---|---|---|---|---|---|" + "---|" * len(coeffs)]
    for label, s in result.selections.items():
        pair = result.protocol["pairs"][label]
        source = "generated" if pair["source"] == "generated" else ", ".join(pair["source"])
        removed = " / ".join(str(v) for v in s.removed.values())
        scored = f"{len(s.rows)}" + (" (pair left out: fewer than min_kept)" if "skipped" in pair else "")
        lines.append(f"| {label} - base | {source} | {s.n_rows} | {s.refer:.4g} | {removed} | {s.n_passed} | "
                     f"{scored} | " + " | ".join(str(s.cut_len(c)) for c in coeffs) + " |")
    return lines


def _means(view: StudyResult, gran: str, metric: str) -> tuple[float, float]:
    """Base and tuned (mean over seeds) means over the cell's rows; sample diversity of the whole set."""
    if metric == DIVERSITY:
        values = {e.name: sample_diversity(edge_vector(view.attributions[(e.name, gran)], per_example=True))
                  for e in view.entries}
    else:
        values = {e.name: float(np.nanmean(view.metrics[(e.name, gran, "pooled")][metric])) for e in view.entries}
    return values["base"], float(np.mean([v for k, v in values.items() if k != "base"]))


def table_one(result: StudyResult, gran: str) -> list[str]:
    alpha = result.config.alpha
    head = "| pair | cut | n | " + " | ".join(TABLE_ONE) + " |"
    lines = [head, "|---|---|---|" + "---|" * len(TABLE_ONE)]
    for name, view in result.cells.items():
        label, _, cut = name.partition("@")
        cells = []
        for metric in TABLE_ONE:
            t = next((t for t in view.tests if t.metric == metric and t.granularity == gran and t.scope == "pooled"), None)
            if t is None:
                cells.append("-")
                continue
            base, tuned = _means(view, gran, metric)
            s = t.stat
            mark = f" {CI_MARK}" if s.ci_only(alpha) else ""
            cells.append(f"{_g(base)} -> {_g(tuned)} ({s.mean:+.3g} [{s.ci_low:+.3g}, {s.ci_high:+.3g}], q={s.q_value:.2g}, "
                         f"{s.direction(alpha).value}{mark})")
        lines.append(f"| {label} - base | {cut} | {len(view.kept)} | " + " | ".join(cells) + " |")
    return lines


def pooled_lines(tests: list[Test], alpha: float) -> list[str]:
    lines = ["| comparison | cut | metric | n | mean delta [95% CI] | q | direction |", "|---|---|---|---|---|---|---|"]
    for t in tests:
        s = t.stat
        lines.append(f"| {t.comparison} | {t.cut} | {t.metric} | {s.n} | {s.mean:+.4g} [{s.ci_low:+.4g}, "
                     f"{s.ci_high:+.4g}] | {s.q_value:.3g} | {s.direction(alpha).value}"
                     f"{' ' + CI_MARK if s.ci_only(alpha) else ''} |")
    return lines


def paper_markdown(result: StudyResult) -> str:
    cfg, p = result.config, result.protocol
    lines = ["# RL-circuitry study (the paper's protocol, pair by pair)", "", CI_NOTE, ""]
    if result.n_generated:
        lines += [f"Problems: `{p['problems']['source']}` (sha256 {result.problems_hash[:12]}), {result.n_generated} "
                  f"generated per model, greedy, max {cfg.max_new_tokens} new tokens. Correct per model: "
                  + ", ".join(f"{k} {v}/{result.n_generated}" for k, v in result.correct.items()), ""]
    for gran in cfg.granularities:
        lines += [f"## Table 1 ({gran} graph): base -> tuned, delta [95% CI], q", ""] + table_one(result, gran) + [""]
    lines += ["## Pairs: rows and scored lengths", "",
              "Each tuned label is a pair with the base. Its rows are the problems both answer correctly; refer = "
              "min(mean base answer length, mean tuned answer length) over them; a row is kept when its prompts "
              f"have equal length, its mean answer length lies in [int({cfg.small_coeff:g} refer), "
              f"int({cfg.big_coeff:g} refer)] and |difference| / mean <= {cfg.balance_coeff:g}; then "
              f"random.seed({cfg.sample_seed}); random.sample(rows, {cfg.num_samples}). Every model of a pair is "
              "scored on the first cut_len = max(int(refer x cut), 1) tokens of its own answer (the base once per "
              "pair: its cut length differs between pairs). (A - base) - (B - base) is tested on the rows both "
              "pairs kept, each delta at its own pair's length.", ""] + _selection_lines(result)
    lines += ["", "## The paper's claims, as measured", ""] + [f"- {c}" for c in result.claims]
    lines += ["", "Statistics: per-prompt paired differences (tuned: the mean over its seeds); mean, BCa bootstrap 95% CI "
              f"({cfg.n_resamples} resamples) and a sign-flip permutation p; sample diversity: the change of 1 - mean "
              "pairwise correlation, CI and p by resampling rows. q = Benjamini-Hochberg over all "
              f"{len(result.tests)} tests; a direction is claimed when q < {cfg.alpha} and the CI excludes 0."]
    for gran in cfg.granularities:
        pooled = [t for t in result.tests if t.granularity == gran and t.scope == "pooled"]
        lines += ["", f"## Every pooled test, {gran} graph", ""] + pooled_lines(pooled, cfg.alpha)
    lines += ["", "Per-layer tests: `tests.csv`. Plots per pair and cut: `*_<label>_cut<c>.png`. Circuits, base beside "
              "each tuned model, per pair and cut (open in a browser): `view_<model>_cut<c>_<granularity>.html`. "
              "Pair files: `generations/<label>.jsonl` (the paper's all_correct.jsonl schema).", "",
              f"Wall time: {json.dumps(p.get('seconds', {}))}", ""]
    return "\n".join(lines)
