"""What a run trains and what computes with it: LoRA adapters or every weight, the classifier and backbone
parameter groups, the fast modules that sample and score the policy, and a check that a step fits in memory.

With `peft` set, adapters are injected into the bridge's own modules (`circuitdyn.models.lora`), so the model the
trainer updates is still the model attribution reads. Only the adapters train, except under a
classifier-first schedule: when the unembedding has no adapter of its own, its full weight trains (on
tied-embedding models the input embedding with it), as peft's `modules_to_save` would.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch

from circuitdyn.models import clone_bridge
from circuitdyn.models.lora import apply_lora
from circuitdyn.models.surface import classifier_parameters, is_tied, sampling_twin, untie_classifier
from circuitdyn.train.algorithm import TrainingError
from circuitdyn.train.config import TrainConfig
from circuitdyn.train.memory import available_bytes, checkpoint_layers, saved_bytes_per_row, step_bytes, with_precision


class FitError(RuntimeError):
    """A configuration that cannot fit in the device's free memory; the message names the knobs."""


def adapt(bridge: Any, config: TrainConfig) -> list[str]:
    """Inject the config's LoRA adapters (none for full fine-tuning); returns the adapted module names. What
    will train must not be float16 (check_trainable_dtype)."""
    adapted = apply_lora(bridge, config.peft) if config.peft is not None else []
    check_trainable_dtype(bridge)
    return adapted


def check_trainable_dtype(bridge: Any) -> None:
    """Refuse float16 weights to train: Adam's updates underflow there, so the first step leaves non-finite
    weights whatever the learning rate."""
    if any(p.requires_grad and p.dtype == torch.float16 for p in bridge.parameters()):
        raise TrainingError("the model's trainable weights are float16, where Adam's updates underflow (a step at any "
                            "learning rate leaves non-finite weights). Load the model in float32 (load_model(spec, "
                            "dtype=torch.float32)) and set fp16=True (float16 autocast, float32 master weights) or "
                            "bf16=True")


def frozen_copy(bridge: Any) -> Any:
    """The reference policy: a copy of the bridge, eval mode, nothing trainable."""
    ref = clone_bridge(bridge)
    ref.eval()
    for p in ref.parameters():
        p.requires_grad_(False)
    return ref


def untie_if_asked(bridge: Any, config: TrainConfig) -> None:
    """Under a classifier-first schedule on a tied-embedding model: untie when the plan says so, else warn
    that stage 1 moves the input embedding too (and the eNTK's classifier/backbone split is not exact)."""
    plan = config.schedule
    if plan is None or not is_tied(bridge):
        return
    if plan.untie:
        untie_classifier(bridge)
        return
    warnings.warn("the unembedding is tied to the input embedding: the classifier-first stage also moves the "
                  "embedding, and the classifier/backbone split of the eNTK is not exact. Set untie_classifier=True "
                  "(CFRLConfig) or ClassifierFirst(untie=True) to give the classifier its own copy", stacklevel=3)


def parameter_groups(bridge: Any, config: TrainConfig) -> tuple[list[torch.nn.Parameter], list[torch.nn.Parameter]]:
    """(classifier, backbone): the trainable parameters of the unembedding (and final norm where the schedule
    trains it), and every other trainable parameter."""
    plan = config.schedule
    classifier = classifier_parameters(bridge, final_norm=plan.final_norm if plan is not None else False)
    if plan is not None and not any(p.requires_grad for p in classifier):
        for p in classifier:  # LoRA without an adapter on the unembedding: stage 1 trains it whole
            p.requires_grad_(True)
    classifier = [p for p in classifier if p.requires_grad]
    ids = {id(p) for p in classifier}
    backbone = [p for p in bridge.parameters() if p.requires_grad and id(p) not in ids]
    return classifier, backbone


