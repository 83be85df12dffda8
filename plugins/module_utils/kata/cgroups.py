# Copyright: kata.runtime contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Create and remove cgroup paths (v1, v2, hybrid), confined to the cgroup mounts.

The layout is read from the directory itself, so a temp dir works as the mount in tests:

- ``v2``: ``<root>/cgroup.controllers`` exists; the one hierarchy is ``<root>``.
- ``hybrid``: v1 controller dirs plus ``<root>/unified/cgroup.controllers``.
- ``v1``: controller dirs only (a dir holding ``tasks`` or ``cgroup.procs``).
- ``none``: nothing of the above.

The hierarchies we manage (``mounts()``) are every v1 controller dir except the named
``systemd`` one (that belongs to the init system), plus the unified one. Co-mounted controllers
reachable under several names (``cpu`` -> ``cpu,cpuacct``) are handled once (by realpath).

Paths: an absolute ``cgroupsPath`` is relative to each mount, a relative one goes under
``parent``, an empty one is ``<parent>/<default_name>``. ``..`` is resolved lexically and may
never climb out of its base (the mount for absolute paths, ``parent`` for relative ones); a
path must name a cgroup below its base, never the base itself.

Removal is ``rmdir`` only: the kernel refuses to remove a cgroup that still holds processes or
child cgroups, and nothing else is ever deleted. Leftover processes are moved to the parent
cgroup first; EBUSY is retried for up to ``RMDIR_RETRY`` seconds.
"""

from __future__ import annotations

import errno
import os
import re
import time

from ansible_collections.kata.runtime.plugins.module_utils.kata.errors import (
    CgroupError,
    InvalidArgument,
    KataError,
)

RMDIR_RETRY = 1.0
# Walks of one path when a level vanishes under us (another run collected an empty parent).
_CREATE_ATTEMPTS = 3
_RETRY_PAUSE = 0.05
_NAME_MAX = 255
# the systemd driver's 'slice:prefix:name' form (e.g. 'system.slice:kata:c1')
_SYSTEMD_FORM = re.compile(r'[^/:]*:[^/:]*:[^/:]*')
# v1 named hierarchies we never manage: they belong to the init system
_NAMED_SKIP = ('systemd',)


def _check_segment(segment, what, value):
    if len(segment.encode('utf-8', 'surrogateescape')) > _NAME_MAX:
        raise InvalidArgument(f'{what} {value!r}: component {segment[:40]!r}... is longer than {_NAME_MAX} bytes')


def _parent_parts(parent):
    if not isinstance(parent, str) or '\0' in parent:
        raise InvalidArgument(f'invalid cgroup parent {parent!r}: must be a string without NUL bytes')
    parts = [p for p in parent.split('/') if p not in ('', '.')]
    if not parts or '..' in parts:
        raise InvalidArgument(f"invalid cgroup parent {parent!r}: must name a directory (like 'kata') "
                              "without '..' components")
    for part in parts:
        _check_segment(part, 'invalid cgroup parent', parent)
    return parts


def _is_cgroup_dir(path):
    return os.path.isfile(os.path.join(path, 'tasks')) or os.path.isfile(os.path.join(path, 'cgroup.procs'))


def _inside(path, mount):
    return path.startswith(mount.rstrip('/') + '/')


def detect_layout(root):
    """Return ``(layout, mounts)`` for the cgroup tree at ``root`` (see the module docstring)."""
    try:
        if not os.path.isdir(root):
            return 'none', []
        if os.path.isfile(os.path.join(root, 'cgroup.controllers')):
            return 'v2', [os.path.realpath(root)]
        names = sorted(os.listdir(root))
    except OSError:
        return 'none', []
    v1, seen, unified = [], set(), None
    for name in names:
        path = os.path.join(root, name)
        if not os.path.isdir(path):
            continue
        if name == 'unified' and os.path.isfile(os.path.join(path, 'cgroup.controllers')):
            unified = os.path.realpath(path)
            continue
        if name in _NAMED_SKIP or name.startswith('name=') or not _is_cgroup_dir(path):
            continue
        real = os.path.realpath(path)
        if real not in seen:
            seen.add(real)
            v1.append(real)
    if v1 and unified:
        return 'hybrid', v1 + [unified]
    if v1:
        return 'v1', v1
    return 'none', []


class Cgroups:
    """The cgroup hierarchies under ``root`` and the paths we create in them."""

    def __init__(self, root='/sys/fs/cgroup', parent='kata'):
        if not isinstance(root, str) or '\0' in root or not os.path.isabs(root):
            raise InvalidArgument(f'invalid cgroup root {root!r}: must be an absolute path')
        self.root = os.path.normpath(root)
        self.parent = '/'.join(_parent_parts(parent))
        self.layout, self._mounts = detect_layout(self.root)

    def mounts(self):
        """Absolute roots of the hierarchies we manage, in a stable order."""
        return list(self._mounts)

    # -- paths -----------------------------------------------------------------------------

    def _parts(self, cgroups_path, default_name):
        """Components of the cgroup below each mount root. Raises InvalidArgument."""
        parent = self.parent.split('/')
        if cgroups_path is None or cgroups_path == '':
            if (not isinstance(default_name, str) or default_name in ('', '.', '..')
                    or '/' in default_name or '\0' in default_name):
                raise InvalidArgument(f'invalid cgroup name {default_name!r}: must be a single path component')
            _check_segment(default_name, 'invalid cgroup name', default_name)
            return parent + [default_name]
        if not isinstance(cgroups_path, str):
            raise InvalidArgument(f'invalid cgroups path {cgroups_path!r}: must be a string')
        if '\0' in cgroups_path:
            raise InvalidArgument(f'invalid cgroups path {cgroups_path!r}: contains a NUL byte')
        absolute = cgroups_path.startswith('/')
        if not absolute and _SYSTEMD_FORM.fullmatch(cgroups_path):
            raise InvalidArgument(
                f"cgroups path {cgroups_path!r} uses the systemd 'slice:prefix:name' form, which is not "
                f"supported: use a cgroupfs path such as '/{self.parent}/<name>' or a relative one")
        base = [] if absolute else parent
        parts = list(base)
        for segment in cgroups_path.split('/'):
            if segment in ('', '.'):
                continue
            if segment == '..':
                if len(parts) <= len(base):
                    where = 'the cgroup mount' if absolute else f'the cgroup parent {self.parent!r}'
                    raise InvalidArgument(f"invalid cgroups path {cgroups_path!r}: '..' climbs out of {where}")
                parts.pop()
                continue
            _check_segment(segment, 'invalid cgroups path', cgroups_path)
            parts.append(segment)
        if len(parts) == len(base):
            where = 'the cgroup mount root' if absolute else f'the cgroup parent {self.parent!r}'
            raise InvalidArgument(f'invalid cgroups path {cgroups_path!r}: names {where} itself, '
                                  'not a cgroup of its own')
        return parts

    def resolve(self, cgroups_path, default_name):
        """Absolute cgroup dirs, one per managed hierarchy, for ``cgroups_path``."""
        parts = self._parts(cgroups_path, default_name)
        if not self._mounts:
            raise CgroupError(f'no cgroup hierarchy found under {self.root} (layout: none); '
                              f'cannot place cgroups path {cgroups_path!r}')
        dirs = []
        for mount in self._mounts:
            path = os.path.join(mount, *parts)
            real = os.path.realpath(path)
            if not _inside(real, mount):
                raise InvalidArgument(f'invalid cgroups path {cgroups_path!r}: {path} resolves to {real}, '
                                      f'outside the cgroup mount {mount}')
            dirs.append(path)
        return dirs

    def _check_dir(self, path):
        """``path`` if it is a normalised absolute dir strictly inside a managed mount."""
        if (not isinstance(path, str) or '\0' in path or not os.path.isabs(path)
                or os.path.normpath(path) != path):
            raise InvalidArgument(f'invalid cgroup directory {path!r}: must be a normalised absolute path')
        for mount in self._mounts:
            if _inside(path, mount):
                if _inside(os.path.realpath(path), mount):
                    return path
                break
        raise InvalidArgument(f'refusing cgroup directory {path!r}: not inside any cgroup mount under '
                              f'{self.root} ({", ".join(self._mounts) or "none found"})')

    # -- create ----------------------------------------------------------------------------

    def create(self, cgroups_path, default_name, before_mkdir=None, not_made=None):
        """Create every missing level; return only the dirs created here, in creation order.

        ``before_mkdir(path)`` is called before each mkdir (the runtime notes the directory in
        its journal first, so a process killed right after the mkdir leaves a trace), and
        ``not_made(path)`` when that mkdir then found the directory made by someone else.
        A level removed concurrently (an empty parent collected by another run) is made again.
        On failure what was created is removed again and CgroupError is raised.
        """
        dirs = self.resolve(cgroups_path, default_name)
        created = []
        current = None
        try:
            for mount, leaf in zip(self._mounts, dirs):
                for attempt in range(_CREATE_ATTEMPTS):
                    current = mount
                    try:
                        for segment in os.path.relpath(leaf, mount).split(os.sep):
                            current = os.path.join(current, segment)
                            if os.path.isdir(current):
                                continue
                            if before_mkdir is not None:
                                before_mkdir(current)
                            try:
                                os.mkdir(current, 0o755)
                            except FileExistsError:
                                if not_made is not None:
                                    not_made(current)
                                if os.path.isdir(current):  # created concurrently: not ours
                                    continue
                                raise
                            created.append(current)
                            _inherit_cpuset(current)
                        break
                    except FileNotFoundError:
                        if not_made is not None:
                            not_made(current)
                        if attempt == _CREATE_ATTEMPTS - 1:
                            raise
        except (OSError, KataError) as exc:  # KataError: before_mkdir could not note the dir
            msg = f'cannot create cgroup {current}: {getattr(exc, "strerror", None) or exc}'
            try:
                self._remove_checked(created)
            except CgroupError as cleanup:
                msg += f'; cleaning up what was created also failed: {cleanup}'
            raise CgroupError(msg, path=current, created=created)
        return created

    # -- remove ----------------------------------------------------------------------------

    def remove(self, dirs):
        """rmdir ``dirs`` deepest first; return the ones removed here.

        Idempotent: a dir already gone is fine. A dir that still holds child cgroups we were
        not asked to remove (another container's) is left in place: it is not ours to empty.
        Raises InvalidArgument (before touching anything) for a dir outside the mounts and
        CgroupError, after trying every dir, for dirs that could not be removed.
        """
        if dirs is None:
            return []
        if not isinstance(dirs, (list, tuple)):
            raise InvalidArgument(f'cgroup dirs must be a list of paths, got {dirs!r}')
        checked = [self._check_dir(d) for d in dirs]
        return self._remove_checked(checked)

    def _remove_checked(self, dirs):
        unique = list(dict.fromkeys(dirs))
        # deepest first; among equals, the later-created first
        order = sorted(reversed(unique), key=lambda d: d.count('/'), reverse=True)
        removed, errors = [], []
        for path in order:
            try:
                if _rmdir(path):
                    removed.append(path)
            except CgroupError as exc:
                errors.append(str(exc))
        if errors:
            raise CgroupError('; '.join(errors), removed=removed)
        return removed

    @staticmethod
    def is_empty(path):
        """True when ``path`` is a cgroup dir holding no process and no child cgroup."""
        try:
            return os.path.isdir(path) and not _has_child_cgroups(path) and not _pids(path)
        except OSError:
            return False

    def remove_if_empty(self, path):
        """rmdir one of our cgroup dirs only if it holds no process and no child cgroup (never
        moving anything out of it). True when removed, False when kept or already gone."""
        path = self._check_dir(path)
        try:
            if not self.is_empty(path):
                return False
            os.rmdir(path)
        except FileNotFoundError:
            return False
        except OSError as exc:
            if exc.errno in (errno.EBUSY, errno.ENOTEMPTY):
                return False  # a process or a child arrived meanwhile
            raise CgroupError(f'cannot remove cgroup {path}: {exc.strerror or exc}', path=path)
        return True

    # -- processes -------------------------------------------------------------------------

    def add_pid(self, dirs, pid):
        """Write ``pid`` into ``cgroup.procs`` of each dir."""
        if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0:
            raise InvalidArgument(f'invalid pid {pid!r}: must be a positive integer')
        if not isinstance(dirs, (list, tuple)):
            raise InvalidArgument(f'cgroup dirs must be a list of paths, got {dirs!r}')
        checked = [self._check_dir(d) for d in dirs]
        for path in checked:
            target = _procs_file(path)
            try:
                _write(target, str(pid))
            except OSError as exc:
                raise CgroupError(f'cannot add pid {pid} to cgroup {path}: {exc.strerror or exc}',
                                  path=path, pid=pid)


def _procs_file(path):
    procs = os.path.join(path, 'cgroup.procs')
    if os.path.exists(procs):
        return procs
    tasks = os.path.join(path, 'tasks')
    if os.path.exists(tasks):
        return tasks
    return procs  # writing reports ENOENT: not a cgroup


def _write(path, text):
    # no O_CREAT: the pseudo-files exist in a real cgroup, and we never create files
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, text.encode('ascii'))
    finally:
        os.close(fd)


def _inherit_cpuset(path):
    """A new v1 cpuset cgroup starts with empty cpus/mems and refuses tasks: copy the parent's."""
    for name in ('cpuset.cpus', 'cpuset.mems'):
        own = os.path.join(path, name)
        if not os.path.isfile(own):
            return
        with open(own) as f:
            if f.read().strip():
                continue
        with open(os.path.join(os.path.dirname(path), name)) as f:
            value = f.read().strip()
        if value:
            _write(own, value)


def _pids(path):
    for name in ('cgroup.procs', 'tasks'):
        try:
            with open(os.path.join(path, name)) as f:
                return [line.strip() for line in f if line.strip()]
        except FileNotFoundError:
            continue
    return []


def _evacuate(path):
    """Move processes left in ``path`` to its parent cgroup. Returns the pids that would not move."""
    stuck = []
    pids = _pids(path)
    if not pids:
        return stuck
    target = _procs_file(os.path.dirname(path))
    for pid in pids:
        try:
            _write(target, pid)
        except ProcessLookupError:
            continue  # exited meanwhile
        except OSError as exc:
            stuck.append(f'{pid} ({exc.strerror or exc})')
    return stuck


def _has_child_cgroups(path):
    try:
        with os.scandir(path) as entries:
            return any(e.is_dir(follow_symlinks=False) for e in entries)
    except FileNotFoundError:
        return False


def _rmdir(path):
    """rmdir one cgroup. True if removed here, False if already gone or kept for its children."""
    deadline = time.monotonic() + RMDIR_RETRY
    while True:
        try:
            if not os.path.lexists(path) or _has_child_cgroups(path):
                return False
            stuck = _evacuate(path)
        except OSError as exc:
            raise CgroupError(f'cannot empty cgroup {path}: {exc.strerror or exc}', path=path)
        try:
            os.rmdir(path)
            return True
        except FileNotFoundError:
            return False
        except OSError as exc:
            if exc.errno == errno.EBUSY and time.monotonic() < deadline:
                time.sleep(_RETRY_PAUSE)
                continue
            msg = f'cannot remove cgroup {path}: {exc.strerror or exc}'
            left = stuck or _pids(path)
            if left:
                msg += f' (processes still inside: {", ".join(left)})'
            raise CgroupError(msg, path=path)
