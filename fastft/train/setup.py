"""Set-up of a training run: a :class:`Run` holds everything the loop works on, and each
``setup_*`` step fills part of it. Everything that can fail on bad input happens before the output
dir is written (the facade, :class:`fastft.train.Trainer`, calls them in order):

runtime (torchrun, precision, determinism, seeds) -> :func:`check_output_dir` -> data -> model
(task model, teacher, strategy, fastft.patch, DDP/FSDP2 wrapping) -> optimizer and schedule ->
resume (:mod:`~fastft.train.resume`) -> :func:`prepare_output_dir` (the run files).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from fastft import distributed as D
from fastft.train import checkpoint as ckpt
from fastft.train import diagnose, models, runfiles
from fastft.train import outdir as od
from fastft.train.callbacks import CallbackList
from fastft.train.config import TrainConfig
from fastft.train.data.loader import make_dataloader
from fastft.train.data.modalities import modality_of
from fastft.train.data.pipeline import prepare_data, requested_task
from fastft.train.errors import ConfigError, DataError, PeerError, TrainingError, first_line
from fastft.train.models import check_model, load_tokenizer
from fastft.train.runlog import RunLogger
from fastft.train.schedule import build_optimizer, build_scheduler, plan_steps
from fastft.train.signals import StopRequest
from fastft.train.state import TrainState
from fastft.train.strategies import LoopHook, loop_hook
from fastft.train.tasks import LabelSpace, Task
from fastft.train.trackers import make_trackers

__all__ = [
    "Run",
    "best_metric_spec",
    "setup_runtime",
    "check_output_dir",
    "setup_data",
    "setup_model",
    "load_model",
    "setup_optimizer",
    "prepare_output_dir",
    "make_loader",
    "train_loader",
    "cleanup_failed_setup",
    "restore_globals",
]


@dataclass(eq=False)
class Run:
    """One training run: the config and what the set-up steps built. The loop, the step, the
    evaluation and the finish read and update it; ``state`` is what checkpoints save."""

    cfg: TrainConfig
    callbacks: CallbackList = field(default_factory=CallbackList)
    stop: StopRequest = field(default_factory=StopRequest)
    resume_hint: str = "continue with --resume latest"  # the interrupted-run line's advice
    state: TrainState = field(default_factory=TrainState)
    notes: list[str] = field(default_factory=list)  # start-up report lines (warnings, hints)
    # runtime
    dist: Any = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    is_main: bool = True
    world: int = 1
    precision: str = "fp32"
    prev_deterministic: bool | None = None  # restored when the run ends
    # data
    model_config: Any = None
    tokenizer: Any = None
    data: Any = None  # fastft.train.data.PreparedData
    task: Task | None = None
    labels: LabelSpace | None = None
    metric_name: str = "loss"
    lower_is_better: bool = True
    loss_kwargs: dict[str, Any] = field(default_factory=dict)  # the task's loss_setup (class weights)
    split_tmp: str | None = None
    # model
    model: Any = None  # DDP/FSDP-wrapped under torchrun
    teacher: Any = None
    hook: LoopHook = field(default_factory=LoopHook)  # the strategy's per-epoch / per-step hook
    always_frozen: Any = ()
    n_groups: int = 0
    use_cache: bool | None = None
    fused_parts: list[str] = field(default_factory=list)
    # optimizer and schedule
    plan: Any = None  # fastft.train.schedule.Plan
    optimizer: Any = None
    optimizer_kind: str = ""
    clip_here: bool = True  # torch AdamW: clip in the step; FusedAdamW clips inside
    scheduler: Any = None
    scaler: Any = None
    # output dir and resume
    lock: od.RunLock | None = None
    deferred: runfiles.Deferred | None = None  # a same-config re-run's old checkpoints
    resumed_from: str | None = None
    resume_forced: list[str] = field(default_factory=list)
    length_changed: list[str] = field(default_factory=list)  # "--epochs 3 -> 5"
    # the loop
    log: RunLogger | None = None
    grad_norm: Any = None  # a tensor until a logging step reads it (host sync)
    collapse: dict[str, Any] | None = None  # the best evaluation's collapse report
    interrupted: bool = False  # a stop signal ended the loop (a checkpoint was saved)

    @property
    def raw_model(self):
        return D.unwrap_model(self.model)

    @property
    def problem_type(self) -> str:
        return self.task.problem_type

    def autocast(self):
        if self.precision in ("fp16", "bf16"):
            dtype = torch.float16 if self.precision == "fp16" else torch.bfloat16
            return torch.autocast(self.device.type, dtype=dtype)
        return nullcontext()

    def to_device(self, batch: dict) -> dict:
        return {k: v.to(self.device, non_blocking=True) for k, v in batch.items() if torch.is_tensor(v)}


def best_metric_spec(task: Task, metric_for_best: str | None) -> tuple[str, bool]:
    """(metric that picks the best checkpoint, lower is better)."""
    name = metric_for_best or task.best_metric
    return name, name in task.lower_is_better or name == "loss"


# ==================================================================================================
# runtime, data, model, optimizer


def setup_runtime(run: Run) -> None:
    cfg = run.cfg
    run.dist = D.init_distributed(cfg.device)
    run.device, run.is_main, run.world = run.dist.device, run.dist.is_main, run.dist.world_size
    for cb in make_trackers(cfg.report_to, is_main=run.is_main):  # tensorboard: RunLogger writes it
        run.callbacks.add(cb)
    if cfg.strategy == "gradual" and run.world > 1:  # DDP would need a re-wrap when params unfreeze
        raise ConfigError("--strategy gradual is single-process for now; run without torchrun")
    run.precision = cfg.precision
    if run.precision == "auto":
        cuda_bf16 = run.device.type == "cuda" and torch.cuda.is_bf16_supported()
        run.precision = "bf16" if cuda_bf16 else "fp32"
    if cfg.deterministic:  # restored when train() returns (tests and notebooks share the process)
        run.prev_deterministic = torch.are_deterministic_algorithms_enabled()
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed % 2**32)


def setup_data(run: Run) -> None:
    cfg = run.cfg
    run.model_config = check_model(cfg.model)
    if cfg.teacher:
        check_model(cfg.teacher, "--teacher")
    asked = requested_task(cfg)  # None: --task auto on a data file (a text task)
    folder = cfg.train_file if str(cfg.task).lower() == "auto" and asked is not None else None
    models.check_modality(asked, run.model_config, cfg.model, folder)
    if not modality_of(asked).tokenized:  # the image processor (saved with the model)
        run.tokenizer = asked.load_preprocessor(cfg.tokenizer or cfg.model, run.model_config)
    else:
        run.tokenizer = load_tokenizer(cfg.tokenizer or cfg.model, run.model_config)
        _cap_max_length(run)
    run.split_tmp = tempfile.mkdtemp(prefix="fastft-split-")
    with D.main_process_first(run.dist):
        run.data = prepare_data(cfg, run.tokenizer, output_dir=run.split_tmp)
    run.task, run.labels = run.data.task, run.data.labels
    if run.task.needs_labels and cfg.num_labels is not None and cfg.num_labels != run.labels.num_labels:
        names = ", ".join(map(str, list((run.labels.label2id or {}).keys())[:10]))
        raise ConfigError(
            f"--num-labels {cfg.num_labels} does not match the {run.labels.num_labels} labels in the data"
            + (f" ({names})" if names else "")
            + "; fix --num-labels or --label-column"
        )
    if len(run.data.splits.get("train") or []) == 0:
        raise ConfigError("the training split is empty after cleaning; pass a file with labelled rows")
    run.metric_name, run.lower_is_better = best_metric_spec(run.task, cfg.metric_for_best)
    run.loss_kwargs, notes = run.task.loss_setup(
        cfg, run.data.splits["train"], run.labels, run.data.report, run.device
    )
    run.notes += notes


def _cap_max_length(run: Run) -> None:
    """``--max-length`` above what the tokenizer/model takes: use (and record) the model's limit."""
    from fastft.train.data.tokenize import effective_max_length

    cfg = run.cfg
    cap = effective_max_length(run.tokenizer, cfg.max_length)
    n_pos = getattr(run.model_config, "max_position_embeddings", None)
    if isinstance(n_pos, int) and n_pos > 0:
        cap = min(cap, n_pos)
    if cap < cfg.max_length:
        run.notes.append(f"warning: --max-length {cfg.max_length} is above the model's limit; using {cap}")
        cfg.max_length = cap


