"""Runs that cannot mix or lose work, and artifacts whose edits are seen (the reliability audit's first two
groups): one run per output folder, a study folder that holds one study, checkpoints and attribution files
verified against their recorded hashes over tensors and metadata, and comparisons that refuse a swapped or
mixed-precision pair."""

import json
import logging
import multiprocessing
import os
import time

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from circuitdyn.analysis.comparison import ComparisonError, compare
from circuitdyn.attribution import attribute
from circuitdyn.attribution.files import load_attribution, save_attribution
from circuitdyn.core.lock import FolderInUseError, claim_folder
from circuitdyn.core.outputs import ArtifactError
from circuitdyn.models import clone_model
from circuitdyn.study import StudyError, run_study
from circuitdyn.tasks import Addition, tokenize_pairs
from circuitdyn.train import GRPOConfig, Trainer, train
from circuitdyn.train.checkpoint import CheckpointError
from tests.conftest import zoo_model

SMALL = dict(num_generations=4, eval_steps=0, per_device_train_batch_size=8, learning_rate=1e-3)


def _hold(folder: str, ready, release) -> None:
    from pathlib import Path

    with claim_folder(Path(folder), "training run"):
        ready.set()
        release.wait(30)


# ---- one run per folder ------------------------------------------------------------------------------
def test_a_folder_held_by_another_process_is_refused_naming_it(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    ready, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold, args=(str(tmp_path / "run"), ready, release))
    holder.start()
    try:
        assert ready.wait(60)
        with pytest.raises(FolderInUseError, match=rf"in use: a training run of process {holder.pid} on .* started"):
            train(clone_model(zoo_model("llama")), GRPOConfig(max_steps=1, output_dir=str(tmp_path / "run"), **SMALL))
        assert not (tmp_path / "run" / "log.jsonl").exists()
    finally:
        release.set()
        holder.join(30)
    with claim_folder(tmp_path / "run", "study"):  # the holder ended: the folder is free again
        pass


def test_a_killed_holder_leaves_no_stale_lock(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    ready, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold, args=(str(tmp_path), ready, release))
    holder.start()
    assert ready.wait(60)
    os.kill(holder.pid, 9)
    holder.join(30)
    with claim_folder(tmp_path, "training run"):
        pass


def test_two_runs_in_one_process_cannot_share_a_folder(tmp_path):
    with claim_folder(tmp_path, "study"):
        with pytest.raises(FolderInUseError, match="a study of process"):
            with claim_folder(tmp_path, "training run"):
                pass


# ---- a study folder holds one study ------------------------------------------------------------------
def _study(base, tuned, out, **kw):
    return run_study(base, tuned, "addition", samples=24, max_new_tokens=4, n_resamples=2_000, min_kept=4,
                     granularities=("layer",), out=out, progress=False, **kw)


def test_a_second_study_is_refused_or_replaces_the_first_whole(tmp_path):
    base = zoo_model("llama")
    out = tmp_path / "study"
    out.mkdir()
    (out / "notes.txt").write_text("mine")  # a file the study did not write: kept through a replace
    _study(base, {"grpo": clone_model(base)}, out)
    record = json.loads((out / "study.json").read_text())
    assert record["status"] == "complete" and record["labels"] == ["grpo"] and "report.md" in record["files"]
    assert "notes.txt" not in record["files"]
    with pytest.raises(StudyError, match=r"already holds a study of grpo \(complete\).*replace=True"):
        _study(base, {"dpo": clone_model(base)}, out)
    _study(base, {"dpo": clone_model(base)}, out, replace=True)
    record = json.loads((out / "study.json").read_text())
    assert record["labels"] == ["dpo"] and (out / "notes.txt").read_text() == "mine"
    assert not any("grpo" in name for name in os.listdir(out))  # nothing of the first study is left
    tests = json.loads((out / "tests.json").read_text())
    assert {t["comparison"].split(" - ")[0] for t in tests} == {"dpo"}


