# Copyright: kata.runtime contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""kata_guest_image driven through AnsibleModule against the real image builder.

The full build runs only where the host has what it needs (a kernel in /boot with its modules,
a static busybox, /usr/bin/python3); it takes a few seconds there. Repairs, ``force`` and
building from a downloaded kernel package are in tests/integration/test_modules_image.py.
"""

from __future__ import annotations

import glob
import json
import os
import subprocess

import pytest
from ansible.module_utils.testing import patch_module_args
from ansible_collections.kata.runtime.plugins.module_utils.kata.guest.kernel import find_host_kernel
from ansible_collections.kata.runtime.plugins.modules import kata_guest_image

BUSYBOX = '/bin/busybox'


def _static(path):
    if not os.path.isfile(path):
        return False
    proc = subprocess.run(['ldd', path], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, check=False)
    return b'not a dynamic executable' in proc.stdout or b'statically linked' in proc.stdout


def _cached_package_kernel():
    """A kernel the integration tests already unpacked from the distribution package (no
    download here): hosts that run sandboxes need not have a kernel of their own in /boot."""
    cache = os.path.join(os.environ.get('KATA_TEST_IMAGE_DIR', '/var/lib/kata-runtime/image-test'), 'cache')
    for vmlinuz in sorted(glob.glob(os.path.join(cache, 'kernel-*', 'boot', 'vmlinuz-*')), reverse=True):
        ver = os.path.basename(vmlinuz)[len('vmlinuz-'):]
        mdir = os.path.join(os.path.dirname(os.path.dirname(vmlinuz)), 'lib', 'modules', ver)
        if os.path.isdir(mdir):
            return vmlinuz, mdir, ver
    return None


HOST_KERNEL = find_host_kernel()
# (vmlinuz, modules_dir, version, source): the host's own kernel, else a cached package's
KERNEL = (HOST_KERNEL + ('host',)) if HOST_KERNEL else (
    (_cached_package_kernel() + ('given',)) if _cached_package_kernel() else None)
CAN_BUILD = KERNEL is not None and _static(BUSYBOX) and os.path.exists('/usr/bin/python3')
needs_build = pytest.mark.skipif(not CAN_BUILD, reason='needs a kernel (/boot/vmlinuz-* or an unpacked package '
                                 'in the integration image cache), a static /bin/busybox and /usr/bin/python3')


def kernel_args():
    """Module options naming the kernel when it is not the host's own."""
    return {} if KERNEL[3] == 'host' else {'kernel': KERNEL[0], 'modules_dir': KERNEL[1]}


def run(capsys, args, check_mode=False, diff=False):
    args = dict(args)
    args['_ansible_check_mode'] = check_mode
    args['_ansible_diff'] = diff
    with patch_module_args(args):
        with pytest.raises(SystemExit):
            kata_guest_image.main()
    return json.loads(capsys.readouterr().out)


def no_config(tmp_path):
    """A config file with only defaults, so the host's own config does not leak in."""
    path = tmp_path / 'config.yaml'
    path.write_text('{}\n')
    return str(path)


# --- refusals -------------------------------------------------------------------------------

@pytest.mark.parametrize('option', ['dest', 'kernel', 'modules_dir', 'busybox', 'python'])
def test_relative_paths_are_refused(capsys, tmp_path, option):
    args = {'config': no_config(tmp_path), 'dest': str(tmp_path / 'image')}
    args[option] = 'relative/path'
    # type=path makes it absolute against the cwd only for '~'-free values when it exists;
    # a plain relative value must be refused before anything is created.
    os.chdir(tmp_path)
    result = run(capsys, args)
    assert result['failed'] is True and result['changed'] is False
    assert option in result['msg'] and 'relative/path' in result['msg']
    assert not (tmp_path / 'image').exists()


def test_bad_config_is_refused(capsys, tmp_path):
    config = tmp_path / 'config.yaml'
    config.write_text('image_dir: relative\n')
    result = run(capsys, {'config': str(config)})
    assert result['failed'] is True and result['changed'] is False
    assert 'image_dir' in result['msg']


