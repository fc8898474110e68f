"""`run_study`: the RL-circuitry paper's protocol on a base model and one or more tuned models.

1. Every model answers the same problems by greedy generation (chat template when the tokenizer has one).
2. Each response is graded by the problem set's verifier; the study keeps the problems that EVERY model
   answers correctly (one common set for all comparisons).
3. Each model is scored on its own text: the mean NLL of the first `fraction` of its own response tokens,
   teacher forced, attributed by zero-ablation EAP, summed over positions, per example, float32 scores.
4. Per-prompt circuit metrics, pooled and per destination layer; paired tests of tuned - base and of
   (A - base) - (B - base) for every pair of tuned labels, FDR-controlled over the whole study.
A tuned label may hold several models (training seeds): its per-prompt delta is the mean over seeds, and
the spread of the per-seed mean deltas is reported beside the prompt-level CI.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from circuitdyn.analysis.metrics import circuit_metrics, per_layer_metrics
from circuitdyn.analysis.stats import N_PERMUTATIONS, fdr_adjust, paired_stat
from circuitdyn.attribution import Attribution, attribute
from circuitdyn.core.outputs import check_output_folder
from circuitdyn.graph import Graph
from circuitdyn.models import LoadedModel, load_model, weights_sha256
from circuitdyn.study.config import StudyConfig, StudyError, check_label
from circuitdyn.study.generation import distinct_problems, generate, pad_id, scored_batch
from circuitdyn.study.result import CONCENTRATION, HEADLINE, LAYER_METRICS, Entry, StudyResult, Test
from circuitdyn.tasks import ProblemSet, get_problem_set, problems_sha256
from circuitdyn.train.trained import is_checkpoint, load_trained

logger = logging.getLogger(__name__)

ModelLike = str | LoadedModel

def _load(spec: ModelLike, base_spec: str | None) -> LoadedModel:
    if isinstance(spec, LoadedModel):
        return spec
    if not isinstance(spec, str):
        raise StudyError(f"a model must be a spec string or a LoadedModel, got {type(spec).__name__}")
    if is_checkpoint(spec):  # a circuitdyn training checkpoint (LoRA adapters merged), trained from the base
        return load_trained(spec, base_spec)
    return load_model(spec)


def _warn_identical(entries: Sequence[Entry]) -> None:
    """A tuned model with the base's weights (a null comparison: every delta is exactly 0), or one model
    given twice (two seeds that are one), is allowed and said by name."""
    seen: dict[str, str] = {}
    for e in entries:
        digest = weights_sha256(e.model)
        if digest in seen:
            what = "the base's weights: its comparison is a null one" if seen[digest] == "base" else \
                f"the same weights as {seen[digest]}: the two are one model, not two seeds"
            logger.warning("%s has %s (weights sha256 %s)", e.name, what, digest[:12])
        seen.setdefault(digest, e.name)


def _tokenizer_fingerprint(tok: Any) -> tuple[Any, ...]:
    return (tuple(sorted(tok.get_vocab().items())), getattr(tok, "chat_template", None), tok.eos_token_id)


def _check_compatible(entries: Sequence[Entry]) -> None:
    base = entries[0]
    arch = base.model.provenance.architecture
    fp = _tokenizer_fingerprint(base.model.tokenizer)
    for e in entries[1:]:
        if e.model.provenance.architecture != arch:
            raise StudyError(f"{e.name} is a {e.model.provenance.architecture} but the base is a {arch}: a study "
                             "compares models of one architecture family (the same graph); compare tuned versions "
                             "of the base only")
        if _tokenizer_fingerprint(e.model.tokenizer) != fp:
            raise StudyError(f"{e.name} has a different tokenizer (vocabulary, chat template or eos) from the base: "
                             "its generations and scored tokens would not be comparable; use tuned copies that "
                             "share the base's tokenizer")
        ours, theirs = e.model.bridge.cfg, base.model.bridge.cfg
        if ours.n_layers != theirs.n_layers or ours.d_model != theirs.d_model:
            raise StudyError(f"{e.name} has a different shape from the base; a study needs one graph for all models")


def _metric_table(attribution: Attribution, per_layer: bool) -> dict[str, dict[str, np.ndarray]]:
    """Per-prompt metrics: {"pooled": {...}, "layer l": {...}, "logits": {...}}."""
    if attribution.per_example is None or not torch.isfinite(attribution.per_example).all():
        raise StudyError("some per-example scores are not finite: check the model's dtype and the responses")
    out = {"pooled": circuit_metrics(attribution, per_example=True)}
    if per_layer:
        n_layers = attribution.graph.spec.n_layers
        for layer, table in per_layer_metrics(attribution, per_example=True).items():
            out["logits" if layer == n_layers else f"layer {layer}"] = table
    return {scope: {k: v.numpy() for k, v in table.items()} for scope, table in out.items()}


def _tests(cfg: StudyConfig, entries: Sequence[Entry], metrics: dict[tuple[str, str, str], dict[str, np.ndarray]],
           ) -> list[Test]:
    labels = list(dict.fromkeys(e.label for e in entries if e.label != "base"))
    reps = {lab: [e.name for e in entries if e.label == lab] for lab in labels}
    scopes = sorted({k[2] for k in metrics}, key=lambda s: (s != "pooled", s == "logits", len(s), s))
    tests: list[Test] = []
    for gran in cfg.granularities:
        for scope in scopes:
            pooled = scope == "pooled"
            resamples = cfg.n_resamples if pooled else min(cfg.n_resamples, cfg.layer_resamples)
            for metric in HEADLINE if pooled else LAYER_METRICS:
                base = metrics[("base", gran, scope)][metric]
                deltas = {}
                for lab in labels:
                    per_rep = np.stack([metrics[(name, gran, scope)][metric] - base for name in reps[lab]])
                    ok = np.isfinite(per_rep).all(0)
                    if not ok.all():  # an all-zero layer has no entropy: say so by testing fewer prompts
                        per_rep = per_rep[:, ok]
                    deltas[lab] = (per_rep.mean(0), ok)
                    stat = paired_stat(per_rep.mean(0), n_resamples=resamples, seed=cfg.seed,
                                       n_permutations=min(resamples, N_PERMUTATIONS))
                    tests.append(Test(f"{lab} - base", gran, scope, metric, stat, tuple(float(m) for m in per_rep.mean(1))))
                for a, b in itertools.combinations(labels, 2):
                    da, oka = deltas[a]
                    db, okb = deltas[b]
                    both = oka & okb
                    diff = da[both[oka]] - db[both[okb]]
                    stat = paired_stat(diff, n_resamples=resamples, seed=cfg.seed,
                                       n_permutations=min(resamples, N_PERMUTATIONS))
                    tests.append(Test(f"({a} - base) - ({b} - base)", gran, scope, metric, stat))
    qs = fdr_adjust([t.stat.p_value for t in tests])
    return [replace(t, stat=t.stat.with_q(q)) for t, q in zip(tests, qs)]


def _claims(cfg: StudyConfig, tests: Sequence[Test], labels: Sequence[str]) -> list[str]:
    """The paper's three directional claims, stated as measured (pooled scope, each granularity)."""
    out = []
    pooled = {(t.comparison, t.granularity, t.metric): t for t in tests if t.scope == "pooled"}

    def fmt(t: Test) -> str:
        s = t.stat
        return (f"{s.mean:+.4g} [{s.ci_low:+.4g}, {s.ci_high:+.4g}], q={s.q_value:.3g}: "
                f"{s.direction(cfg.alpha).value}")
    online = [lab for lab in labels if not cfg.is_offline(lab)]
    offline = [lab for lab in labels if cfg.is_offline(lab)]
    for gran in cfg.granularities:
        for lab in labels:
            kind = "offline" if cfg.is_offline(lab) else "online RL"
            def get(m: str, lab: str = lab, gran: str = gran) -> Test:
                return pooled[(f"{lab} - base", gran, m)]
            up_i = get("intensity").stat.direction(cfg.alpha).value == "up"
            up_e = get("normalized_entropy").stat.direction(cfg.alpha).value == "up"
            conc = [get(m).stat.direction(cfg.alpha).value for m in CONCENTRATION]
            out.append(
                f"[{gran}] {lab} ({kind}) vs base: intensity {fmt(get('intensity'))}; normalized entropy "
                f"{fmt(get('normalized_entropy'))}; concentration (gini, top_share_0.05, kurtosis): "
                f"{', '.join(conc)}. Paper's claims (intensity up, entropy up, concentration down): "
                f"{'holds' if up_i else 'not supported'} / {'holds' if up_e else 'not supported'} / "
                f"{'holds' if all(c == 'down' for c in conc) else 'not supported'} here."
            )
        for a, b in itertools.product(online, offline):
            key = f"({a} - base) - ({b} - base)" if labels.index(a) < labels.index(b) else f"({b} - base) - ({a} - base)"
            for metric in ("intensity", "normalized_entropy"):
                t = pooled.get((key, gran, metric))
                if t is None:
                    continue
                sign = 1 if key.startswith(f"({a}") else -1  # orient the test as (a - base) - (b - base)
                s = t.stat
                lo, hi = sorted((sign * s.ci_low, sign * s.ci_high))
                if not s.direction(cfg.alpha).detected:
                    stronger = s.direction(cfg.alpha).value.replace("change", "difference")
                else:  # a direction means the CI excludes 0, so the oriented mean's sign decides
                    stronger = "stronger" if sign * s.mean > 0 else "weaker"
                out.append(f"[{gran}] {metric}: change under {a} minus change under {b}: {sign * s.mean:+.4g} "
                           f"[{lo:+.4g}, {hi:+.4g}], q={s.q_value:.3g}: {a}'s change is {stronger} "
                           f"(the paper expects online RL to move it more than {b}).")
    return out