def test_a_study_killed_part_way_says_so(tmp_path):
    base = zoo_model("llama")
    out = tmp_path / "study"

    class Boom(Exception):
        pass

    broken = clone_model(base)
    broken.bridge.train()  # refused after the folder is claimed: stands in for a kill mid-run
    with pytest.raises(StudyError):
        _study(base, {"grpo": broken}, out)
    assert json.loads((out / "study.json").read_text())["status"] == "running"
    # a study of the same labels resumes it (its caches are reused where their settings match); other labels
    # are refused
    with pytest.raises(StudyError, match=r"holds a study of grpo \(running\)"):
        _study(base, {"dpo": clone_model(base)}, out)
    _study(base, {"grpo": clone_model(base)}, out)
    record = json.loads((out / "study.json").read_text())
    assert record["status"] == "complete" and record["resumed"] and "report.md" in record["files"]


# ---- checkpoints verified ----------------------------------------------------------------------------
def test_resuming_from_changed_weights_is_refused(tmp_path):
    run = tmp_path / "run"
    cfg = GRPOConfig(max_steps=2, save_steps=1, output_dir=str(run), **SMALL)
    Trainer(clone_model(zoo_model("llama")), GRPOConfig(max_steps=1, save_steps=1, output_dir=str(run), **SMALL)).train()
    weights = run / "checkpoint-1" / "policy.safetensors"
    with safe_open(str(weights), framework="pt") as f:
        meta = f.metadata()
    tensors = load_file(str(weights))
    name = next(n for n in tensors if "embed_tokens" in n)
    tensors[name] = tensors[name] + 1e-3
    save_file(tensors, str(weights), metadata=meta)
    with pytest.raises(CheckpointError, match="policy.safetensors: does not match the sha256 recorded"):
        Trainer(clone_model(zoo_model("llama")), cfg, resume_from=run / "checkpoint-1")
    # the file's hash forged as well: the loaded weights still do not hash to the trained ones
    from circuitdyn.core.digest import document_sha256, file_sha256

    record_path = run / "checkpoint-1" / "checkpoint.json"
    record = json.loads(record_path.read_text())
    record["files_sha256"]["policy.safetensors"] = file_sha256(weights)
    record["sha256"] = document_sha256(record)
    record_path.write_text(json.dumps(record))
    with pytest.raises(CheckpointError, match="its weights hash to .* recorded when it was saved"):
        Trainer(clone_model(zoo_model("llama")), cfg, resume_from=run / "checkpoint-1")


def test_a_checkpoint_with_an_edited_field_or_file_is_refused(tmp_path):
    """Well-formed edits pass field validation; the hashes in checkpoint.json catch them before any load."""
    run = tmp_path / "run"
    cfg = GRPOConfig(max_steps=2, save_steps=1, output_dir=str(run), **SMALL)
    Trainer(clone_model(zoo_model("llama")), GRPOConfig(max_steps=1, save_steps=1, output_dir=str(run), **SMALL)).train()
    folder = run / "checkpoint-1"
    meta_path = folder / "checkpoint.json"
    saved = json.loads(meta_path.read_text())
    assert set(saved["files_sha256"]) >= {"policy.safetensors", "optimizer.safetensors", "model.safetensors"}
    edited = json.loads(json.dumps(saved))
    edited["state"]["base_accuracy"] = 0.99
    meta_path.write_text(json.dumps(edited))
    with pytest.raises(CheckpointError, match="checkpoint.json: its content does not match the sha256"):
        Trainer(clone_model(zoo_model("llama")), cfg, resume_from=folder)
    meta_path.write_text(json.dumps({**saved, "version": 1}))
    with pytest.raises(CheckpointError, match="version 1 carries no hashes"):
        Trainer(clone_model(zoo_model("llama")), cfg, resume_from=folder)
    meta_path.write_text(json.dumps(saved))
    optimizer = load_file(str(folder / "optimizer.safetensors"))
    key = next(k for k in optimizer if k != "__rng__")
    optimizer[key] = optimizer[key] * 2
    save_file(optimizer, str(folder / "optimizer.safetensors"))
    with pytest.raises(CheckpointError, match="optimizer.safetensors: does not match the sha256"):
        Trainer(clone_model(zoo_model("llama")), cfg, resume_from=folder)


# ---- attribution files verified over tensors AND metadata --------------------------------------------
@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    m = zoo_model("llama")
    batch = tokenize_pairs(m.tokenizer, Addition().examples(6, seed=0))
    a = attribute(m, "layer", batch, "answer_nll", ablation="zero", per_example=True)
    path = save_attribution(a, tmp_path_factory.mktemp("files") / "a.safetensors")
    return m, batch, a, path


