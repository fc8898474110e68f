"""A run's folder and health: what an earlier run left there, its newest checkpoint, its log after a
resume, and the warning when a step's KL or gradient norm explodes."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from circuitdyn.train.checkpoint import CheckpointError
from circuitdyn.train.config import TrainConfig

logger = logging.getLogger(__name__)


def previous_run(folder: Path) -> list[str]:
    """What in `folder` belongs to an earlier run (its log and checkpoints)."""
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if p.name in ("log.jsonl", "final") or p.name.startswith("checkpoint-"))


def latest_checkpoint(folder: Path) -> Path:
    """The newest `checkpoint-N` in a run's folder (for `--resume latest`)."""
    steps = [(int(p.name.split("-", 1)[1]), p) for p in Path(folder).glob("checkpoint-*")
             if p.is_dir() and p.name.split("-", 1)[1].isdigit()]
    if not steps:
        raise CheckpointError(f"{folder}: no checkpoint-N folder to resume from (set save_steps to write them)")
    return max(steps)[1]


def truncate_log(log_file: Path, step: int) -> None:
    """Keep the log lines up to `step` (a resumed run logs the later steps again)."""
    if not log_file.exists():
        return
    kept = [line for line in log_file.read_text().splitlines()
            if line.strip() and json.loads(line).get("step", 0) <= step]
    log_file.write_text("".join(line + "\n" for line in kept))


#: a step whose KL to the reference or gradient norm (before clipping) passes these is reported
KL_WARNING, GRAD_NORM_WARNING = 10.0, 100.0


def warn_if_diverging(logs: dict[str, Any], config: TrainConfig) -> None:
    kl, norm = logs.get("kl"), logs.get("grad_norm")
    if isinstance(kl, float) and kl > KL_WARNING:
        logger.warning("step %d: KL to the reference is %.3g (> %g): the policy is moving far from it; lower "
                       "learning_rate (now %g) or raise beta", logs["step"], kl, KL_WARNING, config.learning_rate)
    if isinstance(norm, float) and norm > GRAD_NORM_WARNING * config.max_grad_norm:
        logger.warning("step %d: gradient norm %.3g is over %g x max_grad_norm (it is clipped, but the loss is "
                       "exploding): lower learning_rate (now %g)", logs["step"], norm, GRAD_NORM_WARNING,
                       config.learning_rate)
