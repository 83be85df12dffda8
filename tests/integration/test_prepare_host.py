# Copyright: kata.runtime contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""scripts/prepare-host.sh, the first step of make test and make demo, on this real host.

It must be idempotent and quick on a prepared host, and the daemons it may have started must
not keep its lock: a libvirtd that inherited the lock's descriptor made every later run wait
forever ("another prepare-host run is in progress").
"""

from __future__ import annotations

import os
import subprocess
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(REPO, 'scripts', 'prepare-host.sh')
LOCK = '/run/lock/kata-runtime-prepare-host.lock'

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason='prepare-host.sh runs as root')


def holders(path):
    """PIDs of the processes that have ``path`` open."""
    out = []
    for pid in filter(str.isdigit, os.listdir('/proc')):
        fd_dir = '/proc/%s/fd' % pid
        try:
            links = [os.readlink(os.path.join(fd_dir, fd)) for fd in os.listdir(fd_dir)]
        except OSError:
            continue
        if path in links:
            out.append(int(pid))
    return out


def test_second_run_is_quick_and_no_daemon_keeps_the_lock():
    for _attempt in range(2):
        started = time.monotonic()
        proc = subprocess.run(['bash', SCRIPT], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              timeout=300, check=False)
        assert proc.returncode == 0, proc.stdout
        assert 'host ready' in proc.stdout
    assert 'waiting for it' not in proc.stdout, proc.stdout
    assert time.monotonic() - started < 30, proc.stdout
    assert holders(LOCK) == [], 'processes holding the prepare-host lock: %s' % holders(LOCK)
