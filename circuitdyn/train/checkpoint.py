"""Training checkpoints: weights and optimizer tensors in safetensors, everything else in JSON.

A checkpoint folder is also a Hugging Face model folder (config.json, model.safetensors under the
original weight names, tokenizer, generation config; written by the trainer), so load_model and
AutoModelForCausalLM.from_pretrained open it. Beside it: `policy.safetensors` (the bridge's own
parameters, what a resumed run loads), optimizer, RNG and trainer state.

Nothing is pickled. A checkpoint is a folder written under a temporary name and renamed into place, so a
run killed mid-save leaves the previous checkpoint intact and no folder that loads as valid.
`checkpoint.json` records the sha256 of every other file and one over its own content; a resumed run
checks both before it loads anything, so an edited file or field is refused (version 1, from before the
hashes, is refused: start a new run or resume with the circuitdyn that wrote it).
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from circuitdyn.core.atomic import atomic_folder, recover_folder
from circuitdyn.core.digest import document_sha256, file_sha256

SCHEMA = "circuitdyn.checkpoint"
VERSION = 2  # 2: sha256 of every file and of checkpoint.json's content
ALGORITHM_FILE = "algorithm.safetensors"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the folder or file."""


def _unique_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """State dict without tied duplicates (safetensors refuses shared storage)."""
    seen: dict[int, str] = {}
    out = {}
    for name, t in module.state_dict().items():
        key = t.untyped_storage().data_ptr() if t.numel() else id(t)
        if key in seen and t.numel():
            continue
        seen[key] = name
        out[name] = t.detach().contiguous().clone()
    return out


def save_checkpoint(folder: Path, *, modules: dict[str, torch.nn.Module], optimizer: torch.optim.Optimizer,
                    generator: torch.Generator, py_random: random.Random, state: dict[str, Any],
                    algorithm_tensors: dict[str, torch.Tensor] | None = None,
                    also: Callable[[Path], Any] | None = None) -> Path:
    """Write modules, optimizer, RNG states, the trainer `state` and the algorithm's own tensors (e.g. DPO's
    preference pairs, in `algorithm.safetensors`); `also(tmp)` writes more into the same folder before it
    is renamed into place (the trainer's Hugging Face files)."""
    folder = Path(folder)
    with atomic_folder(folder) as tmp:
        if also is not None:
            also(tmp)
        if algorithm_tensors:
            save_file({k: v.detach().contiguous() for k, v in algorithm_tensors.items()}, str(tmp / ALGORITHM_FILE))
        for name, module in modules.items():
            save_file(_unique_state(module), str(tmp / f"{name}.safetensors"))
        opt = optimizer.state_dict()
        tensors, scalars = {}, {}
        for idx, st in opt["state"].items():
            for k, v in st.items():
                if torch.is_tensor(v):
                    tensors[f"{idx}.{k}"] = v.contiguous()
                else:
                    scalars[f"{idx}.{k}"] = v
        tensors["__rng__"] = generator.get_state()
        save_file(tensors, str(tmp / "optimizer.safetensors"))
        py_state = py_random.getstate()
        meta = {"schema": SCHEMA, "version": VERSION, "state": state, "param_groups": opt["param_groups"],
                "optimizer_scalars": scalars, "py_random": [py_state[0], list(py_state[1]), py_state[2]],
                "files_sha256": {p.name: file_sha256(p) for p in sorted(tmp.iterdir()) if p.is_file()}}
        meta = json.loads(json.dumps(meta))  # as it will be read back
        meta["sha256"] = document_sha256(meta)
        (tmp / "checkpoint.json").write_text(json.dumps(meta, indent=1))
    return folder


def verify_files(folder: Path, meta: dict[str, Any], names: list[str]) -> None:
    """Refuse a checkpoint whose checkpoint.json content or one of the files `names` does not match the hash
    recorded when it was saved."""
    if meta.get("sha256") != document_sha256(meta):
        raise CheckpointError(f"{folder}/checkpoint.json: its content does not match the sha256 recorded when it was "
                              "saved: a field was edited or damaged; restore it, or resume from another checkpoint")
    hashes = meta.get("files_sha256")
    recorded: dict[str, Any] = hashes if isinstance(hashes, dict) else {}
    for name in names:
        if not (folder / name).is_file():
            raise CheckpointError(f"{folder / name}: missing (the checkpoint was saved with it); resume from another "
                                  "checkpoint")
        if recorded.get(name) != file_sha256(folder / name):
            raise CheckpointError(f"{folder / name}: does not match the sha256 recorded when the checkpoint was saved "
                                  "(edited, truncated or damaged); resume from another checkpoint")


def load_module_weights(path: Path, module: torch.nn.Module) -> None:
    """Load one module's weights from a checkpoint file, refusing files that do not match it exactly."""
    try:
        saved = load_file(str(path))
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"{path}: unreadable weights (missing, truncated or corrupted?): {err}") from None
    expected = set(_unique_state(module))  # tied duplicates are stored once
    if set(saved) != expected:
        raise CheckpointError(f"{path}: weights do not match the model (missing {sorted(expected - set(saved))[:3]}, "
                              f"unexpected {sorted(set(saved) - expected)[:3]}); was it saved from another model?")
    module.load_state_dict(saved, strict=False)


