#!/usr/bin/env bash
# run-pytest.sh DIR [PYTEST ARGS...]: run one pytest suite the way `make test` wants it.
#  - exit 5 (nothing collected) is a failure: an empty suite must not look green;
#  - a JUnit report goes to tests/output/junit/<suite>.xml;
#  - with KATA_REQUIRE_RUN=1 a suite in which every test was skipped fails too (CI hosts can
#    run everything, so "all skipped" there means the environment is broken).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
export PATH="$PWD/.venv/bin:$PATH"
export PYTHONPATH="$PWD/.collections${PYTHONPATH:+:$PYTHONPATH}"
suite_dir=$1
shift
suite=$(basename "$suite_dir")
report=tests/output/junit/$suite.xml
mkdir -p tests/output/junit

pytest "$suite_dir" --junitxml="$report" "$@"
rc=$?

if [ "$rc" -eq 5 ]; then
    echo "pytest: no tests were collected in $suite_dir (exit 5) - failing: an empty suite is not a pass" >&2
    exit 5
fi
if [ "$rc" -ne 0 ]; then
    exit "$rc"
fi

if [ "${KATA_REQUIRE_RUN:-0}" = "1" ] && [ -f "$report" ]; then
    python3 - "$report" <<'PY' || exit 1
import sys
import xml.etree.ElementTree as ET

root = ET.parse(sys.argv[1]).getroot()
suites = [root] if root.tag == 'testsuite' else list(root.iter('testsuite'))
tests = sum(int(s.get('tests', 0)) for s in suites)
skipped = sum(int(s.get('skipped', 0)) for s in suites)
print('pytest: %d tests, %d skipped' % (tests, skipped))
if tests and skipped == tests:
    sys.exit('pytest: every test in %s was skipped; this host is expected to run them '
             '(set KATA_REQUIRE_RUN=0 to allow it)' % sys.argv[1])
PY
fi
exit 0
