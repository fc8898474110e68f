"""LoRA adapters (peft) on the Hugging Face modules a bridge wraps, so training and attribution share one model.

`apply_lora` injects peft's LoRA layers in place of the linear modules the bridge computes with; the bridge's
hooks sit around those modules, so every hook (and so every edge score) sees the adapted model. Targets are
named as peft names them (`["q_proj", "v_proj"]`, a regex, `"all-linear"`, or None for peft's default for
the model type), matched against the Hugging Face names under the bridge's wrappers. A fused q/k/v
projection (GPT-2's `c_attn`, GPT-NeoX's `query_key_value`) is not what the bridge computes with: it splits
it into q, k and v linears, and a fused target adapts those three.

Adapters are kept unmerged while training. Every hooked run (`models.attribution_hooks`) sees them merged
(`adapters_merged`), because the bridge reads the q/k/v and output weights directly for its per-head hooks.
`effective_tensor` is a module's weight with its adapters added (what the Hugging Face export and the
weights hash use, so a LoRA model hashes and saves as its merged model); `merge_lora` folds them into the
base weights for good.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
import warnings
from collections.abc import Collection, Iterator
from typing import Any

import torch
from torch import Tensor

from circuitdyn.models.lora_config import LoraError, check_lora_config
from circuitdyn.models.wrapper_names import joint_attentions, strip_wrappers

_CONFIG_ATTR = "_circuitdyn_lora"  # the LoraConfig used, on the bridge's model (a copy of the bridge keeps it)
def is_lora_layer(module: Any) -> bool:
    """A peft LoRA layer: it owns `lora_A` (own children only: a bridge wrapper forwards attribute lookups
    to the module it wraps, so `hasattr` would also say yes for the wrapper)."""
    return isinstance(module, torch.nn.Module) and "lora_A" in module._modules


def _linears(hf: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """Every linear module (nn.Linear or HF's Conv1D) under every name it has (aliases included)."""
    return {n: m for n, m in hf.named_modules(remove_duplicate=False)
            if isinstance(m, torch.nn.Linear) or type(m).__name__ == "Conv1D"}


def _called(bridge: Any, modules: list[torch.nn.Module]) -> set[int]:
    """The modules a forward of the bridge actually runs."""
    seen: set[int] = set()
    handles = [m.register_forward_hook(lambda mod, *_: seen.add(id(mod))) for m in {id(m): m for m in modules}.values()]
    try:
        with torch.no_grad():
            device = next(bridge.parameters()).device
            bridge(torch.zeros(1, 2, dtype=torch.long, device=device))
    finally:
        for h in handles:
            h.remove()
    return seen


def _split_of_fused(bridge: Any) -> dict[int, list[torch.nn.Module]]:
    """For each fused q/k/v projection the bridge splits, the q, k and v linears it computes with instead."""
    return {id(attn.qkv.original_component): [getattr(attn, k).original_component for k in ("q", "k", "v")]
            for attn in joint_attentions(bridge) if hasattr(attn, "qkv")}


def _requested(config: Any, hf: torch.nn.Module) -> Any:
    targets = config.target_modules
    if targets is None:
        from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as DEFAULTS

        model_type = getattr(hf.config, "model_type", None)
        if model_type not in DEFAULTS:
            raise LoraError(f"peft has no default target_modules for model type {model_type!r}; name them, "
                            "e.g. target_modules='all-linear'")
        targets = DEFAULTS[model_type]
    return targets


def lora_targets(bridge: Any, config: Any) -> list[str]:
    """The Hugging Face names of the modules `config` adapts on this bridge (see the module docstring)."""
    return sorted(strip_wrappers(n) for n in _targets(bridge, config))


def _targets(bridge: Any, config: Any) -> list[str]:
    """The adapted modules' names in the bridge's model, as peft sees them (each module's first name)."""
    hf = bridge.original_model
    linears = _linears(hf)
    unembed = getattr(bridge.unembed, "original_component", None)
    called = _called(bridge, list(linears.values()))
    fused = _split_of_fused(bridge)
    targets = _requested(config, hf)
    if targets == "all-linear":
        chosen = [m for m in linears.values() if id(m) in called and m is not unembed]
    else:
        def wanted(name: str) -> bool:
            return _matches(targets, strip_wrappers(name))
        chosen = []
        for name, m in linears.items():
            if not wanted(name):
                continue
            if id(m) in fused:
                chosen += fused[id(m)]
            elif id(m) in called:
                chosen.append(m)
            else:
                raise LoraError(f"target {strip_wrappers(name)!r} is not on the bridge's computation path (the "
                                "bridge never calls it), so an adapter there would change nothing")
    chosen = _honour_exclusions(config, hf, chosen)
    if not chosen:
        names = sorted({strip_wrappers(n).rpartition(".")[2] for n, m in linears.items() if id(m) in called})
        raise LoraError(f"target_modules={targets!r} match no linear module of this model; its linear modules "
                        f"are named {names}")
    first: dict[int, str] = {}
    for name, m in hf.named_modules():  # peft names each module once, by its first name
        first.setdefault(id(m), name)
    return sorted({first[id(m)] for m in chosen})


def _matches(spec: str | Collection[str], short: str) -> bool:
    """peft's rule for target_modules and exclude_modules: a string is a regex on the whole name, a list names
    modules by their last segments."""
    if isinstance(spec, str):
        return re.fullmatch(spec, short) is not None
    return any(short == t or short.endswith("." + t) for t in spec)


LAYER_PATTERNS = ("layers", "h", "blocks", "layer")  # where peft looks for a layer index in a module's name


def _layer_of(short: str, patterns: str | Collection[str] | None) -> int | None:
    names = [patterns] if isinstance(patterns, str) else list(patterns or LAYER_PATTERNS)
    found = re.search(r"(?:^|\.)(?:" + "|".join(map(re.escape, names)) + r")\.(\d+)\.", short)
    return int(found.group(1)) if found else None


def _honour_exclusions(config: Any, hf: torch.nn.Module, chosen: list[torch.nn.Module]) -> list[torch.nn.Module]:
    """Drop the modules that exclude_modules names and those outside layers_to_transform (resolved here,
    so that peft receives only the final list of names)."""
    names: dict[int, list[str]] = {}
    for name, m in hf.named_modules(remove_duplicate=False):
        names.setdefault(id(m), []).append(strip_wrappers(name))
    excluded, layers = config.exclude_modules, config.layers_to_transform
    wanted_layers = None if layers is None else ({layers} if isinstance(layers, int) else set(layers))
    kept = []
    for m in chosen:
        aliases = names.get(id(m), [])
        if excluded and any(_matches(excluded, a) for a in aliases):
            continue
        if wanted_layers is not None and not any(_layer_of(a, config.layers_pattern) in wanted_layers for a in aliases):
            continue
        kept.append(m)
    return kept


def _inject(config: Any, model: torch.nn.Module, full_names: list[str]) -> None:
    from peft import inject_adapter_in_model

    regex = "^(" + "|".join(re.escape(n) for n in full_names) + ")$"
    resolved = dataclasses.replace(config, target_modules=regex, exclude_modules=None, layers_to_transform=None,
                                   layers_pattern=None)  # already applied to the names
    with warnings.catch_warnings():  # peft flips fan_in_fan_out per module (Conv1D vs Linear) and says so
        warnings.filterwarnings("ignore", message=r"fan_in_fan_out is set to")
        inject_adapter_in_model(resolved, model)


def apply_lora(bridge: Any, config: Any) -> list[str]:
    """Inject LoRA adapters into the bridge's model in place; only the adapters stay trainable. Returns the
    Hugging Face names of the adapted modules."""
    check_lora_config(config)
    if lora_layers(bridge):
        raise LoraError("this bridge already carries LoRA adapters; load the base model again, or merge_lora() first")
    full = _targets(bridge, config)
    _inject(config, bridge.original_model, full)
    names = sorted(strip_wrappers(n) for n in full)
    setattr(bridge.original_model, _CONFIG_ATTR, dataclasses.replace(config, target_modules=set(names)))
    return names


def lora_config_of(bridge: Any) -> Any:
    """The LoraConfig the bridge was adapted with (target_modules resolved to Hugging Face names), or None."""
    return getattr(bridge.original_model, _CONFIG_ATTR, None)


def lora_layers(bridge: Any) -> dict[str, torch.nn.Module]:
    """The bridge's LoRA layers by Hugging Face name."""
    return {strip_wrappers(n): m for n, m in bridge.original_model.named_modules() if is_lora_layer(m)}


def add_lora_to_twin(bridge: Any, twin: torch.nn.Module) -> None:
    """Inject the bridge's adapters into a plain Hugging Face model of its class (the sampling twin), under
    the same names, so the twin can take the bridge's parameters."""
    config = lora_config_of(bridge)
    if config is not None:
        _inject(config, twin, sorted(config.target_modules))


def effective_tensor(module: Any, field: str) -> Tensor | None:
    """`module.weight` (or `.bias`) with its unmerged LoRA adapters added: what the module computes with."""
    if not is_lora_layer(module):
        return getattr(module, field, None)
    base = getattr(module.get_base_layer(), field, None)
    if field != "weight" or base is None or getattr(module, "merged", False):
        return base
    deltas = [module.get_delta_weight(a) for a in module.active_adapters if a in module.lora_A]
    return base + sum(deltas) if deltas else base


def _lora_slots(bridge: Any) -> list[tuple[torch.nn.Module, str, Any]]:
    """(parent, attribute, LoRA layer) for every place a LoRA layer hangs in the bridge (aliases included)."""
    return [(module, attr, child) for module in bridge.modules() for attr, child in module._modules.items()
            if child is not None and is_lora_layer(child)]


@contextlib.contextmanager
def adapters_merged(bridge: Any) -> Iterator[None]:
    """For the duration, each LoRA layer is replaced by its own base module holding the merged weight, so
    code that reads a projection's weight directly (the bridge's per-head q/k/v and output hooks) computes
    the adapted model; on exit the base weights are restored bit for bit and the adapters put back."""
    slots = _lora_slots(bridge)
    saved: dict[int, tuple[Any, Tensor]] = {}
    with torch.no_grad():
        for module, attr, layer in slots:
            base = layer.get_base_layer()
            if id(base) not in saved:
                merged = effective_tensor(layer, "weight")
                saved[id(base)] = (base, base.weight.detach().clone())
                base.weight.copy_(merged)
            module._modules[attr] = base
    try:
        yield
    finally:
        with torch.no_grad():
            for base, weight in saved.values():
                base.weight.copy_(weight)
        for module, attr, layer in slots:
            module._modules[attr] = layer


def merge_lora(bridge: Any) -> None:
    """Fold every adapter into its base weight and put the plain module back, in place."""
    for module, attr, layer in _lora_slots(bridge):
        if not getattr(layer, "merged", False):
            layer.merge()
        module._modules[attr] = layer.get_base_layer()
    hf = bridge.original_model
    for attr in (_CONFIG_ATTR, "peft_config", "_hf_peft_config_loaded"):
        if attr in vars(hf):
            delattr(hf, attr)
