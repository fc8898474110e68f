"""The bridge's weights as a Hugging Face model: original parameter names, fused projections re-fused.

A bridge's state dict names its weights through its wrappers (`..._original_component...`) and, for
families whose attention projects q, k and v with one fused matrix (GPT-2's `c_attn`, GPT-NeoX's
`query_key_value`), computes with split q, k and v copies that training updates while the fused matrix
goes stale. `hf_state_dict` strips the wrapper names and writes the split copies back into the fused
matrix. The inverse of each family's split is found without knowing its layout: the split function is run
on a copy of the attention whose parameters hold their own flat indices, and the q, k, v weights it returns
say which fused entry each of their entries came from (refused unless every entry is accounted for once).
"""

from __future__ import annotations

import copy
import json
import weakref
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from circuitdyn.models.files import PLAIN_TOKENIZER_MARKER, is_plain_tokenizer
from circuitdyn.models.lora import effective_tensor, is_lora_layer
from circuitdyn.models.wrapper_names import joint_attentions, strip_wrappers


class ExportError(RuntimeError):
    """The bridge's weights cannot be written as the Hugging Face model it wraps."""


_strip = strip_wrappers


_SOURCES: "weakref.WeakKeyDictionary[Any, dict[str, tuple[str, Tensor]]]" = weakref.WeakKeyDictionary()


def _fused_sources(attn: Any) -> dict[str, tuple[str, Tensor]]:
    """For the split q, k, v linears' weight and bias, where each entry comes from in the attention's own
    parameters: {"q.weight": (param name, flat indices of the same shape), ...}. It depends only on the
    attention's structure, so it is worked out once per attention (the probe copies its weights)."""
    if attn in _SOURCES:
        return _SOURCES[attn]
    probe = copy.deepcopy(attn.original_component).to(torch.float64)
    offsets: dict[str, tuple[int, int]] = {}
    start = 0
    with torch.no_grad():
        for name, p in probe.named_parameters():
            p.copy_(torch.arange(start, start + p.numel(), dtype=torch.float64).reshape(p.shape))
            offsets[name] = (start, start + p.numel())
            start += p.numel()
        q, k, v = attn.split_qkv_matrix(probe)
    out: dict[str, tuple[str, Tensor]] = {}
    for kind, linear in (("q", q), ("k", k), ("v", v)):
        for field in ("weight", "bias"):
            t = getattr(linear, field, None)
            if t is None:
                continue
            flat = t.detach().to(torch.float64).round().long()
            source = next((name for name, (lo, hi) in offsets.items() if bool(((flat >= lo) & (flat < hi)).all())), None)
            if source is None:
                raise ExportError(f"{type(attn).__name__}: the split of its fused projection is not a plain "
                                  "re-indexing of one parameter; cannot re-fuse it")
            out[f"{kind}.{field}"] = (_strip(source), flat - offsets[source][0])
    for param in {name for name, _ in out.values()}:  # every fused entry comes back exactly once
        used = torch.cat([index.reshape(-1) for name, index in out.values() if name == param])
        size = offsets[next(n for n in offsets if _strip(n) == param)]
        if used.numel() != size[1] - size[0] or torch.unique(used).numel() != used.numel():
            raise ExportError(f"{type(attn).__name__}: its q, k, v split does not cover {param} exactly once; "
                              "cannot re-fuse it")
    _SOURCES[attn] = out
    return out


