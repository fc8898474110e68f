"""The study's words say what its numbers say: constructed statistics for arms that move the same way by
different amounts, a significant change against the paper's claim, and a CI that excludes 0 while q does not
pass (issue: the report's words)."""

from circuitdyn.analysis.stats import Direction, PairedStat
from circuitdyn.study import StudyConfig
from circuitdyn.study import Test as StudyTest
from circuitdyn.study.result import CI_MARK
from circuitdyn.study.statistics import compare_arms, state_claims, verdict


def stat(mean, lo, hi, q, n=40):
    return PairedStat(n, mean, lo, hi, q, mean, q, q)


def test_both_arms_lower_it_and_the_weaker_one_is_not_called_stronger():
    diff = stat(+0.02, 0.01, 0.03, 0.001)  # (grpo - base) - (dpo - base) > 0: grpo lowers it LESS
    assert compare_arms("grpo", "dpo", -0.01, -0.03, diff, 0.05) == "both lower it; grpo lowers it less"
    assert compare_arms("grpo", "dpo", +0.05, +0.01, stat(+0.04, 0.02, 0.06, 0.001), 0.05) == \
        "both raise it; grpo raises it more"
    assert compare_arms("grpo", "dpo", +0.01, -0.02, stat(+0.03, 0.01, 0.05, 0.001), 0.05) == \
        "grpo raises it (+0.01), dpo lowers it (-0.02)"
    assert compare_arms("grpo", "dpo", -0.01, -0.03, stat(+0.02, -0.01, 0.05, 0.4), 0.05).startswith(
        "no detectable difference between the two changes (grpo lowers it by 0.01, dpo lowers it by 0.03)")


def test_a_significant_change_against_the_claim_is_contradicted_not_unsupported():
    down = stat(-0.004, -0.006, -0.002, 0.002)
    assert verdict(down, Direction.UP, 0.05) == "contradicted (down: -0.004, q=0.002)"
    assert verdict(stat(0.001, -0.001, 0.003, 0.5), Direction.UP, 0.05) == "not supported"
    assert verdict(stat(0.004, 0.002, 0.006, 0.002), Direction.UP, 0.05) == "holds"
    cfg = StudyConfig(granularities=("layer",))
    tests = [StudyTest("grpo - base", "layer", "pooled", m, down if m == "intensity" else stat(0.0, -0.1, 0.1, 0.9))
             for m in ("intensity", "normalized_entropy", "gini", "top_share_0.05", "kurtosis")]
    (line,) = state_claims(cfg, tests, ["grpo"])
    assert "(intensity up, entropy up, concentration down): contradicted (down: -0.004, q=0.002) / not supported / " \
           "not supported here." in line


def test_a_ci_that_excludes_zero_with_a_large_q_is_marked_and_explained():
    from circuitdyn.study.paper_report import pooled_lines

    ci_only = stat(0.1, 0.01, 0.2, 0.2)
    assert ci_only.ci_only(0.05) and not stat(0.1, 0.01, 0.2, 0.01).ci_only(0.05)
    lines = pooled_lines([StudyTest("grpo - base", "layer", "pooled", "intensity", ci_only, cut="0.1")], 0.05)
    assert lines[-1].endswith(f"| no detectable change {CI_MARK} |")
