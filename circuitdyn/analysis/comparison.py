"""Paired base-vs-tuned statistics of circuit metrics, edge-level diffs, and cross-family tables.

Per-example metrics are computed on the same prompts for both models; each metric's paired differences
(tuned - base) go through the study's paired test (`stats.paired_stat`: the mean, its BCa bootstrap 95% CI
and a sign-flip permutation p-value), plus a paired effect size (d_z = mean / sd of the differences), so
`circuitdyn compare` and `circuitdyn study` give the same p-value for the same question. The seed protocol
keeps only prompts both models answer correctly (teacher-forced greedy check of the answer tokens).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from scipy import stats
from torch import Tensor

from circuitdyn.analysis.metrics import METRIC_NAMES, circuit_metrics, edge_vector
from circuitdyn.analysis.stats import N_RESAMPLES, paired_stat
from circuitdyn.attribution import METHODS, Method
from circuitdyn.models import as_bridge
from circuitdyn.tasks.base import PairBatch

logger = logging.getLogger(__name__)


class ComparisonError(ValueError):
    """Attributions that cannot be compared: the message says why and what to do."""


@dataclass(frozen=True)
class MetricDelta:
    metric: str
    base_mean: float
    tuned_mean: float
    delta: float
    ci_low: float
    ci_high: float
    p_value: float  # sign-flip permutation test of the mean (stats.paired_stat)
    effect_size: float
    n: int
    n_dropped: int = 0  # examples left out because a metric was NaN for one of the models (e.g. all-zero scores)


@dataclass(frozen=True)
class Comparison:
    name: str
    deltas: tuple[MetricDelta, ...]
    pooled: dict[str, tuple[float, float]] = field(default_factory=dict)  # metric -> (base, tuned) on mean scores
    lineage: str = ""  # what the provenance says about how tuned came from base ("" when it says nothing)

    def __getitem__(self, metric: str) -> MetricDelta:
        for d in self.deltas:
            if d.metric == metric:
                return d
        raise KeyError(f"no metric {metric!r}; have {[d.metric for d in self.deltas]}")

    def records(self) -> list[dict[str, Any]]:
        return [{"comparison": self.name, **d.__dict__} for d in self.deltas]


#: what must agree between two attributions for their paired difference to mean anything
MATCHED_CONFIG = ("method", "ablation", "aggregation", "answer_tokens")


def _setting(attribution: Any) -> dict[str, Any]:
    config = attribution.config.as_dict()
    setting = {k: config.get(k) for k in MATCHED_CONFIG}
    if METHODS[Method(setting["method"])].integrates_path:
        setting["steps"] = config.get("steps")
        setting["quadrature"] = config.get("quadrature", "midpoint")  # files from before the rules: midpoint
    setting["metric"] = attribution.provenance.get("metric")
    return setting


def _model(attribution: Any) -> dict[str, Any]:
    model = attribution.provenance.get("model")
    return model if isinstance(model, dict) else {}


def lineage(base: Any, tuned: Any) -> str:
    """What the attributions' provenance says about which model was trained from which: a sentence, or "".
    Refuses a swapped pair (the "base" trained from the "tuned" weights): every delta's sign would flip."""
    mb, mt = _model(base), _model(tuned)
    tb, tt = mb.get("training") or {}, mt.get("training") or {}
    if tb.get("base_weights_sha256") and tb.get("base_weights_sha256") == mt.get("weights_sha256"):
        raise ComparisonError(
            f"base and tuned are swapped: the 'base' attribution ran on weights trained ({tb.get('algorithm')}, "
            f"{tb.get('step')} steps) from the 'tuned' one's weights, so every delta's sign would flip; call "
            "compare(base, tuned) with the model before training first")
    if tt.get("base_weights_sha256") and tt.get("base_weights_sha256") == mb.get("weights_sha256"):
        return f"tuned was trained from base ({tt.get('algorithm')}, {tt.get('step')} steps)"
    return ""


def _check_pair(base: Any, tuned: Any) -> None:
    db, dt = base.provenance.get("dtype"), tuned.provenance.get("dtype")
    if db and dt and db != dt:
        raise ComparisonError(
            f"base was attributed in {db} and tuned in {dt}: the precision difference would read as a change "
            "of the circuit; load both models in the same dtype (load_model(..., dtype=...)) and attribute again")
    sb, st = _setting(base), _setting(tuned)
    differ = {k: (sb[k], st.get(k)) for k in sb if sb[k] != st.get(k)}
    if differ:
        raise ComparisonError(
            f"the two attributions were computed differently: (base, tuned) differ in {differ}; attribute both "
            "models with the same metric, method, ablation and aggregation (and EAP-IG's steps and quadrature)"
        )
    hb, ht = base.provenance.get("dataset_sha256"), tuned.provenance.get("dataset_sha256")
    if hb is None or ht is None:
        logger.warning("an attribution without a dataset fingerprint (written by an older circuitdyn): cannot "
                       "check that both were computed on the same prompts")
    elif hb != ht:
        raise ComparisonError(
            "the two attributions were computed on different prompts (dataset fingerprints "
            f"{hb[:12]} vs {ht[:12]}): a paired test needs the same token ids and answers for both models; "
            "attribute both on the same PairBatch (the study protocol, circuitdyn study, handles models that "
            "answer in their own words)"
        )
    if base.graph.spec != tuned.graph.spec:
        raise ComparisonError(
            f"cannot compare attributions over different graphs ({base.graph.spec} vs {tuned.graph.spec}); "
            "attribute both models with the same granularity on models of the same shape, or compare "
            "normalized metrics across families with cross_family_table()"
        )
    if base.per_example is None or tuned.per_example is None:
        raise ComparisonError("paired comparison needs per-example scores: attribute(..., per_example=True)")
    if base.per_example.shape[0] != tuned.per_example.shape[0]:
        raise ComparisonError(f"base has {base.per_example.shape[0]} examples and tuned {tuned.per_example.shape[0]}; "
                              "attribute both on the same prompts")


