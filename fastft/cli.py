"""``fastft train | eval | predict`` (console script ``fastft``, also ``python -m fastft``).

``fastft train`` flags are generated from :class:`fastft.train.TrainConfig` (``train_file`` ->
``--train-file``), with a few Hugging Face ``run_classification.py`` spellings as aliases.
Precedence: defaults < ``-c run.yaml|json`` < flags.

Exit codes: 0 done; 2 bad input (one line on stderr: the problem and the fix, nothing written);
1 training failed (e.g. the loss stayed NaN); 130 / 143 interrupted by Ctrl-C / SIGTERM after
saving a checkpoint (continue with ``--resume latest``).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import os
import sys

from fastft.cli_common import Parser, add_train_parser, cmd_train, quiet, run_guarded

__all__ = ["main", "build_parser"]


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="fastft", description="Kernel-accelerated fine-tuning for Hugging Face BERT/GPT models.")
    sub = p.add_subparsers(dest="command", metavar="{train,eval,predict,compare,sweep}", parser_class=Parser)

    add_train_parser(sub)

    for name, what in (
        ("eval", "metrics of a saved model on a labelled file"),
        ("predict", "write a predictions CSV for a file"),
    ):
        s = sub.add_parser(name, help=what, description=f"fastft {name}: {what}.")
        _add_saved_model_flags(s)
        if name == "eval":
            s.add_argument(
                "--output",
                default=None,
                help="also write the metrics as JSON here (image models: and confusion_matrix.png beside it)",
            )
        else:
            _add_predict_flags(s)
    from fastft.experiments.cli import add_parsers

    add_parsers(sub)  # compare, sweep
    return p


#: the training run's data options (:class:`TrainConfig` fields) that eval/predict take again; unset,
#: they default to the run's (its ``train_config.json``).
_RUN_FIELDS: dict[str, str] = {
    "text_column": "text column (default: the training run's, else 'text')",
    "text_pair_column": "second text column (default: the training run's)",
    "tokens_column": "word-list column (token classification; default: the run's)",
    "label_column": "label column (default: the training run's, else 'label')",
    "max_length": "truncate to this many tokens (default: the training run's)",
    "image_column": "image-path column (image models; default: the run's)",
}


def _add_saved_model_flags(s: argparse.ArgumentParser) -> None:
    """eval's and predict's shared flags: the saved model, the data file and how to read it."""
    s.add_argument("--model", required=True, help="a saved model folder (e.g. a fastft output dir)")
    s.add_argument(
        "--file",
        required=True,
        help="data file: .csv .tsv .json .jsonl .parquet or .conll (images: or a folder)",
    )
    from fastft.train.config import TrainConfig

    types = {f.name: str(f.type) for f in dataclasses.fields(TrainConfig)}
    for name, help_ in _RUN_FIELDS.items():
        typ = int if types[name].startswith("int") else None
        s.add_argument("--" + name.replace("_", "-"), type=typ, default=None, help=help_)
    s.add_argument("--batch-size", type=int, default=64, help="batch size")
    s.add_argument("--device", default=None, help="cpu | cuda (default: cuda when available)")
    s.add_argument(
        "--allow-untrained-head",
        action="store_true",
        help="run even when the model's task head is not in its checkpoint (randomly initialised)",
    )


def _add_predict_flags(s: argparse.ArgumentParser) -> None:
    """predict's own flags: the output file, top-k, retrieval and generation."""
    s.add_argument(
        "--output",
        default=None,
        help="predictions file to write (default: predictions.csv, or .jsonl)",
    )
    s.add_argument("--overwrite", action="store_true", help="replace an existing --output file")
    s.add_argument(
        "--top-k",
        type=int,
        default=5,
        help="classification: the k most likely labels per row (image models)",
    )
    r = s.add_argument_group("retrieval (contrastive CLIP/SigLIP models)")
    r.add_argument(
        "--captions-file",
        default=None,
        help="candidate captions: .txt (one per line) or a csv/jsonl with a caption column "
        "(default: the --file's own captions)",
    )
    r.add_argument(
        "--direction",
        choices=("i2t", "t2i"),
        default="i2t",
        help="i2t: the --top-k captions of each image; t2i: the --top-k images of each caption",
    )
    g = s.add_argument_group("generation (causal LM models)")
    g.add_argument("--max-new-tokens", type=int, default=32, help="tokens generated per prompt row")
    g.add_argument("--temperature", type=float, default=0.0, help="sampling temperature (0: greedy)")
    g.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (with --temperature > 0)")
    g.add_argument("--num-beams", type=int, default=1, help="beam search width (1: no beam search)")


