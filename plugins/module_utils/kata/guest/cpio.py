# Copyright: kata.runtime contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The newc cpio format of the initrd: a deterministic writer, a reader, and ``Tree``, the
initrd being assembled (destination path -> entry, parent directories made on demand)."""

from __future__ import annotations

import io

from ansible_collections.kata.runtime.plugins.module_utils.kata.errors import ImageError


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
