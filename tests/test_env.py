"""The environment the README builds: nothing in the checkout shadows an installed package, plain
transformers / peft / trl work without fastft, and scripts/setup.sh pins what it installs."""

from __future__ import annotations

import importlib.metadata
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests import ROOT, child_env


def _py(
    code: str, cwd: str | Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args, "-c", code],
        cwd=cwd,
        env=env if env is not None else child_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )


def _has_dist(name: str) -> bool:
    try:
        importlib.metadata.version(name)
        return True
    except importlib.metadata.PackageNotFoundError:
        return False


@pytest.mark.skipif(not _has_dist("kernels"), reason="Hugging Face's kernels package is not installed")
def test_repo_root_on_sys_path_does_not_shadow_hf_kernels():
    """`python -c` from the root puts the root first on sys.path, where our kernels/ folder lies."""
    code = (
        "import os, sys, kernels\n"
        "assert sys.path[0] in ('', os.getcwd()), sys.path[:2]\n"
        f"assert not os.path.abspath(kernels.__file__).startswith({ROOT!r} + os.sep), kernels.__file__\n"
        "from kernels import CUDAProperties\n"
        "from transformers import BertForSequenceClassification, GPT2LMHeadModel\n"
        "import fastft.kernels.cross_entropy as ce\n"
        "assert ce.__name__ == 'fastft.kernels.cross_entropy'\n"
        "print('ok')\n"
    )
    r = _py(code, ROOT)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-3000:]


def test_top_level_kernels_hands_over_to_the_next_on_sys_path(tmp_path):
    """Whatever `kernels` comes after the repo root on sys.path is the one imported."""
    other = tmp_path / "kernels"
    other.mkdir()
    (other / "__init__.py").write_text("MARK = 'theirs'\n")
    code = (
        f"import sys; sys.path.insert(1, {str(tmp_path)!r})\n"
        "import kernels; assert kernels.MARK == 'theirs', kernels\n"
        "import sys; assert sys.modules['kernels'] is kernels\n"
    )
    r = _py(code, ROOT)
    assert r.returncode == 0, r.stderr[-3000:]


def test_top_level_kernels_without_another_looks_like_a_namespace_shadow():
    """With no other `kernels` (-S: no site-packages), the import gives what transformers' availability
    check reads as a shadow on sys.path (no __file__), not our Triton sources."""
    code = "import kernels; assert kernels.__file__ is None and not hasattr(kernels, 'cross_entropy')\n"
    r = _py(code, ROOT, "-S", env={"PATH": os.environ.get("PATH", "")})
    assert r.returncode == 0, r.stderr[-3000:]


def test_plain_transformers_peft_trl_import_without_fastft(tmp_path):
    """A user's notebook in any folder: every model family fastft trains, Trainer, peft (and trl when
    installed) import with no fastft in the process."""
    code = (
        "import sys\n"
        "from transformers import BertForSequenceClassification, ViTForImageClassification, CLIPModel, Trainer\n"
        "from transformers import AutoImageProcessor\n"
        "import peft\n"
        "try:\n    import trl\nexcept ModuleNotFoundError:\n    pass\n"
        "assert 'fastft' not in sys.modules\n"
        "print('ok')\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    r = _py(code, tmp_path, env=env)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-3000:]


def test_constraints_pin_every_dependency_but_torch():
    """scripts/setup.sh installs with constraints.txt: each line an exact pin, transformers among them,
    torch never (a GPU image keeps its own build)."""
    lines = [ln for ln in (Path(ROOT) / "constraints.txt").read_text().splitlines() if ln and ln[0] != "#"]
    pins = dict(ln.split("==", 1) for ln in lines)
    assert all(re.fullmatch(r"[a-z0-9][a-z0-9.-]*==[0-9][\w.+!-]*", ln) for ln in lines), lines
    assert {"transformers", "triton", "peft", "huggingface-hub", "ruff"} <= set(pins)
    assert "torch" not in pins and not any(n.startswith("nvidia-") for n in pins)
    setup = (Path(ROOT) / "scripts" / "setup.sh").read_text()
    assert "constraints.txt" in setup and "FASTFT_LATEST" in setup


def test_installed_versions_are_the_pinned_ones():
    """The suite runs on the known-good set unless FASTFT_LATEST=1 built this environment."""
    if os.environ.get("FASTFT_LATEST") == "1":
        pytest.skip("FASTFT_LATEST=1: the newest releases, not the pins")
    lines = [ln for ln in (Path(ROOT) / "constraints.txt").read_text().splitlines() if ln and ln[0] != "#"]
    pins = dict(ln.split("==", 1) for ln in lines)
    for name in ("transformers", "peft", "huggingface-hub", "tokenizers"):
        assert importlib.metadata.version(name) == pins[name], name
