"""The RL-circuitry study protocol: generation, the scored batch, attribution on own text, statistics, outputs."""

import json
import math

import numpy as np
import pytest
import torch

from circuitdyn.analysis.stats import fdr_adjust, paired_stat
from circuitdyn.attribution import attribute
from circuitdyn.graph import Graph
from circuitdyn.models import clone_model, load_model
from circuitdyn.study import StudyConfig, StudyError, generate, run_study, scored_batch
from circuitdyn.study.generation import encode_prompt
from circuitdyn.tasks import Problem, TaskProblems, get_task
from tests.conftest import perturbed, zoo_model

CHAT = ("{% for m in messages %}({{ m['role'] }}) {{ m['content'] }}{% endfor %}"
        "{% if add_generation_prompt %} (assistant){% endif %}")




class Anything:
    """A problem set whose verifier accepts every response (random models answer nothing right)."""

    name = "anything"

    def problems(self, n, *, seed=0):
        return [Problem(f"{a}+{a + 1}=", str(2 * a + 1)) for a in range(10, 10 + n)]

    def verify(self, problem, response):
        return True


@pytest.fixture(scope="module")
def chat_model(tmp_path_factory):
    """A tiny random-weight Llama with grouped-query attention, saved with a tokenizer that has a chat template."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from circuitdyn.models.zoo import char_tokenizer

    tok = char_tokenizer()
    tok.chat_template = CHAT
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    folder = tmp_path_factory.mktemp("chat_llama")
    LlamaForCausalLM(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return load_model(str(folder), device="cpu")


def test_config_is_validated():
    for bad, message in [(dict(fraction=0), "fraction"), (dict(fraction=1.5), "fraction"),
                         (dict(fraction=float("nan")), "finite"), (dict(samples=True), "integer"),
                         (dict(samples=2.5), "integer"), (dict(granularities=("edge",)), "granularities"),
                         (dict(min_kept=0), "min_kept")]:
        with pytest.raises(StudyError, match=message):
            StudyConfig(**bad)
    assert StudyConfig(fraction=1.0).fraction == 1.0
    assert StudyConfig().is_offline("dpo") and StudyConfig().is_offline("dpo_rpo") and not StudyConfig().is_offline("grpo")


def test_generation_matches_transformers_greedy_generate():
    m = zoo_model("llama")
    source = TaskProblems(get_task("addition"))
    problems = source.problems(3, seed=2)
    gens = generate(m, problems, source, chat_template=True, max_new_tokens=5, batch_size=4)
    hf = m.bridge.original_model
    for p, g in zip(problems, gens):
        ids = torch.tensor([encode_prompt(m.tokenizer, p.question, chat_template=True)])
        ref = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=5, do_sample=False,
                          eos_token_id=m.tokenizer.eos_token_id, pad_token_id=m.tokenizer.pad_token_id)[0, ids.shape[1]:]
        ref = ref.tolist()
        if m.tokenizer.eos_token_id in ref:
            ref = ref[:ref.index(m.tokenizer.eos_token_id)]
        assert list(g.response_ids) == ref
        assert g.correct == (g.text == p.answer)


def test_scored_batch_is_built_from_ids_with_the_first_fraction():
    m = zoo_model("gpt2")
    source = TaskProblems(get_task("addition"))
    gens = generate(m, source.problems(4, seed=1), source, chat_template=False, max_new_tokens=4, batch_size=4)
    assert {len(g.response_ids) for g in gens} <= {2, 3}  # two- or three-digit sums
    for fraction in (0.05, 0.5, 1.0):
        batch = scored_batch(gens, fraction, m.tokenizer.pad_token_id)
        for row, g in enumerate(gens):
            k = g.n_scored(fraction)
            assert k == max(1, math.floor(fraction * len(g.response_ids)))
            assert batch.answers[row, :k].tolist() == list(g.response_ids[:k])
            n = int(batch.mask[row].sum())
            assert batch.clean[row, :n].tolist() == list(g.prompt_ids) + list(g.response_ids[:k - 1])
            assert int(batch.answer_pos[row]) == len(g.prompt_ids) - 1
        assert batch.answers.shape[1] == max(g.n_scored(fraction) for g in gens)
        assert batch.answers.shape[1] == (1 if fraction < 1 else max(len(g.response_ids) for g in gens))


def test_scores_match_brute_force_on_own_generations():
    """Independent check: the metric is the mean NLL of the model's own first tokens, computed from raw HF
    logits, and the study's per-example scores equal the per-edge first-order reference."""
    m = zoo_model("qwen2")
    result = run_study(m, {"tuned": perturbed(m, 1)}, "addition", protocol="common", samples=24, max_new_tokens=4, min_kept=3,
                       fraction=1.0, n_resamples=2000, granularities=("layer",), progress=False, per_layer=False)
    gens = [result.generations["base"][i] for i in result.kept]
    attr = result.attributions[("base", "layer")]
    assert attr.graph.n_edges == 4 * 4 + 3 * 2 + 1  # the q/k/v-split layer graph of a 2-layer model
    hf = m.bridge.original_model
    for row, g in enumerate(gens[:3]):
        ids = torch.tensor([list(g.prompt_ids) + list(g.response_ids)])
        logp = torch.log_softmax(hf(ids).logits[0].float(), -1)
        k = g.n_scored(1.0)
        p0 = len(g.prompt_ids) - 1
        nll = -torch.stack([logp[p0 + i, g.response_ids[i]] for i in range(k)]).mean()
        assert abs(float(nll.detach()) - float(attr.metric_values[row])) < 1e-5
    batch = scored_batch(gens[:3], 1.0, m.tokenizer.pad_token_id)
    ref = attribute(m, attr.graph, batch, "answer_nll", method="first-order", ablation="zero", aggregation="sum",
                    per_example=True)
    assert torch.allclose(attr.per_example[:3], ref.per_example, atol=1e-5, rtol=1e-4)
    assert attr.per_example[:3].abs().max() > 1e-3