def _saved_run_config(model_dir: str) -> dict:
    path = os.path.join(model_dir, "train_config.json")
    if os.path.isfile(path):
        try:
            with open(path, encoding="utf-8") as fh:
                return json.load(fh)
        except (OSError, ValueError):
            return {}
    return {}


def _load_for_inference(args: argparse.Namespace, require_labels: bool):
    """The saved model, its preprocessor, ``--file`` prepared as the run prepared its data, the data
    options, the task (the run's options applied: :meth:`Task.for_inference`) and the device."""
    from fastft.distributed import resolve_device
    from fastft.train.config import TrainConfig
    from fastft.train.data.pipeline import prepare_file
    from fastft.train.errors import ConfigError
    from fastft.train.models import check_model, from_pretrained
    from fastft.train.tasks import task_of_model

    if args.output and os.path.isdir(args.output):  # before the model is loaded
        raise ConfigError(f"--output {args.output} is a directory; pass a file path")
    if not os.path.exists(args.file):
        raise ConfigError(f"--file {args.file}: file not found; check the path")
    if args.batch_size <= 0:
        raise ConfigError(f"--batch-size must be > 0 (got {args.batch_size})")
    device = resolve_device(args.device)  # a missing GPU / unknown device: one line, before any loading
    mcfg = check_model(args.model)
    task = task_of_model(mcfg)
    if os.path.isdir(args.file) and not task.reads_folders:  # image models take a folder of images
        raise ConfigError(f"--file {args.file} is a directory; pass a file")
    saved = _saved_run_config(args.model)
    values = {name: getattr(args, name, None) or saved.get(name) for name in _RUN_FIELDS}
    cfg = TrainConfig(**{**values, "max_length": values["max_length"] or 128})
    task = task.for_inference(saved, images_only=bool(getattr(args, "captions_file", None)))
    if saved.get("dataset") == "rotten_tomatoes":  # the default run used the built-in columns
        cfg.text_column = args.text_column or "text"
        cfg.label_column = args.label_column or "label"
    model, info = from_pretrained(task, args.model, quiet=True, output_loading_info=True)
    _check_head(model, info, args)  # before the data: a random head makes every other check moot
    model = task.attach_saved_head(model, args.model)  # e.g. a contrastive model's class head
    tok = task.load_preprocessor(args.model, mcfg)
    label2id = getattr(mcfg, "label2id", None) if task.named_labels else None
    ds = prepare_file(args.file, cfg, tok, task=task, label2id=label2id, require_labels=require_labels)
    if cfg.text_column is None:  # the detected text columns, so that predict keeps them in its output
        from fastft.train.data.loader import MODEL_COLUMNS

        raw = [c for c in ds.column_names if c not in MODEL_COLUMNS]
        cfg.text_column, cfg.text_pair_column = task.inference_text_columns(
            raw, cfg.text_pair_column, args.file
        )
    model.to(device).eval()
    return model, tok, ds, cfg, task, device


