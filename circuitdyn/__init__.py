"""circuitdyn: edge attribution patching on TransformerLens bridges, and how RL post-training rewires circuits.

The names below are the curated face; each lives in the submodule named beside it, and is imported only when
first used (`import circuitdyn` stays cheap and changes no global state).

    model = circuitdyn.load_model("zoo:llama")
    examples = circuitdyn.get_task("addition").examples(32)
    scores = circuitdyn.attribute(model, "head", examples, "logit_diff", method="eap-ig-inputs")
    circuit = circuitdyn.top_n(scores, 20)  # remembers what it was selected by: logit_diff under noising
    circuitdyn.evaluate_circuit(model, circuit, examples).faithfulness  # 0.95, measured the same way

A circuit is measured under the objective and counterfactual it was selected by unless told otherwise (a
named warning says when they differ). The RL-circuitry protocol's scores (`"answer_nll"`, `ablation="zero"`,
`per_example=True`) are for reading intensity and entropy, not for finding circuits: zeroing most of the
residual stream takes the model far from the run where first-order scores are taken, and there a top-20
circuit keeps less than none of the gap (zoo:llama, addition with `answer_tokens=2`, head graph, top 20 of 82
edges: faithfulness -0.66).

One verb shares its name with its package, which Python binds on import, so it is called through it:
`circuitdyn.train.train(model, config)`.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_FACE = {
    "circuitdyn.tasks": ("get_problem_set", "get_task", "tokenize_pairs"),
    "circuitdyn.models": ("LoadedModel", "clone_model", "load_model"),
    "circuitdyn.graph": ("Graph",),
    "circuitdyn.attribution": ("Attribution", "AttributionConfig", "attribute", "load_attribution", "save_attribution"),
    "circuitdyn.circuits": ("Circuit", "evaluate_circuit", "export_attribution", "faithfulness_curve", "greedy",
                            "import_eap_ig_json", "select", "top_n"),
    "circuitdyn.analysis": ("Comparison", "circuit_metrics", "compare", "edge_diff", "per_layer_metrics", "view"),
    "circuitdyn.train": ("CFRLConfig", "ClassifierFirst", "DPOConfig", "GRPOConfig", "PPOConfig", "Trainer"),
    "circuitdyn.dynamics": ("confidence", "diversity", "entk"),
    "circuitdyn.study": ("StudyConfig", "run_study"),
}
_HOME = {name: module for module, names in _FACE.items() for name in names}
__all__ = [
    "Attribution", "AttributionConfig", "CFRLConfig", "Circuit", "ClassifierFirst", "Comparison", "DPOConfig",
    "GRPOConfig", "Graph", "LoadedModel", "PPOConfig", "StudyConfig", "Trainer", "attribute",
    "circuit_metrics", "clone_model", "compare", "confidence", "diversity", "edge_diff", "entk", "evaluate_circuit",
    "export_attribution", "faithfulness_curve", "get_problem_set", "get_task", "greedy", "import_eap_ig_json",
    "load_attribution", "load_model", "per_layer_metrics", "run_study", "save_attribution", "select",
    "tokenize_pairs", "top_n", "view",
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
    from circuitdyn.analysis import Comparison, circuit_metrics, compare, edge_diff, per_layer_metrics, view
    from circuitdyn.attribution import Attribution, AttributionConfig, attribute, load_attribution, save_attribution
    from circuitdyn.circuits import (
        Circuit,
        evaluate_circuit,
        export_attribution,
        faithfulness_curve,
        greedy,
        import_eap_ig_json,
        select,
        top_n,
    )
    from circuitdyn.dynamics import confidence, diversity, entk
    from circuitdyn.graph import Graph
    from circuitdyn.models import LoadedModel, clone_model, load_model
    from circuitdyn.study import StudyConfig, run_study
    from circuitdyn.tasks import get_problem_set, get_task, tokenize_pairs
    from circuitdyn.train import CFRLConfig, ClassifierFirst, DPOConfig, GRPOConfig, PPOConfig, Trainer
