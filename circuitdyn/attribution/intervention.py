"""Interventions: what each source is set to, and recording sources in the runs that need them.

One place decodes an ablation into an intervention plan, for every method that scores or patches edges
(EAP, EAP-IG, exact patching, circuit patching):

  noising    run = clean,   counterfactual = the corrupt run's activations
  denoising  run = corrupt, counterfactual = the clean run's activations  (the batch is swapped)
  zero       run = clean,   counterfactual = 0
  mean       run = clean,   counterfactual = each source's mean activation over the clean prompts

Source recording writes activations into `[n_src, B, T, d]` buffers: the counterfactual forward stores
them; the run forward subtracts the run's, leaving delta = counterfactual - run, mapped through the
post-attention norm where the model has one (Gemma3): `N(out + r_cf - r) - N(out)`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from circuitdyn.attribution.engine import HookList, forward
from circuitdyn.attribution.errors import AttributionError
from circuitdyn.attribution.head_sources import HeadSource, head_sources, results_off
from circuitdyn.attribution.objectives import ObjectiveFn, checked
from circuitdyn.attribution.recompute import observer
from circuitdyn.core.choices import parse_choice
from circuitdyn.graph import Graph
from circuitdyn.graph.head_forks import wrapped_module
from circuitdyn.graph.hook_flags import split_qkv_off
from circuitdyn.models import LoadedModel, as_bridge, context_of
from circuitdyn.tasks.base import PairBatch, TaskExample, check_context, tokenize_pairs

SourceBuffer = Float[Tensor, "n_src batch seq d_model"]


class Ablation(str, Enum):
    NOISING = "noising"
    DENOISING = "denoising"
    ZERO = "zero"
    MEAN = "mean"


class Counterfactual(str, Enum):
    """What each source is set to. The run batch's `clean` is always the run, its `corrupt` the
    counterfactual input (denoising swaps the batch)."""

    CORRUPT = "corrupt"
    ZERO = "zero"
    MEAN = "mean"


@dataclass(frozen=True)
class Intervention:
    """An ablation decoded: which batch to run and which counterfactual to patch in."""

    ablation: Ablation
    counterfactual: Counterfactual

    @classmethod
    def of(cls, ablation: Ablation | str) -> "Intervention":
        ablation = parse_choice(Ablation, ablation, "ablation", AttributionError)
        cf = {Ablation.ZERO: Counterfactual.ZERO, Ablation.MEAN: Counterfactual.MEAN}.get(ablation, Counterfactual.CORRUPT)
        return cls(ablation, cf)

    def run_batch(self, batch: PairBatch) -> PairBatch:
        """The batch whose `clean` is the run and whose `corrupt` is the counterfactual input."""
        return batch.swapped() if self.ablation is Ablation.DENOISING else batch

    def check(self, batch: PairBatch) -> None:
        """Refuse pairs whose clean and corrupt ids are identical when the counterfactual is a corrupt run:
        every delta would be 0 (e.g. characters the tokenizer maps to one unknown token)."""
        same = batch.identical_pairs() if self.counterfactual is Counterfactual.CORRUPT else []
        if same:
            raise AttributionError(
                f"pairs {same[:8]} have identical clean and corrupt token ids, so {self.ablation.value} would "
                "score every edge 0: make the corrupt prompts differ, or use ablation='zero' / 'mean', which "
                "need no corrupt prompt"
            )

    @property
    def needs_means(self) -> bool:
        return self.counterfactual is Counterfactual.MEAN


def as_batch(model: Any, data: PairBatch | Sequence[TaskExample], answer_tokens: int) -> PairBatch:
    """A PairBatch as given, or tokenized from TaskExamples with the model's tokenizer; refused when it is
    longer than the model's context."""
    n_ctx = context_of(model)
    if isinstance(data, PairBatch):
        check_context(data.clean.shape[1], n_ctx, "the batch")
        return data
    if isinstance(data, (list, tuple)) and data and all(isinstance(x, TaskExample) for x in data):
        tokenizer = model.tokenizer if isinstance(model, LoadedModel) else as_bridge(model).tokenizer
        return tokenize_pairs(tokenizer, list(data), answer_tokens=answer_tokens, max_length=n_ctx)
    if isinstance(data, (list, tuple)) and not data:
        raise AttributionError("the dataset is empty: pass at least one example")
    raise AttributionError(f"data must be a PairBatch or a list of TaskExample, got {type(data).__name__}")


# ---- source recording -------------------------------------------------------------------------------
def post_norm(bridge: Any, path: str) -> Any:
    return wrapped_module(bridge.get_submodule(path))


