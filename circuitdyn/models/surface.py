"""The model surface that training, dynamics and attribution share: what "the classifier" is, the plain
Hugging Face twin that samples fast, and random generators on the model's own device.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import Tensor

from circuitdyn.core.grads import requires_grad
from circuitdyn.models.lora import add_lora_to_twin
from circuitdyn.models.wrapper_names import strip_wrappers


class SurfaceError(ValueError):
    """The model lacks a part of the surface (e.g. a linear classifier); the message names it."""


def classifier_parameters(bridge: Any, *, final_norm: bool = False) -> list[torch.nn.Parameter]:
    """The classifier: the unembedding (tied to the embedding where the model ties them) and optionally
    the final norm."""
    params = list(bridge.unembed.parameters())
    if final_norm:
        params += list(bridge.ln_final.parameters())
    return params


def classifier_linear(bridge: Any) -> tuple[Tensor, Tensor | None]:
    """The classifier as a linear map on the final normalised residual: (weight [vocab, d], bias or None),
    the Parameters of the same module `classifier_parameters` returns."""
    unembed = bridge.unembed
    module = getattr(unembed, "original_component", unembed)
    weight = getattr(module, "weight", None)
    if not isinstance(weight, torch.nn.Parameter):
        raise SurfaceError("the model has no unembedding weight parameter (bridge.unembed): the feature/backbone "
                           "split needs a linear classifier on the final residual")
    bias = getattr(module, "bias", None)
    return weight, bias if isinstance(bias, torch.nn.Parameter) else None


def is_tied(bridge: Any) -> bool:
    """Whether the unembedding shares its matrix with the input embedding."""
    weight, _ = classifier_linear(bridge)
    return any(weight is p for p in bridge.embed.parameters())


def untie_classifier(bridge: Any) -> bool:
    """Give a tied unembedding its own copy of the shared matrix (the model computes the same until one
    of the two trains); returns whether it was tied. The model's config says so too, so exports keep both."""
    if not is_tied(bridge):
        return False
    unembed = bridge.unembed
    module = getattr(unembed, "original_component", unembed)
    module.weight = torch.nn.Parameter(module.weight.detach().clone(), requires_grad=module.weight.requires_grad)
    config = bridge.original_model.config
    for c in {id(c): c for c in (config, config.get_text_config())}.values():
        c.tie_word_embeddings = False
    return True


def seeded_generator(device: torch.device | str, seed: int) -> torch.Generator:
    """A torch.Generator on `device` (sampling on CUDA needs a CUDA generator), seeded."""
    return torch.Generator(device=torch.device(device)).manual_seed(seed)


def _no_init_weights() -> Any:
    from transformers.initialization import no_init_weights

    return no_init_weights()


def sampling_twin(bridge: Any, attention: str | None = None) -> torch.nn.Module:
    """A plain Hugging Face model whose parameters ARE the bridge's (the same Parameter objects), without the
    bridge's wrapper components: ~1.7x faster sampling, identical samples. Updates to the bridge are seen at
    once. Falls back to `bridge.original_model` when any weight cannot be shared. `attention` ("sdpa") gives
    the twin its own copy of the configuration with that attention implementation (the bridge's stays)."""
    hf = bridge.original_model
    state = {strip_wrappers(k): v for k, v in hf.state_dict(keep_vars=True).items()}
    config = hf.config
    if attention is not None:
        config = copy.deepcopy(config)
        config.output_attentions = False  # the bridge's setting, which only eager attention supports
        config._attn_implementation = attention
    with _no_init_weights():  # its weights are the bridge's: initialising them first would be wasted (1.6 s at 135M)
        twin = type(hf)(config)
    add_lora_to_twin(bridge, twin)  # the same adapters, so the twin can hold the bridge's adapter weights
    expected = list(twin.state_dict().keys())
    if any(k not in state for k in expected):
        return hf
    twin.load_state_dict({k: state[k] for k in expected}, assign=True)
    # The parameters the bridge actually computes with must all be the twin's: the GPT-2 bridge, for one,
    # computes with split q/k/v copies of c_attn and adds an unembedding bias, so its twin would be stale.
    params = list(bridge.parameters())
    if {id(p) for p in params} <= {id(p) for p in twin.parameters()}:  # every parameter shared: nothing to probe
        return twin.eval()
    probe = torch.zeros(1, 2, dtype=torch.long, device=params[0].device if params else None)
    with requires_grad(params, True), torch.enable_grad():  # a frozen reference is probed too, then re-frozen
        grads = torch.autograd.grad(bridge(probe).float().sum(), params, allow_unused=True) if params else []
    used = {id(p) for p, g in zip(params, grads) if g is not None}
    if used - {id(p) for p in twin.parameters()}:
        return hf
    return twin.eval()