def read_checkpoint_meta(folder: Path) -> dict[str, Any]:
    """The validated JSON part of a checkpoint (schema, version, trainer state with its config)."""
    meta_path = recover_folder(Path(folder)) / "checkpoint.json"
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{meta_path}: missing or not valid JSON ({err}); is {folder} a circuitdyn checkpoint?") from None
    if not isinstance(meta, dict) or meta.get("schema") != SCHEMA or meta.get("version") != VERSION:
        got = (meta.get("schema"), meta.get("version")) if isinstance(meta, dict) else type(meta).__name__
        why = " (version 1 carries no hashes, so its edits cannot be seen: start a new run)" if \
            isinstance(meta, dict) and meta.get("version") == 1 else ""
        raise CheckpointError(f"{meta_path}: schema/version {got}, expected {SCHEMA}/{VERSION}{why}")
    problem = _meta_problem(meta)
    if problem:
        raise CheckpointError(f"{meta_path}: {problem}; the file was edited or damaged (restore it, or resume from "
                              "another checkpoint)")
    return meta


MT_STATE_WORDS = 625  # Python's Mersenne Twister state: 624 words and an index


def _meta_problem(meta: dict[str, Any]) -> str | None:
    """What is malformed in a checkpoint.json (None when every field is well formed)."""
    state = meta.get("state")
    if not isinstance(state, dict):
        return "'state' is missing or not an object"
    step = state.get("step")
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        return f"state.step must be an integer >= 0, got {step!r}"
    if not isinstance(state.get("config"), dict):
        return "state.config is missing or not an object"
    if not isinstance(state.get("history"), list) or not all(isinstance(h, dict) for h in state["history"]):
        return "state.history must be a list of objects"
    if not isinstance(state.get("base_accuracy"), (int, float, type(None))):
        return f"state.base_accuracy must be a number, got {state.get('base_accuracy')!r}"
    if not isinstance(meta.get("param_groups"), list) or not all(isinstance(g, dict) for g in meta["param_groups"]):
        return "'param_groups' must be a list of objects"
    scalars = meta.get("optimizer_scalars")
    if not isinstance(scalars, dict) or not all(isinstance(k, str) and "." in k and k.split(".", 1)[0].isdigit()
                                                for k in scalars):
        return "'optimizer_scalars' must map 'INDEX.name' to values"
    hashes = meta.get("files_sha256")
    if not isinstance(hashes, dict) or not all(isinstance(v, str) for v in hashes.values()):
        return "'files_sha256' must map file names to sha256 digests"
    rng = meta.get("py_random")
    if not (isinstance(rng, list) and len(rng) == 3 and isinstance(rng[0], int) and isinstance(rng[1], list)
            and len(rng[1]) == MT_STATE_WORDS and all(isinstance(w, int) for w in rng[1])
            and isinstance(rng[2], (float, type(None)))):
        return f"'py_random' must be [version, {MT_STATE_WORDS} integers, gauss]"
    return None


def load_checkpoint(folder: Path, *, modules: dict[str, torch.nn.Module], optimizer: torch.optim.Optimizer,
                    generator: torch.Generator, py_random: random.Random) -> dict[str, Any]:
    """Restore modules, optimizer and RNG states in place; returns the saved trainer state."""
    folder = Path(folder)
    meta = read_checkpoint_meta(folder)
    extra = [ALGORITHM_FILE] if (folder / ALGORITHM_FILE).exists() or ALGORITHM_FILE in meta["files_sha256"] else []
    verify_files(recover_folder(folder), meta, [f"{name}.safetensors" for name in modules] + ["optimizer.safetensors"]
                 + extra)
    for name, module in modules.items():
        load_module_weights(folder / f"{name}.safetensors", module)
    try:
        tensors = load_file(str(folder / "optimizer.safetensors"))
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"{folder}: unreadable weights (truncated or corrupted?): {err}") from None
    rng = tensors.pop("__rng__", None)
    state: dict[int, dict[str, Any]] = {}
    for key, v in list(tensors.items()) + list(meta["optimizer_scalars"].items()):
        idx, _, k = key.partition(".")
        if not idx.isdigit() or not k:
            raise CheckpointError(f"{folder}: optimizer entry {key!r} is not 'INDEX.name'; the file was edited or damaged")
        state.setdefault(int(idx), {})[k] = v
    version, internal, gauss = meta["py_random"]
    try:
        if rng is None:
            raise ValueError("the sampling generator's state is missing")
        generator.set_state(rng)
        optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
        py_random.setstate((version, tuple(internal), gauss))
    except (RuntimeError, ValueError, TypeError, KeyError) as err:
        raise CheckpointError(f"{folder}: its optimizer or random state does not fit this run ({err}); resume from "
                              "a checkpoint of the same configuration") from None
    return meta["state"]


def verify_weights(folder: Path, recorded: str | None, now: str) -> None:
    """Refuse a resumed run whose loaded weights do not hash to what the checkpoint recorded when it was saved."""
    if recorded and recorded != now:
        raise CheckpointError(f"{folder}: its weights hash to {now[:12]}, not to the {recorded[:12]} recorded when it "
                              "was saved (the files were changed or damaged): resume from another checkpoint")


def load_algorithm_tensors(folder: Path) -> dict[str, torch.Tensor]:
    """The algorithm's own tensors of a checkpoint ({} when it kept none)."""
    path = Path(folder) / ALGORITHM_FILE
    if not path.exists():
        return {}
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"{path}: unreadable algorithm state (truncated or corrupted?): {err}") from None
