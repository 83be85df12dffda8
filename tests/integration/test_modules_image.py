# Copyright: kata.runtime contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""kata_guest_image and kata_check through the ansible command line, the way operators run them.

The persistent image directory ``$KATA_TEST_IMAGE_DIR`` (default
``/var/lib/kata-runtime/image-test``, shared with test_guest_boot.py) makes the first build the
only slow one: later runs reuse its kernel package download and build cache.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile

import pytest
from ansible_collections.kata.runtime.plugins.module_utils.kata.guest.kernel import find_host_kernel, package_kernel

IMAGE_DIR = os.environ.get('KATA_TEST_IMAGE_DIR', '/var/lib/kata-runtime/image-test')
ANSIBLE = os.path.join(os.path.dirname(sys.executable), 'ansible')

pytestmark = [
    pytest.mark.skipif(not os.access(ANSIBLE, os.X_OK), reason='ansible is not installed next to this Python'),
    pytest.mark.skipif(os.geteuid() != 0, reason='builds into /var/lib and reads /boot as root'),
]


def collections_path():
    """Where ansible finds kata.runtime: the environment's setting, else the repository's .collections."""
    if os.environ.get('ANSIBLE_COLLECTIONS_PATH'):
        return os.environ['ANSIBLE_COLLECTIONS_PATH']
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.realpath(__file__))))
    return os.path.join(repo, '.collections')


def ansible(module, args='', check=False, diff=False):
    """Run ``ansible localhost -m kata.runtime.<module> -a <args>``; return the module result.

    The result is read from the tree callback's per-host JSON file (ansible-core's own callback).
    """
    cmd = [ANSIBLE, 'localhost', '-c', 'local', '-i', 'localhost,',
           '-e', 'ansible_python_interpreter=%s' % sys.executable,
           '-m', 'kata.runtime.%s' % module]
    if args:
        cmd += ['-a', args]
    if check:
        cmd.append('--check')
    if diff:
        cmd.append('--diff')
    with tempfile.TemporaryDirectory() as tree:
        env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=collections_path(), ANSIBLE_NOCOLOR='1',
                   ANSIBLE_LOAD_CALLBACK_PLUGINS='1', ANSIBLE_CALLBACKS_ENABLED='ansible.builtin.tree',
                   ANSIBLE_CALLBACK_TREE_DIR=tree)
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                              timeout=1800, check=False)
        try:
            with open(os.path.join(tree, 'localhost'), encoding='utf-8') as handle:
                result = json.load(handle)
        except (OSError, ValueError):
            raise AssertionError('ansible left no result (rc=%d)\nstdout:\n%s\nstderr:\n%s'
                                 % (proc.returncode, proc.stdout, proc.stderr)) from None
    result['_rc'] = proc.returncode  # the tree callback leaves 'failed' out; rc 2 is a failed host
    return result


def built(dest):
    return all(os.path.isfile(os.path.join(dest, link)) for link in ('vmlinux', 'kata-initrd.img'))


def test_build_then_nothing_to_do():
    """The contract's idempotence: a build that changes, then one that does not."""
    if built(IMAGE_DIR):
        # already built by an earlier run: losing a link is the cheapest real change to repair
        os.unlink(os.path.join(IMAGE_DIR, 'vmlinux'))
    first = ansible('kata_guest_image', 'dest=%s' % IMAGE_DIR)
    assert first['_rc'] == 0 and not first.get('failed'), first.get('msg')
    assert first['changed'] is True
    image = first['image']
    assert image['vmlinux_extracted'] is True, image['kernel_method']
    assert os.path.realpath(os.path.join(IMAGE_DIR, 'vmlinux')) == image['kernel']
    assert os.path.realpath(os.path.join(IMAGE_DIR, 'kata-initrd.img')) == image['initrd']
    with open(image['kernel'], 'rb') as handle:
        assert handle.read(4) == b'\x7fELF'

    second = ansible('kata_guest_image', 'dest=%s' % IMAGE_DIR)
    assert second['changed'] is False
    assert second['image'] == image

    checked = ansible('kata_guest_image', 'dest=%s' % IMAGE_DIR, check=True)
    assert checked['changed'] is False
    assert checked['image'] == image


