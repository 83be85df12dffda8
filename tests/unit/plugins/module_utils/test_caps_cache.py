# Copyright: kata.runtime contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The host probes kata_check reports (caps_cache.py, hostcheck.check_caps_cache), without the module.

libvirt discards its QEMU capabilities cache on every start when /dev/kvm is closed to the user
libvirt runs QEMU as. Temp files stand in for /dev/kvm and the cache directory.
"""

from __future__ import annotations

import os
import stat
import struct
from types import SimpleNamespace

import pytest
from ansible_collections.kata.runtime.plugins.module_utils.kata import caps_cache, hostcheck

# A user and group of libvirt's QEMU that this process is not: no passwd entry, so its groups
# are just its group (the test process's own group, so that 0660 files grant it access).
QEMU_UID = 4242
QEMU_GID = os.getgid()


def caps_xml(uid=QEMU_UID, gid=QEMU_GID, dac=True, emulator='/usr/bin/qemu-system-x86_64'):
    model = ('<secmodel><model>dac</model><doi>0</doi><baselabel type="kvm">+%d:+%d</baselabel>'
             '<baselabel type="qemu">+%d:+%d</baselabel></secmodel>' % (uid, gid, uid, gid)) if dac else ''
    return ('<capabilities><host><cpu><arch>x86_64</arch></cpu><secmodel><model>none</model></secmodel>%s</host>'
            '<guest><os_type>hvm</os_type><arch name="x86_64"><emulator>%s</emulator></arch></guest>'
            '</capabilities>' % (model, emulator))


def fake_stat(mode, uid=0, gid=0):
    return SimpleNamespace(st_mode=stat.S_IFCHR | mode, st_uid=uid, st_gid=gid)


def write_cache(cache_dir, name, emulator='/usr/bin/qemu-system-x86_64', kvm=True):
    cache_dir.mkdir(exist_ok=True)
    path = cache_dir / name
    path.write_text("<qemuCaps>\n  <emulator>%s</emulator>\n  <qemuctime>1</qemuctime>\n%s  <flag name='sdl'/>\n"
                    "</qemuCaps>\n" % (emulator, "  <flag name='kvm'/>\n" if kvm else ''))
    return str(path)


def test_qemu_identity_from_the_dac_base_label():
    assert caps_cache.qemu_identity(caps_xml(64055, 64055)) == (64055, 64055)
    assert caps_cache.qemu_identity(caps_xml(0, 0)) == (0, 0)
    assert caps_cache.qemu_identity(caps_xml(dac=False)) is None
    assert caps_cache.qemu_identity('<capabilities') is None
    assert caps_cache.emulator_of(caps_xml(), 'x86_64') == '/usr/bin/qemu-system-x86_64'
    assert caps_cache.emulator_of(caps_xml(), 'aarch64') is None


def test_groups_of_a_user_without_passwd_entry_is_its_group():
    assert caps_cache.groups_of(QEMU_UID, 4343) == [4343]
    assert 0 in caps_cache.groups_of(0, 0)


@pytest.mark.parametrize('mode, owner, group, expected', [
    (0o600, 0, 0, False),                # fresh host: crw------- root root
    (0o660, 0, 107, True),               # what udev sets: root:kvm 0660, qemu in kvm
    (0o666, 0, 0, True),                 # some distributions: 0666
    (0o660, 0, 999, False),              # a group the qemu user is not in
    (0o066, QEMU_UID, 107, False),       # the owner class decides alone, even against the group
    (0o600, QEMU_UID, 0, True),          # owned by the qemu user
    (0o640, 0, 107, False),              # read is not enough
])
def test_can_read_write_follows_the_owner_group_other_rule(mode, owner, group, expected):
    assert caps_cache.can_read_write(fake_stat(mode, owner, group), QEMU_UID, [107, 4343]) is expected


def test_root_can_always_read_write():
    assert caps_cache.can_read_write(fake_stat(0o000), 0, [0]) is True


def acl_blob(*entries):
    return struct.pack('<I', 2) + b''.join(struct.pack('<HHI', *entry) for entry in entries)


def test_an_access_acl_decides_over_the_mode_bits():
    c = caps_cache
    base = [(c.ACL_USER_OBJ, 6, 0xFFFFFFFF), (c.ACL_GROUP_OBJ, 0, 0xFFFFFFFF), (c.ACL_OTHER, 0, 0xFFFFFFFF)]
    named = c.parse_acl(acl_blob(*(base + [(c.ACL_USER, 6, QEMU_UID), (c.ACL_MASK, 6, 0xFFFFFFFF)])))
    st = fake_stat(0o660)   # with an ACL the group bits are the mask
    assert c.can_read_write(st, QEMU_UID, [4343], named) is True
    masked = c.parse_acl(acl_blob(*(base + [(c.ACL_USER, 6, QEMU_UID), (c.ACL_MASK, 4, 0xFFFFFFFF)])))
    assert c.can_read_write(st, QEMU_UID, [4343], masked) is False
    group = c.parse_acl(acl_blob(*(base + [(c.ACL_GROUP, 6, 4343), (c.ACL_MASK, 6, 0xFFFFFFFF)])))
    assert c.can_read_write(st, QEMU_UID, [4343], group) is True
    assert c.can_read_write(st, QEMU_UID, [5555], group) is False
    assert c.parse_acl(b'\x02\x00\x00\x00\x01') is None


def test_assess_fresh_host_is_unstable_and_says_what_to_do():
    out = caps_cache.assess('/tmp/kvm', fake_stat(0o600), (QEMU_UID, 4343), probe_kvm=True, groups=[4343])
    assert out['stable'] is False and out['kvm_usable_by_qemu'] is False
    assert 'every domain start' in out['reason'] and 'crw------- root:' in out['reason']
    assert 'chmod 0660 /tmp/kvm' in out['fix']


def test_assess_udev_permissions_are_stable():
    out = caps_cache.assess('/tmp/kvm', fake_stat(0o660, 0, 4343), (QEMU_UID, 4343), probe_kvm=True,
                            groups=[4343])
    assert out['stable'] is True and out['kvm_usable_by_qemu'] is True and out['fix'] is None


def test_assess_without_kvm_device_is_stable():
    out = caps_cache.assess('/tmp/kvm', None, (QEMU_UID, 4343), probe_kvm=False, cache_kvm=True, groups=[4343])
    assert out['stable'] is True and out['kvm_usable_by_qemu'] is False


def test_assess_open_device_without_working_kvm_is_unstable():
    out = caps_cache.assess('/tmp/kvm', fake_stat(0o666), (QEMU_UID, 4343), probe_kvm=False, groups=[4343])
    assert out['stable'] is False
    assert 'should be usable now' in out['reason'] and out['fix']


def test_assess_falls_back_on_the_cached_probe_and_else_cannot_tell():
    st = fake_stat(0o600)
    assert caps_cache.assess('/tmp/kvm', st, (QEMU_UID, 4343), None, cache_kvm=True, groups=[4343])['stable'] is False
    unknown = caps_cache.assess('/tmp/kvm', st, (QEMU_UID, 4343), None, cache_kvm=None, groups=[4343])
    assert unknown['stable'] is None and 'cannot tell' in unknown['reason']
    assert caps_cache.assess('/tmp/kvm', st, None, True)['stable'] is None


def test_cached_probe_finds_the_emulators_file(tmp_path):
    cache = tmp_path / 'caps'
    write_cache(cache, 'a.xml', emulator='/usr/bin/qemu-system-i386', kvm=False)
    path = write_cache(cache, 'b.xml', kvm=True)
    assert caps_cache.cached_probe('/usr/bin/qemu-system-x86_64', str(cache)) == (path, True)
    assert caps_cache.cached_probe('/usr/bin/qemu-system-i386', str(cache))[1] is False
    assert caps_cache.cached_probe('/usr/bin/qemu-kvm', str(cache)) == (None, None)
    assert caps_cache.cached_probe('/usr/bin/qemu-system-x86_64', str(tmp_path / 'none')) == (None, None)


@pytest.mark.parametrize('uri, expected', [
    ('qemu:///system', caps_cache.SYSTEM_CACHE_DIR),
    ('qemu+unix:///system', caps_cache.SYSTEM_CACHE_DIR),
    ('qemu+ssh://root@kvm-03/system', None),
    ('test:///default', None),
])
def test_cache_dir_only_for_a_local_qemu_driver(uri, expected):
    assert caps_cache.cache_dir_for(uri) == expected


def test_check_sees_a_rewritten_cache_file_as_a_reprobe(tmp_path, fake_kvm):
    cache = tmp_path / 'caps'
    path = write_cache(cache, 'b.xml')
    before = caps_cache.cache_files(str(cache))
    os.utime(path, ns=(1, 1))
    out = caps_cache.check(caps_xml(), '/usr/bin/qemu-system-x86_64', dev=fake_kvm, cache_dir=str(cache),
                           before=before)
    assert out['reprobed'] is True and out['cache_file'] == path and out['cache_kvm'] is True
    same = caps_cache.check(caps_xml(), '/usr/bin/qemu-system-x86_64', dev=fake_kvm, cache_dir=str(cache),
                            before=caps_cache.cache_files(str(cache)))
    assert same['reprobed'] is False


def test_check_without_a_working_kvm_is_stable(tmp_path, fake_kvm):
    # the temp file answers no KVM ioctl: the probe gets no KVM, and the QEMU user cannot open it
    out = caps_cache.check(caps_xml(), '/usr/bin/qemu-system-x86_64', dev=fake_kvm, cache_dir=str(tmp_path))
    assert out['stable'] is True and out['kvm_usable_by_qemu'] is False
    assert out['kvm_device'] == {'path': fake_kvm, 'present': True, 'mode': '-rw-------',
                                 'owner': caps_cache.user_name(os.getuid()),
                                 'group': caps_cache.group_name(os.getgid())}
    assert out['qemu_uid'] == QEMU_UID and out['qemu_user'] == str(QEMU_UID)
    assert out['reprobed'] is None


def caps_check(fake_kvm, cache):
    warnings = []
    out = hostcheck.check_caps_cache('qemu:///system', caps_xml(), None, '/usr/bin/qemu-system-x86_64', warnings,
                                     dev=fake_kvm, cache_dir=str(cache))
    return out, warnings


def test_fresh_host_device_is_a_warning_that_says_what_to_do(tmp_path, fake_kvm, working_kvm):
    out, warnings = caps_check(fake_kvm, tmp_path)
    assert out['stable'] is False and out['kvm_usable_by_qemu'] is False
    assert len(warnings) == 1
    assert 'probes QEMU again on every domain start' in warnings[0]
    assert 'chmod 0660 %s' % fake_kvm in warnings[0]
    assert 'kata.runtime.kata_host role' in warnings[0] and 'prepare-host.sh' in warnings[0]


def test_udev_permissions_need_no_warning(tmp_path, fake_kvm, working_kvm):
    os.chmod(fake_kvm, 0o660)   # its group is the QEMU group here, as kvm is on Debian
    out, warnings = caps_check(fake_kvm, tmp_path)
    assert out['stable'] is True and out['kvm_usable_by_qemu'] is True
    assert out['fix'] is None
    assert warnings == []


def test_caps_cache_not_checked_for_another_driver():
    warnings = []
    out = hostcheck.check_caps_cache('test:///default', None, None, None, warnings)
    assert set(out) == set(hostcheck.CACHE_KEYS)
    assert out['stable'] is None and 'not checked' in out['reason']
    assert warnings == []
