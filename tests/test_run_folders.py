"""A run's folder is never destroyed or mixed, and what it exports loads like the model it came from: one
test per case of the runs-and-exports audit (items 1-12; the kill tests run real subprocesses)."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from circuitdyn.cli import main
from circuitdyn.core.atomic import atomic_folder, previous_of, recover_folder
from circuitdyn.models import clone_model, load_model
from circuitdyn.models.export import save_hf_folder
from circuitdyn.models.lora_config import LoraError, check_lora_config
from circuitdyn.study import StudyError, run_study
from circuitdyn.tasks.base import TaskError
from circuitdyn.train import ConfigError, GRPOConfig, Trainer, TrainingError, config_from_dict
from circuitdyn.train.checkpoint import CheckpointError
from circuitdyn.train.run_folder import read_log
from tests.conftest import ALL_FAMILIES, zoo_model

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
TRAIN = ["train", "--model", "zoo:llama", "--set", "eval_steps=0", "--set", "per_device_train_batch_size=8",
         "--set", "num_generations=4", "--set", "save_steps=1"]


def cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "circuitdyn.cli", *args], capture_output=True, text=True, env=ENV,
                          timeout=timeout)


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """Two finished runs, A (3 steps) and B (3 steps, another seed), each with checkpoints 1-3 and final/."""
    root = tmp_path_factory.mktemp("runs")
    for name, seed in (("A", 0), ("B", 1)):
        assert main([*TRAIN, "--set", "max_steps=3", "--set", f"seed={seed}", "--out", str(root / name)]) == 0
    return root


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# 1. resuming into another run's folder
def test_a_checkpoint_does_not_resume_into_another_runs_folder(two_runs):
    before = snapshot(two_runs / "B")
    out = cli(*TRAIN, "--set", "max_steps=4", "--resume", str(two_runs / "A" / "checkpoint-1"), "--out",
              str(two_runs / "B"))
    assert out.returncode == 2, out.stderr
    assert "holds another run" in out.stderr and "resume into the checkpoint's own folder" in out.stderr
    assert "Traceback" not in out.stderr
    assert snapshot(two_runs / "B") == before  # B's log, checkpoints and final weights untouched


# 2. publishing a folder: one complete copy at every instant, whenever the process is killed
KILL_SCRIPT = """
import os, signal, sys
from pathlib import Path
from circuitdyn.core.atomic import atomic_folder

folder, kill_at = Path(sys.argv[1]), int(sys.argv[2])

def publish(version):
    with atomic_folder(folder) as tmp:
        for i in range(5):
            (tmp / f"part{i}").write_text(f"{version}:{i}")

publish("old")
events = {"n": 0}
def killing(fn):
    def wrapped(*args, **kwargs):
        events["n"] += 1
        if events["n"] == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        return fn(*args, **kwargs)
    return wrapped
