"""Triton kernels of fastft, installed as ``fastft.kernels``.

Each op lives in its own module (``cross_entropy``, ``attention``, ``lora`` ...) with, in order:
helpers, ``@triton.jit`` kernels named ``_<op>_..._kernel``, configs, and the launchers
``<op>_forward`` / ``<op>_backward`` that own shape/dtype checks, contiguity and int64 offsets.
Nothing here is imported by ``import fastft``: triton is loaded only when a kernel path is taken,
so ``TRITON_INTERPRET=1`` can still be set late.
"""
