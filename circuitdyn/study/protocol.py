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
from circuitdyn.models import LoadedModel
from circuitdyn.study.cache import StudyCache
from circuitdyn.study.config import Protocol, StudyConfig, StudyError, check_label
from circuitdyn.study.folder import study_folder
from circuitdyn.study.generation import distinct_problems, pad_id, scored_batch
from circuitdyn.study.opening import Opened, open_models
from circuitdyn.study.paper import run_paper
from circuitdyn.study.result import Entry, StudyResult
from circuitdyn.study.scoring import score_models
from circuitdyn.study.statistics import degraded_labels, paired_tests, state_claims, with_fdr
from circuitdyn.study.streaming import ModelSource, local_folder
from circuitdyn.tasks import ProblemSet, get_problem_set, problems_sha256

logger = logging.getLogger(__name__)

ModelLike = str | LoadedModel


def run_study(
    base: ModelLike,
    tuned: Mapping[str, ModelLike | Sequence[ModelLike]],
    problems: ProblemSet | str | None = None,
    *,
    config: StudyConfig | None = None,
    out: str | Path | None = None,
    generations: Mapping[str, str | Path | Sequence[str | Path]] | None = None,
    replace: bool = False,
    fresh: bool = False,
    **overrides: Any,
) -> StudyResult:
    """Run the protocol (module docstring). `tuned` maps a label ("grpo") to a model or a list of models
    (training seeds); models are spec strings (zoo names, local HF folders, circuitdyn checkpoints of the
    base, hub ids when online) or LoadedModels. `overrides` are StudyConfig fields. `generations` maps a
    label to the pair's generations file (the paper's all_correct.jsonl rows; one per seed), read instead of
    generating (paper protocol). With `out`, every table, plot and the protocol record are written there
    (generations are saved before any refusal); the folder is held by this study while it runs, and one
    that holds another study is refused unless `replace` (study/folder.py). Models given as specs are
    loaded one at a time and freed after each step (study/streaming.py); LoadedModels stay the caller's.
    With `out`, each model's generations and attributions are cached there (study/cache.py): a rerun of
    the same study resumes from them, and `fresh` recomputes them."""
    cfg = dataclasses.replace(config, **overrides) if config else StudyConfig(**overrides)
    files = {label: [f] if isinstance(f, (str, Path)) else list(f) for label, f in (generations or {}).items()}
    _check_request(cfg, tuned, files, problems)
    if out is None:
        return _run(cfg, base, tuned, problems, files, None, StudyCache(None))
    out = check_output_folder(out, "study output folder")
    with study_folder(out, list(tuned), replace=replace):
        return _run(cfg, base, tuned, problems, files, out, StudyCache(out, fresh=fresh))


def _run(cfg: StudyConfig, base: ModelLike, tuned: Mapping[str, ModelLike | Sequence[ModelLike]], problems: Any,
         files: dict[str, list[Any]], out: Path | None, cache: StudyCache) -> StudyResult:
    t0 = time.perf_counter()
    entries = _entries(cfg, base, tuned)
    generate_for = {e.name for e in entries if e.label not in files} if len(files) < len(tuned) else set()
    items, source = [], None
    if generate_for:
        source = get_problem_set(problems) if isinstance(problems, str) else problems
        if source is None:  # _check_request refused this already
            raise StudyError("no problems to generate from")
        items = distinct_problems(source.problems(cfg.samples, seed=cfg.seed), cfg.samples, source.name)
    with phase(f"opening {len(entries)} model(s) one at a time" + (", generating" if generate_for else ""),
               cfg.progress):
        entries, opened = open_models(cfg, entries, items, source, generate_for, cache)
    seconds = {"open_and_generate": time.perf_counter() - t0}
    gens = opened.generations
    correct = {name: sum(g.correct for g in gs) for name, gs in gens.items()}
    protocol = _protocol(cfg, entries, source, items, correct)
    if cfg.protocol is Protocol.PAPER:
        result = run_paper(cfg, entries, gens, files, opened, protocol, out, cache, t0, seconds)
    else:
        result = _run_common(cfg, entries, items, opened, protocol, out, cache, t0, seconds)
    protocol["cache"] = {"reused": len(cache.hits), "computed": len(cache.misses), "fresh": cache.fresh}
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


def _entries(cfg: StudyConfig, base: ModelLike, tuned: Mapping[str, ModelLike | Sequence[ModelLike]]) -> list[Entry]:
    """The study's models in order (the base first), none loaded yet."""
    def local(spec: ModelLike) -> ModelLike:
        return local_folder(spec, cfg.model_dir) if isinstance(spec, str) else spec

    base_spec = local_folder(base, cfg.model_dir) if isinstance(base, str) else None
    dtype, device = cfg.torch_dtype(), cfg.device
    entries = [Entry("base", 0, ModelSource(local(base), None, dtype, device))]
    for label, models in tuned.items():
        group = [models] if isinstance(models, (str, LoadedModel)) else list(models)
        if not group:
            raise StudyError(f"tuned label {label!r} has no models")
        entries += [Entry(label, r, ModelSource(local(m), base_spec, dtype, device)) for r, m in enumerate(group)]
    return entries


def _run_common(cfg: StudyConfig, entries: Sequence[Entry], items: Sequence[Any], opened: Opened,
                protocol: dict[str, Any], out: Path | None, cache: StudyCache, t0: float,
                seconds: dict[str, float]) -> StudyResult:
    """One set of problems that every model answers correctly; each response scored on its own fraction."""
    generations = opened.generations
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
    pad = pad_id(opened.facts.tokenizer)
    jobs = {e.name: [("kept", scored_batch([generations[e.name][i] for i in kept], cfg.fraction, pad))]
            for e in entries}
    for attrs, tables in score_models(cfg, entries, jobs, opened.graphs, opened.records, cache).values():
        attributions.update(attrs)
        metrics.update(tables)
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
                       "template": cfg.template,
                       "batch_size": cfg.batch_size},
        # the hash of the weights each model actually ran with (a modified copy keeps its base's provenance)
        "models": {e.name: dict(e.record) for e in entries},
        "correct": correct,
        "torch": torch.__version__,
    }
