"""Builds the C++/CUDA extension ``fastft._C`` with torch's cpp_extension.

The CPU sources are always built. The CUDA sources are added only when a CUDA toolkit
and a CUDA build of torch are both present. ``FASTFT_BUILD_CUDA=0|1`` overrides the
detection, ``FASTFT_SKIP_EXT=1`` skips the extension entirely (``import fastft`` then
falls back to torch and says how to build it). A CUDA build that fails (wrong toolkit,
host compiler, ...) is retried CPU-only with a warning, so the install still succeeds;
``FASTFT_REQUIRE_CUDA=1`` makes that failure fatal instead.

Install with ``pip install --no-build-isolation -e ".[dev]"``: build isolation would
pull a multi-GB CUDA torch into a throwaway build environment.

The toolkit is located by :func:`find_cuda_home` (importable: nothing is built on import).
"""

from __future__ import annotations

import glob
import os
import platform
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping

_CUDART = ("libcudart.so", "libcudart.so.*", "cudart.lib")


def _x86_has(*flags: str) -> bool:
    """True when the build host is x86-64 and its CPU reports all of ``flags`` (Linux /proc/cpuinfo)."""
    if platform.machine() not in ("x86_64", "AMD64"):
        return False
    try:
        with open("/proc/cpuinfo") as f:
            have = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return False
    return all(flag in have for flag in flags)


def is_cuda_home(path: str | None) -> bool:
    """A usable toolkit root: ``bin/nvcc`` and a cudart in ``lib64/`` or ``lib/`` (where torch links from)."""
    if not path or not os.path.isfile(os.path.join(path, "bin", "nvcc")):
        return False
    return any(
        glob.glob(os.path.join(path, lib, pat)) for lib in ("lib64", "lib", "lib/x64") for pat in _CUDART
    )


def _root_of(nvcc: str) -> str:
    return os.path.dirname(os.path.dirname(nvcc))


def _roots_from_nvcc(nvcc: str, run: Callable[..., subprocess.CompletedProcess]) -> list[str]:
    """Toolkit roots implied by an ``nvcc`` on PATH: its real location, paths a wrapper script execs,
    and the ``TOP=`` that ``nvcc --dryrun`` reports (which sees through any wrapper)."""
    real = os.path.realpath(nvcc)
    roots = [_root_of(real)]
    try:
        with open(real, "rb") as f:
            head = f.read(4096)
        if head.startswith(b"#!"):  # a shell wrapper (e.g. `exec /usr/local/cuda-13.0/bin/nvcc "$@"`)
            for m in re.finditer(rb"(/[^\s\"';:]*)/bin/nvcc\b", head):
                roots.append(os.fsdecode(m.group(1)))
    except OSError:
        pass
    try:
        out = run(
            [nvcc, "--dryrun", "-x", "cu", "-c", os.devnull, "-o", os.devnull],
            capture_output=True,
            text=True,
            timeout=30,
        )
        m = re.search(r"^#\$ TOP=(.+)$", (out.stdout or "") + (out.stderr or ""), re.M)
        if m:
            roots.append(os.path.normpath(m.group(1).strip()))  # TOP is <root>/bin/..
    except (OSError, subprocess.SubprocessError):
        pass
    return roots


