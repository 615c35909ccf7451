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

    cxx_flags = ["-O3", "-std=c++17", "-fopenmp"]
    if platform.machine() in ("x86_64", "AMD64") and os.environ.get("FASTFT_NATIVE", "1") == "1":
        # AVX2+FMA lets at::vec::Vectorized use 256-bit lanes; every x86-64 server since 2013 has them.
        cxx_flags += ["-mavx2", "-mfma", "-DCPU_CAPABILITY_AVX2", "-DCPU_CAPABILITY=AVX2"]
    define_macros = []
    if build_cuda:
        define_macros.append(("FASTFT_WITH_CUDA", "1"))
        ext = CUDAExtension(
            "fastft._C",
            sources=cpu_sources + cuda_sources,
            define_macros=define_macros,
            extra_compile_args={"cxx": cxx_flags, "nvcc": ["-O3", "--use_fast_math", "-std=c++17"]},
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
        cmdclass["build_ext"] = BuildExtension.with_options(use_ninja=os.environ.get("FASTFT_NINJA", "1") == "1")

setup(ext_modules=ext_modules, cmdclass=cmdclass)
