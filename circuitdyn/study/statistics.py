"""The study's statistics: the paired tests over the per-prompt metric tables (FDR-controlled over the whole
study) and the paper's claims stated as measured."""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import replace

import numpy as np

from circuitdyn.analysis.stats import N_PERMUTATIONS, Direction, PairedStat, fdr_adjust, paired_stat
from circuitdyn.study.config import StudyConfig
from circuitdyn.study.result import CONCENTRATION, HEADLINE, LAYER_METRICS, Entry, Test


def seed_deltas(metrics: Mapping[tuple[str, str, str], dict[str, np.ndarray]], names: Sequence[str], gran: str,
                scope: str, metric: str) -> np.ndarray:
    """Per seed (row) and prompt (column): the seed's metric minus the base's, `[seeds, prompts]`."""
    base = metrics[("base", gran, scope)][metric]
    return np.stack([metrics[(name, gran, scope)][metric] - base for name in names])


def paired_tests(cfg: StudyConfig, entries: Sequence[Entry], metrics: dict[tuple[str, str, str], dict[str, np.ndarray]],
                 cut: str = "") -> list[Test]:
    """tuned - base for every label (the mean over its seeds, per prompt) and (A - base) - (B - base) for every
    two labels, per graph, scope and metric; q-values are set by with_fdr over the whole study."""
    labels = list(dict.fromkeys(e.label for e in entries if e.label != "base"))
    reps = {lab: [e.name for e in entries if e.label == lab] for lab in labels}
    scopes = sorted({k[2] for k in metrics}, key=lambda s: (s != "pooled", s == "logits", len(s), s))
    tests: list[Test] = []
    for gran in cfg.granularities:
        for scope in scopes:
            pooled = scope == "pooled"
            resamples = cfg.n_resamples if pooled else min(cfg.n_resamples, cfg.layer_resamples)
            for metric in HEADLINE if pooled else LAYER_METRICS:
                deltas = {}
                for lab in labels:
                    per_rep = seed_deltas(metrics, reps[lab], gran, scope, metric)
                    ok = np.isfinite(per_rep).all(0)
                    if not ok.all():  # an all-zero layer has no entropy: say so by testing fewer prompts
                        per_rep = per_rep[:, ok]
                    deltas[lab] = (per_rep.mean(0), ok)
                    stat = paired_stat(per_rep.mean(0), n_resamples=resamples, seed=cfg.seed,
                                       n_permutations=min(resamples, N_PERMUTATIONS))
                    tests.append(Test(f"{lab} - base", gran, scope, metric, stat, tuple(float(m) for m in per_rep.mean(1)),
                                      cut))
                for a, b in itertools.combinations(labels, 2):
                    da, oka = deltas[a]
                    db, okb = deltas[b]
                    both = oka & okb
                    diff = da[both[oka]] - db[both[okb]]
                    stat = paired_stat(diff, n_resamples=resamples, seed=cfg.seed,
                                       n_permutations=min(resamples, N_PERMUTATIONS))
                    tests.append(Test(f"({a} - base) - ({b} - base)", gran, scope, metric, stat, cut=cut))
    return tests


def with_fdr(tests: Sequence[Test]) -> list[Test]:
    """Benjamini-Hochberg q-values over the whole family of a study's tests."""
    qs = fdr_adjust([t.stat.p_value for t in tests])
    return [replace(t, stat=t.stat.with_q(q)) for t, q in zip(tests, qs)]


def verdict(stat: PairedStat, expected: Direction, alpha: float) -> str:
    """A claim that `expected` is the direction of change: "holds", "contradicted" (significant the other
    way, with the estimate) or "not supported" (no detectable change, or too few pairs to test)."""
    found = stat.direction(alpha)
    if found is expected:
        return "holds"
    if found.detected:
        return f"contradicted ({found.value}: {stat.mean:+.3g}, q={stat.q_value:.2g})"
    return "not supported"


def _moves(mean: float) -> str:
    return "raises" if mean > 0 else "lowers" if mean < 0 else "leaves"


def compare_arms(a: str, b: str, da: float, db: float, diff: PairedStat, alpha: float) -> str:
    """How arm a's change compares with arm b's, by magnitude and direction: "both lower it; grpo lowers it
    less", never a signed difference read as "stronger"."""
    if not diff.direction(alpha).detected:
        return (f"no detectable difference between the two changes ({a} {_moves(da)} it by {abs(da):.3g}, {b} "
                f"{_moves(db)} it by {abs(db):.3g})" if diff.direction(alpha) is Direction.NONE else
                diff.direction(alpha).value)
    if np.sign(da) == np.sign(db) and da != 0:
        return f"both {_moves(da)[:-1]} it; {a} {_moves(da)} it {'more' if abs(da) > abs(db) else 'less'}"
    return f"{a} {_moves(da)} it ({da:+.3g}), {b} {_moves(db)} it ({db:+.3g})"


