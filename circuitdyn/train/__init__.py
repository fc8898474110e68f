"""A compact RL trainer on hooked models: GRPO, classifier-first RL (CF-RL), PPO and DPO.

Layout: `loop.py` (the generic Trainer), one file per algorithm (`grpo.py`, `ppo.py`, `dpo.py`) behind the
protocol in `algorithm.py`, each registered once in `registry.py` (its config and how it is built), and
`cfrl.py`, the classifier-first parameter schedule any algorithm can run under. `policy.py` says what trains
(LoRA adapters or every weight) and what scores it; `memory.py` holds the memory and speed knobs (mixed
precision, gradient checkpointing, the fit estimate).
"""

from circuitdyn.models.surface import classifier_parameters
from circuitdyn.train.algorithm import TrainingAlgorithm, TrainingError
from circuitdyn.train.cfrl import ParameterSchedule, Stage
from circuitdyn.train.config import (
    Algorithm,
    CFRLConfig,
    ClassifierFirst,
    ConfigError,
    DPOConfig,
    GRPOConfig,
    LossType,
    PPOConfig,
    ScaleRewards,
    TrainConfig,
)
from circuitdyn.train.loop import Callback, Trainer, TrainResult, train
from circuitdyn.train.memory import Precision
from circuitdyn.train.policy import FitError
from circuitdyn.train.registry import ALGORITHMS, Registration, config_from_dict
from circuitdyn.train.rewards import RewardError, task_reward

__all__ = [
    "ALGORITHMS", "Algorithm", "CFRLConfig", "Callback", "ClassifierFirst", "ConfigError", "DPOConfig", "FitError",
    "GRPOConfig", "LossType", "PPOConfig", "ParameterSchedule", "Precision", "Registration", "RewardError",
    "ScaleRewards", "Stage",
    "TrainConfig", "TrainResult", "Trainer", "TrainingAlgorithm", "TrainingError", "classifier_parameters",
    "config_from_dict", "task_reward", "train",
]
