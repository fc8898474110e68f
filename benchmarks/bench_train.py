"""GRPO throughput: circuitdyn's trainer vs trl's GRPOTrainer on the same tiny HF model and settings.

Same model (zoo:llama, a Llama-shaped HF model), same task and reward (addition), 16 completions per
step in groups of 8, at most 8 completion tokens, one policy update per batch, beta 0, CPU. Reports
steps/s and completion tokens/s of each, and the ratio ours / trl (goal >= 1.0). trl is optional
(`pip install trl` with the constraints file); without it only our numbers are printed.

    python benchmarks/bench_train.py [--steps 30] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")

import torch

from circuitdyn.models import load_model
from circuitdyn.tasks import Addition
from circuitdyn.train import GRPOConfig, Trainer

BATCH, GROUP, MAX_NEW = 16, 8, 8


def ours(steps: int) -> dict[str, Any]:
    model = load_model("zoo:llama", device="cpu")
    cfg = GRPOConfig(max_steps=steps + 2, per_device_train_batch_size=BATCH, num_generations=GROUP,
                     max_completion_length=MAX_NEW, eval_steps=0, learning_rate=1e-5)
    trainer = Trainer(model, cfg)
    for _ in range(2):  # warm-up
        trainer.train_step()
    t0 = time.perf_counter()
    tokens = 0.0
    for _ in range(steps):
        logs = trainer.train_step()
        tokens += logs["completion_length"] * BATCH
    dt = time.perf_counter() - t0
    return {"steps_per_s": steps / dt, "tokens_per_s": tokens / dt, "seconds": dt}


def clock_callback() -> Any:
    """A transformers callback recording the time at the end of every trl step (in `.times`)."""
    from transformers import TrainerCallback

    class Clock(TrainerCallback):
        def __init__(self) -> None:
            self.times: list[float] = []

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            self.times.append(time.perf_counter())
    return Clock()


def trl_grpo(steps: int) -> dict[str, Any]:
    try:
        import trl
        from datasets import Dataset
        from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast
    except ImportError as err:
        return {"skipped": f"trl not installed ({err.name})"}
    from circuitdyn.models.zoo import zoo_path

    folder = zoo_path("llama")
    tok = PreTrainedTokenizerFast.from_pretrained(str(folder))
    model = AutoModelForCausalLM.from_pretrained(str(folder))
    examples = Addition().examples(4096, seed=0, split="train")
    answers = {e.clean: e.answer for e in examples}
    data = Dataset.from_list([{"prompt": e.clean} for e in examples])

    def reward(prompts: list[str], completions: list[str], **_: Any) -> list[float]:
        return [float(c.strip().startswith(answers[p]) and c.strip()[len(answers[p]):][:1] in ("", " "))
                for p, c in zip(prompts, completions)]

    clock = clock_callback()
    args = trl.GRPOConfig(output_dir="/tmp/circuitdyn_trl_bench", per_device_train_batch_size=BATCH, num_generations=GROUP,
                          max_completion_length=MAX_NEW, max_steps=steps + 2, learning_rate=1e-5, beta=0.0,
                          logging_steps=1000, save_strategy="no", report_to=[], use_cpu=True, bf16=False,
                          disable_tqdm=True, seed=0)
    trainer = trl.GRPOTrainer(model=model, reward_funcs=reward, args=args, train_dataset=data, processing_class=tok,
                              callbacks=[clock])
    trainer.train()
    t = clock.times[2:]  # skip two warm-up steps
    dt = t[-1] - clock.times[1]
    return {"steps_per_s": (len(t)) / dt, "seconds": dt, "trl": trl.__version__}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30, help="steps per round and contender")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (ours, trl, ours, trl, ...)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    result: dict[str, Any] = {"settings": {"model": "zoo:llama", "completions_per_step": BATCH, "group": GROUP,
                                           "max_completion_tokens": MAX_NEW, "threads": torch.get_num_threads(),
                                           "steps_per_round": args.steps, "rounds": args.rounds}}
    rounds: list[dict[str, Any]] = []
    for _ in range(args.rounds):  # interleaved: the machine is shared and noisy
        rounds.append({"circuitdyn": ours(args.steps), "trl": trl_grpo(args.steps)})
    result["circuitdyn"] = rounds[-1]["circuitdyn"]
    result["trl"] = rounds[-1]["trl"]
    if all("steps_per_s" in r["trl"] for r in rounds):
        per_round = [r["circuitdyn"]["steps_per_s"] / r["trl"]["steps_per_s"] for r in rounds]
        result["ratio_steps_per_s"] = statistics.median(per_round)
        result["ratio_steps_per_s_min_median"] = [min(per_round), statistics.median(per_round)]
    print(json.dumps(result, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
