"""``Trainer``: one training loop for every task (classification, multilabel, regression, causal LM).

``Trainer(cfg).train() -> dict`` runs: validate everything (nothing is written before) -> data ->
model (+ strategy, LoRA, teacher, fastft.patch) -> wrap (DDP/FSDP2 under torchrun) -> optimizer,
schedule, scaler -> (resume) -> loop with gradient accumulation, evaluation, early stopping,
atomic checkpoints -> best model on the test split -> final model + results.json.

Loss normalisation under gradient accumulation: the micro-batches of one optimizer step are taken
from the loader first, the number of items (sequences; label tokens for causal LM) of the whole
accumulated batch is counted (summed over ranks), and every micro-batch contributes
``sum of its per-item losses / that count`` -- so the gradient equals the one of a single big batch,
whatever the micro-batch sizes (HF's ``num_items_in_batch``). Under DDP the loss is additionally
multiplied by the world size because DDP averages gradients over ranks.

Exact resume: the data order is a function of (seed, epoch) and the loader skips the batches already
consumed; dropout and other in-step randomness is re-seeded from (seed, step, rank) at every step,
so a resumed run draws exactly what an uninterrupted one would.

Hooks for multi-GPU (dist owner): ``_wrap`` (DDP/FSDP2 wrapping), ``_checkpoint_payload``
(collective state gathering), ``_eval_gather``; every file write goes through ``self.is_main``.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import sys
import tempfile
import time
from contextlib import nullcontext
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from fastft.train import checkpoint as ckpt
from fastft.train import strategies as strat
from fastft.train.config import ConfigError, TrainConfig, config_from_dict
from fastft.train.runlog import RunLogger, fmt_duration, plot_curves

__all__ = ["Trainer", "TrainingError", "load_tokenizer", "check_model", "problem_type_of_model"]

LOWER_IS_BETTER = ("loss", "mse", "mae", "rmse", "perplexity", "hamming_loss")
_MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids", "position_ids")
MAX_NONFINITE_IN_A_ROW = 10


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. the loss stays NaN); one line for the user, exit code 1."""


# --------------------------------------------------------------------------------------------------
# model / tokenizer helpers (also used by `fastft eval` / `fastft predict`)


def check_model(path: str, flag: str = "--model"):
    """The model's ``AutoConfig``; :class:`ConfigError` when it is neither a folder nor reachable."""
    from transformers import AutoConfig

    if os.path.isdir(path) and not os.path.isfile(os.path.join(path, "config.json")):
        raise ConfigError(f"{flag} {path}: the folder has no config.json; pass a Hugging Face model folder")
    try:
        return AutoConfig.from_pretrained(path)
    except Exception as e:  # noqa: BLE001 - OSError / ValueError / hub errors
        why = str(e).splitlines()[0][:160] if str(e) else type(e).__name__
        raise ConfigError(
            f"unknown model {path!r} ({why}); pass {flag} <local model folder> (the hub is offline here)"
        ) from None


def load_tokenizer(path: str, model_config=None):
    """AutoTokenizer with a pad token guaranteed (GPT-style tokenizers: pad = eos)."""
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(path)
    except Exception as e:  # noqa: BLE001
        why = str(e).splitlines()[0][:160] if str(e) else type(e).__name__
        raise ConfigError(
            f"cannot load a tokenizer from {path!r} ({why}); pass --tokenizer <folder>"
        ) from None
    if tok.pad_token is None:
        if tok.eos_token is not None:
            tok.pad_token = tok.eos_token
        elif tok.unk_token is not None:
            tok.pad_token = tok.unk_token
        else:
            raise ConfigError(
                f"tokenizer {path!r} has no pad, eos or unk token; pass a --tokenizer that has one"
            )
    if getattr(model_config, "is_decoder", False) or getattr(model_config, "model_type", "") in (
        "gpt2",
        "llama",
        "mistral",
        "qwen2",
        "qwen3",
    ):
        # Decoders: right padding, so the last real token is found from the attention mask.
        tok.padding_side = "right"
    return tok


def problem_type_of_model(config) -> str:
    archs = getattr(config, "architectures", None) or []
    if any(a.endswith("ForCausalLM") or a.endswith("LMHeadModel") for a in archs):
        return "causal_lm"
    pt = getattr(config, "problem_type", None)
    if pt:
        return pt
    return "regression" if getattr(config, "num_labels", 2) == 1 else "single_label_classification"


def _first_line(e: BaseException) -> str:
    s = str(e).strip()
    return s.splitlines()[0] if s else type(e).__name__


# --------------------------------------------------------------------------------------------------


def _dist():
    from fastft import distributed

    return distributed


def _data():
    from fastft.train import data

    return data


def _lr_lambda(total: int, warmup: int, kind: str):
    def f(step: int) -> float:
        if warmup > 0 and step < warmup:
            return (step + 1) / (warmup + 1)
        if kind == "constant":
            return 1.0
        progress = (step - warmup) / max(1, total - warmup)
        progress = min(max(progress, 0.0), 1.0)
        if kind == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        return max(0.0, 1.0 - progress)

    return f


def _is_better(new: float, best: float | None, lower: bool, min_delta: float) -> bool:
    if new is None or (isinstance(new, float) and not math.isfinite(new)):
        return False
    if best is None:
        return True
    return (best - new > min_delta) if lower else (new - best > min_delta)


