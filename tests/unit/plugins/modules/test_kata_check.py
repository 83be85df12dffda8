# Copyright: kata.runtime contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""kata_check driven through AnsibleModule, against the real core and temp dirs.

libvirt is reached through its built-in ``test:///default`` driver (no daemon needed).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import stat
import struct
from types import SimpleNamespace

import pytest
from ansible.module_utils.testing import patch_module_args
from ansible_collections.kata.runtime.plugins.module_utils.kata import caps_cache, hostcheck
from ansible_collections.kata.runtime.plugins.module_utils.kata.hypervisor.accel import kvm_status
from ansible_collections.kata.runtime.plugins.modules import kata_check

HAVE_QEMU = any(shutil.which(name) for name in ('qemu-system-x86_64', 'qemu-system-aarch64', 'qemu-kvm'))

HAVE_LIBVIRT = importlib.util.find_spec('libvirt') is not None


def run(capsys, args, check_mode=False):
    """Run kata_check's main() with ``args``; return the parsed result."""
    args = dict(args)
    if check_mode:
        args['_ansible_check_mode'] = True
    with patch_module_args(args):
        with pytest.raises(SystemExit):
            kata_check.main()
    return json.loads(capsys.readouterr().out)


@pytest.fixture
def host(tmp_path):
    """A temp image dir, state root parent, cgroup v2 root and config file."""
    image = tmp_path / 'image'
    image.mkdir()
    cgroup = tmp_path / 'cgroup'
    cgroup.mkdir()
    (cgroup / 'cgroup.controllers').write_text('cpu memory pids\n')
    config = tmp_path / 'config.yaml'
    settings = {
        'libvirt_uri': 'test:///default',
        'image_dir': str(image),
        'state_root': str(tmp_path / 'run' / 'kata'),
        'cgroup_root': str(cgroup),
    }
    config.write_text(json.dumps(settings))
    return tmp_path, str(config)


def build_image(tmp_path):
    (tmp_path / 'image' / 'vmlinux').write_bytes(b'kernel bytes')
    (tmp_path / 'image' / 'kata-initrd.img').write_bytes(b'initrd bytes')


def test_missing_image_is_reported_not_failed(capsys, host):
    tmp_path, config = host
    result = run(capsys, {'config': config})
    assert result['changed'] is False
    assert not result.get('failed')
    kh = result['kata_host']
    assert kh['ready'] is False
    assert kh['image']['kernel'] == {'path': str(tmp_path / 'image' / 'vmlinux'), 'present': False, 'sha256': None}
    assert kh['image']['initrd']['present'] is False
    assert any('vmlinux is missing' in p for p in kh['problems'])
    assert any('kata-initrd.img is missing' in p for p in kh['problems'])
    assert kh['config']['path'] == config
    assert kh['config']['exists'] is True
    assert kh['cgroups'] == {'root': str(tmp_path / 'cgroup'), 'layout': 'v2'}


def test_strict_fails_listing_every_problem(capsys, host):
    tmp_path, config = host
    result = run(capsys, {'config': config, 'strict': True})
    assert result['failed'] is True
    assert result['changed'] is False
    assert 'not ready' in result['msg']
    for problem in result['kata_host']['problems']:
        assert problem in result['msg']


@pytest.mark.skipif(not (HAVE_QEMU and HAVE_LIBVIRT), reason='needs a QEMU binary and libvirt-python')
def test_ready_host_with_checksums(capsys, host):
    tmp_path, config = host
    build_image(tmp_path)
    result = run(capsys, {'config': config, 'strict': True})
    assert not result.get('failed'), result.get('msg')
    kh = result['kata_host']
    assert kh['ready'] is True and kh['problems'] == []
    assert kh['image']['kernel']['sha256'] == hashlib.sha256(b'kernel bytes').hexdigest()
    assert kh['image']['initrd']['sha256'] == hashlib.sha256(b'initrd bytes').hexdigest()
    assert kh['qemu']['path'] and kh['qemu']['version']
    assert kh['libvirt']['reachable'] is True
    assert kh['libvirt']['uri'] == 'test:///default'
    assert kh['libvirt']['version'].count('.') == 2
    assert kh['libvirt']['error'] is None
    assert kh['accel']['requested'] == 'auto'
    assert kh['accel']['chosen'] in ('kvm', 'tcg')
    assert kh['kvm']['usable'] is (kh['accel']['chosen'] == 'kvm')


