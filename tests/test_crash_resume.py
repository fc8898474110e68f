"""A training run killed with SIGKILL resumes from its last checkpoint to the same final weights."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

SCRIPT = """
import sys, time
from circuitdyn.models import load_model
from circuitdyn.train import GRPOConfig, Trainer

class Slow:  # gives the parent time to kill us mid-run; it does not touch the weights
    def on_step_end(self, trainer, step, logs):
        time.sleep(0.4 if step >= 3 else 0.0)

cfg = GRPOConfig(max_steps=8, save_steps=2, eval_steps=0, per_device_train_batch_size=16, num_generations=4,
                 learning_rate=1e-3, output_dir=sys.argv[1])
Trainer(load_model("zoo:llama", device="cpu"), cfg, callbacks=[Slow()]).train()
"""


def config(out):
    from circuitdyn.train import GRPOConfig

    return GRPOConfig(max_steps=8, save_steps=2, eval_steps=0, per_device_train_batch_size=16, num_generations=4,
                      learning_rate=1e-3, output_dir=str(out))


def test_sigkill_then_resume(tmp_path):
    from circuitdyn.models import load_model
    from circuitdyn.train import Trainer

    run = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT, str(run)], env={**os.environ, "HF_HUB_OFFLINE": "1"})
    deadline = time.time() + 120
    while not (run / "checkpoint-4").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert (run / "checkpoint-4").exists(), "the run never reached step 4"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL and not (run / "final").exists()
    leftovers = [p.name for p in run.iterdir() if p.name.endswith(".tmp")]
    checkpoints = sorted((p for p in run.glob("checkpoint-*") if p.is_dir()), key=lambda p: int(p.name.split("-")[1]))
    latest = checkpoints[-1]
    resumed = load_model("zoo:llama", device="cpu")
    Trainer(resumed, config(tmp_path / "resumed"), resume_from=latest).train()

    full = load_model("zoo:llama", device="cpu")
    Trainer(full, config(tmp_path / "full")).train()
    for (n, a), (_, b) in zip(full.bridge.named_parameters(), resumed.bridge.named_parameters()):
        assert torch.equal(a, b), n
    assert all(not Path(run / name).is_dir() or not (run / name / "checkpoint.json").exists() for name in leftovers)
