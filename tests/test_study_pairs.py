"""The paper's prompts and pairs by name, local copies of hub models, and the study's dry run."""

import json
import shutil

import pytest

from circuitdyn.cli.main import main
from circuitdyn.models.export import save_hf_folder
from circuitdyn.study import StudyError
from circuitdyn.study.paper_pairs import PAPER_PAIRS, paper_pair
from circuitdyn.study.templates import TEMPLATES, template_named
from tests.conftest import perturbed, zoo_model

Q = "What is $1+{2}$?"


def test_templates_are_the_papers_strings():
    # the strings of evaluation/utils.py in the paper's code, after str.format and .strip(" ")
    assert template_named("deepseek-math").render(Q) == (
        "User: What is $1+{2}$?\nPlease reason step by step, and put your final answer within \\boxed{}.\n\nAssistant:")
    assert template_named("mistral").render(Q) == "[INST] What is $1+{2}$?[/INST]"
    assert template_named("qwen25-math-cot").render(Q) == (
        "<|im_start|>system\nPlease reason step by step, and put your final answer within \\boxed{}.<|im_end|>\n"
        "<|im_start|>user\nWhat is $1+{2}$?<|im_end|>\n<|im_start|>assistant\n")
    assert template_named("plain").render(" 1+1= ") == "1+1="
    assert {"deepseek-math", "mistral", "qwen25-math-cot", "plain"} == set(TEMPLATES)
    with pytest.raises(ValueError, match="unknown prompt template 'llama3'"):
        template_named("llama3")


def test_stop_tokens_are_eos_and_the_single_token_stop_strings():
    class Tok:
        eos_token_id = 2

        def get_vocab(self):
            return {"<|im_end|>": 7, "<|endoftext|>": 9, "</": 11, "hi": 12}

    assert template_named("qwen25-math-cot").stop_ids(Tok()) == {2, 7, 9}  # "</s>" is not one token here


def test_the_papers_pairs_by_name():
    assert set(PAPER_PAIRS) == {"deepseek-math", "mistral", "distill-qwen", "qwen25-dpo"}
    pair = paper_pair("distill-qwen")
    assert pair.study_kwargs() == {"base": "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B",
                                   "tuned": {"grpo": "nvidia/AceReason-Nemotron-7B"}, "template": "deepseek-math",
                                   "max_new_tokens": 32768}
    assert (paper_pair("mistral").template, paper_pair("qwen25-dpo").max_new_tokens) == ("mistral", 8192)
    with pytest.raises(StudyError, match="unknown paper pair 'llama'"):
        paper_pair("llama")


@pytest.fixture(scope="module")
def stand_ins(tmp_path_factory):
    """Local folders standing in for deepseek-math's two hub ids (the zoo Llama and a perturbed copy)."""
    root = tmp_path_factory.mktemp("hub")
    base = zoo_model("llama")
    save_hf_folder(base.bridge, base.tokenizer, root / "deepseek-ai" / "deepseek-math-7b-instruct")
    tuned = perturbed(base, 31)
    save_hf_folder(tuned.bridge, tuned.tokenizer, root / "tuned")
    shutil.move(str(root / "tuned"), str(root / "deepseek-math-7b-rl"))  # DIR/name is found too
    return root


def test_dry_run_prints_the_plan_without_loading(stand_ins, capsys, monkeypatch):
    import circuitdyn.study.streaming as streaming

    monkeypatch.setattr(streaming.ModelSource, "load", lambda self: pytest.fail("a dry run loaded a model"))
    assert main(["study", "--paper-pair", "deepseek-math", "--model-dir", str(stand_ins), "--dry-run",
                 "--task", "addition", "--samples", "10"]) == 0
    plan = capsys.readouterr().out
    assert f"deepseek-ai/deepseek-math-7b-instruct -> {stand_ins / 'deepseek-ai' / 'deepseek-math-7b-instruct'}" in plan
    assert f"deepseek-ai/deepseek-math-7b-rl -> {stand_ins / 'deepseek-math-7b-rl'}" in plan
    assert "2 x 10 problems x at most 4,096 new tokens" in plan and "prompts: deepseek-math" in plan
    assert "attribution, layer graph, one example of 665 tokens" in plan  # 256 + 0.1 x 4,096


def test_a_paper_pair_runs_on_local_stand_ins(stand_ins, tmp_path, capsys):
    out = tmp_path / "study"
    args = ["study", "--paper-pair", "deepseek-math", "--model-dir", str(stand_ins), "--task", "addition",
            "--template", "plain", "--max-new-tokens", "4", "--samples", "24", "--min-kept", "4", "--protocol",
            "common", "--resamples", "1000", "--layer-resamples", "1000", "--no-per-layer", "--out", str(out)]
    assert main(args) == 0  # the zoo's 32-position context cannot hold the paper's template: plain here
    protocol = json.loads((out / "protocol.json").read_text())
    assert protocol["models"]["base"]["source"] == str(stand_ins / "deepseek-ai" / "deepseek-math-7b-instruct")
    assert protocol["models"]["grpo#0"]["source"] == str(stand_ins / "deepseek-math-7b-rl")
    assert protocol["config"]["max_new_tokens"] == 4 and protocol["config"]["template"] == "plain"
    assert main([*args, "--fresh"]) == 0
    assert json.loads((out / "protocol.json").read_text())["cache"]["fresh"] is True
    capsys.readouterr()
    assert main(["study", "--task", "addition", "--out", str(tmp_path / "x")]) == 2
    assert "give --base and --tuned LABEL=MODEL, or --paper-pair NAME" in capsys.readouterr().err


@pytest.mark.parametrize("family", ["llama", "gemma3"])
def test_the_dry_runs_estimate_is_what_attribute_measures(family):
    import torch

    from circuitdyn.attribution import attribute
    from circuitdyn.attribution.estimate import example_estimates
    from circuitdyn.models.load import resolve_spec
    from circuitdyn.tasks.base import PairBatch

    tokens = 30
    ids = torch.randint(5, 60, (1, tokens), generator=torch.Generator().manual_seed(0))
    batch = PairBatch(ids, ids.clone(), torch.ones(1, tokens, dtype=torch.bool), torch.tensor([tokens - 3]),
                      torch.tensor([[7, 8, 9]]), torch.tensor([8]))
    for granularity in ("layer", "head"):
        measured = attribute(zoo_model(family), granularity, batch, "answer_nll", ablation="zero",
                             per_example=True).provenance["peak_bytes_estimate"]
        est = example_estimates(resolve_spec(f"zoo:{family}"), (granularity,), (tokens,), torch.float32)[0]
        # from the configuration alone, extrapolated from 1 and 2 blocks at 16 and 32 tokens (Gemma3's blocks
        # alternate sliding and global attention: its cut copies keep the first kinds, within 1%)
        assert abs(est.kept / measured - 1) < 0.01, (granularity, est.kept, measured)
        assert est.recomputed < est.kept
