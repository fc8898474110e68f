"""The RL-circuitry paper's four model pairs by name: hub ids, prompt template, generation limit, datasets.

    deepseek-math  deepseek-ai/deepseek-math-7b-instruct -> deepseek-ai/deepseek-math-7b-rl (GRPO), 4,096 tokens
    mistral        peiyi9979/mistral-7b-sft -> peiyi9979/math-shepherd-mistral-7b-rl (PPO), 4,096 tokens
    distill-qwen   deepseek-ai/DeepSeek-R1-Distill-Qwen-7B -> nvidia/AceReason-Nemotron-7B (GRPO), 32,768 tokens
    qwen25-dpo     RLHFlow/Qwen2.5-7B-SFT -> RLHFlow/Qwen2.5-7B-DPO (iterative DPO), 8,192 tokens

Each was answered greedily on MATH, College-Math and GSM8K. With `model_dir`, the hub ids are read from
local copies (DIR/org/name or DIR/name).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from circuitdyn.study.config import StudyError

DATASETS = ("math", "college_math", "gsm8k")


@dataclass(frozen=True)
class PaperPair:
    """One of the paper's pairs: the base, its tuned model under `label`, and how both were prompted."""

    name: str
    base: str
    label: str
    tuned: str
    template: str
    max_new_tokens: int
    datasets: tuple[str, ...] = DATASETS

    def study_kwargs(self) -> dict[str, Any]:
        """run_study's base, tuned and the settings the paper used for this pair."""
        return {"base": self.base, "tuned": {self.label: self.tuned}, "template": self.template,
                "max_new_tokens": self.max_new_tokens}


PAPER_PAIRS = {p.name: p for p in (
    PaperPair("deepseek-math", "deepseek-ai/deepseek-math-7b-instruct", "grpo", "deepseek-ai/deepseek-math-7b-rl",
              "deepseek-math", 4096),
    PaperPair("mistral", "peiyi9979/mistral-7b-sft", "ppo", "peiyi9979/math-shepherd-mistral-7b-rl", "mistral", 4096),
    PaperPair("distill-qwen", "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B", "grpo", "nvidia/AceReason-Nemotron-7B",
              "deepseek-math", 32768),
    PaperPair("qwen25-dpo", "RLHFlow/Qwen2.5-7B-SFT", "dpo", "RLHFlow/Qwen2.5-7B-DPO", "qwen25-math-cot", 8192),
)}


def paper_pair(name: str) -> PaperPair:
    if name not in PAPER_PAIRS:
        raise StudyError(f"unknown paper pair {name!r}; choose one of {sorted(PAPER_PAIRS)}")
    return PAPER_PAIRS[name]
