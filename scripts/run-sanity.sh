#!/usr/bin/env bash
# run-sanity.sh [ANSIBLE-TEST ARGS...]: ansible-test sanity over the working tree.
# ansible-test needs its physical working directory inside ansible_collections/kata/runtime,
# so this syncs the sanity copy (scripts/sync-collection.sh --sanity) and runs there. Runs from
# the same checkout are serialised with a lock on .collections: two syncs into one copy, or two
# ansible-test runs writing one tests/output, would trip over each other.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd -P)
py_version=${PY_VERSION:-3.11}
export PATH="$root/.venv/bin:$PATH"
mkdir -p .collections

exec 9<.collections
if ! flock -n 9; then
    echo "another sanity run holds the lock on .collections; waiting for it"
    flock 9
fi

scripts/sync-collection.sh --sanity
cd "$root/.collections/sanity/ansible_collections/kata/runtime"
ansible-test sanity --requirements --python "$py_version" --color no "$@"
