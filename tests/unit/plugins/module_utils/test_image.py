# Copyright: kata.runtime contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The guest image builder without booting anything: the cpio writer (read back by the cpio
tool), vmlinux extraction from synthetic bzImages, module closure/order from a synthetic
modules.dep and from synthetic modules' .modinfo, and whole builds into temp dirs with the
host's real busybox and python (idempotency, content addressing, the python runtime running
chrooted inside the unpacked initrd)."""

from __future__ import annotations

import gzip
import lzma
import os
import re
import shutil
import struct
import subprocess

import pytest
from ansible_collections.kata.runtime.plugins.module_utils.kata.errors import ImageError
from ansible_collections.kata.runtime.plugins.module_utils.kata.guest import agent as guest_agent
from ansible_collections.kata.runtime.plugins.module_utils.kata.guest import contract, cpio, image, kmod, vmlinux

BUSYBOX = '/bin/busybox'
PYTHON = '/usr/bin/python3.11'
HAVE_TOOLS = os.path.isfile(BUSYBOX) and os.path.isfile(PYTHON) and shutil.which('ldd')
needs_tools = pytest.mark.skipif(not HAVE_TOOLS, reason='needs /bin/busybox (busybox-static), '
                                 '/usr/bin/python3.11 and ldd')

AGENT = b'''import json, os, select, signal, socket, subprocess, sys, time
if __name__ == "__main__":
    sys.stdout.write(json.dumps({"agent": "placeholder", "pid": os.getpid()}) + "\\n")
'''


# --------------------------------------------------------------------------------------------
# cpio

def _entries():
    return [
        cpio.CpioEntry('bin', 'dir', 0o755),
        cpio.CpioEntry('bin/busybox', 'file', 0o755, b'\x7fELF' + b'x' * 1001),
        cpio.CpioEntry('bin/sh', 'symlink', 0o777, 'busybox'),
        cpio.CpioEntry('etc', 'dir', 0o755),
        cpio.CpioEntry('etc/odd name.txt', 'file', 0o600, b'abc'),
        cpio.CpioEntry('empty', 'file', 0o644, b''),
        cpio.CpioEntry('dev', 'dir', 0o755),
        cpio.CpioEntry('dev/console', 'chr', 0o600, rdev=(5, 1)),
    ]


def _cpio(entries):
    import io
    buf = io.BytesIO()
    cpio.write_cpio(entries, buf)
    return buf.getvalue()


def test_cpio_roundtrip_python_reader():
    data = _cpio(_entries())
    assert len(data) % 4 == 0
    got = {e['path']: e for e in cpio.read_cpio(data)}
    assert sorted(got) == sorted(e.path for e in _entries())
    assert got['bin/busybox']['data'] == b'\x7fELF' + b'x' * 1001
    assert got['bin/busybox']['mode'] == 0o100755
    assert got['bin/sh']['data'] == b'busybox' and got['bin/sh']['mode'] == 0o120777
    assert got['etc/odd name.txt']['mode'] == 0o100600
    assert got['dev/console']['mode'] == 0o020600 and got['dev/console']['rdev'] == (5, 1)
    assert got['bin']['mode'] == 0o040755
    assert all(e['mtime'] == 0 and e['uid'] == 0 and e['gid'] == 0 for e in got.values())


def test_cpio_is_deterministic_whatever_the_order():
    a = _cpio(_entries())
    b = _cpio(list(reversed(_entries())))
    assert a == b


@pytest.mark.skipif(not shutil.which('cpio'), reason='needs the cpio tool')
def test_cpio_tool_reads_it(tmp_path):
    data = _cpio([e for e in _entries() if e.kind != 'chr'])
    listing = subprocess.run(['cpio', '-it', '--quiet'], input=data, stdout=subprocess.PIPE,
                             check=True).stdout.decode().split('\n')
    assert [x for x in listing if x] == sorted(e.path for e in _entries() if e.kind != 'chr')
    subprocess.run(['cpio', '-idm', '--quiet'], input=data, cwd=tmp_path, check=True)
    assert (tmp_path / 'bin' / 'busybox').read_bytes() == b'\x7fELF' + b'x' * 1001
    assert os.readlink(tmp_path / 'bin' / 'sh') == 'busybox'
    assert (tmp_path / 'etc' / 'odd name.txt').read_bytes() == b'abc'
    assert (tmp_path / 'empty').read_bytes() == b''
    assert os.stat(tmp_path / 'bin' / 'busybox').st_mode & 0o777 == 0o755


def test_tree_creates_parents():
    t = cpio.Tree()
    t.file('/usr/lib/python3.11/os.py', b'x')
    names = {e['path'] for e in cpio.read_cpio(t.cpio())}
    assert {'usr', 'usr/lib', 'usr/lib/python3.11', 'usr/lib/python3.11/os.py'} == names


# --------------------------------------------------------------------------------------------
# vmlinux extraction

FAKE_ELF = b'\x7fELF\x02\x01\x01' + bytes(range(256)) * 64


def _bzimage(payload, hdr=True, decoy=b''):
    """A bzImage-shaped blob: setup sectors (with a real setup header when ``hdr``) then
    ``decoy`` + the compressed payload + the 4-byte size trailer a real one carries."""
    setup_sects = 3
    setup = bytearray((setup_sects + 1) * 512)
    if hdr:
        setup[0x1F1] = setup_sects
        setup[0x202:0x206] = b'HdrS'
        ver = b'6.1.0-99-test (builder@example) #1 SMP\0'
        setup[0x400:0x400 + len(ver)] = ver
        struct.pack_into('<H', setup, 0x20E, 0x400 - 0x200)
        struct.pack_into('<II', setup, 0x248, len(decoy), len(payload))
    return bytes(setup) + decoy + payload + struct.pack('<I', len(FAKE_ELF))


def test_extract_xz_with_setup_header():
    blob = _bzimage(lzma.compress(FAKE_ELF, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32),
                    decoy=b'\xfd7zXZ\x00 not really xz')
    out, method = vmlinux.extract_vmlinux(blob)
    assert out == FAKE_ELF
    assert method.startswith('xz@')
    assert vmlinux.bzimage_version(blob) == '6.1.0-99-test'


def test_extract_xz_by_magic_scan_without_header():
    blob = b'MZ' + b'\0' * 3000 + lzma.compress(FAKE_ELF, format=lzma.FORMAT_XZ) + b'trailer'
    out, method = vmlinux.extract_vmlinux(blob)
    assert out == FAKE_ELF and method == 'xz@3002'
    assert vmlinux.bzimage_version(blob) is None


def test_extract_gzip_fallback():
    blob = _bzimage(gzip.compress(FAKE_ELF, mtime=0), hdr=False)
    out, method = vmlinux.extract_vmlinux(blob)
    assert out == FAKE_ELF and method.startswith('gzip@')


@pytest.mark.skipif(not shutil.which('zstd'), reason='needs the zstd tool')
def test_extract_zstd_fallback():
    z = subprocess.run(['zstd', '-q', '-c'], input=FAKE_ELF, stdout=subprocess.PIPE, check=True).stdout
    out, method = vmlinux.extract_vmlinux(_bzimage(z))
    assert out == FAKE_ELF and method.startswith('zstd@')


def test_extract_refuses_non_elf_payload():
    blob = _bzimage(lzma.compress(b'not an elf' * 100, format=lzma.FORMAT_XZ))
    with pytest.raises(ImageError, match='not an ELF'):
        vmlinux.extract_vmlinux(blob)


def test_extract_refuses_blob_without_payload():
    with pytest.raises(ImageError, match='no compressed payload'):
        vmlinux.extract_vmlinux(b'MZ' + b'\0' * 4096)


def test_extract_passes_elf_through():
    assert vmlinux.extract_vmlinux(FAKE_ELF) == (FAKE_ELF, 'already-elf')


# --------------------------------------------------------------------------------------------
# kernel modules

MODULES_DEP = '''\
kernel/drivers/virtio/virtio.ko:
kernel/drivers/virtio/virtio_ring.ko:
kernel/drivers/virtio/virtio_pci_modern_dev.ko:
kernel/drivers/virtio/virtio_pci_legacy_dev.ko:
kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio_pci_modern_dev.ko \
kernel/drivers/virtio/virtio_pci_legacy_dev.ko kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko
kernel/drivers/char/virtio_console.ko: kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko
kernel/fs/netfs/netfs.ko.xz:
kernel/fs/fscache/fscache.ko.xz: kernel/fs/netfs/netfs.ko.xz
kernel/net/9p/9pnet.ko:
kernel/net/9p/9pnet_virtio.ko: kernel/net/9p/9pnet.ko kernel/drivers/virtio/virtio_ring.ko \
kernel/drivers/virtio/virtio.ko
kernel/fs/9p/9p.ko: kernel/fs/fscache/fscache.ko.xz kernel/net/9p/9pnet.ko kernel/fs/netfs/netfs.ko.xz
kernel/fs/overlayfs/overlay.ko:
kernel/drivers/virtio/virtio_balloon.ko: kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko
kernel/net/core/failover.ko:
kernel/drivers/net/net_failover.ko: kernel/net/core/failover.ko
kernel/drivers/net/virtio_net.ko: kernel/drivers/net/net_failover.ko kernel/net/core/failover.ko \
kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko
kernel/sound/unrelated.ko: kernel/drivers/virtio/virtio.ko
'''


def _assert_deps_first(order, deps):
    pos = {p: i for i, p in enumerate(order)}
    for mod in order:
        for dep in deps[mod]:
            assert pos[dep] < pos[mod], '%s loaded before its dependency %s' % (mod, dep)


def test_modules_dep_closure_and_order():
    deps = kmod.parse_modules_dep(MODULES_DEP)
    order = kmod.module_load_order(deps, image.DEFAULT_MODULES)
    names = [kmod.module_name(p) for p in order]
    assert sorted(names) == sorted(['virtio', 'virtio_ring', 'virtio_pci_modern_dev',
                                    'virtio_pci_legacy_dev', 'virtio_pci', 'virtio_console',
                                    'netfs', 'fscache', '9pnet', '9pnet_virtio', '9p', 'overlay',
                                    'virtio_balloon', 'failover', 'net_failover', 'virtio_net'])
    assert 'unrelated' not in names
    assert len(set(order)) == len(order)
    _assert_deps_first(order, deps)
    # the order follows the request: the NIC (asked last) is loaded last
    assert names[-1] == 'virtio_net'


def test_modules_dep_names_fold_dashes_and_skip_builtins():
    deps = kmod.parse_modules_dep(MODULES_DEP)
    assert [kmod.module_name(p) for p in kmod.module_load_order(deps, ['virtio-console'])] == [
        'virtio_ring', 'virtio', 'virtio_console']
    assert kmod.module_load_order(deps, ['ext4'], builtin=['ext4']) == []
    with pytest.raises(ImageError, match='no_such_mod'):
        kmod.module_load_order(deps, ['no_such_mod'])


def test_modules_dep_cycle_is_an_error():
    deps = kmod.parse_modules_dep('a.ko: b.ko\nb.ko: a.ko\n')
    with pytest.raises(ImageError, match='cycle'):
        kmod.module_load_order(deps, ['a'])


def fake_module(name, depends=''):
    """A minimal ELF64 relocatable with a .modinfo section, like a real .ko has."""
    modinfo = b'license=GPL\0depends=%s\0name=%s\0' % (depends.encode(), name.encode())
    shstr = b'\0.modinfo\0.shstrtab\0'
    body_off = 64
    shstr_off = body_off + len(modinfo)
    shoff = (shstr_off + len(shstr) + 7) & ~7
    hdr = bytearray(64)
    hdr[0:7] = b'\x7fELF\x02\x01\x01'
    struct.pack_into('<HHI', hdr, 16, 1, 62, 1)   # ET_REL, EM_X86_64
    struct.pack_into('<Q', hdr, 0x28, shoff)
    struct.pack_into('<HHHHHH', hdr, 0x34, 64, 0, 0, 64, 3, 2)
    data = bytearray(hdr) + modinfo + shstr
    data += b'\0' * (shoff - len(data))
    data += b'\0' * 64                                                       # SHN_UNDEF
    data += struct.pack('<IIQQQQIIQQ', 1, 1, 2, 0, body_off, len(modinfo), 0, 0, 1, 0)
    data += struct.pack('<IIQQQQIIQQ', 10, 3, 0, 0, shstr_off, len(shstr), 0, 0, 1, 0)
    return bytes(data)


def make_modules_dir(root, with_dep_file=False):
    """A /lib/modules/<ver> tree of synthetic modules: virtio stack and 9p, some xz'd."""
    mods = {
        'kernel/drivers/virtio/virtio.ko': '',
        'kernel/drivers/virtio/virtio_ring.ko': '',
        'kernel/drivers/virtio/virtio_pci_modern_dev.ko': '',
        'kernel/drivers/virtio/virtio_pci_legacy_dev.ko': '',
        'kernel/drivers/virtio/virtio_pci.ko': 'virtio_pci_modern_dev,virtio_pci_legacy_dev,virtio_ring,virtio',
        'kernel/drivers/char/virtio_console.ko.xz': 'virtio_ring,virtio',
        'kernel/fs/netfs/netfs.ko.xz': '',
        'kernel/fs/fscache/fscache.ko': 'netfs',
        'kernel/net/9p/9pnet.ko': '',
        'kernel/net/9p/9pnet_virtio.ko': '9pnet,virtio_ring,virtio',
        'kernel/fs/9p/9p.ko': 'netfs,9pnet,fscache',
        'kernel/fs/overlayfs/overlay.ko': '',
        'kernel/drivers/virtio/virtio_balloon.ko': 'virtio_ring,virtio',
        'kernel/net/core/failover.ko': '',
        'kernel/drivers/net/net_failover.ko': 'failover',
        'kernel/drivers/net/virtio_net.ko.xz': 'net_failover,failover,virtio_ring,virtio',
        'kernel/sound/unrelated.ko': 'virtio',
    }
    for rel, depends in mods.items():
        path = os.path.join(root, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        data = fake_module(kmod.module_name(rel), depends)
        if rel.endswith('.xz'):
            data = lzma.compress(data)
        with open(path, 'wb') as f:
            f.write(data)
    if with_dep_file:
        lines = []
        for rel, depends in mods.items():
            by = {kmod.module_name(r): r for r in mods}
            lines.append('%s: %s' % (rel, ' '.join(by[d] for d in depends.split(',') if d)))
        with open(os.path.join(root, 'modules.dep'), 'w') as f:
            f.write('\n'.join(lines) + '\n')
    with open(os.path.join(root, 'modules.builtin'), 'w') as f:
        f.write('kernel/fs/ext4/ext4.ko\n')
    return root


def test_modinfo_reads_depends():
    info = kmod.modinfo(fake_module('9p', 'netfs,9pnet,fscache'))
    assert info['depends'] == ['netfs,9pnet,fscache'] and info['name'] == ['9p']
    with pytest.raises(ImageError):
        kmod.modinfo(b'not elf at all')


@pytest.mark.parametrize('with_dep_file', [False, True])
def test_module_deps_from_modinfo_or_modules_dep(tmp_path, with_dep_file):
    mdir = make_modules_dir(str(tmp_path), with_dep_file)
    deps = kmod.module_deps(mdir, image.DEFAULT_MODULES)
    order = kmod.module_load_order(deps, image.DEFAULT_MODULES + ('ext4',),
                                   kmod.module_builtins(mdir))
    names = [kmod.module_name(p) for p in order]
    assert len(names) == 16 and 'unrelated' not in names
    _assert_deps_first(order, deps)
    assert kmod.read_module(os.path.join(mdir, 'kernel/fs/netfs/netfs.ko.xz'))[:4] == b'\x7fELF'


# --------------------------------------------------------------------------------------------
# whole builds (real busybox and python, synthetic kernel and modules)

def _setup(tmp_path):
    mdir = make_modules_dir(str(tmp_path / 'modules' / '6.1.0-99-test'))
    kernel = tmp_path / 'vmlinuz-6.1.0-99-test'
    kernel.write_bytes(_bzimage(lzma.compress(FAKE_ELF, format=lzma.FORMAT_XZ)))
    agent = tmp_path / 'agent.py'
    agent.write_bytes(AGENT)
    return str(kernel), mdir, str(agent)


@needs_tools
def test_build_image_is_content_addressed_and_idempotent(tmp_path):
    kernel, mdir, agent = _setup(tmp_path)
    out = tmp_path / 'out'
    msgs = []
    r1 = image.build_image(str(out), kernel=kernel, modules_dir=mdir, agent=agent, progress=msgs.append)
    assert r1['changed'] is True and msgs
    assert r1['kernel_source'] == 'given' and r1['kernel_version'] == '6.1.0-99-test'
    assert r1['vmlinux_extracted'] is True
    assert os.path.basename(r1['kernel']) == 'vmlinux-' + r1['kernel_sha256'][:16]
    assert os.path.basename(r1['initrd']) == 'kata-initrd-' + r1['initrd_sha256'][:16] + '.img'
    assert (out / 'vmlinux').read_bytes() == FAKE_ELF
    assert os.readlink(out / 'vmlinux') == os.path.basename(r1['kernel'])
    assert os.readlink(out / 'kata-initrd.img') == os.path.basename(r1['initrd'])
    initrd_bytes = (out / 'kata-initrd.img').read_bytes()
    assert r1['initrd_size'] == len(initrd_bytes)
    st = os.stat(r1['initrd'])

    r2 = image.build_image(str(out), kernel=kernel, modules_dir=mdir, agent=agent)
    assert r2['changed'] is False
    assert r2 == dict(r1, changed=False)
    assert os.stat(r1['initrd']).st_mtime_ns == st.st_mtime_ns
    assert (out / 'kata-initrd.img').read_bytes() == initrd_bytes

    # A fresh directory with the same inputs gives the same bytes (deterministic archive).
    r3 = image.build_image(str(tmp_path / 'other'), kernel=kernel, modules_dir=mdir, agent=agent)
    assert r3['initrd_sha256'] == r1['initrd_sha256'] and r3['kernel_sha256'] == r1['kernel_sha256']

    # A changed input gives a new file and moves the symlink; the old file stays.
    with open(agent, 'ab') as f:
        f.write(b'# changed\n')
    r4 = image.build_image(str(out), kernel=kernel, modules_dir=mdir, agent=agent)
    assert r4['changed'] is True and r4['initrd'] != r1['initrd']
    assert os.path.exists(r1['initrd'])
    assert os.readlink(out / 'kata-initrd.img') == os.path.basename(r4['initrd'])
    assert r4['kernel'] == r1['kernel']


@needs_tools
def test_initrd_contents(tmp_path):
    kernel, mdir, agent = _setup(tmp_path)
    r = image.build_image(str(tmp_path / 'out'), kernel=kernel, modules_dir=mdir, agent=agent,
                          extra_files={'/etc/kata/extra.txt': b'hello'})
    entries = {e['path']: e for e in cpio.read_cpio(open(r['initrd'], 'rb').read())}
    init = entries['init']['data'].decode()
    assert entries['init']['mode'] == 0o100755
    assert init.startswith('#!/bin/busybox sh')
    names = r['modules']
    assert 'for m in %s; do' % ' '.join(names) in init
    for n in names:
        assert entries['lib/modules/%s.ko' % n]['data'][:4] == b'\x7fELF'   # .xz ones unpacked
    assert 'kataShared' in init and contract.INIT_MARKER in init
    assert 'virtio_balloon' in names  # free page reporting, at an order a small guest reaches
    assert 'echo 5 > /sys/module/page_reporting/parameters/page_reporting_order' in init
    assert not re.search(r'@[A-Z_]+@', init)  # every placeholder filled in
    assert 'exec /usr/bin/python3 -S "$agent"' in init and '[ -f /opt/kata/agent.pyc ]' in init
    assert entries['opt/kata/agent.pyc']['data'][16:] != b''      # the agent, precompiled
    assert entries['bin/sh']['data'] == b'busybox'
    for applet in ('mount', 'insmod', 'poweroff', 'unshare', 'chroot', 'setpriv'):
        assert entries['bin/' + applet]['data'] == b'busybox', applet
    assert entries['opt/kata/agent.py']['data'] == AGENT
    assert entries['opt/kata/exec_init.py']['data'] == image.exec_init_source()   # the containers' init
    assert entries['opt/kata/exec_init.py']['mode'] == 0o100644
    assert entries['etc/kata/extra.txt']['data'] == b'hello'
    assert entries['dev/console']['rdev'] == (5, 1)
    assert entries['usr/bin/python3']['data'] == b'python3.11'
    assert 'lib64/ld-linux-x86-64.so.2' in entries
    assert 'usr/lib/python3.11/json/__init__.py' in entries
    assert 'usr/lib/python3.11/__pycache__/subprocess.cpython-311.pyc' in entries
    assert 'usr/lib/python3.11/encodings/utf_8.py' in entries
    assert not any(p.startswith('usr/lib/python3.11/pydoc_data') for p in entries)


CHROOT = shutil.which('chroot') or shutil.which('chroot', path='/usr/sbin:/sbin')


@needs_tools
@pytest.mark.skipif(os.geteuid() != 0 or not CHROOT, reason='needs root and chroot')
def test_initrd_python_runs_the_agent_chrooted(tmp_path):
    """The interpreter, its libraries and the stdlib closure in the initrd are enough to run
    the agent: unpack the archive and run it chrooted, with nothing from the host visible."""
    kernel, mdir, agent = _setup(tmp_path)
    r = image.build_image(str(tmp_path / 'out'), kernel=kernel, modules_dir=mdir, agent=agent)
    root = tmp_path / 'root'
    root.mkdir()
    for e in cpio.read_cpio(open(r['initrd'], 'rb').read()):
        p = root / e['path']
        kind = e['mode'] & 0o170000
        if kind == 0o040000:
            p.mkdir(exist_ok=True)
        elif kind == 0o120000:
            os.symlink(e['data'].decode(), p)
        elif kind == 0o100000:
            p.write_bytes(e['data'])
            os.chmod(p, e['mode'] & 0o7777)
    proc = subprocess.run([CHROOT, str(root), '/usr/bin/python3', '-S', '/opt/kata/agent.py'],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={'PATH': '/bin'}, check=False)
    assert proc.returncode == 0, proc.stderr.decode()
    assert b'"agent": "placeholder"' in proc.stdout
    # the precompiled agent the init prefers runs the same
    proc = subprocess.run([CHROOT, str(root), '/usr/bin/python3', '-S', '/opt/kata/agent.pyc'],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={'PATH': '/bin'}, check=False)
    assert proc.returncode == 0, proc.stderr.decode()
    assert b'"agent": "placeholder"' in proc.stdout
    # and the modules the real agent uses import, stdlib only, from the archive
    proc = subprocess.run([CHROOT, str(root), '/usr/bin/python3', '-S', '-c',
                           'import sys, json, subprocess, socket, select, signal, errno, re;'
                           'print(json.__file__, sys.prefix)'],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={'PATH': '/bin'}, check=False)
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stdout.split() == [b'/usr/lib/python3.11/json/__init__.py', b'/usr']
    proc = subprocess.run([CHROOT, str(root), '/bin/sh', '-c', 'echo $((6*7))'],
                          stdout=subprocess.PIPE, check=True)
    assert proc.stdout == b'42\n'
    # the containers' init runs on the initrd's Python, with the command line the agent writes,
    # into a rootfs that has no proc or dev (so it mounts nothing) where it execs the command
    ctr = root / 'ctr'
    (ctr / 'bin').mkdir(parents=True)
    shutil.copy2(root / 'bin' / 'busybox', ctr / 'bin' / 'busybox')
    os.symlink('busybox', ctr / 'bin' / 'echo')
    spec = {'rootfs': '/ctr', 'hostname': None, 'cwd': '/', 'uid': 0, 'gid': 0, 'env': [],
            'args': ['echo', 'from', 'the', 'container']}
    argv = guest_agent.exec_init_argv('/usr/bin/python3', spec, '/no-fifo', '/bin/busybox')
    assert argv[3] == guest_agent.EXEC_INIT_PATH
    argv[3] = image.EXEC_INIT_PATH
    proc = subprocess.run([CHROOT, str(root)] + argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          env={'PATH': '/bin'}, check=False)
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stdout == b'from the container\n'


@needs_tools
def test_build_refuses_bad_inputs(tmp_path):
    kernel, mdir, agent = _setup(tmp_path)
    with pytest.raises(ImageError, match='does not exist'):
        image.build_image(str(tmp_path / 'o1'), kernel=str(tmp_path / 'nope'), agent=agent)
    with pytest.raises(ImageError, match='busybox'):
        image.build_image(str(tmp_path / 'o2'), kernel=kernel, modules_dir=mdir, agent=agent, busybox=str(tmp_path / 'bb'))
    with pytest.raises(ImageError, match='not found'):
        image.build_image(str(tmp_path / 'o3'), kernel=kernel, modules_dir=mdir, agent=agent, modules=('no_such_mod',))
    with pytest.raises(ImageError, match='compress'):
        image.build_image(str(tmp_path / 'o4'), kernel=kernel, modules_dir=mdir, agent=agent, compress='bzip9')
