"""A study at scale: one model in memory at a time, per-model caches, a rerun that reuses them, a killed run
that resumes to the same results."""

import gc
import json
import subprocess
import sys
import textwrap
import weakref

import numpy as np
import pytest

from circuitdyn.models.export import save_hf_folder
from circuitdyn.study import StudyError, run_study
from circuitdyn.study.streaming import ModelSource, local_folder
from tests.conftest import perturbed, zoo_model

SETTINGS = dict(protocol="common", samples=24, max_new_tokens=4, n_resamples=1000, layer_resamples=1000,
                min_kept=4, granularities=("layer",), per_layer=False, progress=False)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """The zoo Llama and three perturbed copies, each saved as a Hugging Face folder (a spec the study loads)."""
    root = tmp_path_factory.mktemp("models")
    base = zoo_model("llama")
    out = {"base": save_hf_folder(base.bridge, base.tokenizer, root / "base")}
    for k in range(3):
        m = perturbed(base, 20 + k)
        out[f"t{k}"] = save_hf_folder(m.bridge, m.tokenizer, root / f"t{k}")
    return {k: str(v) for k, v in out.items()}


def _tuned(folders):
    return {"grpo": folders["t0"], "ppo": folders["t1"], "dpo": folders["t2"]}


def _same(a, b):
    assert json.dumps([t.record(0.05) for t in a.tests]) == json.dumps([t.record(0.05) for t in b.tests])  # NaN too
    assert a.metrics.keys() == b.metrics.keys()
    for key in a.metrics:
        for name, values in a.metrics[key].items():
            np.testing.assert_array_equal(values, b.metrics[key][name], err_msg=f"{key} {name}")


def test_models_given_by_spec_are_loaded_one_at_a_time(folders, monkeypatch):
    loaded: list[weakref.ref] = []
    most = []
    real = ModelSource.load

    def counting(self):
        gc.collect()
        most.append(sum(r() is not None for r in loaded))  # study-loaded models still alive at this load
        model = real(self)
        if self.owned:
            loaded.append(weakref.ref(model.bridge))
        return model

    monkeypatch.setattr(ModelSource, "load", counting)
    caller = zoo_model("llama")
    result = run_study(caller, _tuned(folders), "addition", **SETTINGS)
    # generation visits each of the three specs once, attribution once more: six loads, never two alive
    assert len(loaded) == 6 and max(most) == 0
    gc.collect()
    assert all(r() is None for r in loaded)  # nothing the study loaded outlives it
    assert caller.bridge is not None and result.entries[0].source.spec is caller  # the caller's stays the caller's
    assert result.protocol["models"]["grpo#0"]["weights_sha256"] != result.protocol["models"]["base"]["weights_sha256"]


def test_a_rerun_reuses_every_cache_and_equals_the_first_run(folders, tmp_path, monkeypatch):
    out = tmp_path / "study"
    first = run_study(folders["base"], _tuned(folders), "addition", out=out, **SETTINGS)
    assert first.protocol["cache"] == {"reused": 0, "computed": 8, "fresh": False}  # 4 generations, 4 attributions
    loads, real = [], ModelSource.load
    monkeypatch.setattr(ModelSource, "load", lambda self: loads.append(self.spec) or real(self))
    again = run_study(folders["base"], _tuned(folders), "addition", out=out, **SETTINGS)
    assert again.protocol["cache"] == {"reused": 8, "computed": 0, "fresh": False}
    # no model is loaded again: each is known by its files' sha256 (the base's graph specs and facts are cached,
    # its tokenizer read from its folder)
    assert loads == []
    monkeypatch.setattr(ModelSource, "load", real)
    _same(first, again)
    record = json.loads((out / "study.json").read_text())
    assert record["status"] == "complete" and record["resumed"] and any(f.startswith("cache/") for f in record["files"])
    # a changed generation setting finds no old generations (an attribution of the very same scored batch is
    # still the same attribution); fresh recomputes everything
    fewer = run_study(folders["base"], _tuned(folders), "addition", out=out, **{**SETTINGS, "max_new_tokens": 3})
    assert fewer.protocol["cache"]["computed"] >= 4 and fewer.protocol["cache"]["reused"] <= 4
    fresh = run_study(folders["base"], _tuned(folders), "addition", out=out, fresh=True, **SETTINGS)
    assert fresh.protocol["cache"] == {"reused": 0, "computed": 8, "fresh": True}
    _same(first, fresh)


def test_a_damaged_cache_file_is_said_and_recomputed(folders, tmp_path, caplog):
    out = tmp_path / "study"
    first = run_study(folders["base"], {"grpo": folders["t0"]}, "addition", out=out, **SETTINGS)
    damaged = sorted((out / "cache").glob("grpo_seed0.generations.*.json"))[0]
    document = json.loads(damaged.read_text())
    document["body"]["rows"][0]["correct"] = not document["body"]["rows"][0]["correct"]
    damaged.write_text(json.dumps(document))
    with caplog.at_level("WARNING"):
        again = run_study(folders["base"], {"grpo": folders["t0"]}, "addition", out=out, **SETTINGS)
    assert "do not match their sha256" in caplog.text and again.protocol["cache"]["computed"] == 1
    _same(first, again)
    # a damaged attribution of a model that would not otherwise be loaded: said, the model loaded, recomputed
    attribution = sorted((out / "cache").glob("grpo_seed0.attribution.*.safetensors"))[0]
    attribution.write_bytes(attribution.read_bytes()[:-64])
    caplog.clear()
    with caplog.at_level("WARNING"):
        third = run_study(folders["base"], {"grpo": folders["t0"]}, "addition", out=out, **SETTINGS)
    assert "cannot be used" in caplog.text and third.protocol["cache"] == {"reused": 3, "computed": 1, "fresh": False}
    _same(first, third)