def test_state_root_checked_without_creating_it(capsys, host):
    tmp_path, config = host
    for check_mode in (False, True):
        result = run(capsys, {'config': config}, check_mode=check_mode)
        assert result['kata_host']['state_root'] == {
            'path': str(tmp_path / 'run' / 'kata'), 'exists': False, 'writable': True}
        assert not (tmp_path / 'run').exists()


def test_state_root_under_a_file_is_not_writable(capsys, host):
    tmp_path, config = host
    (tmp_path / 'blocker').write_text('')
    result = run(capsys, {'config': config, 'runtime_root': str(tmp_path / 'blocker' / 'state')})
    sr = result['kata_host']['state_root']
    assert sr['writable'] is False and sr['exists'] is False
    assert any('cannot be created' in p for p in result['kata_host']['problems'])


def test_state_root_that_is_a_file(capsys, host):
    tmp_path, config = host
    (tmp_path / 'afile').write_text('')
    result = run(capsys, {'config': config, 'runtime_root': str(tmp_path / 'afile')})
    assert result['kata_host']['state_root']['writable'] is False
    assert any('not a directory' in p for p in result['kata_host']['problems'])


def test_runtime_root_overrides_config(capsys, host):
    tmp_path, config = host
    result = run(capsys, {'config': config, 'runtime_root': str(tmp_path)})
    kh = result['kata_host']
    assert kh['state_root'] == {'path': str(tmp_path), 'exists': True, 'writable': True}
    assert kh['config']['settings']['state_root'] == str(tmp_path)


@pytest.mark.skipif(not HAVE_LIBVIRT, reason='needs libvirt-python')
def test_unreachable_libvirt_is_a_problem(capsys, tmp_path):
    config = tmp_path / 'config.yaml'
    uri = 'qemu+unix:///system?socket=%s' % (tmp_path / 'no-such.sock')
    config.write_text(json.dumps({'libvirt_uri': uri, 'state_root': str(tmp_path)}))
    result = run(capsys, {'config': str(config)})
    lv = result['kata_host']['libvirt']
    assert lv['reachable'] is False and lv['version'] is None
    assert lv['error']
    assert any('not reachable' in p and uri in p for p in result['kata_host']['problems'])


def test_accel_kvm_where_unusable_is_a_problem(capsys, host):
    tmp_path, config = host
    settings = json.loads(open(config).read())
    settings['accel'] = 'kvm'
    with open(config, 'w') as handle:
        json.dump(settings, handle)
    kh = run(capsys, {'config': config})['kata_host']
    assert kh['accel']['requested'] == 'kvm'
    if kvm_status()[0]:
        assert kh['accel']['chosen'] == 'kvm'
    else:
        assert kh['accel']['chosen'] is None
        assert any('accel=kvm' in p for p in kh['problems'])


def test_bad_config_key_fails_cleanly(capsys, tmp_path):
    config = tmp_path / 'config.yaml'
    config.write_text('{"no_such_key": 1}')
    result = run(capsys, {'config': str(config)})
    assert result['failed'] is True and result['changed'] is False
    assert 'no_such_key' in result['msg']


def test_explicit_missing_config_fails(capsys, tmp_path):
    missing = str(tmp_path / 'nope.yaml')
    result = run(capsys, {'config': missing})
    assert result['failed'] is True and result['changed'] is False
    assert missing in result['msg']


