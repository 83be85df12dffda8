# Copyright: kata.runtime contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Persisted sandbox and container records, per-sandbox locks and ID mappings.

Layout under the state root (directories 0700, files 0600)::

    sandboxes/<sid>/sandbox.json          the sandbox record
    sandboxes/<sid>/containers/<cid>.json one record per container
    sandboxes/<sid>/shared/, output/, console/, bundles/
                                          what the guest can reach (share.py)
    sock/<sha256(sid)[:16]>.sock          agent socket (sun_path is only 108 bytes)
    mappings/<cid>                        container -> sandbox mapping (the file holds sid)
    locks/<sid>.lock                      per-sandbox flock
    cgroups/<digest>                      one note per cgroup directory we create, written
                                          before the mkdir (what orphan collection may remove)

Every write is temp file + fsync + rename + fsync of the directory, so a reader sees the old
record or the new one, never half of one. Every path is built from validated IDs and checked
to resolve inside the root before anything is written or removed.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import stat
import tempfile
import threading
import time

from ansible_collections.kata.runtime.plugins.module_utils.kata import mountinfo
from ansible_collections.kata.runtime.plugins.module_utils.kata.errors import (
    Conflict,
    CorruptRecord,
    InvalidArgument,
    KataError,
    LockTimeout,
    NotFound,
    StateWriteError,
)
from ansible_collections.kata.runtime.plugins.module_utils.kata.ids import validate_id
from ansible_collections.kata.runtime.plugins.module_utils.kata.model import (
    RECORD_VERSION,
    ContainerRecord,
    SandboxRecord,
)

DIR_MODE = 0o700
FILE_MODE = 0o600

SANDBOXES = 'sandboxes'
SOCKETS = 'sock'
MAPPINGS = 'mappings'
LOCKS = 'locks'
CGROUP_JOURNAL = 'cgroups'

SANDBOX_FILE = 'sandbox.json'
CONTAINERS = 'containers'
SHARED = 'shared'

_TMP_SUFFIX = '.tmp'
_RAISE = object()  # get_mapping: an unreadable mapping raises
_LOCK_POLL = 0.05

# Locks held by this thread: {lock path: [fd, depth]}. flock() locks belong to an open file
# description, so a second open()+flock() of the same file in one thread would wait for
# itself; nested lock() calls (delete sandbox -> delete its containers) reuse the held one.
_held = threading.local()


def _held_locks():
    # keyed per process too: a child forked while a lock is held does not hold it
    if getattr(_held, 'pid', None) != os.getpid():
        _held.locks = {}
        _held.pid = os.getpid()
    return _held.locks


def _fsync_dir(path):
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_error(path, err, replaced=False):
    what = ('was written but its directory could not be synced' if replaced
            else 'was left as it was (no partial write)')
    return StateWriteError(f'cannot write {path}: {err.strerror or err}; the file {what}. '
                           'Free space on (or remount read-write) the file system of the state '
                           'root, then run the operation again', path=path, errno=err.errno)


def _mount_points():
    """Mount points of this mount namespace (empty when /proc is not there)."""
    return mountinfo.points()


# A guest can nest directories without limit. One fd per level would run into RLIMIT_NOFILE
# (often 1024) at about the depth where recursion hit the recursion limit, so a tree removal
# keeps a bounded number of directory fds: the newest _WINDOW_DIRS levels, plus up to
# _ANCHOR_DIRS levels spread evenly over the rest (evenly: every `spacing`-th level, the
# spacing doubling as the tree goes deeper). A level without an fd is reopened by name from the
# nearest one above that has one, and checked against the (st_dev, st_ino) it had. The anchors
# keep that reopening short: without them it restarts from the top each time, which on a
# chain of depth D costs about D*D/(2*_WINDOW_DIRS) opens (minutes at 20,000 levels, a few
# seconds with them). At most 1 + _WINDOW_DIRS + _ANCHOR_DIRS + 1 fds are open at once.
_WINDOW_DIRS = 64
_ANCHOR_DIRS = 64
# Walks of one tree before giving up when a guest keeps moving directories during removal.
_TREE_ATTEMPTS = 3
# Times one directory is listed again because rmdir still found it non-empty.
_MAX_RESCANS = 3
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class _TreeChanged(Exception):
    """A directory on the path being removed is no longer the one we entered."""

    def __init__(self, path, reason):
        super().__init__(path, reason)
        self.path = path
        self.reason = reason


