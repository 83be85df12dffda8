# Copyright: kata.runtime contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Build the real guest image (distribution kernel, host busybox and python, the agent) and
boot it with bare QEMU: the init runs, the 9p share mounts, the agent answers on the
virtio-serial port ``agent.0`` and runs a container from the share.

The image is built once into ``$KATA_TEST_IMAGE_DIR`` (default
``/var/lib/kata-runtime/image-test``) and reused between runs: the kernel package download
(~70 MB) happens at most once. ``KATA_BOOT_RUNS`` (default 3) sets how many boots the timing
test does per initrd variant; it writes the medians to ``<image dir>/boot-times.json``.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics

import pytest
from ansible_collections.kata.runtime.benchmarks._probe import probe_boot
from ansible_collections.kata.runtime.plugins.module_utils.kata.errors import ImageError
from ansible_collections.kata.runtime.plugins.module_utils.kata.guest import contract, image, kmod
from ansible_collections.kata.runtime.plugins.module_utils.kata.guest.kernel import package_kernel
from ansible_collections.kata.runtime.plugins.module_utils.kata.guest.vmlinux import bzimage_version

QEMU = shutil.which('qemu-system-x86_64')
IMAGE_DIR = os.environ.get('KATA_TEST_IMAGE_DIR', '/var/lib/kata-runtime/image-test')
RUNS = int(os.environ.get('KATA_BOOT_RUNS', '3'))

pytestmark = pytest.mark.skipif(QEMU is None, reason='qemu-system-x86_64 is not installed')


def _build(out_dir, **kw):
    try:
        return image.build_image(out_dir, **kw)
    except ImageError as err:
        if 'no apt-get/dpkg-deb' in str(err):
            pytest.skip(str(err))
        raise


@pytest.fixture(scope='module')
def built():
    return _build(IMAGE_DIR)


def test_image_is_built_and_rebuild_is_a_noop(built):
    assert built['vmlinux_extracted'] is True, built['kernel_method']
    with open(built['kernel'], 'rb') as f:
        assert f.read(4) == b'\x7fELF'
    assert os.path.realpath(os.path.join(IMAGE_DIR, 'vmlinux')) == built['kernel']
    assert os.path.realpath(os.path.join(IMAGE_DIR, 'kata-initrd.img')) == built['initrd']
    assert {'virtio_pci', 'virtio_console', '9pnet_virtio', '9p'} <= set(built['modules'])
    again = image.build_image(IMAGE_DIR)
    assert again['changed'] is False
    assert again['initrd_sha256'] == built['initrd_sha256']


def test_package_kernel_unpacks_without_installing():
    """The distribution kernel package path (what runs on hosts without /boot/vmlinuz-*):
    fetched into the cache, unpacked, no modules.dep (depmod never ran), and still a bootable
    image whose module order comes from the modules' .modinfo."""
    if not shutil.which('apt-get') or not shutil.which('dpkg-deb'):
        pytest.skip('needs apt-get and dpkg-deb')
    cache = os.path.join(IMAGE_DIR, 'cache')
    vmlinuz, mdir, ver = package_kernel(cache)
    assert vmlinuz.startswith(cache) and mdir.startswith(cache)
    assert os.path.basename(vmlinuz) == 'vmlinuz-' + ver
    assert not os.path.exists(os.path.join(mdir, 'modules.dep'))
    with open(vmlinuz, 'rb') as f:
        assert bzimage_version(f.read()) == ver
    out = os.path.join(IMAGE_DIR, 'from-package')
    r = _build(out, kernel=vmlinuz, modules_dir=mdir)
    assert r['vmlinux_extracted'] is True and r['kernel_version'] == ver
    deps = kmod.module_deps(mdir, image.DEFAULT_MODULES)
    pos = {kmod.module_name(p): i for i, p in enumerate(kmod.module_load_order(deps, image.DEFAULT_MODULES))}
    assert pos['virtio_ring'] < pos['virtio_pci'] and pos['9pnet'] < pos['9pnet_virtio'] < pos['9p']
    probe = probe_boot(r['kernel'], r['initrd'], agent=False)
    assert 'kata-init: insmod' not in probe['console'], probe['console']


def test_guest_boots_to_the_agent_and_runs_a_container(built, tmp_path):
    shared = tmp_path / 'shared'
    rootfs = shared / 'c1' / 'rootfs'
    (rootfs / 'bin').mkdir(parents=True)
    shutil.copy2('/bin/busybox', rootfs / 'bin' / 'busybox')
    for applet in ('sh', 'cat'):
        os.symlink('busybox', rootfs / 'bin' / applet)
    (rootfs / 'greeting').write_text('hello through 9p\n')
    requests = [
        {'method': 'create_container', 'params': {
            'id': 'c1', 'args': ['/bin/sh', '-c', 'cat /greeting; echo pid=$$']}},
        {'method': 'start_container', 'params': {'id': 'c1'}},
        {'method': 'wait_container', 'params': {'id': 'c1', 'timeout': 60}},
    ]
    output = tmp_path / 'output'
    output.mkdir()
    r = probe_boot(built['kernel_link'], built['initrd_link'], shared_dir=str(shared),
                   output_dir=str(output), requests=requests, timeout=120)
    console = r['console']
    assert 'kata-init: mounted kataShared at /run/kata-containers/shared' in console, console
    assert 'kata-init: mounted kataOutput at /run/kata-containers/output' in console, console
    assert 'kata-init: insmod' not in console and 'mounting kataShared failed' not in console, console
    assert r['ping']['result']['protocol'] == 1
    assert r['ping']['result']['pid'] == 1          # the agent is the guest's PID 1
    assert r['init_s'] < r['agent_s']
    created, started, waited = r['replies']
    assert 'error' not in created and 'error' not in started, r['replies']
    assert waited['result']['status'] == 'stopped' and waited['result']['exit_code'] == 0, waited
    out = (output / 'c1' / 'stdout').read_text()
    assert out == 'hello through 9p\npid=1\n', (output / 'c1' / 'stderr').read_text()


def _median_boot(kernel, initrd, runs):
    boots = [probe_boot(kernel, initrd, timeout=120) for i in range(runs)]
    inits = [r['init_s'] for r in boots]
    agents = [r['agent_s'] for r in boots]
    return {'init_s': round(statistics.median(inits), 2), 'agent_s': round(statistics.median(agents), 2),
            'init_all': [round(x, 2) for x in inits], 'agent_all': [round(x, 2) for x in agents],
            'initrd_size': os.path.getsize(initrd)}


def test_boot_times_uncompressed_vs_gzip(built):
    gz = _build(os.path.join(IMAGE_DIR, 'gzip'), compress='gzip')
    assert gz['initrd_size'] < built['initrd_size']
    times = {
        'none': _median_boot(built['kernel'], built['initrd'], RUNS),
        'gzip': _median_boot(built['kernel'], gz['initrd'], RUNS),
        'kernel_params': contract.KERNEL_PARAMS,
        'runs': RUNS,
    }
    with open(os.path.join(IMAGE_DIR, 'boot-times.json'), 'w') as f:
        json.dump(times, f, indent=1)
    print('\nboot times (median of %d): %s' % (RUNS, json.dumps(times)))
    for kind in ('none', 'gzip'):
        assert times[kind]['init_s'] < times[kind]['agent_s'] < 60
