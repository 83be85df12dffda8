#!/usr/bin/env bash
# ecosystem.sh CHECK: the Ansible ecosystem's own checks on the collection, with the tools of
# .venv-lint (requirements-lint.txt; `make deps` builds it). Nothing here needs the network.
#
#   changelog  antsibull-changelog lint (fragments, changelogs/changelog.yaml) and CHANGELOG.rst
#              is what `antsibull-changelog generate` makes of changelog.yaml
#   lint       ansible-lint, production profile (.ansible-lint), offline; the collection is
#              found through .collections (scripts/sync-collection.sh)
#   galaxy     ansible-galaxy collection build into tests/output/galaxy, the tarball holds only
#              files git would commit and nothing large, then galaxy-importer imports it offline
#              (tests/galaxy-importer.cfg) and must log no warning or error
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd -P)
venv=$root/.venv-lint
[ -x "$venv/bin/ansible-lint" ] || {
    echo "$venv is missing: run make deps (or make ecosystem)" >&2
    exit 1
}
export PATH="$venv/bin:$PATH"
# The collection is the working tree itself, through the .collections link; no schema
# refresh from the network (`offline: true` in .ansible-lint says the same).
export ANSIBLE_COLLECTIONS_PATH=$root/.collections
export ANSIBLE_LINT_SKIP_SCHEMA_UPDATE=1
export PIP_DISABLE_PIP_VERSION_CHECK=1

check_changelog() {
    antsibull-changelog lint
    antsibull-changelog lint-changelog-yaml changelogs/changelog.yaml
    local generated=$root/tests/output/changelog/CHANGELOG.rst
    mkdir -p "$(dirname "$generated")"
    antsibull-changelog generate --output "$generated" --output-format rst
    if ! diff -u CHANGELOG.rst "$generated"; then
        echo "CHANGELOG.rst is stale: run .venv-lint/bin/antsibull-changelog generate" >&2
        return 1
    fi
    echo "changelog: fragments, changelog.yaml and CHANGELOG.rst are consistent"
}

check_lint() {
    ansible-lint --nocolor
}

check_galaxy() {
    local out=$root/tests/output/galaxy version tarball
    rm -rf "$out"
    mkdir -p "$out"
    version=$(python -c 'import yaml; print(yaml.safe_load(open("galaxy.yml"))["version"])')
    ansible-galaxy collection build --force --output-path "$out" .
    tarball=$out/kata-runtime-$version.tar.gz

    # Only files git would commit (tracked, or new and not ignored), each under 1 MiB: no venv,
    # cache, test output or anything else machine-specific that build_ignore failed to keep out.
    git ls-files --cached --others --exclude-standard >"$out/git-files.txt"
    python - "$tarball" "$out/git-files.txt" <<'PY'
import sys
import tarfile

tarball, listing = sys.argv[1], sys.argv[2]
known = set(open(listing).read().splitlines())
dirs = {p.rsplit('/', i)[0] for p in known for i in range(1, p.count('/') + 1)}
bad, big, total = [], [], 0
with tarfile.open(tarball) as tf:
    members = tf.getmembers()
    for m in members:
        if m.name in ('MANIFEST.json', 'FILES.json'):
            continue
        if (m.isdir() and m.name not in dirs) or (not m.isdir() and m.name not in known):
            bad.append(m.name)
        if m.size > 1024 * 1024:
            big.append('%s (%d bytes)' % (m.name, m.size))
        total += m.size
for name in bad:
    print('not a file of the repository: %s' % name)
for name in big:
    print('larger than 1 MiB: %s' % name)
print('%s: %d members, %.1f KiB unpacked' % (tarball.rsplit('/', 1)[-1], len(members), total / 1024))
sys.exit(1 if bad or big else 0)
PY

    # galaxy-importer writes importer_result.json into its working directory.
    (cd "$out" && GALAXY_IMPORTER_CONFIG=$root/tests/galaxy-importer.cfg \
        python -m galaxy_importer.main "$tarball") 2>&1 | tee "$out/importer.log"
    if grep -Eq '^(WARNING|ERROR|CRITICAL):|Traceback' "$out/importer.log" \
        || ! grep -q 'Importer processing completed successfully' "$out/importer.log"; then
        echo "galaxy-importer: the import logged warnings or errors (above)" >&2
        return 1
    fi
}

case "${1:-}" in
    changelog) check_changelog ;;
    lint) check_lint ;;
    galaxy) check_galaxy ;;
    *) echo "usage: $0 changelog|lint|galaxy" >&2; exit 2 ;;
esac
