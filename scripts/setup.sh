#!/usr/bin/env bash
# Build (or reuse) the project's virtual environment in .venv/ with Python 3.10.
# Why 3.10: Lava (lava-nc 0.10.0, lava-dl 0.6.0) declares Python >=3.10,<3.11 and fails at
# import on 3.11. Interpreter search order: $MTDEPLOY_PYTHON, python3.10 on PATH, pyenv's newest
# 3.10.x, then `pyenv install 3.10` where pyenv exists. Idempotent: re-installs only when
# requirements.lock or pyproject.toml changed.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

is_py310() { "$1" -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 10) else 1)' >/dev/null 2>&1; }

find_python() {
    if [[ -n "${MTDEPLOY_PYTHON:-}" ]]; then
        is_py310 "$MTDEPLOY_PYTHON" && { echo "$MTDEPLOY_PYTHON"; return; }
        echo "setup: MTDEPLOY_PYTHON=$MTDEPLOY_PYTHON is not a Python 3.10" >&2; return 1
    fi
    local cand
    for cand in python3.10 "$(command -v python3 || true)"; do
        [[ -n "$cand" ]] && is_py310 "$cand" && { command -v "$cand"; return; }
    done
    if command -v pyenv >/dev/null 2>&1; then
        local proot; proot="$(pyenv root)"
        cand="$(ls -d "$proot"/versions/3.10.*/bin/python3.10 2>/dev/null | sort -V | tail -n 1 || true)"
        if [[ -z "$cand" ]]; then
            echo "setup: no Python 3.10 under pyenv; running 'pyenv install 3.10'" >&2
            pyenv install -s 3.10 >&2
            cand="$(ls -d "$proot"/versions/3.10.*/bin/python3.10 2>/dev/null | sort -V | tail -n 1 || true)"
        fi
        [[ -n "$cand" ]] && is_py310 "$cand" && { echo "$cand"; return; }
    fi
    echo "setup: Python 3.10 not found. Install it (e.g. 'pyenv install 3.10') or set MTDEPLOY_PYTHON." >&2
    return 1
}

stamp_file=.venv/.mtdeploy-setup-stamp
want_stamp="$(cat requirements.lock pyproject.toml | sha256sum | cut -d' ' -f1)"
if [[ -x .venv/bin/python ]] && is_py310 .venv/bin/python && [[ -f "$stamp_file" ]] \
        && [[ "$(cat "$stamp_file")" == "$want_stamp" ]]; then
    exit 0
fi

if ! { [[ -x .venv/bin/python ]] && is_py310 .venv/bin/python; }; then
    py="$(find_python)"
    echo "setup: creating .venv with $py ($("$py" --version 2>&1))" >&2
    rm -rf .venv
    "$py" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade "pip<25" >&2
echo "setup: installing pinned dependencies (torch, Lava; a few GB the first time)" >&2
.venv/bin/python -m pip install --quiet --progress-bar off -r requirements.lock >&2
.venv/bin/python -m pip install --quiet --no-deps -e . >&2
echo "$want_stamp" > "$stamp_file"
echo "setup: .venv ready" >&2
