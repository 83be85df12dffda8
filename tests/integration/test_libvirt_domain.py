# Copyright: kata.runtime contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""LibvirtHypervisor against the real libvirtd (qemu:///system) booting real guests.

The guest is the distribution kernel (as a PVH vmlinux, via the image builder's helpers)
and a tiny initrd built here: a busybox /init that prints a marker on the serial console,
then either sleeps or powers off (``kata_test.poweroff`` on the kernel command line).
Every domain made here carries a random prefix and is removed at the end.

Environment: KATA_TEST_KERNEL (a vmlinux or vmlinuz to boot instead of the host's or the
distribution package's kernel), KATA_TEST_CACHE (where a downloaded kernel is kept,
default .cache/kernel in the repository).
"""

from __future__ import annotations

import hashlib
import os
import secrets
import shutil
import signal
import statistics
import subprocess
import time

import pytest
from ansible_collections.kata.runtime.plugins.module_utils.kata.errors import HypervisorError
from ansible_collections.kata.runtime.plugins.module_utils.kata.guest.cpio import CpioEntry, write_cpio
from ansible_collections.kata.runtime.plugins.module_utils.kata.guest.kernel import find_host_kernel, package_kernel
from ansible_collections.kata.runtime.plugins.module_utils.kata.guest.vmlinux import extract_vmlinux
from ansible_collections.kata.runtime.plugins.module_utils.kata.hypervisor.accel import choose_accel
from ansible_collections.kata.runtime.plugins.module_utils.kata.hypervisor.libvirt import (
    LibvirtHypervisor,
)

libvirt = pytest.importorskip('libvirt', reason='libvirt-python is not installed')

URI = 'qemu:///system'
MARKER = 'KATA-TEST-GUEST-BOOTED'
BOOT_TIMEOUT = 180  # TCG on a busy 2-core host is slow; a normal boot takes 2-4 s
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
IMAGE_KERNEL = '/var/lib/kata-runtime/image/vmlinux'
# The longest prefix LibvirtHypervisor accepts, so the longest ID gives the longest name.
PREFIX = ('kata-test-%s' % secrets.token_hex(11))[:31] + '-'
LONG_ID = 'L' + 'x+y.z_w-' * 15 + 'abcdefg'  # 128 characters, every allowed punctuation

INIT = """#!/bin/busybox sh
/bin/busybox mount -t proc proc /proc
echo %s
case " $(/bin/busybox cat /proc/cmdline) " in
  *" kata_test.poweroff "*) /bin/busybox poweroff -f ;;
