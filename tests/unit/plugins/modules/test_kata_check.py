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

import pytest
from ansible.module_utils.testing import patch_module_args
from ansible_collections.kata.runtime.plugins.module_utils.kata import caps_cache, hostcheck
from ansible_collections.kata.runtime.plugins.module_utils.kata.hypervisor.accel import kvm_status
from ansible_collections.kata.runtime.plugins.modules import kata_check
from ansible_collections.kata.runtime.tests.unit.plugins.module_utils.test_caps_cache import (
    QEMU_GID,
    QEMU_UID,
    write_cache,
)

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
# libvirt's QEMU capabilities cache through the module (the probes themselves: test_caps_cache.py)

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
