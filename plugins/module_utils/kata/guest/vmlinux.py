# Copyright: kata.runtime contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The guest kernel image: its version from a bzImage's setup header, and the uncompressed ELF
vmlinux extracted from it (QEMU and libvirt boot that directly under CONFIG_PVH, skipping the
in-guest decompression that costs seconds under software emulation)."""

from __future__ import annotations

import lzma
import shutil
import struct
import subprocess
import zlib

from ansible_collections.kata.runtime.plugins.module_utils.kata.errors import ImageError

_MAGICS = (
    ('xz', b'\xfd7zXZ\x00'),
    ('gzip', b'\x1f\x8b\x08'),
    ('zstd', b'\x28\xb5\x2f\xfd'),
)
ELF_MAGIC = b'\x7fELF'


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


def decompress(kind, blob):
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
    if data[:4] == ELF_MAGIC:
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
            out = decompress(kind, data[start:end])
        except (lzma.LZMAError, zlib.error, EOFError, ImageError) as err:
            errors.append('%s@%d: %s' % (kind, start, err))
            continue
        if out[:4] == ELF_MAGIC:
            return out, '%s@%d' % (kind, start)
        errors.append('%s@%d: not an ELF image' % (kind, start))
    raise ImageError('no ELF vmlinux found in the kernel image (%s)' % (
        '; '.join(errors[:6]) or 'no compressed payload found'))
