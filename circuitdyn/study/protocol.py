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

import dataclasses
import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from circuitdyn.attribution import Attribution
from circuitdyn.core.outputs import check_output_folder
from circuitdyn.core.phases import phase
from circuitdyn.graph import Graph
from circuitdyn.models import LoadedModel, load_model, weights_sha256
from circuitdyn.study.config import Protocol, StudyConfig, StudyError, check_label
from circuitdyn.study.folder import study_folder
from circuitdyn.study.generation import distinct_problems, generate, pad_id, scored_batch
from circuitdyn.study.paper import run_paper
from circuitdyn.study.result import Entry, StudyResult
from circuitdyn.study.statistics import degraded_labels, paired_tests, score, state_claims, with_fdr
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
        mine, its = (next(m.bridge.parameters()).dtype for m in (e.model, base.model))
        if mine != its:
            raise StudyError(f"{e.name} runs in {str(mine).replace('torch.', '')} and the base in "
                             f"{str(its).replace('torch.', '')}: the precision difference would read as a change of "
                             "the circuit; load every model in one dtype")


def run_study(
    base: ModelLike,
    tuned: Mapping[str, ModelLike | Sequence[ModelLike]],
    problems: ProblemSet | str | None = None,
    *,
    config: StudyConfig | None = None,
    out: str | Path | None = None,
    generations: Mapping[str, str | Path | Sequence[str | Path]] | None = None,
    replace: bool = False,
    **overrides: Any,
) -> StudyResult:
    """Run the protocol (module docstring). `tuned` maps a label ("grpo") to a model or a list of models
    (training seeds); models are spec strings (zoo names, local HF folders, circuitdyn checkpoints of the
    base, hub ids when online) or LoadedModels. `overrides` are StudyConfig fields. `generations` maps a
    label to the pair's generations file (the paper's all_correct.jsonl rows; one per seed), read instead of
    generating (paper protocol). With `out`, every table, plot and the protocol record are written there
    (generations are saved before any refusal); the folder is held by this study while it runs, and one
    that holds another study is refused unless `replace` (study/folder.py)."""
    cfg = dataclasses.replace(config, **overrides) if config else StudyConfig(**overrides)
    files = {label: [f] if isinstance(f, (str, Path)) else list(f) for label, f in (generations or {}).items()}
    _check_request(cfg, tuned, files, problems)
    if out is None:
        return _run(cfg, base, tuned, problems, files, None)
    out = check_output_folder(out, "study output folder")
    with study_folder(out, list(tuned), replace=replace):
        return _run(cfg, base, tuned, problems, files, out)


def _run(cfg: StudyConfig, base: ModelLike, tuned: Mapping[str, ModelLike | Sequence[ModelLike]], problems: Any,
         files: dict[str, list[Any]], out: Path | None) -> StudyResult:
    t0 = time.perf_counter()
    with phase(f"loading {1 + sum(len(v) if isinstance(v, (list, tuple)) else 1 for v in tuned.values())} model(s)",
               cfg.progress):
        entries = _entries(base, tuned)
    seconds = {"load": time.perf_counter() - t0}
    t1 = time.perf_counter()
    generate_for = [e for e in entries if e.label not in files] if len(files) < len(tuned) else []
    items, source, gens = [], None, {}
    if generate_for:
        source = get_problem_set(problems) if isinstance(problems, str) else problems
        if source is None:  # _check_request refused this already
            raise StudyError("no problems to generate from")
        items = distinct_problems(source.problems(cfg.samples, seed=cfg.seed), cfg.samples, source.name)
        for e in generate_for:
            gens[e.name] = generate(e.model, items, source, chat_template=cfg.chat_template,
                                    max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size,
                                    progress=cfg.progress, desc=f"generate {e.name}")
    seconds["generate"] = time.perf_counter() - t1
    correct = {name: sum(g.correct for g in gs) for name, gs in gens.items()}
    protocol = _protocol(cfg, entries, source, items, correct)
    with phase(f"building and probing the {' and '.join(cfg.granularities)} graph(s)", cfg.progress):
        graphs = {g: Graph.from_model(entries[0].model, g) for g in cfg.granularities}
    if cfg.protocol is Protocol.PAPER:
        result = run_paper(cfg, entries, gens, files, graphs, protocol, out, t0, seconds)
    else:
        result = _run_common(cfg, entries, items, gens, graphs, protocol, out, t0, seconds)
    if out is not None:
        from circuitdyn.study.report import write_study

        with phase(f"writing tables and plots to {out}", cfg.progress):
            write_study(result, out)
    return result


