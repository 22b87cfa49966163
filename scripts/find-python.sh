#!/usr/bin/env bash
# Print the path of a Python 3.12 interpreter (the project's Python, as on Databricks Runtime 16/17), or fail.
# Looks at $PYTHON, then python3.12 on PATH, then pyenv's installs (a pyenv shim on PATH may not run).
set -uo pipefail
WANT=3.12
candidates=("${PYTHON:-}" python3.12 python3)
pyenv_root="${PYENV_ROOT:-$HOME/.pyenv}"
for found in "$pyenv_root"/versions/$WANT.*/bin/python$WANT; do candidates+=("$found"); done
for candidate in "${candidates[@]}"; do
  [[ -n "$candidate" ]] || continue
  path=$(command -v "$candidate" 2>/dev/null) || continue
  if [[ "$("$path" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)" == "$WANT" ]]; then
    "$path" -c 'import sys; print(sys.executable)'
    exit 0
  fi
done
echo "no Python $WANT found (tried \$PYTHON, python$WANT, python3, $pyenv_root/versions/$WANT.*): install it" \
     "(pyenv install $WANT, or your distribution's python$WANT with its venv module)" >&2
exit 1
