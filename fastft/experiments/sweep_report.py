"""``fastft sweep``'s outputs: ``best.yaml`` (runnable with ``fastft train -c``), ``sweep.md`` and the
Optuna plots, written from the study after every run of the sweep (complete or not)."""

from __future__ import annotations

import math
import os
import warnings
from typing import Any

from fastft.experiments.optuna_env import load_optuna as _optuna
from fastft.train.errors import first_line

__all__ = ["write_outputs"]


def _done(study):
    optuna = _optuna()
    return study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "n/a" if not math.isfinite(v) else f"{v:.4g}"
    return str(v)


def write_outputs(study, output_dir: str, base: dict[str, Any], metric: str, url: str) -> dict[str, Any]:
    """best.yaml (runnable: ``fastft train -c best.yaml``), sweep.md and the Optuna plots."""
    import yaml

    optuna = _optuna()
    complete = _done(study)
    out: dict[str, Any] = {"best": None, "importances": {}, "files": []}
    if complete:
        best = study.best_trial
        cfg = {
            k: v for k, v in {**base, **best.params, "metric_for_best": metric}.items() if k != "output_dir"
        }
        path = os.path.join(output_dir, "best.yaml")
        tmp = path + f".{os.getpid()}.tmp"
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(f"# fastft sweep {study.study_name}: best trial {best.number}, validation {metric} ")
            fh.write(f"{best.value:.6g}\n# run it: fastft train -c best.yaml --output-dir DIR\n")
            yaml.safe_dump(cfg, fh, sort_keys=False)
        os.replace(tmp, path)
        out["best"] = {"number": best.number, "value": best.value, "params": best.params, "config": cfg}
        out["files"].append(path)
    try:
        if len(complete) >= 2:
            with warnings.catch_warnings():  # e.g. "importances will be equal" with few trials
                warnings.simplefilter("ignore")
                out["importances"] = dict(optuna.importance.get_param_importances(study))
    except Exception:  # noqa: BLE001 - importance needs variation among complete trials
        out["importances"] = {}
    out["files"] += _plots(study, output_dir, bool(out["importances"]))
    md = _markdown(study, metric, url, out)
    path = os.path.join(output_dir, "sweep.md")
    with open(path + f".{os.getpid()}.tmp", "w", encoding="utf-8") as fh:  # processes may share the folder
        fh.write(md)
    os.replace(path + f".{os.getpid()}.tmp", path)
    out["files"].append(os.path.join(output_dir, "sweep.md"))
    print(f"sweep report: {os.path.join(output_dir, 'sweep.md')}" + (" + best.yaml" if complete else ""))
    return out


def _plots(study, output_dir: str, importances: bool) -> list[str]:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as ovm

    files: list[str] = []
    if not _done(study):  # nothing to draw: Optuna would warn and draw empty axes
        return files
    todo = [("optimization_history.png", ovm.plot_optimization_history)]
    if importances:
        todo.append(("param_importances.png", ovm.plot_param_importances))
    for name, fn in todo:
        try:
            with warnings.catch_warnings():  # Optuna's notes on small studies, not the user's business
                warnings.simplefilter("ignore")
                ax = fn(study)
            fig = ax.figure if hasattr(ax, "figure") else ax[0].figure
            fig.tight_layout()
            fig.savefig(os.path.join(output_dir, name), dpi=100)
            plt.close(fig)
            files.append(os.path.join(output_dir, name))
        except Exception as e:  # noqa: BLE001 - a plot must never fail a finished sweep
            print(f"could not draw {name}: {first_line(e, 10_000)}")
    return files


def _markdown(study, metric: str, url: str, out: dict[str, Any]) -> str:
    trials = study.get_trials(deepcopy=False)
    params = sorted({p for t in trials for p in t.params})
    lines = [
        f"# fastft sweep `{study.study_name}`",
        "",
        f"Storage `{url}`; {study.direction.name.lower()} validation `{metric}`; {len(trials)} trials "
        f"({', '.join(f'{s}: {n}' for s, n in _count_states(trials).items())}).",
        "",
    ]
    best = out["best"]
    if best:
        shown = ", ".join(f"{k}={_fmt(v)}" for k, v in best["params"].items())
        lines += [f"**Best trial {best['number']}:** {metric} = {_fmt(best['value'])} with {shown}.", ""]
        lines += ["Re-run it: `fastft train -c best.yaml --output-dir DIR`.", ""]
    lines += ["## Trials", "", "| trial | state | " + metric + " | " + " | ".join(params) + " | note |"]
    lines.append("| --- | --- | --- | " + " | ".join("---" for _ in params) + " | --- |")
    for t in trials:
        note = ""
        if t.state.name == "PRUNED":
            step = t.user_attrs.get("stopped_at_step", t.last_step)
            note = f"pruned at step {step}"
        elif t.state.name == "FAIL":
            note = t.user_attrs.get("error") or ("interrupted" if t.user_attrs.get("interrupted_dir") else "")
            note = note.replace("|", "/")  # a table cell
        cells = [_fmt(t.params.get(p, "")) for p in params]
        value = _fmt(t.value) if t.value is not None else "—"
        lines.append(
            f"| {t.number} | {t.state.name.lower()} | {value} | " + " | ".join(cells) + f" | {note} |"
        )
    lines += ["", "## Parameter importances (fANOVA)", ""]
    if out["importances"]:
        lines += ["| parameter | importance |", "| --- | --- |"]
        lines += [f"| {k} | {v:.3f} |" for k, v in out["importances"].items()]
    else:
        lines.append("n/a: needs at least 2 complete trials with different values.")
    pngs = [os.path.basename(f) for f in out["files"] if f.endswith(".png")]
    if pngs:
        lines += ["", "Plots: " + ", ".join(f"`{p}`" for p in pngs) + "."]
    return "\n".join(lines) + "\n"


def _count_states(trials) -> dict[str, int]:
    counts: dict[str, int] = {}
    for t in trials:
        counts[t.state.name.lower()] = counts.get(t.state.name.lower(), 0) + 1
    return counts
