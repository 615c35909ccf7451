"""``Trainer``: one training loop for every task of :mod:`fastft.train.tasks`.

``Trainer(cfg).train() -> dict`` runs the set-up steps (nothing is written before all of them
passed): runtime (torchrun, precision, determinism, seeds) -> output dir checks -> data
(:mod:`~fastft.train.data`) -> model (:mod:`~fastft.train.models`: task model, teacher, strategy,
fastft.patch, DDP/FSDP2 wrapping) -> optimizer and schedule (:mod:`~fastft.train.schedule`) ->
resume (the checkpoint is read inside :meth:`_restore` and dropped) -> the loop with gradient
accumulation, evaluation (:mod:`~fastft.train.evaluate`), early stopping and atomic checkpoints
-> best model on the test split -> final model + results.json. The task object supplies the
loss, the item count, the metrics and the summary line; the loop names no task.

Loss normalisation under gradient accumulation: the micro-batches of one optimizer step are taken
from the loader first, the number of items (``task.count_items``: sequences, or label tokens) of the
whole accumulated batch is counted (summed over ranks), and every micro-batch contributes
``sum of its per-item losses / that count`` -- so the gradient equals the one of a single big batch,
whatever the micro-batch sizes (HF's ``num_items_in_batch``). Under DDP the loss is additionally
multiplied by the world size because DDP averages gradients over ranks.

Exact resume: the data order is a function of (seed, epoch) and the loader skips the batches already
consumed; dropout and other in-step randomness is re-seeded from (seed, step, rank) at every step,
so a resumed run draws exactly what an uninterrupted one would.

Multi-GPU hooks: :meth:`_wrap` (DDP/FSDP2 wrapping) and :meth:`_checkpoint_payload` (collective
state gathering); every file write goes through ``self.is_main``.
"""

from __future__ import annotations

import json
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

from fastft import distributed as D
from fastft.train import checkpoint as ckpt
from fastft.train import diagnose, models
from fastft.train import outdir as od
from fastft.train import strategies as strat
from fastft.train.callbacks import Callback, CallbackList
from fastft.train.config import ConfigError, TrainConfig, config_from_dict
from fastft.train.data import make_dataloader, prepare_data
from fastft.train.data.pipeline import requested_task
from fastft.train.errors import DataError, PeerError, first_line
from fastft.train.evaluate import best_metric_spec, evaluate_model
from fastft.train.models import check_model, load_tokenizer
from fastft.train.runlog import RunLogger, fmt_duration, plot_curves
from fastft.train.schedule import build_optimizer, build_scheduler, plan_steps
from fastft.train.state import TrainState
from fastft.train.tasks import task_of_model
from fastft.train.trackers import make_trackers, parse_report_to

__all__ = [
    "Trainer",
    "TrainingError",
    "load_tokenizer",
    "check_model",
    "problem_type_of_model",
    "evaluate_model",
]

MAX_NONFINITE_IN_A_ROW = 10


LENGTH_FIELDS = ("epochs", "max_steps")  # may change on --resume: the run goes on to the new end


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. the loss stays NaN); one line for the user, exit code 1."""


class StopNow(KeyboardInterrupt):
    """A second SIGINT/SIGTERM: stop at once (the CLI exits 128 + ``signum``: 130 / 143)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = int(signum)


def problem_type_of_model(config) -> str:
    """The saved ``problem_type`` of a model's task (see :func:`fastft.train.tasks.task_of_model`)."""
    return task_of_model(config).problem_type


class _Window:
    """The training-loss window between two logging steps."""

    def __init__(self, device):
        self.loss = torch.zeros((), device=device)
        self.steps = self.samples = 0
        self.t = time.perf_counter()

    def add(self, loss: torch.Tensor, samples: int, finite: bool) -> None:
        self.samples += samples
        if finite:
            self.loss += loss
            self.steps += 1


