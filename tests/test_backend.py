import logging

import pytest
import torch

import fastft
from fastft import _backend


def test_env_and_context_manager(monkeypatch):
    monkeypatch.setenv("FASTFT_BACKEND", "torch")
    assert fastft.current_backend() == "torch"
    with fastft.backend("triton"):
        assert fastft.current_backend() == "triton"
        with fastft.backend("auto"):
            assert fastft.current_backend() == "auto"
        assert fastft.current_backend() == "triton"
    assert fastft.current_backend() == "torch"


def test_unknown_backend_is_rejected(monkeypatch):
    with pytest.raises(ValueError, match="auto, triton, torch"):
        with fastft.backend("cuda"):
            pass
    monkeypatch.setenv("FASTFT_BACKEND", "fast")
    with pytest.raises(ValueError, match="unknown fastft backend"):
        fastft.current_backend()


def test_auto_uses_torch_on_cpu_and_logs_once(caplog):
    cpu = torch.device("cpu")
    with caplog.at_level(logging.INFO, logger="fastft"), fastft.backend("auto"):
        assert _backend.use_triton("test_op_a", cpu) is False
        assert _backend.use_triton("test_op_a", cpu) is False
    msgs = [r.getMessage() for r in caplog.records if "test_op_a" in r.getMessage()]
    assert len(msgs) == 1 and "reference path" in msgs[0]
    assert "torch" in fastft.report()["test_op_a"]


def test_forced_torch_and_unsupported_fall_back(caplog):
    with fastft.backend("torch"):
        assert _backend.use_triton("test_op_b", torch.device("cpu")) is False
    with caplog.at_level(logging.INFO, logger="fastft"), fastft.backend("triton"):
        assert _backend.use_triton("test_op_c", torch.device("cpu"), unsupported="head dim 512") is False
    assert any("head dim 512" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)


def test_forced_triton_on_cpu(monkeypatch):
    with fastft.backend("triton"):
        monkeypatch.setenv("TRITON_INTERPRET", "1")
        assert _backend.use_triton("test_op_d", torch.device("cpu")) is True
        monkeypatch.setenv("TRITON_INTERPRET", "0")
        with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
            _backend.use_triton("test_op_d", torch.device("cpu"))


def test_kernels_is_a_subpackage():
    import importlib.util

    spec = importlib.util.find_spec("fastft.kernels")
    assert spec is not None and spec.origin.replace("\\", "/").endswith("kernels/__init__.py")