class _Frame:
    """One directory on the removal stack: what it was when entered and what is left of it."""

    __slots__ = ('name', 'dev', 'ino', 'fd', 'entries', 'index', 'rescans')

    def __init__(self, name, st, fd, entries, rescans):
        self.name = name
        self.dev = st.st_dev
        self.ino = st.st_ino
        self.fd = fd
        self.entries = entries
        self.index = 0
        self.rescans = rescans


class _TreeRemover:
    """Iterative, fd-based removal of one directory tree (see ``Store._remove_dir_at``).

    An explicit stack instead of recursion: the depth is the guest's choice. Every directory is
    opened relative to its parent's fd with O_NOFOLLOW|O_DIRECTORY, so a symlink is never
    followed (it is unlinked like a file) and no path longer than one name reaches the kernel.
    Frames that gave their fd up (see _WINDOW_DIRS) are reopened downward by name, each level
    checked to still be the directory it was; if one is not, the walk starts again
    (``_TreeChanged``) instead of trusting a path a guest may have swapped. Going back up via
    ``..`` would not do: a guest can move a directory, and its ``..`` then leads elsewhere.
    """

    def __init__(self, pfd, name, path, dev, last):
        self.pfd = pfd
        self.name = name
        self.path = path
        self.dev = dev
        self.last = last
        self.stack = []
        self.lo = 1  # stack[lo:] (the window) hold fds; stack[0] always does
        self.anchors = []  # depths below lo whose frames kept their fd, increasing
        self.spacing = _WINDOW_DIRS  # anchors are the depths that are multiples of this

    def where(self, depth, child=None):
        names = [f.name for f in self.stack[1:depth + 1]]
        if child is not None:
            names.append(child)
        return os.path.join(self.path, *names)

    def run(self):
        try:
            self._enter(None, self.name, 0)
            while self.stack:
                frame = self.stack[-1]
                if frame.index < len(frame.entries):
                    child, is_dir = frame.entries[frame.index]
                    frame.index += 1
                    if is_dir or not self._unlink(frame.fd, child):
                        self._enter(frame, child, 0)
                else:
                    self._leave()
        finally:
            for frame in self.stack:
                if frame.fd is not None:
                    os.close(frame.fd)

    def _unlink(self, dfd, name):
        """Unlink a non-directory (never following it); False if it is a directory by now."""
        try:
            os.unlink(name, dir_fd=dfd)
        except FileNotFoundError:
            pass
        except IsADirectoryError:
            return False
        except OSError as err:
            raise KataError(f'cannot remove {self.where(len(self.stack) - 1, name)}: {err.strerror}') from None
        return True

    def _enter(self, parent, name, rescans):
        """Push directory ``name`` of ``parent`` (None: the top) with its entries listed."""

        def where():  # built only for an error: on a deep chain it is long to build
            return self.where(len(self.stack) - 1, name) if parent is not None else self.path

        try:
            fd = os.open(name, _DIR_FLAGS, dir_fd=self.pfd if parent is None else parent.fd)
        except OSError as err:
            if parent is not None and err.errno == errno.ENOENT:
                return
            if parent is not None and err.errno in (errno.ENOTDIR, errno.ELOOP):
                # listed as a directory, now a symlink or a file: unlink it, do not follow
                if not self._unlink(parent.fd, name):
                    raise _TreeChanged(where(), 'it keeps turning from a directory into something else')
                return
            raise KataError(f'refusing to remove {where()}: {err.strerror}') from None
        try:
            st = os.fstat(fd)
            if st.st_dev != self.dev:
                # another file system than the top's: a mount the mount table did not show
                # (made since we read it); what is mounted there is not ours to delete
                raise Conflict(f'refusing to remove {where()}: it is a mount point (another file system); '
                               'unmount it first', mounts=[where()])
            try:
                with os.scandir(fd) as it:
                    entries = [(e.name, e.is_dir(follow_symlinks=False)) for e in it]
            except OSError as err:
                raise KataError(f'cannot list {where()}: {err.strerror}') from None
        except BaseException:
            os.close(fd)
            raise
        if parent is None:
            entries.sort(key=lambda item: item[0] == self.last)  # the record last
        self.stack.append(_Frame(name, st, fd, entries, rescans))
        if len(self.stack) - self.lo > _WINDOW_DIRS:
            self._evict(self.lo)
            self.lo += 1

    def _evict(self, depth):
        """Frame ``depth`` leaves the window: it keeps its fd only as an anchor."""
        if depth % self.spacing == 0:
            self.anchors.append(depth)
            if len(self.anchors) <= _ANCHOR_DIRS:
                return
            self.spacing *= 2
            keep = []
            for d in self.anchors:
                if d % self.spacing == 0:
                    keep.append(d)
                else:
                    os.close(self.stack[d].fd)
                    self.stack[d].fd = None
            self.anchors = keep
            return
        frame = self.stack[depth]
        os.close(frame.fd)
        frame.fd = None

    def _leave(self):
        """The top frame's entries are done: rmdir it through its parent's fd."""
        frame = self.stack.pop()
        os.close(frame.fd)
        frame.fd = None
        if self.anchors and self.anchors[-1] == len(self.stack):
            self.anchors.pop()

        def where():  # built only for an error, as in _enter
            return self.where(len(self.stack) - 1, frame.name) if self.stack else self.path

        if self.stack and self.stack[-1].fd is None:
            self._reopen()
        parent = self.stack[-1] if self.stack else None
        try:
            os.rmdir(frame.name, dir_fd=self.pfd if parent is None else parent.fd)
        except FileNotFoundError:
            pass
        except OSError as err:
            if err.errno in (errno.ENOTEMPTY, errno.EEXIST):
                # something was added meanwhile: list it again
                if frame.rescans >= _MAX_RESCANS:
                    raise _TreeChanged(where(), 'entries keep appearing in it')
                self._enter(parent, frame.name, frame.rescans + 1)
            elif err.errno == errno.ENOTDIR and parent is not None:
                # swapped for a non-directory once emptied: drop that too, never follow it
                if not self._unlink(parent.fd, frame.name):
                    raise _TreeChanged(where(), 'it keeps turning from a directory into something else')
            else:
                raise KataError(f'cannot remove {where()}: {err.strerror}') from None

    def _reopen(self):
        """Give fds back to the newest frames, walking down by name from the nearest anchor."""
        top = len(self.stack) - 1
        base = self.anchors[-1] if self.anchors else 0
        lo = max(base + 1, top - _WINDOW_DIRS + 1)
        prev = self.stack[base].fd
        spare = None  # an fd held only to open the next level
        try:
            for depth in range(base + 1, top + 1):
                frame = self.stack[depth]
                try:
                    fd = os.open(frame.name, _DIR_FLAGS, dir_fd=prev)
                except OSError as err:
                    raise _TreeChanged(self.where(depth), err.strerror) from None
                st = os.fstat(fd)
                if (st.st_dev, st.st_ino) != (frame.dev, frame.ino):
                    os.close(fd)
                    raise _TreeChanged(self.where(depth), 'another directory took its place')
                if spare is not None:
                    os.close(spare)
                    spare = None
                if depth >= lo:
                    frame.fd = fd
                else:
                    spare = fd
                prev = fd
        finally:
            if spare is not None:
                os.close(spare)
        self.lo = lo