def test_study_on_zoo_end_to_end(tmp_path):
    base = zoo_model("llama")
    result = run_study(base, {"grpo": [perturbed(base, 1), perturbed(base, 2)], "dpo": perturbed(base, 3)},
                       "addition", protocol="common", samples=40, max_new_tokens=4, n_resamples=2000,
                       granularities=("layer", "head"), progress=False, out=tmp_path / "study")
    names = ["base", "grpo#0", "grpo#1", "dpo#0"]
    assert list(result.correct) == names
    # one common kept set: every kept problem is answered correctly by every model, and only those
    for i in range(result.n_generated):
        assert (i in result.kept) == all(result.generations[n][i].correct for n in names)
    assert min(result.correct.values()) >= len(result.kept) >= 8
    for attr in result.attributions.values():
        assert attr.per_example.shape[0] == len(result.kept)
    t = result.test("grpo - base", "intensity")
    assert len(t.seed_means) == 2 and t.stat.n == len(result.kept)
    base_i = result.metrics[("base", "layer", "pooled")]["intensity"]
    per_seed = [result.metrics[(n, "layer", "pooled")]["intensity"] - base_i for n in ("grpo#0", "grpo#1")]
    assert abs(t.stat.mean - np.mean(per_seed)) < 1e-12
    assert np.allclose(sorted(t.seed_means), sorted(np.mean(per_seed, axis=1)))
    between = result.test("(grpo - base) - (dpo - base)", "intensity", "head")
    assert between.stat.n == len(result.kept)
    assert all(t.stat.q_value >= t.stat.p_value - 1e-12 for t in result.tests)
    # perturbed copies may answer fewer problems than the base: those labels are degraded, their claims withheld
    degraded = result.protocol["degraded"]
    assert set(degraded) == {lab for lab in ("grpo", "dpo") if np.mean(
        [v for k, v in result.correct.items() if k.startswith(f"{lab}#")]) < result.correct["base"]}
    for lab, kind in (("grpo", "online RL"), ("dpo", "offline")):
        line = next(c for c in result.claims if c.startswith(f"[layer] {lab} "))
        assert line.startswith(f"[layer] {lab} left out of the claims: degraded" if lab in degraded
                               else f"[layer] {lab} ({kind}) vs base"), line
    crossed = any("change under grpo minus change under dpo" in c for c in result.claims)
    assert crossed == (not degraded)
    out = tmp_path / "study"
    for name in ("report.md", "tests.csv", "tests.json", "model_metrics.csv", "protocol.json", "generations.jsonl",
                 "per_layer_intensity_layer.png", "ecdf_intensity_head.png", "deltas_layer.png",
                 "attributions/grpo_seed0_head.safetensors", "view_grpo_seed1_layer.html", "view_dpo_seed0_head.html"):
        assert (out / name).is_file(), name
    protocol = json.loads((out / "protocol.json").read_text())
    assert protocol["models"]["grpo#1"]["weights_sha256"] != protocol["models"]["base"]["weights_sha256"]
    assert protocol["dataset_sha256"] == result.problems_hash and protocol["n_kept"] == len(result.kept)
    assert "intensity_of_mean_scores" in (out / "model_metrics.csv").read_text()
    # titles are wrapped to the figure: none is cut at its edge, whatever the family's name
    from circuitdyn.study import plots

    family = "a family whose name is long enough to overflow any single-line title"
    for fig in (plots.ecdf(result, "layer", "intensity", tmp_path / "e.png", family),
                plots.per_layer(result, "head", "intensity", tmp_path / "p.png", family),
                plots.deltas(result, "layer", tmp_path / "d.png", family)):
        renderer = fig.canvas.get_renderer()
        for ax in fig.axes:
            box = ax.title.get_window_extent(renderer)
            assert 0 <= box.x0 and box.x1 <= fig.bbox.width, ax.title.get_text()


def test_refusals_name_the_problem(tmp_path):
    base = zoo_model("gpt2")
    with pytest.raises(StudyError, match="LlamaForCausalLM but the base is a GPT2LMHeadModel"):
        run_study(base, {"grpo": zoo_model("llama")}, "addition", samples=4, progress=False)
    with pytest.raises(StudyError, match=r"correct per model: base \d+, grpo#0 \d+"):
        run_study(base, {"grpo": base}, "addition", samples=4, max_new_tokens=4, min_kept=5, progress=False, protocol="common",
                  out=tmp_path / "refused")
    assert (tmp_path / "refused" / "generations.jsonl").is_file()  # the generation work is kept
    with pytest.raises(StudyError, match="at least one tuned"):
        run_study(base, {}, "addition")
    with pytest.raises(StudyError, match="reserved"):
        run_study(base, {"base": base}, "addition")