def load_model(run: Run):
    """The task model with the strategy applied (also a plain replica for an FSDP LoRA merge)."""
    model = models.load_task_model(
        run.task, run.cfg.model, run.labels, run.model_config, run.tokenizer, run.cfg.num_labels
    )
    run.always_frozen, run.n_groups = models.apply_strategy(model, run.cfg, run.task.fresh_head)
    note = models.head_note(run.task, run.model_config, run.labels)
    if note and note not in run.notes:
        run.notes.append(note)
    return model


def setup_model(run: Run) -> None:
    cfg = run.cfg
    model = load_model(run)
    run.hook = loop_hook(cfg, run.n_groups, run.always_frozen)
    if cfg.teacher:
        if not run.task.distils:  # its loss would silently ignore the teacher
            raise ConfigError(
                f"--teacher (distillation) is not supported for --task {run.task.name}; it applies to "
                "classification, token_classification and causal_lm: drop --teacher"
            )
        run.teacher = models.load_teacher(run.task, cfg.teacher, model, run.labels)
    if cfg.gradient_checkpointing:
        # transformers >= 5.2x renamed it; the GPU image (5.17) has only the old name
        kw = {"use_reentrant": False}
        if hasattr(model, "activation_checkpointing_enable"):
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=kw)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kw)
        if hasattr(model.config, "use_cache"):
            run.use_cache, model.config.use_cache = model.config.use_cache, False
    run.fused_parts = []
    if cfg.fused:
        run.fused_parts = _patch(run, model)
    model.to(run.device)
    if run.teacher is not None:
        run.teacher.to(run.device)
    # the dist owner's hook: DDP / FSDP2 wrapping under torchrun; identity in one process
    run.model = D.wrap_model(model, run.dist, strategy=cfg.dist_strategy)