def paired_delta(metric: str, base: np.ndarray, tuned: np.ndarray, *, n_resamples: int = N_RESAMPLES,
                 seed: int = 0) -> MetricDelta:
    """The paired difference tuned - base of one metric over the examples both models have a value for."""
    ok = np.isfinite(base) & np.isfinite(tuned)
    dropped = int((~ok).sum())
    if dropped:
        logger.warning("%s: %d of %d examples are NaN for one of the models (all-zero scores) and are left out",
                       metric, dropped, len(ok))
    base, tuned = base[ok], tuned[ok]
    diff = tuned - base
    n = len(diff)
    if n == 0:
        nan = float("nan")
        return MetricDelta(metric, nan, nan, nan, nan, nan, nan, nan, 0, dropped)
    s = paired_stat(diff, n_resamples=n_resamples, seed=seed)
    sd = diff.std(ddof=1) if n > 1 else 0.0
    effect = float(diff.mean() / sd) if sd > 0 else 0.0
    return MetricDelta(metric, float(base.mean()), float(tuned.mean()), s.mean, s.ci_low, s.ci_high, s.p_value,
                       effect, n, dropped)


def compare(base: Any, tuned: Any, *, name: str = "tuned - base", keep: Tensor | None = None,
            n_resamples: int = N_RESAMPLES, seed: int = 0) -> Comparison:
    """Paired comparison of two Attributions on the same prompts (`keep`: boolean mask of examples). The
    result's `lineage` states which side was trained from which when the provenance says so; a swapped pair
    is refused."""
    _check_pair(base, tuned)
    story = lineage(base, tuned)
    if base is tuned or torch.equal(base.per_example, tuned.per_example):
        logger.warning("%s: the two attributions have identical per-example scores (the same file twice?): every "
                       "delta is 0 by construction", name)
    mb = circuit_metrics(base, per_example=True)
    mt = circuit_metrics(tuned, per_example=True)
    mask = np.ones(base.per_example.shape[0], bool) if keep is None else np.asarray(keep.cpu(), bool)
    if mask.sum() == 0:
        raise ComparisonError("no examples left to compare (keep removed them all)")
    deltas = tuple(paired_delta(m, mb[m].numpy()[mask], mt[m].numpy()[mask], n_resamples=n_resamples,
                                 seed=seed) for m in METRIC_NAMES)
    pb, pt = circuit_metrics(base), circuit_metrics(tuned)
    pooled = {m: (float(pb[m]), float(pt[m])) for m in METRIC_NAMES}
    return Comparison(name, deltas, pooled, story)


def compare_many(base: Any, tuned: Mapping[str, Any], **kw: Any) -> dict[str, Comparison]:
    return {name: compare(base, t, name=name, **kw) for name, t in tuned.items()}


@torch.no_grad()
def correct_mask(model: Any, batch: PairBatch) -> Tensor:
    """True where the model's greedy prediction matches every scored answer token (teacher forced)."""
    bridge = as_bridge(model)
    device = next(bridge.parameters()).device
    logits = bridge(batch.clean.to(device), attention_mask=batch.mask.to(device).long())
    k = batch.answers.shape[1]
    rows = torch.arange(len(batch), device=device)[:, None]
    pos = batch.answer_pos.to(device)[:, None] + torch.arange(k, device=device)[None]
    pred = logits[rows, pos].argmax(-1)
    answers = batch.answers.to(device)
    return ((pred == answers) | (answers < 0)).all(-1).cpu()


def edge_diff(base: Any, tuned: Any, k: int) -> dict[str, Any]:
    """Top-k circuits by |score|: edges gained and lost, Jaccard overlap, and the Spearman rank correlation
    of all edge scores."""
    if base.graph.spec != tuned.graph.spec:
        raise ComparisonError("edge_diff needs attributions over the same graph")
    names = base.graph.edge_names()
    sb, st = base.edge_scores(), tuned.edge_scores()
    if not 0 < k <= len(names):
        raise ComparisonError(f"k must be in [1, {len(names)}], got {k}")
    top_b = {names[i] for i in torch.argsort(sb.abs(), descending=True, stable=True)[:k].tolist()}
    top_t = {names[i] for i in torch.argsort(st.abs(), descending=True, stable=True)[:k].tolist()}
    rho = stats.spearmanr(sb.numpy(), st.numpy()).statistic
    return {"k": k, "gained": sorted(top_t - top_b), "lost": sorted(top_b - top_t),
            "jaccard": len(top_b & top_t) / len(top_b | top_t), "spearman": float(rho)}


def cross_family_table(rows: Sequence[tuple[str, str, str, Any]]) -> list[dict[str, Any]]:
    """One record per (family, model, method, Attribution) with pooled metrics and the graph size, so that
    families of different sizes compare through normalized measures (normalized_entropy, gini, top shares)."""
    out = []
    for family, model, method, attribution in rows:
        m = circuit_metrics(attribution)
        out.append({"family": family, "model": model, "method": method, "edges": attribution.graph.n_edges,
                    "granularity": attribution.graph.spec.granularity.value, **{k: float(v) for k, v in m.items()}})
    return out


__all__ = ["Comparison", "ComparisonError", "MetricDelta", "compare", "compare_many", "correct_mask",
           "cross_family_table", "edge_diff", "edge_vector", "lineage", "paired_delta"]