def test_check_mode_on_a_missing_dest_reports_a_build_and_writes_nothing(capsys, tmp_path):
    dest = tmp_path / 'image'
    result = run(capsys, {'config': no_config(tmp_path), 'dest': str(dest)}, check_mode=True, diff=True)
    assert result['changed'] is True
    assert not dest.exists()
    assert any('would create' in a for a in result['actions'])
    assert result['image']['kernel_link'] == str(dest / 'vmlinux')
    assert result['diff']['before'] == {'kernel': None, 'initrd': None}


def test_dest_defaults_to_the_config_image_dir(capsys, tmp_path):
    config = tmp_path / 'config.yaml'
    config.write_text('image_dir: %s\n' % (tmp_path / 'from-config'))
    result = run(capsys, {'config': str(config)}, check_mode=True)
    assert result['image']['initrd_link'] == str(tmp_path / 'from-config' / 'kata-initrd.img')
    assert not (tmp_path / 'from-config').exists()


@pytest.mark.skipif(KERNEL is None, reason='needs /boot/vmlinuz-* or an unpacked kernel package in the cache')
def test_missing_busybox_fails_in_check_mode_too(capsys, tmp_path):
    dest = tmp_path / 'image'
    dest.mkdir()
    for check_mode in (True, False):
        result = run(capsys, dict(kernel_args(), config=no_config(tmp_path), dest=str(dest),
                                  busybox=str(tmp_path / 'no-busybox')), check_mode=check_mode)
        assert result['failed'] is True and result['changed'] is False
        assert 'no-busybox' in result['msg']
    assert sorted(os.listdir(dest)) in ([], ['cache'])
    assert not [n for n in os.listdir(dest) if n.startswith(('vmlinux', 'kata-initrd'))]


def test_missing_kernel_is_refused(capsys, tmp_path):
    dest = tmp_path / 'image'
    dest.mkdir()
    result = run(capsys, {'config': no_config(tmp_path), 'dest': str(dest),
                          'kernel': str(tmp_path / 'vmlinuz-none')})
    assert result['failed'] is True and result['changed'] is False
    assert 'vmlinuz-none' in result['msg']


# --- a real build ---------------------------------------------------------------------------

@needs_build
def test_build_is_idempotent_and_check_mode_agrees(capsys, tmp_path):
    dest = tmp_path / 'image'
    args = dict(kernel_args(), config=no_config(tmp_path), dest=str(dest))

    planned = run(capsys, args, check_mode=True)
    assert planned['changed'] is True and not dest.exists()

    built = run(capsys, args, diff=True)
    assert built['changed'] is True, built
    image = built['image']
    assert image['kernel_source'] == KERNEL[3]
    assert image['kernel_version'] == KERNEL[2]
    assert os.path.realpath(dest / 'vmlinux') == image['kernel']
    assert os.path.realpath(dest / 'kata-initrd.img') == image['initrd']
    assert os.path.getsize(image['kernel']) == image['kernel_size']
    assert os.path.getsize(image['initrd']) == image['initrd_size']
    assert os.path.basename(image['kernel']).split('-')[-1] == image['kernel_sha256'][:16]
    assert 'virtio_console' in image['modules'] and '9p' in image['modules']
    assert built['diff']['before'] == {'kernel': None, 'initrd': None}
    assert built['diff']['after'] == {'kernel': os.path.basename(image['kernel']),
                                      'initrd': os.path.basename(image['initrd'])}
    assert any(a.startswith('pointed vmlinux at') for a in built['actions'])

    again = run(capsys, args, diff=True)
    assert again['changed'] is False
    assert again['actions'] == []
    assert again['diff'] == {'before': {}, 'after': {}}
    assert again['image'] == image

    checked = run(capsys, args, check_mode=True)
    assert checked['changed'] is False
    assert checked['image'] == image
