"""A study's first pass over its models, one loaded at a time: check each against the base, record what it
runs as, and generate its answers (or reuse its cached ones).

The base comes first: its graphs are built and what later steps need from it (tokenizer, vocabulary) is
kept, so that no later step has to hold the base while another model is loaded.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from circuitdyn.core.phases import phase
from circuitdyn.core.version import package_version
from circuitdyn.graph import Graph
from circuitdyn.models import LoadedModel
from circuitdyn.study.cache import StudyCache
from circuitdyn.study.config import StudyConfig
from circuitdyn.study.generation import Generation, generate
from circuitdyn.study.result import Entry
from circuitdyn.study.streaming import BaseFacts, model_record, with_model
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
    import hashlib

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
        def visit(model: LoadedModel, e: Entry = e) -> None:
            nonlocal facts
            if facts is None:
                facts = BaseFacts.of(model)
                with phase(f"building and probing the {' and '.join(cfg.granularities)} graph(s)", cfg.progress):
                    graphs.update({g: Graph.from_model(model, g) for g in cfg.granularities})
            facts.check(e.name, model)
            records[e.name] = model_record(model)
            if e.name in generate_for and source is not None:
                key = generation_key(cfg, records[e.name], facts, items, source)
                gens[e.name] = cache.generations(e.name, key, lambda: generate(
                    model, items, source, chat_template=cfg.chat_template, max_new_tokens=cfg.max_new_tokens,
                    batch_size=cfg.batch_size, progress=cfg.progress, desc=f"generate {e.name}", template=cfg.template))

        with_model(e.source, visit)
    assert facts is not None  # the base is always the first entry
    entries = [Entry(e.label, e.replicate, e.source, records[e.name]) for e in entries]
    _warn_identical(entries)
    return entries, Opened(facts, graphs, records, gens)


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

