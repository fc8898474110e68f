import json

import pytest

from circuitdyn.cli import main


def test_attribute_train_compare_report(tmp_path, capsys):
    base, tuned, run = tmp_path / "base.safetensors", tmp_path / "tuned.safetensors", tmp_path / "run"
    common = ["--model", "zoo:llama", "--examples", "12", "--ablation", "zero", "--metric", "answer_nll"]
    assert main(["attribute", *common, "--out", str(base)]) == 0
    assert main(["train", "--model", "zoo:llama", "--algorithm", "grpo", "--set", "max_steps=2", "--set", "eval_steps=0",
                 "--set", "per_device_train_batch_size=16", "--out", str(run)]) == 0
    assert (run / "final" / "policy.safetensors").exists() and (run / "log.jsonl").read_text().count("\n") == 2
    assert main(["attribute", *common, "--checkpoint", str(run / "final"), "--out", str(tuned)]) == 0
    assert main(["compare", str(base), str(tuned), "--out", str(tmp_path / "cmp")]) == 0
    records = json.loads((tmp_path / "cmp" / "comparison.json").read_text())
    assert {r["metric"] for r in records} >= {"intensity", "normalized_entropy", "gini", "kurtosis"}
    capsys.readouterr()
    assert main(["report", str(tmp_path / "cmp" / "comparison.json")]) == 0
    assert "| tuned - base | 12 |" in capsys.readouterr().out


def test_errors_are_one_line(capsys, tmp_path):
    assert main(["attribute", "--model", "zoo:nope"]) == 2
    assert "zoo:llama" in capsys.readouterr().err
    assert main(["train", "--model", "zoo:llama", "--set", "per_device_train_batch_size=10", "--out", str(tmp_path)]) == 2
    assert "num_generations" in capsys.readouterr().err
    assert main(["attribute", "--model", "zoo:llama", "--task", "nope"]) == 2
    assert "addition" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["attribute", "--model", "zoo:llama", "--method", "magic"])
    assert "eap-ig-inputs" in capsys.readouterr().err
    assert main(["attribute", "--model", "zoo:llama", "--method", "eap-ig-inputs", "--quadrature", "trapezoid",
                 "--steps", "1", "--examples", "2"]) == 2
    assert "steps >= 2" in capsys.readouterr().err


def test_study_command(tmp_path, capsys):
    code = main(["study", "--base", "zoo:gpt2", "--tuned", "grpo=zoo:gpt2", "--task", "addition", "--samples", "16",
                 "--max-new-tokens", "4", "--resamples", "2000", "--min-kept", "2", "--out", str(tmp_path / "s")])
    assert code == 0
    out = capsys.readouterr().out
    assert "rows scored per pair: grpo " in out and "| grpo - base | 0.1 |" in out  # the paper protocol by default
    assert (tmp_path / "s" / "tests.csv").is_file() and (tmp_path / "s" / "generations" / "grpo.jsonl").is_file()
    assert main(["study", "--base", "zoo:gpt2", "--tuned", "grpo=zoo:gpt2", "--task", "addition", "--samples", "16",
                 "--max-new-tokens", "4", "--resamples", "2000", "--min-kept", "2", "--protocol", "common",
                 "--out", str(tmp_path / "c")]) == 0
    out = capsys.readouterr().out
    assert "kept" in out and "| grpo - base | intensity |" in out
    assert main(["study", "--base", "zoo:gpt2", "--tuned", "grpo", "--out", str(tmp_path / "x")]) == 2
    assert "LABEL=MODEL" in capsys.readouterr().err
    assert main(["study", "--base", "zoo:gpt2", "--tuned", "g=zoo:gpt2", "--fraction", "0", "--out", str(tmp_path / "y")]) == 2
    assert "fraction must be in (0, 1]" in capsys.readouterr().err


def test_train_help_lists_config_fields_and_set_refuses_wrong_types(tmp_path):
    import subprocess
    import sys

    from circuitdyn.train import ConfigError, config_from_dict

    out = subprocess.run([sys.executable, "-m", "circuitdyn.cli", "train", "--help"], capture_output=True, text=True,
                         check=True).stdout
    assert "--set fields of ppo (PPOConfig)" in out and "num_ppo_epochs" in out and "grpo, dapo or dr_grpo" in out
    for bad, message in [({"max_steps": 1.5}, "integer"), ({"max_steps": True}, "integer"),
                         ({"learning_rate": float("inf")}, "finite"), ({"max_grad_norm": float("nan")}, "finite")]:
        with pytest.raises(ConfigError, match=message):
            config_from_dict({"algorithm": "grpo", **bad})
    assert config_from_dict({"algorithm": "grpo", "epsilon_high": None, "learning_rate": 1}).learning_rate == 1
    from circuitdyn.train import GRPOConfig

    with pytest.raises(ConfigError, match="integer"):  # the Python API refuses the same, not only --set
        GRPOConfig(max_steps=2.5)
