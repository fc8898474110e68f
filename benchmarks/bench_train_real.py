"""GRPO on SmolLM2-135M-Instruct: circuitdyn with LoRA, circuitdyn full fine-tuning, and trl's GRPOTrainer
with the same LoRA settings, in one run.

Same model, task (`qa_addition`), reward, 16 completions per step in groups of 8, at most 8 completion
tokens, one policy update per batch, beta 0, learning rate 5e-4, LoRA r=16 / alpha=32 on every linear
layer, CPU. Steps/s are timed in interleaved rounds (ours-LoRA, ours-full, trl-LoRA, repeated: the machine
is shared and noisy); each contender's peak memory (max RSS) is measured in a child process of its own.
Reports the ratios ours-LoRA / trl-LoRA (goal >= 1.0) and LoRA / full, min and median over rounds.

    python benchmarks/bench_train_real.py [--steps 6] [--rounds 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")

import torch

BATCH, GROUP, MAX_NEW, LR, WARMUP = 16, 8, 8, 5e-4, 2


def lora() -> Any:
    from peft import LoraConfig

    return LoraConfig(r=16, lora_alpha=32, target_modules="all-linear")


def ours(steps: int, adapters: bool) -> dict[str, Any]:
    from circuitdyn.models import load_model
    from circuitdyn.train import GRPOConfig, Trainer

    model = load_model("smollm2-135m", device="cpu")
    cfg = GRPOConfig(task="qa_addition", max_steps=steps + WARMUP, per_device_train_batch_size=BATCH,
                     num_generations=GROUP, max_completion_length=MAX_NEW, eval_steps=0, learning_rate=LR,
                     peft=lora() if adapters else None)
    trainer = Trainer(model, cfg)
    for _ in range(WARMUP):
        trainer.train_step()
    t0 = time.perf_counter()
    tokens = 0.0
    for _ in range(steps):
        tokens += trainer.train_step()["completion_length"] * BATCH
    dt = time.perf_counter() - t0
    return {"steps_per_s": steps / dt, "tokens_per_s": tokens / dt, "seconds": dt,
            "estimated_peak_mib": trainer.memory["total"] / 2**20}


def trl_grpo(steps: int) -> dict[str, Any]:
    import trl
    from bench_train import clock_callback
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from circuitdyn.models.real import converted_folder
    from circuitdyn.tasks import QAAddition

    folder = converted_folder("smollm2-135m")
    tok = AutoTokenizer.from_pretrained(str(folder))
    model = AutoModelForCausalLM.from_pretrained(str(folder))
    task = QAAddition()
    examples = task.examples(4096, seed=0, split="train")
    by_prompt = {e.clean: e for e in examples}

    def reward(prompts: list[str], completions: list[str], **_: Any) -> list[float]:
        return [task.reward(by_prompt[p], c) for p, c in zip(prompts, completions)]

    clock = clock_callback()
    args = trl.GRPOConfig(output_dir="/tmp/circuitdyn_trl_bench_real", per_device_train_batch_size=BATCH,
                          num_generations=GROUP, max_completion_length=MAX_NEW, max_steps=steps + WARMUP,
                          learning_rate=LR, beta=0.0, logging_steps=1000, save_strategy="no", report_to=[],
                          use_cpu=True, bf16=False, disable_tqdm=True, seed=0,
                          gradient_checkpointing=False)  # as ours (trl 1.16 turns it on by default)
    trainer = trl.GRPOTrainer(model=model, reward_funcs=reward, args=args, processing_class=tok, callbacks=[clock],
                              train_dataset=Dataset.from_list([{"prompt": e.clean} for e in examples]),
                              peft_config=lora())
    trainer.train()
    dt = clock.times[-1] - clock.times[WARMUP - 1]
    return {"steps_per_s": steps / dt, "seconds": dt, "trl": trl.__version__}


CONTENDERS = {"ours_lora": lambda s: ours(s, True), "ours_full": lambda s: ours(s, False), "trl_lora": trl_grpo}


def child(name: str, steps: int) -> dict[str, Any]:
    """Run one contender in a fresh process: its own peak RSS, untouched by the others'."""
    code = (f"import json, resource, sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import bench_train_real as b; "
            f"r = b.CONTENDERS[{name!r}]({steps}); "
            "r['peak_rss_mib'] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024; print(json.dumps(r))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6, help="timed steps per round and contender")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    result: dict[str, Any] = {"settings": {"model": "smollm2-135m", "task": "qa_addition", "completions_per_step": BATCH,
                                           "group": GROUP, "max_completion_tokens": MAX_NEW, "lora": "r=16 alpha=32 all-linear",
                                           "threads": torch.get_num_threads(), "steps_per_round": args.steps,
                                           "rounds": args.rounds}}
    rounds = [{name: child(name, args.steps) for name in CONTENDERS} for _ in range(args.rounds)]
    result["rounds"] = rounds
    for num, den in (("ours_lora", "trl_lora"), ("ours_lora", "ours_full")):
        ratios = [r[num]["steps_per_s"] / r[den]["steps_per_s"] for r in rounds]
        result[f"{num}/{den}"] = {"min": min(ratios), "median": statistics.median(ratios)}
    result["peak_rss_mib"] = {name: statistics.median(r[name]["peak_rss_mib"] for r in rounds) for name in CONTENDERS}
    result["estimated_peak_mib"] = {n: rounds[-1][n]["estimated_peak_mib"] for n in ("ours_lora", "ours_full")}
    print(json.dumps({k: v for k, v in result.items() if k != "rounds"}, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
