"""Study plots: every title names the attribution, the graph and the model family; axes carry units;
whiskers and marks are explained in the figure."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from circuitdyn.analysis.plot import fit_title
from circuitdyn.study.across import ArmEffect
from circuitdyn.study.result import StudyResult

ATTRIBUTION = "zero-ablation EAP, mean NLL of own response"
UNITS = {"intensity": "mean |score| (nats)", "normalized_entropy": "entropy / log(E)", "gini": "Gini coefficient",
         "kurtosis": "excess kurtosis"}


def _canvas(size: tuple[float, float]) -> Any:
    """A Figure drawn by Agg (object API: no pyplot, no global state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size)
    FigureCanvasAgg(fig)
    return fig


def _figure(size: tuple[float, float]) -> tuple[Any, Any]:
    fig = _canvas(size)
    return fig, fig.add_subplot(1, 1, 1)


def _names(result: StudyResult) -> list[str]:
    return [e.name for e in result.entries]


def per_layer(result: StudyResult, gran: str, metric: str, path: Path, family: str) -> Any:
    """Mean over prompts of the per-prompt metric of each destination layer; whiskers: 95% normal CI of the mean."""
    scopes = sorted({s for (_, g, s) in result.metrics if g == gran and s != "pooled"},
                    key=lambda s: (s == "logits", int(s.split()[1]) if s != "logits" else 0))
    fig, ax = _figure((7, 3.8))
    x = np.arange(len(scopes))
    names = _names(result)
    for k, name in enumerate(names):
        means, half = [], []
        for scope in scopes:
            v = result.metrics[(name, gran, scope)][metric]
            v = v[np.isfinite(v)]
            means.append(v.mean() if len(v) else np.nan)
            half.append(1.96 * v.std(ddof=1) / np.sqrt(len(v)) if len(v) > 1 else 0.0)
        ax.errorbar(x + 0.08 * (k - len(names) / 2), means, yerr=half, marker="o", ms=3, capsize=2, label=name)
    ax.set_xticks(x, [s.replace("layer ", "L") for s in scopes], fontsize=7)
    ax.set_xlabel("destination layer")
    ax.set_ylabel(UNITS.get(metric, metric))
    ax.legend(fontsize=7)
    fit_title(ax, f"{family}, {gran} graph: per-layer {metric} ({ATTRIBUTION})\nn = {len(result.kept)} prompts; "
              "whiskers: 95% CI of the mean over prompts", fontsize=8)
    fig.savefig(str(path), dpi=120)
    return fig


def ecdf(result: StudyResult, gran: str, metric: str, path: Path, family: str) -> Any:
    """Empirical CDF of the per-prompt metric, one line per model."""
    fig, ax = _figure((5.5, 3.8))
    for name in _names(result):
        v = np.sort(result.metrics[(name, gran, "pooled")][metric])
        ax.step(v, np.arange(1, len(v) + 1) / len(v), where="post", label=name)
    ax.set_xlabel(f"per-prompt {metric}: {UNITS.get(metric, metric)}")
    ax.set_ylabel("fraction of prompts")
    ax.legend(fontsize=7)
    fit_title(ax, f"{family}, {gran} graph: ECDF of {metric} ({ATTRIBUTION}), n = {len(result.kept)}", fontsize=8)
    fig.savefig(str(path), dpi=120)
    return fig


def deltas(result: StudyResult, gran: str, path: Path, family: str) -> Any:
    """Mean paired delta (tuned - base) per metric, standardised by the base's sd across prompts; bars:
    95% BCa CI; * marks q < alpha (Benjamini-Hochberg over the study)."""
    per_prompt = result.metrics[("base", gran, "pooled")]  # set-level tests (sample diversity) are not drawn here
    tests = [t for t in result.tests if t.granularity == gran and t.scope == "pooled" and t.comparison.endswith("- base")
             and not t.comparison.startswith("(") and t.metric in per_prompt]
    comps = list(dict.fromkeys(t.comparison for t in tests))
    metrics = list(dict.fromkeys(t.metric for t in tests))
    fig, ax = _figure((8, 3.8))
    width = 0.8 / max(1, len(comps))
    for k, comp in enumerate(comps):
        for j, metric in enumerate(metrics):
            t = next(t for t in tests if t.comparison == comp and t.metric == metric)
            base = result.metrics[("base", gran, "pooled")][metric]
            sd = float(np.nanstd(base, ddof=1)) or 1.0
            s = t.stat
            xpos = j + (k - (len(comps) - 1) / 2) * width
            ax.bar(xpos, s.mean / sd, width, color=f"C{k}", label=comp if j == 0 else None)
            ax.errorbar(xpos, s.mean / sd, yerr=[[(s.mean - s.ci_low) / sd], [(s.ci_high - s.mean) / sd]], color="k",
                        capsize=2, lw=0.8)
            if s.q_value < result.config.alpha:
                ax.text(xpos, max(s.ci_high, s.mean) / sd, "*", ha="center", va="bottom")
    ax.axhline(0, color="k", lw=0.5)
    ax.set_xticks(range(len(metrics)), metrics, rotation=20, fontsize=7)
    ax.set_ylabel("mean delta / sd of base (per prompt)")
    ax.legend(fontsize=7)
    fit_title(ax, f"{family}, {gran} graph: tuned - base ({ATTRIBUTION}), n = {len(result.kept)}\n"
              f"bars: 95% BCa CI; *: q < {result.config.alpha} (BH-FDR)", fontsize=8)
    fig.savefig(str(path), dpi=120)
    return fig


def forest(effects: Sequence[ArmEffect], path: Path, title: str) -> Any:
    """Each arm's standardized change (tuned - base, / the base's sd across the pair's prompts) with its 95%
    BCa CI, one row per family and arm, one panel per metric; a degraded arm is drawn hollow and grey."""
    metrics = list(dict.fromkeys(e.metric for e in effects))
    rows = list(dict.fromkeys((e.family, e.arm) for e in effects))
    fig = _canvas((3.2 * max(1, len(metrics)) + 1.2, 1.2 + 0.24 * len(rows)))
    arms = list(dict.fromkeys(arm for _, arm in rows))
    y = {row: len(rows) - 1 - k for k, row in enumerate(rows)}
    for j, metric in enumerate(metrics):
        ax = fig.add_subplot(1, len(metrics), j + 1)
        for e in (e for e in effects if e.metric == metric):
            mean, lo, hi = e.standardized
            color = "0.6" if e.degraded else f"C{arms.index(e.arm)}"
            ax.errorbar(mean, y[(e.family, e.arm)], xerr=[[mean - lo], [hi - mean]], fmt="o", ms=4, capsize=2,
                        color=color, mfc="none" if e.degraded else color, lw=1)
        ax.axvline(0, color="k", lw=0.5)
        ax.set_yticks(list(y.values()), [f"{f} {a}" for f, a in y] if j == 0 else [""] * len(y), fontsize=7)
        ax.set_xlabel(f"{metric}: change / base sd", fontsize=8)
        ax.tick_params(axis="x", labelsize=7)
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    fig.savefig(str(path), dpi=120)
    return fig