KILLED = textwrap.dedent("""
    import os, signal, sys, json
    import circuitdyn.study.scoring as scoring
    from circuitdyn.study import run_study

    real, calls = scoring.attribute, []

    def attribute(*args, **kwargs):  # SIGKILL at the start of the second model's attribution
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGKILL)
        return real(*args, **kwargs)

    scoring.attribute = attribute
    base, tuned, out, settings = json.loads(sys.argv[1])
    run_study(base, tuned, "addition", out=out, **settings)
""")


def test_a_run_killed_during_the_second_models_attribution_resumes_to_identical_results(folders, tmp_path):
    whole = run_study(folders["base"], _tuned(folders), "addition", out=tmp_path / "whole", **SETTINGS)
    out = tmp_path / "killed"
    args = json.dumps([folders["base"], _tuned(folders), str(out), SETTINGS])
    child = subprocess.run([sys.executable, "-c", KILLED, args], capture_output=True, text=True, timeout=600)
    assert child.returncode == -9, child.stderr[-2000:]
    assert json.loads((out / "study.json").read_text())["status"] == "running"
    resumed = run_study(folders["base"], _tuned(folders), "addition", out=out, **SETTINGS)
    # kept: the four models' generations and the base's attribution; redone: the three tuned attributions
    assert resumed.protocol["cache"] == {"reused": 5, "computed": 3, "fresh": False}
    _same(whole, resumed)
    assert json.loads((out / "study.json").read_text())["status"] == "complete"


def test_hub_ids_map_to_local_folders_and_unknown_ones_are_refused_fast(folders, tmp_path, monkeypatch):
    import shutil
    import time

    root = tmp_path / "hub"
    shutil.copytree(folders["base"], root / "org" / "base-7b")
    shutil.copytree(folders["t0"], root / "tuned-7b-rl")  # DIR/name works too
    assert local_folder("org/base-7b", root) == str(root / "org" / "base-7b")
    assert local_folder("other/tuned-7b-rl", root) == str(root / "tuned-7b-rl")
    assert local_folder("org/missing", root) == "org/missing" and local_folder("zoo:llama", root) == "zoo:llama"
    result = run_study("org/base-7b", {"grpo": "other/tuned-7b-rl"}, "addition", model_dir=str(root), **SETTINGS)
    assert result.protocol["models"]["base"]["source"] == str(root / "org" / "base-7b")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(Exception, match="HF_HUB_OFFLINE=1 is set and it is not in the local hub cache"):
        run_study("org/missing", {"grpo": "other/tuned-7b-rl"}, "addition", model_dir=str(root), **SETTINGS)
    assert time.perf_counter() - start < 10


def test_study_settings_are_validated():
    for bad, message in [(dict(dtype="fp8"), "unknown dtype"), (dict(template="llama3"), "unknown prompt template"),
                         (dict(device=""), "device must be")]:
        with pytest.raises(StudyError, match=message):
            run_study("zoo:llama", {"grpo": "zoo:llama"}, "addition", **bad)


def test_a_tuned_model_whose_files_changed_is_loaded_again(folders, tmp_path):
    import shutil

    mine = tmp_path / "mine"
    shutil.copytree(folders["t0"], mine)
    out = tmp_path / "study"
    first = run_study(folders["base"], {"grpo": str(mine)}, "addition", out=out, **SETTINGS)
    shutil.rmtree(mine)
    shutil.copytree(folders["t1"], mine)  # same path, other weights
    again = run_study(folders["base"], {"grpo": str(mine)}, "addition", out=out, **SETTINGS)
    digests = [r.protocol["models"]["grpo#0"]["weights_sha256"] for r in (first, again)]
    # its generations and attributions are made again (the base's too where the kept problems changed); the
    # base's generations are reused
    assert digests[0] != digests[1] and again.protocol["cache"]["computed"] >= 2 and again.protocol["cache"]["reused"] >= 1


def test_the_paper_protocol_streams_and_resumes_too(folders, tmp_path):
    settings = {**SETTINGS, "protocol": "paper", "cut_coeffs": (0.5, 1.0), "samples": 32}
    out = tmp_path / "study"
    first = run_study(folders["base"], {"grpo": folders["t0"], "dpo": folders["t1"]}, "addition", out=out, **settings)
    assert first.cells and first.protocol["cache"]["reused"] == 0
    again = run_study(folders["base"], {"grpo": folders["t0"], "dpo": folders["t1"]}, "addition", out=out, **settings)
    assert again.protocol["cache"]["computed"] == 0 and again.protocol["cache"]["reused"] == first.protocol["cache"]["computed"]
    _same(first, again)
    for name, cell in first.cells.items():
        for key, table in cell.metrics.items():
            for metric, values in table.items():
                np.testing.assert_array_equal(values, again.cells[name].metrics[key][metric])
