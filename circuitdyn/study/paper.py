"""`run_study(..., protocol="paper")`: the RL-circuitry paper's selection and scoring, pair by pair.

Each tuned label is a pair with the base: its rows (generated here, or read from the pair's generations
file), the paper's selection (selection.py), one scored length per cut coefficient, and a cell of
attributions and tests per (label, coefficient) (pairs.py). Every test of the study shares one
Benjamini-Hochberg family; the claims are stated per coefficient.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from circuitdyn.core.phases import phase
from circuitdyn.study.cache import StudyCache
from circuitdyn.study.config import StudyConfig
from circuitdyn.study.generation import Generation, pad_id
from circuitdyn.study.opening import Opened
from circuitdyn.study.pair_files import PairRow, pair_rows, read_pair_file, write_pair_files
from circuitdyn.study.pairs import Cell, cell_tests, cross_tests, generated_rows, run_cells, select_pair, too_short
from circuitdyn.study.result import Entry, StudyResult, Test
from circuitdyn.study.statistics import degraded_labels, state_claims, with_fdr

logger = logging.getLogger(__name__)


def pair_inputs(entries: Sequence[Entry], generations: Mapping[str, list[Generation]],
                files: Mapping[str, Sequence[str | Path]], vocab: int) -> tuple[dict[str, list[PairRow]], dict[str, Any]]:
    """Each label's rows, read from its files or taken from the generations, and where they came from."""
    rows: dict[str, list[PairRow]] = {}
    sources: dict[str, Any] = {}
    for label in dict.fromkeys(e.label for e in entries if e.label != "base"):
        if label in files:
            rows[label] = pair_rows([read_pair_file(f, vocab) for f in files[label]], label)
            sources[label] = [str(Path(f).expanduser()) for f in files[label]]
        else:
            rows[label] = generated_rows(entries, generations, label)
            sources[label] = "generated"
    return rows, sources


def run_paper(cfg: StudyConfig, entries: Sequence[Entry], generations: dict[str, list[Generation]],
              files: Mapping[str, Sequence[str | Path]], opened: Opened, protocol: dict[str, Any],
              out: Path | None, cache: StudyCache, t0: float, seconds: dict[str, float]) -> StudyResult:
    rows, sources = pair_inputs(entries, generations, files, opened.facts.d_vocab)
    selections = {label: select_pair(cfg, r) for label, r in rows.items()}
    protocol["pairs"] = {label: {**s.as_dict(cfg.cut_coeffs), "source": sources[label]} for label, s in selections.items()}
    if out is not None:  # before any attribution (or refusal): the generation work is never lost
        from circuitdyn.study.report import write_protocol

        for label, source in sources.items():
            if source == "generated":
                protocol["pairs"][label]["files"] = [p.name for p in write_pair_files(out / "generations", label,
                                                                                      rows[label])]
        write_protocol(out, protocol)
    short = too_short(cfg, selections)  # left out, with the reason; the other pairs run
    for label, reason in short.items():
        protocol["pairs"][label]["skipped"] = reason
        logger.warning("pair %s - base left out: %s", label, reason)
    t2 = time.perf_counter()
    cells = run_cells(cfg, entries, rows, {k: s for k, s in selections.items() if k not in short}, opened.graphs,
                      opened.records, cache, pad_id(opened.facts.tokenizer))
    seconds["attribute"] = time.perf_counter() - t2
    t3 = time.perf_counter()
    with phase(f"statistics: paired tests of {len(cells)} cell(s), {cfg.n_resamples:,} resamples each", cfg.progress):
        tests = with_fdr([t for c in cells for t in cell_tests(cfg, c)] + cross_tests(cfg, cells))
        labels = [label for label in selections if label not in short]
        degraded = degraded_labels(protocol["correct"], labels)
        protocol["degraded"] = degraded
        claims = [f"[cut {cut:g}] {line}" for cut in cfg.cut_coeffs
                  for line in state_claims(cfg, [t for t in tests if t.cut == f"{cut:g}"], labels, degraded)]
    seconds["statistics"] = time.perf_counter() - t3
    seconds["total"] = time.perf_counter() - t0
    protocol["seconds"] = {k: round(v, 2) for k, v in seconds.items()}
    views = {c.name: _cell_view(cfg, c, tests, protocol) for c in cells}
    return StudyResult(cfg, tuple(entries), protocol["dataset_sha256"], protocol["problems"]["n_generated"],
                       protocol["correct"], (), generations, {}, {}, tuple(tests), tuple(claims), protocol, seconds,
                       cells=views, selections=selections)


def _cell_view(cfg: StudyConfig, cell: Cell, tests: Sequence[Test], protocol: dict[str, Any]) -> StudyResult:
    """One cell as a study of its own (its base and seeds on its rows), for its tables and plots."""
    own = tuple(t for t in tests if t.cut == f"{cell.cut:g}" and t.comparison == f"{cell.label} - base")
    return StudyResult(cfg, cell.entries, protocol["dataset_sha256"], len(cell.keys), {}, tuple(range(len(cell.keys))),
                       {}, cell.attributions, cell.metrics, own, (), protocol)