def _patch(run: Run, model) -> list[str]:
    """``fastft.patch`` the model; -> the fused parts training really goes through."""
    from fastft.patching import patch, patched_parts

    patched: list[str] = []
    try:
        patch(model)
        patched = patched_parts(model)
    except Exception as e:  # noqa: BLE001 - a kernel part must never stop training
        run.notes.append(f"fastft.patch failed ({first_line(e)}); the model's own fused parts are off")
    return run.task.fused_parts(patched, model, run.cfg)  # the task says which loss it fuses


def setup_optimizer(run: Run) -> None:
    cfg = run.cfg
    run.plan = plan_steps(cfg, len(train_loader(run, epoch=0)))
    run.optimizer, run.optimizer_kind, run.clip_here = build_optimizer(run.raw_model, cfg)
    run.scheduler = build_scheduler(run.optimizer, run.plan, cfg.scheduler)
    run.scaler = torch.amp.GradScaler(run.device.type) if run.precision == "fp16" else None
    counts = (run.data.report.get("label_distribution") or {}).get("counts")
    if counts is None and run.problem_type == "multi_label_classification":
        counts = (run.data.report.get("label_counts") or {}).get("train")
    run.notes += diagnose.small_data_warnings(run.plan.total_steps, counts)
    run.notes += run.task.run_warnings(cfg, run.world)
    if run.precision == "fp16" and run.device.type == "cpu":
        run.notes.append(
            "warning: --precision fp16 on CPU runs through autocast emulation and is not a speed "
            "win (often slower than fp32); use --precision fp32 or bf16 on CPU"
        )


def make_loader(run: Run, ds, *, train: bool, epoch: int = 0, skip: int = 0):
    cfg = run.cfg
    return make_dataloader(
        ds,
        run.tokenizer,
        batch_size=cfg.batch_size if train else cfg.eval_batch_size,
        shuffle=train,
        seed=cfg.seed,
        epoch=epoch,
        skip_batches=skip,
        group_by_length=cfg.group_by_length and train,
        pad_to_max_length=cfg.pad_to_max_length,
        max_length=cfg.max_length,
        task=run.task,
        rank=run.dist.rank,
        world_size=run.world,
        token_dropout=cfg.token_dropout if train else 0.0,
        augment=cfg.augment if train else None,
    )


def train_loader(run: Run, epoch: int, skip: int = 0):
    """The training split's loader of ``epoch`` (its order is a function of seed and epoch)."""
    return make_loader(run, run.data.splits["train"], train=True, epoch=epoch, skip=skip)


# ==================================================================================================
# the output dir: read-only checks first, the run files once every set-up step passed