@dataclass
class Deltas:
    """Per-source deltas of one batch. `residual` is what attribution contracts; `raw` (counterfactual
    minus run, in hook space) and `run` are kept only when a method needs them."""

    residual: SourceBuffer  # float32
    raw: SourceBuffer | None = None
    run: SourceBuffer | None = None
    #: the counterfactual's z of per-head sources read at z (head_sources.py), by source hook: their rows
    #: are written once, in the run forward, as (z_cf - z) W_O
    counterfactual_z: dict[str, Tensor] = field(default_factory=dict)


def write_source(buf: Tensor, start: int, stop: int, per_head: bool, act: Tensor, subtract: bool = False) -> None:
    """Store (or subtract) one source hook's activation into rows start:stop of a source buffer (float32:
    a bf16 activation is converted inside the in-place operation, with no float32 copy of its own)."""
    value = act.detach()
    value = value.permute(2, 0, 1, 3) if per_head else value[None]
    if subtract:
        buf[start:stop].sub_(value)
    else:
        buf[start:stop].copy_(value)


def _source_hooks(graph: Graph, at_z: dict[str, HeadSource], write: Callable[[Any, Tensor], None]) -> HookList:
    """One observer hook per source that hands its value to `write(source, act)`: per-head results read at
    z where the model allows it (`at_z`, head_sources.py), every other source at its own hook."""
    hooks: HookList = []
    for sh in graph.source_hooks:
        @observer
        def fn(act: Tensor, hook: Any, sh: Any = sh) -> Tensor:
            write(sh, act)
            return act
        hooks.append((at_z[sh.name].hook if sh.name in at_z else sh.name, fn))
    return hooks


def _writer(at_z: dict[str, HeadSource], buf: Tensor, subtract: bool,
            counterfactual_z: dict[str, Tensor] | None = None) -> Callable[[Any, Tensor], None]:
    """Store (or subtract) a source's value into its rows of `buf`, from z for per-head results read there.
    Subtracting, a per-head source whose counterfactual z is in `counterfactual_z` gets (z_cf - z) W_O."""
    def write(sh: Any, act: Tensor) -> None:
        if counterfactual_z is not None and sh.name in counterfactual_z:
            at_z[sh.name].write_difference(buf[sh.start:sh.stop], counterfactual_z.pop(sh.name), act)
        elif sh.name in at_z:
            at_z[sh.name].write(buf[sh.start:sh.stop], act, subtract)
        else:
            write_source(buf, sh.start, sh.stop, sh.per_head, act, subtract)
    return write


class _SourcesRecorded(Exception):
    """Raised by the last source hook of a recording forward: what follows (the final norm, the unembedding,
    a fifth of a forward on a 49k-token vocabulary) would be computed for nothing."""


#: the hook point every source has fired before (the unembedding's input, after the last block)
UNEMBED_INPUT = "unembed.hook_in"


def record_sources(bridge: Any, ids: Tensor, mask: Tensor, hooks: HookList) -> None:
    """A no-grad forward that only records sources (`hooks`), stopped at the unembedding's input."""
    if UNEMBED_INPUT not in bridge.hook_dict:
        forward(bridge, ids, mask, hooks)
        return

    def stop(act: Tensor, hook: Any) -> Tensor:
        raise _SourcesRecorded
    with contextlib.suppress(_SourcesRecorded):
        forward(bridge, ids, mask, hooks + [(UNEMBED_INPUT, stop)])


def counterfactual_hooks(graph: Graph, bridge: Any, buf: Tensor, z_store: dict[str, Tensor] | None = None) -> HookList:
    """Hooks for the counterfactual forward: store each source's raw activation into buf; with `z_store`
    (a Deltas' counterfactual_z), the z of per-head sources read at z is kept there instead, for the run
    forward to write their deltas in one product (delta_hooks). The run forward frees them layer by layer
    while its own activations grow, so the memory estimate counts those activations, not both."""
    at_z = head_sources(bridge, graph)
    write = _writer(at_z, buf, subtract=False)
    if z_store is None:
        return _source_hooks(graph, at_z, write)

    def keep_z(sh: Any, act: Tensor) -> None:
        if sh.name in at_z:
            z_store[sh.name] = act.detach().clone()  # the model's own values, in its dtype
        else:
            write(sh, act)
    return _source_hooks(graph, at_z, keep_z)


