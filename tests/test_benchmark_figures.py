"""The README's benchmark figures are the recorded runs' medians, and its "met" words follow them: the
GPT-2-shape rows from the two fresh runs in benchmarks/results/shapes_gpt2_run{1,2}.json, the peer rows from
benchmarks/results/peers.json (whose scores must equal the peers' edge for edge)."""

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
RESULTS = ROOT / "benchmarks" / "results"

#: README row (its start) -> (shape, ratio key, goal or None)
ROWS = {
    "| EAP head / bare, GPT-2 shape 16 layers x 64 tokens": ("gpt2-16x64", "eap_head_over_bare", 1.6),
    "| the same, the corrupt prompts differing from the middle on": ("gpt2-16x64-mid", "eap_head_over_bare", 1.6),
    "| EAP head under zero ablation": ("gpt2-16x64", "eap_head_zero_over_fwd_bwd", None),
    "| EAP layer (q/k/v split) / bare, 16 x 64": ("gpt2-16x64", "eap_layer_over_bare", 1.15),
    "| the same, differing from the middle on": ("gpt2-16x64-mid", "eap_layer_over_bare", 1.15),
    "| EAP-IG(5) head / one bare fwd+bwd, 16 x 64: midpoint": ("gpt2-16x64", "eap_ig5_head_over_fwd_bwd", 6.0),
    "| the same, `quadrature=\"right\"` (hannamw": ("gpt2-16x64", "eap_ig5_head_right_over_fwd_bwd", None),
    "| the same, `quadrature=\"trapezoid\"` (5 passes": ("gpt2-16x64", "eap_ig5_head_trapezoid_over_fwd_bwd", 6.0),
}


def _row(start: str) -> str:
    line = next((line for line in README.splitlines() if line.startswith(start)), None)
    assert line is not None, f"README has no row starting {start!r}"
    return line


def _medians(shape: str, key: str, threads: int) -> list[float]:
    runs = [json.loads((RESULTS / f"shapes_gpt2_run{r}.json").read_text()) for r in (1, 2)]
    return [run[shape][f"threads_{threads}"]["ratios"][key]["median"] for run in runs]


@pytest.mark.parametrize("start", list(ROWS))
def test_shape_rows_are_the_two_runs_medians_and_their_goal_words_follow(start):
    shape, key, goal = ROWS[start]
    row = _row(start)
    one, two = _medians(shape, key, 1), _medians(shape, key, 2)
    assert f"1 thread {one[0]:.2f}, {one[1]:.2f}; 2 threads {two[0]:.2f}, {two[1]:.2f}" in row
    if goal is None:
        return
    words = row.rsplit("|", 2)[-2]
    met_one, met_two = max(one) <= goal, max(two) <= goal
    if met_one and met_two:
        assert ": met" in words and "not" not in words
    elif met_one:
        assert "met at 1 thread" in words
    else:
        assert "not met" in words


PEERS = {
    "| auto-circuit 1.0.1 EAP time / ours": ("auto-circuit 1.0.1 EAP", -1.0),
    "| hannamw/EAP-IG (795f560) EAP time / ours": ("EAP-IG (795f560) EAP", 1.0),
    "| hannamw/EAP-IG EAP-IG-inputs, 5 steps": ("EAP-IG (795f560) EAP-IG-inputs, 5 steps", 1.0),
}


@pytest.mark.parametrize("start", list(PEERS))
def test_peer_rows_are_the_recorded_medians_at_equal_scores(start):
    name, sign = PEERS[start]
    runs = json.loads((RESULTS / "peers.json").read_text())["runs"]
    one, two = runs["1 threads"][name], runs["2 threads"][name]
    for run in (one, two):
        assert run["scores"]["scale"] == pytest.approx(sign, abs=1e-5)
        assert run["scores"]["max_rel_residual"] < 1e-6 and run["scores"]["edges"] == 3628
    median = lambda r: f"{r['peer_over_circuitdyn']['median']:.1f}"
    minimum = lambda r: f"{r['peer_over_circuitdyn']['min']:.1f}"
    row = _row(start)
    assert f"| {median(one)} / {median(two)} (min {minimum(one)} / {minimum(two)}) |" in row


def test_the_mid_sequence_pairs_differ_from_the_middle_on():
    import sys

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from bench_shapes import digit_pairs

    last = digit_pairs(8, 64)
    mid = digit_pairs(8, 64, differ_from=32)
    assert last[0].clean == mid[0].clean  # the same stream: the corrupt suffixes shift only later draws
    for ex in last:
        assert ex.clean[:-1] == ex.corrupt[:-1] and ex.clean[-1] != ex.corrupt[-1]
    for ex in mid:
        assert ex.clean[:32] == ex.corrupt[:32] and ex.clean[-1] != ex.corrupt[-1]
    assert sum(a != b for ex in mid for a, b in zip(ex.clean[32:-1], ex.corrupt[32:-1])) > 8 * 20


def test_the_bf16_head_rows_are_the_recorded_medians():
    run = json.loads((RESULTS / "bf16_head.json").read_text())
    med = lambda dtype, threads, key: run[f"{dtype}_threads_{threads}"]["ratios"][key]
    head = _row("| EAP head / bare passes, SmolLM2-135M, 2 x 512 tokens")
    one, two = med("bfloat16", 1, "eap_head/bare"), med("bfloat16", 2, "eap_head/bare")
    assert f"bf16: {one['median']:.2f} (min {one['min']:.2f}) / {two['median']:.2f} (min {two['min']:.2f})" in head
    one, two = med("float32", 1, "eap_head/bare"), med("float32", 2, "eap_head/bare")
    assert f"float32: {one['median']:.2f} / {two['median']:.2f}" in head
    assert ("not met" in head.rsplit("|", 2)[-2]) == (max(med("bfloat16", t, "eap_head/bare")["median"] for t in (1, 2)) > 1.4)
    layer = _row("| EAP layer / bare passes, the same")
    assert (f"bf16: {med('bfloat16', 1, 'eap_layer/bare')['median']:.2f} / {med('bfloat16', 2, 'eap_layer/bare')['median']:.2f};"
            in layer)


def test_the_7b_row_is_the_recorded_run():
    run = json.loads((RESULTS / "long_context_7b.json").read_text())["run_7b"]
    row = _row("| random-weight Qwen2.5-7B shape")
    ratio = run["measured_over_estimate"]
    assert f"{run['above_loaded_GB']:.2f} / {run['estimate_GB']:.2f} GB = {ratio:.2f}" in row
    assert run["recompute"] == "blocks" and run["scores_finite"]
    assert ("within 25%: met" in row) == (abs(ratio - 1) <= 0.25)
