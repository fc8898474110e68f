"""The paper's protocol: each tuned label is a pair with the base, selected and scored on its own.

Per label (selection.py): the rows are the problems the base and every seed of the label answer correctly
(or the rows of the pair's generations file); the paper's filters and seeded sample choose the pair's rows,
and each cut coefficient gives one scored length for the pair. Per (label, coefficient) a cell: the base
and each seed attributed on those rows at that length, per-prompt metric tables, and the tuned - base tests
(mean over seeds per prompt). Across labels, (A - base) - (B - base) is tested on the rows both pairs kept,
each delta at its own pair's length. Sample diversity, a property of a set of rows, is tested by resampling
the cell's rows.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from circuitdyn.analysis.metrics import edge_vector, example_correlations
from circuitdyn.analysis.stats import N_PERMUTATIONS, PairedStat, paired_stat
from circuitdyn.attribution import Attribution
from circuitdyn.graph import Graph
from circuitdyn.study.cache import StudyCache
from circuitdyn.study.config import StudyConfig, StudyError
from circuitdyn.study.generation import Generation, scored_batch
from circuitdyn.study.pair_files import PairRow
from circuitdyn.study.result import HEADLINE, Entry, Test
from circuitdyn.study.scoring import Job, score_models
from circuitdyn.study.selection import RowLengths, Selection, select_rows
from circuitdyn.study.statistics import paired_tests, seed_deltas

DIVERSITY = "sample_diversity"


@dataclass(frozen=True)
class Cell:
    """One pair at one cut coefficient: what was scored and what it gave."""

    label: str
    cut: float
    cut_len: int
    keys: tuple[tuple[int, ...], ...]  # the selected rows' problems (base prompt ids), in selection order
    entries: tuple[Entry, ...]  # the base, then the label's seeds
    attributions: dict[tuple[str, str], Attribution]
    metrics: dict[tuple[str, str, str], dict[str, np.ndarray]]

    @property
    def name(self) -> str:
        return f"{self.label}@{self.cut:g}"


def generated_rows(entries: Sequence[Entry], generations: Mapping[str, list[Generation]], label: str) -> list[PairRow]:
    """A generated pair's rows: the problems the base and every seed of `label` answer correctly, with words."""
    seeds = [e.name for e in entries if e.label == label]
    out = []
    for i, base in enumerate(generations["base"]):
        tuned = [generations[name][i] for name in seeds]
        if all(g.correct and g.response_ids for g in [base, *tuned]):
            out.append(PairRow(base, tuple(tuned)))
    return out


def select_pair(cfg: StudyConfig, rows: Sequence[PairRow]) -> Selection:
    lengths = [RowLengths(len(r.base.prompt_ids),
                          len(r.base.prompt_ids) if all(len(t.prompt_ids) == len(r.base.prompt_ids) for t in r.tuned)
                          else -1,
                          len(r.base.response_ids), float(np.mean([len(t.response_ids) for t in r.tuned])))
               for r in rows]
    return select_rows(lengths, small_coeff=cfg.small_coeff, big_coeff=cfg.big_coeff, balance_coeff=cfg.balance_coeff,
                       num_samples=cfg.num_samples, sample_seed=cfg.sample_seed)


def run_cells(cfg: StudyConfig, entries: Sequence[Entry], rows: Mapping[str, list[PairRow]],
              selections: Mapping[str, Selection], graphs: Mapping[str, Graph], records: Mapping[str, Mapping[str, Any]],
              cache: StudyCache, pad: int) -> list[Cell]:
    """Attribute every (label, cut coefficient) cell: the base and each seed on the pair's rows. Coefficients
    that give one length share its attributions; each model is loaded once for all of its cells."""
    by_name = {e.name: e for e in entries}
    plan: list[tuple[str, float, int, list[PairRow], tuple[Entry, ...]]] = []
    jobs: dict[str, list[Job]] = {}
    for cut in cfg.cut_coeffs:
        for label, sel in selections.items():
            chosen = [rows[label][i] for i in sel.rows]
            members = (by_name["base"], *[e for e in entries if e.label == label])
            cut_len = sel.cut_len(cut)
            if not any(p[0] == label and p[2] == cut_len for p in plan):
                for e in members:
                    gens = [r.base if e.label == "base" else r.tuned[e.replicate] for r in chosen]
                    jobs.setdefault(e.name, []).append(((label, cut_len),
                                                        scored_batch(gens, None, pad, cut_len=cut_len)))
            plan.append((label, cut, cut_len, chosen, members))
    scored = score_models(cfg, entries, jobs, graphs, records, cache)
    cells = []
    shared: dict[tuple[str, int], tuple[dict[Any, Attribution], dict[Any, dict[str, np.ndarray]]]] = {}
    for label, cut, cut_len, chosen, members in plan:
        if (label, cut_len) not in shared:  # one length, one set of attributions, whatever the coefficient
            attributions: dict[tuple[str, str], Attribution] = {}
            metrics: dict[tuple[str, str, str], dict[str, np.ndarray]] = {}
            for e in members:
                attributions.update(scored[(e.name, (label, cut_len))][0])
                metrics.update(scored[(e.name, (label, cut_len))][1])
            shared[(label, cut_len)] = attributions, metrics
        cells.append(Cell(label, cut, cut_len, tuple(r.key for r in chosen), members, *shared[(label, cut_len)]))
    return cells


