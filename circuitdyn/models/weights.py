"""Which weights a model runs on: their hash as they are now, and the training run that produced them.

The training record travels with the model itself (an attribute of the bridge, so clones carry it and
nothing is kept at module level): the Trainer and the trl integration write it, loading a checkpoint folder
reads it from the folder, and `attribute()` copies it into each attribution's provenance.

The hash is the sha256 of the model's weights under their Hugging Face names, fused projections rebuilt
(`export.hf_state_dict`), so a trained model in memory, the checkpoint folder it was saved to and that
folder loaded again all hash the same. It is recomputed only when a parameter has changed since the last
call (torch counts in-place updates in each tensor's version), so asking is cheap between updates.
"""

from __future__ import annotations

import hashlib
import json
import weakref
from pathlib import Path
from typing import Any

import torch

from circuitdyn.models.export import ExportError, hf_state_dict
from circuitdyn.models.files import ModelSpecError

_HASHES: "weakref.WeakKeyDictionary[Any, tuple[tuple[tuple[int, int], ...], str]]" = weakref.WeakKeyDictionary()
TRAINING_ATTRIBUTE = "circuitdyn_training"  # on the bridge: the run that wrote its current weights


#: elements hashed at a time: their float32 copy is 64 MiB, whatever the tensor (a 7B model's embedding
#: whole, cast and copied to bytes, held 4.4 GB)
HASH_CHUNK = 1 << 24


def state_sha256(state: dict[str, torch.Tensor]) -> str:
    """sha256 of named tensors in name order (as float32 bytes, so dtype-cast copies agree), read in chunks."""
    digest = hashlib.sha256()
    for name in sorted(state):
        digest.update(name.encode())
        flat = state[name].detach().reshape(-1)
        for start in range(0, flat.numel(), HASH_CHUNK):
            digest.update(flat[start:start + HASH_CHUNK].to("cpu", torch.float32).contiguous().numpy().data)
    return digest.hexdigest()


def _versions(bridge: Any) -> tuple[tuple[int, int], ...]:
    return tuple((id(t), t._version) for t in list(bridge.parameters()) + list(bridge.buffers()))


def current_sha256(bridge: Any) -> str:
    """The hash of the weights `bridge` runs on now (see the module docstring)."""
    versions = _versions(bridge)
    cached = _HASHES.get(bridge)
    if cached is not None and cached[0] == versions:
        return cached[1]
    try:
        digest = state_sha256(hf_state_dict(bridge))
    except (ExportError, AttributeError, TypeError):  # no Hugging Face form (e.g. a boot_native bridge)
        digest = state_sha256(dict(bridge.state_dict()))
    _HASHES[bridge] = (versions, digest)
    return digest


def record_training(bridge: Any, info: dict[str, Any]) -> None:
    """Record on `bridge` the training run (algorithm, steps, config hash, base) that produced its weights."""
    setattr(bridge, TRAINING_ATTRIBUTE, dict(info))


def training_of(bridge: Any) -> dict[str, Any] | None:
    """The training run recorded on `bridge`, if any."""
    record = getattr(bridge, TRAINING_ATTRIBUTE, None)
    return dict(record) if record is not None else None


TRAINING_FILE = "circuitdyn_training.json"  # written beside the weights of a training checkpoint


def read_training_record(target: Path | str, bridge: Any) -> dict[str, Any] | None:
    """The training run recorded in a checkpoint folder, remembered for the loaded bridge."""
    path = Path(target) / TRAINING_FILE if isinstance(target, Path) else None
    if path is None or not path.is_file():
        return None
    try:
        info = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ModelSpecError(f"{path}: unreadable training record ({err}); the folder was damaged") from None
    record_training(bridge, info)
    return info
