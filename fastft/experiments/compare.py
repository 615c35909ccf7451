"""``fastft compare``: every arm x seed as its own ``fastft train`` process, then a paired report.

Arms are the cartesian product of the ``-c`` configs and the ``--vary field=a,b`` values. Each run
goes to ``<output-dir>/runs/<arm>/seed-<s>/`` (its config ``seed-<s>.yaml``, log ``seed-<s>.log`` and
peak-memory sidecar ``seed-<s>.stats.json`` next to it) and runs as
``python -m fastft.experiments.worker STATS train -c seed-<s>.yaml``, so it needs nothing from the
trainer's internals and a crash stays inside its process.

Seeds: run ``s`` of every arm uses ``seed: s`` (init, data order, dropout) and one fixed
``split_seed`` (the arm's own ``split_seed`` if its config sets one, else the first seed), so every
arm and seed trains and is scored on the same train/validation/test rows: the arms are paired seed by
seed, and the seed-to-seed spread is the training randomness alone.

Resume: a run with ``results.json`` is reused; one with a checkpoint continues with
``--resume latest``; a run folder whose config differs from the new one is refused.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from queue import Queue
from typing import Any

from fastft.experiments.report import write_report
from fastft.train.config import config_from_dict, load_config_file
from fastft.train.errors import ConfigError

__all__ = ["Arm", "RunSpec", "build_arms", "plan_runs", "run_compare", "collect_metrics"]


@dataclass
class Arm:
    name: str
    config: dict[str, Any]  # config-file keys: base file + flags + varied values
    varied: dict[str, Any] = field(default_factory=dict)

    @property
    def slug(self) -> str:
        return re.sub(r"[^A-Za-z0-9._=+-]+", "_", self.name).strip("_") or "arm"


@dataclass
class RunSpec:
    arm: Arm
    seed: int
    run_dir: str
    #: the data split's seed, shared by every run of the compare.
    split_seed: int | None = None

    @property
    def stem(self) -> str:
        return os.path.join(os.path.dirname(self.run_dir), f"seed-{self.seed}")

    @property
    def config_path(self) -> str:
        return self.stem + ".yaml"

    @property
    def log_path(self) -> str:
        return self.stem + ".log"

    @property
    def stats_path(self) -> str:
        return self.stem + ".stats.json"

    def config(self) -> dict[str, Any]:
        split = self.arm.config.get("split_seed", self.split_seed)
        out = {**self.arm.config, "seed": self.seed, "output_dir": os.path.abspath(self.run_dir)}
        return out if split is None else {**out, "split_seed": split}


def _fmt_value(v: Any) -> str:
    return "none" if v is None else (f"{v:g}" if isinstance(v, float) else str(v))


def build_arms(
    config_files: list[str], vary: list[tuple[str, list[Any]]], overrides: dict[str, Any]
) -> list[Arm]:
    """The cartesian product configs x vary values; flags in ``overrides`` apply to every arm."""
    bases: list[tuple[str, dict[str, Any]]] = []
    for path in config_files or [None]:
        if path is None:
            bases.append(("", {}))
            continue
        stem = os.path.splitext(os.path.basename(path))[0]
        bases.append((stem, load_config_file(path)))
    names = [b[0] for b in bases]
    for i, (stem, cfg) in enumerate(bases):  # two files named run.yaml in different folders
        if names.count(stem) > 1:
            bases[i] = (f"{stem}{i + 1}", cfg)
    combos = list(itertools.product(*[[(n, v) for v in vals] for n, vals in vary])) or [()]
    arms: list[Arm] = []
    for (stem, base), combo in itertools.product(bases, combos):
        varied = dict(combo)
        label = ",".join(f"{k}={_fmt_value(v)}" for k, v in varied.items())
        name = " ".join(x for x in (stem, label) if x) or "base"
        arms.append(Arm(name, {**base, **overrides, **varied}, varied))
    if len(arms) < 2:
        raise ConfigError("compare needs at least 2 arms: pass --vary field=a,b or several -c files")
    for arm in arms:  # every arm is checked before any run starts
        try:
            config_from_dict(arm.config).resolved().validate()
        except ConfigError as e:
            raise ConfigError(f"arm {arm.name!r}: {e}") from None
    return arms


def plan_runs(arms: list[Arm], seeds: list[int], output_dir: str) -> list[RunSpec]:
    specs = []
    for arm in arms:
        for s in seeds:
            run_dir = os.path.join(output_dir, "runs", arm.slug, f"seed-{s}")
            specs.append(RunSpec(arm, s, run_dir, split_seed=seeds[0]))
    for spec in specs:  # a folder from another compare would be silently mixed in
        if os.path.isfile(spec.config_path):
            with open(spec.config_path, encoding="utf-8") as fh:
                import yaml

                old = yaml.safe_load(fh) or {}
            if old != spec.config():
                raise ConfigError(
                    f"{spec.config_path} holds a different config (an earlier compare); "
                    "pass another --output-dir or delete that folder"
                )
    return specs


def _last_line(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            lines = [ln.strip() for ln in fh.read().splitlines() if ln.strip()]
    except OSError:
        return "no log"
    return lines[-1][:300] if lines else "empty log"


def _gpu_count() -> int:
    try:
        import torch

        return torch.cuda.device_count()
    except Exception:  # noqa: BLE001 - no torch / no driver: CPU runs
        return 0


def _write_config(spec: RunSpec) -> None:
    import yaml

    os.makedirs(os.path.dirname(spec.config_path), exist_ok=True)
    tmp = spec.config_path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        yaml.safe_dump(spec.config(), fh, sort_keys=False)
    os.replace(tmp, spec.config_path)


def _has_checkpoint(run_dir: str) -> bool:
    return os.path.isdir(run_dir) and any(
        n.startswith("checkpoint-") and os.path.isdir(os.path.join(run_dir, n)) for n in os.listdir(run_dir)
    )


def execute(spec: RunSpec, env_extra: dict[str, str]) -> dict[str, Any]:
    """Run (or reuse) one arm x seed; returns its status record."""
    rec: dict[str, Any] = {"arm": spec.arm.name, "seed": spec.seed, "run_dir": spec.run_dir}
    if os.path.isfile(os.path.join(spec.run_dir, "results.json")):
        return {**rec, "status": "ok", "action": "reused"}
    _write_config(spec)
    argv = ["train", "-c", spec.config_path]
    action = "ran"
    if _has_checkpoint(spec.run_dir):
        argv += ["--resume", "latest"]
        action = "resumed"
    cmd = [sys.executable, "-m", "fastft.experiments.worker", spec.stats_path, *argv]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **env_extra}
    t0 = time.perf_counter()
    with open(spec.log_path, "a", encoding="utf-8") as log:
        log.write(f"$ {' '.join(cmd)}\n")
        log.flush()
        rc = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    rec.update(action=action, rc=rc, wall_s=round(time.perf_counter() - t0, 2))
    if rc == 0 and os.path.isfile(os.path.join(spec.run_dir, "results.json")):
        rec["status"] = "ok"
    else:
        rec["status"] = "interrupted" if rc in (130, 143) else "failed"
        rec["error"] = _last_line(spec.log_path)
    return rec


def collect_metrics(spec: RunSpec) -> dict[str, float]:
    """The numbers a run contributes: the test split's metrics (else the best validation's), wall
    time, samples/s, peak memory (MB) and trainable parameters."""
    with open(os.path.join(spec.run_dir, "results.json"), encoding="utf-8") as fh:
        res = json.load(fh)
    src = res.get("test") or res.get("best_validation") or {}
    out: dict[str, float] = {
        k: float(v) for k, v in src.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
    }
    for k in ("train_runtime_s", "train_samples_per_s"):
        if isinstance(res.get(k), (int, float)):
            out[k] = float(res[k])
    stats: dict[str, Any] = {}
    if os.path.isfile(spec.stats_path):
        with open(spec.stats_path, encoding="utf-8") as fh:
            stats = json.load(fh)
    peak = res.get("peak_memory_mb") or stats.get("peak_cuda_mb") or stats.get("peak_rss_mb")
    if peak is not None:
        out["peak_memory_mb"] = float(peak)
    trainable = res.get("trainable_params")
    if trainable is not None:
        out["trainable_params"] = float(trainable)
    return out


def _run_all(specs: list[RunSpec], parallel: int, group_env: dict[str, str]) -> list[dict[str, Any]]:
    gpus = _gpu_count()
    slots: Queue[int] = Queue()
    for i in range(max(1, parallel)):
        slots.put(i)
    lock = threading.Lock()
    done = [0]

    def one(spec: RunSpec) -> dict[str, Any]:
        slot = slots.get()
        try:
            env = dict(group_env)
            if gpus:
                env["CUDA_VISIBLE_DEVICES"] = str(slot % gpus)
            rec = execute(spec, env)
        finally:
            slots.put(slot)
        with lock:
            done[0] += 1
            what = rec["action"] if rec["status"] == "ok" else f"{rec['status']}: {rec.get('error')}"
            print(f"[{done[0]}/{len(specs)}] {spec.arm.name} seed {spec.seed}: {what}", flush=True)
        return rec

    if parallel <= 1:
        return [one(s) for s in specs]
    with ThreadPoolExecutor(max_workers=parallel) as pool:
        return list(pool.map(one, specs))


def run_compare(
    arms: list[Arm],
    seeds: list[int],
    output_dir: str,
    *,
    parallel: int = 1,
    baseline: str | None = None,
    alpha: float = 0.05,
    metric: str | None = None,
    command: str = "",
) -> dict[str, Any]:
    """Run every arm x seed (reusing finished runs) and write compare.md / .json / .png."""
    if baseline is not None and not any(baseline in (a.name, a.slug) for a in arms):
        names = ", ".join(repr(a.name) for a in arms)
        raise ConfigError(f"--baseline {baseline!r} is not an arm; the arms are {names}")
    if not 0.0 < alpha < 1.0:
        raise ConfigError(f"--alpha must be in (0, 1) (got {alpha})")
    if parallel < 1:
        raise ConfigError(f"--parallel must be >= 1 (got {parallel})")
    specs = plan_runs(arms, seeds, output_dir)
    from fastft.train.outdir import acquire

    # a second compare into this folder would run the same runs and append to the same logs
    with acquire(output_dir):
        return _compare(arms, seeds, specs, output_dir, parallel, baseline, alpha, metric, command)


def _compare(arms, seeds, specs, output_dir, parallel, baseline, alpha, metric, command) -> dict[str, Any]:
    from fastft.train.trackers import GroupRun, parse_report_to

    trackers = sorted(
        {t for a in arms for t in parse_report_to(a.config.get("report_to", a.config.get("report-to")))}
    )
    group = GroupRun(",".join(trackers) or "none", "compare-" + os.path.basename(os.path.abspath(output_dir)))
    print(f"fastft compare: {len(arms)} arms x {len(seeds)} seeds = {len(specs)} runs in {output_dir}")
    records = _run_all(specs, parallel, group.env)
    for spec, rec in zip(specs, records):
        if rec["status"] == "ok":
            rec["metrics"] = collect_metrics(spec)
            with open(os.path.join(spec.run_dir, "results.json"), encoding="utf-8") as fh:
                rec["metric_for_best"] = json.load(fh).get("metric_for_best")
    base = next(a.name for a in arms if baseline in (None, a.name, a.slug))
    doc = write_report(
        output_dir,
        arms=[a.name for a in arms],
        varied={a.name: a.varied for a in arms},
        seeds=seeds,
        records=records,
        baseline=base,
        alpha=alpha,
        metric=metric,
        command=command,
    )
    group.finish([os.path.join(output_dir, n) for n in ("compare.md", "compare.json", "compare.png")])
    return doc