os.replace, os.unlink, os.rmdir = killing(os.replace), killing(os.unlink), killing(os.rmdir)
publish("new")
print("finished")
"""


@pytest.mark.parametrize("kill_at", range(1, 9))
def test_a_publish_killed_at_any_step_leaves_one_complete_copy(tmp_path, kill_at):
    """Events of the second publish: 1 rename the old copy aside, 2 rename the new one in, 3-7 remove the
    old copy's files, 8 its folder. Killed before event k, the folder (after recover_folder, which every
    reader calls) holds the old copy for k <= 2 and the new one after."""
    folder = tmp_path / "final"
    out = subprocess.run([sys.executable, "-c", KILL_SCRIPT, str(folder), str(kill_at)], capture_output=True,
                         text=True, env=ENV, timeout=120)
    assert out.returncode == -signal.SIGKILL, out.stderr
    assert folder.exists() or previous_of(folder).exists()  # never no copy at all
    recover_folder(folder)
    expected = "old" if kill_at <= 2 else "new"
    assert sorted(p.name for p in folder.iterdir()) == [f"part{i}" for i in range(5)]
    assert [(folder / f"part{i}").read_text() for i in range(5)] == [f"{expected}:{i}" for i in range(5)]
    assert not previous_of(folder).exists()
    with atomic_folder(folder) as tmp:  # and the next publish works
        (tmp / "x").write_text("next")
    assert [p.name for p in folder.iterdir()] == ["x"]


# 3. a torn last line in log.jsonl
def test_a_torn_last_log_line_is_dropped_and_the_run_resumes(tmp_path, caplog):
    run = tmp_path / "run"
    assert main([*TRAIN, "--set", "max_steps=2", "--out", str(run)]) == 0
    log = run / "log.jsonl"
    log.write_text(log.read_text() + '{"step": 3, "loss": 0.1')  # the power went mid-write
    out = cli(*TRAIN, "--set", "max_steps=3", "--resume", str(run / "checkpoint-2"), "--out", str(run))
    assert out.returncode == 0, out.stderr
    assert "its last line is torn" in out.stderr
    assert [r["step"] for r in read_log(log)] == [1, 2, 3]
    log.write_text('{"step": 1}\nnot json\n{"step": 2}\n')
    with pytest.raises(CheckpointError, match=r"log.jsonl: line 2 is not a log record"):
        read_log(log)


# 4. resuming a checkpoint that is already past max_steps
def test_resuming_past_max_steps_is_refused_and_final_stays(two_runs):
    before = snapshot(two_runs / "A" / "final")
    out = cli(*TRAIN, "--set", "max_steps=1", "--resume", str(two_runs / "A" / "checkpoint-2"), "--out",
              str(two_runs / "A"))
    assert out.returncode == 2 and "is at step 2 and max_steps is 1" in out.stderr, out.stderr
    assert snapshot(two_runs / "A" / "final") == before


# 5. empty output paths and ~
def test_empty_output_paths_are_refused_and_tilde_is_expanded(tmp_path, capsys, monkeypatch):
    for command in (["train", "--model", "zoo:llama"], ["study", "--base", "zoo:llama", "--tuned", "g=zoo:llama"],
                    ["attribute", "--model", "zoo:llama"]):
        with pytest.raises(SystemExit) as exit_:
            main([*command, "--out", ""])
        assert exit_.value.code == 2 and "empty path" in capsys.readouterr().err
    with pytest.raises(ValueError, match="output_dir is empty"):
        GRPOConfig(output_dir="")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert main([*TRAIN, "--set", "max_steps=1", "--out", "~/runs/x"]) == 0
    assert (tmp_path / "runs" / "x" / "final" / "config.json").exists() and not Path("~").exists()


def test_an_output_folder_that_is_a_file_is_refused_before_any_work(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("mine")
    for out in (blocker, blocker / "below"):
        with pytest.raises(ValueError, match="not a folder|cannot create"):
            Trainer(clone_model(zoo_model("llama")), GRPOConfig(max_steps=1, eval_steps=0, output_dir=str(out)))
    assert blocker.read_text() == "mine"


# 6. labels checked before any work
@pytest.mark.parametrize("label", ["../escape", "/abs", "two\nlines", "nul\x00", "a|b", "=cmd", "", "x" * 65])
def test_a_bad_label_is_refused_before_any_work(tmp_path, label):
    out = tmp_path / "study"
    t0 = time.perf_counter()
    with pytest.raises(StudyError, match="is not usable"):
        run_study(zoo_model("llama"), {label: zoo_model("llama")}, "addition", samples=4, out=out, progress=False)
    assert not out.exists() and time.perf_counter() - t0 < 1.0


# 7. Ctrl-C
def test_ctrl_c_says_what_was_kept_and_how_to_resume(tmp_path):
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "circuitdyn.cli", *TRAIN, "--set", "max_steps=400",
                             "--out", str(run)], stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=ENV)
    deadline = time.time() + 120
    while not (run / "checkpoint-2").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "interrupted" in err and "--resume latest" in err and "checkpoint-" in err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err


# 8 and 9. exports tokenize, configure and generate like their base
@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_an_export_tokenizes_and_generates_like_its_base(tmp_path, family):
    base = zoo_model(family)
    export = tmp_path / "export"
    export.mkdir()
    save_hf_folder(base.bridge, base.tokenizer, export, source=base.provenance.source)
    text = "23 + 58 = 81"
    assert load_model(str(export), device="cpu").tokenizer(text).input_ids == base.tokenizer(text).input_ids
    source = Path(base.provenance.source)
    assert AutoTokenizer.from_pretrained(export)(text).input_ids == AutoTokenizer.from_pretrained(source)(text).input_ids
    for name in ("config.json", "generation_config.json"):
        ours, theirs = json.loads((export / name).read_text()), json.loads((source / name).read_text())
        assert {k: v for k, v in ours.items() if k != "transformers_version"} == \
            {k: v for k, v in theirs.items() if k != "transformers_version"}, name
    ids = torch.tensor([base.tokenizer("12+34=").input_ids])
    reference = AutoModelForCausalLM.from_pretrained(source).eval()
    exported = AutoModelForCausalLM.from_pretrained(export).eval()
    a = reference.generate(ids, max_new_tokens=3, do_sample=False, pad_token_id=base.tokenizer.pad_token_id)
    b = exported.generate(ids, max_new_tokens=3, do_sample=False, pad_token_id=base.tokenizer.pad_token_id)
    assert isinstance(b, torch.Tensor) and torch.equal(a, b)


def test_a_trained_runs_final_folder_loads_with_the_base_tokenizer(two_runs):
    final = load_model(str(two_runs / "A" / "final"), device="cpu")
    text = "23 + 58 = 81"
    assert final.tokenizer(text).input_ids == zoo_model("llama").tokenizer(text).input_ids
    assert not json.loads((two_runs / "A" / "final" / "config.json").read_text()).get("output_attentions", False)


# 10. a LoRA run's checkpoint as a study's tuned model and as attribute --checkpoint
@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_a_lora_checkpoint_is_studied_and_attributed(tmp_path, family):
    from peft import LoraConfig

    from circuitdyn.train import train

    run, spec = tmp_path / "lora", f"zoo:{family}"
    cfg = GRPOConfig(max_steps=2, eval_steps=0, per_device_train_batch_size=8, num_generations=4, learning_rate=1e-2,
                     output_dir=str(run), peft=LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    trained = clone_model(zoo_model(family))
    train(trained, cfg)
    loaded = load_model(str(run / "final"), device="cpu")
    ids = torch.tensor([loaded.tokenizer("12+34=").input_ids])
    with torch.no_grad():
        assert torch.allclose(loaded.bridge(ids), trained.bridge(ids), atol=1e-5)  # the adapters, merged
    result = run_study(spec, {"lora": str(run / "final")}, "addition", samples=8, max_new_tokens=4,
                       min_kept=1, n_resamples=1000, per_layer=False, progress=False)
    assert result.protocol["models"]["lora#0"]["weights_sha256"] != result.protocol["models"]["base"]["weights_sha256"]
    assert main(["attribute", "--model", spec, "--checkpoint", str(run / "final"), "--examples", "4",
                 "--granularity", "layer", "--out", str(tmp_path / "lora.safetensors")]) == 0
    other = "zoo:gpt2" if family != "gpt2" else "zoo:llama"
    assert main(["attribute", "--model", other, "--checkpoint", str(run / "final"), "--examples", "4"]) == 2


# 11. LoRA options as peft means them
def test_lora_exclude_modules_and_layers_to_transform_are_honoured():
    from peft import LoraConfig

    from circuitdyn.models.lora import lora_targets

    bridge = zoo_model("llama").bridge
    every = lora_targets(bridge, LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    assert every == ["model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.v_proj",
                     "model.layers.1.self_attn.q_proj", "model.layers.1.self_attn.v_proj"]
    excluded = lora_targets(bridge, LoraConfig(r=2, target_modules=["q_proj", "v_proj"], exclude_modules=["v_proj"]))
    assert excluded == [n for n in every if n.endswith("q_proj")]
    layer1 = lora_targets(bridge, LoraConfig(r=2, target_modules=["q_proj", "v_proj"], layers_to_transform=[1]))
    assert layer1 == [n for n in every if ".1." in n]
    for bad, message in ((dict(r=4.5), "r=4.5"), (dict(r=0), "r=0"), (dict(lora_alpha=0), "lora_alpha=0")):
        with pytest.raises(LoraError, match=message):
            check_lora_config(LoraConfig(**{"target_modules": "all-linear", **bad}))
        with pytest.raises(ConfigError, match=message):  # as a training config field
            GRPOConfig(peft=LoraConfig(**{"target_modules": "all-linear", **bad}))
    with pytest.raises(ConfigError, match=r"unknown LoraConfig fields \['rank'\]"):
        config_from_dict({"algorithm": "grpo", "peft": {"rank": 4}})
    with pytest.raises(ConfigError, match=r"unknown classifier_first fields \['stepz'\]"):
        config_from_dict({"algorithm": "grpo", "classifier_first": {"stepz": 4}})


# 12. float16 weights
def test_float16_training_is_refused_with_the_fix():
    half = load_model("zoo:llama", device="cpu", dtype=torch.float16)
    with pytest.raises(TrainingError, match="float16.*Load the model in float32.*fp16=True"):
        Trainer(half, GRPOConfig(max_steps=1, eval_steps=0, per_device_train_batch_size=8, num_generations=4))


# 13. the study: contexts, unknown characters, too few pairs, resamples, null comparisons, offline labels
class Questions:
    """A problem set of given questions whose verifier accepts every response."""

    name = "questions"

    def __init__(self, *questions):
        self.questions = questions

    def problems(self, n, *, seed=0):
        from circuitdyn.tasks.problems import Problem

        return [Problem(q, "1") for q in self.questions[:n]]

    def verify(self, problem, response):
        return True


def test_study_inputs_are_refused_or_named_before_they_break(caplog):
    gpt2 = zoo_model("gpt2")  # learned positions, a 32-token context
    with pytest.raises(StudyError, match=r"fill the model's context of 32 positions"):
        run_study(gpt2, {"t": gpt2}, Questions("1" * 40), samples=1, min_kept=1, progress=False)
    with caplog.at_level("WARNING"):  # past the context: cut there, with a word (it used to raise IndexError)
        result = run_study(gpt2, {"t": clone_model(gpt2)}, Questions(*[f"{a}+{a}=" for a in range(10, 20)]), samples=10,
                           max_new_tokens=40, min_kept=1, n_resamples=1000, per_layer=False, progress=False)
    assert "passes the model's context of 32" in caplog.text and "responses are cut" in caplog.text
    assert max(len(g.prompt_ids) + len(g.response_ids) for g in result.generations["t#0"]) <= 32
    assert "t#0 has the base's weights: its comparison is a null one" in caplog.text  # a clone, untouched
    with pytest.raises(TaskError, match="problem 0: .* characters this tokenizer does not know"):  # full-width
        run_study(gpt2, {"t": gpt2}, Questions("１２+34=", "56+78="), samples=2, min_kept=1, progress=False)
    with pytest.raises(StudyError, match="n_resamples=1: a 95% CI from fewer than 1000"):
        run_study(gpt2, {"t": gpt2}, "addition", n_resamples=1)
    caplog.clear()
    with caplog.at_level("WARNING"):
        null = run_study(gpt2, {"same": gpt2}, Questions(*[f"{a}+1=" for a in range(10, 20)], "10+1="), samples=11,
                         max_new_tokens=2, min_kept=1, n_resamples=1000, per_layer=False, progress=False)
    assert "same#0 has the base's weights: its comparison is a null one" in caplog.text
    assert all(t.stat.mean == 0 for t in null.tests if t.comparison == "same - base")  # every delta exactly 0
    assert "1 repeated question(s) dropped" in caplog.text


def test_too_few_pairs_are_not_tested_and_offline_labels_follow_a_stated_rule():
    from circuitdyn.analysis.stats import Direction, min_testable, paired_stat
    from circuitdyn.study import StudyConfig

    assert min_testable(0.05) == 6
    assert paired_stat([1.0, 2.0]).direction() is Direction.TOO_FEW
    assert paired_stat([1.0, 2.0, 1.5, 1.2, 1.1, 1.3]).direction() is Direction.UP
    cfg = StudyConfig(offline=("dpo",))
    assert [cfg.is_offline(x) for x in ("dpo", "DPO", "dpo1", "dpo-2", "dpo_rpo", "dpox", "grpo")] == \
        [True, True, True, True, True, False, False]
    assert main(["study", "--base", "zoo:gpt2", "--tuned", "x=zoo:gpt2", "--offline", "x", "--resamples", "5",
                 "--out", "/nonexistent/never"]) == 2  # the config is refused before any model loads


# 14. training inputs
def test_training_inputs_are_refused_with_the_field_named(tmp_path, capsys):
    from circuitdyn.train import train
    from circuitdyn.train.rewards import RewardError

    for sets, message in ((["algorithm=dpo"], "give it as --algorithm"), (["output_dir=x"], "give it as --out"),
                          (["task=5"], "task must be"), (['stop_token_ids=["a"]'], "stop_token_ids must be"),
                          (["stop_token_ids=5"], "stop_token_ids must be"), (["advantage_eps=-0.5"], "advantage_eps"),
                          (["progress=5"], "given it|progress"), (["adam_beta1=1.5"], "adam_beta1")):
        args = [a for s in sets for a in ("--set", s)]
        assert main(["train", "--model", "zoo:llama", *args, "--out", str(tmp_path / "r")]) == 2, sets
        err = capsys.readouterr().err
        assert re.search(message, err) and err.count("\n") == 1, (sets, err)
    assert not (tmp_path / "r").exists()

    def flaky(prompts, completions, **columns):
        return [1 / 0 for _ in completions]

    cfg = GRPOConfig(max_steps=1, eval_steps=0, per_device_train_batch_size=8, num_generations=4)
    with pytest.raises(RewardError, match=r"the reward function flaky raised ZeroDivisionError.*the first '"):
        train(clone_model(zoo_model("llama")), cfg, reward=flaky)


# 15. attribution, report and tables
def test_reports_and_tables_refuse_or_name_what_would_mislead(tmp_path, capsys, caplog):
    from circuitdyn.analysis.report import to_csv
    from circuitdyn.attribution import AttributionConfig, AttributionError
    from circuitdyn.tasks import Addition
    from circuitdyn.tasks.base import distinct_examples

    with caplog.at_level("WARNING"):
        assert len(distinct_examples(Addition(), 10_000)) < 10_000
    assert "10000 distinct examples asked for" in caplog.text
    with pytest.raises(AttributionError, match="memory_budget"):
        AttributionConfig(memory_budget=float("nan"))
    good = {"comparison": "t - b", "metric": "intensity", "base_mean": 1.0, "tuned_mean": 2.0, "delta": 1.0,
            "ci_low": 0.5, "ci_high": 1.5, "p_value": 0.01, "effect_size": 1.0, "n": 12}
    for records, message in (([], "holds no records"), ([{**good, "delta": "big"}], "delta='big', which is not a number"),
                             ([{k: v for k, v in good.items() if k != "metric"}], "lacks \\['metric'\\]")):
        path = tmp_path / "r.json"
        path.write_text(json.dumps(records))
        assert main(["report", str(path)]) == 2
        err = capsys.readouterr().err
        assert re.search(message, err) and "Traceback" not in err, err
    path.write_text(json.dumps([good]))  # a record of one metric: the others are shown as missing
    assert main(["report", str(path)]) == 0 and "| t - b | 12 | +1 [+0.5, +1.5] (p=0.01) | - | - | - |" in \
        capsys.readouterr().out
    text = to_csv([{"label": "=HYPERLINK(1)", "delta": -0.5, "note": "-x"}], tmp_path / "t.csv").read_text()
    assert text.splitlines()[1] == "'=HYPERLINK(1),-0.5,'-x"


def test_comparing_a_file_with_itself_says_so(tmp_path, caplog):
    from circuitdyn.analysis import compare
    from circuitdyn.attribution import attribute
    from circuitdyn.tasks import Addition, tokenize_pairs

    m = zoo_model("llama")
    a = attribute(m, "layer", tokenize_pairs(m.tokenizer, Addition().examples(6)), per_example=True)
    with caplog.at_level("WARNING"):
        assert compare(a, a, n_resamples=1000)["intensity"].delta == 0
    assert "identical per-example scores (the same file twice?)" in caplog.text


# 16. the examples answer like the CLI
def test_an_example_with_a_bad_model_says_one_line(tmp_path):
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, str(root / "examples" / "compare_ppo_grpo_dpo.py"), "--model",
                          "nope/missing", "--quick", "--out", str(tmp_path)], capture_output=True, text=True,
                         env=ENV, timeout=300)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert out.stderr.startswith("compare_ppo_grpo_dpo.py: error:") and "nope/missing" in out.stderr


@pytest.mark.slow
@pytest.mark.parametrize("spec", ["smollm2-135m", "gemma3-270m"])
def test_a_real_models_export_tokenizes_configures_and_generates_like_it(tmp_path, spec):
    base = load_model(spec, device="cpu")
    save_hf_folder(base.bridge, base.tokenizer, tmp_path, source=base.provenance.source)
    text = "When Mary and John went to the store, 23 + 58 = 81"
    assert load_model(str(tmp_path), device="cpu").tokenizer(text).input_ids == base.tokenizer(text).input_ids
    source = Path(base.provenance.source)
    for name in ("config.json", "generation_config.json"):
        ours, theirs = json.loads((tmp_path / name).read_text()), json.loads((source / name).read_text())
        assert {k: v for k, v in ours.items() if k != "transformers_version"} == \
            {k: v for k, v in theirs.items() if k != "transformers_version"}, name
    ids = torch.tensor([base.tokenizer("The capital of France is").input_ids])
    a = AutoModelForCausalLM.from_pretrained(source).eval().generate(ids, max_new_tokens=4, do_sample=False)
    b = AutoModelForCausalLM.from_pretrained(tmp_path).eval().generate(ids, max_new_tokens=4, do_sample=False)
    assert isinstance(b, torch.Tensor) and torch.equal(a, b)
