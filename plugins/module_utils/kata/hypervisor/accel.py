# Copyright: kata.runtime contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Can KVM run a stock guest kernel on this host, and which accelerator to use.

``kvm_status`` answers with a reason a human can act on; ``choose_accel`` turns the
``accel`` option (``auto`` | ``kvm`` | ``tcg``) into the accelerator a domain is built for.
Paths are parameters so tests can point them at temporary directories.
"""

from __future__ import annotations

import errno
import fcntl
import os

from ansible_collections.kata.runtime.plugins.module_utils.kata.errors import HypervisorError

KVM_DEV = '/dev/kvm'
SYS_MODULE = '/sys/module'

# _IO(KVMIO=0xAE, nr): no argument, no direction bits
KVM_GET_API_VERSION = 0xAE00
KVM_CREATE_VM = 0xAE01
KVM_API_VERSION = 12

# Host modules that provide a KVM which can only run paravirtual (PVM-aware) guests: a stock
# distribution kernel hangs right after the firmware under it.
PARAVIRT_ONLY_MODULES = ('kvm_pvm',)

ACCELS = ('auto', 'kvm', 'tcg')


def kvm_status(dev=KVM_DEV, sys_module=SYS_MODULE):
    """Return ``(usable, reason)``: can this host run a stock guest kernel under KVM.

    ``reason`` says why not (absent, no permission, the ioctl failed, paravirtual-only KVM)
    or, when usable, what was checked.
    """
    try:
        os.stat(dev)
        fd = os.open(dev, os.O_RDWR | os.O_CLOEXEC)
    except OSError as err:
        if err.errno == errno.ENOENT:
            return False, '%s is absent (no KVM: the CPU lacks virtualization extensions, they ' \
                'are disabled, or the kvm module is not loaded)' % dev
        if err.errno in (errno.EACCES, errno.EPERM):
            return False, 'no permission to open %s read-write (%s); run as root or join the ' \
                'kvm group' % (dev, err.strerror)
        return False, 'cannot open %s: %s' % (dev, err.strerror)
    try:
        # before the ioctls: under such a module they succeed, yet a stock kernel hangs
        for module in PARAVIRT_ONLY_MODULES:
            if os.path.exists(os.path.join(sys_module, module)):
                return False, 'paravirtual-only KVM (%s): cannot run a stock guest kernel' % module
        try:
            version = fcntl.ioctl(fd, KVM_GET_API_VERSION)
        except OSError as err:
            return False, 'KVM_GET_API_VERSION on %s failed: %s' % (dev, err.strerror)
        if version != KVM_API_VERSION:
            return False, 'KVM API version %s on %s, expected %s' % (version, dev, KVM_API_VERSION)
        try:
            vm_fd = fcntl.ioctl(fd, KVM_CREATE_VM, 0)
        except OSError as err:
            return False, 'KVM_CREATE_VM on %s failed: %s' % (dev, err.strerror)
        os.close(vm_fd)
    finally:
        os.close(fd)
    return True, '%s is usable (KVM_CREATE_VM succeeded)' % dev


def choose_accel(requested='auto', dev=KVM_DEV, sys_module=SYS_MODULE):
    """Return ``(accel, reason)`` with accel ``'kvm'`` or ``'tcg'`` for the requested mode.

    ``auto`` picks kvm when usable, else tcg (software emulation) with the reason;
    ``kvm`` where KVM is unusable raises HypervisorError saying why and suggesting tcg.
    """
    if requested not in ACCELS:
        raise HypervisorError('invalid accel %r: expected one of %s' % (requested, ', '.join(ACCELS)))
    if requested == 'tcg':
        return 'tcg', 'tcg requested'
    usable, why = kvm_status(dev=dev, sys_module=sys_module)
    if usable:
        return 'kvm', why
    if requested == 'kvm':
        raise HypervisorError(
            'accel=kvm requested but KVM cannot run a stock guest kernel on this host: %s; '
            'use accel=tcg (software emulation, slower) or accel=auto' % why)
    return 'tcg', 'KVM not usable, using tcg (software emulation): %s' % why
