"""The study on a real model: SmolLM2-135M-Instruct against a perturbed copy of itself (slow)."""

import json

import pytest


@pytest.mark.slow
def test_study_on_smollm2(tmp_path):
    from benchmarks.study_smollm2 import main

    summary = main(["--samples", "32", "--out", str(tmp_path), "--resamples", "20000"])
    assert summary["n_generated"] == 32 and summary["kept"] >= 4
    assert summary["kept"] <= min(summary["correct"].values())
    protocol = json.loads((tmp_path / "protocol.json").read_text())
    assert protocol["models"]["base"]["architecture"] == "LlamaForCausalLM"
    assert protocol["models"]["perturbed#0"]["weights_sha256"] != protocol["models"]["base"]["weights_sha256"]
    assert (tmp_path / "report.md").is_file() and (tmp_path / "per_layer_intensity_layer.png").is_file()
    assert summary["seconds_total"] < 1200
