"""Triton kernels of fastft, installed as ``fastft.kernels``.

Each op lives in its own module (``cross_entropy``, ``attention``, ``lora`` ...) with, in order:
helpers, ``@triton.jit`` kernels named ``_<op>_..._kernel``, configs, and the launchers
``<op>_forward`` / ``<op>_backward`` that own shape/dtype checks, contiguity and int64 offsets.
Nothing here is imported by ``import fastft``: triton is loaded only when a kernel path is taken,
so ``TRITON_INTERPRET=1`` can still be set late.
"""

if __name__ != "fastft.kernels":  # pragma: no cover - exercised in a subprocess by tests/test_env.py
    # Imported as a top-level ``kernels``: the repo root is on sys.path (``python -m pytest`` or a script
    # run from the checkout), so this folder shadows Hugging Face's ``kernels`` package, which
    # transformers >= 5.25 imports. Hand the import over to the next ``kernels`` on sys.path; the import
    # system returns what sys.modules holds afterwards.
    import os as _os
    import sys as _sys
    from importlib.machinery import PathFinder as _PathFinder
    from importlib.util import module_from_spec as _module_from_spec

    _root = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))
    _path = [p for p in _sys.path if _os.path.abspath(p or _os.curdir) != _root]
    _spec = _PathFinder.find_spec(__name__, _path)
    if _spec is not None and _spec.loader is not None:
        _module = _module_from_spec(_spec)
        _sys.modules[__name__] = _module
        _spec.loader.exec_module(_module)
    else:
        # None installed: look like the empty namespace package that transformers' availability check
        # recognises as a shadow on sys.path (no __file__, no __version__), not like a real install.
        __file__ = None  # noqa: A001
