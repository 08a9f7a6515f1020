# Sourced by the other scripts: make .venv with cm-gateway and its dependencies,
# re-installing only when pyproject.toml or constraints.txt changed since the last install.
# constraints.txt holds every package at the version CI passed with: a release cannot break it.
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
EXTRAS="${CM_GATEWAY_EXTRAS:-}"
HASH="$(cat pyproject.toml constraints.txt | sha256sum | cut -d' ' -f1)"
stamp() { echo "$VENV/.cm-gateway-installed${1:+-$1}"; }
installed() { [ -f "$(stamp "$1")" ] && [ "$(cat "$(stamp "$1")")" = "$HASH" ]; }
# The dev install is a superset: `serve` after `test` installs nothing more.
if ! installed "$EXTRAS" && ! installed dev; then
  echo "cm-gateway: installing Python dependencies into .venv ..." >&2
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check -c constraints.txt -e ".${EXTRAS:+[$EXTRAS]}" >&2
  echo "$HASH" > "$(stamp "$EXTRAS")"
fi
export PATH="$VENV/bin:$PATH"