class Trainer:
    """Fine-tune one model as described by a :class:`TrainConfig`.

    >>> Trainer(TrainConfig(train_file="train.csv", epochs=3)).train()["test"]["accuracy"]
    """

    def __init__(
        self, cfg: TrainConfig | None = None, callbacks: list[Callback] | None = None, **overrides: Any
    ) -> None:
        cfg = cfg if cfg is not None else TrainConfig()
        if overrides:
            cfg = config_from_dict(overrides, cfg)
        self.cfg = cfg.resolved()
        self.cfg.validate()
        # the user's callbacks now; the trackers join in _setup_runtime, once rank 0 is known
        self.callbacks = CallbackList(callbacks)
        self.state = TrainState()
        self.dist = None
        self.teacher = None
        self.log: RunLogger | None = None
        self._notes: list[str] = []
        self._stop_signal: int | None = None
        self._lock: od.RunLock | None = None  # the output dir's run lock (main process)
        self._deferred: od.Deferred | None = None  # a same-config re-run's old checkpoints
        self._resume_forced: list[str] = []
        self._length_changed: list[str] = []  # "--epochs 3 -> 5": a resumed run extended (or shortened)
        self._old_handlers: dict[int, Any] = {}
        self._prev_deterministic: bool | None = None
        self._split_tmp: str | None = None
        self._resumed_from: str | None = None
        self._grad_norm: torch.Tensor | float | None = None  # read (host sync) only at logging steps
        self._use_cache: bool | None = None
        self.class_weight: torch.Tensor | None = None  # --class-weights, on self.device
        self._collapse: dict[str, Any] | None = None  # the best evaluation's collapse report

    @property
    def global_step(self) -> int:
        return self.state.global_step

    @property
    def raw_model(self):
        return D.unwrap_model(self.model)

    # ==============================================================================================
    # set-up: everything that can fail on bad input happens before the output dir is touched

    def _setup(self) -> None:
        self._setup_runtime()
        resume = self._check_output_dir()
        self._setup_data()
        self._setup_model()
        self._setup_optimizer()
        if resume is not None:
            self._restore(resume)
        self._prepare_output_dir()

    def _setup_runtime(self) -> None:
        cfg = self.cfg
        self.dist = D.init_distributed(cfg.device)
        self.device, self.is_main, self.world = self.dist.device, self.dist.is_main, self.dist.world_size
        for cb in make_trackers(cfg.report_to, is_main=self.is_main):  # tensorboard: RunLogger writes it
            self.callbacks.add(cb)
        if cfg.strategy == "gradual" and self.world > 1:  # DDP would need a re-wrap when params unfreeze
            raise ConfigError("--strategy gradual is single-process for now; run without torchrun")
        self.precision = cfg.precision
        if self.precision == "auto":
            cuda_bf16 = self.device.type == "cuda" and torch.cuda.is_bf16_supported()
            self.precision = "bf16" if cuda_bf16 else "fp32"
        if cfg.deterministic:  # restored when train() returns (tests and notebooks share the process)
            self._prev_deterministic = torch.are_deterministic_algorithms_enabled()
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True)
            torch.backends.cudnn.benchmark = False
        torch.manual_seed(cfg.seed)
        np.random.seed(cfg.seed % 2**32)

    def _setup_data(self) -> None:
        cfg = self.cfg
        self.model_config = check_model(cfg.model)
        if cfg.teacher:
            check_model(cfg.teacher, "--teacher")
        asked = requested_task(cfg)  # None: --task auto on a data file (a text task)
        folder = cfg.train_file if str(cfg.task).lower() == "auto" and asked is not None else None
        models.check_modality(asked, self.model_config, cfg.model, folder)
        if asked is not None and asked.modality != "text":  # the image processor (saved with the model)
            self.tokenizer = asked.load_preprocessor(cfg.tokenizer or cfg.model, self.model_config)
        else:
            self.tokenizer = load_tokenizer(cfg.tokenizer or cfg.model, self.model_config)
            self._cap_max_length()
        self._split_tmp = tempfile.mkdtemp(prefix="fastft-split-")
        with D.main_process_first(self.dist):
            self.data = prepare_data(cfg, self.tokenizer, output_dir=self._split_tmp)
        self.task, self.labels = self.data.task, self.data.labels
        self.problem_type = self.task.problem_type
        if self.task.needs_labels and cfg.num_labels is not None and cfg.num_labels != self.labels.num_labels:
            names = ", ".join(map(str, list((self.labels.label2id or {}).keys())[:10]))
            raise ConfigError(
                f"--num-labels {cfg.num_labels} does not match the {self.labels.num_labels} labels in the data"
                + (f" ({names})" if names else "")
                + "; fix --num-labels or --label-column"
            )
        if len(self.data.splits.get("train") or []) == 0:
            raise ConfigError("the training split is empty after cleaning; pass a file with labelled rows")
        self.metric_name, self.lower_is_better = best_metric_spec(self.task, cfg.metric_for_best)
        self._setup_labels()

    def _setup_labels(self) -> None:
        """Label distribution (start-up report, results.json) and the ``--class-weights`` vector."""
        cfg = self.cfg
        single = self.problem_type == "single_label_classification"
        spec = (cfg.class_weights or "none").strip().lower()
        if spec == "imbalanced" and (not single or cfg.teacher):
            spec = "none"  # "weights if imbalanced" only where weights apply
        if spec != "none" and not single:
            raise ConfigError(
                f"--class-weights applies to single-label classification, not {self.problem_type}; "
                "drop --class-weights"
            )
        if spec != "none" and cfg.teacher:
            raise ConfigError("--class-weights does not apply to the distillation loss; drop one of them")
        if not single:
            return
        ids = list(self.data.splits["train"]["labels"])
        dist = diagnose.label_distribution(ids, self.labels.id2label)
        self.data.report["label_distribution"] = dist
        ratio = dist["imbalance_ratio"]
        self._notes.append(
            "  labels     train: "
            + ", ".join(f"{k} {v} ({dist['fractions'][k]:.0%})" for k, v in dist["counts"].items())
            + (f"; imbalance {ratio:.1f}x" if ratio else "")
        )
        how = (
            spec
            if spec != "imbalanced"
            else f"imbalanced (imbalance >= {diagnose.STRONG_IMBALANCE:g}x: auto)"
        )
        spec = diagnose.resolve_class_weights(spec, ratio)
        if spec == "none" and ratio is not None and ratio >= diagnose.STRONG_IMBALANCE:
            self._notes.append(
                "  hint       --class-weights auto favours the minority classes at some cost in accuracy "
                "(pair it with --metric-for-best f1_macro); see the README's class weights"
            )
        weights = diagnose.class_weights(list(dist["counts"].values()), spec)
        if weights is not None:
            self.class_weight = torch.tensor(weights, dtype=torch.float32, device=self.device)
            self.data.report["class_weights"] = dict(zip(dist["counts"], weights))
            self._notes.append(
                f"  weights    --class-weights {how}: "
                + ", ".join(f"{k} {w:.3g}" for k, w in zip(dist["counts"], weights))
            )

    def _load_model(self):
        model = models.load_task_model(
            self.task, self.cfg.model, self.labels, self.model_config, self.tokenizer, self.cfg.num_labels
        )
        self.always_frozen, self.n_groups = models.apply_strategy(model, self.cfg, self.task.fresh_head)
        note = models.head_note(self.task, self.model_config, self.labels)
        if note and note not in self._notes:
            self._notes.append(note)
        return model

    def _setup_model(self) -> None:
        cfg = self.cfg
        self.model = self._load_model()
        if cfg.teacher:
            if not self.task.distils:  # its loss would silently ignore the teacher
                raise ConfigError(
                    f"--teacher (distillation) is not supported for --task {self.task.name}; it applies to "
                    "classification, token_classification and causal_lm: drop --teacher"
                )
            self.teacher = models.load_teacher(self.task, cfg.teacher, self.model, self.labels)
        if cfg.gradient_checkpointing:
            # transformers >= 5.2x renamed it; the GPU image (5.17) has only the old name
            kw = {"use_reentrant": False}
            if hasattr(self.model, "activation_checkpointing_enable"):
                self.model.activation_checkpointing_enable(activation_checkpointing_kwargs=kw)
            else:
                self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kw)
            if hasattr(self.model.config, "use_cache"):
                self._use_cache, self.model.config.use_cache = self.model.config.use_cache, False
        self.fused_parts: list[str] = []
        if cfg.fused:
            import fastft
            from fastft.patching import patched_parts

            patched: list[str] = []
            try:
                fastft.patch(self.model)
                patched = patched_parts(self.model)
            except Exception as e:  # noqa: BLE001 - a kernel part must never stop training
                self._notes.append(
                    f"fastft.patch failed ({first_line(e)}); the model's own fused parts are off"
                )
            # what training really goes through: the task says which loss it fuses
            self.fused_parts = self.task.fused_parts(patched, self.model, cfg)
        self.model.to(self.device)
        if self.teacher is not None:
            self.teacher.to(self.device)
        self.model = self._wrap(self.model)

    def _setup_optimizer(self) -> None:
        self.plan = plan_steps(self.cfg, len(self._train_loader(epoch=0)))
        self.optimizer, self.optimizer_kind, self._clip_here = build_optimizer(self.raw_model, self.cfg)
        self.scheduler = build_scheduler(self.optimizer, self.plan, self.cfg.scheduler)
        self.scaler = torch.amp.GradScaler(self.device.type) if self.precision == "fp16" else None
        counts = (self.data.report.get("label_distribution") or {}).get("counts")
        if counts is None and self.problem_type == "multi_label_classification":
            counts = (self.data.report.get("label_counts") or {}).get("train")
        self._notes += diagnose.small_data_warnings(self.plan.total_steps, counts)
        self._notes += self.task.run_warnings(self.cfg, self.world)
        if self.precision == "fp16" and self.device.type == "cpu":
            self._notes.append(
                "warning: --precision fp16 on CPU runs through autocast emulation and is not a speed "
                "win (often slower than fp32); use --precision fp32 or bf16 on CPU"
            )

    def _wrap(self, model):
        """Hook (dist owner): DDP / FSDP2 wrapping under torchrun; identity in one process."""
        return D.wrap_model(model, self.dist, strategy=self.cfg.dist_strategy)

    # ----------------------------------------------------------------------------------------------
    def _check_output_dir(self) -> str | None:
        """The checkpoint to resume from (``None``: a fresh run); read-only checks of the output dir."""
        cfg = self.cfg
        out = cfg.output_dir
        self._on_main(self._lock_output_dir)
        if cfg.resume is not None:
            path = ckpt.latest_checkpoint(out) if cfg.resume == "latest" else cfg.resume
            if path is None:
                raise ConfigError(
                    f"--resume latest: no checkpoint-<step> folder in {out}; check --output-dir or drop --resume"
                )
            if not os.path.isdir(path):
                ckpt.load_checkpoint(path)  # raises the one-line error
            return path
        if _entries(out):
            if not cfg.overwrite and not _same_run(os.path.join(out, "train_config.json"), cfg):
                raise ConfigError(
                    f"output dir {out} already holds another run; pass --overwrite to replace it, "
                    "--resume latest to continue it, or --output-dir <new folder>"
                )
            od.clear_run(out, dry_run=True)  # refuses (exit 2) when it holds files fastft did not write
            # The same config again (e.g. re-running the default command): _prepare_output_dir replaces
            # that run, keeping its checkpoints until this run writes one (one warning line then).
        elif os.path.exists(out) and not os.path.isdir(out):
            raise ConfigError(f"--output-dir {out} is a file; pass a folder path")
        return None

    def _lock_output_dir(self) -> None:
        """Main process: nobody else writes here from now on; a dead run's deferral is undone first."""
        out = self.cfg.output_dir
        self._lock = od.acquire(out)
        od.check_writable(out)
        od.recover_deferred(out)

    def _on_main(self, fn) -> None:
        """Run ``fn`` on rank 0 only; if it fails there, every other rank fails too, at once.

        Without this, when rank 0 was refused the lock (another run holds the output dir) or found the
        disk full, the other ranks ran on into the next collective: a gloo traceback about the closed
        peer (under torchrun, whose agent then kills them), or a wait until the process-group timeout.
        """
        failure = None
        try:
            if self.is_main:
                fn()
        except (ConfigError, DataError) as e:
            failure = ("user", first_line(e, 10_000))
            raise
        except Exception as e:
            failure = ("other", first_line(e))
            raise
        finally:
            if self.world > 1:
                failure = D.broadcast_object(failure, self.dist)
        if failure is not None:  # only the other ranks get here
            kind, line = failure
            if kind == "user":
                raise PeerError(line)
            raise TrainingError(f"rank 0 failed during set-up: {line}")

    def _prepare_output_dir(self) -> None:
        out = self.cfg.output_dir
        self._on_main(lambda: self._write_run_files_or_storage_error(out))
        if "split_indices" in self.data.report:  # it named the temp folder, which goes now
            self.data.report["split_indices"] = os.path.join(out, "split_indices.json")
        shutil.rmtree(self._split_tmp, ignore_errors=True)
        D.barrier(self.dist)

    def _write_run_files_or_storage_error(self, out: str) -> None:
        try:
            self._write_run_files(out)
        except OSError as e:
            raise (od.storage_error(e, out) or e) from None

    def _write_run_files(self, out: str) -> None:
        """Main process: clear a replaced run (only fastft's files), then write the run's side files."""
        if self._resumed_from is None:
            if _entries(out) and self.cfg.overwrite:
                od.clear_run(out)
            elif _entries(out):  # the same config again, without --resume
                self._deferred = od.defer_old_checkpoints(out)
                od.clear_run(out, keep=(od.PREVIOUS_DIR,))
            names = os.listdir(self._split_tmp)
            for name in names:
                shutil.move(os.path.join(self._split_tmp, name), os.path.join(out, name))
            od.record(out, *names)
        else:
            _truncate_metrics(os.path.join(out, "metrics.jsonl"), self.global_step)
        saved = self.cfg.to_dict()
        if self._resume_forced:  # the truth: these fields differ from the checkpoint's config
            saved["resume_forced"] = self._resume_forced
        if self._length_changed:
            saved["resume_length_changed"] = self._length_changed
        od.record(out, "train_config.json", "metrics.jsonl", "tensorboard")
        text = json.dumps(saved, indent=2)
        od.atomic_write(os.path.join(out, "train_config.json"), text, overwrite=True, flag="--output-dir")

    def _cap_max_length(self) -> None:
        """``--max-length`` above what the tokenizer/model takes: use (and record) the model's limit."""
        from fastft.train.data.tokenize import effective_max_length

        cfg = self.cfg
        cap = effective_max_length(self.tokenizer, cfg.max_length)
        n_pos = getattr(self.model_config, "max_position_embeddings", None)
        if isinstance(n_pos, int) and n_pos > 0:
            cap = min(cap, n_pos)
        if cap < cfg.max_length:
            self._notes.append(
                f"warning: --max-length {cfg.max_length} is above the model's limit; using {cap}"
            )
            cfg.max_length = cap

    # ----------------------------------------------------------------------------------------------
    def _restore(self, path: str) -> None:
        """Load the checkpoint at ``path`` into model, optimizer, schedule, RNGs and state; the
        loaded tensors are dropped when this returns."""
        st = ckpt.load_checkpoint(path)
        meta = st["trainer_state"]
        self._check_resume_config(
            path, meta.get("config") or {}, int(meta.get("world_size") or 1), meta.get("data_files")
        )
        # a valid checkpoint of another model / label count / strategy: say what differs, never "corrupt"
        differs = ckpt.state_dict_mismatch(st["model"], self.raw_model.state_dict())
        if differs is not None:
            raise ConfigError(
                f"checkpoint {path} was written for another model ({differs}); resume with the flags it "
                "was written with, or pass another --output-dir"
            )
        try:
            D.load_full_state_dict(self.model, st["model"], self.dist)
            D.load_optim_state_dict(self.model, self.optimizer, st["optimizer"], self.dist)
            self.scheduler.load_state_dict(st["scheduler"])
            if self.scaler is not None and st.get("scaler"):
                self.scaler.load_state_dict(st["scaler"])
        except Exception as e:  # noqa: BLE001
            raise ConfigError(
                f"checkpoint {path} does not fit this run ({first_line(e, 160)}); resume with the flags "
                "it was written with, or pass another --output-dir"
            ) from None
        ckpt.set_rng_state(st["rng"])
        self.state = st["state"]
        del st
        self.state.last_saved_step = self.state.global_step
        self._resumed_from = path
        self._reshard_position(int(meta.get("world_size") or 1))
        if self._length_changed:
            self._resume_length(path)

    def _resume_length(self, path: str) -> None:
        """``--epochs``/``--max-steps`` changed on resume (HF Trainer's way to extend a run): train on to
        the new end with the lr schedule planned for the new length, from the next step on."""
        step, total, shown = self.global_step, self.plan.total_steps, ", ".join(self._length_changed)
        if step >= total:
            raise ConfigError(
                f"--resume {path}: the checkpoint is at step {step} and this config ends at step {total} "
                f"({shown}); pass a larger --epochs or --max-steps"
            )
        sched = self.scheduler  # the checkpoint's group lrs are the old plan's next lr: re-plan them
        for group, base, fn in zip(self.optimizer.param_groups, sched.base_lrs, sched.lr_lambdas):
            group["lr"] = base * fn(sched.last_epoch)
        sched._last_lr = [g["lr"] for g in self.optimizer.param_groups]
        self._notes.append(
            f"warning: --resume with a new length ({shown}): continuing from step {step} to step {total} "
            f"with the lr schedule re-planned for {total} steps (next lr {sched._last_lr[0]:.3g})"
        )

    def _check_resume_config(self, path: str, saved: dict, saved_world: int, saved_files=None) -> None:
        """Every field that changes the math must match the checkpoint's (``--resume-force``: recorded),
        except the run's length (``--epochs``/``--max-steps``), which :meth:`_resume_length` handles;
        so must the data files' content (size + sha256, recorded in the checkpoint)."""
        now = self.cfg.to_dict()
        self._length_changed = ckpt.config_diffs(
            {k: saved[k] for k in LENGTH_FIELDS if k in saved}, {k: now[k] for k in LENGTH_FIELDS}
        )
        rest = {k: v for k, v in saved.items() if k not in LENGTH_FIELDS}
        diffs = ckpt.config_diffs(rest, now, saved_world, self.world)
        diffs += ckpt.data_diffs(saved_files, self.data.report.get("data_files"))
        if not diffs:
            return
        shown = ", ".join(diffs)
        if not self.cfg.resume_force:
            raise ConfigError(
                f"--resume {path}: the config differs from the checkpoint's ({shown}); pass the same "
                "values and data, or --resume-force to continue anyway"
            )
        self._resume_forced = diffs
        self._notes.append(f"warning: --resume-force: continuing with {shown}; recorded in train_config.json")

    def _reshard_position(self, saved_world: int) -> None:
        """``batch_in_epoch`` counts one rank's batches: re-shard it for another process count."""
        s = self.state
        if saved_world != self.world:
            consumed = s.batch_in_epoch * saved_world
            s.batch_in_epoch = consumed // self.world
            if consumed % self.world:
                self._notes.append(
                    f"warning: {consumed} batches consumed by {saved_world} processes do not split over "
                    f"{self.world}; {consumed % self.world} batch(es) of this epoch are seen again"
                )
        if s.batch_in_epoch >= self.plan.loader_len:
            s.epoch += 1
            s.batch_in_epoch = 0

    # ==============================================================================================
    # data and loss

    def _loader(self, ds, *, train: bool, epoch: int = 0, skip: int = 0):
        cfg = self.cfg
        return make_dataloader(
            ds,
            self.tokenizer,
            batch_size=cfg.batch_size if train else cfg.eval_batch_size,
            shuffle=train,
            seed=cfg.seed,
            epoch=epoch,
            skip_batches=skip,
            group_by_length=cfg.group_by_length and train,
            pad_to_max_length=cfg.pad_to_max_length,
            max_length=cfg.max_length,
            task=self.task,
            rank=self.dist.rank,
            world_size=self.world,
            token_dropout=cfg.token_dropout if train else 0.0,
            augment=cfg.augment if train else None,
        )

    def _train_loader(self, epoch: int, skip: int = 0):
        return self._loader(self.data.splits["train"], train=True, epoch=epoch, skip=skip)

    def _to_device(self, batch: dict) -> dict:
        return {k: v.to(self.device, non_blocking=True) for k, v in batch.items() if torch.is_tensor(v)}

    def _autocast(self):
        if self.precision in ("fp16", "bf16"):
            dtype = torch.float16 if self.precision == "fp16" else torch.bfloat16
            return torch.autocast(self.device.type, dtype=dtype)
        return nullcontext()

    def _loss(self, model, batch: dict, n_items: int) -> torch.Tensor:
        """Loss of one micro-batch = sum of its per-item losses / ``n_items`` (the accumulated batch's)."""
        if self.class_weight is not None:  # single-label classification only (checked at set-up)
            return self.task.loss(
                model, batch, n_items, teacher=self.teacher, cfg=self.cfg, class_weight=self.class_weight
            )
        return self.task.loss(model, batch, n_items, teacher=self.teacher, cfg=self.cfg)

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
            if self.log is not None:
                self.log.close()
            if self._lock is not None:  # also on a failure inside the loop
                self._lock.release()

    def _run(self) -> dict:
        self._open_log()
        t_start, samples = time.perf_counter(), 0
        window = _Window(self.device)
        self.model.train()
        done = self.global_step >= self.plan.total_steps
        while not done and self.state.epoch < self.plan.num_epochs:
            if self.cfg.strategy == "gradual":
                self._update_unfrozen()
            for micro in self._windows(self.state.epoch):
                loss, n, finite = self._step(self.model, micro)
                self.state.global_step += 1
                self.state.batch_in_epoch += len(micro)
                samples += n
                window.add(loss, n, finite)
                window = self._log_step(window, t_start)
                done = self._after_step()
                if done:
                    break
            if not done:
                self.state.epoch += 1
                self.state.batch_in_epoch = 0
        if self._interrupted:
            return self._interrupt()
        return self._finish(time.perf_counter() - t_start, samples)

    def _windows(self, epoch: int):
        """The micro-batch lists of this epoch's remaining optimizer steps (``grad_accum`` each)."""
        it = iter(self._train_loader(epoch, skip=self.state.batch_in_epoch))
        while True:
            micro = [b for _, b in zip(range(self.cfg.grad_accum), it)]
            if not micro:
                return
            if self.cfg.strategy == "gradual" and self.cfg.unfreeze_every:
                self._update_unfrozen()
            yield micro

    _interrupted = False  # a stop signal ended the loop (a checkpoint was saved)
    #: how the interrupted-run line says to continue (``fastft sweep`` resumes its trials itself)
    resume_hint = "continue with --resume latest"

    def _after_step(self) -> bool:
        """Evaluation, checkpoint, early stop and signals after one step; True when the run ends."""
        cfg, s = self.cfg, self.state
        end_of_epoch = s.batch_in_epoch >= self.plan.loader_len
        last = s.global_step >= self.plan.total_steps
        do_eval = cfg.eval_strategy != "no" and (
            (cfg.eval_strategy == "steps" and s.global_step % cfg.eval_steps == 0)
            or (cfg.eval_strategy == "epoch" and end_of_epoch)
            or last
        )
        if do_eval:
            self._evaluate_and_track()
            self.model.train()
        if do_eval or (cfg.save_steps and s.global_step % cfg.save_steps == 0):
            self._save_checkpoint()
        done = s.stopped_early or last
        self._interrupted = self._stop_signal is not None and not done  # a signal in the last step: finish
        if self._interrupted:
            self._save_checkpoint()
        return done or self._interrupted

    def _interrupt(self) -> dict:
        name = signal.Signals(self._stop_signal).name
        self.log.close()
        msg = (
            f"interrupted by {name} at step {self.global_step}: checkpoint saved in "
            f"{self.cfg.output_dir}; {self.resume_hint}"
        )
        self.log.print(msg)
        if self.is_main and not self.log.enabled:
            print(msg)
        self._release_dist()
        return {
            "interrupted": name,
            "global_step": self.global_step,
            "checkpoint": ckpt.latest_checkpoint(self.cfg.output_dir),
        }

    def _open_log(self) -> None:
        import textwrap

        cfg = self.cfg
        self.log = RunLogger(
            cfg.output_dir,
            enabled=self.is_main,
            total_steps=self.plan.total_steps,
            start_step=self.global_step,
            report_to="tensorboard" if "tensorboard" in parse_report_to(cfg.report_to) else "none",
        )
        items = ", ".join(f"{k}={json.dumps(v)}" for k, v in cfg.to_dict().items())
        self.log.print("resolved config (saved as train_config.json):")
        self.log.print(textwrap.fill(items, width=110, initial_indent="  ", subsequent_indent="  "))
        for line in self._summary() + self._notes:
            self.log.print(line)
        self.callbacks.on_start(cfg.to_dict(), cfg.output_dir, self._resumed_from is not None)

    def _log_step(self, w: _Window, t_start: float) -> _Window:
        """Log the window at logging steps (the only host syncs of the loop); -> the next window."""
        step = self.global_step
        if not (step % self.cfg.logging_steps == 0 or step == self.plan.total_steps):
            self.log.step(step)
            return w
        # each rank holds (its items' loss sum / the global item count): their sum is the mean
        mean_loss = float(D.all_reduce_sum(w.loss.detach().clone(), self.dist)) / max(w.steps, 1)
        sps = w.samples * self.world / max(time.perf_counter() - w.t, 1e-9)
        lr = max(g["lr"] for g in self.optimizer.param_groups)
        epoch = round(self.state.epoch + self.state.batch_in_epoch / max(self.plan.loader_len, 1), 4)
        rec = {
            "type": "train",
            "step": step,
            "epoch": epoch,
            "loss": mean_loss if w.steps else None,
            "lr": lr,
            "samples_per_s": round(sps, 2),
            "grad_norm": None if self._grad_norm is None else float(self._grad_norm),
            "skipped_steps": self.state.skipped_steps,
            "time_s": round(time.perf_counter() - t_start, 2),
        }
        self.log.event(rec)
        self.callbacks.on_log(rec)
        self.log.step(step, loss=rec["loss"], lr=lr, samples_per_s=sps, epoch=epoch, line=True)
        return _Window(self.device)

    def _update_unfrozen(self) -> None:
        k = strat.gradual_groups_unfrozen(
            self.global_step, self.state.epoch, self.cfg.unfreeze_every, self.n_groups
        )
        if k != self.state.unfrozen_groups:
            strat.apply_gradual(self.raw_model, k, self.always_frozen)
            self.state.unfrozen_groups = k

    def _step(self, model, window: list[dict]) -> tuple[torch.Tensor, int, bool]:
        """One optimizer step over the micro-batches in ``window``; returns (loss, samples, finite)."""
        batches = [self._to_device(b) for b in window]
        n_items = sum(self.task.count_items(b) for b in batches)
        n_samples = sum(int(b["index"].shape[0]) for b in batches)
        if self.world > 1:
            n_items = int(
                D.all_reduce_sum(torch.tensor(n_items, device=self.device, dtype=torch.long), self.dist)
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
                (self.scaler.scale(loss) if self.scaler is not None else loss).backward()
            total += loss.detach().float() / self.world
        # one host sync per optimizer step: decide on a non-finite loss (all ranks agree)
        bad = (~torch.isfinite(total)).float()
        if self.world > 1:
            bad = D.all_reduce_sum(bad, self.dist)
        if float(bad) != 0.0:
            self._skip_step()
            return total, n_samples, False
        self.state.nonfinite_in_a_row = 0
        self._optimizer_step()
        return total, n_samples, True

    def _skip_step(self) -> None:
        s = self.state
        self.optimizer.zero_grad(set_to_none=True)
        s.skipped_steps += 1
        s.nonfinite_in_a_row += 1
        if self.cfg.on_nonfinite == "stop" or s.nonfinite_in_a_row >= MAX_NONFINITE_IN_A_ROW:
            raise TrainingError(
                f"the loss is NaN/inf at step {s.global_step + 1}"
                + (f" ({s.nonfinite_in_a_row} steps in a row)" if s.nonfinite_in_a_row > 1 else "")
                + "; lower --lr, use --precision bf16 or fp32, or check the data for broken labels"
            )
        self.scheduler.step()  # the schedule still advances so step counts and data position stay aligned

    def _optimizer_step(self) -> None:
        """Clip (torch AdamW; FusedAdamW clips inside), step, schedule. The grad norm stays a tensor."""
        if self.scaler is not None and self._clip_here:
            self.scaler.unscale_(self.optimizer)
        if self._clip_here:
            params = [p for p in self.model.parameters() if p.requires_grad and p.grad is not None]
            self._grad_norm = torch.nn.utils.clip_grad_norm_(params, self.cfg.max_grad_norm)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        gn = getattr(self.optimizer, "grad_norm", None)
        if gn is not None and not self._clip_here:
            self._grad_norm = gn
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)

    # ==============================================================================================
    # evaluation and checkpoints

    @torch.no_grad()
    def evaluate(self, split: str = "validation", collect: dict | None = None) -> dict:
        """Metrics of the current model on ``split`` (loss and the task's metrics); ``collect``
        receives the gathered rows (see :func:`evaluate_model`)."""
        ds = self.data.splits.get(split)
        if ds is None or len(ds) == 0:
            return {}
        loader = self._loader(ds, train=False)
        return evaluate_model(
            self.model,
            loader,
            task=self.task,
            device=self.device,
            autocast=self._autocast,
            dist_state=self.dist,
            total=len(ds),
            collect=collect,
        )

    _COLLAPSE_CHECKED = (
        "single_label_classification",
        "multi_label_classification",
        "regression",
        "token_classification",
    )

    def _collapse_check(self, rows: dict, metrics: dict) -> dict[str, Any] | None:
        """:func:`diagnose.collapse_report` of one evaluation; None when it looks fine (or n/a)."""
        scores = rows.get("logits", rows.get("preds"))  # token classification: predicted tag ids
        if self.problem_type not in self._COLLAPSE_CHECKED or scores is None or "labels" not in rows:
            return None
        return diagnose.collapse_report(
            self.problem_type,
            scores.float().cpu().numpy(),
            rows["labels"].cpu().numpy(),
            metrics,
            names=self.labels.id2label,
        )

    def _evaluate_and_track(self) -> None:
        cfg, s = self.cfg, self.state
        rows: dict = {}
        metrics = self.evaluate("validation", collect=rows)
        if not metrics:
            return
        collapse = self._collapse_check(rows, metrics)
        del rows
        value = metrics.get(self.metric_name)
        if value is None and self.metric_name not in metrics:
            raise ConfigError(
                f"--metric-for-best {self.metric_name!r} is not computed for {self.problem_type}; "
                f"use one of {', '.join(k for k, v in metrics.items() if isinstance(v, (int, float)))}"
            )
        # ties on the metric: the lower eval loss, then the later step (diagnose.better)
        best = (
            None if s.best_metric is None else (s.best_metric, (s.best_eval or {}).get("loss"), s.best_step)
        )
        decision = diagnose.better(
            (value, metrics.get("loss"), s.global_step),
            best,
            self.lower_is_better,
            cfg.early_stopping_min_delta,
        )
        improved = decision.select
        if decision.select:
            s.best_metric, s.best_step, s.best_eval = value, s.global_step, metrics
            self._collapse = collapse
        s.bad_evals = 0 if decision.improved else s.bad_evals + 1
        epoch = round(s.epoch + s.batch_in_epoch / max(self.plan.loader_len, 1), 4)
        shown = {k: v for k, v in metrics.items() if k != "confusion_matrix"}
        rec = {
            "type": "eval",
            "split": "validation",
            "step": s.global_step,
            "epoch": epoch,
            **shown,
            "is_best": improved,
            "collapsed": collapse is not None,
            "final": s.global_step >= self.plan.total_steps,  # the run's last evaluation
        }
        self.log.event(rec)
        self.callbacks.on_log(rec)
        text = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if isinstance(v, float))
        self.log.print(f"eval @ step {s.global_step}: {text}" + ("  (best)" if improved else ""))
        if collapse is not None:
            self.log.print(collapse["message"])
        if cfg.early_stopping_patience and s.bad_evals >= cfg.early_stopping_patience:
            s.stopped_early = True
            self.log.print(
                f"early stopping: no {self.metric_name} improvement > {cfg.early_stopping_min_delta} "
                f"in {s.bad_evals} evaluations"
            )
        stop = self.callbacks.on_evaluate(s.global_step, shown)
        if self.world > 1:  # every rank must agree to stop (only rank 0 may hold the callback)
            stop = bool(D.all_reduce_sum(torch.tensor(float(stop), device=self.device), self.dist) > 0)
        if stop and not s.stopped_early:
            s.stopped_early = True  # e.g. a pruned sweep trial: it ends like early stopping
            self.log.print(f"stopped by a callback after the evaluation at step {s.global_step}")

    def _checkpoint_payload(self) -> dict:
        """Hook (dist owner): the collective part of a checkpoint; every rank calls it."""
        return {
            "model_state": D.full_state_dict(self.model, self.dist),
            "optimizer_state": D.optim_state_dict(self.model, self.optimizer, self.dist),
        }

    def _save_checkpoint(self) -> None:
        s = self.state
        if s.last_saved_step == s.global_step:
            return
        payload = self._checkpoint_payload()
        path = os.path.join(self.cfg.output_dir, f"checkpoint-{s.global_step}")
        if s.best_step == s.global_step:
            s.best_checkpoint = path
        if self.is_main:
            meta = dict(
                world_size=self.world,
                total_steps=self.plan.total_steps,
                metric=self.metric_name,
                problem_type=self.problem_type,
                config=self.cfg.to_dict(),
                data_files=self.data.report.get("data_files"),
            )
            try:
                ckpt.save_checkpoint(
                    self.cfg.output_dir,
                    s.global_step,
                    **payload,
                    scheduler_state=self.scheduler.state_dict(),
                    scaler_state=self.scaler.state_dict() if self.scaler is not None else None,
                    state=s,
                    meta=meta,
                )
            except Exception as e:  # a full disk / read-only dir: one line; the previous checkpoint stays
                err = od.storage_error(e, self.cfg.output_dir, od.payload_bytes(payload))
                if err is not None:
                    raise err from None
                raise
            if self._deferred is not None:  # this run has a checkpoint: the previous run's can go
                self._deferred.discard()
                self._deferred = None
            ckpt.rotate_checkpoints(
                self.cfg.output_dir, self.cfg.save_total_limit, keep=(s.best_checkpoint, path)
            )
        s.last_saved_step = s.global_step
        D.barrier(self.dist)

    # ==============================================================================================
    # the end: best model -> test -> final model + results.json

    def _finish(self, train_time: float, samples_seen: int) -> dict:
        s = self.state
        self.log.close()
        raw = self.raw_model
        if s.best_checkpoint and s.best_step != s.global_step and os.path.isdir(s.best_checkpoint):
            sd = ckpt.load_state_dict_file(os.path.join(s.best_checkpoint, "model.safetensors"))
            D.load_full_state_dict(self.model, sd, self.dist)
            del sd
            self.log.print(
                f"loaded the best model (step {s.best_step}, {self.metric_name} {s.best_metric:.4f})"
            )
        rows: dict = {}
        test = self.evaluate("test", collect=rows)
        collapse, split = (
            (self._collapse_check(rows, test), "test") if test else (self._collapse, "validation")
        )
        del rows
        if test:
            shown = {k: v for k, v in test.items() if k != "confusion_matrix"}
            rec = {"type": "test", "step": s.global_step, **shown, "collapsed": collapse is not None}
            self.log.event(rec)
            self.callbacks.on_log(rec)
        full = D.full_state_dict(self.model, self.dist)  # the final model: plain transformers layout
        results = self._results(test, train_time, samples_seen)
        results["collapsed"] = collapse is not None
        if collapse is not None:
            results["collapse"] = {"split": split, **{k: collapse[k] for k in ("symptoms", "details")}}
        if self.is_main:
            out = self.cfg.output_dir
            try:
                with od.track(out):  # the manifest lists what save_pretrained wrote
                    self._save_final(raw, full)
                    text = json.dumps(results, indent=2, default=str)
                    od.atomic_write(
                        os.path.join(out, "results.json"), text, overwrite=True, flag="--output-dir"
                    )
            except Exception as e:
                err = od.storage_error(e, out, od.payload_bytes(full))
                if err is not None:
                    raise err from None
                raise
            try:
                with od.track(out):
                    plot_curves(
                        os.path.join(out, "metrics.jsonl"),
                        os.path.join(out, "training_curve.png"),
                        self.metric_name,
                    )
            except Exception as e:  # noqa: BLE001 - a plot must never fail a finished run
                print(f"could not draw training_curve.png: {first_line(e)}")
            if test:
                try:
                    with od.track(out):  # e.g. the image tasks' confusion_matrix.png
                        self.task.artifacts(test, raw, out)
                except Exception as e:  # noqa: BLE001 - a plot must never fail a finished run
                    print(f"could not write the task's plots: {first_line(e)}")
            self._print_final(results)
            if collapse is not None:  # the last line a user reads
                print(f"{collapse['message']} [final model, {split} split]", flush=True)
            self.callbacks.on_end(results, self.cfg.output_dir)
        D.barrier(self.dist)
        self._release_dist()
        return results

    def _release_dist(self) -> None:
        """The end of a run: drop what keeps the process group alive (DDP/FSDP modules, optimizer
        state) before destroying it; in one process the objects stay for callers that inspect them."""
        if self.world > 1:
            self.model = self.optimizer = self.scheduler = None
        D.cleanup(self.dist)
        if self._lock is not None:
            self._lock.release()

    def _results(self, test: dict, train_time: float, samples_seen: int) -> dict[str, Any]:
        s = self.state
        results: dict[str, Any] = {
            "test": test,
            "best_validation": s.best_eval,
            "best_step": s.best_step,
            "best_checkpoint": s.best_checkpoint,
            "metric_for_best": self.metric_name,
            "global_step": s.global_step,
            "stopped_early": s.stopped_early,
            "skipped_steps": s.skipped_steps,
            "train_runtime_s": round(train_time, 2),
            "train_samples_per_s": round(samples_seen * self.world / max(train_time, 1e-9), 2),
            "trainable_params": sum(p.numel() for p in self.raw_model.parameters() if p.requires_grad),
            "peak_memory_mb": _peak_memory_mb(self.device),
            "problem_type": self.problem_type,
            "num_labels": self.labels.num_labels,
            "precision": self.precision,
            "fused_parts": self.fused_parts,
            "optimizer": self.optimizer_kind,
            "data": self.data.report,
            "output_dir": self.cfg.output_dir,
        }
        try:
            import fastft

            results["kernels"] = fastft.report()
        except Exception:  # noqa: BLE001
            pass
        return results

    def _save_final(self, raw, full_sd: dict) -> None:
        """The output dir's model: no fastft hooks, LoRA merged (+ the PEFT adapter), the tokenizer."""
        import fastft
        from fastft.patching import unpatch

        cfg = self.cfg
        unpatch(raw)
        if cfg.strategy == "lora":
            if D.is_fsdp(raw):  # DTensor shards cannot be merged in place: use a plain replica
                raw = self._load_model()
                raw.load_state_dict(full_sd)
            fastft.save_adapter(raw, os.path.join(cfg.output_dir, "adapter"))
            # merge_and_unload: the original modules come back with B·A folded in -> a plain HF model
            fastft.merge_lora(raw, keep_adapter=False)
        if cfg.gradient_checkpointing:
            disable = getattr(raw, "activation_checkpointing_disable", None) or getattr(
                raw, "gradient_checkpointing_disable", None
            )
            if disable is not None:
                disable()
            if self._use_cache is not None:
                raw.config.use_cache = self._use_cache
        sd = full_sd if cfg.strategy != "lora" else None
        raw.save_pretrained(cfg.output_dir, state_dict=sd, safe_serialization=True)
        self.tokenizer.save_pretrained(cfg.output_dir)

    def _print_final(self, results: dict) -> None:
        test = results.get("test") or {}
        head = self.task.headline(test) or "no test split: see the validation metrics in results.json"
        n = len(self.data.splits.get("test") or [])
        print("=" * 72)
        print(head + (f"  (n={n} test rows)" if n else ""))
        print(
            f"trained {results['global_step']} steps in {fmt_duration(results['train_runtime_s'])}; "
            f"model, metrics.jsonl, training_curve.png and results.json in {self.cfg.output_dir}"
        )
        kernels = results.get("kernels") or {}
        if kernels or self.fused_parts:
            print(
                "fused paths: "
                + (", ".join(self.fused_parts) or "none")
                + (" | " + "; ".join(f"{k}: {v}" for k, v in sorted(kernels.items())) if kernels else "")
            )
        print("=" * 72, flush=True)

    def _summary(self) -> list[str]:
        cfg, raw = self.cfg, self.raw_model
        n_total = sum(p.numel() for p in raw.parameters())
        n_train = sum(p.numel() for p in raw.parameters() if p.requires_grad)
        rep = self.data.report or {}
        sizes = {k: len(v) for k, v in self.data.splits.items() if v is not None}
        try:
            import fastft

            ops = fastft.report()
        except Exception:  # noqa: BLE001
            ops = {}
        plan = self.plan
        lines = [
            "fastft train",
            f"  model      {cfg.model} ({type(raw).__name__}, {self.model_config.model_type})",
            f"  params     {n_total / 1e6:.2f}M, trainable {n_train / 1e6:.3f}M ({100 * n_train / max(n_total, 1):.2f}%)",
            f"  task       {self.task.describe(self.labels)}",
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
            f"  steps      {plan.total_steps} optimizer steps ({plan.steps_per_epoch}/epoch, {plan.num_epochs} epoch(s)), "
            f"batch {cfg.batch_size} x accum {cfg.grad_accum} x {self.world} process(es), warmup {plan.warmup}, {cfg.scheduler}",
            f"  optimizer  {self.optimizer_kind}, lr {cfg.lr:g}, weight decay {cfg.weight_decay:g}, max grad norm {cfg.max_grad_norm:g}",
            f"  precision  {self.precision} on {self.device}"
            + (", gradient checkpointing" if cfg.gradient_checkpointing else ""),
            "  fused      "
            + (
                ", ".join(self.fused_parts)
                if self.fused_parts
                else ("off (--no-fused)" if not cfg.fused else "no fused part applies to this model")
            ),
        ]
        if ops:
            lines.append("  kernels    " + "; ".join(f"{k}: {v}" for k, v in sorted(ops.items())))
        lines.append(f"  output     {cfg.output_dir}")
        if self._resumed_from is not None:
            s = self.state
            lines.append(
                f"  resume     {self._resumed_from} (step {s.global_step}, epoch {s.epoch}, batch {s.batch_in_epoch})"
            )
        return lines

    # ==============================================================================================
    # signals and clean-up

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
                raise StopNow(signum)
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

    def _restore_globals(self) -> None:
        if self._prev_deterministic is not None:
            torch.use_deterministic_algorithms(self._prev_deterministic)
            self._prev_deterministic = None

    def _cleanup_failed_setup(self) -> None:
        if self._split_tmp:
            shutil.rmtree(self._split_tmp, ignore_errors=True)
        if self._lock is not None:  # removes the output dir if this run created it (fastft's files only)
            self._lock.abort()
        if self.dist is not None:
            D.cleanup(self.dist)


