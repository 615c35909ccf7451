"""fastft's torchvision repair: with a torchvision whose compiled ops don't load (PyPI's CUDA build
next to a CPU torch), importing fastft first keeps transformers' models and torchvision's transforms
importable."""

import importlib.util
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("torchvision") is None, reason="torchvision is not installed"
)


def test_transformers_and_torchvision_import_after_fastft():
    code = (
        "import fastft, transformers\n"
        "from transformers import BertModel\n"  # transformers.image_utils imports torchvision
        "from torchvision.transforms import v2\n"
        "import torch\n"
        "x = v2.RandomHorizontalFlip(p=1.0)(torch.arange(6.).view(1, 2, 3))\n"
        "assert x.tolist() == [[[2.0, 1.0, 0.0], [5.0, 4.0, 3.0]]], x\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]
