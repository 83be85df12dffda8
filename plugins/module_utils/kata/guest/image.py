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
  runtime (interpreter, its shared libraries, the stdlib closure of the agent), the agent
  at ``/opt/kata/agent.py``, started by ``/init``, and next to it the containers' init
  ``exec_init.py``.
- stable symlinks ``<out_dir>/vmlinux`` and ``<out_dir>/kata-initrd.img`` (replaced
  atomically).

The kernel comes from the host (``/boot/vmlinuz-<ver>`` with ``/lib/modules/<ver>``) or, when
the host has none, from the distribution's kernel package, downloaded with ``apt-get download``
and unpacked with ``dpkg-deb -x`` under ``<out_dir>/cache`` (never installed on the host).

This file decides what goes into the image and builds (or plans) it; each step lives in a file
of its own: ``kernel.py`` (where the kernel comes from), ``vmlinux.py`` (its version, the ELF
extraction), ``kmod.py`` (module closure and load order), ``pyruntime.py`` (the interpreter's
closure), ``cpio.py`` (the archive), ``buildutil.py`` (hashing, atomic writes, tools).
"""

from __future__ import annotations

import glob
import gzip
import hashlib
import io
import os
import pkgutil
import re
import shutil
import tempfile

from ansible_collections.kata.runtime.plugins.module_utils.kata.errors import ImageError
from ansible_collections.kata.runtime.plugins.module_utils.kata.guest import cache, contract
from ansible_collections.kata.runtime.plugins.module_utils.kata.guest.buildutil import (
    read_file,
    report,
    run,
    sha256,
    sha256_file,
    symlink_atomic,
    write_atomic,
)
from ansible_collections.kata.runtime.plugins.module_utils.kata.guest.cpio import Tree
from ansible_collections.kata.runtime.plugins.module_utils.kata.guest.kernel import (
    KERNEL_PACKAGE,
    find_host_kernel,
    prepare_kernel,
    resolve_kernel_package,
)
from ansible_collections.kata.runtime.plugins.module_utils.kata.guest.kmod import (
    module_builtins,
    module_deps,
    module_load_order,
    module_name,
    read_module,
)
from ansible_collections.kata.runtime.plugins.module_utils.kata.guest.pyruntime import ldd_closure, python_closure
from ansible_collections.kata.runtime.plugins.module_utils.kata.guest.vmlinux import extract_vmlinux

# Bump when the layout of the initrd changes, so an old cached build is not reused.
BUILDER_VERSION = '2'

# Modules the guest needs: the virtio PCI transport, the agent's virtio-serial port, the
# 9p shared directory, the balloon's free page reporting and the sandbox's NIC. Their dependencies are resolved
# from modules.dep / .modinfo.
DEFAULT_MODULES = ('virtio_pci', 'virtio_console', '9pnet_virtio', '9p', 'overlay', 'virtio_balloon', 'virtio_net')
# Free page reporting hands back free blocks of 2**order pages. Linux 6.1 sets the order to the
# pageblock (2 MiB) when the driver registers, overriding the command line, and then reports
# nothing while a zone has less than 64 MiB free above its watermark: never, in a small guest.
# At order 5 (128 KiB blocks) a 128 MiB guest gives back ~23 MiB after boot (docs/benchmarks.md).
PAGE_REPORTING_ORDER = 5

# The names /init shares with the host and the agent (9p tags, mount points and options, the
# template flag, the marker) come from guest/contract.py.
AGENT_PATH = '/opt/kata/agent.py'
# The containers' init, where the agent looks for it: next to itself.
EXEC_INIT_PATH = '/opt/kata/exec_init.py'

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
    if mount -t 9p -o "@NINEP_OPTIONS@,$3" "$1" "$2"; then
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
        @SHARED_TAG@) mount_share @SHARED_TAG@ @SHARED_MOUNT@ @SHARED_OPTIONS@ ;;
        @OUTPUT_TAG@) mount_share @OUTPUT_TAG@ @OUTPUT_MOUNT@ @OUTPUT_OPTIONS@ ;;
        @VOLUMES_TAG@) mount_share @VOLUMES_TAG@ @VOLUMES_MOUNT@ @VOLUMES_OPTIONS@ ;;
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
# the agent

def _guest_source(name, what):
    """The source of guest/``name``, read through the package loader (works zipped too)."""
    try:
        data = pkgutil.get_data(__package__ or __name__.rpartition('.')[0], name)
    except (OSError, ImportError, ValueError) as err:
        raise ImageError('cannot read the guest %s (guest/%s): %s' % (what, name, err))
    if not data:
        raise ImageError('cannot read the guest %s (guest/%s)' % (what, name))
    return data


def agent_source():
    """The in-guest agent's source."""
    return _guest_source('agent.py', 'agent')


