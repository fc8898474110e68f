"""A training run's checkpoint as a model to study or attribute.

Every checkpoint folder is also a Hugging Face model folder (the trainer writes it): its weights are the
trained ones under the original names, LoRA adapters merged, and its tokenizer and configuration are the
base's. So it loads like any model folder; `base_spec` only checks that it was trained from that base.
Folders written before checkpoints carried those files (only `policy.safetensors`) load as the base with
the trained weights put in.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from circuitdyn.models import LoadedModel, load_model
from circuitdyn.train.checkpoint import CheckpointError, load_module_weights

POLICY_FILE = "policy.safetensors"


def is_checkpoint(folder: str | Path) -> bool:
    return (Path(folder).expanduser() / POLICY_FILE).is_file()


def load_trained(folder: str | Path, base_spec: str | None = None, **load_kwargs: Any) -> LoadedModel:
    """The model a checkpoint folder holds (see the module docstring); refused when it was trained from
    another base than `base_spec`."""
    folder = Path(folder).expanduser()
    if not (folder / "config.json").is_file():
        if base_spec is None:
            raise CheckpointError(f"{folder} holds only {POLICY_FILE} (an older checkpoint); give the base model "
                                  "it was trained from so it can be loaded")
        model = load_model(base_spec, **load_kwargs)
        load_module_weights(folder / POLICY_FILE, model.bridge.original_model)
        return LoadedModel(model.bridge, model.tokenizer,
                           replace(model.provenance, spec=f"{base_spec}+{folder}", source=str(folder)))
    model = load_model(str(folder), **load_kwargs)
    trained_from = (model.provenance.training or {}).get("base_spec")
    if base_spec is not None and trained_from is not None and trained_from != base_spec:
        raise CheckpointError(f"{folder} was trained from {trained_from!r}, not from {base_spec!r}; give its own "
                              "base (or no base: the folder holds the whole model)")
    return model
