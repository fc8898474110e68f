"""Each model's attributions of its scored batches, one model loaded at a time, cached per model.

A job is one scored batch of one model (the common protocol: the model's kept problems; the paper's: a
pair's selected rows at one scored length). Every job of a model runs while it is loaded once; a model
whose every attribution is cached is not loaded at all. Scoring is zero-ablation EAP of the mean NLL of the
scored answer tokens, summed over positions, per example, float32 scores; each attribution gives its
per-prompt metric tables (pooled, per destination layer, logits).
"""

from __future__ import annotations

import hashlib
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from circuitdyn.analysis.metrics import circuit_metrics, per_layer_metrics
from circuitdyn.attribution import Attribution, attribute
from circuitdyn.core.version import package_version
from circuitdyn.graph import Graph
from circuitdyn.models import LoadedModel
from circuitdyn.study.cache import StudyCache
from circuitdyn.study.config import StudyConfig, StudyError
from circuitdyn.study.result import Entry
from circuitdyn.study.streaming import with_model
from circuitdyn.tasks.base import PairBatch

Attributions = dict[tuple[str, str], Attribution]
Metrics = dict[tuple[str, str, str], dict[str, np.ndarray]]
Job = tuple[Hashable, PairBatch]


def batch_sha256(batch: PairBatch) -> str:
    """The sha256 of what a scored batch holds (ids, masks, positions, answers), shapes included."""
    digest = hashlib.sha256()
    for name in ("clean", "corrupt", "mask", "answer_pos", "answers", "foils"):
        tensor = getattr(batch, name)
        digest.update(f"{name}{tuple(tensor.shape)}{tensor.dtype}".encode())
        digest.update(tensor.detach().to("cpu").contiguous().numpy().tobytes())
    return digest.hexdigest()


def attribution_key(cfg: StudyConfig, record: Mapping[str, Any], graph: Graph, batch: PairBatch) -> dict[str, Any]:
    """What determines one attribution of a study."""
    return {"kind": "attribution", "weights_sha256": record["weights_sha256"], "dtype": record["dtype"],
            "graph": graph.spec.as_dict(), "batch_sha256": batch_sha256(batch), "batch_size": cfg.batch_size,
            "scoring": "answer_nll, zero ablation, EAP, summed over positions, per example",
            "circuitdyn": package_version()}


def score_models(cfg: StudyConfig, entries: Sequence[Entry], jobs: Mapping[str, Sequence[Job]],
                 graphs: Mapping[str, Graph], records: Mapping[str, Mapping[str, Any]],
                 cache: StudyCache) -> dict[tuple[str, Hashable], tuple[Attributions, Metrics]]:
    """{(model name, job id): (attributions, metric tables)} for every job of every model."""
    out: dict[tuple[str, Hashable], tuple[Attributions, Metrics]] = {}
    for e in entries:
        mine = list(jobs.get(e.name, ()))
        if not mine:
            continue
        cached = all(cache.has_attribution(e.name, attribution_key(cfg, records[e.name], graph, batch))
                     for _, batch in mine for graph in graphs.values())

        def work(model: LoadedModel | None, e: Entry = e, mine: list[Job] = mine) -> None:
            for job, batch in mine:
                out[(e.name, job)] = score(cfg, e.name, model, batch, graphs, records[e.name], cache)

        try:
            if not cached:
                raise NotCached
            work(None)
        except NotCached:  # not cached, or a cached file did not verify (said): load the model and compute
            with_model(e.source, work)
    return out


class NotCached(Exception):
    """An attribution that must be computed, where the model was not loaded because it looked cached."""


def score(cfg: StudyConfig, name: str, model: LoadedModel | None, batch: PairBatch, graphs: Mapping[str, Graph],
          record: Mapping[str, Any], cache: StudyCache) -> tuple[Attributions, Metrics]:
    """One model's zero-ablation attribution of one scored batch on every graph, with its per-prompt metric
    tables: ({(name, graph): Attribution}, {(name, graph, scope): table}). `model` may be None when every
    attribution is cached."""
    attributions, metrics = {}, {}
    for gran, graph in graphs.items():
        def compute(graph: Graph = graph) -> Attribution:
            if model is None:
                raise NotCached(name)
            return attribute(model, graph, batch, "answer_nll", ablation="zero", aggregation="sum", per_example=True,
                             batch_size=cfg.batch_size, progress=cfg.progress)

        attr = cache.attribution(name, attribution_key(cfg, record, graph, batch), graph, compute)
        attributions[(name, gran)] = attr
        for scope, table in metric_table(attr, cfg.per_layer).items():
            metrics[(name, gran, scope)] = table
    return attributions, metrics


def metric_table(attribution: Attribution, per_layer: bool) -> dict[str, dict[str, np.ndarray]]:
    """Per-prompt metrics: {"pooled": {...}, "layer l": {...}, "logits": {...}}."""
    if attribution.per_example is None or not torch.isfinite(attribution.per_example).all():
        raise StudyError("some per-example scores are not finite: check the model's dtype and the responses")
    out = {"pooled": circuit_metrics(attribution, per_example=True)}
    if per_layer:
        n_layers = attribution.graph.spec.n_layers
        for layer, table in per_layer_metrics(attribution, per_example=True).items():
            out["logits" if layer == n_layers else f"layer {layer}"] = table
    return {scope: {k: v.numpy() for k, v in table.items()} for scope, table in out.items()}