def _check_request(cfg: StudyConfig, tuned: Mapping[str, Any], files: Mapping[str, list[Any]], problems: Any) -> None:
    """Everything that can be refused before a model loads."""
    if not tuned:
        raise StudyError("give at least one tuned model: tuned={'grpo': spec_or_model}")
    if "base" in tuned:
        raise StudyError("'base' is reserved for the base model; name the tuned models otherwise")
    for label in tuned:  # labels become file names and table cells: refused before any work
        check_label(label)
    unknown = sorted(set(files) - set(tuned))
    if unknown:
        raise StudyError(f"generations given for {unknown}, which are not tuned labels ({sorted(tuned)})")
    if files and cfg.protocol is not Protocol.PAPER:
        raise StudyError("generations files are the paper protocol's pair files: use protocol='paper'")
    for label, paths in files.items():
        seeds = tuned[label]
        n = 1 if isinstance(seeds, (str, LoadedModel)) else len(seeds)
        if len(paths) != n:
            raise StudyError(f"{label}: {len(paths)} generations file(s) for {n} model(s); give one per seed")
        for path in paths:
            if not Path(path).expanduser().is_file():
                raise StudyError(f"{label}: generations file {path} not found")
    if len(files) < len(tuned) and problems is None:
        raise StudyError("give the problems to generate from (e.g. 'word_problems'), or a generations file for "
                         "every tuned label")


def _entries(base: ModelLike, tuned: Mapping[str, ModelLike | Sequence[ModelLike]]) -> list[Entry]:
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
    return entries


def _run_common(cfg: StudyConfig, entries: Sequence[Entry], items: Sequence[Any], generations: dict[str, Any],
                graphs: Mapping[str, Graph], protocol: dict[str, Any], out: Path | None, t0: float,
                seconds: dict[str, float]) -> StudyResult:
    """One set of problems that every model answers correctly; each response scored on its own fraction."""
    kept = tuple(i for i in range(len(items)) if all(generations[e.name][i].correct and generations[e.name][i].response_ids
                                                     for e in entries))
    protocol["n_kept"] = len(kept)
    if out is not None:
        from circuitdyn.study.report import write_generations

        write_generations(out, items, generations, kept, protocol)
    if len(kept) < cfg.min_kept:
        raise StudyError(
            f"only {len(kept)} of {len(items)} problems were answered correctly by every model (correct per model: "
            + ", ".join(f"{k} {v}" for k, v in protocol["correct"].items())
            + f"); the study needs at least min_kept={cfg.min_kept}. Generate more (samples), allow longer answers "
            "(max_new_tokens), pick easier problems, or lower min_kept."
        )
    t2 = time.perf_counter()
    attributions: dict[tuple[str, str], Attribution] = {}
    metrics: dict[tuple[str, str, str], dict[str, np.ndarray]] = {}
    for e in entries:
        batch = scored_batch([generations[e.name][i] for i in kept], cfg.fraction, pad_id(e.model.tokenizer))
        scored = score(cfg, e.name, e.model, batch, graphs)
        attributions.update(scored[0])
        metrics.update(scored[1])
    seconds["attribute"] = time.perf_counter() - t2
    t3 = time.perf_counter()
    with phase(f"statistics: paired tests, {cfg.n_resamples:,} resamples each", cfg.progress):
        tests = with_fdr(paired_tests(cfg, entries, metrics))
        labels = list(dict.fromkeys(e.label for e in entries if e.label != "base"))
        protocol["degraded"] = degraded_labels(protocol["correct"], labels)
        claims = state_claims(cfg, tests, labels, protocol["degraded"])
    seconds["statistics"] = time.perf_counter() - t3
    seconds["total"] = time.perf_counter() - t0
    protocol["seconds"] = {k: round(v, 2) for k, v in seconds.items()}
    return StudyResult(cfg, tuple(entries), protocol["dataset_sha256"], len(items), protocol["correct"], kept,
                       generations, attributions, metrics, tuple(tests), tuple(claims), protocol, seconds)


def _protocol(cfg: StudyConfig, entries: Sequence[Entry], source: ProblemSet | None, items: Sequence[Any],
              correct: dict[str, int]) -> dict[str, Any]:
    """Everything needed to rerun the study and to know what it ran on."""
    dataset = problems_sha256(items)
    scored = (f"the first {cfg.fraction:g} of each response (>= 1 token)" if cfg.protocol is Protocol.COMMON else
              "the first cut_len = max(int(refer x cut_coeff), 1) answer tokens, one length per pair")
    return {
        "protocol": f"RL-circuitry ({Protocol(cfg.protocol).value}): own greedy generations, both-correct filter, mean NLL of "
                    f"{scored}, zero-ablation EAP, summed over positions, per-example float32 scores",
        "config": cfg.as_dict(),
        "problems": {"source": source.name if source is not None else None, "n_generated": len(items),
                     "dataset_sha256": dataset},
        "dataset_sha256": dataset,
        "generation": {"greedy": True, "max_new_tokens": cfg.max_new_tokens, "chat_template": cfg.chat_template,
                       "batch_size": cfg.batch_size},
        # the hash of the weights each model actually ran with (a modified copy keeps its base's provenance)
        "models": {e.name: {**e.model.provenance.as_dict(), "weights_sha256": weights_sha256(e.model)}
                   for e in entries},
        "correct": correct,
        "torch": torch.__version__,
    }
