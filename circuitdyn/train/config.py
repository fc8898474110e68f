"""Frozen, validated training configs. Field names follow trl where a trl user would look for them."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Any, no_type_check

from circuitdyn.core.choices import parse_choice
from circuitdyn.core.fields import ConfigError, check_numbers, check_positive, config_help
from circuitdyn.models.lora_config import LoraError, check_lora_config, lora_to_dict
from circuitdyn.train.choices import Algorithm, LossType, PairSource, ScaleRewards, Stage1Objective
from circuitdyn.train.memory import Precision

__all__ = ["Algorithm", "CFRLConfig", "ClassifierFirst", "ConfigError", "DPOConfig", "GRPOConfig", "LossType",
           "PPOConfig", "PairSource", "ScaleRewards", "Stage1Objective", "TrainConfig", "config_help"]


@dataclass(frozen=True)
class ClassifierFirst:
    """A classifier-first schedule for any algorithm: train only the classifier (the unembedding, and the
    final norm when `final_norm`) for `steps` steps, or until the step's mean reward reaches
    `until_reward`, at `learning_rate` (None: the algorithm's); then train everything. `objective` "rl" is
    CF-RL's stage 1 (the algorithm's objective), "supervised" LP-FT's (cross-entropy of the task's correct
    answers). `untie`: on a model whose unembedding is tied to the input embedding, give the classifier its
    own copy first, so stage 1 moves the classifier alone (otherwise the embedding moves with it)."""

    steps: int = 10
    until_reward: float | None = None
    final_norm: bool = False
    learning_rate: float | None = None
    objective: Stage1Objective | str = Stage1Objective.RL
    untie: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.steps, int) or isinstance(self.steps, bool) or self.steps < 0:
            raise ConfigError(f"classifier-first steps must be an integer >= 0, got {self.steps!r}")
        if self.learning_rate is not None and not self.learning_rate > 0:
            raise ConfigError(f"classifier-first learning_rate must be > 0 or None, got {self.learning_rate!r}")
        object.__setattr__(self, "objective", parse_choice(Stage1Objective, self.objective, "classifier-first objective",
                                                           ConfigError))
        if self.objective is Stage1Objective.SUPERVISED and self.until_reward is not None:
            raise ConfigError("until_reward needs a sampled reward per step; the supervised (LP-FT) stage has none: "
                              "use steps")
        if not isinstance(self.untie, bool):
            raise ConfigError(f"untie must be True or False, got {self.untie!r}")


# no_type_check: __post_init__ validates every field with an error that names it (static checkers still read
# the field types); a runtime type checker in front of it would answer first, less clearly
@no_type_check
@dataclass(frozen=True)
class TrainConfig:
    """What every algorithm shares. `per_device_train_batch_size` counts completions (trl's meaning) and
    is split into `gradient_accumulation_steps` micro-batches of equal size."""

    task: str = "addition"
    max_steps: int = 40
    learning_rate: float = 3e-5
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    max_grad_norm: float = 1.0
    per_device_train_batch_size: int = 32
    gradient_accumulation_steps: int = 1
    max_completion_length: int = 4
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = field(default=0, metadata={"help": "0: no top-k filtering"})
    stop_token_ids: tuple[int, ...] = field(default=(), metadata={"help": "besides the tokenizer's eos"})
    seed: int = 0
    logging_steps: int = 1
    eval_steps: int = 10
    eval_size: int = 200
    save_steps: int = field(default=0, metadata={"help": "0: no intermediate checkpoints"})
    output_dir: str | None = None
    progress: bool = False
    classifier_first: ClassifierFirst | None = field(default=None,
        metadata={"help": "a CF-RL stage 1 before this algorithm (see CFRLConfig)"})
    peft: Any = field(default=None,
        metadata={"help": "a peft.LoraConfig: train LoRA adapters on the bridge's modules; None: every weight"})
    gradient_checkpointing: bool = field(default=False,
        metadata={"help": "recompute each layer in the backward (less memory, ~1.3x the compute)"})
    bf16: bool = field(default=False, metadata={"help": "bfloat16 autocast, float32 master weights"})
    fp16: bool = field(default=False, metadata={"help": "float16 autocast with loss scaling, float32 master weights"})

    def __post_init__(self) -> None:
        check_numbers(self)
        plan = self.schedule
        if plan is not None and plan.steps > self.max_steps:
            raise ConfigError(f"classifier_steps must be in [0, max_steps={self.max_steps}], got {plan.steps}")
        check_positive(self, "max_steps", "learning_rate", "per_device_train_batch_size", "gradient_accumulation_steps",
                  "max_completion_length", "temperature", "eval_size", "logging_steps")
        if self.learning_rate > 1:
            raise ConfigError(f"learning_rate={self.learning_rate:g}: Adam moves every weight by about the learning rate "
                              "each step, so above 1 it overwrites the model; use <= 1 (fine-tuning: 1e-6 to 1e-3)")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"top_p must be in (0, 1], got {self.top_p}")
        if not isinstance(self.top_k, int) or self.top_k < 0:
            raise ConfigError(f"top_k must be an integer >= 0 (0: off), got {self.top_k!r}")
        if not isinstance(self.task, str) or not self.task:
            raise ConfigError(f"task must be a task name or a .jsonl file, got {self.task!r}")
        stops = self.stop_token_ids
        if not isinstance(stops, (list, tuple)) or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0
                                                           for i in stops):
            raise ConfigError(f"stop_token_ids must be a list of token ids (integers >= 0), got {stops!r}")
        object.__setattr__(self, "stop_token_ids", tuple(stops))
        for name in ("adam_beta1", "adam_beta2"):
            if not 0 <= getattr(self, name) < 1:
                raise ConfigError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if not isinstance(self.progress, bool):
            raise ConfigError(f"progress must be True or False, got {self.progress!r}")
        if self.per_device_train_batch_size % self.gradient_accumulation_steps:
            raise ConfigError(f"per_device_train_batch_size {self.per_device_train_batch_size} must be divisible by "
                              f"gradient_accumulation_steps {self.gradient_accumulation_steps}")
        if self.weight_decay < 0 or self.max_grad_norm <= 0 or self.eval_steps < 0 or self.save_steps < 0:
            raise ConfigError("weight_decay, eval_steps and save_steps must be >= 0 and max_grad_norm > 0")
        for flag in ("gradient_checkpointing", "bf16", "fp16"):
            if not isinstance(getattr(self, flag), bool):
                raise ConfigError(f"{flag} must be True or False, got {getattr(self, flag)!r}")
        if self.output_dir is not None and not str(self.output_dir).strip():
            raise ConfigError("output_dir is empty (an unset shell variable?); give a folder, or None to save nothing")
        if self.bf16 and self.fp16:
            raise ConfigError("bf16 and fp16 are both set; choose one")
        if self.peft is not None:
            try:
                check_lora_config(self.peft)
            except LoraError as err:
                raise ConfigError(str(err)) from None

    @property
    def precision(self) -> Precision:
        return Precision.BF16 if self.bf16 else Precision.FP16 if self.fp16 else Precision.NO

    @property
    def algorithm(self) -> Algorithm:
        raise NotImplementedError  # every concrete config names its algorithm

    @property
    def schedule(self) -> ClassifierFirst | None:
        """The classifier-first stage to run before the algorithm, if any."""
        return self.classifier_first

    def as_dict(self) -> dict[str, Any]:
        d = {k: (v.value if isinstance(v, Enum) else v) for k, v in asdict(self).items()}
        d["peft"] = lora_to_dict(self.peft) if self.peft is not None else None
        if isinstance(d.get("classifier_first"), dict):
            d["classifier_first"] = {k: (v.value if isinstance(v, Enum) else v) for k, v in d["classifier_first"].items()}
        return d | {"algorithm": self.algorithm.value}


@no_type_check
@dataclass(frozen=True)
class GRPOConfig(TrainConfig):
    num_generations: int = 8
    beta: float = field(default=0.0, metadata={"help": "KL to the frozen reference (k3 estimator); 0 skips the reference model"})
    epsilon: float = field(default=0.2, metadata={"help": "lower clip"})
    epsilon_high: float | None = field(default=None, metadata={"help": "upper clip (clip-higher); None: same as epsilon"})
    scale_rewards: ScaleRewards | str = field(default=ScaleRewards.GROUP, metadata={"help": "group, batch or none (Dr. GRPO)"})
    loss_type: LossType | str = field(default=LossType.DAPO, metadata={"help": "grpo, dapo or dr_grpo"})
    num_iterations: int = field(default=1, metadata={"help": "policy updates per batch of rollouts"})
    advantage_eps: float = 1e-4

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "scale_rewards", parse_choice(ScaleRewards, self.scale_rewards, "scale_rewards", ConfigError))
        object.__setattr__(self, "loss_type", parse_choice(LossType, self.loss_type, "loss_type", ConfigError))
        check_positive(self, "num_generations", "num_iterations", "epsilon")
        if self.num_generations < 2:
            raise ConfigError("num_generations must be >= 2: group advantages compare completions of one prompt")
        if self.per_device_train_batch_size % self.num_generations:
            raise ConfigError(f"per_device_train_batch_size {self.per_device_train_batch_size} must be divisible by "
                              f"num_generations {self.num_generations} (whole groups per batch)")
        if self.beta < 0 or (self.epsilon_high is not None and self.epsilon_high <= 0):
            raise ConfigError("beta must be >= 0 and epsilon_high > 0")
        check_positive(self, "advantage_eps")

    @property
    def algorithm(self) -> Algorithm:
        return Algorithm.GRPO


@no_type_check
@dataclass(frozen=True)
class CFRLConfig(GRPOConfig):
    """Classifier-first RL: stage 1 trains only the classifier (unembedding, optionally the final norm)
    under the GRPO objective for `classifier_steps` steps, or until the mean reward reaches
    `classifier_until_reward`; stage 2 runs GRPO on every parameter for the remaining steps."""

    classifier_steps: int = 10
    classifier_until_reward: float | None = None
    train_final_norm: bool = False
    classifier_learning_rate: float | None = field(default=None, metadata={"help": "None: learning_rate"})
    untie_classifier: bool = field(default=False,
        metadata={"help": "tied embeddings: give the classifier its own copy before stage 1"})

    def __post_init__(self) -> None:
        if self.classifier_first is not None:
            raise ConfigError("CFRLConfig sets its schedule with classifier_steps, classifier_until_reward, "
                              "train_final_norm and classifier_learning_rate; leave classifier_first unset")
        if not isinstance(self.classifier_steps, int) or self.classifier_steps < 0:
            raise ConfigError(f"classifier_steps must be in [0, max_steps={self.max_steps}], got {self.classifier_steps}")
        super().__post_init__()

    @property
    def algorithm(self) -> Algorithm:
        return Algorithm.CFRL

    @property
    def schedule(self) -> ClassifierFirst:
        return ClassifierFirst(self.classifier_steps, self.classifier_until_reward, self.train_final_norm,
                               self.classifier_learning_rate, untie=self.untie_classifier)


@no_type_check
@dataclass(frozen=True)
class PPOConfig(TrainConfig):
    kl_coef: float = field(default=0.05, metadata={"help": "per-token KL penalty folded into the rewards"})
    gamma: float = 1.0
    lam: float = 0.95
    cliprange: float = 0.2
    cliprange_value: float = 0.2
    vf_coef: float = 0.5
    num_ppo_epochs: int = 2
    whiten_advantages: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive(self, "cliprange", "cliprange_value", "vf_coef", "num_ppo_epochs")
        if not (0 <= self.gamma <= 1 and 0 <= self.lam <= 1) or self.kl_coef < 0:
            raise ConfigError("gamma and lam must be in [0, 1] and kl_coef >= 0")

    @property
    def algorithm(self) -> Algorithm:
        return Algorithm.PPO


@no_type_check
@dataclass(frozen=True)
class DPOConfig(TrainConfig):
    """Sigmoid DPO on best-vs-worst pairs. Iterative (default), as RLHFlow's iterative DPO that trained the
    RL-circuitry paper's DPO model: every `round_steps` steps, `pair_prompts` prompts are sampled
    `pair_generations` times from the CURRENT policy and graded by the task's reward; each prompt gives its
    best and its worst sample as (chosen, rejected), and prompts whose samples all score the same (all correct
    or all wrong) are skipped and counted. The reference stays the initial model throughout (RLHFlow passes
    the initial model as `ref_model` in every iteration). Offline: one set of pairs sampled from the
    reference before training."""

    beta: float = 0.1
    rpo_alpha: float = field(default=0.0,
        metadata={"help": "weight of the NLL of the chosen completion added to the DPO loss (trl's RPO)"})
    pair_source: PairSource | str = field(default=PairSource.ITERATIVE,
        metadata={"help": "iterative (pairs resampled from the current policy every round) or offline (once, from "
                          "the reference)"})
    round_steps: int = field(default=10,
        metadata={"help": "iterative: steps trained on one round's pairs before the next round is sampled"})
    pair_prompts: int = field(default=80,
        metadata={"help": "prompts sampled per round (iterative) or once (offline) to build (chosen, rejected) pairs; "
                          "80 x 8 generations = the 64 completions a step trains on, for each of 10 steps"})
    pair_generations: int = 8

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive(self, "beta", "pair_prompts", "pair_generations", "round_steps")
        object.__setattr__(self, "pair_source", parse_choice(PairSource, self.pair_source, "pair_source", ConfigError))
        if self.pair_generations < 2:
            raise ConfigError(f"pair_generations must be >= 2 (a best and a worst sample per prompt), got "
                              f"{self.pair_generations}")
        if self.rpo_alpha < 0:
            raise ConfigError(f"rpo_alpha must be >= 0, got {self.rpo_alpha}")
        if self.classifier_first is not None and self.classifier_first.until_reward is not None:
            raise ConfigError("classifier_first.until_reward needs a reward per step, which DPO does not have; "
                              "use classifier_first.steps")

    @property
    def algorithm(self) -> Algorithm:
        return Algorithm.DPO
