# Copyright: kata.runtime contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The guest image builder (the runtime's osbuilder): kernel and initrd from host packages.

``build_image(out_dir, ...)`` produces, content-addressed and idempotently:

- ``<out_dir>/vmlinux-<sha16>``: the guest kernel. An uncompressed ELF vmlinux extracted from
  the distribution's bzImage (``vmlinuz``) when possible: the Debian kernel has CONFIG_PVH=y,
  so QEMU and libvirt boot the ELF directly and skip the in-guest decompression, which costs
  seconds under software emulation. When extraction fails the vmlinuz itself is used.
- ``<out_dir>/kata-initrd-<sha16>.img``: a newc cpio (uncompressed or gzip) holding busybox,
  the kernel modules the guest needs (closure and load order from ``modules.dep``, or from the
  modules' own ``.modinfo`` when the package ships no ``modules.dep``), a minimal Python
  runtime (interpreter, its shared libraries, the stdlib closure of the agent) and the agent
  at ``/opt/kata/agent.py``, started by ``/init``.
- stable symlinks ``<out_dir>/vmlinux`` and ``<out_dir>/kata-initrd.img`` (replaced
  atomically).

The kernel comes from the host (``/boot/vmlinuz-<ver>`` with ``/lib/modules/<ver>``) or, when
the host has none, from the distribution's kernel package, downloaded with ``apt-get download``
and unpacked with ``dpkg-deb -x`` under ``<out_dir>/cache`` (never installed on the host).

``probe_boot(...)`` boots a kernel and initrd with a bare ``qemu-system-x86_64`` and measures
the time to the init's marker and to the agent's first reply: used by the tests and the
benchmarks.
"""

from __future__ import annotations

import glob
import gzip
import hashlib
import io
import json
import lzma
import os
import pkgutil
import re
import shutil
import socket
import struct
import subprocess
import tempfile
import time
import zlib

from ansible_collections.kata.runtime.plugins.module_utils.kata.errors import ImageError
from ansible_collections.kata.runtime.plugins.module_utils.kata.guest import contract

# Bump when the layout of the initrd changes, so an old cached build is not reused.
BUILDER_VERSION = '2'

# The kernel command line the runtime should pass (the builder's /init relies on none of it).
# quiet + serial console; panic=-1 reboots at once on a panic (the VM is configured to stop on
# reboot); the rest skips probing that only costs time in a VM with no legacy devices.
DEFAULT_KERNEL_PARAMS = (
    'console=ttyS0 quiet panic=-1 reboot=k noreplace-smp tsc=reliable no_timer_check '
    'i8042.noaux=1 i8042.nopnp=1 i8042.dumbkbd=1 i8042.direct=1 8250.nr_uarts=1 '
    'cryptomgr.notests rcupdate.rcu_expedited=1 random.trust_cpu=on'
)

# Modules the guest needs: the virtio PCI transport, the agent's virtio-serial port, the
# 9p shared directory and the balloon's free page reporting. Their dependencies are resolved
# from modules.dep / .modinfo.
DEFAULT_MODULES = ('virtio_pci', 'virtio_console', '9pnet_virtio', '9p', 'overlay', 'virtio_balloon')
# Free page reporting hands back free blocks of 2**order pages. Linux 6.1 sets the order to the
# pageblock (2 MiB) when the driver registers, overriding the command line, and then reports
# nothing while a zone has less than 64 MiB free above its watermark: never, in a small guest.
# At order 5 (128 KiB blocks) a 128 MiB guest gives back ~23 MiB after boot (docs/benchmarks.md).
PAGE_REPORTING_ORDER = 5

KERNEL_PACKAGE = 'linux-image-amd64'
SHARED_TAG = contract.SHARED_TAG
SHARED_MOUNT = contract.SHARED_MOUNT
OUTPUT_TAG = contract.OUTPUT_TAG
OUTPUT_MOUNT = contract.OUTPUT_MOUNT
AGENT_PATH = '/opt/kata/agent.py'
AGENT_PORT_NAME = contract.AGENT_PORT_NAME
# Printed by /init on the serial console right before the agent starts.
INIT_MARKER = 'kata-init: starting agent'

# Stdlib modules always shipped besides the agent's own closure: the codecs the interpreter
# needs at startup and for UTF-8 / Latin-1 / ASCII data. (All of encodings.* would add 2 MiB
# and the CJK codec extensions for nothing the agent does.)
EXTRA_STDLIB = ('encodings', 'encodings.aliases', 'encodings.utf_8', 'encodings.utf_8_sig',
                'encodings.ascii', 'encodings.latin_1', 'encodings.idna', 'encodings.raw_unicode_escape',
                'encodings.unicode_escape', 'encodings.utf_16', 'encodings.utf_32')

# Modules modulefinder reaches through optional or lazy imports that the agent never uses
# (documentation, tests, TLS, asyncio, decimal, ...). Leaving them out halves the Python part.
STDLIB_EXCLUDES = (
    '_ssl', 'ssl', '_hashlib', 'pydoc', 'pydoc_data', 'doctest', 'unittest', 'asyncio', 'tkinter',
    '_tkinter', 'test', '_testcapi', '_testinternalcapi', '_testbuffer', '_testmultiphase',
    '_testimportmultiple', '_xxtestfuzz', '_ctypes_test', 'decimal', '_pydecimal', '_decimal',
    'readline', 'pdb', 'bdb', 'curses', '_curses', '_curses_panel', 'lib2to3', 'idlelib',
    'distutils', 'ensurepip', 'venv', 'sqlite3', '_sqlite3', 'dbm', '_dbm', '_gdbm',
    'xmlrpc', 'http', 'urllib', 'email', 'mailbox', 'ftplib', 'smtplib', 'imaplib', 'poplib',
    'nntplib', 'pyexpat', 'xml', '_elementtree', 'lzma', '_lzma', 'bz2', '_bz2', 'tty', 'pty',
    'getpass', 'webbrowser', 'turtle', 'turtledemo', '_osx_support', '_aix_support',
    '_bootsubprocess', 'ctypes', '_ctypes', 'multiprocessing', 'concurrent',
)

_KO_SUFFIXES = ('.ko', '.ko.xz', '.ko.zst', '.ko.gz')
_MAGICS = (
    ('xz', b'\xfd7zXZ\x00'),
    ('gzip', b'\x1f\x8b\x08'),
    ('zstd', b'\x28\xb5\x2f\xfd'),
)
_ELF_MAGIC = b'\x7fELF'

INIT_TEMPLATE = r'''#!/bin/busybox sh
# /init of the kata.runtime guest: mounts, kernel modules, shared dir, then the agent.
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
export HOME=/root
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sysfs /sys
/bin/busybox mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts -o gid=5,mode=620,ptmxmode=666 devpts /dev/pts
mount -t tmpfs -o mode=1777 tmpfs /dev/shm
mount -t tmpfs -o mode=755 tmpfs /run
mount -t tmpfs -o mode=1777 tmpfs /tmp
mount -t cgroup2 cgroup2 /sys/fs/cgroup 2>/dev/null
for m in @MODULES@; do
    insmod "/lib/modules/$m.ko" || echo "kata-init: insmod $m failed"
done
# see PAGE_REPORTING_ORDER in guest/image.py (absent without a reporting balloon: no harm)
echo @PAGE_REPORTING_ORDER@ > /sys/module/page_reporting/parameters/page_reporting_order 2>/dev/null
ip link set lo up 2>/dev/null
hostname kata 2>/dev/null
# The rootfs share is read-only (so is the host's export); the output share takes container
# output only, so nothing on it is executable or a device.
mount_share() {
    mkdir -p "$2"
    if mount -t 9p -o "trans=virtio,version=9p2000.L,msize=262144,$3" "$1" "$2"; then
        echo "kata-init: mounted $1 at $2"
    else
        echo "kata-init: mounting $1 failed"
    fi
}
# A guest booted to become a VM template mounts no share: QEMU cannot migrate a mounted 9p
# share, so each clone's agent mounts them after resume (post_clone).
case " $(cat /proc/cmdline) " in
    *" @TEMPLATE_FLAG@ "*) kata_template=1; echo "kata-init: template boot, shares left unmounted" ;;
    *) kata_template= ;;
esac
for t in /sys/bus/virtio/drivers/9pnet_virtio/*/mount_tag; do
    [ -e "$t" ] || continue
    [ -z "$kata_template" ] || continue
    case "$(tr -d '\000' < "$t")" in
        @SHARED_TAG@) mount_share @SHARED_TAG@ @SHARED_MOUNT@ ro,nodev ;;
        @OUTPUT_TAG@) mount_share @OUTPUT_TAG@ @OUTPUT_MOUNT@ nosuid,nodev,noexec ;;
    esac
done
echo "@INIT_MARKER@"
# A fixed hash seed spares the agent the kernel's first-read entropy wait (~1 s under TCG when
# the crng is not seeded yet). The precompiled agent skips compiling it at every boot.
export PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PYTHONHASHSEED=0
agent=@AGENT_PATH@
[ -f @AGENT_PATH@c ] && agent=@AGENT_PATH@c
# The agent becomes PID 1 (it reaps orphans and powers the machine off on shutdown). Should it
# ever exit, the kernel panics and panic=-1 ends the VM; if the exec itself fails, power off.
exec /usr/bin/python3 -S "$agent"
echo "kata-init: cannot start the agent, powering off"
poweroff -f
'''


# ---------------------------------------------------------------------------------------------
# small helpers

def _sha256(data):
    return hashlib.sha256(data).hexdigest()


def _sha256_file(path):
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(1 << 20), b''):
            h.update(chunk)
    return h.hexdigest()


def _read(path):
    with open(path, 'rb') as f:
        return f.read()


def _run(argv, cwd=None, what=None):
    try:
        proc = subprocess.run(argv, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              check=False)
    except OSError as err:
        raise ImageError('cannot run %s: %s' % (argv[0], err))
    if proc.returncode != 0:
        raise ImageError('%s failed (exit %d): %s' % (
            what or ' '.join(argv), proc.returncode,
            proc.stderr.decode('utf-8', 'replace').strip()[-2000:]))
    return proc.stdout.decode('utf-8', 'replace')


def _write_atomic(path, data):
    d = os.path.dirname(path)
    fd, tmp = tempfile.mkstemp(dir=d, prefix='.tmp-')
    try:
        with os.fdopen(fd, 'wb') as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _symlink_atomic(target, link):
    """Point ``link`` at ``target`` (relative name); return True when it changed."""
    try:
        if os.readlink(link) == target:
            return False
    except OSError:
        pass
    tmp = '%s.tmp-%d' % (link, os.getpid())
    if os.path.lexists(tmp):
        os.unlink(tmp)
    os.symlink(target, tmp)
    os.replace(tmp, link)
    return True


def _version_key(ver):
    return [int(p) if p.isdigit() else p for p in re.split(r'(\d+)', ver)]


# ---------------------------------------------------------------------------------------------
# cpio (newc)

class CpioEntry:
    """One member of a newc archive: ``kind`` is 'dir', 'file', 'symlink' or 'chr'."""

    __slots__ = ('path', 'kind', 'mode', 'data', 'rdev')

    def __init__(self, path, kind, mode, data=b'', rdev=(0, 0)):
        self.path = path.strip('/')
        self.kind = kind
        self.mode = mode
        self.data = data
        self.rdev = rdev


_KIND_BITS = {'dir': 0o040000, 'file': 0o100000, 'symlink': 0o120000, 'chr': 0o020000}


def _cpio_header(ino, mode, nlink, size, rdev, namesize):
    fields = (ino, mode, 0, 0, nlink, 0, size, 0, 0, rdev[0], rdev[1], namesize, 0)
    return ('070701' + ''.join('%08X' % v for v in fields)).encode('ascii')


def _pad4(n):
    return (4 - n % 4) % 4


def write_cpio(entries, out):
    """Write ``entries`` (CpioEntry) to the binary stream ``out`` as a deterministic newc archive.

    Entries are sorted by path, owned by root, with mtime 0 and sequential inode numbers, so the
    same entries always give the same bytes. Parent directories must be among the entries.
    """
    ino = 0
    for e in sorted(entries, key=lambda x: x.path):
        ino += 1
        data = e.data.encode('utf-8') if isinstance(e.data, str) else e.data
        if e.kind in ('dir', 'chr'):
            data = b''
        name = e.path.encode('utf-8') + b'\0'
        mode = _KIND_BITS[e.kind] | (e.mode & 0o7777)
        nlink = 2 if e.kind == 'dir' else 1
        hdr = _cpio_header(ino, mode, nlink, len(data), e.rdev, len(name))
        out.write(hdr + name + b'\0' * _pad4(len(hdr) + len(name)))
        out.write(data + b'\0' * _pad4(len(data)))
    name = b'TRAILER!!!\0'
    hdr = _cpio_header(0, 0, 1, 0, (0, 0), len(name))
    out.write(hdr + name + b'\0' * _pad4(len(hdr) + len(name)))


def read_cpio(data):
    """Parse a newc archive (bytes) into a list of dicts: path, mode, nlink, data, rdev."""
    out = []
    off = 0
    while True:
        if data[off:off + 6] != b'070701':
            raise ImageError('bad cpio magic at offset %d' % off)
        f = [int(data[off + 6 + 8 * i: off + 14 + 8 * i], 16) for i in range(13)]
        namesize, size = f[11], f[6]
        off += 110
        name = data[off:off + namesize - 1].decode('utf-8')
        off += namesize
        off += (-off) % 4
        body = data[off:off + size]
        off += size
        off += (-off) % 4
        if name == 'TRAILER!!!':
            return out
        out.append({'path': name, 'mode': f[1], 'nlink': f[4], 'mtime': f[5], 'uid': f[2],
                    'gid': f[3], 'data': body, 'rdev': (f[9], f[10])})


class Tree:
    """The initrd being assembled: destination path -> CpioEntry, parents created on demand."""

    def __init__(self):
        self.entries = {}

    def _parents(self, path):
        parts = path.strip('/').split('/')[:-1]
        for i in range(1, len(parts) + 1):
            p = '/'.join(parts[:i])
            if p not in self.entries:
                self.entries[p] = CpioEntry(p, 'dir', 0o755)

    def dir(self, path, mode=0o755):
        self._parents(path)
        self.entries[path.strip('/')] = CpioEntry(path, 'dir', mode)

    def file(self, path, data, mode=0o644):
        self._parents(path)
        self.entries[path.strip('/')] = CpioEntry(path, 'file', mode, data)

    def symlink(self, path, target):
        self._parents(path)
        self.entries[path.strip('/')] = CpioEntry(path, 'symlink', 0o777, target)

    def chr(self, path, major, minor, mode=0o600):
        self._parents(path)
        self.entries[path.strip('/')] = CpioEntry(path, 'chr', mode, rdev=(major, minor))

    def __contains__(self, path):
        return path.strip('/') in self.entries

    def cpio(self):
        buf = io.BytesIO()
        write_cpio(self.entries.values(), buf)
        return buf.getvalue()


# ---------------------------------------------------------------------------------------------
# kernel: version, vmlinux extraction

def bzimage_version(data):
    """The kernel release ("6.1.0-57-amd64") from a bzImage's setup header, or None."""
    if len(data) < 0x210 or data[0x202:0x206] != b'HdrS':
        return None
    ptr = struct.unpack_from('<H', data, 0x20E)[0]
    if not ptr:
        return None
    start = ptr + 0x200
    end = data.find(b'\0', start, start + 256)
    if end < 0:
        return None
    text = data[start:end].decode('ascii', 'replace').split()
    return text[0] if text else None


def _decompress(kind, blob):
    if kind == 'xz':
        return lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(blob)
    if kind == 'gzip':
        return zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(blob)
    if kind == 'zstd':
        zstd = shutil.which('zstd')
        if not zstd:
            raise ImageError('zstd payload but no zstd tool')
        proc = subprocess.run([zstd, '-d', '-c', '-q'], input=blob, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, check=False)
        # Trailing bytes after the frame make zstd complain; the frame itself is what counts.
        if not proc.stdout:
            raise ImageError('zstd: %s' % proc.stderr.decode('utf-8', 'replace').strip())
        return proc.stdout
    raise ImageError('unknown compression %s' % kind)


def extract_vmlinux(data):
    """Return ``(elf_bytes, method)`` from a bzImage (bytes), or raise ImageError.

    The setup header's payload_offset/payload_length locate the compressed kernel exactly
    (boot protocol 2.08+); failing that, every xz/gzip/zstd magic in the file is tried. The
    result must start with the ELF magic.
    """
    if data[:4] == _ELF_MAGIC:
        return data, 'already-elf'
    candidates = []
    if len(data) > 0x250 and data[0x202:0x206] == b'HdrS':
        setup_sects = data[0x1F1] or 4
        poff, plen = struct.unpack_from('<II', data, 0x248)
        start = (setup_sects + 1) * 512 + poff
        if plen and start + plen <= len(data):
            for kind, magic in _MAGICS:
                if data[start:start + len(magic)] == magic:
                    candidates.append((kind, start, start + plen))
    for kind, magic in _MAGICS:
        pos = data.find(magic)
        while pos >= 0:
            candidates.append((kind, pos, len(data)))
            pos = data.find(magic, pos + 1)
    errors = []
    for kind, start, end in candidates:
        try:
            out = _decompress(kind, data[start:end])
        except (lzma.LZMAError, zlib.error, EOFError, ImageError) as err:
            errors.append('%s@%d: %s' % (kind, start, err))
            continue
        if out[:4] == _ELF_MAGIC:
            return out, '%s@%d' % (kind, start)
        errors.append('%s@%d: not an ELF image' % (kind, start))
    raise ImageError('no ELF vmlinux found in the kernel image (%s)' % (
        '; '.join(errors[:6]) or 'no compressed payload found'))


# ---------------------------------------------------------------------------------------------
# kernel: where it comes from

def find_host_kernel(boot_dir='/boot', modules_root='/lib/modules'):
    """``(vmlinuz, modules_dir, version)`` of the host's kernel, or None.

    Prefers the running kernel, then the newest version that has its modules directory.
    """
    found = []
    try:
        names = os.listdir(boot_dir)
    except OSError:
        return None
    for name in names:
        if not name.startswith('vmlinuz-'):
            continue
        ver = name[len('vmlinuz-'):]
        mdir = os.path.join(modules_root, ver)
        if os.path.isdir(os.path.join(mdir, 'kernel')):
            found.append((ver, os.path.join(boot_dir, name), mdir))
    if not found:
        return None
    running = os.uname().release
    for ver, path, mdir in found:
        if ver == running:
            return path, mdir, ver
    ver, path, mdir = max(found, key=lambda t: _version_key(t[0]))
    return path, mdir, ver


def _apt_env():
    env = dict(os.environ)
    env['DEBIAN_FRONTEND'] = 'noninteractive'
    env['LC_ALL'] = 'C'
    return env


def _resolve_kernel_package(meta=KERNEL_PACKAGE):
    out = subprocess.run(['apt-cache', 'depends', meta], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, env=_apt_env(), check=False)
    text = out.stdout.decode('utf-8', 'replace')
    m = re.search(r'Depends:\s*(linux-image-\S+)', text)
    if out.returncode != 0 or not m:
        return None
    return m.group(1)


def package_kernel(cache_dir, progress=None, meta=KERNEL_PACKAGE):
    """Fetch and unpack the distribution kernel package under ``cache_dir``.

    Returns ``(vmlinuz, modules_dir, version)``. The package is downloaded with
    ``apt-get download`` (``apt-get update`` only when the lists do not know it) and unpacked
    with ``dpkg-deb -x``: nothing is installed on the host.
    """
    if not shutil.which('apt-get') or not shutil.which('dpkg-deb'):
        raise ImageError('the host has no /boot/vmlinuz-* and no apt-get/dpkg-deb to fetch %s; '
                         'pass kernel= and modules_dir=' % meta)
    os.makedirs(cache_dir, exist_ok=True)
    pkg = _resolve_kernel_package(meta)
    updated = False
    if pkg is None:
        _report(progress, 'apt-get update (no package lists know %s)' % meta)
        _run(['apt-get', 'update'], what='apt-get update')
        updated = True
        pkg = _resolve_kernel_package(meta)
        if pkg is None:
            raise ImageError('cannot resolve %s to a concrete kernel package' % meta)
    ver = pkg[len('linux-image-'):]
    root = os.path.join(cache_dir, 'kernel-%s' % ver)
    vmlinuz = os.path.join(root, 'boot', 'vmlinuz-%s' % ver)
    mdir = os.path.join(root, 'lib', 'modules', ver)
    if os.path.isfile(vmlinuz) and os.path.isdir(mdir):
        return vmlinuz, mdir, ver
    debs = sorted(n for n in os.listdir(cache_dir) if n.startswith(pkg + '_') and n.endswith('.deb'))
    if not debs:
        _report(progress, 'apt-get download %s' % pkg)
        proc = subprocess.run(['apt-get', 'download', pkg], cwd=cache_dir, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, env=_apt_env(), check=False)
        if proc.returncode != 0 and not updated:
            _report(progress, 'apt-get update (download failed)')
            _run(['apt-get', 'update'], what='apt-get update')
            proc = subprocess.run(['apt-get', 'download', pkg], cwd=cache_dir,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_apt_env(),
                                  check=False)
        if proc.returncode != 0:
            raise ImageError('apt-get download %s failed: %s' % (
                pkg, proc.stderr.decode('utf-8', 'replace').strip()[-2000:]))
        debs = sorted(n for n in os.listdir(cache_dir)
                      if n.startswith(pkg + '_') and n.endswith('.deb'))
        if not debs:
            raise ImageError('apt-get download %s left no .deb in %s' % (pkg, cache_dir))
    deb = os.path.join(cache_dir, debs[-1])
    _report(progress, 'unpacking %s' % os.path.basename(deb))
    tmp = tempfile.mkdtemp(dir=cache_dir, prefix='.kernel-%s-' % ver)
    try:
        _run(['dpkg-deb', '-x', deb, tmp], what='dpkg-deb -x %s' % deb)
        if os.path.isdir(root):
            shutil.rmtree(root)
        os.rename(tmp, root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if not os.path.isfile(vmlinuz) or not os.path.isdir(mdir):
        raise ImageError('%s holds no boot/vmlinuz-%s or lib/modules/%s' % (deb, ver, ver))
    return vmlinuz, mdir, ver


# ---------------------------------------------------------------------------------------------
# kernel modules

def module_name(path):
    """``kernel/net/9p/9pnet_virtio.ko.xz`` -> ``9pnet_virtio`` (dashes folded to underscores)."""
    base = os.path.basename(path)
    for suf in _KO_SUFFIXES:
        if base.endswith(suf):
            base = base[:-len(suf)]
            break
    return base.replace('-', '_')


def parse_modules_dep(text):
    """``modules.dep`` text -> {module path: [dependency paths]} (paths as written there)."""
    deps = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or ':' not in line:
            continue
        mod, rest = line.split(':', 1)
        deps[mod.strip()] = rest.split()
    return deps


def module_load_order(deps, wanted, builtin=()):
    """Load order (dependencies first) of the closure of ``wanted`` module names.

    ``deps`` maps a module path to the paths it depends on; ``builtin`` names modules built
    into the kernel (skipped). An unknown module is an ImageError.
    """
    by_name = {module_name(p): p for p in deps}
    builtin = {b.replace('-', '_') for b in builtin}
    order, state = [], {}

    def visit(path, chain):
        st = state.get(path)
        if st == 'done':
            return
        if st == 'visiting':
            raise ImageError('module dependency cycle: %s' % ' -> '.join(chain + [path]))
        state[path] = 'visiting'
        for dep in deps.get(path, ()):
            if dep not in deps and module_name(dep) in by_name:
                dep = by_name[module_name(dep)]
            visit(dep, chain + [path])
        state[path] = 'done'
        order.append(path)

    for name in wanted:
        key = name.replace('-', '_')
        if key in by_name:
            visit(by_name[key], [])
        elif key in builtin:
            continue
        else:
            raise ImageError('kernel module %s not found (neither a module nor built in)' % name)
    return order


def read_module(path):
    """The bytes of a kernel module, decompressed when it is .ko.xz/.ko.zst/.ko.gz."""
    data = _read(path)
    if path.endswith('.xz'):
        return lzma.decompress(data)
    if path.endswith('.gz'):
        return gzip.decompress(data)
    if path.endswith('.zst'):
        return _decompress('zstd', data)
    return data


def modinfo(data):
    """The ``.modinfo`` fields of a module ELF (bytes) as {key: [values]}."""
    if data[:4] != _ELF_MAGIC or data[4] != 2:
        raise ImageError('not an ELF64 kernel module')
    shoff = struct.unpack_from('<Q', data, 0x28)[0]
    shentsize, shnum, shstrndx = struct.unpack_from('<HHH', data, 0x3A)

    def section(i):
        name, _typ, _flags, _addr, off, size = struct.unpack_from('<IIQQQQ', data, shoff + i * shentsize)
        return name, off, size

    stroff = section(shstrndx)[1]
    fields = {}
    for i in range(shnum):
        name, off, size = section(i)
        end = data.find(b'\0', stroff + name)
        if data[stroff + name:end] != b'.modinfo':
            continue
        for item in data[off:off + size].split(b'\0'):
            if b'=' in item:
                k, v = item.decode('utf-8', 'replace').split('=', 1)
                fields.setdefault(k, []).append(v)
    return fields


def module_deps(modules_dir, wanted):
    """{module path relative to modules_dir: [dependency paths]} covering ``wanted``.

    From ``modules.dep`` when present; otherwise (a kernel package unpacked without depmod)
    from each module's own ``.modinfo`` ``depends=`` field, read only for the closure.
    """
    dep_file = os.path.join(modules_dir, 'modules.dep')
    if os.path.isfile(dep_file):
        with open(dep_file, encoding='utf-8') as f:
            return parse_modules_dep(f.read())
    index = {}
    for top, _dirs, files in os.walk(os.path.join(modules_dir, 'kernel')):
        for fn in files:
            if fn.endswith(_KO_SUFFIXES):
                rel = os.path.relpath(os.path.join(top, fn), modules_dir)
                index.setdefault(module_name(rel), rel)
    deps, todo = {}, [w.replace('-', '_') for w in wanted]
    while todo:
        name = todo.pop()
        rel = index.get(name)
        if rel is None or rel in deps:
            continue
        info = modinfo(read_module(os.path.join(modules_dir, rel)))
        names = [d.replace('-', '_') for v in info.get('depends', []) for d in v.split(',') if d]
        deps[rel] = [index[n] for n in names if n in index]
        todo.extend(names)
    return deps


def module_builtins(modules_dir):
    try:
        with open(os.path.join(modules_dir, 'modules.builtin'), encoding='utf-8') as f:
            return [module_name(line.strip()) for line in f if line.strip()]
    except OSError:
        return []


# ---------------------------------------------------------------------------------------------
# python runtime

_PY_PROBE = r'''
import importlib.util, json, modulefinder, os, py_compile, sys, sysconfig
agent, stage = sys.argv[1], sys.argv[2]
extra = sys.argv[3].split(',') if sys.argv[3] else []
excludes = sys.argv[4].split(',') if sys.argv[4] else []
stdlib = sysconfig.get_paths()['stdlib']
path = [p for p in sys.path if os.path.isdir(p)]
mf = modulefinder.ModuleFinder(path=path, excludes=excludes)
mf.run_script(agent)
for name in extra:
    mf.import_hook(name)
files = {}
for name, mod in mf.modules.items():
    fn = mod.__file__
    if not fn or name == '__main__':
        continue
    fn = os.path.abspath(fn)
    pyc = None
    if fn.endswith('.py'):
        pyc_path = importlib.util.cache_from_source(fn)
        pyc = os.path.join(stage, pyc_path.lstrip('/'))
        py_compile.compile(fn, cfile=pyc, dfile=fn, doraise=True,
                           invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)
        pyc = [pyc_path, pyc]
    files[name] = [fn, pyc]
agent_pyc = os.path.join(stage, 'agent.pyc')
py_compile.compile(agent, cfile=agent_pyc, dfile=sys.argv[5], doraise=True,
                   invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)
files['__main__'] = [sys.argv[5], [sys.argv[5] + 'c', agent_pyc]]
print(json.dumps({'stdlib': stdlib, 'version': '%d.%d' % sys.version_info[:2],
                  'executable': os.path.realpath(sys.executable), 'files': files,
                  'missing': sorted(mf.badmodules)}))
'''


def python_closure(python, agent_file, stage_dir, extra=EXTRA_STDLIB, excludes=STDLIB_EXCLUDES):
    """Run ``python`` itself to find the agent's stdlib closure and byte-compile it.

    Returns the probe's dict: stdlib, version, executable, files {module: [source, [pyc dest,
    pyc staged] | None]}. The .pyc files use unchecked-hash invalidation so they stay valid in
    an archive whose mtimes are all 0.
    """
    proc = subprocess.run([python, '-I', '-S', '-c', _PY_PROBE, agent_file, stage_dir, ','.join(extra),
                           ','.join(excludes), AGENT_PATH],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, check=False)
    if proc.returncode != 0:
        raise ImageError('finding the agent\'s stdlib closure with %s failed: %s' % (
            python, proc.stderr.decode('utf-8', 'replace').strip()[-2000:]))
    return json.loads(proc.stdout.decode('utf-8'))


def ldd_closure(paths):
    """Shared libraries (and the dynamic loader) the ELF files in ``paths`` need.

    Returns {path as the loader resolves it: real file}. Static binaries need nothing.
    """
    libs = {}
    for path in paths:
        proc = subprocess.run(['ldd', path], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              env=dict(os.environ, LC_ALL='C'), check=False)
        text = proc.stdout.decode('utf-8', 'replace')
        if proc.returncode != 0:
            if 'not a dynamic executable' in text + proc.stderr.decode('utf-8', 'replace'):
                continue
            raise ImageError('ldd %s failed: %s' % (path, proc.stderr.decode('utf-8', 'replace')))
        for line in text.splitlines():
            line = line.strip()
            m = re.match(r'\S+\s+=>\s+(/\S+)\s+\(0x', line) or re.match(r'(/\S+)\s+\(0x', line)
            if m:
                libs[m.group(1)] = os.path.realpath(m.group(1))
            elif '=> not found' in line:
                raise ImageError('ldd %s: %s' % (path, line))
    return libs


# ---------------------------------------------------------------------------------------------
# the agent

def agent_source():
    """The in-guest agent's source, read through the package loader (works zipped too)."""
    try:
        data = pkgutil.get_data(__package__ or __name__.rpartition('.')[0], 'agent.py')
    except (OSError, ImportError, ValueError) as err:
        raise ImageError('cannot read the guest agent (guest/agent.py): %s' % err)
    if not data:
        raise ImageError('cannot read the guest agent (guest/agent.py)')
    return data


def _pack_agent_with_module_utils():  # pragma: no cover - never called
    """Never called: names guest/agent.py so Ansible's module_utils packer ships it too."""
    from ansible_collections.kata.runtime.plugins.module_utils.kata.guest import agent  # noqa: F401


# ---------------------------------------------------------------------------------------------
# the build

def _report(progress, msg):
    if progress is not None:
        progress(msg)


def _prepare_kernel(out_dir, kernel, modules_dir, progress):
    """Decide the vmlinuz, modules dir, version and source ('host' | 'package' | 'given')."""
    cache = os.path.join(out_dir, 'cache')
    if kernel is not None:
        if not os.path.isfile(kernel):
            raise ImageError('kernel %s does not exist' % kernel)
        data = _read(kernel)
        ver = bzimage_version(data)
        if modules_dir is None:
            if ver is None:
                raise ImageError('cannot tell the version of %s; pass modules_dir' % kernel)
            modules_dir = os.path.join('/lib/modules', ver)
        if ver is None:
            ver = os.path.basename(os.path.normpath(modules_dir))
        return kernel, modules_dir, ver, 'given'
    host = find_host_kernel()
    if host is not None:
        vmlinuz, mdir, ver = host
        return vmlinuz, modules_dir or mdir, ver, 'host'
    vmlinuz, mdir, ver = package_kernel(cache, progress)
    return vmlinuz, modules_dir or mdir, ver, 'package'


def _build_kernel(out_dir, vmlinuz, progress):
    """Write the (extracted) kernel; returns (name, sha, size, extracted, method, changed)."""
    cache = os.path.join(out_dir, 'cache')
    src_sha = _sha256_file(vmlinuz)
    index = os.path.join(cache, 'kernel-%s.json' % src_sha[:32])
    try:
        with open(index, encoding='utf-8') as f:
            rec = json.load(f)
        if os.path.isfile(os.path.join(out_dir, rec['name'])):
            return rec['name'], rec['sha256'], rec['size'], rec['extracted'], rec['method'], False
    except (OSError, ValueError, KeyError):
        pass
    data = _read(vmlinuz)
    try:
        out, method = extract_vmlinux(data)
        extracted, prefix = True, 'vmlinux'
    except ImageError as err:
        _report(progress, 'vmlinux extraction failed, using the vmlinuz: %s' % err)
        out, method, extracted, prefix = data, 'vmlinuz (%s)' % err, False, 'vmlinuz'
    sha = _sha256(out)
    name = '%s-%s' % (prefix, sha[:16])
    path = os.path.join(out_dir, name)
    changed = False
    if not (os.path.isfile(path) and os.path.getsize(path) == len(out) and _sha256_file(path) == sha):
        _report(progress, 'writing %s (%s)' % (name, method))
        _write_atomic(path, out)
        changed = True
    rec = {'name': name, 'sha256': sha, 'size': len(out), 'extracted': extracted, 'method': method,
           'source': vmlinuz}
    _write_atomic(index, json.dumps(rec, sort_keys=True).encode('utf-8'))
    return name, sha, len(out), extracted, method, changed


def render_init(modules):
    """The /init script for the given module load order (names)."""
    text = INIT_TEMPLATE.replace('@PAGE_REPORTING_ORDER@', str(PAGE_REPORTING_ORDER))
    for key, val in (('@MODULES@', ' '.join(modules)), ('@SHARED_MOUNT@', SHARED_MOUNT),
                     ('@SHARED_TAG@', SHARED_TAG), ('@OUTPUT_MOUNT@', OUTPUT_MOUNT),
                     ('@OUTPUT_TAG@', OUTPUT_TAG), ('@INIT_MARKER@', INIT_MARKER),
                     ('@AGENT_PATH@', AGENT_PATH), ('@TEMPLATE_FLAG@', contract.TEMPLATE_FLAG)):
        text = text.replace(key, val)
    return text


def _busybox_applets(busybox):
    out = _run([busybox, '--list'], what='%s --list' % busybox)
    return sorted({a.strip() for a in out.split() if re.match(r'^[A-Za-z0-9_.\[-]+$', a.strip())})


def _collect_inputs(modules_dir, kernel_version, modules, busybox, python, agent, extra_files,
                    stage):
    """Everything that goes into the initrd as a list of (dest, kind, mode, source).

    ``source`` is a host path (file), bytes (generated content), a link target (symlink) or a
    (major, minor) pair (chr). Computing this is cheap next to writing the archive; its digest
    keys the build.
    """
    items = []
    # busybox + applets
    if not os.path.isfile(busybox):
        raise ImageError('busybox %s not found (install busybox-static)' % busybox)
    if ldd_closure([busybox]):
        raise ImageError('%s is dynamically linked; the guest needs a static busybox '
                         '(busybox-static)' % busybox)
    items.append(('/bin/busybox', 'file', 0o755, os.path.realpath(busybox)))
    for applet in _busybox_applets(busybox):
        if applet in ('busybox', 'init', 'linuxrc'):
            continue
        items.append(('/bin/' + applet, 'symlink', 0, 'busybox'))
    # kernel modules
    deps = module_deps(modules_dir, modules)
    order = module_load_order(deps, modules, module_builtins(modules_dir))
    names = []
    for rel in order:
        name = module_name(rel)
        names.append(name)
        items.append(('/lib/modules/%s.ko' % name, 'module', 0o644, os.path.join(modules_dir, rel)))
    # python
    if not os.path.isfile(python):
        raise ImageError('python %s not found' % python)
    agent_file = os.path.join(stage, 'agent.py')
    with open(agent_file, 'wb') as f:
        f.write(agent)
    probe = python_closure(python, agent_file, os.path.join(stage, 'pyc'))
    ver = probe['version']
    exe = probe['executable']
    items.append(('/usr/bin/python%s' % ver, 'file', 0o755, exe))
    items.append(('/usr/bin/python3', 'symlink', 0, 'python%s' % ver))
    elves = [exe]
    for mod, (src, pyc) in sorted(probe['files'].items()):
        if mod == '__main__':   # the agent itself, byte-compiled: /opt/kata/agent.pyc
            items.append((pyc[0], 'pyc', 0o644, pyc[1]))
            continue
        if src.endswith('.so'):
            elves.append(src)
            items.append((src, 'file', 0o644, src))
        else:
            items.append((src, 'file', 0o644, src))
        if pyc:
            items.append((pyc[0], 'pyc', 0o644, pyc[1]))
    for dest, real in sorted(ldd_closure(elves).items()):
        items.append((dest, 'file', 0o755, real))
    items.append((AGENT_PATH, 'bytes', 0o755, agent))
    # the rest of the filesystem
    init = render_init(names)
    items.append(('/init', 'bytes', 0o755, init.encode('utf-8')))
    for d, mode in (('/proc', 0o555), ('/sys', 0o555), ('/dev', 0o755), ('/run', 0o755),
                    ('/tmp', 0o1777), ('/root', 0o700), ('/etc', 0o755), ('/sbin', 0o755),
                    ('/usr/sbin', 0o755), ('/var', 0o755), ('/mnt', 0o755)):
        items.append((d, 'dir', mode, None))
    items.append(('/dev/console', 'chr', 0o600, (5, 1)))
    items.append(('/dev/null', 'chr', 0o666, (1, 3)))
    items.append(('/etc/passwd', 'bytes', 0o644, b'root:x:0:0:root:/root:/bin/sh\n'
                  b'nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n'))
    items.append(('/etc/group', 'bytes', 0o644, b'root:x:0:\ntty:x:5:\nnogroup:x:65534:\n'))
    items.append(('/etc/hostname', 'bytes', 0o644, b'kata\n'))
    items.append(('/etc/hosts', 'bytes', 0o644, b'127.0.0.1 localhost kata\n::1 localhost\n'))
    for dest, src in sorted((extra_files or {}).items()):
        mode = None
        if isinstance(src, (tuple, list)):
            src, mode = src
        if isinstance(src, bytes):
            items.append((dest, 'bytes', 0o644 if mode is None else mode, src))
        elif isinstance(src, str) and os.path.isfile(src):
            items.append((dest, 'file', os.stat(src).st_mode & 0o7777 if mode is None else mode, src))
        else:
            raise ImageError('extra_files[%r] must be bytes or an existing file, got %r' % (dest, src))
    return items, names, probe


def _digest_inputs(items, compress):
    h = hashlib.sha256()
    h.update(('kata-initrd %s %s\n' % (BUILDER_VERSION, compress)).encode('utf-8'))
    for dest, kind, mode, src in sorted(items, key=lambda t: t[0]):
        if kind in ('file', 'module'):
            content = _sha256_file(src)
        elif kind == 'pyc':
            content = ''   # derived from the source and the interpreter, both hashed already
        elif kind == 'bytes':
            content = _sha256(src)
        else:
            content = repr(src)
        h.update(('%s\0%s\0%o\0%s\n' % (dest, kind, mode, content)).encode('utf-8'))
    return h.hexdigest()


def _assemble(items):
    tree = Tree()
    for dest, kind, mode, src in items:
        if kind == 'dir':
            tree.dir(dest, mode)
        elif kind == 'symlink':
            tree.symlink(dest, src)
        elif kind == 'chr':
            tree.chr(dest, src[0], src[1], mode)
        elif kind == 'bytes':
            tree.file(dest, src, mode)
        elif kind == 'module':
            tree.file(dest, read_module(src), mode)
        else:
            tree.file(dest, _read(src), mode)
    return tree


def build_initrd(out_dir, modules_dir, kernel_version, modules=DEFAULT_MODULES, busybox='/bin/busybox',
                 python='/usr/bin/python3.11', agent=None, extra_files=None, compress='none',
                 progress=None):
    """Build the initrd into ``out_dir``; returns a dict (see ``build_image``) for it alone."""
    if compress not in ('none', 'gzip'):
        raise ImageError('compress must be none or gzip, not %r' % (compress,))
    cache = os.path.join(out_dir, 'cache')
    os.makedirs(cache, exist_ok=True)
    if agent is None:
        agent_bytes = agent_source()
    elif isinstance(agent, bytes):
        agent_bytes = agent
    else:
        agent_bytes = _read(agent)
    stage = tempfile.mkdtemp(dir=cache, prefix='.stage-')
    try:
        _report(progress, 'collecting initrd inputs')
        items, names, probe = _collect_inputs(modules_dir, kernel_version, modules, busybox, python,
                                              agent_bytes, extra_files, stage)
        digest = _digest_inputs(items, compress)
        index = os.path.join(cache, 'initrd-%s.json' % digest[:32])
        try:
            with open(index, encoding='utf-8') as f:
                rec = json.load(f)
            if os.path.isfile(os.path.join(out_dir, rec['name'])):
                rec['changed'] = False
                return rec
        except (OSError, ValueError, KeyError):
            pass
        _report(progress, 'assembling the initrd (%d entries)' % len(items))
        data = _assemble(items).cpio()
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    if compress == 'gzip':
        buf = io.BytesIO()
        with gzip.GzipFile(filename='', mode='wb', fileobj=buf, mtime=0, compresslevel=6) as gz:
            gz.write(data)
        data = buf.getvalue()
    sha = _sha256(data)
    name = 'kata-initrd-%s.img' % sha[:16]
    path = os.path.join(out_dir, name)
    changed = False
    if not (os.path.isfile(path) and os.path.getsize(path) == len(data) and _sha256_file(path) == sha):
        _report(progress, 'writing %s (%d bytes)' % (name, len(data)))
        _write_atomic(path, data)
        changed = True
    rec = {'name': name, 'sha256': sha, 'size': len(data), 'modules': names, 'compress': compress,
           'python': probe['executable'], 'inputs_digest': digest,
           'stdlib_missing': probe.get('missing', [])}
    _write_atomic(index, json.dumps(rec, sort_keys=True).encode('utf-8'))
    rec['changed'] = changed
    return rec


def build_image(out_dir, kernel=None, modules_dir=None, busybox='/bin/busybox', python='/usr/bin/python3.11',
                extra_files=None, progress=None, modules=DEFAULT_MODULES, agent=None, compress='none'):
    """Build (or find already built) the guest kernel and initrd in ``out_dir``.

    - ``kernel``: a vmlinuz (bzImage) or vmlinux to use; default the host's /boot/vmlinuz-*
      or, when there is none, the distribution kernel package fetched into ``out_dir/cache``.
    - ``modules_dir``: ``/lib/modules/<ver>`` matching the kernel (derived when not given).
    - ``busybox``: a static busybox; ``python``: the interpreter the guest runs the agent with.
    - ``extra_files``: {guest path: host path | bytes | (either, mode)} added to the initrd
      (last, so they may replace generated files such as ``/init``).
    - ``progress``: callable(str) told about slow steps.
    - ``modules``: module names the guest loads (closure added); ``agent``: path or bytes of the
      agent (default guest/agent.py of this package); ``compress``: 'none' or 'gzip'.

    Returns {kernel, initrd (paths of the stable symlinks' targets), kernel_link, initrd_link,
    kernel_version, kernel_source ('host' | 'package' | 'given'), vmlinux_extracted,
    kernel_method, kernel_sha256, initrd_sha256, kernel_size, initrd_size, modules (load order),
    changed}.
    """
    out_dir = os.path.abspath(out_dir)
    try:
        os.makedirs(os.path.join(out_dir, 'cache'), exist_ok=True)
    except OSError as err:
        raise ImageError('cannot create %s: %s' % (out_dir, err))
    vmlinuz, mdir, ver, source = _prepare_kernel(out_dir, kernel, modules_dir, progress)
    if not os.path.isdir(mdir):
        raise ImageError('kernel modules directory %s does not exist' % mdir)
    kname, ksha, ksize, extracted, method, kchanged = _build_kernel(out_dir, vmlinuz, progress)
    irec = build_initrd(out_dir, mdir, ver, modules=modules, busybox=busybox, python=python,
                        agent=agent, extra_files=extra_files, compress=compress, progress=progress)
    klink = os.path.join(out_dir, KERNEL_LINK)
    ilink = os.path.join(out_dir, INITRD_LINK)
    lchanged = _symlink_atomic(kname, klink)
    lchanged = _symlink_atomic(irec['name'], ilink) or lchanged
    return {
        'kernel': os.path.join(out_dir, kname),
        'initrd': os.path.join(out_dir, irec['name']),
        'kernel_link': klink,
        'initrd_link': ilink,
        'kernel_version': ver,
        'kernel_source': source,
        'vmlinux_extracted': extracted,
        'kernel_method': method,
        'kernel_sha256': ksha,
        'initrd_sha256': irec['sha256'],
        'kernel_size': ksize,
        'initrd_size': irec['size'],
        'initrd_compress': irec['compress'],
        'modules': irec['modules'],
        'changed': bool(kchanged or irec['changed'] or lchanged),
    }


# ---------------------------------------------------------------------------------------------
# planning a build without doing it (check mode)

KERNEL_LINK = 'vmlinux'
INITRD_LINK = 'kata-initrd.img'
NEW_BUILD = '(new build)'
IMAGE_KEYS = ('kernel', 'initrd', 'kernel_link', 'initrd_link', 'kernel_version', 'kernel_source',
              'vmlinux_extracted', 'kernel_method', 'kernel_sha256', 'initrd_sha256', 'kernel_size',
              'initrd_size', 'modules')


def readlink_or_none(path):
    try:
        return os.readlink(path)
    except OSError:
        return None


def _load_index(path):
    try:
        with open(path, encoding='utf-8') as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return None


def _output_ok(dest, rec, verify):
    """Is the output named by the cache record ``rec`` there (and intact, with ``verify``)?"""
    if not rec or 'name' not in rec:
        return False
    path = os.path.join(dest, rec['name'])
    if not os.path.isfile(path):
        return False
    if verify:
        return os.path.getsize(path) == rec.get('size') and _sha256_file(path) == rec.get('sha256')
    return True


def plan_image(dest, kernel=None, modules_dir=None, busybox='/bin/busybox', python='/usr/bin/python3.11',
               verify=False):
    """What a build into ``dest`` would do, found without downloading or writing anything.

    The same decisions build_image makes: the kernel and initrd cache records are keyed by the
    checksums of their inputs, and an output is reused when its record and file exist (and,
    with ``verify``, still match their checksums). Returns ``(changed, image, actions,
    links_after)`` where ``image`` has build_image's keys (None where not known yet).
    """
    actions = []
    image = dict.fromkeys(IMAGE_KEYS)
    image['kernel_link'] = os.path.join(dest, KERNEL_LINK)
    image['initrd_link'] = os.path.join(dest, INITRD_LINK)
    after = {'kernel': NEW_BUILD, 'initrd': NEW_BUILD}
    if not os.path.isdir(dest):
        actions.append('would create %s and build the kernel and initrd' % dest)
        return True, image, actions, after
    cache = os.path.join(dest, 'cache')

    # the kernel: given, the host's, or a package that would have to be fetched
    if kernel is None and find_host_kernel() is None:
        pkg = _resolve_kernel_package()
        unpacked = pkg and glob.glob(os.path.join(cache, 'kernel-%s' % pkg[len('linux-image-'):], 'boot', 'vmlinuz-*'))
        if not unpacked:
            actions.append('would download and unpack the kernel package %s into %s'
                           % (pkg or KERNEL_PACKAGE, cache))
            return True, image, actions, after
    vmlinuz, mdir, version, source = _prepare_kernel(dest, kernel, modules_dir, None)
    if not os.path.isdir(mdir):
        raise ImageError('kernel modules directory %s does not exist' % mdir)
    image.update(kernel_version=version, kernel_source=source)

    changed = False
    krec = _load_index(os.path.join(cache, 'kernel-%s.json' % _sha256_file(vmlinuz)[:32]))
    if _output_ok(dest, krec, verify):
        image.update(kernel=os.path.join(dest, krec['name']), kernel_sha256=krec['sha256'],
                     kernel_size=krec['size'], vmlinux_extracted=krec['extracted'],
                     kernel_method=krec['method'])
        after['kernel'] = krec['name']
    else:
        changed = True
        actions.append('would write the kernel from %s' % vmlinuz)

    stage = tempfile.mkdtemp(prefix='kata-image-plan-')
    try:
        items, _names, _probe = _collect_inputs(
            mdir, version, DEFAULT_MODULES, busybox, python,
            agent_source(), None, stage)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    digest = _digest_inputs(items, 'none')
    irec = _load_index(os.path.join(cache, 'initrd-%s.json' % digest[:32]))
    if _output_ok(dest, irec, verify):
        image.update(initrd=os.path.join(dest, irec['name']), initrd_sha256=irec['sha256'],
                     initrd_size=irec['size'], modules=irec.get('modules'))
        after['initrd'] = irec['name']
    else:
        changed = True
        actions.append('would build the initrd (%d entries)' % len(items))

    for key, link in (('kernel', KERNEL_LINK), ('initrd', INITRD_LINK)):
        if after[key] != NEW_BUILD and readlink_or_none(os.path.join(dest, link)) != after[key]:
            changed = True
            actions.append('would point %s at %s' % (link, after[key]))
    return changed, image, actions, after


def forget_build_records(dest):
    """Drop the cache's records of earlier builds so the builder re-derives and verifies every output.

    Only the small JSON records go; downloaded kernel packages stay.
    """
    cache = os.path.join(dest, 'cache')
    for pattern in ('kernel-*.json', 'initrd-*.json'):
        for path in glob.glob(os.path.join(cache, pattern)):
            os.unlink(path)


# ---------------------------------------------------------------------------------------------
# a bare QEMU boot, for tests and benchmarks

def _qemu_opt(value):
    return str(value).replace(',', ',,')


def qemu_argv(kernel, initrd, append=DEFAULT_KERNEL_PARAMS, qemu='qemu-system-x86_64', accel='tcg',
              machine='pc', memory_mb=256, vcpus=1, agent_socket=None, shared_dir=None, output_dir=None):
    """The argv of a bare direct-kernel boot: serial console on stdio, no default devices,
    the agent's virtio-serial port ``agent.0`` on a unix socket (QEMU is the server) and the
    9p shares ``kataShared`` (read-only) and ``kataOutput`` when asked for."""
    argv = [qemu, '-accel', accel, '-M', machine, '-m', str(memory_mb), '-smp', str(vcpus),
            '-nodefaults', '-no-user-config', '-display', 'none', '-serial', 'stdio', '-no-reboot',
            '-kernel', kernel, '-initrd', initrd, '-append', append]
    if agent_socket:
        argv += ['-chardev', 'socket,id=agent0,path=%s,server=on,wait=off' % _qemu_opt(agent_socket),
                 '-device', 'virtio-serial-pci,id=vser0',
                 '-device', 'virtserialport,bus=vser0.0,chardev=agent0,name=%s' % AGENT_PORT_NAME]
    if shared_dir:
        argv += ['-fsdev', 'local,id=fs0,path=%s,security_model=passthrough,readonly=on' % _qemu_opt(shared_dir),
                 '-device', 'virtio-9p-pci,fsdev=fs0,mount_tag=%s' % SHARED_TAG]
    if output_dir:
        argv += ['-fsdev', 'local,id=fs1,path=%s,security_model=none' % _qemu_opt(output_dir),
                 '-device', 'virtio-9p-pci,fsdev=fs1,mount_tag=%s' % OUTPUT_TAG]
    return argv


def probe_boot(kernel, initrd, append=DEFAULT_KERNEL_PARAMS, timeout=90, shared_dir=None, output_dir=None, agent=True,
               qemu='qemu-system-x86_64', accel='tcg', machine='pc', memory_mb=256, requests=None):
    """Boot once with bare QEMU and time it; the VM is killed afterwards.

    Returns {'init_s': seconds to the init's marker on the console, 'agent_s': seconds to the
    agent's reply to a ``ping`` (None when ``agent`` is false), 'ping': that reply,
    'replies': replies to ``requests`` (a list of {"method", "params"} sent after the ping),
    'console': the console text}. Raises ImageError when QEMU exits or the deadline passes
    first, with the console's tail.
    """
    import selectors  # only the probe needs it

    work = tempfile.mkdtemp(prefix='kata-probe-')
    sock_path = os.path.join(work, 'agent.sock')
    argv = qemu_argv(kernel, initrd, append, qemu=qemu, accel=accel, machine=machine,
                     memory_mb=memory_mb, agent_socket=sock_path if agent else None,
                     shared_dir=shared_dir, output_dir=output_dir)
    console = bytearray()
    result = {'init_s': None, 'agent_s': None, 'ping': None, 'replies': [], 'console': ''}
    pending = [{'id': 1, 'method': 'ping', 'params': {}}]
    for i, req in enumerate(requests or (), start=2):
        pending.append({'id': i, 'method': req['method'], 'params': req.get('params', {})})
    want = {r['id'] for r in pending}
    t0 = time.monotonic()
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT)
    except OSError as err:
        shutil.rmtree(work, ignore_errors=True)
        raise ImageError('cannot run %s: %s' % (qemu, err))
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ, 'console')
    conn = None
    rbuf = b''
    try:
        deadline = t0 + timeout
        while time.monotonic() < deadline:
            if agent and conn is None and os.path.exists(sock_path):
                conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                try:
                    conn.connect(sock_path)
                except OSError:
                    conn.close()
                    conn = None
                else:
                    conn.sendall(b''.join(json.dumps(r).encode('utf-8') + b'\n' for r in pending))
                    sel.register(conn, selectors.EVENT_READ, 'agent')
            for ready in sel.select(0.05):
                key = ready[0]
                if key.data == 'console':
                    chunk = os.read(proc.stdout.fileno(), 65536)
                    if not chunk:
                        sel.unregister(proc.stdout)
                        continue
                    console += chunk
                    if result['init_s'] is None and INIT_MARKER.encode('ascii') in console:
                        result['init_s'] = time.monotonic() - t0
                else:
                    chunk = conn.recv(65536)
                    if not chunk:
                        sel.unregister(conn)
                        continue
                    rbuf += chunk
                    while b'\n' in rbuf:
                        line, rbuf = rbuf.split(b'\n', 1)
                        try:
                            msg = json.loads(line.decode('utf-8'))
                        except ValueError:
                            continue
                        if not isinstance(msg, dict) or msg.get('id') not in want:
                            continue
                        want.discard(msg['id'])
                        if msg['id'] == 1:
                            result['agent_s'] = time.monotonic() - t0
                            result['ping'] = msg
                        else:
                            result['replies'].append(msg)
            if result['init_s'] is not None and (not agent or not want):
                break
            if proc.poll() is not None:
                raise ImageError('qemu exited (status %s) before the guest was ready:\n%s' % (
                    proc.returncode, console.decode('utf-8', 'replace')[-3000:]))
        else:
            raise ImageError('the guest was not ready within %ss (init %s, agent %s):\n%s' % (
                timeout, result['init_s'], result['agent_s'],
                console.decode('utf-8', 'replace')[-3000:]))
    finally:
        if conn is not None:
            conn.close()
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        proc.stdout.close()
        sel.close()
        shutil.rmtree(work, ignore_errors=True)
    result['console'] = console.decode('utf-8', 'replace')
    result['replies'].sort(key=lambda m: m['id'])
    return result
