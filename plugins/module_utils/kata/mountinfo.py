# Copyright: kata.runtime contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The mount table of a mount namespace, read from ``/proc/<pid>/mountinfo``.

One reader for the store (never remove into a mount) and the shares (what to unmount, whether
a bind is read-only). The table, not a walk of the tree, is what can see a mount under a
guest-made tree of any depth, and a bind mount from the same file system.
"""

from __future__ import annotations

import os


def _unescape(field):
    # mountinfo escapes space, tab, newline and backslash as \ooo
    out, i = [], 0
    while i < len(field):
        if field[i] == '\\' and len(field[i + 1:i + 4]) == 3 and field[i + 1:i + 4].isdigit():
            out.append(chr(int(field[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return ''.join(out)


def mounts(pid='self'):
    """[(mount point, mount options, fs type, source)] of a process's mount namespace, in
    mount order; empty when /proc is not there."""
    out = []
    try:
        with open('/proc/%s/mountinfo' % pid, 'r', encoding='utf-8', errors='surrogateescape') as f:
            for line in f:
                left, sep, right = line.rstrip('\n').partition(' - ')
                fields, tail = left.split(' '), right.split(' ')
                if not sep or len(fields) < 6 or len(tail) < 2:
                    continue
                out.append((_unescape(fields[4]), fields[5], tail[0], _unescape(tail[1])))
    except OSError:
        pass
    return out


def points(pid='self'):
    """The set of mount points."""
    return {m[0] for m in mounts(pid)}


def under(path, pid='self'):
    """Mount points at or below ``path`` (by its real path), deepest first. With the
    separator, /x/ab is not taken for something under /x/a."""
    top = os.path.realpath(path)
    below = top.rstrip('/') + '/'
    found = {p for p in points(pid) if p == top or p.startswith(below)}
    return sorted(found, key=lambda p: (-p.count('/'), p))


def is_mounted(path, pid='self'):
    return os.path.realpath(path) in points(pid)
