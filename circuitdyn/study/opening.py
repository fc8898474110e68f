"""A study's first pass over its models, one loaded at a time: check each against the base, record what it
runs as, and generate its answers (or reuse its cached ones).

The base comes first: its graphs are built and what later steps need from it (tokenizer, vocabulary) is
kept, so that no later step has to hold the base while another model is loaded.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from circuitdyn.core.digest import file_sha256
from circuitdyn.core.phases import phase
from circuitdyn.core.version import package_version
from circuitdyn.graph import Graph, GraphSpec
from circuitdyn.models import LoadedModel
from circuitdyn.models.files import ModelSpecError
from circuitdyn.models.load import folder_tokenizer, resolve_spec
from circuitdyn.study.cache import StudyCache
from circuitdyn.study.config import StudyConfig
from circuitdyn.study.generation import Generation, generate
from circuitdyn.study.result import Entry
from circuitdyn.study.streaming import BaseFacts, ModelSource, model_record, with_model
from circuitdyn.tasks import ProblemSet, problems_sha256
from circuitdyn.tasks.problems import Problem

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Opened:
    """What the first pass gives: the base's facts and graphs, each model's record and generations."""

    facts: BaseFacts
    graphs: dict[str, Graph]
    records: dict[str, dict[str, Any]]
    generations: dict[str, list[Generation]]


def generation_key(cfg: StudyConfig, record: Mapping[str, Any], facts: BaseFacts, items: Sequence[Problem],
                   source: ProblemSet) -> dict[str, Any]:
    """What determines a model's generations."""
    return {"kind": "generations", "weights_sha256": record["weights_sha256"], "dtype": record["dtype"],
            "device": str(record["device"]).split(":")[0], "problems_sha256": problems_sha256(items),
            "problem_set": source.name, "chat_template": cfg.chat_template, "template": cfg.template,
            "tokenizer_sha256": hashlib.sha256(repr(facts.fingerprint).encode()).hexdigest(),
            "max_new_tokens": cfg.max_new_tokens, "batch_size": cfg.batch_size, "greedy": True,
            "circuitdyn": package_version()}


def open_models(cfg: StudyConfig, entries: Sequence[Entry], items: Sequence[Problem], source: ProblemSet | None,
                generate_for: set[str], cache: StudyCache) -> tuple[list[Entry], Opened]:
    """Visit every model once, the base first; the entries come back with their records."""
    facts: BaseFacts | None = None
    graphs: dict[str, Graph] = {}
    records: dict[str, dict[str, Any]] = {}
    gens: dict[str, list[Generation]] = {}
    for e in entries:
        digest = files_sha256(e.source) if cache.folder is not None else None
        key = _model_key(cfg, e, digest, records.get("base")) if digest is not None else None
        known = cache.get(e.name, "model", key, count=False) if key is not None else None
        if known is not None:  # a model whose record (and generations) are cached for its files is not loaded
            rows, own = None, facts or _cached_facts(known, e.source)
            if e.name in generate_for and source is not None:
                rows = cache.cached_generations(e.name, generation_key(cfg, known["record"], own, items, source))
            if rows is not None or e.name not in generate_for:
                if facts is None:
                    facts = own
                    graphs.update({g: Graph(GraphSpec(**spec)) for g, spec in known["graphs"].items()})
                records[e.name] = dict(known["record"])
                if rows is not None:
                    gens[e.name] = rows
                continue

        def visit(model: LoadedModel, e: Entry = e) -> None:
            nonlocal facts
            if facts is None:
                facts = BaseFacts.of(model)
                with phase(f"building and probing the {' and '.join(cfg.granularities)} graph(s)", cfg.progress):
                    graphs.update({g: Graph.from_model(model, g) for g in cfg.granularities})
            facts.check(e.name, model)
            records[e.name] = model_record(model)
            if e.name in generate_for and source is not None:
                wanted = generation_key(cfg, records[e.name], facts, items, source)
                gens[e.name] = cache.generations(e.name, wanted, lambda: generate(
                    model, items, source, chat_template=cfg.chat_template, max_new_tokens=cfg.max_new_tokens,
                    batch_size=cfg.batch_size, progress=cfg.progress, desc=f"generate {e.name}", template=cfg.template))

        with_model(e.source, visit)
        if key is not None and facts is not None:
            body: dict[str, Any] = {"record": records[e.name]}
            if e.label == "base":  # what later steps need from the base, so that a rerun need not load it
                body.update(facts=facts.as_record(), graphs={g: graph.spec.as_dict() for g, graph in graphs.items()})
            cache.put(e.name, "model", key, body, count=False)
    assert facts is not None  # the base is always the first entry
    entries = [Entry(e.label, e.replicate, e.source, records[e.name]) for e in entries]
    _warn_identical(entries)
    return entries, Opened(facts, graphs, records, gens)


def files_sha256(source: ModelSource) -> str | None:
    """The sha256 of a model's files, for a spec that is a complete local model folder (a zoo model, a real
    model's converted folder, a Hugging Face folder, a merged checkpoint); None otherwise (a LoadedModel, a hub
    id, an adapter-only checkpoint)."""
    if not isinstance(source.spec, str):
        return None
    try:
        target = resolve_spec(source.spec)
    except (ModelSpecError, OSError):
        return None
    if isinstance(target, str) or not (target / "config.json").is_file():
        return None
    files = sorted(p for p in target.rglob("*") if p.is_file() and not p.name.startswith("."))
    return hashlib.sha256("".join(f"{p.relative_to(target).as_posix()}:{file_sha256(p)}\n"
                                  for p in files).encode()).hexdigest()


def _model_key(cfg: StudyConfig, e: Entry, digest: str, base: Mapping[str, Any] | None) -> dict[str, Any]:
    """What a model's cached record depends on: its files, how it is loaded, and for a tuned model the base it
    was checked against (for the base: the graphs built from it)."""
    key = {"kind": "model", "files_sha256": digest, "base_spec": e.source.base_spec, "dtype": str(cfg.torch_dtype()),
           "device": cfg.device, "circuitdyn": package_version()}
    if e.label == "base":
        return {**key, "granularities": list(cfg.granularities)}
    return {**key, "base_weights_sha256": base["weights_sha256"] if base else None}


def _cached_facts(known: Mapping[str, Any], source: ModelSource) -> BaseFacts:
    """The base's facts from its cached record, with its tokenizer read from its folder."""
    return BaseFacts.from_record(known["facts"], folder_tokenizer(resolve_spec(str(source.spec))))


def _warn_identical(entries: Sequence[Entry]) -> None:
    """A tuned model with the base's weights (a null comparison: every delta is exactly 0), or one model
    given twice (two seeds that are one), is allowed and said by name."""
    seen: dict[str, str] = {}
    for e in entries:
        digest = e.record["weights_sha256"]
        if digest in seen:
            what = "the base's weights: its comparison is a null one" if seen[digest] == "base" else \
                f"the same weights as {seen[digest]}: the two are one model, not two seeds"
            logger.warning("%s has %s (weights sha256 %s)", e.name, what, digest[:12])
        seen.setdefault(digest, e.name)