def exec_init_source():
    """The source of the containers' init the agent runs (guest/exec_init.py)."""
    return _guest_source('exec_init.py', 'container init')


def _pack_agent_with_module_utils():  # pragma: no cover - never called
    """Never called: names guest/agent.py and guest/exec_init.py so Ansible's module_utils
    packer ships them too."""
    from ansible_collections.kata.runtime.plugins.module_utils.kata.guest import agent, exec_init  # noqa: F401


# ---------------------------------------------------------------------------------------------
# the build

def _build_kernel(out_dir, vmlinuz, progress):
    """Write the (extracted) kernel; returns (name, sha, size, extracted, method, changed)."""
    src_sha = sha256_file(vmlinuz)
    rec = cache.lookup(out_dir, 'kernel', src_sha)
    if rec is not None:
        return rec['name'], rec['sha256'], rec['size'], rec['extracted'], rec['method'], False
    data = read_file(vmlinuz)
    try:
        out, method = extract_vmlinux(data)
        extracted, prefix = True, 'vmlinux'
    except ImageError as err:
        report(progress, 'vmlinux extraction failed, using the vmlinuz: %s' % err)
        out, method, extracted, prefix = data, 'vmlinuz (%s)' % err, False, 'vmlinuz'
    sha = sha256(out)
    name = '%s-%s' % (prefix, sha[:16])
    path = os.path.join(out_dir, name)
    changed = False
    if not (os.path.isfile(path) and os.path.getsize(path) == len(out) and sha256_file(path) == sha):
        report(progress, 'writing %s (%s)' % (name, method))
        write_atomic(path, out)
        changed = True
    rec = {'name': name, 'sha256': sha, 'size': len(out), 'extracted': extracted, 'method': method,
           'source': vmlinuz}
    cache.save(out_dir, 'kernel', src_sha, rec)
    return name, sha, len(out), extracted, method, changed


def render_init(modules):
    """The /init script for the given module load order (names)."""
    text = INIT_TEMPLATE.replace('@PAGE_REPORTING_ORDER@', str(PAGE_REPORTING_ORDER))
    for key, val in (('@MODULES@', ' '.join(modules)), ('@AGENT_PATH@', AGENT_PATH)):
        text = text.replace(key, val)
    for name in ('NINEP_OPTIONS', 'SHARED_TAG', 'SHARED_MOUNT', 'SHARED_OPTIONS', 'OUTPUT_TAG',
                 'OUTPUT_MOUNT', 'OUTPUT_OPTIONS', 'VOLUMES_TAG', 'VOLUMES_MOUNT', 'VOLUMES_OPTIONS',
                 'TEMPLATE_FLAG', 'INIT_MARKER'):
        text = text.replace('@%s@' % name, getattr(contract, name))
    return text


def _busybox_applets(busybox):
    out = run([busybox, '--list'], what='%s --list' % busybox)
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
    probe = python_closure(python, agent_file, AGENT_PATH, os.path.join(stage, 'pyc'))
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
    items.append((EXEC_INIT_PATH, 'bytes', 0o644, exec_init_source()))
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
            content = sha256_file(src)
        elif kind == 'pyc':
            content = ''   # derived from the source and the interpreter, both hashed already
        elif kind == 'bytes':
            content = sha256(src)
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
            tree.file(dest, read_file(src), mode)
    return tree


