#!/usr/bin/env bash
# Local development stack (Prefect server + work pools + worker, MLflow, SeaweedFS S3),
# all bound to 127.0.0.1. Usage: infra/stack.sh start|stop|status [SERVICE...] | env
# The logic lives in infra/stack.py; it needs only the project's virtual environment
# (HIP_VENV, default <repo>/.venv). See infra/README.md.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${HIP_VENV:-$repo/.venv}"
if [ ! -x "$venv/bin/python" ]; then
  echo "error: no virtual environment at $venv (run \`make setup\` or set HIP_VENV)" >&2
  exit 1
fi
exec "$venv/bin/python" "$repo/infra/stack.py" "$@"