def delta_hooks(graph: Graph, bridge: Any, deltas: Deltas) -> HookList:
    """Hooks for the run forward: delta = counterfactual - run (buffer pre-filled with the counterfactual),
    mapped through the post-attention norm where the model has one. When the Deltas carry `raw`, it keeps
    the unmapped difference; when they carry `run`, it receives the run activations."""
    buf = deltas.raw if deltas.raw is not None else deltas.residual
    at_z = head_sources(bridge, graph)
    subtract = _writer(at_z, buf, subtract=True, counterfactual_z=deltas.counterfactual_z)
    keep = _writer(at_z, deltas.run, subtract=False) if deltas.run is not None else None

    def write(sh: Any, act: Tensor) -> None:
        subtract(sh, act)
        if keep is not None:
            keep(sh, act)
        if buf is not deltas.residual:
            deltas.residual[sh.start:sh.stop] = buf[sh.start:sh.stop]
    hooks = _source_hooks(graph, at_z, write)
    for ph in graph.post_norm_hooks:
        norm = post_norm(bridge, ph.module)

        @observer
        def fn_norm(out: Tensor, hook: Any, ph: Any = ph, norm: Any = norm) -> Tensor:
            with torch.no_grad():
                o = out.detach()
                base = norm(o).float()
                raw = buf[ph.start:ph.stop].to(o.dtype)
                deltas.residual[ph.start:ph.stop] = norm(o[None] + raw).float() - base[None]
            return out
        hooks.append((ph.name, fn_norm))
    return hooks


# ---- counterfactuals --------------------------------------------------------------------------------
@torch.no_grad()
def source_means(bridge: Any, graph: Graph, batches: list[PairBatch]) -> Float[Tensor, "n_src d_model"]:
    """Mean raw activation of every source over all valid tokens of the clean prompts."""
    device = next(bridge.parameters()).device
    total = torch.zeros(graph.n_src, graph.spec.d_model, dtype=torch.float64, device=device)
    count = 0
    for batch in batches:
        buf = torch.zeros(graph.n_src, *batch.clean.shape, graph.spec.d_model, device=device)
        mask = batch.mask.to(device)
        with split_qkv_off(bridge), results_off(bridge, graph):
            record_sources(bridge, batch.clean.to(device), mask, counterfactual_hooks(graph, bridge, buf))
        total += (buf * mask[None, :, :, None]).sum((1, 2)).double()
        count += int(mask.sum())
    return (total / count).float()


def fill_counterfactual(
    bridge: Any, graph: Graph, batch: PairBatch, cf: Counterfactual, buf: Tensor, means: Tensor | None,
    z_store: dict[str, Tensor] | None = None,
) -> None:
    """Write every source's counterfactual value into `buf` (for a corrupt run with `z_store`, the z of per-head
    sources read at z go there instead: see counterfactual_hooks)."""
    if cf is Counterfactual.ZERO:
        buf.zero_()
    elif cf is Counterfactual.MEAN:
        assert means is not None
        buf.copy_(means[:, None, None, :].expand_as(buf))
    else:
        with torch.no_grad(), split_qkv_off(bridge), results_off(bridge, graph):
            record_sources(bridge, batch.corrupt, batch.mask, counterfactual_hooks(graph, bridge, buf, z_store))


def new_deltas(graph: Graph, batch: PairBatch, device: torch.device, *, raw: bool = False, run: bool = False) -> Deltas:
    """Buffers for one batch. The one the counterfactual goes into (`raw` where kept apart, else `residual`)
    is left uninitialised: the counterfactual forward (or fill_counterfactual) writes every element of it."""
    shape = (graph.n_src, *batch.clean.shape, graph.spec.d_model)
    separate_raw = raw and bool(graph.post_norm_hooks)
    return Deltas(
        residual=torch.zeros(shape, device=device) if separate_raw else torch.empty(shape, device=device),
        raw=torch.empty(shape, device=device) if separate_raw else None,
        run=torch.zeros(shape, device=device) if run else None,
    )


def prepare_deltas(
    bridge: Any, graph: Graph, batch: PairBatch, cf: Counterfactual, means: Tensor | None,
    metric: ObjectiveFn | None = None, *, raw: bool = False, run: bool = False,
) -> tuple[Deltas, Tensor | None]:
    """Deltas of the batch (counterfactual forward, then a run forward), without gradients. Returns the
    metric at the run when `metric` is given."""
    deltas = new_deltas(graph, batch, batch.clean.device, raw=raw, run=run)
    fill_counterfactual(bridge, graph, batch, cf, deltas.raw if deltas.raw is not None else deltas.residual, means,
                        deltas.counterfactual_z)
    return deltas, record_run(bridge, graph, batch, deltas, metric)


def record_run(bridge: Any, graph: Graph, batch: PairBatch, deltas: Deltas, metric: ObjectiveFn | None) -> Tensor | None:
    """The run forward without gradients: subtracts the run's sources from the counterfactual ones in
    `deltas` (see delta_hooks). Returns the metric at the run when `metric` is given."""
    with torch.no_grad(), split_qkv_off(bridge), results_off(bridge, graph):
        logits = forward(bridge, batch.clean, batch.mask, delta_hooks(graph, bridge, deltas))
    return checked(metric(logits, batch), batch) if metric is not None else None
