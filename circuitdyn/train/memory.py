"""Memory and speed knobs of the trainer's log-probability passes: mixed precision, gradient checkpointing,
and an estimate of a step's peak memory that refuses a configuration before it runs out.

Master weights stay float32 in every mode: `Precise` runs the forward under `torch.autocast` (bf16 or
fp16 matmuls), the backward follows the forward's dtypes, and the optimizer updates float32 weights.
Gradient checkpointing keeps only each decoder layer's input through the forward and recomputes the layer
in the backward; the trainer runs in eval mode (no dropout), so the recomputation is exact.
"""

from __future__ import annotations

import functools
from enum import Enum
from typing import Any

import torch
import torch.utils.checkpoint

from circuitdyn.core.saved_tensors import saved_tensor_storages


class Precision(str, Enum):
    NO = "no"  # float32 throughout
    BF16 = "bf16"  # bfloat16 autocast, float32 master weights
    FP16 = "fp16"  # float16 autocast with loss scaling (the trainer's GradScaler), float32 master weights

    @property
    def dtype(self) -> torch.dtype | None:
        return {Precision.NO: None, Precision.BF16: torch.bfloat16, Precision.FP16: torch.float16}[self]


class Precise(torch.nn.Module):
    """A Hugging Face causal LM whose forward runs under autocast at `precision` (identity for "no")."""

    def __init__(self, model: torch.nn.Module, precision: Precision) -> None:
        super().__init__()
        self.model = model
        self.precision = precision

    def forward(self, **kwargs: Any) -> Any:
        dtype = self.precision.dtype
        if dtype is None:
            return self.model(**kwargs)
        device = next(self.model.parameters()).device
        with torch.autocast(device_type=device.type, dtype=dtype):
            return self.model(**kwargs)


def with_precision(model: torch.nn.Module, precision: Precision) -> torch.nn.Module:
    return model if precision is Precision.NO else Precise(model, precision)


def checkpoint_layers(model: torch.nn.Module) -> int:
    """Recompute each decoder layer in the backward instead of keeping its activations; returns how many
    layers were wrapped. The layers are the ones transformers marks for checkpointing."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    layers = [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]
    for layer in layers:
        if getattr(layer, "_circuitdyn_checkpointed", False):
            continue
        inner = layer.forward

        @functools.wraps(inner)
        def forward(*args: Any, _inner: Any = inner, **kwargs: Any) -> Any:
            if not torch.is_grad_enabled():
                return _inner(*args, **kwargs)
            return torch.utils.checkpoint.checkpoint(_inner, *args, use_reentrant=False, **kwargs)
        layer.forward = forward
        object.__setattr__(layer, "_circuitdyn_checkpointed", True)
    return len(layers)


def saved_bytes_per_row(scorer: torch.nn.Module, tokens: int, vocab: int) -> int:
    """Bytes autograd keeps for the backward of one row of `tokens` tokens through `scorer` (measured on
    one row, parameters excluded), plus the float32 log-softmax and entropy terms over `vocab`."""
    device = next(scorer.parameters()).device
    ids = torch.zeros(1, tokens, dtype=torch.long, device=device)
    with saved_tensor_storages(scorer.parameters()) as storages:
        scorer(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False)
    return int(sum(storages.values())) + 3 * tokens * vocab * 4


def available_bytes(device: torch.device) -> int | None:
    """Free memory on `device` (CUDA: free device memory; CPU: MemAvailable), None where unknown."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    if device.type == "cpu":
        try:
            with open("/proc/meminfo") as f:
                for line in f:
                    if line.startswith("MemAvailable:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            return None
    return None


def step_bytes(parameters: list[torch.nn.Parameter], trainable: list[torch.nn.Parameter], per_row: int,
               rows: int, reference_bytes: int) -> dict[str, int]:
    """A training step's peak memory by part: weights, gradients and AdamW's two moments (float32) of the
    trainable parameters, the saved activations of one micro-batch (x 1.5 for the backward's transients),
    and a frozen reference copy where the algorithm keeps one."""
    weights = sum(p.numel() * p.element_size() for p in parameters)
    train = sum(p.numel() for p in trainable)
    parts = {"weights": weights, "gradients": 4 * train, "optimizer": 8 * train,
             "activations": int(1.5 * per_row * rows), "reference": reference_bytes}
    return parts | {"total": sum(parts.values())}
