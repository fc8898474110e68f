"""Circuit snapshots during a trl (or any transformers.Trainer) run: `CircuitSnapshotCallback`.

Most RL post-training happens in trl. This callback takes the same snapshots as circuitdyn's own trainer
(`dynamics.snapshots.CircuitSnapshot`: an attribution of a fixed probe batch and its circuit metrics)
before training and every `every` steps of a GRPOTrainer, DPOTrainer, PPOTrainer or plain Trainer run:

    probe = tokenize_pairs(tokenizer, task.examples(32), answer_tokens=1)
    snapshots = CircuitSnapshotCallback(CircuitSnapshot(probe, every=10, path=Path("runs/x/circuits.jsonl")))
    trl.GRPOTrainer(model=model, ..., callbacks=[snapshots]).train()
    snapshots.rows  # one record per snapshot, also appended to `path`

At each snapshot the trained model's current weights are copied into a TransformerBridge (a copy: the
bridge rewires the modules it wraps, which the running trainer and its optimizer must not see), so the
snapshot costs one model copy of memory while it runs. Provenance records the weights' hash and the trl
run (trainer class, step). A trl checkpoint folder (`checkpoint-N/`, a Hugging Face folder) is studied like
any other: `load_model(folder)`, `run_study(base, {"grpo": folder}, ...)`; a peft run saves adapter folders:
merge them first (`PeftModel.from_pretrained(base, folder).merge_and_unload().save_pretrained(out)`).
Snapshots of a peft model attribute the merged model (the adapters are merged into the copy).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from transformers import TrainerCallback

from circuitdyn.dynamics.snapshots import CircuitSnapshot
from circuitdyn.models import LoadedModel, Provenance
from circuitdyn.models.weights import current_sha256, record_training


class _Run:
    """What CircuitSnapshot.record reads of a trainer: the model to attribute."""

    def __init__(self, model: LoadedModel) -> None:
        self.model = model


def bridge_copy(model: Any, tokenizer: Any, *, spec: str, training: dict[str, Any]) -> LoadedModel:
    """A LoadedModel over a copy of a Hugging Face model's current weights (eval mode, same device)."""
    from transformer_lens.model_bridge import TransformerBridge

    live = getattr(model, "module", model)  # unwrap DDP wrappers
    if hasattr(live, "merge_and_unload"):  # a peft model: its adapters merged, into a copy (training goes on)
        live = copy.deepcopy(live).merge_and_unload()
    # a fresh model of the same class with copied weights: a deepcopy would keep the forward wrappers that
    # trainers install (accelerate's), which call the original model and bypass the bridge's hooks
    device, dtype = next(live.parameters()).device, next(live.parameters()).dtype
    with torch.device(device):
        hf = type(live)(copy.deepcopy(live.config)).to(dtype)
    hf.load_state_dict(live.state_dict())
    hf.eval()
    bridge = TransformerBridge.boot_transformers(str(spec), hf_model=hf, tokenizer=tokenizer, device=device, dtype=dtype)
    bridge.eval()
    record_training(bridge, training)
    digest = current_sha256(bridge)
    provenance = Provenance(spec=str(spec), architecture=type(hf).__name__, family="other",
                            dtype=str(dtype).replace("torch.", ""), device=str(device),
                            n_params=sum(p.numel() for p in hf.parameters()), weights_sha256=digest,
                            source=str(spec), training=training)
    return LoadedModel(bridge, tokenizer, provenance)


class CircuitSnapshotCallback(TrainerCallback):
    """Runs `snapshot` (a CircuitSnapshot) before training and every `snapshot.every` global steps of a
    transformers.Trainer-based run (see the module docstring)."""

    def __init__(self, snapshot: CircuitSnapshot, tokenizer: Any = None) -> None:
        if not isinstance(snapshot, CircuitSnapshot):
            raise TypeError(f"snapshot must be a circuitdyn.dynamics.snapshots.CircuitSnapshot, got "
                            f"{type(snapshot).__name__}")
        self.snapshot = snapshot
        self.tokenizer = tokenizer
        self.rows = snapshot.rows

    def _take(self, step: int, model: Any, tokenizer: Any, trainer_name: str) -> None:
        tokenizer = self.tokenizer or tokenizer
        if tokenizer is None:
            raise ValueError("CircuitSnapshotCallback needs the tokenizer: pass it, or the trainer's processing_class")
        spec = getattr(getattr(model, "config", None), "_name_or_path", "") or type(model).__name__
        was_training = model.training
        loaded = bridge_copy(model, tokenizer, spec=spec, training={"algorithm": f"trl:{trainer_name}", "step": step,
                                                                    "base_spec": spec})
        model.train(was_training)
        self.snapshot.record(_Run(loaded), step)
        del loaded

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        if state.global_step == 0:
            self._take(0, model, kwargs.get("processing_class") or kwargs.get("tokenizer"), _name(kwargs))

    def on_step_end(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        if state.global_step % self.snapshot.every == 0:
            self._take(state.global_step, model, kwargs.get("processing_class") or kwargs.get("tokenizer"), _name(kwargs))


def _name(kwargs: dict[str, Any]) -> str:
    trainer = kwargs.get("trainer")
    return type(trainer).__name__ if trainer is not None else "Trainer"
