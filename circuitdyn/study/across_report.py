"""The first screen of a report over several studies (one per model family, each with the same arms): one
table (family x arm: accuracy and each metric's change with CI and direction, the minimum detectable effect
beside every "no detectable change"), one forest plot, and one answer to "does online RL move these more than
the offline arm?" over (family, seed) units, Benjamini-Hochberg adjusted over its tests."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from circuitdyn.analysis.stats import ALPHA, Direction, PairedStat, fdr_adjust
from circuitdyn.study import plots
from circuitdyn.study.across import PER_PROMPT, ArmContrast, ArmEffect, arm_effects, online_vs_offline
from circuitdyn.study.result import CI_MARK, CI_NOTE, StudyResult


def change_words(stat: PairedStat, alpha: float = ALPHA, unit: str = "") -> str:
    """"+0.012 [+0.003, +0.021] up", or "no detectable change (could have seen |delta| >= 0.02)"."""
    found = stat.direction(alpha)
    ci = f"{stat.mean:+.3g} [{stat.ci_low:+.3g}, {stat.ci_high:+.3g}]{unit}"
    if found is not Direction.NONE:  # up, down, or too few to test (then nothing could have been seen)
        return f"{ci} {found.value}"
    mde = stat.minimum_detectable_effect(alpha)
    mark = f" {CI_MARK}" if stat.ci_only(alpha) else ""
    return f"{ci} {found.value}{mark}" + (f" (could have seen >= {mde:.2g}{unit})" if math.isfinite(mde) else "")


def contrast_line(c: ArmContrast, q: float) -> str:
    if c.stat is None:
        have = f"only {', '.join(c.units)}" if c.units else "none"
        return (f"- {c.metric}: |{c.online}| - |{c.offline}|: not tested (fewer than two family-seed units: "
                + "; ".join([have, *c.left_out]) + "; more seeds or families give more units)")
    s = c.stat
    found = s.with_q(q).direction(ALPHA)
    if found.detected:
        who = c.online if s.mean > 0 else c.offline
        words = f"{who} moves it more"
    elif found is Direction.TOO_FEW:
        words = f"{found.value} ({s.n} units)"
    else:
        words = f"no detectable difference (could have seen >= {s.minimum_detectable_effect(ALPHA):.2g} sd)"
    left = f"; left out: {'; '.join(c.left_out)}" if c.left_out else ""
    return (f"- {c.metric}: |{c.online} change| - |{c.offline} change| = {s.mean:+.3g} sd [{s.ci_low:+.3g}, "
            f"{s.ci_high:+.3g}] over {s.n} family-seed units, q={q:.2g}: {words}{left}")


def first_screen(studies: Mapping[str, StudyResult], accuracy: Mapping[str, Mapping[str, tuple[float, Sequence[float]]]],
                 out: Path, *, granularity: str = "layer", offline: str = "dpo", online: Sequence[str] = ("ppo", "grpo"),
                 n_resamples: int = 100_000, seed: int = 0) -> list[str]:
    """Markdown lines of the first screen; writes `forest_<granularity>.png` into `out`. `accuracy` maps a
    family to {arm: (base accuracy, final accuracy of each seed)}."""
    metrics = [*PER_PROMPT, "sample_diversity"]
    every = [e for family, study in studies.items() for e in arm_effects(family, study, granularity, metrics)]
    effects: list[ArmEffect] = [e for e in every if e.metric in PER_PROMPT]  # per-seed units: tested and drawn
    contrasts = [online_vs_offline(effects, arm, offline, metric, n_resamples=n_resamples, seed=seed)
                 for metric in PER_PROMPT for arm in online]
    qs = fdr_adjust([c.stat.p_value if c.stat is not None else math.nan for c in contrasts])
    lines = [f"## Does online RL move these more than {offline}? ({granularity} graph)", "",
             f"Per family and training seed, each arm's change (tuned - base) in units of the base's sd across its "
             f"pair's prompts; the test is over (family, seed) units of |online change| - |{offline} change| "
             f"(sign-flip permutation p, BCa CI, Benjamini-Hochberg over these {len(contrasts)} tests); 'could have "
             "seen' is the change this test detects with probability 0.8 at alpha 0.05.", "", CI_NOTE, ""]
    lines += [contrast_line(c, q) for c, q in zip(contrasts, qs)]
    lines += ["", f"## Family x arm ({granularity} graph): accuracy and each metric's change, tuned - base", "",
              "| family | arm | held-out accuracy, base -> tuned (mean of seeds) | rows | " + " | ".join(metrics) + " |",
              "|---|---|---|---|" + "---|" * len(metrics)]
    for family, study in studies.items():
        for arm, (base_acc, finals) in accuracy.get(family, {}).items():
            acc = f"{base_acc:.3f} -> {sum(finals) / len(finals):.3f}" if finals else "-"
            found = {e.metric: e for e in every if e.family == family and e.arm == arm}
            if not found:
                why = study.protocol.get("pairs", {}).get(arm, {}).get("skipped", "no pair")
                lines.append(f"| {family} | {arm} | {acc} | - | left out: {why} |" + " |" * (len(metrics) - 1))
                continue
            first = next(iter(found.values()))
            mark = f" (degraded: left out of the answer above; {first.degraded})" if first.degraded else ""
            lines.append(f"| {family} | {arm}{mark} | {acc} | {first.stat.n} | "
                         + " | ".join(change_words(found[m].stat) if m in found else "-" for m in metrics) + " |")
    path = out / f"forest_{granularity}.png"
    plots.forest(effects, path, f"tuned - base / base sd, 95% BCa CI, {granularity} graph (hollow grey: degraded)")
    lines += ["", f"![each arm's change per family]({path.name})", ""]
    return lines
