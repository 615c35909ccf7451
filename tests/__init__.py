"""fastft's test suite (a package, so test modules import shared helpers as ``tests.<module>``)."""

from __future__ import annotations

import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the repository root


def child_env(*paths: str, base: dict[str, str] | None = None, **env: str) -> dict[str, str]:
    """Environment for a test's child Python process: ``paths`` then the repo root first on
    PYTHONPATH (so ``tests.*`` imports and the checked-out fastft win, whatever the cwd), plus ``env``."""
    out = dict(os.environ if base is None else base)
    out["PYTHONPATH"] = os.pathsep.join([*paths, ROOT, *filter(None, [out.get("PYTHONPATH")])])
    out.update(env)
    return out
