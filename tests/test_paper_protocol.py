"""The study's paper protocol: the paper's selection pair by pair (checked against an independent
re-implementation of its rules on synthetic files), pair files read and written in the paper's schema, and
the same scores whether a pair's generations are made here or imported."""

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from circuitdyn.cli import main
from circuitdyn.study import StudyConfig, StudyError, run_study
from circuitdyn.study.pair_files import read_pair_file
from circuitdyn.study.selection import FILTERS, RowLengths, select_rows
from tests.conftest import perturbed, zoo_model

RULE = dict(small_coeff=0.5, big_coeff=1.5, balance_coeff=0.5, num_samples=100, sample_seed=42)


def synthetic_file(path: Path, n: int, seed: int) -> Path:
    """An all_correct.jsonl of `n` rows with random lengths: some prompts differ, some answers are far apart."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        prompt = rng.randint(3, 9)
        rl_prompt = prompt if rng.random() < 0.9 else prompt + 1
        base_len, rl_len = rng.randint(1, 60), rng.randint(1, 45)
        rows.append({"base_prompt_tokens": [1] * prompt, "base_answer_tokens": [2] * base_len,
                     "rl_prompt_tokens": [1] * rl_prompt, "rl_answer_tokens": [3] * rl_len})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def paper_rule(path: Path, cut_coeff: float, small: float, big: float, balance: float, num_samples: int, seed: int):
    """The selection as the paper's code states it, written out again from its description, on the raw file."""
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    base_mean = np.mean([len(r["base_answer_tokens"]) for r in rows])
    rl_mean = np.mean([len(r["rl_answer_tokens"]) for r in rows])
    refer = min(base_mean, rl_mean)
    cut_len = max(int(refer * cut_coeff), 1)
    lo, hi = int(small * refer), int(big * refer)
    counts = {"prompt": 0, "range": 0, "balance": 0}
    kept = []
    for i, r in enumerate(rows):
        if len(r["base_prompt_tokens"]) != len(r["rl_prompt_tokens"]):
            counts["prompt"] += 1
            continue
        total = (len(r["base_answer_tokens"]) + len(r["rl_answer_tokens"])) / 2
        if total > hi or total < lo:
            counts["range"] += 1
            continue
        if abs(len(r["base_answer_tokens"]) - len(r["rl_answer_tokens"])) / total > balance:
            counts["balance"] += 1
            continue
        kept.append(i)
    if 0 < num_samples < len(kept):
        random.seed(seed)
        kept = random.sample(kept, num_samples)
    return kept, float(refer), cut_len, counts


@pytest.mark.parametrize("n, num_samples", [(1500, 100), (300, 37), (60, 100), (5, 100)])
def test_selection_equals_the_papers_rule_on_synthetic_files(tmp_path, n, num_samples):
    path = synthetic_file(tmp_path / "all_correct.jsonl", n, seed=n)
    rows = read_pair_file(path, vocab_size=10)
    lengths = [RowLengths(len(b.prompt_ids), len(t.prompt_ids), len(b.response_ids), len(t.response_ids))
               for b, t in rows]
    sel = select_rows(lengths, **{**RULE, "num_samples": num_samples})
    for cut in (0.03, 0.1, 0.3, 0.5):
        kept, refer, cut_len, counts = paper_rule(path, cut, 0.5, 1.5, 0.5, num_samples, 42)
        assert list(sel.rows) == kept and sel.refer == refer and sel.cut_len(cut) == cut_len
        assert [sel.removed[f] for f in FILTERS] == [counts["prompt"], counts["range"], counts["balance"]]
    assert sel.n_rows == n and sel.n_passed == n - sum(sel.removed.values())
    assert len(sel.rows) == min(num_samples, sel.n_passed)  # fewer rows than num_samples: all of them
    assert all(sel.removed.values()) or n < 10  # every filter removes rows here: each is checked
    if n == 1500:
        assert sel.n_passed > num_samples and list(sel.rows) != sorted(sel.rows)  # sampled, in the sample's order


def test_pair_files_are_refused_by_row(tmp_path):
    good = {"base_prompt_tokens": [1, 2], "base_answer_tokens": [3], "rl_prompt_tokens": [1, 2], "rl_answer_tokens": [4]}
    for bad, message in (({**good, "rl_answer_tokens": [99]}, r"f.jsonl:2: rl_answer_tokens holds token ids outside"),
                         ({**good, "base_answer_tokens": []}, r"f.jsonl:2: base_answer_tokens is empty"),
                         ({k: v for k, v in good.items() if k != "rl_prompt_tokens"}, r"f.jsonl:2: lacks \['rl_prompt_tokens'\]"),
                         ({**good, "base_prompt_tokens": ["a"]}, r"f.jsonl:2: base_prompt_tokens must be a list of token ids")):
        path = tmp_path / "f.jsonl"
        path.write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n")
        with pytest.raises(StudyError, match=message):
            read_pair_file(path, vocab_size=50)


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    base = zoo_model("llama")
    tuned = {"grpo": [perturbed(base, 1), perturbed(base, 2)], "dpo": perturbed(base, 3)}
    out = tmp_path_factory.mktemp("paper") / "study"
    result = run_study(base, tuned, "addition", samples=48, max_new_tokens=4, n_resamples=1000, cut_coeffs=(0.5, 1.0),
                       per_layer=False, out=out, progress=False)
    return base, tuned, out, result