def too_short(cfg: StudyConfig, selections: Mapping[str, Selection]) -> dict[str, str]:
    """The pairs with fewer selected rows than min_kept, each with the reason; all of them: refused."""
    short = {lab: f"{len(s.rows)} rows selected of {s.n_rows} both-correct, fewer than min_kept={cfg.min_kept}"
             for lab, s in selections.items() if len(s.rows) < cfg.min_kept}
    if short and len(short) == len(selections):
        raise StudyError(f"every pair has fewer selected rows than min_kept={cfg.min_kept}: {short}; generate more "
                         "(samples), loosen the length filters (small_coeff, big_coeff, balance_coeff) or lower min_kept")
    return short


def _diversity_stat(base: torch.Tensor, tuned: Sequence[torch.Tensor], resamples: int, seed: int) -> PairedStat:
    """tuned (mean over seeds) - base sample diversity, its percentile CI and two-sided bootstrap p-value by
    resampling rows (pairs of one row drawn twice are left out of the mean correlation). The correlations are
    sample_diversity's; rows constant for any model are left out, as sample_diversity leaves them out."""
    correlations = [example_correlations(x) for x in (base, *tuned)]
    keep = np.logical_and.reduce([usable.numpy() for _, usable in correlations])
    n = int(keep.sum())
    if n < 3:  # a correlation needs pairs of rows, a resample of them more than one
        nan = float("nan")
        return PairedStat(n, nan, nan, nan, nan, nan, nan)
    matrices = [r.numpy()[np.ix_(keep, keep)] for r, _ in correlations]

    def delta(idx: np.ndarray) -> float:
        distinct = idx[:, None] != idx[None, :]
        if not distinct.any():  # every draw the same row: no pair to correlate
            return float("nan")
        div = [1 - float(m[np.ix_(idx, idx)][distinct].mean()) for m in matrices]
        return float(np.mean(div[1:]) - div[0])

    point = delta(np.arange(n))
    rng = np.random.default_rng(seed)
    boot = np.array([delta(rng.integers(0, n, n)) for _ in range(resamples)])
    boot = boot[np.isfinite(boot)]
    lo, hi = np.quantile(boot, [0.025, 0.975])
    p = min(1.0, 2 * min(float((boot <= 0).mean()), float((boot >= 0).mean())))
    return PairedStat(n, point, float(lo), float(hi), p, float("nan"), float("nan"))


def cell_tests(cfg: StudyConfig, cell: Cell) -> list[Test]:
    """tuned - base in one cell: every metric's paired test, and sample diversity by resampling rows."""
    tests = paired_tests(cfg, cell.entries, cell.metrics, cut=f"{cell.cut:g}")
    seeds = [e for e in cell.entries if e.label != "base"]
    for gran in cfg.granularities:
        base = edge_vector(cell.attributions[("base", gran)], per_example=True)
        tuned = [edge_vector(cell.attributions[(e.name, gran)], per_example=True) for e in seeds]
        stat = _diversity_stat(base, tuned, min(cfg.layer_resamples, 2000), cfg.seed)
        tests.append(Test(f"{cell.label} - base", gran, "pooled", DIVERSITY, stat, cut=f"{cell.cut:g}"))
    return tests


def cross_tests(cfg: StudyConfig, cells: Sequence[Cell]) -> list[Test]:
    """(A - base) - (B - base) per cut, graph and pooled metric, on the rows both pairs kept (matched by
    problem), each delta at its own pair's scored length."""
    tests = []
    for cut in cfg.cut_coeffs:
        here = {c.label: c for c in cells if c.cut == cut}
        for a, b in itertools.combinations(here, 2):
            ca, cb = here[a], here[b]
            where_b = {k: i for i, k in enumerate(cb.keys)}
            shared = [(i, where_b[k]) for i, k in enumerate(ca.keys) if k in where_b]
            if len(shared) < 2:
                continue
            ia, ib = (np.array(x) for x in zip(*shared))
            for gran in cfg.granularities:
                for metric in HEADLINE:
                    da = _label_delta(ca, gran, metric)[ia]
                    db = _label_delta(cb, gran, metric)[ib]
                    ok = np.isfinite(da) & np.isfinite(db)
                    stat = paired_stat(da[ok] - db[ok], n_resamples=cfg.n_resamples, seed=cfg.seed,
                                       n_permutations=min(cfg.n_resamples, N_PERMUTATIONS))
                    tests.append(Test(f"({a} - base) - ({b} - base)", gran, "pooled", metric, stat, cut=f"{cut:g}"))
    return tests


def _label_delta(cell: Cell, gran: str, metric: str) -> np.ndarray:
    seeds = [e.name for e in cell.entries if e.label != "base"]
    return seed_deltas(cell.metrics, seeds, gran, "pooled", metric).mean(0)
