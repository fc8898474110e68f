"""A run's folder and health: what an earlier run left there, its newest checkpoint, its log after a
resume, and the warning when a step's KL or gradient norm explodes."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from circuitdyn.core.atomic import atomic_write_text
from circuitdyn.train.algorithm import TrainingError
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


def read_log(log_file: Path) -> list[dict[str, Any]]:
    """The records of a run's log.jsonl. A torn last line (the process died mid-write: disk full, power
    lost) is dropped with a warning; a damaged line before the last is an error naming the file and line."""
    lines = log_file.read_text(encoding="utf-8", errors="replace").splitlines()
    records = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            if not isinstance(record, dict):
                raise ValueError("not a JSON object")
        except ValueError as err:
            if i == len(lines) - 1:
                logger.warning("%s: its last line is torn (%s: %r); dropped it (the run stopped while writing it)",
                               log_file, err, line[:60])
                break
            raise CheckpointError(f"{log_file}: line {i + 1} is not a log record ({err}); the log was edited or "
                                  "damaged: restore it, or move it away to start the log afresh") from None
        records.append(record)
    return records


def truncate_log(log_file: Path, step: int) -> None:
    """Keep the log records up to `step` (a resumed run logs the later steps again), rewritten atomically."""
    if not log_file.exists():
        return
    kept = [r for r in read_log(log_file) if r.get("step", 0) <= step]
    atomic_write_text(log_file, "".join(json.dumps(r) + "\n" for r in kept))


def open_run_folder(out_dir: Path, *, resumed: bool, step: int) -> None:
    """Ready a run's folder (the caller holds its lock): a new run refuses a folder that holds another run; a
    resumed run cuts its log back to the checkpoint's step, whose later steps it runs again."""
    if not resumed and previous_run(out_dir):
        raise TrainingError(f"{out_dir} already holds a training run ({', '.join(previous_run(out_dir)[:3])}); "
                            "write to a new folder, or continue it with resume_from (circuitdyn train --resume)")
    out_dir.mkdir(parents=True, exist_ok=True)
    if resumed:
        truncate_log(out_dir / "log.jsonl", step)


def check_resume_folder(out_dir: Path, checkpoint: Path) -> None:
    """A run resumes into its own folder, or into one that holds no run: never into another run's folder,
    whose log, checkpoints and final weights it would cut and overwrite."""
    here = previous_run(out_dir)
    if here and checkpoint.resolve().parent != out_dir.resolve():
        raise CheckpointError(
            f"{out_dir} holds another run ({', '.join(here[:3])}) and the checkpoint {checkpoint} is from "
            f"{checkpoint.resolve().parent}: resume into the checkpoint's own folder (--out "
            f"{checkpoint.resolve().parent}) or into a new folder")


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
