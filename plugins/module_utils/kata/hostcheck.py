# Copyright: kata.runtime contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""kata_check's probes: is this host ready to run sandboxes (read-only, nothing is changed).

``check_host(module, config)`` returns the ``kata_host`` result: KVM and the accelerator
``auto`` picks, the QEMU binary, libvirt (reachable, versions, whether it keeps its QEMU
capabilities cache), the cgroup layout, the guest image files and the state root. Problems
make the host not ready; the capabilities cache is only ever a warning. ``module`` is used for
``get_bin_path`` and ``run_command`` only.
"""

from __future__ import annotations

import os
import platform
import re

from ansible_collections.kata.runtime.plugins.module_utils.kata import caps_cache
from ansible_collections.kata.runtime.plugins.module_utils.kata.cgroups import detect_layout
from ansible_collections.kata.runtime.plugins.module_utils.kata.errors import KataError
from ansible_collections.kata.runtime.plugins.module_utils.kata.guest.buildutil import sha256_file
from ansible_collections.kata.runtime.plugins.module_utils.kata.hypervisor.accel import (
    KVM_DEV,
    choose_accel,
    kvm_status,
)

# The QEMU binary libvirt would use for a guest of the host's architecture.
QEMU_ARCH = {
    'x86_64': 'x86_64',
    'amd64': 'x86_64',
    'aarch64': 'aarch64',
    'arm64': 'aarch64',
    'ppc64le': 'ppc64',
    's390x': 's390x',
}
QEMU_EXTRA_DIRS = ['/usr/libexec']  # RHEL family: /usr/libexec/qemu-kvm


def _version_string(number):
    """libvirt encodes versions as major * 1000000 + minor * 1000 + release."""
    if not number:
        return None
    return '%d.%d.%d' % (number // 1000000, (number // 1000) % 1000, number % 1000)


def check_kvm(problems, requested):
    usable, reason = kvm_status()
    kvm = dict(present=os.path.exists(KVM_DEV), usable=usable, reason=reason)
    try:
        chosen, why = choose_accel(requested)
    except KataError as err:
        chosen, why = None, str(err)
        problems.append(why)
    return kvm, dict(requested=requested, chosen=chosen, reason=why)


def check_qemu(module, problems):
    arch = QEMU_ARCH.get(platform.machine(), platform.machine())
    path = None
    for name in ('qemu-system-%s' % arch, 'qemu-kvm'):
        path = module.get_bin_path(name, opt_dirs=QEMU_EXTRA_DIRS)
        if path:
            break
    version = None
    if path is None:
        problems.append('no QEMU system emulator found (qemu-system-%s; on Debian install '
                        'qemu-system-x86)' % arch)
    else:
        rc, out, err = module.run_command([path, '--version'])
        match = re.search(r'version\s+(\S+)', out or '')
        if rc == 0 and match:
            version = match.group(1)
        else:
            problems.append('%s --version failed (rc=%s): %s' % (path, rc, (err or out).strip()))
    return dict(path=path, version=version)


def check_libvirt(uri, problems, cache_dir=None):
    """Return ``(result, capabilities XML or None, cache snapshot taken before fetching them)``."""
    result = dict(uri=uri, reachable=False, version=None, hypervisor_version=None,
                  client_version=None, error=None)
    caps_xml = before = None
    try:
        import libvirt
    except ImportError:
        result['error'] = 'libvirt-python is not installed on the target'
        problems.append('libvirt-python is not installed on the target (pip install '
                        'libvirt-python, or the python3-libvirt package)')
        return result, caps_xml, before
    result['client_version'] = _version_string(libvirt.getVersion())
    # libvirt prints every error on stderr by default; errors are reported in the result
    libvirt.registerErrorHandler(lambda ctx, err: None, None)
    conn = None
    try:
        conn = libvirt.openReadOnly(uri)
        result['version'] = _version_string(conn.getLibVersion())
        try:
            result['hypervisor_version'] = _version_string(conn.getVersion())
        except libvirt.libvirtError:
            pass  # not every driver reports one
        result['reachable'] = True
        if cache_dir:
            before = caps_cache.cache_files(cache_dir)
            try:
                caps_xml = conn.getCapabilities()
            except libvirt.libvirtError:
                caps_xml = None
    except libvirt.libvirtError as err:
        result['error'] = err.get_error_message() or str(err)
        problems.append('libvirt at %s is not reachable: %s (is libvirtd running? without '
                        'systemd start both libvirtd -d and virtlogd -d)' % (uri, result['error']))
    finally:
        if conn is not None:
            conn.close()
    return result, caps_xml, before


CACHE_KEYS = ('stable', 'reason', 'fix', 'kvm_usable_by_qemu', 'qemu_uid', 'qemu_gid', 'qemu_user',
              'qemu_groups', 'kvm_device', 'cache_file', 'cache_kvm', 'reprobed')
FIX_HINT = ('run the kata.runtime.kata_host role or scripts/prepare-host.sh, which set it as udev '
            'would; it applies from the next start, without restarting libvirtd')


def check_caps_cache(uri, caps_xml, before, emulator, warnings, dev=KVM_DEV, cache_dir=None):
    """Does libvirt keep its QEMU capabilities cache across domain starts (see caps_cache).

    Only ever a warning: sandbox VMMs run as root (their domains carry the DAC label +0:+0), so
    they open /dev/kvm whatever its group; what the device costs is libvirt's re-probe.
    """
    cache_dir = cache_dir or caps_cache.cache_dir_for(uri)
    if cache_dir is None or caps_xml is None:
        out = dict((key, None) for key in CACHE_KEYS)
        out['qemu_groups'] = []
        out['reason'] = ('%s is not a local QEMU driver: not checked' % uri if cache_dir is None
                         else 'libvirt did not answer with its capabilities: not checked')
        return out
    out = caps_cache.check(caps_xml, emulator, dev=dev, cache_dir=cache_dir, before=before)
    if out['stable'] is False:
        warnings.append('%s; fix with: %s (or %s)' % (out['reason'], out['fix'], FIX_HINT))
    return out


def check_cgroups(root, problems):
    layout = detect_layout(root)[0]
    if layout == 'none':
        problems.append('no cgroup file system found under %s' % root)
    return dict(root=root, layout=layout)


def check_boot_file(path, what, problems):
    info = dict(path=path, present=False, sha256=None)
    if os.path.isfile(path) and os.access(path, os.R_OK):
        try:
            info['sha256'] = sha256_file(path)
            info['present'] = True
        except OSError as err:
            problems.append('guest %s %s cannot be read: %s' % (what, path, err.strerror or err))
            return info
    else:
        problems.append('guest %s %s is missing (build it with kata.runtime.kata_guest_image)'
                        % (what, path))
    return info


def check_state_root(path, problems):
    exists = os.path.lexists(path)
    if exists:
        if not os.path.isdir(path):
            problems.append('state root %s exists and is not a directory' % path)
            return dict(path=path, exists=True, writable=False)
        probe = path
    else:
        # nothing is created here: the nearest existing parent decides
        probe = os.path.dirname(path)
        while probe and not os.path.exists(probe):
            parent = os.path.dirname(probe)
            if parent == probe:
                break
            probe = parent
    writable = os.path.isdir(probe) and os.access(probe, os.W_OK | os.X_OK)
    if not writable:
        if exists:
            problems.append('state root %s is not writable' % path)
        else:
            problems.append('state root %s cannot be created: %s is not writable' % (path, probe))
    return dict(path=path, exists=exists, writable=writable)


def check_host(module, config):
    problems = []
    warnings = []
    host = dict(config=dict(path=config.path, exists=os.path.exists(config.path),
                            settings=config.as_dict()))
    host['kvm'], host['accel'] = check_kvm(problems, config.accel)
    host['qemu'] = check_qemu(module, problems)
    uri = config.libvirt_uri
    host['libvirt'], caps_xml, before = check_libvirt(uri, problems, caps_cache.cache_dir_for(uri))
    arch = QEMU_ARCH.get(platform.machine(), platform.machine())
    emulator = (caps_cache.emulator_of(caps_xml, arch) if caps_xml else None) or host['qemu']['path']
    host['qemu_caps_cache'] = check_caps_cache(uri, caps_xml, before, emulator, warnings, dev=KVM_DEV)
    host['cgroups'] = check_cgroups(config.cgroup_root, problems)
    host['image'] = dict(kernel=check_boot_file(config.kernel, 'kernel', problems),
                         initrd=check_boot_file(config.initrd, 'initrd', problems))
    host['state_root'] = check_state_root(config.state_root, problems)
    host['problems'] = problems
    host['warnings'] = warnings
    host['ready'] = not problems
    return host
