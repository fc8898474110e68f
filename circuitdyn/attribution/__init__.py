"""Edge attribution: EAP, EAP-IG, exact patching, and the objectives they differentiate.

Layout: `intervention.py` (ablations decoded, counterfactuals, source recording) is used by every method;
each method lives in its own file (`eap.py`, `eap_ig.py`, `exact.py`) behind the protocol in `method.py`;
`attribute.py` drives them from its registry `METHODS`. `engine.py` contracts destination gradients with
the deltas; `destinations.py` reads those gradients (at the q/k/v projections where it can, through
`qkv_projections.py` and `head_gradients.py`). `result.py` holds an Attribution, `files.py` its file format
(safetensors + JSON metadata), and `sharded.py` splits an attribution over several processes.
"""

from circuitdyn.attribution.attribute import METHODS, attribute
from circuitdyn.attribution.config import Aggregation, AttributionConfig
from circuitdyn.attribution.destinations import QKVGradients
from circuitdyn.attribution.engine import MemoryBudgetError
from circuitdyn.attribution.errors import AttributionError
from circuitdyn.attribution.files import load_attribution, save_attribution
from circuitdyn.attribution.intervention import Ablation, Counterfactual, Intervention
from circuitdyn.attribution.method import AttributionMethod, Method
from circuitdyn.attribution.objectives import OBJECTIVES, ObjectiveError, answer_logprob, answer_nll, logit_diff
from circuitdyn.attribution.quadrature import Quadrature
from circuitdyn.attribution.result import Attribution

__all__ = [
    "Ablation", "Aggregation", "Attribution", "AttributionConfig", "AttributionError", "AttributionMethod",
    "Counterfactual", "Intervention", "METHODS", "OBJECTIVES", "MemoryBudgetError", "ObjectiveError", "Method",
    "QKVGradients", "Quadrature",
    "answer_logprob", "answer_nll", "attribute", "load_attribution", "logit_diff", "save_attribution",
]
