# Copyright: kata.runtime contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The kernel modules the guest loads: the closure and load order of the wanted modules (from
``modules.dep``, or from the modules' own ``.modinfo`` when the package ships no ``modules.dep``),
built-ins skipped, compressed modules read back uncompressed."""

from __future__ import annotations

import gzip
import lzma
import os
import struct

from ansible_collections.kata.runtime.plugins.module_utils.kata.errors import ImageError
from ansible_collections.kata.runtime.plugins.module_utils.kata.guest.buildutil import read_file
from ansible_collections.kata.runtime.plugins.module_utils.kata.guest.vmlinux import ELF_MAGIC, decompress

_KO_SUFFIXES = ('.ko', '.ko.xz', '.ko.zst', '.ko.gz')


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
    data = read_file(path)
    if path.endswith('.xz'):
        return lzma.decompress(data)
    if path.endswith('.gz'):
        return gzip.decompress(data)
    if path.endswith('.zst'):
        return decompress('zstd', data)
    return data


def modinfo(data):
    """The ``.modinfo`` fields of a module ELF (bytes) as {key: [values]}."""
    if data[:4] != ELF_MAGIC or data[4] != 2:
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