class Trainer:
    """Fine-tune one model as described by a :class:`TrainConfig`.

    >>> Trainer(TrainConfig(train_file="train.csv", epochs=3)).train()["test"]["accuracy"]
    """

    def __init__(self, cfg: TrainConfig | None = None, **overrides: Any) -> None:
        cfg = cfg if cfg is not None else TrainConfig()
        if overrides:
            cfg = config_from_dict(overrides, cfg)
        self.user_cfg = cfg
        self.cfg = cfg.resolved()
        self.cfg.validate()
        self._stop_signal: int | None = None
        self._created_dir = False
        self._old_handlers: dict[int, Any] = {}

    # ==============================================================================================
    # set-up: everything that can fail on bad input happens before the output dir is touched

    def _setup(self) -> None:
        cfg = self.cfg
        D = _dist()
        self.dist = D.init_distributed(cfg.device)
        self.device = self.dist.device
        self.is_main = self.dist.is_main
        self.world = self.dist.world_size
        if cfg.strategy == "gradual" and self.world > 1:  # hook: DDP needs a re-wrap when params unfreeze
            raise ConfigError("--strategy gradual is single-process for now; run without torchrun")
        self.precision = cfg.precision
        if self.precision == "auto":
            self.precision = (
                "bf16" if self.device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
            )
        if cfg.deterministic:  # restored when train() returns (tests and notebooks share the process)
            self._prev_deterministic = torch.are_deterministic_algorithms_enabled()
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True)
            torch.backends.cudnn.benchmark = False
        torch.manual_seed(cfg.seed)
        np.random.seed(cfg.seed % 2**32)

        # ---- output dir policy and resume checkpoint (read-only checks) ----------------------------
        self.resume_state = self._check_output_dir()

        # ---- model config, tokenizer, data ---------------------------------------------------------
        self.model_config = check_model(cfg.model)
        if cfg.teacher:
            check_model(cfg.teacher, "--teacher")
        self.tokenizer = load_tokenizer(cfg.tokenizer or cfg.model, self.model_config)
        self._split_tmp = tempfile.mkdtemp(prefix="fastft-split-")
        with D.main_process_first(self.dist):
            self.data = _data().prepare_data(cfg, self.tokenizer, output_dir=self._split_tmp)
        self.problem_type = self.data.problem_type
        self.num_labels = self.data.num_labels
        if (
            self.problem_type != "causal_lm"
            and cfg.num_labels is not None
            and cfg.num_labels != self.num_labels
        ):
            labels = ", ".join(map(str, list((self.data.label2id or {}).keys())[:10]))
            raise ConfigError(
                f"--num-labels {cfg.num_labels} does not match the {self.num_labels} labels in the data"
                + (f" ({labels})" if labels else "")
                + "; fix --num-labels or --label-column"
            )
        train_ds = self.data.splits.get("train")
        if train_ds is None or len(train_ds) == 0:
            raise ConfigError("the training split is empty after cleaning; pass a file with labelled rows")

        # ---- model, teacher, strategy ---------------------------------------------------------------
        self.model = self._load_model(cfg.model)
        self.teacher = self._load_teacher() if cfg.teacher else None
        self._apply_strategy()
        if cfg.gradient_checkpointing:
            # transformers >= 5.2x renamed it; the GPU image (5.17) has only the old name
            if hasattr(self.model, "activation_checkpointing_enable"):
                self.model.activation_checkpointing_enable(
                    activation_checkpointing_kwargs={"use_reentrant": False}
                )
            else:
                self.model.gradient_checkpointing_enable(
                    gradient_checkpointing_kwargs={"use_reentrant": False}
                )
            if hasattr(self.model.config, "use_cache"):
                self.model.config.use_cache = False
        self.fused_parts: list[str] = []
        if cfg.fused:
            import fastft
            from fastft.patching import patched_parts

            try:
                fastft.patch(self.model)
                self.fused_parts = patched_parts(self.model)
            except Exception as e:  # noqa: BLE001 - a kernel part must never stop training
                self._note(f"fastft.patch failed ({_first_line(e)}); training unfused")
        self.model.to(self.device)
        if self.teacher is not None:
            self.teacher.to(self.device)
        self.model = self._wrap(self.model)

        # ---- optimizer, schedule, scaler --------------------------------------------------------------
        self.loader_len = len(self._train_loader(epoch=0))
        self.steps_per_epoch = max(1, math.ceil(self.loader_len / cfg.grad_accum))
        if cfg.max_steps > 0:
            self.total_steps = cfg.max_steps
        else:
            self.total_steps = max(1, math.ceil(cfg.epochs * self.steps_per_epoch))
        self.num_epochs = math.ceil(self.total_steps / self.steps_per_epoch)
        self.optimizer, self.optimizer_kind = self._build_optimizer()
        warmup = cfg.warmup_steps if cfg.warmup_steps > 0 else int(cfg.warmup_ratio * self.total_steps)
        self.warmup = min(warmup, self.total_steps)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, _lr_lambda(self.total_steps, self.warmup, cfg.scheduler)
        )
        self.scaler = torch.amp.GradScaler(self.device.type) if self.precision == "fp16" else None

        # ---- training state ------------------------------------------------------------------------
        self.global_step = 0
        self.epoch = 0
        self.batch_in_epoch = 0
        self.best_metric: float | None = None
        self.best_step: int | None = None
        self.best_checkpoint: str | None = None
        self.best_eval: dict | None = None
        self.bad_evals = 0
        self.nonfinite_in_a_row = 0
        self.skipped_steps = 0
        self.last_saved_step = -1
        self.stopped_early = False
        self.metric_name, self.lower_is_better = self._best_metric_spec()
        if self.resume_state is not None:
            self._restore(self.resume_state)

        # ---- now, and only now, write to the output dir ---------------------------------------------
        self._prepare_output_dir()

    # ----------------------------------------------------------------------------------------------
    def _check_output_dir(self) -> dict | None:
        cfg = self.cfg
        out = cfg.output_dir
        if cfg.resume is not None:
            path = ckpt.latest_checkpoint(out) if cfg.resume == "latest" else cfg.resume
            if path is None:
                raise ConfigError(
                    f"--resume latest: no checkpoint-<step> folder in {out}; check --output-dir or drop --resume"
                )
            return ckpt.load_checkpoint(path)
        if os.path.isdir(out) and os.listdir(out):
            if cfg.overwrite:
                return None
            saved = os.path.join(out, "train_config.json")
            same = False
            if os.path.isfile(saved):
                try:
                    with open(saved, encoding="utf-8") as fh:
                        same = _comparable(json.load(fh)) == _comparable(cfg.to_dict())
                except (OSError, ValueError):
                    same = False
            if not same:
                raise ConfigError(
                    f"output dir {out} already holds another run; pass --overwrite to replace it, "
                    "--resume latest to continue it, or --output-dir <new folder>"
                )
            # The same config again (e.g. re-running the default command): replace that run's folder.
            self._note(f"{out} holds a run with the same config: replacing it")
        elif os.path.exists(out) and not os.path.isdir(out):
            raise ConfigError(f"--output-dir {out} is a file; pass a folder path")
        return None

    def _prepare_output_dir(self) -> None:
        cfg = self.cfg
        out = cfg.output_dir
        if self.is_main:
            if self.resume_state is None:
                if os.path.isdir(out) and os.listdir(out):
                    for name in os.listdir(out):  # --overwrite or the same config re-run
                        p = os.path.join(out, name)
                        shutil.rmtree(p) if os.path.isdir(p) and not os.path.islink(p) else os.remove(p)
                else:
                    self._created_dir = not os.path.exists(out)
                os.makedirs(out, exist_ok=True)
                for name in os.listdir(self._split_tmp):
                    shutil.move(os.path.join(self._split_tmp, name), os.path.join(out, name))
            else:
                self._truncate_metrics(self.global_step)
            with open(os.path.join(out, "train_config.json"), "w", encoding="utf-8") as fh:
                json.dump(cfg.to_dict(), fh, indent=2)
        shutil.rmtree(self._split_tmp, ignore_errors=True)
        _dist().barrier(self.dist)

    def _truncate_metrics(self, step: int) -> None:
        """On resume, drop metrics.jsonl lines written after the checkpoint (the killed run's tail)."""
        path = os.path.join(self.cfg.output_dir, "metrics.jsonl")
        if not os.path.exists(path):
            return
        keep = []
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                try:
                    r = json.loads(line)
                except ValueError:
                    continue
                if r.get("step", 0) <= step and r.get("type") not in ("test", "end"):
                    keep.append(line)
        with open(path, "w", encoding="utf-8") as fh:
            fh.writelines(keep)

    # ----------------------------------------------------------------------------------------------
    def _load_model(self, path: str):
        import transformers

        cfg = self.cfg
        kw: dict[str, Any] = {"dtype": torch.float32}
        if self.problem_type == "causal_lm":
            auto = transformers.AutoModelForCausalLM
        else:
            auto = transformers.AutoModelForSequenceClassification
            kw.update(num_labels=self.num_labels, problem_type=self.problem_type)
            if self.data.label2id:
                kw.update(
                    label2id=dict(self.data.label2id),
                    id2label={int(k): v for k, v in self.data.id2label.items()},
                )
            saved_n = getattr(self.model_config, "num_labels", None)
            is_classifier = any(
                a.endswith("ForSequenceClassification")
                for a in (getattr(self.model_config, "architectures", None) or [])
            )
            if is_classifier and saved_n not in (None, self.num_labels):
                if cfg.num_labels is None:
                    raise ConfigError(
                        f"the model's classifier has {saved_n} labels but the data has {self.num_labels}; "
                        f"check --label-column, or pass --num-labels {self.num_labels} to re-initialise the classifier"
                    )
                kw["ignore_mismatched_sizes"] = True
        try:
            from transformers.utils import logging as hf_logging

            verbosity = hf_logging.get_verbosity()
            hf_logging.set_verbosity_error()  # the "newly initialised head" report is expected here
            try:
                model = auto.from_pretrained(path, **kw)
            finally:
                hf_logging.set_verbosity(verbosity)
        except ConfigError:
            raise
        except Exception as e:  # noqa: BLE001
            raise ConfigError(
                f"cannot load {path!r} as {auto.__name__} ({_first_line(e)[:200]}); pass a compatible --model"
            ) from None
        pad = self.tokenizer.pad_token_id
        if getattr(model.config, "pad_token_id", None) is None and pad is not None:
            model.config.pad_token_id = pad
        if len(self.tokenizer) > model.get_input_embeddings().num_embeddings:
            raise ConfigError(
                f"the tokenizer has {len(self.tokenizer)} tokens but the model only "
                f"{model.get_input_embeddings().num_embeddings} embeddings; pass the model's own --tokenizer"
            )
        return model

    def _load_teacher(self):
        import transformers

        cfg = self.cfg
        auto = (
            transformers.AutoModelForCausalLM
            if self.problem_type == "causal_lm"
            else transformers.AutoModelForSequenceClassification
        )
        try:
            teacher = auto.from_pretrained(cfg.teacher, dtype=torch.float32)
        except Exception as e:  # noqa: BLE001
            raise ConfigError(
                f"cannot load --teacher {cfg.teacher} ({_first_line(e)[:200]}); pass a fine-tuned model"
            ) from None
        if self.problem_type != "causal_lm" and teacher.config.num_labels != self.num_labels:
            raise ConfigError(
                f"--teacher has {teacher.config.num_labels} labels but the data has {self.num_labels}; "
                "pass a teacher trained on the same labels"
            )
        if self.problem_type == "causal_lm" and (
            teacher.get_output_embeddings().weight.shape[0]
            != self.model.get_output_embeddings().weight.shape[0]
        ):
            raise ConfigError(
                "--teacher has a different vocabulary than --model; KD needs the same tokenizer"
            )
        teacher.eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
        return teacher

    def _apply_strategy(self) -> None:
        cfg = self.cfg
        model = self.model
        self.always_frozen: set[str] = set()
        self.n_groups = 0
        try:
            if cfg.strategy == "lora":
                import fastft

                kw: dict[str, Any] = dict(r=cfg.lora_r, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout)
                if cfg.lora_target_modules:
                    kw["target_modules"] = list(cfg.lora_target_modules)
                fastft.add_lora(model, **kw)
                if self.problem_type != "causal_lm":  # the new classifier must train (add_lora keeps heads)
                    fam = strat.family_of(model)
                    for head in fam.heads if fam else ("classifier", "score"):
                        m = strat.get_path(model, head)
                        if m is not None:
                            for p in m.parameters():
                                p.requires_grad_(True)
            elif cfg.strategy == "head_only":
                strat.apply_head_only(model)
            if cfg.strategy in ("freeze", "gradual", "full") and (
                cfg.strategy == "freeze" or cfg.freeze_layers
            ):
                strat.apply_freeze(model, cfg.freeze_layers)
                self.always_frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
            if cfg.strategy == "gradual":
                self.n_groups = len(strat.layer_groups(model))
                strat.apply_gradual(model, 1, self.always_frozen)
        except ConfigError:
            raise
        except (ValueError, TypeError) as e:
            raise ConfigError(f"--strategy {cfg.strategy}: {_first_line(e)}") from None
        if not any(p.requires_grad for p in model.parameters()):
            raise ConfigError(
                f"--strategy {cfg.strategy} leaves no trainable parameter; lower --freeze-layers"
            )

    def _wrap(self, model):
        """Hook (dist owner): DDP / FSDP2 wrapping under torchrun; identity in one process."""
        return _dist().wrap_model(model, self.dist, strategy=self.cfg.dist_strategy)

    @property
    def raw_model(self):
        return _dist().unwrap_model(self.model)

    def _build_optimizer(self):
        cfg = self.cfg
        groups = strat.param_groups(self.raw_model, cfg.lr, cfg.weight_decay, cfg.layer_lr_decay)
        if cfg.strategy == "lora":  # frozen base weights need no optimizer state at all
            groups = [g for g in groups if any(p.requires_grad for p in g["params"])]
            for g in groups:
                keep = [(n, p) for n, p in zip(g["param_names"], g["params"]) if p.requires_grad]
                g["param_names"] = [n for n, _ in keep]
                g["params"] = [p for _, p in keep]
        kw = dict(
            lr=cfg.lr, betas=(cfg.adam_beta1, cfg.adam_beta2), eps=cfg.adam_eps, weight_decay=cfg.weight_decay
        )
        self._clip_here = False
        if cfg.fused:
            try:
                from fastft.optim import FusedAdamW
            except ImportError:
                FusedAdamW = None
            if FusedAdamW is not None:
                return FusedAdamW(groups, max_grad_norm=cfg.max_grad_norm or None, **kw), "fastft.FusedAdamW"
        self._clip_here = cfg.max_grad_norm > 0
        return torch.optim.AdamW(groups, **kw), "torch.optim.AdamW"

    def _best_metric_spec(self) -> tuple[str, bool]:
        name = self.cfg.metric_for_best
        if name is None:
            name = {
                "single_label_classification": "accuracy",
                "multi_label_classification": "f1_micro",
                "regression": "rmse",
                "causal_lm": "loss",
            }.get(self.problem_type, "loss")
        return name, name in LOWER_IS_BETTER

    # ----------------------------------------------------------------------------------------------
    def _restore(self, st: dict) -> None:
        D = _dist()
        ts = st["trainer_state"]
        try:
            D.load_full_state_dict(self.model, st["model"], self.dist)
        except Exception as e:  # noqa: BLE001
            raise ckpt._corrupt(st["path"], f"model does not fit ({_first_line(e)[:160]})") from None
        try:
            D.load_optim_state_dict(self.model, self.optimizer, st["optimizer"], self.dist)
            self.scheduler.load_state_dict(st["scheduler"])
            if self.scaler is not None and st.get("scaler"):
                self.scaler.load_state_dict(st["scaler"])
        except Exception as e:  # noqa: BLE001
            raise ckpt._corrupt(
                st["path"], f"optimizer/scheduler state does not fit ({_first_line(e)[:160]})"
            ) from None
        ckpt.set_rng_state(st["rng"])
        self.global_step = ts["global_step"]
        self.epoch = ts["epoch"]
        self.batch_in_epoch = ts["batch_in_epoch"]
        self.best_metric = ts.get("best_metric")
        self.best_step = ts.get("best_step")
        self.best_checkpoint = ts.get("best_checkpoint")
        self.best_eval = ts.get("best_eval")
        self.bad_evals = ts.get("bad_evals", 0)
        self.skipped_steps = ts.get("skipped_steps", 0)
        self.last_saved_step = self.global_step
        saved_world = int(ts.get("world_size") or 1)
        if saved_world != self.world:  # batch_in_epoch counts one rank's batches: re-shard the global count
            consumed = self.batch_in_epoch * saved_world
            self.batch_in_epoch = consumed // self.world
            if consumed % self.world:
                self._note(
                    f"warning: {consumed} batches consumed by {saved_world} processes do not split over "
                    f"{self.world}; {consumed % self.world} batch(es) of this epoch are seen again"
                )
        if self.batch_in_epoch >= self.loader_len:
            self.epoch += 1
            self.batch_in_epoch = 0
        saved = ts.get("config", {})
        for key in ("batch_size", "grad_accum", "seed", "max_length", "train_file", "dataset"):
            if (
                key == "grad_accum"
                and saved.get(key)
                and saved[key] * saved_world == self.cfg.grad_accum * self.world
            ):
                continue  # the same global batch with another number of processes
            if key in saved and saved[key] != getattr(self.cfg, key):
                self._note(
                    f"warning: --{key.replace('_', '-')} differs from the checkpoint's "
                    f"({saved[key]!r}); the resumed run will not match an uninterrupted one"
                )

    def _note(self, msg: str) -> None:
        self._pending_notes = getattr(self, "_pending_notes", []) + [msg]

    # ==============================================================================================
    # data

    def _train_loader(self, epoch: int, skip: int = 0):
        cfg = self.cfg
        return _data().make_dataloader(
            self.data.splits["train"],
            self.tokenizer,
            batch_size=cfg.batch_size,
            shuffle=True,
            seed=cfg.seed,
            epoch=epoch,
            skip_batches=skip,
            group_by_length=cfg.group_by_length,
            pad_to_max_length=cfg.pad_to_max_length,
            max_length=cfg.max_length,
            problem_type=self.problem_type,
            rank=self.dist.rank,
            world_size=self.world,
            token_dropout=cfg.token_dropout,
        )

    def _eval_loader(self, ds, *, rank: int | None = None, world_size: int | None = None):
        cfg = self.cfg
        return _data().make_dataloader(
            ds,
            self.tokenizer,
            batch_size=cfg.eval_batch_size,
            shuffle=False,
            seed=cfg.seed,
            group_by_length=False,
            pad_to_max_length=cfg.pad_to_max_length,
            max_length=cfg.max_length,
            problem_type=self.problem_type,
            rank=self.dist.rank if rank is None else rank,
            world_size=self.world if world_size is None else world_size,
        )

    def _to_device(self, batch: dict) -> dict:
        return {k: v.to(self.device, non_blocking=True) for k, v in batch.items() if torch.is_tensor(v)}

    @staticmethod
    def _count_items(batch: dict, problem_type: str) -> int:
        if problem_type == "causal_lm":
            return int((batch["labels"][:, 1:] != -100).sum())
        return int(batch["labels"].shape[0])

    # ==============================================================================================
    # loss

    def _autocast(self):
        if self.precision in ("fp16", "bf16"):
            dtype = torch.float16 if self.precision == "fp16" else torch.bfloat16
            return torch.autocast(self.device.type, dtype=dtype)
        return nullcontext()

    def _loss(self, model, batch: dict, n_items: int) -> torch.Tensor:
        """Loss of one micro-batch = sum of its per-item losses / ``n_items`` (the accumulated batch's)."""
        inputs = {k: batch[k] for k in _MODEL_INPUTS if k in batch}
        labels = batch["labels"]
        pt = self.problem_type
        if pt == "causal_lm":
            if self.teacher is None:
                # The model's own (possibly fastft-fused linear+CE) loss, reduced as sum / num_items_in_batch.
                out = model(**inputs, labels=labels, num_items_in_batch=n_items, use_cache=False)
                return out.loss
            logits = model(**inputs, use_cache=False).logits[:, :-1]
            with torch.no_grad():
                t_logits = self.teacher(**inputs, use_cache=False).logits[:, :-1]
            target = labels[:, 1:]
            return self._kd(logits.flatten(0, 1), t_logits.flatten(0, 1), target.flatten()) / n_items
        logits = model(**inputs).logits.float()
        if pt == "single_label_classification":
            if self.teacher is not None:
                with torch.no_grad():
                    t_logits = self.teacher(**inputs).logits.float()
                return self._kd(logits, t_logits, labels) / n_items
            return self._ce(logits, labels) / n_items
        if pt == "multi_label_classification":
            # per item: mean over its labels (BCEWithLogitsLoss "mean" over a batch of one)
            per = F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype), reduction="none")
            return per.mean(-1).sum() / n_items
        if pt == "regression":
            pred = logits.squeeze(-1) if logits.shape[-1] == 1 else logits
            per = (pred - labels.to(pred.dtype).view_as(pred)) ** 2
            per = per.mean(-1) if per.dim() > 1 else per
            return per.sum() / n_items
        raise ValueError(f"unknown problem_type {pt!r}")

    def _ce(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.cfg.fused:
            try:
                from fastft.functional import cross_entropy
            except ImportError:
                cross_entropy = None
            if cross_entropy is not None:
                return cross_entropy(logits, labels, reduction="sum")
        return F.cross_entropy(logits, labels, reduction="sum")

    def _kd(self, s: torch.Tensor, t: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Sum over items of (1-a)*CE + a*T^2*KL(teacher_T || student_T) (ignore_index=-100 items excluded)."""
        from fastft.functional import kd_loss

        return kd_loss(
            s,
            t.float(),
            target,
            temperature=self.cfg.kd_temperature,
            alpha=self.cfg.kd_alpha,
            reduction="sum",
        )

    # ==============================================================================================
    # the loop

    def train(self) -> dict:
        """Run the whole job; returns the content of results.json (or a partial one when interrupted)."""
        try:
            self._setup()
        except BaseException:
            self._cleanup_failed_setup()
            self._restore_globals()
            raise
        self._install_signal_handlers()
        try:
            return self._run()
        finally:
            self._restore_signal_handlers()
            self._restore_globals()
            if hasattr(self, "log"):
                self.log.close()

    def _restore_globals(self) -> None:
        if getattr(self, "_prev_deterministic", None) is not None:
            torch.use_deterministic_algorithms(self._prev_deterministic)
            self._prev_deterministic = None

    def _cleanup_failed_setup(self) -> None:
        tmp = getattr(self, "_split_tmp", None)
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
        if self._created_dir and getattr(self, "is_main", True):
            shutil.rmtree(self.cfg.output_dir, ignore_errors=True)
        D = _dist()
        if hasattr(self, "dist"):
            D.cleanup(self.dist)

    def _summary(self) -> list[str]:
        cfg = self.cfg
        raw = self.raw_model
        n_total = sum(p.numel() for p in raw.parameters())
        n_train = sum(p.numel() for p in raw.parameters() if p.requires_grad)
        rep = self.data.report or {}
        sizes = {k: len(v) for k, v in self.data.splits.items() if v is not None}
        try:
            import fastft

            ops = fastft.report()
        except Exception:  # noqa: BLE001
            ops = {}
        lines = [
            "fastft train",
            f"  model      {cfg.model} ({type(raw).__name__}, {self.model_config.model_type})",
            f"  params     {n_total / 1e6:.2f}M, trainable {n_train / 1e6:.3f}M ({100 * n_train / max(n_total, 1):.2f}%)",
            f"  task       {self.problem_type}"
            + (f", {self.num_labels} labels" if self.problem_type != "causal_lm" else ""),
            f"  data       {cfg.dataset or cfg.train_file}: "
            + ", ".join(f"{k} {v}" for k, v in sizes.items()),
        ]
        dropped = {k: v for k, v in rep.items() if "drop" in k or "duplicate" in k or "empty" in k}
        if dropped:
            lines.append(f"  cleaning   {json.dumps(dropped, default=str)}")
        lines += [
            f"  strategy   {cfg.strategy}"
            + (f", freeze {cfg.freeze_layers} layers" if cfg.freeze_layers else "")
            + (f", LLRD {cfg.layer_lr_decay}" if cfg.layer_lr_decay != 1.0 else "")
            + (f", LoRA r={cfg.lora_r} alpha={cfg.lora_alpha}" if cfg.strategy == "lora" else "")
            + (
                f", KD from {cfg.teacher} (T={cfg.kd_temperature}, alpha={cfg.kd_alpha})"
                if cfg.teacher
                else ""
            ),
            f"  steps      {self.total_steps} optimizer steps ({self.steps_per_epoch}/epoch, {self.num_epochs} epoch(s)), "
            f"batch {cfg.batch_size} x accum {cfg.grad_accum} x {self.world} process(es), warmup {self.warmup}, {cfg.scheduler}",
            f"  optimizer  {self.optimizer_kind}, lr {cfg.lr:g}, weight decay {cfg.weight_decay:g}, max grad norm {cfg.max_grad_norm:g}",
            f"  precision  {self.precision} on {self.device}"
            + (", gradient checkpointing" if cfg.gradient_checkpointing else ""),
            "  fused      "
            + (
                ("patched: " + ", ".join(self.fused_parts))
                if self.fused_parts
                else ("off (--no-fused)" if not cfg.fused else "no fused part applies to this model")
            ),
        ]
        if ops:
            lines.append("  kernels    " + "; ".join(f"{k}: {v}" for k, v in sorted(ops.items())))
        lines.append(f"  output     {cfg.output_dir}")
        if self.resume_state is not None:
            lines.append(
                f"  resume     {self.resume_state['path']} (step {self.global_step}, epoch {self.epoch}, "
                f"batch {self.batch_in_epoch})"
            )
        return lines

    def _run(self) -> dict:
        cfg = self.cfg
        D = _dist()
        self.log = RunLogger(
            cfg.output_dir,
            enabled=self.is_main,
            total_steps=self.total_steps,
            start_step=self.global_step,
            report_to=cfg.report_to,
        )
        import textwrap

        items = ", ".join(f"{k}={json.dumps(v)}" for k, v in cfg.to_dict().items())
        self.log.print("resolved config (saved as train_config.json):")
        self.log.print(textwrap.fill(items, width=110, initial_indent="  ", subsequent_indent="  "))
        for line in self._summary():
            self.log.print(line)
        for note in getattr(self, "_pending_notes", []):
            self.log.print(note)
        t_start = time.perf_counter()
        start_step = self.global_step
        samples_seen = 0
        interrupted = None
        win_loss = torch.zeros((), device=self.device)
        win_steps = 0
        win_samples = 0
        win_t = time.perf_counter()
        model = self.model
        model.train()
        done = self.global_step >= self.total_steps
        while not done and self.epoch < self.num_epochs:
            if cfg.strategy == "gradual":
                self._update_unfrozen()
            loader = self._train_loader(self.epoch, skip=self.batch_in_epoch)
            it = iter(loader)
            while True:
                window = []
                for _ in range(cfg.grad_accum):
                    try:
                        window.append(next(it))
                    except StopIteration:
                        break
                if not window:
                    break
                if cfg.strategy == "gradual" and cfg.unfreeze_every:
                    self._update_unfrozen()
                loss_val, n_samples, finite = self._step(model, window)
                self.global_step += 1
                self.batch_in_epoch += len(window)
                samples_seen += n_samples
                win_samples += n_samples
                if finite:
                    win_loss += loss_val
                    win_steps += 1
                # ---- logging ----
                log_now = self.global_step % cfg.logging_steps == 0 or self.global_step == self.total_steps
                lr = max(g["lr"] for g in self.optimizer.param_groups)
                if log_now:
                    # each rank holds (its items' loss sum / the global item count): their sum is the mean
                    mean_loss = float(D.all_reduce_sum(win_loss.detach().clone(), self.dist)) / max(
                        win_steps, 1
                    )
                    dt = max(time.perf_counter() - win_t, 1e-9)
                    sps = win_samples * self.world / dt
                    rec = {
                        "type": "train",
                        "step": self.global_step,
                        "epoch": round(self.epoch + self.batch_in_epoch / max(self.loader_len, 1), 4),
                        "loss": mean_loss if win_steps else None,
                        "lr": lr,
                        "samples_per_s": round(sps, 2),
                        "grad_norm": self._last_grad_norm,
                        "skipped_steps": self.skipped_steps,
                        "time_s": round(time.perf_counter() - t_start, 2),
                    }
                    self.log.event(rec)
                    self.log.step(
                        self.global_step,
                        loss=rec["loss"],
                        lr=lr,
                        samples_per_s=sps,
                        epoch=rec["epoch"],
                        line=True,
                    )
                    win_loss.zero_()
                    win_steps = win_samples = 0
                    win_t = time.perf_counter()
                else:
                    self.log.step(self.global_step)
                # ---- evaluation / checkpoint / stop ----
                end_of_epoch = self.batch_in_epoch >= self.loader_len
                last = self.global_step >= self.total_steps
                do_eval = cfg.eval_strategy != "no" and (
                    (cfg.eval_strategy == "steps" and self.global_step % cfg.eval_steps == 0)
                    or (cfg.eval_strategy == "epoch" and end_of_epoch)
                    or last
                )
                if do_eval:
                    self._evaluate_and_track()
                    model.train()
                saved = False
                if do_eval or (cfg.save_steps and self.global_step % cfg.save_steps == 0):
                    self._save_checkpoint()
                    saved = True
                if self.stopped_early or last:
                    done = True
                if self._stop_signal is not None and not done:  # (a signal during the last step: just finish)
                    if not saved:
                        self._save_checkpoint()
                    interrupted = signal.Signals(self._stop_signal).name
                    done = True
                if done:
                    break
            if done:
                break
            self.epoch += 1
            self.batch_in_epoch = 0
        train_time = time.perf_counter() - t_start
        if interrupted:
            self.log.close()
            msg = (
                f"interrupted by {interrupted} at step {self.global_step}: checkpoint saved in "
                f"{self.cfg.output_dir}; continue with --resume latest"
            )
            self.log.print(msg)
            if self.is_main and not self.log.enabled:
                print(msg)
            D.cleanup(self.dist)
            return {
                "interrupted": interrupted,
                "global_step": self.global_step,
                "checkpoint": ckpt.latest_checkpoint(cfg.output_dir),
            }
        return self._finish(train_time, samples_seen, start_step)

    # ----------------------------------------------------------------------------------------------
    def _update_unfrozen(self) -> None:
        k = strat.gradual_groups_unfrozen(
            self.global_step, self.epoch, self.cfg.unfreeze_every, self.n_groups
        )
        if k != getattr(self, "_unfrozen", None):
            strat.apply_gradual(self.raw_model, k, self.always_frozen)
            self._unfrozen = k

    _last_grad_norm: float | None = None

    def _step(self, model, window: list[dict]) -> tuple[torch.Tensor, int, bool]:
        """One optimizer step over the micro-batches in ``window``; returns (loss, samples, finite)."""
        cfg = self.cfg
        D = _dist()
        batches = [self._to_device(b) for b in window]
        n_local = sum(self._count_items(b, self.problem_type) for b in window)
        n_samples = sum(int(b["input_ids"].shape[0]) for b in window)
        n_items = n_local
        if self.world > 1:
            n_items = int(
                D.all_reduce_sum(torch.tensor(n_local, device=self.device, dtype=torch.long), self.dist)
            )
        n_items = max(n_items, 1)
        # In-step randomness (dropout, LoRA dropout) is a function of (seed, step, rank): exact resume.
        torch.manual_seed(
            (self.cfg.seed * 1_000_003 + self.global_step * 1009 + self.dist.rank) % (2**63 - 1)
        )
        total = torch.zeros((), device=self.device)
        for i, b in enumerate(batches):
            with D.no_sync(model, active=i < len(batches) - 1):
                with self._autocast():
                    loss = self._loss(model, b, n_items)
                if self.world > 1:
                    loss = loss * self.world  # DDP averages gradients over ranks; we want the sum / n_items
                if self.scaler is not None:
                    self.scaler.scale(loss).backward()
                else:
                    loss.backward()
            total += loss.detach().float() / self.world
        # one host sync per optimizer step: decide on a non-finite loss (all ranks agree)
        bad = (~torch.isfinite(total)).float()
        if self.world > 1:
            bad = D.all_reduce_sum(bad, self.dist)
        finite = float(bad) == 0.0
        if not finite:
            self.optimizer.zero_grad(set_to_none=True)
            self.skipped_steps += 1
            self.nonfinite_in_a_row += 1
            if cfg.on_nonfinite == "stop" or self.nonfinite_in_a_row >= MAX_NONFINITE_IN_A_ROW:
                raise TrainingError(
                    f"the loss is NaN/inf at step {self.global_step + 1}"
                    + (f" ({self.nonfinite_in_a_row} steps in a row)" if self.nonfinite_in_a_row > 1 else "")
                    + "; lower --lr, use --precision bf16 or fp32, or check the data for broken labels"
                )
            # the schedule still advances so that step counts and data position stay aligned
            self.scheduler.step()
            return total, n_samples, False
        self.nonfinite_in_a_row = 0
        if self.scaler is not None:
            if self._clip_here:
                self.scaler.unscale_(self.optimizer)
                self._last_grad_norm = float(
                    torch.nn.utils.clip_grad_norm_(self._trainable(), cfg.max_grad_norm)
                )
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            if self._clip_here:
                self._last_grad_norm = float(
                    torch.nn.utils.clip_grad_norm_(self._trainable(), cfg.max_grad_norm)
                )
            self.optimizer.step()
        gn = getattr(self.optimizer, "grad_norm", None)
        if gn is not None and not self._clip_here:
            self._last_grad_norm = float(gn)
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return total, n_samples, True

    def _trainable(self):
        return [p for p in self.model.parameters() if p.requires_grad and p.grad is not None]

    # ==============================================================================================
    # evaluation

    @torch.no_grad()
    def evaluate(self, split: str = "validation") -> dict:
        """Metrics of the current model on ``split`` (loss, task metrics; perplexity for causal LM)."""
        ds = self.data.splits.get(split)
        if ds is None or len(ds) == 0:
            return {}
        return evaluate_model(
            self.model,
            self._eval_loader(ds),
            problem_type=self.problem_type,
            device=self.device,
            autocast=self._autocast,
            dist_state=self.dist,
            total=len(ds),
            index=self._eval_index(ds) if self.world > 1 else None,
        )

    def _eval_index(self, ds) -> torch.Tensor:
        """Dataset row of every row this rank evaluates (in loader order), so that ranks' results are
        put back in dataset order and the shard padding (repeated rows) is dropped."""
        lengths = [0] * len(ds)  # unused without length grouping
        batches = _data().global_batch_order(
            lengths,
            self.cfg.eval_batch_size,
            shuffle=False,
            seed=self.cfg.seed,
            group_by_length=False,
            world_size=self.world,
        )
        rows = [i for b in batches[self.dist.rank :: self.world] for i in b]
        return torch.tensor(rows, dtype=torch.long, device=self.device)

    def _evaluate_and_track(self) -> None:
        cfg = self.cfg
        metrics = self.evaluate("validation")
        if not metrics:
            return
        value = metrics.get(self.metric_name)
        if value is None and self.metric_name not in metrics:
            raise ConfigError(
                f"--metric-for-best {self.metric_name!r} is not computed for {self.problem_type}; "
                f"use one of {', '.join(k for k, v in metrics.items() if isinstance(v, (int, float)))}"
            )
        improved = _is_better(value, self.best_metric, self.lower_is_better, cfg.early_stopping_min_delta)
        if improved:
            self.best_metric, self.best_step, self.best_eval = value, self.global_step, metrics
            self.bad_evals = 0
        else:
            self.bad_evals += 1
        rec = {
            "type": "eval",
            "split": "validation",
            "step": self.global_step,
            "epoch": round(self.epoch + self.batch_in_epoch / max(self.loader_len, 1), 4),
            **{k: v for k, v in metrics.items() if k != "confusion_matrix"},
            "is_best": improved,
        }
        self.log.event(rec)
        shown = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if isinstance(v, float))
        self.log.print(f"eval @ step {self.global_step}: {shown}" + ("  (best)" if improved else ""))
        if cfg.early_stopping_patience and self.bad_evals >= cfg.early_stopping_patience:
            self.stopped_early = True
            self.log.print(
                f"early stopping: no {self.metric_name} improvement > {cfg.early_stopping_min_delta} "
                f"in {self.bad_evals} evaluations"
            )

    # ==============================================================================================
    # checkpoints

    def _trainer_state(self) -> dict:
        return {
            "global_step": self.global_step,
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "world_size": self.world,
            "total_steps": self.total_steps,
            "best_metric": self.best_metric,
            "best_step": self.best_step,
            "best_checkpoint": self.best_checkpoint,
            "best_eval": self.best_eval,
            "metric": self.metric_name,
            "bad_evals": self.bad_evals,
            "skipped_steps": self.skipped_steps,
            "unfrozen_groups": getattr(self, "_unfrozen", None),
            "problem_type": self.problem_type,
            "config": self.cfg.to_dict(),
        }

    def _checkpoint_payload(self) -> dict:
        """Hook (dist owner): the collective part of a checkpoint; every rank calls it."""
        D = _dist()
        return {
            "model_state": D.full_state_dict(self.model, self.dist),
            "optimizer_state": D.optim_state_dict(self.model, self.optimizer, self.dist),
        }

    def _save_checkpoint(self) -> None:
        if self.last_saved_step == self.global_step:
            return
        payload = self._checkpoint_payload()
        path = os.path.join(self.cfg.output_dir, f"checkpoint-{self.global_step}")
        if self.best_step == self.global_step:
            self.best_checkpoint = path
        if self.is_main:
            ckpt.save_checkpoint(
                self.cfg.output_dir,
                self.global_step,
                **payload,
                scheduler_state=self.scheduler.state_dict(),
                scaler_state=self.scaler.state_dict() if self.scaler is not None else None,
                trainer_state=self._trainer_state(),
            )
            ckpt.rotate_checkpoints(
                self.cfg.output_dir, self.cfg.save_total_limit, keep=(self.best_checkpoint, path)
            )
        self.last_saved_step = self.global_step
        _dist().barrier(self.dist)

    # ==============================================================================================
    # the end: best model -> test -> final model + results.json

    def _finish(self, train_time: float, samples_seen: int, start_step: int) -> dict:
        cfg = self.cfg
        D = _dist()
        self.log.close()
        raw = self.raw_model
        best = self.best_checkpoint
        if best and self.best_step != self.global_step and os.path.isdir(best):
            sd = ckpt.load_state_dict_file(os.path.join(best, "model.safetensors"))
            D.load_full_state_dict(self.model, sd, self.dist)
            self.log.print(
                f"loaded the best model (step {self.best_step}, {self.metric_name} {self.best_metric:.4f})"
            )
        test = self.evaluate("test")
        if test:
            self.log.event(
                {
                    "type": "test",
                    "step": self.global_step,
                    **{k: v for k, v in test.items() if k != "confusion_matrix"},
                }
            )
        # the final model: plain transformers layout (no fastft hooks, LoRA merged)
        full = D.full_state_dict(self.model, self.dist)
        results: dict[str, Any] = {
            "test": test,
            "best_validation": self.best_eval,
            "best_step": self.best_step,
            "best_checkpoint": self.best_checkpoint,
            "metric_for_best": self.metric_name,
            "global_step": self.global_step,
            "stopped_early": self.stopped_early,
            "skipped_steps": self.skipped_steps,
            "train_runtime_s": round(train_time, 2),
            "train_samples_per_s": round(samples_seen * self.world / max(train_time, 1e-9), 2),
            "problem_type": self.problem_type,
            "num_labels": self.num_labels,
            "precision": self.precision,
            "fused_parts": self.fused_parts,
            "optimizer": self.optimizer_kind,
            "data": self.data.report,
            "output_dir": cfg.output_dir,
        }
        try:
            import fastft

            results["kernels"] = fastft.report()
        except Exception:  # noqa: BLE001
            pass
        if self.is_main:
            self._save_final(raw, full)
            with open(os.path.join(cfg.output_dir, "results.json"), "w", encoding="utf-8") as fh:
                json.dump(results, fh, indent=2, default=str)
            try:
                plot_curves(
                    os.path.join(cfg.output_dir, "metrics.jsonl"),
                    os.path.join(cfg.output_dir, "training_curve.png"),
                    self.metric_name,
                )
            except Exception as e:  # noqa: BLE001 - a plot must never fail a finished run
                print(f"could not draw training_curve.png: {_first_line(e)}")
            self._print_final(results)
        D.barrier(self.dist)
        D.cleanup(self.dist)
        return results

    def _save_final(self, raw, full_sd: dict) -> None:
        cfg = self.cfg
        from fastft.patching import unpatch

        unpatch(raw)
        out = cfg.output_dir
        if cfg.strategy == "lora":
            import fastft

            if _dist().is_fsdp(raw):  # DTensor shards cannot be merged in place: use a plain replica
                raw = self._plain_replica()
                raw.load_state_dict(full_sd)
            fastft.save_adapter(raw, os.path.join(out, "adapter"))
            # merge_and_unload: the original modules come back with B·A folded in -> a plain HF model
            fastft.merge_lora(raw, keep_adapter=False)
        if self.cfg.gradient_checkpointing:
            disable = getattr(raw, "activation_checkpointing_disable", None) or getattr(
                raw, "gradient_checkpointing_disable", None
            )
            if disable is not None:
                disable()
        if hasattr(raw.config, "use_cache") and self.problem_type == "causal_lm":
            raw.config.use_cache = True
        raw.save_pretrained(
            out, state_dict=full_sd if cfg.strategy != "lora" else None, safe_serialization=True
        )
        self.tokenizer.save_pretrained(out)

    def _plain_replica(self):
        """A fresh unsharded model with the same structure (LoRA layers included), to save from under FSDP2."""
        sharded = self.model
        try:
            self.model = self._load_model(self.cfg.model)
            self._apply_strategy()
            return self.model
        finally:
            self.model = sharded

    def _print_final(self, results: dict) -> None:
        test = results.get("test") or {}
        out = self.cfg.output_dir
        if self.problem_type == "single_label_classification" and "accuracy" in test:
            head = f"TEST ACCURACY: {test['accuracy']:.4f}"
        elif self.problem_type == "multi_label_classification" and "f1_micro" in test:
            head = f"TEST F1 (micro): {test['f1_micro']:.4f}  subset accuracy: {test.get('accuracy', float('nan')):.4f}"
        elif self.problem_type == "regression" and "rmse" in test:
            head = f"TEST RMSE: {test['rmse']:.4f}  MAE: {test.get('mae', float('nan')):.4f}"
        elif self.problem_type == "causal_lm" and "perplexity" in test:
            head = f"TEST PERPLEXITY: {test['perplexity']:.3f}  loss: {test['loss']:.4f}"
        else:
            head = "no test split: see the validation metrics in results.json"
        n = len(self.data.splits.get("test") or []) if self.data.splits.get("test") is not None else 0
        print("=" * 72)
        print(f"{head}" + (f"  (n={n} test rows)" if n else ""))
        print(
            f"trained {results['global_step']} steps in {fmt_duration(results['train_runtime_s'])}; "
            f"model, metrics.jsonl, training_curve.png and results.json in {out}"
        )
        kernels = results.get("kernels") or {}
        if kernels or self.fused_parts:
            print(
                "fused paths: "
                + (", ".join(self.fused_parts) or "none")
                + (" | " + "; ".join(f"{k}: {v}" for k, v in sorted(kernels.items())) if kernels else "")
            )
        print("=" * 72, flush=True)

    # ==============================================================================================
    # signals: SIGTERM / Ctrl-C save a checkpoint at the next step boundary and exit cleanly

    def request_stop(self, signum: int = signal.SIGTERM) -> None:
        """Ask the loop to save a checkpoint and return after the current step (what SIGTERM does)."""
        self._stop_signal = signum

    def _install_signal_handlers(self) -> None:
        import threading

        if threading.current_thread() is not threading.main_thread():
            return

        def handler(signum, frame):
            if self._stop_signal is not None:  # second signal: stop now
                signal.signal(signum, signal.SIG_DFL)
                raise KeyboardInterrupt
            self._stop_signal = signum
            print(
                f"\n{signal.Signals(signum).name}: saving a checkpoint after this step "
                "(send it again to stop immediately)",
                file=sys.stderr,
                flush=True,
            )

        for sig in (signal.SIGINT, signal.SIGTERM):
            self._old_handlers[sig] = signal.signal(sig, handler)

    def _restore_signal_handlers(self) -> None:
        for sig, h in self._old_handlers.items():
            signal.signal(sig, h)
        self._old_handlers = {}


def _comparable(d: dict) -> dict:
    """Config fields that define a run (resume/overwrite do not)."""
    return {k: v for k, v in d.items() if k not in ("resume", "overwrite")}


def _item_losses(problem_type: str, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-item loss (B,) for the sequence tasks, as the training loss defines it."""
    if problem_type == "single_label_classification":
        return F.cross_entropy(logits, labels, reduction="none")
    if problem_type == "multi_label_classification":
        return F.binary_cross_entropy_with_logits(logits, labels.float(), reduction="none").mean(-1)
    pred = logits.squeeze(-1) if logits.shape[-1] == 1 else logits
    return ((pred - labels.float().view_as(pred)) ** 2).reshape(pred.shape[0], -1).mean(-1)


@torch.no_grad()
def evaluate_model(
    model,
    loader,
    *,
    problem_type: str,
    device,
    autocast=nullcontext,
    dist_state=None,
    total: int | None = None,
    index: torch.Tensor | None = None,
    return_logits: bool = False,
) -> dict:
    """Loss + metrics of ``model`` over ``loader`` (also used by `fastft eval`).

    Multi-process: ``index`` (the dataset row of each local row) lets :func:`gather_for_metrics` restore
    dataset order and drop the shard padding; the loss is then recomputed from the gathered logits.
    """
    from fastft.train.metrics import compute_metrics, perplexity

    D = _dist()
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    count = torch.zeros((), dtype=torch.float64, device=device)
    all_logits, all_labels = [], []
    rows_per_batch = None
    for step, batch in enumerate(loader):
        batch = {k: v.to(device) for k, v in batch.items() if torch.is_tensor(v)}
        inputs = {k: batch[k] for k in _MODEL_INPUTS if k in batch}
        labels = batch.get("labels")
        with autocast():
            if problem_type == "causal_lm":
                if dist_state is not None and dist_state.world_size > 1 and total is not None:
                    # the last global batches repeat rows (equal batch counts per rank): ignore those
                    rows = labels.shape[0]
                    rows_per_batch = rows_per_batch or rows
                    keep = D.eval_row_mask(dist_state, step, rows, rows_per_batch, total).to(labels.device)
                    labels = labels.masked_fill(~keep[:, None], -100)
                n = (labels[:, 1:] != -100).sum()
                out = model(**inputs, labels=labels, num_items_in_batch=int(n), use_cache=False)
                if int(n) > 0:
                    loss_sum += out.loss.double() * n
                count += n
                continue
            logits = model(**inputs).logits.float()
        if labels is not None:
            loss_sum += _item_losses(problem_type, logits, labels).sum().double()
            count += logits.shape[0]
            all_labels.append(labels)
        all_logits.append(logits)
    if was_training:
        model.train()
    if dist_state is not None and dist_state.world_size > 1:
        loss_sum = D.all_reduce_sum(loss_sum, dist_state)
        count = D.all_reduce_sum(count, dist_state)
    mean_loss = float(loss_sum / count.clamp_min(1))
    if problem_type == "causal_lm":
        return {"loss": mean_loss, "perplexity": perplexity(mean_loss), "tokens": int(count)}
    logits = torch.cat(all_logits) if all_logits else torch.empty(0)
    labels = torch.cat(all_labels) if all_labels else None
    if dist_state is not None and dist_state.world_size > 1 and total is not None:
        logits = D.gather_for_metrics(logits, dist_state, total, index=index)
        if labels is not None:
            labels = D.gather_for_metrics(labels, dist_state, total, index=index)
            mean_loss = float(_item_losses(problem_type, logits, labels).mean())
    metrics: dict[str, Any] = {}
    if labels is not None:
        metrics["loss"] = mean_loss
        metrics.update(compute_metrics(problem_type, logits.cpu().numpy(), labels.cpu().numpy()))
    if return_logits:
        metrics["_logits"] = logits.cpu()
    return metrics
