"""LoRA configurations: what the trainer can honour (checked, naming the field), and their JSON form for
checkpoints. The adapters themselves, on the bridge's modules, are lora.py's."""

from __future__ import annotations

import dataclasses
import math
from typing import Any


class LoraError(ValueError):
    """An adapter configuration the bridge cannot take; the message names the field or module."""


#: LoraConfig fields a checkpoint does not need to rebuild the adapters
_BOOKKEEPING = {"peft_type", "peft_version", "task_type", "base_model_name_or_path", "revision", "auto_mapping",
                "inference_mode", "runtime_config"}


def check_lora_config(config: Any) -> None:
    """Refuse what the trainer cannot honour, naming the field."""
    from peft import LoraConfig

    if not isinstance(config, LoraConfig):
        raise LoraError(f"peft must be a peft.LoraConfig (or None for full fine-tuning), got {type(config).__name__}")
    if not isinstance(config.r, int) or isinstance(config.r, bool) or config.r < 1:
        raise LoraError(f"r={config.r!r}: the adapters' rank must be an integer >= 1 (e.g. r=16)")
    alpha = config.lora_alpha
    if not isinstance(alpha, (int, float)) or isinstance(alpha, bool) or not math.isfinite(alpha) or alpha <= 0:
        raise LoraError(f"lora_alpha={alpha!r}: the adapters are scaled by lora_alpha / r, so it must be a number > 0 "
                        "(alpha 0 scales them to nothing and nothing trains); e.g. lora_alpha=2*r")
    layers = config.layers_to_transform
    if layers is not None and not (isinstance(layers, int) or (isinstance(layers, (list, tuple)) and layers
                                                                and all(isinstance(i, int) for i in layers))):
        raise LoraError(f"layers_to_transform={layers!r}: give a layer index or a list of them")
    if config.lora_dropout:
        raise LoraError(f"lora_dropout={config.lora_dropout}: the trainer runs without dropout (deterministic, "
                        "resumable runs); set lora_dropout=0")
    for flag in ("use_dora", "lora_bias", "use_qalora"):
        if getattr(config, flag, False):
            raise LoraError(f"{flag}=True is not supported: adapters must merge as W + (alpha/r) B A; set {flag}=False")
    if config.bias != "none":
        raise LoraError(f"bias={config.bias!r}: only bias='none' is supported (the base biases stay frozen)")
    for field in ("modules_to_save", "trainable_token_indices"):
        if getattr(config, field, None):
            raise LoraError(f"{field} is not supported: its copies of whole modules would not be merged into the "
                            "exported model; adapt those modules with target_modules (a classifier-first schedule "
                            "trains the unembedding whole by itself)")


def lora_to_dict(config: Any) -> dict[str, Any]:
    """The fields of a LoraConfig that differ from peft's defaults, JSON-safe."""
    from peft import LoraConfig

    default = LoraConfig().to_dict()
    out = {}
    for k, v in config.to_dict().items():
        if k in _BOOKKEEPING or v == default.get(k):
            continue
        out[k] = sorted(v) if isinstance(v, (set, frozenset)) else v
    return out


def lora_from_dict(d: dict[str, Any]) -> Any:
    """A LoraConfig from its JSON form (a config file's `peft` section), checked like any LoraConfig."""
    from peft import LoraConfig

    if not isinstance(d, dict):
        raise LoraError(f"peft must be an object of LoraConfig fields, got {type(d).__name__}")
    known = {f.name for f in dataclasses.fields(LoraConfig)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise LoraError(f"unknown LoraConfig fields {unknown} in peft; see peft.LoraConfig for the valid ones")
    try:
        config = LoraConfig(**d)
    except (TypeError, ValueError) as err:
        raise LoraError(f"peft: {err}") from None
    check_lora_config(config)
    return config