def check_output_dir(run: Run) -> str | None:
    """The checkpoint to resume from (``None``: a fresh run); read-only checks of the output dir."""
    cfg = run.cfg
    out = cfg.output_dir
    on_main(run, lambda: _lock_output_dir(run))
    if cfg.resume is not None:
        path = ckpt.latest_checkpoint(out) if cfg.resume == "latest" else cfg.resume
        if path is None:
            raise ConfigError(
                f"--resume latest: no checkpoint-<step> folder in {out}; check --output-dir or drop --resume"
            )
        if not os.path.isdir(path):
            ckpt.load_checkpoint(path)  # raises the one-line error
        return path
    if runfiles.entries(out):
        if not cfg.overwrite and not runfiles.same_run(os.path.join(out, "train_config.json"), cfg):
            raise ConfigError(
                f"output dir {out} already holds another run; pass --overwrite to replace it, "
                "--resume latest to continue it, or --output-dir <new folder>"
            )
        runfiles.clear_run(out, dry_run=True)  # refuses (exit 2) when it holds files fastft did not write
        # The same config again (e.g. re-running the default command): prepare_output_dir replaces
        # that run, keeping its checkpoints until this run writes one (one warning line then).
    elif os.path.exists(out) and not os.path.isdir(out):
        raise ConfigError(f"--output-dir {out} is a file; pass a folder path")
    return None


def _lock_output_dir(run: Run) -> None:
    """Main process: nobody else writes here from now on; a dead run's deferral is undone first."""
    out = run.cfg.output_dir
    run.lock = od.acquire(out)
    od.check_writable(out)
    runfiles.recover_deferred(out)


def on_main(run: Run, fn) -> None:
    """Run ``fn`` on rank 0 only; if it fails there, every other rank fails too, at once.

    Without this, when rank 0 was refused the lock (another run holds the output dir) or found the
    disk full, the other ranks ran on into the next collective: a gloo traceback about the closed
    peer (under torchrun, whose agent then kills them), or a wait until the process-group timeout.
    """
    failure = None
    try:
        if run.is_main:
            fn()
    except (ConfigError, DataError) as e:
        failure = ("user", first_line(e, 10_000))
        raise
    except Exception as e:
        failure = ("other", first_line(e))
        raise
    finally:
        if run.world > 1:
            failure = D.broadcast_object(failure, run.dist)
    if failure is not None:  # only the other ranks get here
        kind, line = failure
        if kind == "user":
            raise PeerError(line)
        raise TrainingError(f"rank 0 failed during set-up: {line}")


def prepare_output_dir(run: Run) -> None:
    out = run.cfg.output_dir
    on_main(run, lambda: _write_run_files_or_storage_error(run, out))
    if "split_indices" in run.data.report:  # it named the temp folder, which goes now
        run.data.report["split_indices"] = os.path.join(out, "split_indices.json")
    shutil.rmtree(run.split_tmp, ignore_errors=True)
    D.barrier(run.dist)


def _write_run_files_or_storage_error(run: Run, out: str) -> None:
    try:
        _write_run_files(run, out)
    except OSError as e:
        raise (od.storage_error(e, out) or e) from None


def _write_run_files(run: Run, out: str) -> None:
    """Main process: clear a replaced run (only fastft's files), then write the run's side files."""
    if run.resumed_from is None:
        if runfiles.entries(out) and run.cfg.overwrite:
            runfiles.clear_run(out)
        elif runfiles.entries(out):  # the same config again, without --resume
            run.deferred = runfiles.defer_old_checkpoints(out)
            runfiles.clear_run(out, keep=(runfiles.PREVIOUS_DIR,))
        names = os.listdir(run.split_tmp)
        for name in names:
            shutil.move(os.path.join(run.split_tmp, name), os.path.join(out, name))
        runfiles.record(out, *names)
    else:
        runfiles.truncate_metrics(os.path.join(out, "metrics.jsonl"), run.state.global_step)
    saved = run.cfg.to_dict()
    if run.resume_forced:  # the truth: these fields differ from the checkpoint's config
        saved["resume_forced"] = run.resume_forced
    if run.length_changed:
        saved["resume_length_changed"] = run.length_changed
    runfiles.record(out, "train_config.json", "metrics.jsonl", "tensorboard")
    text = json.dumps(saved, indent=2)
    od.atomic_write(os.path.join(out, "train_config.json"), text, overwrite=True, flag="--output-dir")


# ==================================================================================================
# clean-up


def restore_globals(run: Run) -> None:
    """Undo the process-wide settings of :func:`setup_runtime` (tests and notebooks share a process)."""
    if run.prev_deterministic is not None:
        torch.use_deterministic_algorithms(run.prev_deterministic)
        run.prev_deterministic = None


def cleanup_failed_setup(run: Run) -> None:
    """A set-up step failed (or the run was only probed): the temp split folder goes, the output dir
    is left as it was (a folder the lock created is removed), the process group is destroyed."""
    if run.split_tmp:
        shutil.rmtree(run.split_tmp, ignore_errors=True)
    if run.lock is not None:  # removes the output dir if this run created it (fastft's files only)
        run.lock.abort()
    if run.dist is not None:
        D.cleanup(run.dist)
