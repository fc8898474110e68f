"""Circuits: subsets of a graph's edges selected from scores (`circuit.py`, pure functions), and real edge
patching that measures how faithful a circuit is (`patching.py`), and the formats other circuit tools read
(`formats.py`: EAP-IG's graph JSON, dot, GraphML)."""

from circuitdyn.circuits.circuit import Circuit, Scoring, Selection, greedy, prune, select, threshold, top_n
from circuitdyn.circuits.formats import ExportFormat, export_attribution, import_eap_ig_circuit, import_eap_ig_json
from circuitdyn.circuits.patching import (
    CircuitScoringWarning,
    Faithfulness,
    evaluate_circuit,
    faithfulness_curve,
    judged_by,
    patched_metric,
)

__all__ = ["Circuit", "CircuitScoringWarning", "ExportFormat", "Faithfulness", "Scoring", "Selection",
           "evaluate_circuit", "export_attribution", "faithfulness_curve", "greedy", "import_eap_ig_circuit",
           "import_eap_ig_json", "judged_by", "patched_metric", "prune", "select", "threshold", "top_n"]
