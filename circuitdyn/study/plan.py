"""`circuitdyn study --dry-run`: what a study would load, generate and attribute, without loading any weights.

Weights are counted from the safetensors headers of each local folder; the attribution memory of one
example comes from the base's configuration (attribution/estimate.py), at the longest scored length the
settings allow: a prompt of PROMPT_TOKENS plus the largest cut coefficient (paper protocol) or fraction
(common protocol) of max_new_tokens.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from circuitdyn.models import LoadedModel
from circuitdyn.models.files import ModelSpecError
from circuitdyn.models.load import resolve_device, resolve_spec
from circuitdyn.study.config import Protocol, StudyConfig
from circuitdyn.study.streaming import local_folder

GB = 2**30
PROMPT_TOKENS = 256  # a long math prompt in the paper's templates


def weight_elements(folder: Path) -> int | None:
    """Parameters stored in a folder's safetensors files (read from their headers only), or None."""
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        return None
    total = 0
    for path in files:
        with open(path, "rb") as f:
            header = json.loads(f.read(struct.unpack("<Q", f.read(8))[0]))
        for name, entry in header.items():
            if name != "__metadata__":
                n = 1
                for d in entry["shape"]:
                    n *= int(d)
                total += n
    return total


def _where(spec: str | LoadedModel, model_dir: str | None) -> tuple[str, Path | None]:
    if isinstance(spec, LoadedModel):
        return f"a LoadedModel ({spec.provenance.spec}), already in memory", None
    local = local_folder(spec, model_dir)
    try:
        target = resolve_spec(local)
    except ModelSpecError as err:
        return f"{spec}: cannot be loaded ({err})", None
    if isinstance(target, str):
        return f"{spec}: hub id, not on this machine (needs the hub, its cache, or --model-dir)", None
    return f"{spec}" + (f" -> {target}" if str(target) != spec else ""), Path(target)


def study_plan(base: str | LoadedModel, tuned: Mapping[str, Any], problems: Any, cfg: StudyConfig) -> str:
    """The plan as text: models and where they load from, device, dtype, weights, tokens to generate, and the
    attribution memory of one example."""
    dtype = cfg.torch_dtype()
    element = torch.finfo(dtype).bits // 8
    device = resolve_device(cfg.device)
    models: list[tuple[str, str | LoadedModel]] = [("base", base)]
    for label, group in tuned.items():
        seeds: Sequence[Any] = [group] if isinstance(group, (str, LoadedModel)) else list(group)
        models += [(f"{label}#{r}", m) for r, m in enumerate(seeds)]
    lines = [f"study plan ({Protocol(cfg.protocol).value} protocol): {len(models)} model(s), loaded one at a time "
             f"on {device} in {str(dtype).replace('torch.', '')}"]
    largest, base_folder = 0, None
    for name, spec in models:
        where, folder = _where(spec, cfg.model_dir)
        n = weight_elements(folder) if folder is not None else None
        if n is not None:
            largest = max(largest, n * element)
        base_folder = folder if name == "base" else base_folder
        lines.append(f"  {name:<10} {where}" + (f"  [{n * element / GB:.2f} GB]" if n is not None else ""))
    template = cfg.template or ("the tokenizer's chat template" if cfg.chat_template else "plain")
    lines.append(f"generation: {len(models)} x {cfg.samples} problems x at most {cfg.max_new_tokens:,} new tokens "
                 f"= at most {len(models) * cfg.samples * cfg.max_new_tokens:,} tokens (greedy; prompts: {template}; "
                 f"problems: {problems if isinstance(problems, str) else getattr(problems, 'name', problems)})")
    share = max(cfg.cut_coeffs) if cfg.protocol is Protocol.PAPER else cfg.fraction
    tokens = PROMPT_TOKENS + max(1, int(share * cfg.max_new_tokens))
    if base_folder is None:
        lines.append("attribution memory: unknown (the base's configuration is not on this machine)")
        return "\n".join(lines)
    from circuitdyn.attribution.estimate import example_estimates

    for e in example_estimates(base_folder, tuple(cfg.granularities), (tokens,), dtype):
        lines.append(f"attribution, {e.granularity} graph, one example of {tokens:,} tokens: {e.kept / GB:.2f} GB with "
                     f"every activation kept, {e.recomputed / GB:.2f} GB recomputed block by block; with the "
                     f"largest model's weights: {(largest + e.kept) / GB:.2f} GB")
    return "\n".join(lines)
