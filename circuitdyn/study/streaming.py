"""One model in memory at a time: where each study model comes from, and loading it only for the work at hand.

A study names its models by spec (zoo name, local folder, checkpoint, hub id) or passes LoadedModels. A
spec is loaded when a step needs it and freed when the step ends, so a study's peak memory is its largest
model plus that step's work, whatever the number of models. A LoadedModel stays the caller's: used as
given, never freed. Every model is checked against the base (architecture, shape, tokenizer, dtype) when it
is first opened.
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch

from circuitdyn.models import LoadedModel, load_model, weights_sha256
from circuitdyn.study.config import StudyError
from circuitdyn.train.trained import is_checkpoint, load_trained

T = TypeVar("T")


@dataclass(frozen=True)
class ModelSource:
    """Where one study model comes from: a spec string, loaded in `dtype` on `device` when needed (a
    circuitdyn checkpoint is merged onto `base_spec`), or the caller's LoadedModel."""

    spec: str | LoadedModel
    base_spec: str | None = None
    dtype: torch.dtype = torch.float32
    device: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.spec, (str, LoadedModel)):
            raise StudyError(f"a model must be a spec string or a LoadedModel, got {type(self.spec).__name__}")

    @property
    def owned(self) -> bool:
        """Whether the study loads (and frees) this model itself."""
        return isinstance(self.spec, str)

    def describe(self) -> str:
        return self.spec if isinstance(self.spec, str) else f"a LoadedModel ({self.spec.provenance.spec})"

    def load(self) -> LoadedModel:
        if isinstance(self.spec, LoadedModel):
            return self.spec
        if is_checkpoint(self.spec):  # a circuitdyn training checkpoint (LoRA adapters merged), trained from the base
            return load_trained(self.spec, self.base_spec, device=self.device, dtype=self.dtype)
        return load_model(self.spec, dtype=self.dtype, device=self.device)


def with_model(source: ModelSource, work: Callable[[LoadedModel], T]) -> T:
    """`work(model)` on the loaded model, which is freed before this returns when the study loaded it
    (`work` must not keep a reference to it in what it returns)."""
    model = source.load()
    try:
        return work(model)
    finally:
        del model
        if source.owned:
            release_memory()


def release_memory() -> None:
    """Free what freed models held: collect their reference cycles (hooks, closures) and return cached CUDA
    blocks to the driver."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


@dataclass(frozen=True)
class BaseFacts:
    """What every study model must share with the base, and what later steps need from it without loading it."""

    architecture: str
    tokenizer: Any
    fingerprint: tuple[Any, ...]
    shape: tuple[int, int]  # (n_layers, d_model)
    dtype: torch.dtype
    d_vocab: int

    @staticmethod
    def of(model: LoadedModel) -> "BaseFacts":
        return BaseFacts(model.provenance.architecture, model.tokenizer, tokenizer_fingerprint(model.tokenizer),
                         (int(model.bridge.cfg.n_layers), int(model.bridge.cfg.d_model)), _dtype(model),
                         int(model.cfg.d_vocab))

    def as_record(self) -> dict[str, Any]:
        """The facts but the tokenizer, as JSON (the tokenizer is read again from the model's folder)."""
        return {"architecture": self.architecture, "shape": list(self.shape), "dtype": _name(self.dtype),
                "d_vocab": self.d_vocab}

    @staticmethod
    def from_record(record: Mapping[str, Any], tokenizer: Any) -> "BaseFacts":
        return BaseFacts(str(record["architecture"]), tokenizer, tokenizer_fingerprint(tokenizer),
                         (int(record["shape"][0]), int(record["shape"][1])), getattr(torch, str(record["dtype"])),
                         int(record["d_vocab"]))

    def check(self, name: str, model: LoadedModel) -> None:
        """Refuse a model the base cannot be compared with, naming what differs and the fix."""
        if model.provenance.architecture != self.architecture:
            raise StudyError(f"{name} is a {model.provenance.architecture} but the base is a {self.architecture}: a "
                             "study compares models of one architecture family (the same graph); compare tuned "
                             "versions of the base only")
        if tokenizer_fingerprint(model.tokenizer) != self.fingerprint:
            raise StudyError(f"{name} has a different tokenizer (vocabulary, chat template or eos) from the base: "
                             "its generations and scored tokens would not be comparable; use tuned copies that "
                             "share the base's tokenizer")
        if (int(model.bridge.cfg.n_layers), int(model.bridge.cfg.d_model)) != self.shape:
            raise StudyError(f"{name} has a different shape from the base; a study needs one graph for all models")
        if _dtype(model) != self.dtype:
            raise StudyError(f"{name} runs in {_name(_dtype(model))} and the base in {_name(self.dtype)}: the "
                             "precision difference would read as a change of the circuit; load every model in one "
                             "dtype")
        if model.bridge.training:
            raise StudyError(f"{name} is in training mode (dropout): call model.bridge.eval() first")


def tokenizer_fingerprint(tok: Any) -> tuple[Any, ...]:
    return (tuple(sorted(tok.get_vocab().items())), getattr(tok, "chat_template", None), tok.eos_token_id)


def model_record(model: LoadedModel) -> dict[str, Any]:
    """What a model ran as: its provenance and the hash of the weights it actually ran with (a modified copy
    keeps its base's provenance)."""
    return {**model.provenance.as_dict(), "weights_sha256": weights_sha256(model)}


def _dtype(model: LoadedModel) -> torch.dtype:
    return next(model.bridge.parameters()).dtype


def _name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def local_folder(spec: str, model_dir: str | Path | None) -> str:
    """`spec` with a hub id ("org/name") mapped to its folder under `model_dir` (DIR/org/name, else DIR/name),
    for machines without the hub; any other spec, or a hub id with no such folder there, is returned as is."""
    if model_dir is None or spec.startswith(("zoo:", ".", "/", "~")) or spec.count("/") != 1:
        return spec
    root = Path(model_dir).expanduser()
    for folder in (root / spec, root / spec.split("/")[1]):
        if (folder / "config.json").is_file():
            return str(folder)
    return spec
