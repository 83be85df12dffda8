# Copyright: kata.runtime contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Does libvirt keep its QEMU capabilities cache from one domain start to the next?

libvirt probes each QEMU binary once (about 1,200 QMP commands, seconds under TCG load) and
keeps the result in memory and in ``/var/cache/libvirt/qemu/capabilities/<hash>.xml``. Before
every use (each define, start, capabilities request) it checks that the cached probe still
fits the host. One of those checks is KVM: the probe records whether QEMU got KVM, and
libvirt compares that with whether ``/dev/kvm`` is readable and writable by the user and
groups it runs QEMU as. The probing QEMU is allowed to override file permissions, so it gets
KVM even from a ``crw------- root root`` device; the check, done as the QEMU user, then says
"not usable". Where the two disagree libvirt logs "KVM was enabled when probing '<binary>',
but it is not available now", discards the cache and probes again, and the new probe records
KVM once more: every sandbox start pays the probe. That is a fresh host on which udev never
gave ``/dev/kvm`` its usual ``root:kvm 0660``. The opposite disagreement (the QEMU user may
open ``/dev/kvm`` but KVM does not work) re-probes on every start too.

``assess`` decides from plain inputs (a stat result, ids, two booleans) so tests can feed it
temporary files; ``check`` gathers those inputs on the host. Nothing here changes anything.
"""

from __future__ import annotations

import errno
import fcntl
import grp
import os
import pwd
import re
import stat
import struct
import xml.etree.ElementTree as ET
from urllib.parse import urlsplit

from ansible_collections.kata.runtime.plugins.module_utils.kata.hypervisor.accel import KVM_CREATE_VM, KVM_DEV

SYSTEM_CACHE_DIR = '/var/cache/libvirt/qemu/capabilities'
KVM_GROUP = 'kvm'

# POSIX ACL xattr (linux/posix_acl_xattr.h): a 4-byte version, then 8-byte entries
ACL_XATTR = 'system.posix_acl_access'
ACL_USER_OBJ, ACL_USER, ACL_GROUP_OBJ, ACL_GROUP, ACL_MASK, ACL_OTHER = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20
_RW = 0o6


# ---------------------------------------------------------------------------------------------
# who libvirt runs QEMU as

def _resolve(text, by_name, attr):
    """``+64055`` (a number) or ``libvirt-qemu`` (a name) -> the number; None if unknown."""
    text = text.strip()
    if text.startswith('+') and text[1:].isdigit():
        return int(text[1:])
    if text.isdigit():
        return int(text)
    try:
        return getattr(by_name(text), attr)
    except KeyError:
        return None


def qemu_identity(caps_xml):
    """``(uid, gid)`` libvirt runs QEMU processes as, from the DAC security model of its host
    capabilities (``<baselabel type='kvm'>+64055:+64055</baselabel>``); None when it names none.
    """
    try:
        root = ET.fromstring(caps_xml)
    except ET.ParseError:
        return None
    for model in root.iter('secmodel'):
        if (model.findtext('model') or '').strip() != 'dac':
            continue
        labels = dict((label.get('type'), label.text or '') for label in model.findall('baselabel'))
        for virt_type in ('kvm', 'qemu'):
            label = labels.get(virt_type, '')
            if ':' not in label:
                continue
            user, group = label.split(':', 1)
            uid = _resolve(user, pwd.getpwnam, 'pw_uid')
            gid = _resolve(group, grp.getgrnam, 'gr_gid')
            if uid is not None and gid is not None:
                return uid, gid
    return None


def emulator_of(caps_xml, arch):
    """The QEMU binary libvirt uses for guests of ``arch`` (``x86_64``); None when it lists none."""
    try:
        root = ET.fromstring(caps_xml)
    except ET.ParseError:
        return None
    for guest in root.findall('guest'):
        node = guest.find('arch')
        if node is not None and node.get('name') == arch:
            return (node.findtext('emulator') or '').strip() or None
    return None


def groups_of(uid, gid):
    """The groups libvirt gives a process of ``uid`` running with ``gid``: as its
    virGetGroupList, the user's groups from the user database (its primary group in
    /etc/passwd and every group listing it), plus ``gid``. On Debian libvirt-qemu's primary
    group is kvm while libvirt runs QEMU with the group libvirt-qemu: both count."""
    try:
        entry = pwd.getpwuid(uid)
    except KeyError:
        return [gid]
    try:
        return sorted(set(os.getgrouplist(entry.pw_name, entry.pw_gid)) | set([gid]))
    except OSError:
        return sorted(set([entry.pw_gid, gid]))


def _name(lookup, number, attr):
    try:
        return getattr(lookup(number), attr)
    except KeyError:
        return str(number)


def user_name(uid):
    return _name(pwd.getpwuid, uid, 'pw_name')


def group_name(gid):
    return _name(grp.getgrgid, gid, 'gr_name')


# ---------------------------------------------------------------------------------------------
# can that user open the device read-write

def parse_acl(blob):
    """A POSIX access ACL xattr -> [(tag, perm, id)]; None when it cannot be parsed."""
    if len(blob) < 4 or (len(blob) - 4) % 8:
        return None
    return [struct.unpack('<HHI', blob[i:i + 8]) for i in range(4, len(blob), 8)]


def read_acl(path):
    """The access ACL entries of ``path``; None when it has none (or they cannot be read)."""
    try:
        blob = os.getxattr(path, ACL_XATTR)
    except (OSError, AttributeError):
        return None
    return parse_acl(blob)


def can_read_write(st, uid, groups, acl=None):
    """Whether a process of ``uid`` with ``groups`` and no capabilities may open the file of
    stat result ``st`` read-write: the kernel's owner / group / other rule on the mode bits,
    or, with an access ACL (``acl`` from ``read_acl``), the ACL rule. uid 0 always may (libvirt
    checks as root then)."""
    if uid == 0:
        return True
    if acl:
        return _acl_allows(acl, st, uid, groups, _RW)
    mode = st.st_mode
    if st.st_uid == uid:
        bits = mode >> 6
    elif st.st_gid in groups:
        bits = mode >> 3
    else:
        bits = mode
    return bits & _RW == _RW


def _acl_allows(acl, st, uid, groups, want):
    mask = 0o7
    for tag, perm, _qualifier in acl:
        if tag == ACL_MASK:
            mask = perm
    if st.st_uid == uid:
        return all(perm & want == want for tag, perm, _q in acl if tag == ACL_USER_OBJ)
    named = [perm for tag, perm, qualifier in acl if tag == ACL_USER and qualifier == uid]
    if named:
        return named[0] & mask & want == want
    matching = [perm for tag, perm, qualifier in acl
                if (tag == ACL_GROUP_OBJ and st.st_gid in groups) or (tag == ACL_GROUP and qualifier in groups)]
    if matching:
        return any(perm & mask & want == want for perm in matching)
    return any(perm & want == want for tag, perm, _q in acl if tag == ACL_OTHER)


def probe_gets_kvm(dev=KVM_DEV):
    """Whether libvirt's probing QEMU (which may override file permissions) would get KVM from
    ``dev``: True when a VM can be created, False when the device is absent or refuses, None
    when this process may not open it and so cannot tell."""
    try:
        fd = os.open(dev, os.O_RDWR | os.O_CLOEXEC)
    except OSError as err:
        if err.errno == errno.ENOENT:
            return False
        if err.errno in (errno.EACCES, errno.EPERM):
            return None
        return False
    try:
        try:
            vm_fd = fcntl.ioctl(fd, KVM_CREATE_VM, 0)
        except OSError:
            return False
        os.close(vm_fd)
        return True
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------------------------
# the cache itself

_EMULATOR = re.compile(rb'<emulator>([^<]*)</emulator>')
_KVM_FLAG = re.compile(rb"<flag name=['\"]kvm['\"]/>")


def cache_files(cache_dir=SYSTEM_CACHE_DIR):
    """``{path: (mtime_ns, size)}`` of the cache files; None when the directory cannot be listed."""
    try:
        names = os.listdir(cache_dir)
    except OSError:
        return None
    out = {}
    for name in names:
        if name.endswith('.xml'):
            path = os.path.join(cache_dir, name)
            try:
                st = os.stat(path)
            except OSError:
                continue
            out[path] = (st.st_mtime_ns, st.st_size)
    return out


def cached_probe(emulator, cache_dir=SYSTEM_CACHE_DIR):
    """``(path, kvm)`` of libvirt's cached probe of ``emulator``: ``kvm`` is whether that probe
    got KVM. ``(None, None)`` when there is none or it cannot be read (the files are root's)."""
    try:
        names = sorted(os.listdir(cache_dir))
    except OSError:
        return None, None
    for name in names:
        if not name.endswith('.xml'):
            continue
        path = os.path.join(cache_dir, name)
        try:
            with open(path, 'rb') as handle:
                data = handle.read()
        except OSError:
            continue
        match = _EMULATOR.search(data)
        if match and match.group(1).decode('utf-8', 'replace').strip() == emulator:
            return path, _KVM_FLAG.search(data) is not None
    return None, None


def cache_dir_for(uri):
    """The capabilities cache directory of a local QEMU driver URI; None for another driver or
    a remote host (checking this host's /dev/kvm would say nothing about it)."""
    parts = urlsplit(uri)
    if parts.scheme.split('+')[0] != 'qemu':
        return None
    if parts.hostname not in (None, '', 'localhost'):
        return None
    if parts.path.rstrip('/') == '/session':
        base = os.environ.get('XDG_CACHE_HOME') or os.path.expanduser('~/.cache')
        return os.path.join(base, 'libvirt', 'qemu', 'capabilities')
    return SYSTEM_CACHE_DIR


# ---------------------------------------------------------------------------------------------
# the verdict

def fix_commands(dev, uid, gid, groups):
    """What an admin runs so that the QEMU user can open ``dev`` the way udev sets it up."""
    try:
        kvm_gid = grp.getgrnam(KVM_GROUP).gr_gid
    except KeyError:
        kvm_gid = None
    if kvm_gid is not None and kvm_gid in groups:
        return 'chgrp %s %s && chmod 0660 %s' % (KVM_GROUP, dev, dev)
    if kvm_gid is not None:
        return ('chgrp %s %s && chmod 0660 %s, and add %s to the %s group (usermod -a -G %s %s), then '
                'restart libvirtd' % (KVM_GROUP, dev, dev, user_name(uid), KVM_GROUP, KVM_GROUP, user_name(uid)))
    return 'chgrp %s %s && chmod 0660 %s (the group libvirt runs QEMU with)' % (group_name(gid), dev, dev)


def describe_device(dev, st):
    if st is None:
        return dict(path=dev, present=False, mode=None, owner=None, group=None)
    return dict(path=dev, present=True, mode=stat.filemode(st.st_mode),
                owner=user_name(st.st_uid), group=group_name(st.st_gid))


def assess(dev, st, identity, probe_kvm, cache_kvm=None, acl=None, groups=None):
    """The verdict from plain inputs.

    ``st``: stat result of ``dev`` (None when absent); ``identity``: ``(uid, gid)`` of libvirt's
    QEMU (None when unknown); ``probe_kvm``: whether a probe gets KVM (None when unknown; the
    cached probe's ``cache_kvm`` stands in then); ``groups``: the QEMU user's groups (looked up
    when None). Returns a dict with ``stable`` (True, False, or None when it cannot be told),
    ``reason``, ``kvm_usable_by_qemu`` and ``fix`` (a command line, or None).
    """
    out = dict(stable=None, reason='', kvm_usable_by_qemu=None, fix=None)
    if identity is None:
        out['reason'] = 'libvirt names no user it runs QEMU as (no DAC security model): cannot tell'
        return out
    uid, gid = identity
    if groups is None:
        groups = groups_of(uid, gid)
    who = 'the user libvirt runs QEMU as (%s, uid %d, groups %s)' % (
        user_name(uid), uid, ', '.join(group_name(g) for g in groups))
    # like libvirt: absent means not usable; otherwise only access counts, not the file type
    usable = False if st is None else can_read_write(st, uid, groups, acl)
    out['kvm_usable_by_qemu'] = usable
    seen = probe_kvm if probe_kvm is not None else cache_kvm
    if seen is None:
        out['reason'] = 'cannot tell whether a QEMU probe gets KVM here (run as root to check %s)' % dev
        return out
    shown = '%s %s:%s' % (stat.filemode(st.st_mode), user_name(st.st_uid), group_name(st.st_gid)) if st else 'absent'
    if seen == usable:
        out['stable'] = True
        if st is None:
            out['reason'] = '%s is absent: libvirt probes QEMU without KVM and keeps the result' % dev
        elif usable:
            out['reason'] = '%s (%s) is readable and writable by %s: the cached probe stays valid' % (dev, shown, who)
        else:
            out['reason'] = 'KVM does not work through %s, for the probe nor for %s: the cached probe stays valid' % (
                dev, who)
        return out
    out['stable'] = False
    if seen:
        out['reason'] = (
            "libvirt discards its QEMU capabilities cache and probes QEMU again on every domain start "
            "(its debug log: \"KVM was enabled when probing '<qemu binary>', but it is not available now\"), "
            "seconds per sandbox: %s is %s, which %s cannot open read-write, while libvirt's probe "
            "(allowed to override file permissions) gets KVM" % (dev, shown, who))
        out['fix'] = fix_commands(dev, uid, gid, groups)
    else:
        out['reason'] = (
            "libvirt discards its QEMU capabilities cache and probes QEMU again on every domain start "
            "(its debug log: \"KVM was not enabled when probing '<qemu binary>', but it should be usable now\"), "
            "seconds per sandbox: %s (%s) is open to %s, but KVM does not work through it (KVM_CREATE_VM "
            "fails)" % (dev, shown, who))
        out['fix'] = ('make KVM work on this host (the kvm modules, dmesg), or take %s away from %s (for '
                      'example chmod 0600 %s)' % (dev, user_name(uid), dev))
    return out


def check(caps_xml, emulator, dev=KVM_DEV, cache_dir=SYSTEM_CACHE_DIR, before=None):
    """Gather the inputs on this host and assess them.

    ``caps_xml``: libvirt's host capabilities; ``emulator``: the QEMU binary sandboxes use;
    ``before``: ``cache_files(cache_dir)`` taken just before the capabilities were fetched, so
    that a cache file libvirt rewrote meanwhile shows as ``reprobed``.
    """
    identity = qemu_identity(caps_xml) if caps_xml else None
    try:
        st = os.stat(dev)
    except OSError:
        st = None
    acl = read_acl(dev) if st is not None else None
    groups = groups_of(*identity) if identity else []
    cache_file, cache_kvm = cached_probe(emulator, cache_dir) if emulator else (None, None)
    result = assess(dev, st, identity, probe_gets_kvm(dev), cache_kvm, acl, groups or None)
    after = cache_files(cache_dir) if before is not None else None
    reprobed = None
    if before is not None and after is not None:
        reprobed = any(before.get(path) != value for path, value in after.items())
    result.update(
        qemu_uid=identity[0] if identity else None,
        qemu_gid=identity[1] if identity else None,
        qemu_user=user_name(identity[0]) if identity else None,
        qemu_groups=[group_name(g) for g in groups],
        kvm_device=describe_device(dev, st),
        cache_file=cache_file,
        cache_kvm=cache_kvm,
        reprobed=reprobed,
    )
    return result