def hf_state_dict(bridge: Any) -> dict[str, Tensor]:
    """The weights under the Hugging Face model's own names, fused projections rebuilt from the split
    copies the bridge computes (and trains) with. Keys are exactly those of a fresh model of its class."""
    hf = bridge.original_model
    state = {_strip(k): v for k, v in hf.state_dict().items()}
    # LoRA adapters merged into their weights, under every name of the adapted module (GPT-2's `c_proj`
    # is also the bridge's `o`) and of the module they wrap
    adapted = {id(m): m for m in hf.modules() if is_lora_layer(m)}
    adapted |= {id(m.get_base_layer()): m for m in list(adapted.values())}
    for name, module in hf.named_modules(remove_duplicate=False):
        if id(module) in adapted:
            for field in ("weight", "bias"):
                t = effective_tensor(adapted[id(module)], field)
                if t is not None:
                    state[f"{_strip(name)}.{field}"] = t.detach()
    names = {id(m): _strip(n) for n, m in hf.named_modules()}
    for attn in joint_attentions(bridge):
        prefix = names.get(id(attn.original_component))
        if prefix is None:
            raise ExportError(f"cannot find {type(attn).__name__}'s module in the Hugging Face model")
        for key, (param, index) in _fused_sources(attn).items():
            kind, field = key.split(".")
            tensor = effective_tensor(getattr(attn, kind).original_component, field)
            if tensor is None:
                raise ExportError(f"{type(attn).__name__}.{kind} has no {field}; cannot re-fuse it")
            trained = tensor.detach()
            target_name = f"{prefix}.{param}" if prefix else param
            if target_name not in state:
                raise ExportError(f"{target_name}: not in the model's state dict")
            fused = state[target_name].clone()
            flat = fused.reshape(-1)
            flat[index.reshape(-1)] = trained.reshape(-1).to(flat.dtype)
            state[target_name] = fused
    expected = _expected_keys(hf)
    missing = [k for k in expected if k not in state]
    if missing:
        raise ExportError(f"the bridge has no weights for {missing[:4]}; cannot write a Hugging Face folder")
    return {k: state[k].detach().contiguous() for k in expected}


def _expected_keys(hf: Any) -> list[str]:
    """The state-dict keys of a model of the same class and config, without allocating its weights."""
    with torch.device("meta"):
        fresh = type(hf)(hf.config)
    return list(fresh.state_dict().keys())


def hf_model(bridge: Any) -> Any:
    """A plain Hugging Face model of the bridge's class holding (copies of) its current weights, LoRA
    adapters merged: it computes what the bridge computes."""
    hf = bridge.original_model
    state = hf_state_dict(bridge)
    config = copy.deepcopy(hf.config)
    if "quantization_config" in vars(config):  # the exported weights are plain floats, whatever was loaded
        del config.quantization_config
    with torch.device("meta"):
        fresh = type(hf)(config)
    fresh.load_state_dict({k: v.clone() for k, v in state.items()}, assign=True, strict=True)
    fresh.tie_weights()
    buffers = {_strip(n): b for n, b in hf.named_buffers()}  # non-persistent ones (rotary inv_freq) are not in a state dict
    for name, buffer in list(fresh.named_buffers()):
        if buffer.is_meta and name in buffers:
            owner, _, attr = name.rpartition(".")
            fresh.get_submodule(owner).register_buffer(attr, buffers[name].clone(), persistent=False)
    return fresh.eval()


#: configuration the bridge switches on in the model it wraps (to capture attention patterns), which an
#: export must not carry: `generate()` would return an output object with attentions instead of token ids
BRIDGE_SETTINGS = {"config.json": ("output_attentions", "use_hook_mlp_in", "use_attn_result", "use_split_qkv_input",
                                   "use_attn_in"),
                   "generation_config.json": ("output_attentions", "return_dict_in_generate")}


def _restore_settings(folder: Path, source: Path | None) -> None:
    """Give each BRIDGE_SETTINGS key of the written files the value of the source folder's own files (the
    folder the model was loaded from), or drop it (Hugging Face's default, off) where the source has none."""
    for name, keys in BRIDGE_SETTINGS.items():
        path = folder / name
        if not path.exists():
            continue
        written = json.loads(path.read_text())
        original = json.loads((source / name).read_text()) if source is not None and (source / name).is_file() else {}
        for key in keys:
            if key in original:
                written[key] = original[key]
            else:
                written.pop(key, None)
        path.write_text(json.dumps(written, indent=2, sort_keys=True) + "\n")


def save_hf_folder(bridge: Any, tokenizer: Any, folder: Path, *, source: str | Path | None = None) -> Path:
    """config.json, model.safetensors (Hugging Face names), generation_config.json and the tokenizer files
    in `folder` (which must exist), so that AutoModelForCausalLM.from_pretrained and load_model open it as the
    model it came from: the configuration the bridge switched on is restored to `source`'s (the folder the
    model was loaded from, when it is one), and a plain fast tokenizer is marked as such."""
    model = hf_model(bridge)
    model.save_pretrained(str(folder), safe_serialization=True)
    tokenizer.save_pretrained(str(folder))
    source_dir = Path(source) if source is not None and Path(source).is_dir() else None
    _restore_settings(Path(folder), source_dir)
    if is_plain_tokenizer(tokenizer):
        (Path(folder) / PLAIN_TOKENIZER_MARKER).write_text(json.dumps({"class": "PreTrainedTokenizerFast"}) + "\n")
    return folder
