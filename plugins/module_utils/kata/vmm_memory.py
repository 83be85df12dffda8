# Copyright: kata.runtime contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Host memory a VMM holds and no longer needs: its mapped copies of the kernel and initrd.

QEMU maps the kernel and initrd files and keeps the mappings for the life of the VM (to load
them again on a guest reset). Once the guest runs, those pages are never read again: our
domains are destroyed on reboot, never reset. Yet each one counts in the VMM's resident set
(~77 MiB for the Debian kernel and our initrd, more than half of a 128 MiB guest's VMM).

``release_file_pages(pid, paths)`` asks the kernel to page them out of that process
(``process_madvise(MADV_PAGEOUT)``, Linux 5.10 or later, root): the VMM's view of the files is
unchanged, a later read faults the pages back in from the file. Then it hints the files back
into the page cache (``POSIX_FADV_WILLNEED``), where they are shared by every VM booting the same
image instead of being charged to one of them. Best effort by design: any failure is returned
as a reason, never raised, and never stops a sandbox from starting.
"""

from __future__ import annotations

import ctypes
import errno
import os

MADV_PAGEOUT = 21
# The same numbers on every architecture (the unified syscall table, Linux >= 5.1)
SYS_PIDFD_OPEN = 434
SYS_PROCESS_MADVISE = 440
# process_madvise takes at most UIO_MAXIOV ranges in one call
MAX_RANGES = 1024


class _IoVec(ctypes.Structure):
    _fields_ = [('iov_base', ctypes.c_void_p), ('iov_len', ctypes.c_size_t)]


def file_mappings(pid, paths):
    """``[(start, length, resident_bytes)]`` of the mappings of the files at ``paths`` (exact,
    resolved paths) in process ``pid``, read from ``/proc/<pid>/smaps`` (the host kernel's)."""
    wanted = set(paths)
    found = []
    current = None
    with open('/proc/%d/smaps' % pid, encoding='utf-8', errors='replace') as handle:
        for line in handle:
            head, _sep, rest = line.partition(' ')
            if '-' in head and not head.endswith(':'):
                current = None
                fields = rest.split(None, 4)
                if len(fields) == 5 and fields[4].rstrip('\n') in wanted:
                    start, end = (int(x, 16) for x in head.split('-'))
                    current = [start, end - start, 0]
                    found.append(current)
            elif current is not None and head == 'Rss:':
                current[2] = int(rest.split()[0]) * 1024
    return [tuple(m) for m in found]


def _syscall(libc, *args):
    res = libc.syscall(*args)
    if res < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return res


def release_file_pages(pid, paths):
    """Page the mappings of ``paths`` out of process ``pid``.

    Returns ``(released_bytes, reason)``: the resident bytes of those mappings before, and
    None; or 0 and why nothing was done (old kernel, no permission, no such mapping).
    """
    paths = [os.path.realpath(p) for p in paths]  # the files QEMU opened, not our links to them
    try:
        ranges = file_mappings(pid, paths)[:MAX_RANGES]
    except (OSError, ValueError) as err:
        return 0, 'cannot read the mappings of process %s: %s' % (pid, err)
    resident = sum(r[2] for r in ranges)
    if not resident:
        return 0, 'process %s has no resident pages of %s' % (pid, ', '.join(paths))
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        pidfd = _syscall(libc, SYS_PIDFD_OPEN, ctypes.c_int(pid), ctypes.c_uint(0))
    except (OSError, AttributeError) as err:
        return 0, 'cannot open process %s: %s' % (pid, err)
    try:
        iov = (_IoVec * len(ranges))(*[_IoVec(start, length) for start, length, _rss in ranges])
        _syscall(libc, SYS_PROCESS_MADVISE, ctypes.c_int(pidfd), iov, ctypes.c_size_t(len(ranges)),
                 ctypes.c_int(MADV_PAGEOUT), ctypes.c_uint(0))
    except OSError as err:
        if err.errno == errno.ENOSYS:
            return 0, 'this kernel has no process_madvise (Linux 5.10 or later has)'
        return 0, 'process_madvise on process %s failed: %s' % (pid, err.strerror)
    finally:
        os.close(pidfd)
    for path in paths:
        _prefetch(path)
    return resident, None


def _prefetch(path):
    """Ask for ``path`` to be read back into the page cache, in the background."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
    except OSError:
        pass
    finally:
        os.close(fd)
