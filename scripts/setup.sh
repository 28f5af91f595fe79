#!/usr/bin/env bash
# Create .venv and install the project into it. Idempotent: re-running is a no-op
# unless pyproject.toml changed. torch goes in first, pinned: torch==2.13.0 is a
# local CPU build on these machines, while a bare `torch` may pull a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
EXTRAS=${EXTRAS:-test}

stamp="$VENV/.setup-stamp"
want="$(sha256sum pyproject.toml | cut -d' ' -f1) $TORCH_SPEC $EXTRAS"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi

echo "==> creating virtual environment in $VENV"
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip 2>&1 | grep -v '^WARNING: Location' || true
echo "==> installing $TORCH_SPEC (first, so nothing pulls a CUDA build)"
"$VENV/bin/python" -m pip install -q "$TORCH_SPEC" numpy 2>&1 | grep -v '^WARNING: Location' || true
"$VENV/bin/python" -c 'import torch' # fail here, clearly, if torch did not install
echo "==> installing the project (.[${EXTRAS}])"
"$VENV/bin/python" -m pip install -q -e ".[${EXTRAS}]" 2>&1 | grep -v '^WARNING: Location' || true
"$VENV/bin/python" -c 'import hip, flows, tasks'
echo "$want" > "$stamp"
echo "==> environment ready: $VENV"