@pytest.mark.parametrize('layout, paths', [
    ('v2', ['cgroup.controllers']),
    ('hybrid', ['cpu/tasks', 'memory/tasks', 'unified/cgroup.controllers']),
    ('v1', ['cpu/tasks', 'memory/tasks', 'pids/tasks']),
    ('none', []),
])
def test_cgroup_layouts(capsys, tmp_path, layout, paths):
    cgroup = tmp_path / 'cgroup'
    cgroup.mkdir()
    for rel in paths:
        path = cgroup / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text('')
    config = tmp_path / 'config.yaml'
    config.write_text(json.dumps({'cgroup_root': str(cgroup), 'state_root': str(tmp_path)}))
    kh = run(capsys, {'config': str(config)})['kata_host']
    assert kh['cgroups'] == {'root': str(cgroup), 'layout': layout}
    assert any('no cgroup file system' in p for p in kh['problems']) is (layout == 'none')


def test_check_mode_and_normal_mode_agree(capsys, host):
    tmp_path, config = host
    build_image(tmp_path)
    normal = run(capsys, {'config': config})
    checked = run(capsys, {'config': config}, check_mode=True)
    assert normal['kata_host'] == checked['kata_host']
    assert checked['changed'] is False
    assert sorted(os.listdir(tmp_path)) == ['cgroup', 'config.yaml', 'image']


# ---------------------------------------------------------------------------------------------
# libvirt's QEMU capabilities cache: discarded on every start when /dev/kvm is closed to the
# user libvirt runs QEMU as. Temp files stand in for /dev/kvm and the cache directory.

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


@pytest.fixture
def fake_kvm(tmp_path):
    """A temp file standing in for /dev/kvm (mode set by the test), owned by this process."""
    path = tmp_path / 'kvm'
    path.write_text('')
    os.chmod(str(path), 0o600)
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


@pytest.fixture
def working_kvm(monkeypatch):
    """The probe gets KVM from any device (as libvirt's probe does from a real /dev/kvm)."""
    monkeypatch.setattr(caps_cache, 'probe_gets_kvm', lambda dev: True)


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


@pytest.mark.skipif(not (HAVE_QEMU and HAVE_LIBVIRT), reason='needs a QEMU binary and libvirt-python')
def test_strict_does_not_fail_on_the_warning(capsys, host, monkeypatch, fake_kvm, working_kvm):
    tmp_path, config = host
    build_image(tmp_path)
    settings = json.loads(open(config).read())
    settings['accel'] = 'tcg'   # whatever KVM this host has: no accel problem can hide the point
    with open(config, 'w') as handle:
        json.dump(settings, handle)
    cache = tmp_path / 'caps'
    write_cache(cache, 'x.xml')
    # test:///default stands in for qemu:///system: its cache dir, user and device are temp ones
    monkeypatch.setattr(hostcheck, 'KVM_DEV', fake_kvm)
    monkeypatch.setattr(caps_cache, 'cache_dir_for', lambda uri: str(cache))
    monkeypatch.setattr(caps_cache, 'qemu_identity', lambda xml: (QEMU_UID, QEMU_GID))
    result = run(capsys, {'config': config, 'strict': True})
    assert not result.get('failed'), result.get('msg')
    kh = result['kata_host']
    assert kh['ready'] is True and kh['problems'] == []
    assert kh['qemu_caps_cache']['stable'] is False
    assert len(kh['warnings']) == 1 and 'chmod 0660 %s' % fake_kvm in kh['warnings'][0]
    # shown by Ansible too (2.19 wraps each warning in a summary object)
    shown = [w['event']['msg'] if isinstance(w, dict) else w for w in result.get('warnings', [])]
    assert kh['warnings'][0] in shown
    checked = run(capsys, {'config': config, 'strict': True}, check_mode=True)
    assert checked['kata_host']['warnings'] == kh['warnings']
