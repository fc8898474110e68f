"""circuitdyn: edge attribution patching on TransformerLens bridges, and how RL post-training rewires circuits.

The names below are the curated face; each lives in the submodule named beside it, and is imported only when
first used (`import circuitdyn` stays cheap and changes no global state).

    model = circuitdyn.load_model("zoo:llama")
    scores = circuitdyn.attribute(model, "layer", examples, "answer_nll", ablation="zero", per_example=True)
    circuit = circuitdyn.top_n(scores, 20)
    circuitdyn.evaluate_circuit(model, circuit, examples)

Two verbs share their name with their submodule, which Python binds on import, so they are called through
it: `circuitdyn.train.train(model, config)` and `circuitdyn.compare.compare(base, tuned)`.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_FACE = {
    "circuitdyn.models": ("LoadedModel", "clone_model", "load_model"),
    "circuitdyn.graph": ("Graph",),
    "circuitdyn.tasks": ("get_problem_set", "get_task", "tokenize_pairs"),
    "circuitdyn.attribution": ("Attribution", "AttributionConfig", "attribute"),
    "circuitdyn.circuit": ("Circuit", "greedy", "select", "top_n"),
    "circuitdyn.patching": ("evaluate_circuit", "faithfulness_curve"),
    "circuitdyn.metrics": ("circuit_metrics", "per_layer_metrics"),
    "circuitdyn.io": ("load_attribution", "save_attribution"),
    "circuitdyn.compare": ("Comparison", "edge_diff"),
    "circuitdyn.train": ("CFRLConfig", "ClassifierFirst", "DPOConfig", "GRPOConfig", "PPOConfig", "Trainer"),
    "circuitdyn.dynamics": ("confidence", "diversity", "entk"),
    "circuitdyn.study": ("StudyConfig", "run_study"),
}
_HOME = {name: module for module, names in _FACE.items() for name in names}
__all__ = [
    "Attribution", "AttributionConfig", "CFRLConfig", "Circuit", "ClassifierFirst", "Comparison", "DPOConfig",
    "GRPOConfig", "Graph", "LoadedModel", "PPOConfig", "StudyConfig", "Trainer", "attribute",
    "circuit_metrics", "clone_model", "confidence", "diversity", "edge_diff", "entk", "evaluate_circuit",
    "faithfulness_curve", "get_problem_set", "get_task", "greedy", "load_attribution", "load_model",
    "per_layer_metrics", "run_study", "save_attribution", "select", "tokenize_pairs", "top_n",
]


def __getattr__(name: str) -> Any:
    if name in _HOME:
        value = getattr(import_module(_HOME[name]), name)
        globals()[name] = value  # cache: later lookups are plain attribute reads
        return value
    raise AttributeError(f"module 'circuitdyn' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # what the names are, for type checkers and editors
    from circuitdyn.attribution import Attribution, AttributionConfig
    from circuitdyn.attribution.attribute import attribute
    from circuitdyn.circuit import Circuit, greedy, select, top_n
    from circuitdyn.compare import Comparison, edge_diff
    from circuitdyn.dynamics import confidence, diversity, entk
    from circuitdyn.graph import Graph
    from circuitdyn.io import load_attribution, save_attribution
    from circuitdyn.metrics import circuit_metrics, per_layer_metrics
    from circuitdyn.models import LoadedModel, clone_model, load_model
    from circuitdyn.patching import evaluate_circuit, faithfulness_curve
    from circuitdyn.study import StudyConfig, run_study
    from circuitdyn.tasks import get_problem_set, get_task, tokenize_pairs
    from circuitdyn.train import CFRLConfig, ClassifierFirst, DPOConfig, GRPOConfig, PPOConfig, Trainer