def run_study(
    base: ModelLike,
    tuned: Mapping[str, ModelLike | Sequence[ModelLike]],
    problems: ProblemSet | str,
    *,
    config: StudyConfig | None = None,
    out: str | Path | None = None,
    **overrides: Any,
) -> StudyResult:
    """Run the protocol (module docstring). `tuned` maps a label ("grpo") to a model or a list of models
    (training seeds); models are spec strings (zoo names, local HF folders, circuitdyn checkpoints of the
    base, hub ids when online) or LoadedModels. `overrides` are StudyConfig fields. With `out`, every table,
    plot and the protocol record are written there (generations are saved before any refusal)."""
    cfg = replace(config, **overrides) if config else StudyConfig(**overrides)
    if not tuned:
        raise StudyError("give at least one tuned model: tuned={'grpo': spec_or_model}")
    if "base" in tuned:
        raise StudyError("'base' is reserved for the base model; name the tuned models otherwise")
    for label in tuned:  # labels become file names and table cells: refused before any work
        check_label(label)
    out = check_output_folder(out, "study output folder") if out is not None else None
    source = get_problem_set(problems) if isinstance(problems, str) else problems
    t0 = time.perf_counter()
    base_spec = base if isinstance(base, str) else None
    entries = [Entry("base", 0, _load(base, None))]
    for label, models in tuned.items():
        group = [models] if isinstance(models, (str, LoadedModel)) else list(models)
        if not group:
            raise StudyError(f"tuned label {label!r} has no models")
        entries += [Entry(label, r, _load(m, base_spec)) for r, m in enumerate(group)]
    _check_compatible(entries)
    for e in entries:
        if e.model.bridge.training:
            raise StudyError(f"{e.name} is in training mode (dropout): call model.bridge.eval() first")
    _warn_identical(entries)
    items = distinct_problems(source.problems(cfg.samples, seed=cfg.seed), cfg.samples, source.name)
    seconds = {"load": time.perf_counter() - t0}

    t1 = time.perf_counter()
    generations = {}
    for e in entries:
        generations[e.name] = generate(e.model, items, source, chat_template=cfg.chat_template,
                                       max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size,
                                       progress=cfg.progress, desc=f"generate {e.name}")
    seconds["generate"] = time.perf_counter() - t1
    correct = {name: sum(g.correct for g in gens) for name, gens in generations.items()}
    kept = tuple(i for i in range(len(items)) if all(generations[e.name][i].correct and generations[e.name][i].response_ids
                                                     for e in entries))
    protocol = _protocol(cfg, entries, source, items, correct, kept)
    if out is not None:
        from circuitdyn.study.report import write_generations

        write_generations(out, items, generations, kept, protocol)
    if len(kept) < cfg.min_kept:
        raise StudyError(
            f"only {len(kept)} of {len(items)} problems were answered correctly by every model (correct per model: "
            + ", ".join(f"{k} {v}" for k, v in correct.items())
            + f"); the study needs at least min_kept={cfg.min_kept}. Generate more (samples), allow longer answers "
            "(max_new_tokens), pick easier problems, or lower min_kept."
        )

    t2 = time.perf_counter()
    graphs = {g: Graph.from_model(entries[0].model, g) for g in cfg.granularities}
    attributions: dict[tuple[str, str], Attribution] = {}
    metrics: dict[tuple[str, str, str], dict[str, np.ndarray]] = {}
    for e in entries:
        batch = scored_batch([generations[e.name][i] for i in kept], cfg.fraction, pad_id(e.model.tokenizer))
        for gran, graph in graphs.items():
            attr = attribute(e.model, graph, batch, "answer_nll", ablation="zero", aggregation="sum",
                             per_example=True, batch_size=cfg.batch_size, progress=cfg.progress)
            attributions[(e.name, gran)] = attr
            for scope, table in _metric_table(attr, cfg.per_layer).items():
                metrics[(e.name, gran, scope)] = table
    seconds["attribute"] = time.perf_counter() - t2
    t3 = time.perf_counter()
    tests = _tests(cfg, entries, metrics)
    labels = list(dict.fromkeys(e.label for e in entries if e.label != "base"))
    claims = _claims(cfg, tests, labels)
    seconds["statistics"] = time.perf_counter() - t3
    seconds["total"] = time.perf_counter() - t0
    protocol["seconds"] = {k: round(v, 2) for k, v in seconds.items()}
    result = StudyResult(cfg, tuple(entries), protocol["dataset_sha256"], len(items), correct, kept, generations,
                         attributions, metrics, tuple(tests), tuple(claims), protocol, seconds)
    if out is not None:
        from circuitdyn.study.report import write_study

        write_study(result, out)
    return result


def _protocol(cfg: StudyConfig, entries: Sequence[Entry], source: ProblemSet, items: Sequence[Any],
              correct: dict[str, int], kept: Sequence[int]) -> dict[str, Any]:
    """Everything needed to rerun the study and to know what it ran on."""
    dataset = problems_sha256(items)
    return {
        "protocol": "RL-circuitry: own greedy generations, both-correct filter, mean NLL of the first "
                    f"{cfg.fraction:g} of each response (>= 1 token), zero-ablation EAP, summed over positions, "
                    "per-example float32 scores",
        "config": cfg.as_dict(),
        "problems": {"source": source.name, "n_generated": len(items), "dataset_sha256": dataset},
        "dataset_sha256": dataset,
        "generation": {"greedy": True, "max_new_tokens": cfg.max_new_tokens, "chat_template": cfg.chat_template,
                       "batch_size": cfg.batch_size},
        # the hash of the weights each model actually ran with (a modified copy keeps its base's provenance)
        "models": {e.name: {**e.model.provenance.as_dict(), "weights_sha256": weights_sha256(e.model)}
                   for e in entries},
        "correct": correct,
        "n_kept": len(kept),
        "torch": torch.__version__,
    }