def build_initrd(out_dir, modules_dir, kernel_version, modules=DEFAULT_MODULES, busybox='/bin/busybox',
                 python='/usr/bin/python3.11', agent=None, extra_files=None, compress='none',
                 progress=None):
    """Build the initrd into ``out_dir``; returns a dict (see ``build_image``) for it alone."""
    if compress not in ('none', 'gzip'):
        raise ImageError('compress must be none or gzip, not %r' % (compress,))
    cache_dir = os.path.join(out_dir, 'cache')
    os.makedirs(cache_dir, exist_ok=True)
    if agent is None:
        agent_bytes = agent_source()
    elif isinstance(agent, bytes):
        agent_bytes = agent
    else:
        agent_bytes = read_file(agent)
    stage = tempfile.mkdtemp(dir=cache_dir, prefix='.stage-')
    try:
        report(progress, 'collecting initrd inputs')
        items, names, probe = _collect_inputs(modules_dir, kernel_version, modules, busybox, python,
                                              agent_bytes, extra_files, stage)
        digest = _digest_inputs(items, compress)
        rec = cache.lookup(out_dir, 'initrd', digest)
        if rec is not None:
            rec['changed'] = False
            return rec
        report(progress, 'assembling the initrd (%d entries)' % len(items))
        data = _assemble(items).cpio()
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    if compress == 'gzip':
        buf = io.BytesIO()
        with gzip.GzipFile(filename='', mode='wb', fileobj=buf, mtime=0, compresslevel=6) as gz:
            gz.write(data)
        data = buf.getvalue()
    sha = sha256(data)
    name = 'kata-initrd-%s.img' % sha[:16]
    path = os.path.join(out_dir, name)
    changed = False
    if not (os.path.isfile(path) and os.path.getsize(path) == len(data) and sha256_file(path) == sha):
        report(progress, 'writing %s (%d bytes)' % (name, len(data)))
        write_atomic(path, data)
        changed = True
    rec = {'name': name, 'sha256': sha, 'size': len(data), 'modules': names, 'compress': compress,
           'python': probe['executable'], 'inputs_digest': digest,
           'stdlib_missing': probe.get('missing', [])}
    cache.save(out_dir, 'initrd', digest, rec)
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
    vmlinuz, mdir, ver, source = prepare_kernel(out_dir, kernel, modules_dir, progress)
    if not os.path.isdir(mdir):
        raise ImageError('kernel modules directory %s does not exist' % mdir)
    kname, ksha, ksize, extracted, method, kchanged = _build_kernel(out_dir, vmlinuz, progress)
    irec = build_initrd(out_dir, mdir, ver, modules=modules, busybox=busybox, python=python,
                        agent=agent, extra_files=extra_files, compress=compress, progress=progress)
    klink = os.path.join(out_dir, KERNEL_LINK)
    ilink = os.path.join(out_dir, INITRD_LINK)
    lchanged = symlink_atomic(kname, klink)
    lchanged = symlink_atomic(irec['name'], ilink) or lchanged
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
    cache_dir = os.path.join(dest, 'cache')

    # the kernel: given, the host's, or a package that would have to be fetched
    if kernel is None and find_host_kernel() is None:
        pkg = resolve_kernel_package()
        unpacked = pkg and glob.glob(os.path.join(cache_dir, 'kernel-%s' % pkg[len('linux-image-'):], 'boot', 'vmlinuz-*'))
        if not unpacked:
            actions.append('would download and unpack the kernel package %s into %s'
                           % (pkg or KERNEL_PACKAGE, cache_dir))
            return True, image, actions, after
    vmlinuz, mdir, version, source = prepare_kernel(dest, kernel, modules_dir, None)
    if not os.path.isdir(mdir):
        raise ImageError('kernel modules directory %s does not exist' % mdir)
    image.update(kernel_version=version, kernel_source=source)

    changed = False
    krec = cache.lookup(dest, 'kernel', sha256_file(vmlinuz), verify)
    if krec is not None:
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
    irec = cache.lookup(dest, 'initrd', digest, verify)
    if irec is not None:
        image.update(initrd=os.path.join(dest, irec['name']), initrd_sha256=irec['sha256'],
                     initrd_size=irec['size'], modules=irec['modules'])
        after['initrd'] = irec['name']
    else:
        changed = True
        actions.append('would build the initrd (%d entries)' % len(items))

    for key, link in (('kernel', KERNEL_LINK), ('initrd', INITRD_LINK)):
        if after[key] != NEW_BUILD and readlink_or_none(os.path.join(dest, link)) != after[key]:
            changed = True
            actions.append('would point %s at %s' % (link, after[key]))
    return changed, image, actions, after