def _check_head(model, info: dict, args: argparse.Namespace) -> None:
    """Refuse a model whose task head was not in the checkpoint: transformers initialised it at
    random, so eval/predict would report confident garbage (e.g. a plain base-model folder)."""
    from fastft.train.errors import ConfigError

    prefix = getattr(model, "base_model_prefix", "") + "."
    missing = [k for k in (info or {}).get("missing_keys", ()) if not k.startswith(prefix)]
    if missing and not args.allow_untrained_head:
        shown = ", ".join(sorted(missing)[:4]) + (", ..." if len(missing) > 4 else "")
        raise ConfigError(
            f"--model {args.model}: its {type(model).__name__} head ({shown}) is not in the checkpoint, "
            "so it would be random; pass a fine-tuned model folder (a fastft train output dir), "
            "or --allow-untrained-head to run anyway"
        )


def _inference_loader(args: argparse.Namespace, ds, tok, cfg, task):
    """Batches of ``ds`` in file order (no shuffling or length grouping), for eval and predict."""
    from fastft.train.data.loader import make_dataloader

    return make_dataloader(
        ds,
        tok,
        batch_size=args.batch_size,
        shuffle=False,
        seed=0,
        group_by_length=False,
        max_length=cfg.max_length,
        task=task,
    )


def cmd_eval(args: argparse.Namespace) -> int:
    from fastft.train.evaluate import evaluate_model

    model, tok, ds, cfg, task, device = _load_for_inference(args, require_labels=True)
    loader = _inference_loader(args, ds, tok, cfg, task)
    metrics = evaluate_model(model, loader, task=task, device=device, total=len(ds))
    metrics = {"file": args.file, "model": args.model, "rows": len(ds), **metrics}
    text = json.dumps(metrics, indent=2, default=str)
    print(text)
    table = task.metrics_table(metrics)
    if table:
        print(table)
    if args.output:
        from fastft.train.outdir import atomic_write

        atomic_write(args.output, text + "\n", overwrite=True)
        folder = os.path.dirname(os.path.abspath(args.output))
        for name in task.artifacts(metrics, model, folder):  # e.g. image tasks' confusion_matrix.png
            print(f"wrote {os.path.join(folder, name)}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from fastft.train.errors import ConfigError

    if args.top_k <= 0:
        raise ConfigError(f"--top-k must be > 0 (got {args.top_k})")
    if args.max_new_tokens <= 0 or args.num_beams <= 0 or args.temperature < 0 or not 0 < args.top_p <= 1:
        raise ConfigError(
            "--max-new-tokens and --num-beams must be > 0, --temperature >= 0, --top-p in (0, 1]"
        )
    model, tok, ds, cfg, task, device = _load_for_inference(args, require_labels=False)
    output = args.output or f"predictions.{task.predict_format}"
    if os.path.exists(output) and not args.overwrite:
        raise ConfigError(f"--output {output} already exists; pass --overwrite or another --output")
    text_cols = [c for c in (cfg.text_column or "text", cfg.text_pair_column) if c and c in ds.column_names]
    options = argparse.Namespace(**{**vars(args), "max_length": cfg.max_length})
    loader = _inference_loader(args, ds, tok, cfg, task)
    records = task.predict(model, tok, ds, loader, device=device, text_columns=text_cols, options=options)

    def write(fh):
        if task.predict_format == "jsonl":
            fh.writelines(json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in records)
            return
        w = csv.writer(fh)
        w.writerow(list(records[0]) if records else text_cols)
        w.writerows(list(r.values()) for r in records)

    from fastft.train.outdir import atomic_write

    atomic_write(output, write, overwrite=args.overwrite)
    print(f"wrote {len(records)} predictions to {output}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    quiet()
    if args.command != "train" and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # every rank would compute the same metrics and race on the same output file
        print(
            f"fastft {args.command}: error: runs in one process; launch it without torchrun",
            file=sys.stderr,
            flush=True,
        )
        return 2
    commands = {"train": cmd_train, "eval": cmd_eval, "predict": cmd_predict}
    return run_guarded(args, commands.get(args.command) or args.func)  # compare, sweep: their own func


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