def scorers(bridge: Any, reference: Any, config: TrainConfig) -> tuple[Any, Any, Any]:
    """(sampler, scorer, reference scorer): plain Hugging Face twins sharing the bridge's parameters (the
    same log-probs bit for bit, without the wrappers), under the config's precision; the scorer's layers
    are checkpointed when asked."""
    sampler = sampling_twin(bridge)
    if config.gradient_checkpointing:
        if sampler is bridge.original_model:  # checkpointing it would re-run attribution's hooks in backwards
            warnings.warn(f"gradient_checkpointing is not applied to {type(sampler).__name__}: its log-probs run "
                          "through the bridge's own modules (no parameter-sharing twin), which attribution also "
                          "hooks", stacklevel=3)
        else:
            checkpoint_layers(sampler)
    policy = with_precision(sampler, config.precision)  # samples and scores: one module
    reference_twin = with_precision(sampling_twin(reference), config.precision) if reference is not None else None
    return policy, policy, reference_twin


def check_lengths(bridge: Any, config: TrainConfig, prompt_tokens: int) -> None:
    """Refuse stop tokens outside the vocabulary (they would never stop anything) and completions that cannot
    fit the context of a model with learned positions (sampling would index past its position table)."""
    vocab = int(bridge.cfg.d_vocab)
    outside = [i for i in config.stop_token_ids if i >= vocab]
    if outside:
        raise TrainingError(f"stop_token_ids {outside} are outside the vocabulary (token ids 0 to {vocab - 1}): they "
                            "would never stop a completion; give ids of this tokenizer (tokenizer.convert_tokens_to_ids)")
    n_ctx = int(getattr(bridge.cfg, "n_ctx", 0) or 0)
    if not n_ctx or prompt_tokens + config.max_completion_length <= n_ctx:
        return
    past = (f"prompts of up to {prompt_tokens} tokens plus max_completion_length={config.max_completion_length} pass "
            f"the model's context of {n_ctx} positions")
    if getattr(bridge.cfg, "positional_embedding_type", "") == "standard":
        fix = (f"lower max_completion_length to at most {n_ctx - prompt_tokens}" if prompt_tokens < n_ctx else
               "the prompts alone fill it: shorten them or drop the longest")
        raise TrainingError(f"{past}, and it has learned positions, none beyond it: {fix}")
    warnings.warn(f"{past}, beyond which it was never trained (rotary positions run there, untrained)", stacklevel=4)


def check_fits(bridge: Any, scorer: Any, reference: Any, config: TrainConfig, prompt_tokens: int,
               device: torch.device) -> dict[str, int]:
    """A step's estimated peak memory by part; refuses (naming the knobs) when it exceeds the device's free
    memory, and warns above 80% of it."""
    rows = config.per_device_train_batch_size // config.gradient_accumulation_steps
    tokens = prompt_tokens + config.max_completion_length
    vocab = int(bridge.cfg.d_vocab)
    check_lengths(bridge, config, prompt_tokens)
    per_row = saved_bytes_per_row(scorer, tokens, vocab)
    ref = sum(p.numel() * p.element_size() for p in reference.parameters()) if reference is not None else 0
    params = list(bridge.parameters())
    parts = step_bytes(params, [p for p in params if p.requires_grad], per_row, rows, ref)
    free = available_bytes(device)
    if free is None:
        return parts
    mib = lambda b: f"{b / 2**20:,.0f} MiB"
    detail = ", ".join(f"{k} {mib(v)}" for k, v in parts.items() if k != "total")
    if parts["total"] > free:
        raise FitError(f"a training step needs about {mib(parts['total'])} ({detail}) but {device} has "
                           f"{mib(free)} free. Lower per_device_train_batch_size or raise gradient_accumulation_steps "
                           "(smaller micro-batches), set gradient_checkpointing=True, or train LoRA adapters (peft=...)")
    if parts["total"] > 0.8 * free:
        warnings.warn(f"a training step needs about {mib(parts['total'])} of the {mib(free)} free on {device} ({detail})",
                      stacklevel=3)
    return parts
