"""A compact RL trainer on hooked models: GRPO, classifier-first RL (CF-RL), PPO and DPO."""

from circuitdyn.train.config import (
    Algorithm, CFRLConfig, ConfigError, DPOConfig, GRPOConfig, LossType, PPOConfig, ScaleRewards, TrainConfig,
    config_from_dict,
)
from circuitdyn.train.rewards import RewardError, task_reward
from circuitdyn.train.trainer import TrainResult, Trainer, TrainingError, classifier_parameters, train

__all__ = [
    "Algorithm", "CFRLConfig", "ConfigError", "DPOConfig", "GRPOConfig", "LossType", "PPOConfig", "RewardError",
    "ScaleRewards", "TrainConfig", "TrainResult", "Trainer", "TrainingError", "classifier_parameters",
    "config_from_dict", "task_reward", "train",
]
