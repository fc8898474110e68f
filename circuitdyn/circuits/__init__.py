"""Circuits: subsets of a graph's edges selected from scores (`circuit.py`, pure functions), and real edge
patching that measures how faithful a circuit is (`patching.py`)."""

from circuitdyn.circuits.circuit import Circuit, Selection, greedy, prune, select, threshold, top_n
from circuitdyn.circuits.patching import evaluate_circuit, faithfulness_curve, patched_metric

__all__ = ["Circuit", "Selection", "evaluate_circuit", "faithfulness_curve", "greedy", "patched_metric", "prune",
           "select", "threshold", "top_n"]
