# Copyright: kata.runtime contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""kvm_status / choose_accel against temporary device and /sys/module trees (and the real
/dev/kvm where the host has one)."""

from __future__ import annotations

import json
import os
import pathlib
import tempfile

import pytest
from ansible_collections.kata.runtime.plugins.module_utils.kata.errors import HypervisorError
from ansible_collections.kata.runtime.plugins.module_utils.kata.hypervisor.accel import (
    choose_accel,
    kvm_status,
)

HOST_KVM = os.path.exists('/dev/kvm') and os.access('/dev/kvm', os.R_OK | os.W_OK)


@pytest.fixture
def sysmod(tmp_path):
    d = tmp_path / 'sys_module'
    (d / 'kvm').mkdir(parents=True)
    return d


@pytest.fixture
def pvm_sysmod(sysmod):
    (sysmod / 'kvm_pvm').mkdir()
    return sysmod


@pytest.fixture
def fake_dev(tmp_path):
    """A regular file: openable read-write, but not a KVM device (the ioctls fail)."""
    dev = tmp_path / 'kvm'
    dev.write_bytes(b'')
    return dev


def test_missing_device(tmp_path, sysmod):
    usable, reason = kvm_status(dev=str(tmp_path / 'nokvm'), sys_module=str(sysmod))
    assert usable is False
    assert 'absent' in reason and 'nokvm' in reason


def test_kvm_pvm_loaded_is_not_usable(fake_dev, pvm_sysmod):
    usable, reason = kvm_status(dev=str(fake_dev), sys_module=str(pvm_sysmod))
    assert usable is False
    assert reason == 'paravirtual-only KVM (kvm_pvm): cannot run a stock guest kernel'


def test_ioctl_failure_is_reported(fake_dev, sysmod):
    usable, reason = kvm_status(dev=str(fake_dev), sys_module=str(sysmod))
    assert usable is False
    assert 'KVM_GET_API_VERSION' in reason and str(fake_dev) in reason


def test_unopenable_device(tmp_path, sysmod):
    usable, reason = kvm_status(dev=str(tmp_path), sys_module=str(sysmod))  # a directory
    assert usable is False
    assert 'cannot open' in reason


@pytest.mark.skipif(os.geteuid() != 0, reason='needs root to drop to another uid')
def test_no_permission(sysmod):
    # a directory the dropped uid can traverse (pytest's tmp_path parents are root-only)
    with tempfile.TemporaryDirectory(prefix='kata-accel-') as d:
        os.chmod(d, 0o755)
        fake_dev = pathlib.Path(d) / 'kvm'
        fake_dev.write_bytes(b'')
        usable, reason = _status_as_nobody(fake_dev, sysmod)
    assert usable is False
    assert 'no permission' in reason


def _status_as_nobody(fake_dev, sysmod):
    fake_dev.chmod(0o600)
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: drop to nobody and look at the root-only device
        try:
            os.close(rfd)
            os.setgid(65534)
            os.setuid(65534)
            os.write(wfd, json.dumps(kvm_status(dev=str(fake_dev), sys_module=str(sysmod))).encode())
        finally:
            os._exit(0)
    os.close(wfd)
    with os.fdopen(rfd) as f:
        usable, reason = json.loads(f.read())
    os.waitpid(pid, 0)
    return usable, reason


@pytest.mark.skipif(not HOST_KVM, reason='this host has no usable /dev/kvm')
def test_real_kvm_without_pvm_is_usable(sysmod):
    usable, reason = kvm_status(sys_module=str(sysmod))
    assert usable is True, reason
    assert choose_accel('auto', sys_module=str(sysmod))[0] == 'kvm'


def test_auto_falls_back_to_tcg_with_reason(tmp_path, sysmod):
    accel, reason = choose_accel('auto', dev=str(tmp_path / 'nokvm'), sys_module=str(sysmod))
    assert accel == 'tcg'
    assert 'absent' in reason


def test_auto_under_pvm_is_tcg(fake_dev, pvm_sysmod):
    accel, reason = choose_accel('auto', dev=str(fake_dev), sys_module=str(pvm_sysmod))
    assert accel == 'tcg'
    assert 'kvm_pvm' in reason


def test_tcg_requested_is_tcg_without_probing(tmp_path):
    assert choose_accel('tcg', dev=str(tmp_path / 'nokvm'))[0] == 'tcg'


def test_kvm_requested_but_unusable_is_refused(fake_dev, pvm_sysmod):
    with pytest.raises(HypervisorError) as exc:
        choose_accel('kvm', dev=str(fake_dev), sys_module=str(pvm_sysmod))
    msg = str(exc.value)
    assert 'paravirtual-only KVM (kvm_pvm)' in msg
    assert 'accel=tcg' in msg


def test_unknown_accel_is_refused():
    with pytest.raises(HypervisorError, match="invalid accel 'xen'"):
        choose_accel('xen')


def test_this_host_defaults():
    """On the real host: whatever it is, auto gives an accel and a reason."""
    accel, reason = choose_accel('auto')
    assert accel in ('kvm', 'tcg') and reason
    if os.path.exists('/sys/module/kvm_pvm'):
        assert accel == 'tcg'
