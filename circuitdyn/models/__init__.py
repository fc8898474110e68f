"""Models: load a spec as a TransformerBridge with its tokenizer and provenance, and everything about its
weights and files.

Layout: `load.py` (specs -> LoadedModel) over `files.py` (folders, tokenizers, the cache), `hub.py`, `zoo.py`
(tiny pre-trained models of each family) and `real.py` (the offline GGUF models); `loaded.py` (LoadedModel,
provenance, cloning); `weights.py` (the hash of the weights a model runs on) over `export.py` (the bridge's
weights under Hugging Face names); `finite.py` (which weights hold NaN or inf); `lora.py` (peft adapters on
the bridge's modules); `surface.py` (the classifier, the plain Hugging Face twin) and `sampling.py` (rollouts with a KV cache).
"""

from circuitdyn.models.files import ModelSpecError
from circuitdyn.models.finite import logits_finite, logits_not_finite, nonfinite_weights
from circuitdyn.models.load import FAMILY_OF_ARCHITECTURE, REAL_MODELS, default_device, load_model, resolve_device, resolve_spec
from circuitdyn.models.loaded import (
    LoadedModel,
    Provenance,
    as_bridge,
    clone_bridge,
    clone_model,
    context_of,
    weights_sha256,
)

__all__ = ["FAMILY_OF_ARCHITECTURE", "REAL_MODELS", "LoadedModel", "ModelSpecError", "Provenance", "as_bridge",
           "clone_bridge", "clone_model", "context_of", "default_device", "load_model", "logits_finite",
           "logits_not_finite", "nonfinite_weights", "resolve_device", "resolve_spec", "weights_sha256"]