def _peak_memory_mb(device: torch.device) -> float:
    """CUDA max allocated on a GPU, else the process's max RSS (this process's peak, tests share it)."""
    if device.type == "cuda":
        return round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    import resource

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return round(rss / (2**20 if sys.platform == "darwin" else 2**10), 1)


def _same_run(saved_config: str, cfg: TrainConfig) -> bool:
    """Whether ``train_config.json`` describes the same run (resume/overwrite do not count)."""
    try:
        with open(saved_config, encoding="utf-8") as fh:
            saved = json.load(fh)
    except (OSError, ValueError):
        return False

    def comparable(d: dict) -> dict:
        return {
            k: v
            for k, v in d.items()
            if k not in ("resume", "overwrite", "resume_force", "resume_forced", "resume_length_changed")
        }

    return comparable(saved) == comparable(cfg.to_dict())


def _entries(out: str) -> list[str]:
    """The folder's entries other than the run lock and the main process's write probe (which other
    ranks may see for an instant), ``[]`` when it does not exist."""
    if not os.path.isdir(out):
        return []
    return [n for n in os.listdir(out) if n != od.LOCK_FILE and not n.startswith(".fastft-probe.")]


def _truncate_metrics(path: str, step: int) -> None:
    """On resume, drop metrics.jsonl lines written after the checkpoint (the killed run's tail)."""
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
