#!/usr/bin/env bash
# Do fastft's tests pass on the newest releases of its dependencies? Answers without touching this
# environment: a throw-away venv over it (--system-site-packages) upgrades every requirement of
# pyproject.toml but torch to the newest release its range allows, lists what moved past
# constraints.txt, and runs a smoke subset of the suite there. One summary line at the end:
#   NEWEST: same as constraints.txt | NEWEST: pass (pkg a->b, ...) | NEWEST: FAIL (...), log: PATH
# Exit 0 unless the check itself could not run; a FAIL is information (CI stays on the pins), the fix is
# to make fastft work on the new release, then move the pins: scripts/freeze_constraints.py.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
PY=${PYTHON:-python3}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
LOG=${NEWEST_LOG:-/tmp/fastft-newest.log}
: >"$LOG"
SMOKE=${NEWEST_TESTS:-tests/test_env.py tests/patching/test_family_paths.py tests/lora/test_peft_format.py tests/train/test_trainer.py}

"$PY" -m venv --system-site-packages "$WORK/venv" || exit 2
VPY=$WORK/venv/bin/python
"$PY" -c "import torch; print('torch==' + torch.__version__)" >"$WORK/torch.txt"
mapfile -t REQS < <("$PY" - <<'PYEOF'
import tomllib
p = tomllib.load(open("pyproject.toml", "rb"))["project"]
for r in p["dependencies"] + p["optional-dependencies"]["dev"]:
    if not r.startswith("torch"):
        print(r)
PYEOF
)
if ! "$VPY" -m pip --disable-pip-version-check -q install -c "$WORK/torch.txt" --upgrade "${REQS[@]}" >>"$LOG" 2>&1; then
  echo "NEWEST: the upgrade itself failed, log: $LOG"
  exit 0
fi
MOVED=$("$VPY" - <<'PYEOF'
from importlib import metadata
pins = dict(l.split("==", 1) for l in open("constraints.txt").read().split() if "==" in l)
moved = []
for name, pinned in sorted(pins.items()):
    try:
        now = metadata.version(name)
    except metadata.PackageNotFoundError:
        continue
    if now != pinned:
        moved.append(f"{name} {pinned}->{now}")
print(", ".join(moved))
PYEOF
)
if [ -z "$MOVED" ]; then
  echo "NEWEST: same as constraints.txt (nothing newer to test)"
  exit 0
fi
# shellcheck disable=SC2086 # SMOKE is a list of paths
if FASTFT_LATEST=1 "$VPY" -m pytest -q -x -p no:cacheprovider $SMOKE >>"$LOG" 2>&1; then
  echo "NEWEST: pass on $MOVED"
else
  echo "NEWEST: FAIL on $MOVED; log: $LOG"
fi
