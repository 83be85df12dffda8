# Copyright: kata.runtime contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Where the guest kernel comes from: given, the host's ``/boot/vmlinuz-<ver>`` with
``/lib/modules/<ver>``, or the distribution's kernel package downloaded with ``apt-get download``
and unpacked with ``dpkg-deb -x`` into the image cache (never installed on the host)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile

from ansible_collections.kata.runtime.plugins.module_utils.kata.errors import ImageError
from ansible_collections.kata.runtime.plugins.module_utils.kata.guest.buildutil import read_file, report, run
from ansible_collections.kata.runtime.plugins.module_utils.kata.guest.vmlinux import bzimage_version

KERNEL_PACKAGE = 'linux-image-amd64'


def _version_key(ver):
    return [int(p) if p.isdigit() else p for p in re.split(r'(\d+)', ver)]


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


def resolve_kernel_package(meta=KERNEL_PACKAGE):
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
    pkg = resolve_kernel_package(meta)
    updated = False
    if pkg is None:
        report(progress, 'apt-get update (no package lists know %s)' % meta)
        run(['apt-get', 'update'], what='apt-get update')
        updated = True
        pkg = resolve_kernel_package(meta)
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
        report(progress, 'apt-get download %s' % pkg)
        proc = subprocess.run(['apt-get', 'download', pkg], cwd=cache_dir, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, env=_apt_env(), check=False)
        if proc.returncode != 0 and not updated:
            report(progress, 'apt-get update (download failed)')
            run(['apt-get', 'update'], what='apt-get update')
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
    report(progress, 'unpacking %s' % os.path.basename(deb))
    tmp = tempfile.mkdtemp(dir=cache_dir, prefix='.kernel-%s-' % ver)
    try:
        run(['dpkg-deb', '-x', deb, tmp], what='dpkg-deb -x %s' % deb)
        if os.path.isdir(root):
            shutil.rmtree(root)
        os.rename(tmp, root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if not os.path.isfile(vmlinuz) or not os.path.isdir(mdir):
        raise ImageError('%s holds no boot/vmlinuz-%s or lib/modules/%s' % (deb, ver, ver))
    return vmlinuz, mdir, ver


def prepare_kernel(out_dir, kernel, modules_dir, progress):
    """Decide the vmlinuz, modules dir, version and source ('host' | 'package' | 'given')."""
    cache = os.path.join(out_dir, 'cache')
    if kernel is not None:
        if not os.path.isfile(kernel):
            raise ImageError('kernel %s does not exist' % kernel)
        data = read_file(kernel)
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
