# Sourced by the other scripts: make .venv with cm-gateway and its dependencies,
# re-installing only when pyproject.toml changed since the last install.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-python3}"
if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "cm-gateway needs Python >= 3.11 (found: $("$PY" --version 2>&1))" >&2
  exit 1
fi
VENV="$ROOT/.venv"
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
STAMP="$VENV/.cm-gateway-installed"
WANT="$(cat pyproject.toml | sha256sum | cut -d' ' -f1)-${CM_GATEWAY_EXTRAS:-}"
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$WANT" ]; then
  echo "cm-gateway: installing Python dependencies into .venv ..." >&2
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip >&2
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e ".${CM_GATEWAY_EXTRAS:+[$CM_GATEWAY_EXTRAS]}" >&2
  echo "$WANT" > "$STAMP"
fi
export PATH="$VENV/bin:$PATH"