esac
while :; do /bin/busybox sleep 3600; done
""" % MARKER


def ours(hv):
    """hv.list_ours() without the state root (these VMs are defined without one)."""
    return [{k: d[k] for k in ('name', 'sandbox_id', 'state')} for d in hv.list_ours()]


def _daemon_reachable():
    try:
        conn = libvirt.open(URI)
    except libvirt.libvirtError as err:
        return str(err)
    conn.close()
    return None


_UNREACHABLE = _daemon_reachable()
pytestmark = pytest.mark.skipif(
    _UNREACHABLE is not None,
    reason='libvirtd is not reachable at %s (start "virtlogd -d" and "libvirtd -d"): %s'
    % (URI, _UNREACHABLE))


def _kernel_source(cache):
    """A vmlinux or vmlinuz to boot: explicit, the installed image, the host's, or the package's."""
    for path in (os.environ.get('KATA_TEST_KERNEL'), IMAGE_KERNEL):
        if path and os.path.isfile(path):
            return path
    found = find_host_kernel()
    if found:
        return found[0]
    return package_kernel(os.path.join(cache, 'packages'))[0]


@pytest.fixture(scope='module')
def boot_files(tmp_path_factory):
    cache = os.environ.get('KATA_TEST_CACHE') or os.path.join(REPO, '.cache', 'kernel')
    os.makedirs(cache, exist_ok=True)
    src = _kernel_source(cache)
    with open(src, 'rb') as f:
        data = f.read()
    vmlinux = os.path.join(cache, 'vmlinux-%s' % hashlib.sha256(data).hexdigest()[:16])
    if not os.path.isfile(vmlinux):
        elf, dummy = extract_vmlinux(data)
        tmp = vmlinux + '.tmp'
        with open(tmp, 'wb') as f:
            f.write(elf)
        os.replace(tmp, vmlinux)

    busybox = shutil.which('busybox') or '/bin/busybox'
    with open(busybox, 'rb') as f:
        bb = f.read()
    entries = [
        CpioEntry('bin', 'dir', 0o755), CpioEntry('proc', 'dir', 0o755),
        CpioEntry('dev', 'dir', 0o755),
        CpioEntry('dev/console', 'chr', 0o600, rdev=(5, 1)),
        CpioEntry('bin/busybox', 'file', 0o755, bb),
        CpioEntry('init', 'file', 0o755, INIT),
    ]
    initrd = tmp_path_factory.mktemp('initrd') / 'test-initrd.img'
    with open(initrd, 'wb') as f:
        write_cpio(entries, f)
    return vmlinux, str(initrd)


@pytest.fixture(scope='module')
def hv():
    h = LibvirtHypervisor(URI, prefix=PREFIX)
    yield h
    for d in h.list_ours():
        h.destroy(d['name'])
        h.undefine(d['name'])
    h.close()


@pytest.fixture
def vm_for(hv, boot_files, tmp_path):
    kernel, initrd = boot_files
    accel = choose_accel('auto')[0]

    def make(sid, extra=''):
        return {
            'name': hv.domain_name(sid), 'sandbox_id': sid, 'vcpus': 1, 'memory_mb': 256,
            'kernel': kernel, 'initrd': initrd,
            'cmdline': ('console=ttyS0 quiet panic=-1 ' + extra).strip(),
            'accel': accel, 'console_log': str(tmp_path / ('%s.console.log' % sid[:16])),
            'agent_socket': str(tmp_path / ('%s.sock' % sid[:16])), 'shared_dir': str(tmp_path),
        }
    return make


def wait_for_marker(path, timeout=BOOT_TIMEOUT):
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        try:
            with open(path, errors='replace') as f:
                if MARKER in f.read():
                    return time.monotonic() - start
        except FileNotFoundError:
            pass
        time.sleep(0.05)
    with open(path, errors='replace') as f:
        tail = f.read()[-2000:]
    pytest.fail('no %s on the console within %ss; console tail:\n%s' % (MARKER, timeout, tail))


def wait_state(hv, name, wanted, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        st = hv.state(name)
        if st == wanted:
            return st
        time.sleep(0.1)
    return hv.state(name)


def qemu_alive(pid, uuid):
    try:
        with open('/proc/%d/cmdline' % pid, 'rb') as f:
            args = f.read().split(b'\0')
    except OSError:
        return False
    return b'-uuid' in args and uuid.encode() in args


def virsh_names():
    out = subprocess.run(['virsh', '-c', URI, 'list', '--all', '--name'], stdout=subprocess.PIPE,
                         check=True)
    return [n for n in out.stdout.decode().split() if n]


def test_lifecycle_with_the_longest_name(hv, vm_for):
    vm = vm_for(LONG_ID)
    name = vm['name']
    assert len(name) == 32 + 128

    hv.create(vm)
    boot = wait_for_marker(vm['console_log'])
    print('\nboot to console marker: %.2f s (accel %s)' % (boot, vm['accel']))
    assert hv.state(name) == 'running'
    assert hv.is_ours(name)
    assert {'name': name, 'sandbox_id': LONG_ID, 'state': 'running'} in ours(hv)
    assert os.path.exists(vm['agent_socket'])  # qemu bound the agent channel's socket

    uuid = hv.conn().lookupByName(name).UUIDString()
    pid = hv.pid(name)
    assert isinstance(pid, int) and qemu_alive(pid, uuid)
    with open('/proc/%d/status' % pid) as f:
        uid_line = [line for line in f if line.startswith('Uid:')][0]
    assert uid_line.split()[1] == '0'  # the static DAC label runs qemu as root

    assert hv.suspend(name) is True and hv.state(name) == 'paused'
    assert hv.pid(name) == pid
    assert hv.resume(name) is True and hv.state(name) == 'running'

    # no acpid in this guest: the power button is ignored and shutdown() says so in time
    t0 = time.monotonic()
    assert hv.shutdown(name, 2) is False
    assert time.monotonic() - t0 < 10
    assert hv.state(name) == 'running'

    assert hv.destroy(name) is True
    assert hv.state(name) == 'shutoff'
    assert hv.pid(name) is None
    assert hv.destroy(name) is False
    deadline = time.monotonic() + 10
    while qemu_alive(pid, uuid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not qemu_alive(pid, uuid)

    # the definition survives a stop and boots again
    assert name in virsh_names()
    os.unlink(vm['console_log'])
    assert hv.start(name) is True
    wait_for_marker(vm['console_log'])
    assert hv.pid(name) not in (None, pid)

    assert hv.destroy(name) is True
    assert hv.undefine(name) is True
    assert hv.undefine(name) is False
    assert hv.state(name) == 'missing'
    assert not [n for n in virsh_names() if n.startswith(PREFIX)]


def test_destroy_is_fast(hv, vm_for):
    vm = vm_for('speed')
    name = vm['name']
    hv.create(vm)
    times = []
    try:
        for i in range(3):
            wait_for_marker(vm['console_log'])
            t0 = time.monotonic()
            assert hv.destroy(name) is True
            times.append(time.monotonic() - t0)
            assert hv.state(name) == 'shutoff'
            if i < 2:
                os.unlink(vm['console_log'])
                hv.start(name)
    finally:
        hv.destroy(name)
        hv.undefine(name)
    median = statistics.median(times)
    print('\ndestroy seconds: %s, median %.2f' % (', '.join('%.2f' % t for t in times), median))
    # libvirt waits for the VMM to be reaped: instant under a normal init, up to ~2 s where
    # pid 1 reaps orphans lazily; never libvirt's 10 s SIGTERM grace
    assert median < 5


def test_guest_poweroff_stops_the_domain(hv, vm_for):
    """With ACPI, a guest poweroff ends the domain (on_poweroff=destroy) and keeps it defined."""
    vm = vm_for('poweroff', extra='kata_test.poweroff')
    name = vm['name']
    hv.create(vm)
    try:
        wait_for_marker(vm['console_log'])
        assert wait_state(hv, name, 'shutoff', 60) == 'shutoff'
        assert {'name': name, 'sandbox_id': 'poweroff', 'state': 'shutoff'} in ours(hv)
        assert hv.shutdown(name, 1) is True  # already off
    finally:
        hv.destroy(name)
        hv.undefine(name)


def test_start_failure_leaves_nothing_defined(hv, vm_for):
    vm = vm_for('nokernel')
    vm['kernel'] = '/nonexistent/vmlinux'
    with pytest.raises(HypervisorError) as exc:
        hv.create(vm)
    msg = str(exc.value)
    assert vm['name'] in msg and '/nonexistent/vmlinux' in msg
    assert vm['console_log'] in msg  # where to look next
    assert hv.state(vm['name']) == 'missing'
    assert vm['name'] not in virsh_names()


def test_destroy_does_not_wait_for_a_vmm_that_ignores_sigterm(hv, vm_for):
    """A stopped (SIGSTOP) qemu cannot act on SIGTERM: libvirt alone would wait 10 s before
    SIGKILL; destroy() kills it after its 1 s grace instead."""
    vm = vm_for('stuck')
    name = vm['name']
    hv.create(vm)
    try:
        wait_for_marker(vm['console_log'])
        os.kill(hv.pid(name), signal.SIGSTOP)
        t0 = time.monotonic()
        assert hv.destroy(name) is True
        took = time.monotonic() - t0
        print('\ndestroy of a VMM ignoring SIGTERM: %.2f s' % took)
        assert took < 8
        assert hv.state(name) == 'shutoff'  # destroyed on request, not "crashed"
    finally:
        hv.destroy(name)
        hv.undefine(name)


def test_a_vmm_that_dies_reads_crashed(hv, vm_for):
    """A VMM killed behind libvirt's back (OOM killer, an operator) is 'crashed', not 'shutoff',
    so a sandbox whose VM died is reported truthfully; it keeps its definition and boots again."""
    vm = vm_for('crash')
    name = vm['name']
    hv.create(vm)
    try:
        wait_for_marker(vm['console_log'])
        os.kill(hv.pid(name), signal.SIGKILL)
        assert wait_state(hv, name, 'crashed', 30) == 'crashed'
        assert hv.pid(name) is None
        assert {'name': name, 'sandbox_id': 'crash', 'state': 'crashed'} in ours(hv)
        assert hv.destroy(name) is False
        assert hv.start(name) is True  # the console log starts afresh with each boot
        wait_for_marker(vm['console_log'])
        assert hv.state(name) == 'running'
    finally:
        hv.destroy(name)
        hv.undefine(name)