def _version_key(path: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", os.path.basename(path))) or (0,)


def find_cuda_home(
    env: Mapping[str, str] | None = None,
    which: Callable[[str], str | None] = shutil.which,
    run: Callable[..., subprocess.CompletedProcess] = subprocess.run,
    prefixes: tuple[str, ...] = ("/usr/local", "/opt"),
) -> str | None:
    """The CUDA toolkit root to build against, or None.

    In order: ``CUDA_HOME`` / ``CUDA_PATH``; the toolkit behind ``nvcc`` on PATH (symlinks and wrapper
    scripts resolved: torch's own guess, ``dirname(dirname(which nvcc))``, gives ``/usr/local`` for a
    ``/usr/local/bin/nvcc`` wrapper and the link then fails on ``-lcudart``); ``<prefix>/cuda``; the
    newest ``<prefix>/cuda-*``. A candidate counts only if it has ``bin/nvcc`` and a cudart library.
    """
    env = os.environ if env is None else env
    cands = [env.get("CUDA_HOME"), env.get("CUDA_PATH")]
    nvcc = which("nvcc")
    if nvcc:
        cands += _roots_from_nvcc(nvcc, run)
    for pre in prefixes:
        cands.append(os.path.join(pre, "cuda"))
        cands += sorted(glob.glob(os.path.join(pre, "cuda-*")), key=_version_key, reverse=True)
    for c in cands:
        if is_cuda_home(c):
            return os.path.normpath(c)
    return None


def _warn(msg: str) -> None:
    print(f"\nfastft setup.py: WARNING: {msg}\n", file=sys.stderr, flush=True)


def _extensions(build_cuda: bool):
    """(extension to build, CPU-only extension to fall back to or None)."""
    from torch.utils.cpp_extension import CppExtension, CUDAExtension

    cpu_sources = sorted(glob.glob(os.path.join("csrc", "*.cpp")))
    cuda_sources = sorted(glob.glob(os.path.join("csrc", "*.cu")))
    if not cpu_sources:
        return None, None
    # -fopenmp is required: at::parallel_for is a header template that expands to `#pragma omp parallel`
    # in our own objects (torch is built with AT_PARALLEL_OPENMP); without it the CPU op runs on one thread.
    # (no -std flag: cpp_extension adds the one this torch's headers need, c++20 for torch >= 2.13)
    cxx_flags = ["-O3", "-fopenmp"]
    if os.environ.get("FASTFT_NATIVE", "1") == "1" and _x86_has("avx2", "fma", "f16c"):
        # at::vec::Vectorized picks its 256-bit AVX2 implementation only when CPU_CAPABILITY_AVX2 is
        # defined (otherwise it is the generic array-of-scalars fallback); -mf16c is needed by its
        # Half<->float conversions. CPU_CAPABILITY names the inline namespace the vec types live in:
        # torch's own AVX2 kernels use `at::vec::AVX2`, so a private name keeps our inline copies from
        # ever being merged with libtorch's (ODR). The build host must have AVX2 (checked above) --
        # the extension is built on the machine that runs it; FASTFT_NATIVE=0 builds a portable one.
        cxx_flags += ["-mavx2", "-mfma", "-mf16c", "-DCPU_CAPABILITY_AVX2", "-DCPU_CAPABILITY=fastft_avx2"]
    cpu = CppExtension(
        "fastft._C",
        sources=cpu_sources,
        extra_compile_args={"cxx": cxx_flags},
        extra_link_args=["-fopenmp"],
    )
    if not build_cuda or not cuda_sources:
        return cpu, None
    cuda = CUDAExtension(
        "fastft._C",
        sources=cpu_sources + cuda_sources,
        define_macros=[("FASTFT_WITH_CUDA", "1")],
        extra_compile_args={"cxx": cxx_flags, "nvcc": ["-O3"]},
        extra_link_args=["-fopenmp"],
    )
    return cuda, cpu


def _want_cuda(torch_cuda: str | None) -> bool:
    """Whether to build the CUDA sources; sets CUDA_HOME for cpp_extension when a toolkit is found."""
    want = os.environ.get("FASTFT_BUILD_CUDA")
    if want == "0" or (want is None and torch_cuda is None):
        return False
    if torch_cuda is None:
        _warn("FASTFT_BUILD_CUDA=1 but this torch is a CPU build; building the CPU extension only")
        return False
    home = find_cuda_home()
    if home is None:
        _warn(
            "torch is a CUDA build but no CUDA toolkit (bin/nvcc + lib64/libcudart) was found; building the "
            "CPU extension only. Set CUDA_HOME to the toolkit root to build the CUDA kernels."
        )
        return False
    os.environ["CUDA_HOME"] = home  # read when torch.utils.cpp_extension is first imported
    if "torch.utils.cpp_extension" in sys.modules:
        sys.modules["torch.utils.cpp_extension"].CUDA_HOME = home
    print(f"fastft setup.py: building the CUDA kernels with the toolkit at {home}", file=sys.stderr)
    return True


def with_cpu_fallback(base: type, cpu_fallback):
    """``base`` (torch's BuildExtension) that, when the build fails and ``cpu_fallback`` is given,
    warns and builds ``cpu_fallback`` (the CPU-only extension) instead, unless FASTFT_REQUIRE_CUDA=1."""

    class BuildWithCPUFallback(base):
        def run(self) -> None:
            try:
                super().run()
            except (Exception, SystemExit) as e:  # distutils reports some failures as SystemExit
                if cpu_fallback is None or os.environ.get("FASTFT_REQUIRE_CUDA") == "1":
                    raise
                _warn(
                    f"the CUDA build of fastft._C failed ({type(e).__name__}: {str(e)[:300]}); building the "
                    "CPU extension alone. On GPUs FusedAdamW then uses its torch fallback. See the compiler "
                    "output above; set CUDA_HOME to the right toolkit, or FASTFT_BUILD_CUDA=0 to skip CUDA."
                )
                self.extensions = [cpu_fallback]
                self.distribution.ext_modules = [cpu_fallback]
                super().run()

    return BuildWithCPUFallback


def main() -> None:
    from setuptools import setup

    ext_modules, cmdclass = [], {}
    if os.environ.get("FASTFT_SKIP_EXT", "0") != "1":
        import torch

        build_cuda = _want_cuda(torch.version.cuda)
        from torch.utils.cpp_extension import BuildExtension

        ext, cpu_fallback = _extensions(build_cuda)

        if ext is not None:
            ext_modules.append(ext)
            cmdclass["build_ext"] = with_cpu_fallback(BuildExtension, cpu_fallback).with_options(
                use_ninja=os.environ.get("FASTFT_NINJA", "1") == "1"
            )
    setup(ext_modules=ext_modules, cmdclass=cmdclass)


if __name__ == "__main__":  # setuptools' PEP 517 backend execs this file as __main__
    main()
