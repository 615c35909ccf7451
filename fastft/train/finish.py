"""The end of a run: the best model on the test split, the final model (+ LoRA adapter) and
results.json, the plots and the banner; or, when a signal stopped the loop, the interrupted-run line."""

from __future__ import annotations

import json
import os
import signal
from typing import Any

from fastft import distributed as D
from fastft.train import checkpoint as ckpt
from fastft.train import evaluate as ev
from fastft.train import runfiles
from fastft.train import storage as st
from fastft.train.errors import first_line
from fastft.train.report import kernel_report, peak_memory_mb, print_final
from fastft.train.runlog import plot_curves
from fastft.train.setup import Run, load_model

__all__ = ["finish", "interrupted", "results_of", "release"]


def finish(run: Run, train_time: float, samples_seen: int) -> dict:
    """Best model -> test -> final model + results.json (main process) -> the banner; -> results."""
    s = run.state
    run.log.close()
    if s.best_checkpoint and s.best_step != s.global_step and os.path.isdir(s.best_checkpoint):
        sd = ckpt.load_state_dict_file(os.path.join(s.best_checkpoint, "model.safetensors"))
        D.load_full_state_dict(run.model, sd, run.dist)
        del sd
        run.log.print(f"loaded the best model (step {s.best_step}, {run.metric_name} {s.best_metric:.4f})")
    rows: dict = {}
    test = ev.evaluate_split(run, "test", collect=rows)
    collapse, split = (ev.collapse_check(run, rows, test), "test") if test else (run.collapse, "validation")
    del rows
    if test:
        shown = {k: v for k, v in test.items() if k != "confusion_matrix"}
        rec = {"type": "test", "step": s.global_step, **shown, "collapsed": collapse is not None}
        run.log.event(rec)
        run.callbacks.on_log(rec)
    full = D.full_state_dict(run.model, run.dist)  # the final model: plain transformers layout
    results = results_of(run, test, train_time, samples_seen)
    results["collapsed"] = collapse is not None
    if collapse is not None:
        results["collapse"] = {"split": split, **{k: collapse[k] for k in ("symptoms", "details")}}
    if run.is_main:
        _write_outputs(run, results, full, test)
        print_final(run, results)
        if collapse is not None:  # the last line a user reads
            print(f"{collapse['message']} [final model, {split} split]", flush=True)
        run.callbacks.on_end(results, run.cfg.output_dir)
    D.barrier(run.dist)
    release(run)
    return results


def _write_outputs(run: Run, results: dict, full: dict, test: dict) -> None:
    """Main process: the final model, results.json, training_curve.png and the task's plots."""
    out = run.cfg.output_dir
    try:
        with runfiles.track(out):  # the manifest lists what save_pretrained wrote
            save_final(run, run.raw_model, full)
            text = json.dumps(results, indent=2, default=str)
            st.atomic_write(os.path.join(out, "results.json"), text, overwrite=True, flag="--output-dir")
    except Exception as e:
        err = st.storage_error(e, out, st.payload_bytes(full))
        if err is not None:
            raise err from None
        raise
    try:
        with runfiles.track(out):
            plot_curves(
                os.path.join(out, "metrics.jsonl"), os.path.join(out, "training_curve.png"), run.metric_name
            )
    except Exception as e:  # noqa: BLE001 - a plot must never fail a finished run
        print(f"could not draw training_curve.png: {first_line(e)}")
    if test:
        try:
            with runfiles.track(out):  # e.g. the image tasks' confusion_matrix.png
                run.task.artifacts(test, run.raw_model, out)
        except Exception as e:  # noqa: BLE001 - a plot must never fail a finished run
            print(f"could not write the task's plots: {first_line(e)}")


def release(run: Run) -> None:
    """The end of a run: drop what keeps the process group alive (DDP/FSDP modules, optimizer
    state) before destroying it; in one process the objects stay for callers that inspect them."""
    if run.world > 1:
        run.model = run.optimizer = run.scheduler = None
    D.cleanup(run.dist)
    if run.lock is not None:
        run.lock.release()


def interrupted(run: Run) -> dict:
    """A stop signal ended the loop after a checkpoint: one line saying how to continue."""
    name = signal.Signals(run.stop.signum).name
    step = run.state.global_step
    run.log.close()
    msg = f"interrupted by {name} at step {step}: checkpoint saved in {run.cfg.output_dir}; {run.resume_hint}"
    run.log.print(msg)
    if run.is_main and not run.log.enabled:
        print(msg)
    release(run)
    return {
        "interrupted": name,
        "global_step": step,
        "checkpoint": ckpt.latest_checkpoint(run.cfg.output_dir),
    }


def results_of(run: Run, test: dict, train_time: float, samples_seen: int) -> dict[str, Any]:
    """results.json's content (without the collapse verdict)."""
    s = run.state
    results: dict[str, Any] = {
        "test": test,
        "best_validation": s.best_eval,
        "best_step": s.best_step,
        "best_checkpoint": s.best_checkpoint,
        "metric_for_best": run.metric_name,
        "global_step": s.global_step,
        "stopped_early": s.stopped_early,
        "skipped_steps": s.skipped_steps,
        "train_runtime_s": round(train_time, 2),
        "train_samples_per_s": round(samples_seen * run.world / max(train_time, 1e-9), 2),
        "trainable_params": sum(p.numel() for p in run.raw_model.parameters() if p.requires_grad),
        "peak_memory_mb": peak_memory_mb(run.device),
        "problem_type": run.problem_type,
        "num_labels": run.labels.num_labels,
        "precision": run.precision,
        "fused_parts": run.fused_parts,
        "optimizer": run.optimizer_kind,
        "data": run.data.report,
        "output_dir": run.cfg.output_dir,
    }
    kernels = kernel_report()
    if kernels is not None:
        results["kernels"] = kernels
    return results


def save_final(run: Run, raw, full_sd: dict) -> None:
    """The output dir's model: no fastft hooks, LoRA merged (+ the PEFT adapter), the tokenizer."""
    from fastft.lora import merge_lora, save_adapter
    from fastft.patching import unpatch

    cfg = run.cfg
    unpatch(raw)
    if cfg.strategy == "lora":
        if D.is_fsdp(raw):  # DTensor shards cannot be merged in place: use a plain replica
            raw = load_model(run)
            raw.load_state_dict(full_sd)
        save_adapter(raw, os.path.join(cfg.output_dir, "adapter"))
        # merge_and_unload: the original modules come back with B·A folded in -> a plain HF model
        merge_lora(raw, keep_adapter=False)
    if cfg.gradient_checkpointing:
        disable = getattr(raw, "activation_checkpointing_disable", None) or getattr(
            raw, "gradient_checkpointing_disable", None
        )
        if disable is not None:
            disable()
        if run.use_cache is not None:
            raw.config.use_cache = run.use_cache
    sd = full_sd if cfg.strategy != "lora" else None
    raw.save_pretrained(cfg.output_dir, state_dict=sd, safe_serialization=True)
    run.tokenizer.save_pretrained(cfg.output_dir)