def degraded_labels(correct: Mapping[str, int], labels: Sequence[str]) -> dict[str, str]:
    """The tuned labels whose models answer fewer probe problems correctly than the base (mean over seeds),
    each with the reason: a model that training broke says nothing about what RL does to circuits, so its
    claims are withheld (its tests are still reported)."""
    out = {}
    for lab in labels:
        seeds = [v for k, v in correct.items() if k.rsplit("#", 1)[0] == lab and "#" in k]
        if "base" in correct and seeds and sum(seeds) / len(seeds) < correct["base"]:
            out[lab] = (f"degraded: {lab} answers {sum(seeds) / len(seeds):.1f} probe problems correctly (mean over "
                        f"{len(seeds)} seed(s)), the base {correct['base']}")
    return out


def state_claims(cfg: StudyConfig, tests: Sequence[Test], labels: Sequence[str],
                 degraded: Mapping[str, str] | None = None) -> list[str]:
    """The paper's three directional claims, stated as measured (pooled scope, each granularity). A label in
    `degraded` gets one line with the reason instead, and no comparison with another arm."""
    out = []
    degraded = degraded or {}
    for gran in cfg.granularities:
        out += [f"[{gran}] {lab} left out of the claims: {why}" for lab, why in degraded.items() if lab in labels]
    labels = [lab for lab in labels if lab not in degraded]
    pooled = {(t.comparison, t.granularity, t.metric): t for t in tests if t.scope == "pooled"}

    def fmt(t: Test) -> str:
        s = t.stat
        return (f"{s.mean:+.4g} [{s.ci_low:+.4g}, {s.ci_high:+.4g}], q={s.q_value:.3g}: "
                f"{s.direction(cfg.alpha).value}")
    online = [lab for lab in labels if not cfg.is_offline(lab)]
    offline = [lab for lab in labels if cfg.is_offline(lab)]
    for gran in cfg.granularities:
        for lab in labels:
            kind = "offline" if cfg.is_offline(lab) else "online RL"
            def get(m: str, lab: str = lab, gran: str = gran) -> Test:
                return pooled[(f"{lab} - base", gran, m)]
            conc = [get(m).stat for m in CONCENTRATION]
            concentration = "holds" if all(s.direction(cfg.alpha) is Direction.DOWN for s in conc) else next(
                (verdict(s, Direction.DOWN, cfg.alpha) for s in conc if s.direction(cfg.alpha) is Direction.UP),
                "not supported")
            out.append(
                f"[{gran}] {lab} ({kind}) vs base: intensity {fmt(get('intensity'))}; normalized entropy "
                f"{fmt(get('normalized_entropy'))}; concentration (gini, top_share_0.05, kurtosis): "
                f"{', '.join(s.direction(cfg.alpha).value for s in conc)}. Paper's claims (intensity up, entropy up, "
                f"concentration down): {verdict(get('intensity').stat, Direction.UP, cfg.alpha)} / "
                f"{verdict(get('normalized_entropy').stat, Direction.UP, cfg.alpha)} / {concentration} here."
            )
        for a, b in itertools.product(online, offline):
            key = f"({a} - base) - ({b} - base)" if labels.index(a) < labels.index(b) else f"({b} - base) - ({a} - base)"
            for metric in ("intensity", "normalized_entropy"):
                t = pooled.get((key, gran, metric))
                if t is None:
                    continue
                sign = 1 if key.startswith(f"({a}") else -1  # orient the test as (a - base) - (b - base)
                s = t.stat
                lo, hi = sorted((sign * s.ci_low, sign * s.ci_high))
                words = compare_arms(a, b, pooled[(f"{a} - base", gran, metric)].stat.mean,
                                     pooled[(f"{b} - base", gran, metric)].stat.mean, s, cfg.alpha)
                out.append(f"[{gran}] {metric}: change under {a} minus change under {b}: {sign * s.mean:+.4g} "
                           f"[{lo:+.4g}, {hi:+.4g}], q={s.q_value:.3g}: {words} (the paper expects online RL to "
                           f"move it more than {b}).")
    return out
