"""The training configs' choices, as Enums (a config accepts their string values)."""

from __future__ import annotations

from enum import Enum


class Algorithm(str, Enum):
    GRPO = "grpo"
    CFRL = "cfrl"
    PPO = "ppo"
    DPO = "dpo"


class ScaleRewards(str, Enum):
    GROUP = "group"  # (r - mean_g) / (std_g + eps)
    BATCH = "batch"  # (r - mean_g) / (std over the batch + eps)
    NONE = "none"  # r - mean_g (Dr. GRPO)


class LossType(str, Enum):
    GRPO = "grpo"  # mean over each sequence's tokens, then over sequences
    DAPO = "dapo"  # mean over all tokens of the batch
    DR_GRPO = "dr_grpo"  # sum over tokens / (sequences x max_completion_length)


class PairSource(str, Enum):
    """Where DPO's (chosen, rejected) pairs come from."""

    ITERATIVE = "iterative"  # resampled from the current policy every round (RLHFlow's iterative DPO)
    OFFLINE = "offline"  # sampled once from the reference model before training


class Stage1Objective(str, Enum):
    RL = "rl"  # the algorithm's own objective on the classifier: classifier-first RL (CF-RL)
    SUPERVISED = "supervised"  # cross-entropy of the correct answers: linear probing, then fine-tuning (LP-FT)
