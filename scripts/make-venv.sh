#!/usr/bin/env bash
# make-venv.sh: build or refresh .venv from the distribution's Python (BASE_PYTHON, default
# /usr/bin/python3) with requirements-dev.txt. Cheap when nothing changed: a stamp newer than
# the requirements file and a venv made from the same interpreter mean there is nothing to do.
# VENV_NAME and REQUIREMENTS pick another venv of the repository and its requirements file
# (the lint venv: VENV_NAME=.venv-lint REQUIREMENTS=requirements-lint.txt).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd -P)
base=${BASE_PYTHON:-/usr/bin/python3}
name=${VENV_NAME:-.venv}
venv=$root/$name
stamp=$venv/.kata-deps-stamp
req=${REQUIREMENTS:-requirements-dev.txt}

base_real=$(readlink -f "$base")
[ -x "$base_real" ] || { echo "base Python $base not found" >&2; exit 1; }

# One build at a time per checkout.
exec 9<"$root"
if ! flock -n 9; then
    echo "another run is building the venv; waiting for it"
    flock 9
fi

if [ -x "$venv/bin/python" ]; then
    made_from=$(readlink -f "$("$venv/bin/python" -c 'import sys; print(sys._base_executable)')" || true)
    if [ "$made_from" != "$base_real" ]; then
        echo "existing $name was made from ${made_from:-an unknown interpreter}, not $base_real: rebuilding"
        rm -rf "$venv"
    elif [ "$stamp" -nt "$req" ]; then
        echo "$name is up to date ($("$venv/bin/python" --version), made from $base_real)"
        exit 0
    fi
fi

if [ ! -x "$venv/bin/python" ]; then
    echo "creating $name with $("$base" --version) ($base_real)"
    "$base" -m venv "$venv"
fi
echo "installing $req"
"$venv/bin/python" -m pip install --quiet -r "$req"
"$venv/bin/python" -m pip list 2>/dev/null \
    | grep -Ei '^(ansible-core|pytest|ruff|libvirt-python|molecule|jmespath|pyyaml|ansible-lint|galaxy.importer|antsibull-changelog) ' || true
touch "$stamp"
