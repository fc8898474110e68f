"""Each training algorithm, registered once: its config class and how the loop builds it.

The command line's `--algorithm` choices, `config_from_dict` and the Trainer all read this table; a new
algorithm is one Algorithm member, one config class and one row here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from circuitdyn.core.choices import parse_choice
from circuitdyn.core.fields import ConfigError
from circuitdyn.models import LoadedModel
from circuitdyn.models.lora_config import LoraError, lora_from_dict
from circuitdyn.train.algorithm import TrainingAlgorithm
from circuitdyn.train.config import (
    Algorithm,
    CFRLConfig,
    ClassifierFirst,
    DPOConfig,
    GRPOConfig,
    PPOConfig,
    TrainConfig,
)
from circuitdyn.train.dpo import DPO
from circuitdyn.train.grpo import GRPO
from circuitdyn.train.ppo import PPO


@dataclass(frozen=True)
class Registration:
    config: type[TrainConfig]
    build: Callable[[Any, LoadedModel], TrainingAlgorithm]  # (config, model) -> the algorithm's state and losses


#: every algorithm, by name (CF-RL is GRPO under a classifier-first schedule)
ALGORITHMS: dict[Algorithm, Registration] = {
    Algorithm.GRPO: Registration(GRPOConfig, lambda cfg, model: GRPO(cfg)),
    Algorithm.CFRL: Registration(CFRLConfig, lambda cfg, model: GRPO(cfg)),
    Algorithm.PPO: Registration(PPOConfig, lambda cfg, model: PPO(cfg, int(model.bridge.cfg.d_model), model.device)),
    Algorithm.DPO: Registration(DPOConfig, lambda cfg, model: DPO(cfg)),
}


def build_algorithm(config: TrainConfig, model: LoadedModel) -> TrainingAlgorithm:
    return ALGORITHMS[config.algorithm].build(config, model)


def config_from_dict(d: dict[str, Any]) -> TrainConfig:
    """The config a dict describes (as `as_dict()` writes it, or as read back from JSON); `algorithm` picks
    the class."""
    d = dict(d)
    kind = ALGORITHMS[parse_choice(Algorithm, d.pop("algorithm", None), "algorithm", ConfigError)].config
    if isinstance(d.get("stop_token_ids"), list):  # as read back from JSON
        d["stop_token_ids"] = tuple(d["stop_token_ids"])
    if isinstance(d.get("classifier_first"), dict):  # as read back from JSON
        unknown = sorted(set(d["classifier_first"]) - set(ClassifierFirst.__dataclass_fields__))
        if unknown:
            raise ConfigError(f"unknown classifier_first fields {unknown}; valid: "
                              f"{sorted(ClassifierFirst.__dataclass_fields__)}")
        d["classifier_first"] = ClassifierFirst(**d["classifier_first"])
    if isinstance(d.get("peft"), dict):
        try:
            d["peft"] = lora_from_dict(d["peft"])
        except LoraError as err:
            raise ConfigError(str(err)) from None
    known = {f for f in kind.__dataclass_fields__}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ConfigError(f"unknown {kind.__name__} fields {unknown}")
    return kind(**d)
