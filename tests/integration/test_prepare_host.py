# Copyright: kata.runtime contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""scripts/prepare-host.sh, the first step of make test and make demo, on this real host.

It must be idempotent and quick on a prepared host, and the daemons it may have started must
not keep its lock: a libvirtd that inherited the lock's descriptor made every later run wait
forever ("another prepare-host run is in progress").

After it, libvirt must keep its QEMU capabilities cache from one sandbox start to the next: on
a fresh host (no udev, /dev/kvm crw------- root root) it probed QEMU again on every start,
~10 s per sandbox. A re-probe rewrites the cache file (new inode and mtime), which is what the
test watches; how long a start takes is benchmarks/boot.py's to report.
"""

from __future__ import annotations

import grp
import os
import stat
import subprocess
import time

import pytest
from ansible_collections.kata.runtime.plugins.module_utils.kata.caps_cache import SYSTEM_CACHE_DIR

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(REPO, 'scripts', 'prepare-host.sh')
LOCK = '/run/lock/kata-runtime-prepare-host.lock'
KVM_DEV = '/dev/kvm'

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


def prepare_host():
    proc = subprocess.run(['bash', SCRIPT], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout
    assert 'host ready' in proc.stdout
    return proc


def test_second_run_is_quick_and_no_daemon_keeps_the_lock():
    for _attempt in range(2):
        started = time.monotonic()
        proc = prepare_host()
    assert 'waiting for it' not in proc.stdout, proc.stdout
    assert time.monotonic() - started < 30, proc.stdout
    assert holders(LOCK) == [], 'processes holding the prepare-host lock: %s' % holders(LOCK)


def caps_cache_files():
    """{file: (inode, mtime_ns, size)} of libvirt's QEMU capabilities cache: a re-probe rewrites
    a file through a new one renamed over it, so both the inode and the mtime change."""
    out = {}
    for name in sorted(os.listdir(SYSTEM_CACHE_DIR)):
        st = os.stat(os.path.join(SYSTEM_CACHE_DIR, name))
        out[name] = (st.st_ino, st.st_mtime_ns, st.st_size)
    return out


def kvm_device():
    try:
        st = os.stat(KVM_DEV)
    except FileNotFoundError:
        return None
    return '%s %s:%s' % (stat.filemode(st.st_mode), st.st_uid, grp.getgrgid(st.st_gid).gr_name)


def test_prepared_host_keeps_libvirts_capabilities_cache_between_starts(kata):
    prepare_host()
    if os.path.exists(KVM_DEV):
        st = os.stat(KVM_DEV)
        assert stat.S_ISCHR(st.st_mode)
        assert (st.st_uid, grp.getgrgid(st.st_gid).gr_name) == (0, 'kvm'), kvm_device()
        assert st.st_mode & 0o060 == 0o060, kvm_device()
    first = kata.playbook([{'name': 'first start', 'kata.runtime.kata_sandbox': {'name': 'caps-1'}}])
    first.ok('first start')
    after_first = caps_cache_files()
    assert after_first, 'libvirt has no QEMU capabilities cache in %s after a start' % SYSTEM_CACHE_DIR
    second = kata.playbook([
        {'name': 'second start', 'kata.runtime.kata_sandbox': {'name': 'caps-2'}},
        {'name': 'check', 'kata.runtime.kata_check': {}},
    ])
    second.ok('second start')
    after_second = caps_cache_files()
    verdict = second.ok('check')['kata_host']['qemu_caps_cache']
    changed = sorted(n for n in set(after_first) | set(after_second) if after_first.get(n) != after_second.get(n))
    assert not changed, ('libvirt probed QEMU again between two sandbox starts (rewrote %s); /dev/kvm is %s; '
                         'kata_check: %s' % (', '.join(changed), kvm_device(), verdict['reason']))
    # kata_check agrees, and fetching libvirt's capabilities did not re-probe either
    assert verdict['stable'] is not False, verdict
    assert verdict['reprobed'] is False, verdict
