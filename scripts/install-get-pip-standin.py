# Copyright: kata.runtime contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Let ``ansible-test sanity --requirements`` bootstrap pip without reaching its CI file host.

ansible-test creates each sanity virtual environment without pip, then runs a ``get-pip``
script that it downloads from a CI file host and caches at
``~/.ansible/test/cache/get_pip_<pip version>.py``. Hosts that reach only a package index
cannot download it. This script writes a small stand-in at that cache path which bootstraps
pip with the standard library's ``ensurepip`` and then installs the pinned pip (and whatever
else ansible-test asked for) from the configured package index.

The pip version is read from the installed ansible-test, so an ansible-core upgrade that pins
another pip gets its own stand-in. Run it with the Python that has ansible-core installed.
"""

from __future__ import annotations

import os
import re
import sys

STANDIN = '''\
"""Stand-in for get-pip.py, written by kata.runtime's scripts/install-get-pip-standin.py.

Bootstraps pip from the standard library (ensurepip) and then installs the requested
packages from the package index configured on this machine.
"""
import ensurepip
import os
import subprocess
import sys

ensurepip.bootstrap()
# ensurepip points PIP_CONFIG_FILE at os.devnull inside this process; that would hide the
# machine's pip configuration (index, CA certificate) from the pip call below.
os.environ.pop('PIP_CONFIG_FILE', None)

args = [a for a in sys.argv[1:] if a not in ('--no-setuptools', '--no-wheel')]
sys.exit(subprocess.call([sys.executable, '-m', 'pip', 'install'] + args))
'''


def pinned_pip_version():
    """Return the pip version the installed ansible-test bootstraps into its venvs."""
    import ansible_test  # noqa: F401 -- located, not used

    source = os.path.join(os.path.dirname(ansible_test.__file__), '_internal', 'python_requirements.py')
    with open(source, encoding='utf-8') as handle:
        text = handle.read()
    match = re.search(r"default_packages\s*=\s*dict\(\s*pip\s*=\s*'([0-9][0-9A-Za-z.]*)'", text)
    if not match:
        raise SystemExit('cannot find the pinned pip version in %s; ansible-test changed its layout' % source)
    return match.group(1)


def main():
    version = pinned_pip_version()
    cache_dir = os.path.expanduser('~/.ansible/test/cache')
    path = os.path.join(cache_dir, 'get_pip_%s.py' % version.replace('.', '_'))

    try:
        with open(path, encoding='utf-8') as handle:
            current = handle.read()
    except FileNotFoundError:
        current = None

    if current == STANDIN:
        print('get-pip stand-in for pip %s: up to date (%s)' % (version, path))
        return 0

    os.makedirs(cache_dir, exist_ok=True)
    tmp = path + '.tmp'
    with open(tmp, 'w', encoding='utf-8') as handle:
        handle.write(STANDIN)
    os.replace(tmp, path)
    print('get-pip stand-in for pip %s: written (%s)' % (version, path))
    return 0


if __name__ == '__main__':
    sys.exit(main())
