"""fastft runs no code from a model folder: a config.json with ``auto_map`` (custom code) is refused up
front with one line (exit 2), and every load passes ``trust_remote_code=False``, so a ``y`` on stdin
(``yes | fastft eval ...`` answering transformers' ``[y/N]`` prompt) runs nothing."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import pytest

from fastft.cli import main
from fastft.train.errors import ConfigError
from tests import child_env
from tests.train.trainutil import save_tiny, write_csv

YES = "y\n" * 20


def _code(folder, marker) -> None:
    """``evil.py``: writes ``marker`` when imported (it would be, were the folder's code run)."""
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "evil.py"), "w") as fh:
        fh.write(
            f"open({str(marker)!r}, 'w').write('ran')\n"
            "from transformers import PretrainedConfig, PreTrainedTokenizerFast\n"
            "class EvilConfig(PretrainedConfig):\n    model_type = 'evilbert'\n"
            "class EvilTok(PreTrainedTokenizerFast):\n    pass\n"
        )


def _evil_model(folder, marker) -> str:
    _code(folder, marker)
    cfg = {
        "model_type": "evilbert",
        "architectures": ["EvilModel"],
        "auto_map": {"AutoConfig": "evil.EvilConfig", "AutoModelForSequenceClassification": "evil.EvilModel"},
    }
    with open(os.path.join(folder, "config.json"), "w") as fh:
        json.dump(cfg, fh)
    return str(folder)


@pytest.fixture()
def data(tmp_path):
    return write_csv(str(tmp_path / "d.csv"), ["text", "label"], [["good movie", 1], ["bad movie", 0]] * 4)


def test_yes_piped_into_eval_runs_no_model_code(tmp_path, data):
    marker = tmp_path / "marker"
    model = _evil_model(tmp_path / "evil", marker)
    proc = subprocess.run(
        [sys.executable, "-m", "fastft", "eval", "--model", model, "--file", data],
        input=YES,
        capture_output=True,
        text=True,
        env=child_env(),
        timeout=300,
    )
    err = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr
    assert len(err) == 1 and "auto_map (custom code)" in err[0] and "runs no model-folder code" in err[0]
    assert not marker.exists()


@pytest.mark.parametrize("flag", ["--model", "--teacher"])
def test_train_refuses_custom_code_folder(tmp_path, data, monkeypatch, capsys, flag):
    marker = tmp_path / "marker"
    evil = _evil_model(tmp_path / "evil", marker)
    good = save_tiny(str(tmp_path / "tiny"))
    monkeypatch.setattr(sys, "stdin", io.StringIO(YES))  # the attack: a "y" for the prompt
    model, extra = (evil, []) if flag == "--model" else (good, ["--teacher", evil])
    out = tmp_path / "out"
    argv = ["train", "--model", model, "--train-file", data, "--output-dir", str(out), *extra]
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{flag} {evil}: its config.json has auto_map" in err, err
    assert not marker.exists() and not out.exists()


def test_every_loader_passes_trust_remote_code_false(tmp_path, monkeypatch):
    """Custom tokenizer / processor code beside a config.json without ``auto_map`` (a --tokenizer
    folder, a model's processor): each load fails with one line instead of asking (and running it)."""
    from fastft.train.models import load_tokenizer
    from fastft.train.tasks import get_task
    from fastft.train.vision import load_image_processor
    from tests.clip_util import tiny_config

    marker = tmp_path / "marker"
    folder = str(tmp_path / "m")
    _code(folder, marker)
    json.dump({"model_type": "evilbert"}, open(os.path.join(folder, "config.json"), "w"))
    tok = {"auto_map": {"AutoTokenizer": ["evil.EvilTok", None]}, "tokenizer_class": "EvilTok"}
    json.dump(tok, open(os.path.join(folder, "tokenizer_config.json"), "w"))
    proc = {"auto_map": {"AutoImageProcessor": "evil.EvilIP", "AutoProcessor": "evil.EvilP"},
            "image_processor_type": "EvilIP", "processor_class": "EvilP"}  # fmt: skip
    json.dump(proc, open(os.path.join(folder, "preprocessor_config.json"), "w"))
    monkeypatch.setattr(sys, "stdin", io.StringIO(YES))  # the attack: a "y" for each prompt
    loads = [
        lambda: load_tokenizer(folder),
        lambda: load_image_processor(folder),
        lambda: get_task("contrastive").load_preprocessor(folder, tiny_config("clip")),
    ]
    for load in loads:
        with pytest.raises(ConfigError) as e:
            load()
        assert "\n" not in str(e.value)
    assert not marker.exists()
