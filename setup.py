"""Builds the C++/CUDA extension ``fastft._C`` with torch's cpp_extension.

The CPU sources are always built. The CUDA sources are added only when a CUDA toolkit
and a CUDA build of torch are both present. ``FASTFT_BUILD_CUDA=0|1`` overrides the
detection, ``FASTFT_SKIP_EXT=1`` skips the extension entirely (``import fastft`` then
falls back to torch and says how to build it).

Install with ``pip install --no-build-isolation -e ".[dev]"``: build isolation would
pull a multi-GB CUDA torch into a throwaway build environment.
"""

import glob
import os
import platform

from setuptools import setup


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


ext_modules = []
cmdclass = {}

if os.environ.get("FASTFT_SKIP_EXT", "0") != "1":
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

    here = os.path.dirname(os.path.abspath(__file__))
    cpu_sources = sorted(glob.glob(os.path.join("csrc", "*.cpp")))
    cuda_sources = sorted(glob.glob(os.path.join("csrc", "*.cu")))

    want_cuda = os.environ.get("FASTFT_BUILD_CUDA")
    if want_cuda is None:
        build_cuda = CUDA_HOME is not None and torch.version.cuda is not None
    else:
        build_cuda = want_cuda == "1"

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
    define_macros = []
    if build_cuda:
        define_macros.append(("FASTFT_WITH_CUDA", "1"))
        ext = CUDAExtension(
            "fastft._C",
            sources=cpu_sources + cuda_sources,
            define_macros=define_macros,
            extra_compile_args={"cxx": cxx_flags, "nvcc": ["-O3"]},
            extra_link_args=["-fopenmp"],
        )
    else:
        ext = CppExtension(
            "fastft._C",
            sources=cpu_sources,
            define_macros=define_macros,
            extra_compile_args={"cxx": cxx_flags},
            extra_link_args=["-fopenmp"],
        )
    if cpu_sources:
        ext_modules.append(ext)
        cmdclass["build_ext"] = BuildExtension.with_options(
            use_ninja=os.environ.get("FASTFT_NINJA", "1") == "1"
        )

setup(ext_modules=ext_modules, cmdclass=cmdclass)
