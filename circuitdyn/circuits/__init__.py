"""Circuits: subsets of a graph's edges selected from scores (`circuit.py`, pure functions), and real edge
patching that measures how faithful a circuit is (`patching.py`)."""

from circuitdyn.circuits.circuit import Circuit, Scoring, Selection, greedy, prune, select, threshold, top_n
from circuitdyn.circuits.patching import (
    CircuitScoringWarning,
    Faithfulness,
    evaluate_circuit,
    faithfulness_curve,
    judged_by,
    patched_metric,
)

__all__ = ["Circuit", "CircuitScoringWarning", "Faithfulness", "Scoring", "Selection", "evaluate_circuit",
           "faithfulness_curve", "greedy", "judged_by", "patched_metric", "prune", "select", "threshold", "top_n"]