def test_kata_check_sees_the_built_image(tmp_path):
    """kata_check against a config whose image_dir is the built image: checksums match."""
    result = ansible('kata_guest_image', 'dest=%s' % IMAGE_DIR)
    image = result['image']
    config = tmp_path / 'config.yaml'
    config.write_text(json.dumps({'image_dir': IMAGE_DIR, 'state_root': str(tmp_path / 'state')}))
    check = ansible('kata_check', 'config=%s' % config)
    assert check['changed'] is False
    host = check['kata_host']
    assert host['image']['kernel'] == {'path': os.path.join(IMAGE_DIR, 'vmlinux'), 'present': True,
                                       'sha256': image['kernel_sha256']}
    assert host['image']['initrd']['sha256'] == image['initrd_sha256']
    assert host['state_root']['writable'] is True
    assert not (tmp_path / 'state').exists()
    assert host['accel']['chosen'] in ('kvm', 'tcg')
    assert host['cgroups']['layout'] in ('v1', 'v2', 'hybrid')


def test_repairs_and_force(tmp_path):
    # The host's own kernel where it has one, else the package the shared image dir unpacked
    # (a scratch dir must not download its own copy).
    found = find_host_kernel() or package_kernel(os.path.join(IMAGE_DIR, 'cache'))
    given_kernel = 'kernel=%s modules_dir=%s' % (found[0], found[1])
    dest = str(tmp_path / 'image')
    first = ansible('kata_guest_image', 'dest=%s %s' % (dest, given_kernel))
    assert first['changed'] is True
    image = first['image']
    assert image['kernel_source'] == 'given'

    # the same inputs again build nothing
    given = ansible('kata_guest_image', 'dest=%s %s' % (dest, given_kernel))
    assert given['changed'] is False
    assert given['image']['kernel'] == image['kernel']

    # a lost link: check mode sees it without touching it, a run restores it
    os.unlink(os.path.join(dest, 'kata-initrd.img'))
    planned = ansible('kata_guest_image', 'dest=%s %s' % (dest, given_kernel), check=True, diff=True)
    assert planned['changed'] is True
    assert not os.path.lexists(os.path.join(dest, 'kata-initrd.img'))
    repaired = ansible('kata_guest_image', 'dest=%s %s' % (dest, given_kernel))
    assert repaired['changed'] is True
    assert os.path.realpath(os.path.join(dest, 'kata-initrd.img')) == image['initrd']

    # force on an intact build rewrites nothing
    forced = ansible('kata_guest_image', 'dest=%s force=true %s' % (dest, given_kernel))
    assert forced['changed'] is False
    assert forced['image'] == image

    # a damaged kernel of the same size is trusted from the cache without force, found with it
    with open(image['kernel'], 'r+b') as handle:
        handle.seek(4096)
        handle.write(b'\0damaged\0')
    assert ansible('kata_guest_image', 'dest=%s %s' % (dest, given_kernel), check=True)['changed'] is False
    assert ansible('kata_guest_image', 'dest=%s force=true %s' % (dest, given_kernel), check=True)['changed'] is True
    fixed = ansible('kata_guest_image', 'dest=%s force=true %s' % (dest, given_kernel))
    assert fixed['changed'] is True
    assert fixed['image']['kernel_sha256'] == image['kernel_sha256']
    assert ansible('kata_guest_image', 'dest=%s %s' % (dest, given_kernel))['changed'] is False
    shutil.rmtree(dest)


def test_bad_input_changes_nothing(tmp_path):
    dest = tmp_path / 'image'
    result = ansible('kata_guest_image', 'dest=%s busybox=%s' % (dest, tmp_path / 'nope'))
    assert result['_rc'] != 0 and result['changed'] is False
    assert 'nope' in result['msg']
    assert not dest.exists()