def test_a_generated_study_records_each_pair_and_writes_the_papers_files(generated):
    base, _, out, result = generated
    protocol = json.loads((out / "protocol.json").read_text())
    assert protocol["config"]["protocol"] == "paper"
    for label, files in (("grpo", ["grpo_seed0.jsonl", "grpo_seed1.jsonl"]), ("dpo", ["dpo.jsonl"])):
        pair = protocol["pairs"][label]
        assert pair["files"] == files and pair["source"] == "generated"
        lines = (out / "generations" / files[0]).read_text().splitlines()
        assert len(lines) == pair["n_rows"] and set(pair["rows"]) <= set(range(len(lines)))
        assert pair["cut_len"] == {"0.5": max(int(pair["refer"] * 0.5), 1), "1": max(int(pair["refer"]), 1)}
        assert set(pair["removed"]) == set(FILTERS)
        assert json.loads(lines[0]).keys() >= {"base_prompt_tokens", "base_answer_tokens", "rl_prompt_tokens",
                                               "rl_answer_tokens"}
    assert set(result.cells) == {"grpo@0.5", "dpo@0.5", "grpo@1", "dpo@1"}
    report = (out / "report.md").read_text()
    assert "## Table 1 (layer graph)" in report and "| grpo - base | 0.5 |" in report and "sample_diversity" in report
    assert result.test("grpo - base", "sample_diversity", cut=1.0).stat.n == len(result.selections["grpo"].rows)
    assert any(t.comparison == "(grpo - base) - (dpo - base)" and t.cut == "1" for t in result.tests)


def test_imported_files_give_the_scores_of_the_generated_study(generated, tmp_path):
    """Read back the pair files the study wrote: every cell's attributions are the same, bit for bit, and so
    are the tests (the files carry the very token ids that were generated)."""
    base, tuned, out, first = generated
    files = {"grpo": [out / "generations" / "grpo_seed0.jsonl", out / "generations" / "grpo_seed1.jsonl"],
             "dpo": [out / "generations" / "dpo.jsonl"]}
    again = run_study(base, tuned, generations=files, n_resamples=1000, cut_coeffs=(0.5, 1.0), per_layer=False,
                      out=tmp_path / "again", progress=False)
    assert again.n_generated == 0  # nothing was generated
    for name, cell in first.cells.items():
        for key, attribution in cell.attributions.items():
            assert torch.equal(attribution.per_example, again.cells[name].attributions[key].per_example), (name, key)
    assert [(t.comparison, t.cut, t.metric, t.stat.mean, t.stat.p_value) for t in first.tests] == \
        [(t.comparison, t.cut, t.metric, t.stat.mean, t.stat.p_value) for t in again.tests]
    assert json.loads((tmp_path / "again" / "protocol.json").read_text())["pairs"]["dpo"]["rows"] == \
        json.loads((out / "protocol.json").read_text())["pairs"]["dpo"]["rows"]


def test_the_common_protocol_keeps_one_set_for_every_model():
    base = zoo_model("llama")
    result = run_study(base, {"t": perturbed(base, 4)}, "addition", protocol="common", samples=24, max_new_tokens=4,
                       n_resamples=1000, per_layer=False, progress=False)
    assert not result.cells and len(result.kept) > 0 and result.test("t - base", "intensity").cut == ""


def test_requests_that_cannot_run_are_refused_before_any_model_loads(tmp_path):
    base = zoo_model("llama")
    with pytest.raises(StudyError, match="not tuned labels"):
        run_study(base, {"grpo": base}, generations={"dpo": tmp_path / "x.jsonl"})
    with pytest.raises(StudyError, match="generations file .* not found"):
        run_study(base, {"grpo": base}, generations={"grpo": tmp_path / "missing.jsonl"})
    with pytest.raises(StudyError, match="use protocol='paper'"):
        run_study(base, {"grpo": base}, "addition", protocol="common", generations={"grpo": tmp_path / "x.jsonl"})
    with pytest.raises(StudyError, match="cut_coeffs must be numbers in \\(0, 1\\]"):
        StudyConfig(cut_coeffs=(0.0,))


def test_the_command_line_runs_the_paper_protocol_from_files(generated, tmp_path, capsys):
    _, _, out, _ = generated
    code = main(["study", "--base", "zoo:llama", "--tuned", "dpo=zoo:llama", "--generations",
                 f"dpo={out / 'generations' / 'dpo.jsonl'}", "--cut-coeffs", "0.5,1", "--resamples", "1000",
                 "--no-per-layer", "--out", str(tmp_path / "cli")])
    assert code == 0
    printed = capsys.readouterr().out
    assert "rows scored per pair: dpo " in printed and "| dpo - base | 0.5 |" in printed


def test_a_pair_with_too_few_rows_is_left_out_and_the_others_run(caplog):
    base = zoo_model("llama")
    broken = perturbed(base, 7, scale=3.0)  # answers nothing right
    with caplog.at_level("WARNING"):
        result = run_study(base, {"good": perturbed(base, 8), "broken": broken}, "addition", samples=32,
                           max_new_tokens=4, n_resamples=1000, per_layer=False, progress=False, cut_coeffs=(0.1, 0.2))
    assert "pair broken - base left out" in caplog.text
    assert "fewer than min_kept=8" in result.protocol["pairs"]["broken"]["skipped"]
    assert set(result.cells) == {"good@0.1", "good@0.2"} and not any("broken" in t.comparison for t in result.tests)
    # both coefficients give the same length on the zoo's short answers: attributed once, shared
    assert result.selections["good"].cut_len(0.1) == result.selections["good"].cut_len(0.2)
    assert result.cells["good@0.1"].attributions is result.cells["good@0.2"].attributions
    with pytest.raises(StudyError, match="every pair has fewer selected rows than min_kept"):
        run_study(base, {"broken": broken}, "addition", samples=8, max_new_tokens=4, progress=False)