def _edit(path, tmp_path, change):
    with safe_open(str(path), framework="pt") as f:
        meta = json.loads(f.metadata()["circuitdyn"])
    change(meta)
    target = tmp_path / "edited.safetensors"
    save_file(load_file(str(path)), str(target), metadata={"circuitdyn": json.dumps(meta)})
    return target


@pytest.mark.parametrize("what, change", [
    ("metric", lambda m: m["provenance"].__setitem__("metric", "logit_diff")),
    ("ablation", lambda m: m["config"].__setitem__("ablation", "noising")),
    ("fingerprint", lambda m: m["provenance"].__setitem__("dataset_sha256", "0" * 64)),
    ("model", lambda m: m["provenance"]["model"].__setitem__("weights_sha256", "f" * 64)),
])
def test_edited_metadata_is_refused(saved, tmp_path, what, change):
    _, _, _, path = saved
    with pytest.raises(ArtifactError, match="scores or metadata do not match the sha256"):
        load_attribution(_edit(path, tmp_path, change))


@pytest.mark.parametrize("version", [2, 3])
def test_a_lowered_version_is_refused_unless_trusted_by_name(saved, tmp_path, caplog, version):
    """A version 4 file lowered to 3 (with its tensors' own hash, right) or to 2 (no hash) would skip the check
    of its metadata: refused, unless loaded with verify=False, which warns."""
    from circuitdyn.models.weights import state_sha256

    _, _, a, path = saved

    def lower(meta):
        meta["version"] = version
        meta["provenance"]["metric"] = "logit_diff"  # the edit a lowered version would hide
        if version == 3:
            meta["tensors_sha256"] = state_sha256(load_file(str(path)))
    edited = _edit(path, tmp_path, lower)
    with pytest.raises(ArtifactError, match=f"a version {version} file, whose hash does not cover"):
        load_attribution(edited)
    with caplog.at_level(logging.WARNING):
        old = load_attribution(edited, verify=False)
    assert "verify=False" in caplog.text and torch.equal(old.scores, a.scores)


def test_a_version_3_file_still_has_its_tensors_checked(saved, tmp_path):
    _, _, _, path = saved
    edited = _edit(path, tmp_path, lambda meta: meta.update(version=3, tensors_sha256="0" * 64))
    with pytest.raises(ArtifactError, match="tensors do not match"):
        load_attribution(edited, verify=False)


# ---- comparisons that refuse a swap or mixed precision -----------------------------------------------
def test_compare_states_the_lineage_and_refuses_a_swap(saved):
    m, batch, base_attr, _ = saved
    tuned = clone_model(m)
    train(tuned, GRPOConfig(max_steps=1, **SMALL))
    tuned_attr = attribute(tuned, "layer", batch, "answer_nll", ablation="zero", per_example=True)
    result = compare(base_attr, tuned_attr)
    assert result.lineage == "tuned was trained from base (grpo, 1 steps)"
    with pytest.raises(ComparisonError, match="swapped: the 'base' attribution ran on weights trained \\(grpo"):
        compare(tuned_attr, base_attr)


def test_compare_and_study_refuse_mixed_precision(saved):
    m, batch, base_attr, _ = saved
    half = clone_model(m)
    half.bridge.to(torch.bfloat16)
    half_attr = attribute(half, "layer", batch, "answer_nll", ablation="zero", per_example=True)
    with pytest.raises(ComparisonError, match="base was attributed in float32 and tuned in bfloat16"):
        compare(base_attr, half_attr)
    with pytest.raises(StudyError, match="grpo#0 runs in bfloat16 and the base in float32"):
        _study(m, {"grpo": half}, None)


def test_the_lock_file_is_not_a_run(tmp_path):
    """A folder that only ever held a lock (a refused run) is free for a new run."""
    with claim_folder(tmp_path / "run", "training run"):
        pass
    t0 = time.perf_counter()
    train(clone_model(zoo_model("llama")), GRPOConfig(max_steps=1, output_dir=str(tmp_path / "run"), **SMALL))
    assert (tmp_path / "run" / "log.jsonl").exists() and time.perf_counter() - t0 < 120
