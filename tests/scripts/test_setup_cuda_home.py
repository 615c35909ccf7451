"""setup.py's CUDA toolkit search and CPU-only retry, on fake directory trees (no toolkit or GPU needed)."""

from __future__ import annotations

import importlib.util
import os
import stat
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _load_setup():
    spec = importlib.util.spec_from_file_location("fastft_setup_under_test", ROOT / "setup.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # main() is guarded by __name__ == "__main__": nothing is built
    return mod


S = _load_setup()


def _exe(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def toolkit(root: Path, lib: str = "lib64", cudart: bool = True) -> Path:
    _exe(root / "bin" / "nvcc", "#!/bin/sh\necho fake nvcc\n")
    (root / lib).mkdir(parents=True, exist_ok=True)
    if cudart:
        (root / lib / "libcudart.so.13").write_text("")
    return root


def no_run(*a, **k):
    raise OSError("nvcc not runnable in this test")


def find(tmp_path, env=None, nvcc=None, run=no_run, prefixes=None):
    return S.find_cuda_home(
        env=env or {},
        which=lambda name: str(nvcc) if nvcc else None,
        run=run,
        prefixes=prefixes or (str(tmp_path / "no-prefix"),),
    )


def test_wrapper_script_resolved_to_real_toolkit(tmp_path):
    """/usr/local/bin/nvcc = `exec /usr/local/cuda-13.0/bin/nvcc "$@"`: torch guesses /usr/local; we don't."""
    real = toolkit(tmp_path / "cuda-13.0")
    wrapper = _exe(tmp_path / "bin" / "nvcc", f'#!/bin/sh\nexec {real}/bin/nvcc "$@"\n')
    assert not S.is_cuda_home(os.path.dirname(os.path.dirname(wrapper)))  # torch's guess is unusable
    assert find(tmp_path, nvcc=wrapper) == str(real)


def test_symlinked_nvcc(tmp_path):
    real = toolkit(tmp_path / "opt" / "cuda-12.4")
    (tmp_path / "bin").mkdir()
    os.symlink(real / "bin" / "nvcc", tmp_path / "bin" / "nvcc")
    assert find(tmp_path, nvcc=tmp_path / "bin" / "nvcc") == str(real)


def test_dryrun_top_sees_through_opaque_wrapper(tmp_path):
    real = toolkit(tmp_path / "sdk" / "cuda")
    wrapper = _exe(tmp_path / "bin" / "nvcc", '#!/bin/sh\nexec "$SDK_DIR/bin/nvcc" "$@"\n')

    def run(cmd, **kw):
        assert cmd[0] == str(wrapper) and "--dryrun" in cmd
        return subprocess.CompletedProcess(
            cmd, 0, stdout="", stderr=f"#$ _HERE_={real}/bin\n#$ TOP={real}/bin/..\n"
        )

    assert find(tmp_path, nvcc=wrapper, run=run) == str(real)


def test_env_first_when_valid_and_skipped_when_broken(tmp_path):
    good = toolkit(tmp_path / "good")
    broken = toolkit(tmp_path / "broken", cudart=False)
    assert find(tmp_path, env={"CUDA_HOME": str(good)}) == str(good)
    assert find(tmp_path, env={"CUDA_PATH": str(good)}) == str(good)
    # a CUDA_HOME without libcudart is passed over for the next candidate
    pre = tmp_path / "usr-local"
    newest = toolkit(pre / "cuda-12.10")
    toolkit(pre / "cuda-12.4")
    toolkit(pre / "cuda-11.8")
    assert find(tmp_path, env={"CUDA_HOME": str(broken)}, prefixes=(str(pre),)) == str(newest)


def test_prefix_cuda_link_preferred_and_lib_dir(tmp_path):
    pre = tmp_path / "usr-local"
    toolkit(pre / "cuda-13.0", lib="lib")  # cudart under lib/ (no lib64) also counts
    os.symlink(pre / "cuda-13.0", pre / "cuda")
    assert find(tmp_path, prefixes=(str(pre),)) == str(pre / "cuda")


def test_nothing_found(tmp_path):
    toolkit(tmp_path / "usr-local" / "cuda-13.0", cudart=False)  # nvcc but no runtime library
    assert find(tmp_path, prefixes=(str(tmp_path / "usr-local"),)) is None


class _FakeBuild:
    """Stands in for torch's BuildExtension: fails while asked to build the 'cuda' extension."""

    def __init__(self):
        self.extensions = ["cuda"]
        self.distribution = type("D", (), {"ext_modules": ["cuda"]})()
        self.built = []

    def run(self):
        if self.extensions == ["cuda"]:
            raise RuntimeError("Error compiling objects for extension")
        self.built += self.extensions


def test_cuda_failure_retries_cpu_only(capsys, monkeypatch):
    monkeypatch.delenv("FASTFT_REQUIRE_CUDA", raising=False)
    b = S.with_cpu_fallback(_FakeBuild, "cpu")()
    b.run()
    assert b.built == ["cpu"] and b.distribution.ext_modules == ["cpu"]
    err = capsys.readouterr().err
    assert "CUDA build of fastft._C failed" in err and "CPU extension alone" in err


@pytest.mark.parametrize("case", ["required", "no_fallback"])
def test_cuda_failure_fatal_when_asked(case, monkeypatch):
    if case == "required":
        monkeypatch.setenv("FASTFT_REQUIRE_CUDA", "1")
    b = S.with_cpu_fallback(_FakeBuild, "cpu" if case == "required" else None)()
    with pytest.raises(RuntimeError, match="Error compiling"):
        b.run()


def test_want_cuda_without_toolkit_warns(monkeypatch, capsys):
    monkeypatch.setenv("FASTFT_BUILD_CUDA", "1")
    monkeypatch.setattr(S, "find_cuda_home", lambda: None)
    assert S._want_cuda("13.0") is False
    assert "no CUDA toolkit" in capsys.readouterr().err
    assert S._want_cuda(None) is False
    monkeypatch.setenv("FASTFT_BUILD_CUDA", "0")
    assert S._want_cuda("13.0") is False
