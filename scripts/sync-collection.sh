#!/usr/bin/env bash
# Lay the repository out the way Ansible and ansible-test need to find it as kata.runtime.
#
#   .collections/ansible_collections/kata/runtime  -> symlink to the repository root.
#       The collection path for ansible-playbook (ANSIBLE_COLLECTIONS_PATH=.collections) and
#       pytest (PYTHONPATH=.collections); edits are live.
#
#   .collections/sanity/ansible_collections/kata/runtime  (with --sanity)
#       A real copy for ansible-test, which resolves the physical working directory and insists
#       on being inside ansible_collections/<namespace>/<name>. Synced (copy + delete of what
#       disappeared) from the files git knows about (tracked + untracked-but-not-ignored), so it mirrors the
#       working tree. The copy gets its own empty git repository: otherwise ansible-test would
#       walk up to this repository's .git, ask git for the files under an ignored directory and
#       find none.
set -euo pipefail

cd "$(dirname "$0")/.."
root=$(pwd -P)

link_dir=.collections/ansible_collections/kata
mkdir -p "$link_dir"
if [ "$(readlink "$link_dir/runtime" 2>/dev/null || true)" != "../../.." ]; then
    if [ -e "$link_dir/runtime" ] && [ ! -L "$link_dir/runtime" ]; then
        rm -rf "${link_dir:?}/runtime"
    fi
    # -n: replace a symlink in place (another run may have made it meanwhile)
    ln -sfn ../../.. "$link_dir/runtime"
    echo "collection path: $link_dir/runtime -> repository root"
fi

if [ "${1:-}" = "--sanity" ]; then
    copy=.collections/sanity/ansible_collections/kata/runtime
    mkdir -p "$copy"
    list=$(mktemp)
    trap 'rm -f "$list"' EXIT
    # files git knows about that exist in the working tree (a deleted tracked file is skipped)
    git -C "$root" ls-files -z --cached --others --exclude-standard \
        | while IFS= read -r -d '' f; do
            if [ -e "$f" ] || [ -L "$f" ]; then printf '%s\0' "$f"; fi
        done | sort -zu >"$list"
    if [ -s "$list" ]; then
        xargs -0 cp -a --parents -t "$copy/" <"$list"
    fi
    # drop what is no longer in the list (like rsync --delete)
    (cd "$copy" && find . -path ./.git -prune -o -path ./tests/output -prune -o \( -type f -o -type l \) -printf '%P\0') \
        | sort -z | comm -z -23 - "$list" \
        | while IFS= read -r -d '' f; do rm -f "$copy/$f"; done
    find "$copy" -path "$copy/.git" -prune -o -type d -empty -delete 2>/dev/null || true
    if [ ! -d "$copy/.git" ]; then
        git -C "$copy" init -q
    fi
    echo "sanity copy: $copy ($(git -C "$copy" ls-files --others --exclude-standard | wc -l) files)"
fi