def hold_if_current(fd, path, deadline, timed_out, poll=_LOCK_POLL):
    """Take the exclusive flock of ``fd`` (the file opened at ``path``), waiting until
    ``deadline`` (time.monotonic(); None: for ever), then raising ``timed_out(fd)``. True when
    held and the file is still the one at ``path``; False (``fd`` closed) when its holder had
    unlinked it meanwhile: that lock guards nothing, open the path again. On any error ``fd``
    is closed."""
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if deadline is not None and time.monotonic() >= deadline:
                    raise timed_out(fd) from None
                time.sleep(poll)
        mine = os.fstat(fd)
        try:
            current = os.stat(path, follow_symlinks=False)
        except FileNotFoundError:
            current = None
    except BaseException:
        os.close(fd)
        raise
    if current is not None and (current.st_ino, current.st_dev) == (mine.st_ino, mine.st_dev):
        return True
    os.close(fd)
    return False


class Store:
    """Records under one state root. Building a Store touches nothing; ``ensure()`` creates."""

    def __init__(self, root):
        if not isinstance(root, str) or not root or not os.path.isabs(root):
            raise InvalidArgument(f'invalid state root {root!r}: must be an absolute path')
        root = os.path.normpath(root)
        if root == os.sep:
            raise InvalidArgument(f'invalid state root {root!r}: must not be the file system root')
        self.root = root

    # ----------------------------------------------------------------- paths

    def _real_root(self):
        return os.path.realpath(self.root)

    def _check_inside(self, path):
        """Raise unless ``path`` (resolving symlinks) stays inside the root."""
        base = self._real_root()
        real = os.path.realpath(path)
        if real != base and not real.startswith(base + os.sep):
            raise KataError(f'refusing to touch {path}: it resolves to {real}, outside the state root {self.root}')
        return path

    def _check_entry(self, path):
        """For a path we create, replace or unlink itself: its directory must be inside root."""
        self._check_inside(os.path.dirname(path))
        return path

    def sandbox_dir(self, sid):
        return os.path.join(self.root, SANDBOXES, validate_id(sid, 'sandbox'))

    def shared_dir(self, sid):
        return os.path.join(self.sandbox_dir(sid), SHARED)

    def containers_dir(self, sid):
        return os.path.join(self.sandbox_dir(sid), CONTAINERS)

    def agent_socket(self, sid):
        digest = hashlib.sha256(validate_id(sid, 'sandbox').encode('ascii')).hexdigest()[:16]
        return os.path.join(self.root, SOCKETS, digest + '.sock')

    def lock_path(self, sid):
        return os.path.join(self.root, LOCKS, validate_id(sid, 'sandbox') + '.lock')

    def _sandbox_file(self, sid):
        return os.path.join(self.sandbox_dir(sid), SANDBOX_FILE)

    def _container_file(self, sid, cid):
        return os.path.join(self.containers_dir(sid), validate_id(cid, 'container') + '.json')

    def _mapping_file(self, cid):
        return os.path.join(self.root, MAPPINGS, validate_id(cid, 'container'))

    # ------------------------------------------------------------ directories

    def _mkdir(self, path):
        """Create one directory 0700 (inside the root); an existing directory is fine."""
        self._check_entry(path)
        try:
            os.mkdir(path, DIR_MODE)
        except FileExistsError:
            if not os.path.isdir(path) or os.path.islink(path):
                raise KataError(f'{path} exists but is not a directory (a symlink or a file); '
                                'refusing to use it') from None
            return False
        except OSError as err:
            raise _write_error(path, err) from None
        os.chmod(path, DIR_MODE)  # mkdir's mode is filtered by the umask
        return True

    def ensure(self):
        """Create the root tree (root, sandboxes/, sock/, mappings/, locks/) if missing."""
        if not os.path.isdir(self.root):
            os.makedirs(os.path.dirname(self.root), exist_ok=True)
            try:
                os.mkdir(self.root, DIR_MODE)
                os.chmod(self.root, DIR_MODE)
            except FileExistsError:
                pass
        for name in (SANDBOXES, SOCKETS, MAPPINGS, LOCKS):
            self._mkdir(os.path.join(self.root, name))

    def ensure_sandbox(self, sid):
        """Create the sandbox's directories (sandbox dir, containers/, shared/)."""
        self.ensure()
        for path in (self.sandbox_dir(sid), self.containers_dir(sid), self.shared_dir(sid)):
            self._mkdir(path)
        return self.sandbox_dir(sid)

    # ----------------------------------------------------------- file access

    def _write_json(self, path, data):
        try:
            payload = json.dumps(data, indent=2, sort_keys=True).encode('utf-8') + b'\n'
        except (TypeError, ValueError) as err:
            raise InvalidArgument(f'cannot save {path}: record is not JSON-serialisable: {err}') from None
        self._write_bytes(path, payload)

    def _write_bytes(self, path, payload):
        """Replace ``path`` with ``payload``: a reader sees the old file or the new one. A full
        or read-only file system is a StateWriteError saying the file was left as it was."""
        self._check_entry(path)
        directory = os.path.dirname(path)
        try:
            fd, tmp = tempfile.mkstemp(dir=directory, prefix='.' + os.path.basename(path) + '.',
                                       suffix=_TMP_SUFFIX)
        except OSError as err:
            raise _write_error(path, err) from None
        try:
            try:
                os.fchmod(fd, FILE_MODE)
                view = memoryview(payload)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, path)
        except BaseException as err:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            if isinstance(err, OSError):
                raise _write_error(path, err) from None
            raise
        try:
            _fsync_dir(directory)
        except OSError as err:
            raise _write_error(path, err, replaced=True) from None

    def _read_bytes(self, path, what):
        """Bytes of ``path`` or None when missing; a symlink or unreadable file is corrupt."""
        self._check_entry(path)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        except OSError as err:
            if err.errno == errno.ELOOP:
                raise CorruptRecord(f'{what} record {path} is a symlink; refusing to follow it', path=path) from None
            raise CorruptRecord(f'cannot read {what} record {path}: {err.strerror}',
                                path=path) from None
        try:
            with os.fdopen(fd, 'rb') as handle:
                return handle.read()
        except OSError as err:
            raise CorruptRecord(f'cannot read {what} record {path}: {err.strerror}',
                                path=path) from None

    def _read_json(self, path, what, expect_id=None):
        """The JSON object of ``path`` (None when missing), version-checked; CorruptRecord when
        it is not one."""
        raw = self._read_bytes(path, what)
        if raw is None:
            return None
        try:
            data = json.loads(raw.decode('utf-8'))
        except (UnicodeDecodeError, ValueError) as err:
            raise CorruptRecord(f'{what} record {path} is corrupt (not JSON: {err}); inspect or remove it', path=path) from None
        if not isinstance(data, dict):
            raise CorruptRecord(f'{what} record {path} is corrupt: expected a JSON object, found {type(data).__name__}', path=path)
        version = data.get('version')
        if version != RECORD_VERSION:
            raise CorruptRecord(f'{what} record {path} has version {version!r}; this runtime '
                                f'reads version {RECORD_VERSION}', path=path)
        if expect_id is not None and data.get('id') != expect_id:
            raise CorruptRecord(f"{what} record {path} is corrupt: it names id {data.get('id')!r}, "
                                f'expected {expect_id!r}', path=path)
        return data

    def _read_record(self, cls, path, expect_id):
        data = self._read_json(path, cls.KIND, expect_id=expect_id)
        return None if data is None else cls.from_json(data, path)

    def _unlink(self, path):
        """Unlink one file (never following a symlink); True if something was removed."""
        self._check_entry(path)
        try:
            os.unlink(path)
        except FileNotFoundError:
            return False
        except OSError as err:
            raise StateWriteError(f'cannot remove {path}: {err.strerror}; it is still there. Make the '
                                  'state root writable and run the operation again', path=path) from None
        with contextlib.suppress(OSError):
            _fsync_dir(os.path.dirname(path))
        return True

    # ----------------------------------------------------------------- locks

    @contextlib.contextmanager
    def lock(self, sid, timeout=60, owner=None):
        """Hold the sandbox's exclusive lock; LockTimeout after ``timeout`` seconds.

        ``timeout=None`` waits forever, ``0`` tries once. ``owner`` (a short description of
        the operation) is written into the lock file so a waiter that times out can say who to
        wait for. Re-entrant within a thread.
        """
        path = self.lock_path(sid)
        held = _held_locks()
        if path in held:
            held[path][1] += 1
            try:
                yield
            finally:
                held[path][1] -= 1
            return
        self.ensure()
        fd = self._acquire(sid, path, timeout)
        held[path] = [fd, 1]
        try:
            info = {'pid': os.getpid(), 'owner': owner or '', 'since': time.time()}
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
                os.pwrite(fd, json.dumps(info).encode('utf-8'), 0)
            yield
        finally:
            del held[path]
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
                self._drop_lock_file(sid, path, fd)
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def _drop_lock_file(self, sid, path, fd):
        """A lock of a sandbox that has no directory (nothing was created, or a delete was
        interrupted right before it unlinked the file) takes its file with it, still held: a
        waiter that then gets the old inode sees it is no longer the file and retries."""
        if os.path.lexists(self.sandbox_dir(sid)):
            return
        mine = os.fstat(fd)
        current = os.lstat(path)
        if (current.st_ino, current.st_dev) == (mine.st_ino, mine.st_dev):
            os.unlink(path)

    @contextlib.contextmanager
    def try_lock(self, sid):
        """Take the sandbox's lock only if it is free: yields True holding it, or False (another
        operation holds it: it is in progress, so its state is not an orphan's).

        For a sandbox without a directory (an orphan's leftovers), the lock file made here goes
        again when it is released (see lock), so asking leaves nothing behind.
        """
        stack = contextlib.ExitStack()
        try:
            stack.enter_context(self.lock(sid, timeout=0))
        except LockTimeout:
            yield False
            return
        with stack:
            yield True

    def _acquire(self, sid, path, timeout):
        if timeout is not None and (isinstance(timeout, bool)
                                    or not isinstance(timeout, (int, float)) or timeout < 0):
            raise InvalidArgument(f'invalid lock timeout {timeout!r}: must be a number of seconds >= 0')
        deadline = None if timeout is None else time.monotonic() + timeout
        self._check_entry(path)
        while True:
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
                             FILE_MODE)
            except OSError as err:
                if err.errno == errno.ELOOP and os.path.islink(path):
                    # a link where our lock file belongs: never followed; it is removed (it
                    # is in our own tree) so that no planted entry can make a sandbox undeletable
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(path)
                    continue
                raise KataError(f'cannot open lock file {path}: {err.strerror}') from None
            if hold_if_current(fd, path, deadline, lambda held: self._timeout_error(sid, held, timeout)):
                return fd

    def _timeout_error(self, sid, fd, timeout):
        holder = ''
        with contextlib.suppress(OSError, ValueError, UnicodeDecodeError):
            info = json.loads(os.pread(fd, 4096, 0).decode('utf-8'))
            if isinstance(info, dict):
                holder = f" by pid {info.get('pid')}"
                if info.get('owner'):
                    holder += f" ({info['owner']})"
                if isinstance(info.get('since'), (int, float)):
                    holder += f" for {max(0, time.time() - info['since']):.0f}s"
        holder = holder or ' by another operation'
        return LockTimeout(f'sandbox {sid} is locked{holder}; gave up after {timeout}s. Wait for '
                           'that operation to finish and retry', sandbox=sid)

    # -------------------------------------------------------------- sandboxes

    def load_sandbox(self, sid):
        """The sandbox record, or None when there is none; CorruptRecord if unreadable."""
        return self._read_record(SandboxRecord, self._sandbox_file(sid), sid)

    def save_sandbox(self, rec):
        """Write the SandboxRecord atomically (creates the sandbox's directories); returns the
        JSON object written."""
        if not isinstance(rec, SandboxRecord):
            raise InvalidArgument(f'a sandbox record must be a SandboxRecord, not {rec!r}')
        sid = validate_id(rec.id, 'sandbox')
        data = rec.to_json()
        self.ensure_sandbox(sid)
        self._write_json(self._sandbox_file(sid), data)
        return data

    def remove_sandbox(self, sid):
        """Remove the sandbox directory tree, its agent socket and its lock file.

        Symlinks inside the tree are unlinked, never followed. A mount point anywhere inside
        (a container rootfs still bind-mounted into shared/) stops the removal before anything
        is deleted. ID mappings are not touched. Returns True if anything was removed.
        """
        sdir = self.sandbox_dir(sid)
        if not any(os.path.lexists(p) for p in (sdir, self.agent_socket(sid), self.lock_path(sid))):
            return False  # nothing to do: do not even create the lock file
        with self.lock(sid):
            # the socket first: killed after the tree went, only the lock file is left, which
            # any later lock of this ID removes (see lock)
            removed = self._unlink(self.agent_socket(sid))
            if os.path.lexists(sdir):
                self._check_entry(sdir)
                st = os.lstat(sdir)
                if not stat.S_ISDIR(st.st_mode):
                    what = 'a symlink' if stat.S_ISLNK(st.st_mode) else 'not a directory'
                    raise KataError(f'refusing to remove {sdir}: it is {what}, not a sandbox '
                                    'directory this runtime created')
                self._check_inside(sdir)
                self._refuse_mounts(sdir)
                self._remove_tree(sdir)
                removed = True
            removed = self._unlink(self.lock_path(sid)) or removed
        return removed

    def _refuse_mounts(self, top):
        """Conflict if anything is mounted on ``top`` or below it, before anything is deleted.

        Reads the mount table once instead of walking the tree: a walk costs one stat per
        entry, recurses, and breaks on a guest-made chain deeper than PATH_MAX; and st_dev
        cannot see a bind mount from the same file system, which the table lists. The st_dev
        check during removal stays as the second guard (a mount made after this look).
        """
        real_top = os.path.realpath(top)
        # with the separator, /x/ab is not taken for something under /x/a
        below = real_top + os.sep
        mounts = sorted(p for p in _mount_points() if p == real_top or p.startswith(below))
        if mounts:
            raise Conflict(f"refusing to remove {top}: still mounted: {', '.join(mounts)}. "
                           'Unmount first (the mounted content is not ours to delete)',
                           mounts=mounts)

    def _remove_tree(self, top):
        """Delete ``top`` (a real directory inside root) without following symlinks.

        Works on directory file descriptors (O_NOFOLLOW), so a directory swapped for a symlink
        mid-way is unlinked or refused, never followed. The sandbox record goes last: an
        interrupted removal still shows the sandbox, and running the delete again finishes it.
        """
        parent = os.path.dirname(top)
        pfd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            self._remove_dir_at(pfd, os.path.basename(top), top, os.fstat(pfd).st_dev,
                                last=SANDBOX_FILE)
            os.fsync(pfd)
        finally:
            os.close(pfd)

    @staticmethod
    def _remove_dir_at(pfd, name, path, dev, last=None):
        """Remove directory ``name`` under the open directory ``pfd``; ``path`` names it in errors.

        Any directory whose st_dev is not ``dev`` is a mount point: Conflict, and nothing under
        it is touched. If a guest moves a directory we are inside of, the walk starts again
        from the top (a few times) rather than guess; what it removed so far stays removed.
        """
        for attempt in range(1, _TREE_ATTEMPTS + 1):
            try:
                _TreeRemover(pfd, name, path, dev, last).run()
                return
            except _TreeChanged as changed:
                if attempt == _TREE_ATTEMPTS:
                    raise KataError(f'refusing to remove {changed.path}: it kept changing while being '
                                    f'removed ({changed.reason}); stop whatever writes into {path} '
                                    'and run the removal again') from None

    def list_sandboxes(self):
        """Return ``(records, corrupt)``: records sorted by id, corrupt as {'id','path','error'}.

        A sandbox directory without a readable record is reported, never skipped silently.
        """
        records, corrupt = [], []
        base = os.path.join(self.root, SANDBOXES)
        for sid in self._list_ids(base):
            path = self._sandbox_file(sid)
            try:
                rec = self.load_sandbox(sid)
            except KataError as err:
                corrupt.append({'id': sid, 'path': path, 'error': str(err)})
                continue
            if rec is None:
                corrupt.append({'id': sid, 'path': path,
                                'error': f'sandbox directory {os.path.dirname(path)} has no {SANDBOX_FILE}'})
            else:
                records.append(rec)
        return records, corrupt

    @staticmethod
    def _list_ids(directory, suffix=''):
        try:
            names = os.listdir(directory)
        except FileNotFoundError:
            return []
        except OSError as err:
            raise KataError(f'cannot list {directory}: {err.strerror}; it must be a directory this '
                            'runtime made (move whatever is there away)') from None
        ids = []
        for name in sorted(names):
            if suffix:
                if not name.endswith(suffix):
                    continue
                name = name[:-len(suffix)]
            try:
                ids.append(validate_id(name))
            except InvalidArgument:
                continue  # temp files and anything we never create
        return ids

    # ------------------------------------------------------------- containers

    def load_container(self, sid, cid):
        """The container record, or None when there is none; CorruptRecord if unreadable."""
        return self._read_record(ContainerRecord, self._container_file(sid, cid), cid)

    def save_container(self, rec):
        """Write the ContainerRecord (``rec.id`` in ``rec.sandbox``) atomically; returns the
        JSON object written.

        The sandbox must exist (its directory); otherwise NotFound.
        """
        if not isinstance(rec, ContainerRecord):
            raise InvalidArgument(f'a container record must be a ContainerRecord, not {rec!r}')
        cid = validate_id(rec.id, 'container')
        sid = validate_id(rec.sandbox, 'sandbox')
        path = self._container_file(sid, cid)
        if not os.path.isdir(self.sandbox_dir(sid)):
            raise NotFound(f'cannot save container {cid}: sandbox {sid} does not exist')
        data = rec.to_json()
        self._mkdir(self.containers_dir(sid))
        self._write_json(path, data)
        return data

    def remove_container(self, sid, cid):
        """Remove the container record; True if it existed."""
        return self._unlink(self._container_file(sid, cid))

    # ------------------------------------------------ guest-written and private trees

    def write_private_json(self, directory, name, data):
        """Write ``directory/name`` (JSON) atomically, creating ``directory`` 0700 inside the
        root (e.g. an inline container's bundle); returns the file's path."""
        self._check_inside(os.path.dirname(directory))
        self._mkdir(directory)
        path = os.path.join(directory, name)
        self._write_json(path, data)
        return path

    def remove_tree_at(self, pfd, name, path):
        """Remove entry ``name`` of the open directory ``pfd`` (``path`` names it in errors):
        a directory by descriptor as ``remove_sandbox`` does (never following a link, never
        crossing a mount), anything else unlinked. True when something was removed."""
        try:
            st = os.lstat(name, dir_fd=pfd)
        except FileNotFoundError:
            return False
        if not stat.S_ISDIR(st.st_mode):
            os.unlink(name, dir_fd=pfd)
            return True
        self._refuse_mounts(path)
        self._remove_dir_at(pfd, name, path, os.fstat(pfd).st_dev)
        return True

    def list_containers(self, sid):
        """Return ``(records, corrupt)`` for the sandbox's containers, sorted by id."""
        records, corrupt = [], []
        for cid in self._list_ids(self.containers_dir(sid), suffix='.json'):
            try:
                records.append(self.load_container(sid, cid))
            except KataError as err:
                corrupt.append({'id': cid, 'path': self._container_file(sid, cid),
                                'error': str(err)})
        return records, corrupt

    def list_lock_ids(self):
        """IDs that have a lock file (a sandbox, or what an interrupted delete left)."""
        return self._list_ids(os.path.join(self.root, LOCKS), suffix='.lock')

    # --------------------------------------------------------- cgroup journal

    def _journal_file(self, owner, path):
        key = hashlib.sha256(f'{owner}\0{path}'.encode('utf-8', 'surrogateescape')).hexdigest()[:24]
        return os.path.join(self.root, CGROUP_JOURNAL, key)

    def journal_cgroup(self, sid, owner, path):
        """Note, before it is made, that cgroup directory ``path`` is created for ``owner`` (a
        container of sandbox ``sid``, or the sandbox itself). Orphan collection only ever
        removes directories noted here: the ones this state root created."""
        validate_id(sid, 'sandbox')
        validate_id(owner, 'container')
        self.ensure()
        self._mkdir(os.path.join(self.root, CGROUP_JOURNAL))
        self._write_json(self._journal_file(owner, path),
                         {'sandbox': sid, 'owner': owner, 'path': path, 'version': RECORD_VERSION})

    def unjournal_cgroup(self, owner, path):
        """Forget the note (the directory is gone, or was not ours after all)."""
        return self._unlink(self._journal_file(validate_id(owner, 'container'), path))

    def list_cgroup_journal(self):
        """``[{'sandbox', 'owner', 'path', 'file'}]``; unreadable notes are skipped (a note
        is only ever a reason to look, never to remove something by itself)."""
        base = os.path.join(self.root, CGROUP_JOURNAL)
        try:
            names = sorted(os.listdir(base))
        except FileNotFoundError:
            return []
        out = []
        for name in names:
            if name.startswith('.'):
                continue
            try:
                data = self._read_json(os.path.join(base, name), 'cgroup journal') or {}
                sid = validate_id(data.get('sandbox'), 'sandbox')
                owner = validate_id(data.get('owner'), 'container')
            except KataError:
                continue
            path = data.get('path')
            if isinstance(path, str) and os.path.isabs(path):
                out.append({'sandbox': sid, 'owner': owner, 'path': path, 'file': name})
        return out

    # --------------------------------------------------------------- mappings

    def set_mapping(self, cid, sid):
        path = self._mapping_file(cid)
        validate_id(sid, 'sandbox')
        self.ensure()
        self._write_bytes(path, sid.encode('ascii') + b'\n')

    def get_mapping(self, cid, unreadable=_RAISE):
        """The sandbox ID container ``cid`` belongs to, or None. An unreadable mapping raises
        CorruptRecord, or, when ``unreadable`` is given, reads as that value (what a delete
        takes it for: it points nowhere)."""
        path = self._mapping_file(cid)
        try:
            raw = self._read_bytes(path, 'mapping')
            if raw is None:
                return None
            try:
                return validate_id(raw.decode('ascii').strip(), 'sandbox')
            except (UnicodeDecodeError, InvalidArgument) as err:
                raise CorruptRecord(f'mapping {path} is corrupt: {err}', path=path) from None
        except CorruptRecord:
            if unreadable is _RAISE:
                raise
            return unreadable

    def remove_mapping(self, cid):
        """Remove the mapping; True if it existed."""
        return self._unlink(self._mapping_file(cid))

    def list_mappings(self):
        """``{cid: sid}``; a mapping file that cannot be read maps to None (points nowhere)."""
        out = {}
        for cid in self._list_ids(os.path.join(self.root, MAPPINGS)):
            try:
                out[cid] = self.get_mapping(cid)
            except CorruptRecord:
                out[cid] = None
        return out