def test_tokenizer_mismatch_is_refused(chat_model):
    other = clone_model(zoo_model("llama"))
    with pytest.raises(StudyError, match="different tokenizer"):
        run_study(other, {"t": chat_model}, Anything(), samples=2, progress=False)


def test_chat_template_model_end_to_end(chat_model, tmp_path, capsys):
    """A tiny random HF model whose tokenizer has a chat template: prompts go through the template, and the
    study runs on its (meaningless) generations."""
    tok = chat_model.tokenizer
    ids = encode_prompt(tok, "12+13=", chat_template=True)
    assert tok.decode(ids) == "(user) 12+13= (assistant)"
    assert encode_prompt(tok, "12+13=", chat_template=False) == tok("12+13=")["input_ids"]
    result = run_study(chat_model, {"tuned": perturbed(chat_model, 5)}, Anything(), protocol="common",
                       samples=6, max_new_tokens=6,
                       min_kept=2, n_resamples=1000, granularities=("layer", "head"), progress=True,
                       out=tmp_path / "chat")
    said = capsys.readouterr().err  # every phase without a bar says what it does and how long it took
    for phase in ("opening 2 model(s)", "building and probing the layer and head graph(s)", "statistics: paired tests",
                  "writing tables and plots"):
        assert f"{phase}" in said and said.count(phase) == 2, phase
    gens = result.generations["base"]
    assert all(g.prompt_ids == tuple(encode_prompt(tok, p, chat_template=True))
               for g, p in zip(gens, [q.question for q in Anything().problems(6)]))
    kept = [g for g in gens if g.response_ids]
    assert len(result.kept) == len([i for i in range(6) if all(result.generations[n][i].response_ids
                                                                for n in result.generations)])
    assert result.attributions[("base", "layer")].graph.n_edges == Graph.from_model(chat_model, "layer").n_edges
    assert kept


def test_paired_stat_closed_forms():
    d = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    s = paired_stat(d, n_resamples=10_000)
    assert s.mean == 3.0 and s.median == 3.0
    assert abs(s.p_value - 2 / 32) < 1e-12  # exact sign-flip test: only all-positive and all-negative as extreme
    assert s.ci_low < 3.0 < s.ci_high
    constant = paired_stat(np.full(6, 0.5))
    assert constant.ci_low == constant.ci_high == 0.5 and constant.p_value == 1.0
    with pytest.raises(ValueError, match="not finite"):
        paired_stat(np.array([1.0, np.nan, 2.0]))
    p = [0.01, 0.04, 0.03, 0.5, float("nan")]
    q = fdr_adjust(p)
    assert q[:4] == pytest.approx([0.04, 0.04 * 4 / 3, 0.04 * 4 / 3, 0.5]) and math.isnan(q[4])


def test_ci_ends_are_stable_at_the_default_resamples():
    rng = np.random.default_rng(0)
    d = rng.standard_t(3, size=60) * 0.01 + 0.002
    a, b = paired_stat(d, seed=1), paired_stat(d, seed=2)
    width = a.ci_high - a.ci_low
    assert abs(a.ci_low - b.ci_low) < 4e-3 * width and abs(a.ci_high - b.ci_high) < 4e-3 * width
    assert (a.p_value < 0.05) == (a.ci_low > 0 or a.ci_high < 0) or abs(a.p_value - 0.05) < 0.01


def test_ragged_scored_lengths_in_one_batch():
    """Rows scoring different numbers of tokens, the longest prompt scoring the fewest: the metric reads only
    each row's own tokens (a regression test: positions past a short row's end once raised IndexError)."""
    from circuitdyn.study.generation import Generation

    m = zoo_model("llama")
    long_prompt = Generation(tuple(m.tokenizer("12+34=")["input_ids"]), (5, 6), "", True, True)
    short_prompt = Generation(tuple(m.tokenizer("1+3=")["input_ids"]), (5, 6, 7, 8, 9, 10), "", True, True)
    batch = scored_batch([long_prompt, short_prompt], 1.0, m.tokenizer.pad_token_id)
    a = attribute(m, "layer", batch, "answer_nll", ablation="zero", per_example=True, aggregation="sum")
    for row, g in enumerate([long_prompt, short_prompt]):
        one = attribute(m, "layer", scored_batch([g], 1.0, m.tokenizer.pad_token_id), "answer_nll", ablation="zero",
                        aggregation="sum")
        assert torch.allclose(a.per_example[row], one.scores, atol=1e-6)
        # batched and single float32 forwards may differ by a few ulps (2 ulps of 13.8 seen on one CPU)
        assert abs(float(a.metric_values[row]) - float(one.metric_values[0])) < 1e-6 * max(1.0, abs(float(one.metric_values[0])))
