# Copyright: kata.runtime contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Store: real files under a temp state root, real processes for the locks, real mounts."""

from __future__ import annotations

import json
import os
import resource
import socket
import stat
import subprocess
import sys
import textwrap
import time

import pytest
from ansible_collections.kata.runtime.plugins.module_utils.kata import store as store_module
from ansible_collections.kata.runtime.plugins.module_utils.kata.errors import (
    Conflict,
    CorruptRecord,
    InvalidArgument,
    KataError,
    LockTimeout,
    NotFound,
)
from ansible_collections.kata.runtime.plugins.module_utils.kata.model import ContainerRecord, SandboxRecord
from ansible_collections.kata.runtime.plugins.module_utils.kata.store import Store

BAD_IDS = ['../x', 'a/b', '.hidden', '', 'x' * 129, 'caf\u00e9', 'abc\n']


@pytest.fixture
def root(tmp_path):
    return str(tmp_path / 'state')


@pytest.fixture
def store(root):
    return Store(root)


def tree(path):
    """Every path under ``path`` (relative), with symlinks not followed."""
    out = set()
    for dirpath, dirnames, filenames in os.walk(path):
        for name in dirnames + filenames:
            out.add(os.path.relpath(os.path.join(dirpath, name), path))
    return out


def mode(path):
    return stat.S_IMODE(os.lstat(path).st_mode)


# ----------------------------------------------------------------------- basics

def test_constructing_touches_nothing(root):
    Store(root)
    assert not os.path.exists(root)


@pytest.mark.parametrize('bad', ['relative/state', '', '/', None])
def test_bad_root_is_refused(bad):
    with pytest.raises(InvalidArgument) as info:
        Store(bad)
    assert repr(bad) in str(info.value)


def test_ensure_creates_tree_0700(store, root):
    os.umask(0o022)
    store.ensure()
    for sub in ('', 'sandboxes', 'sock', 'mappings', 'locks'):
        assert mode(os.path.join(root, sub)) == 0o700, sub
    store.ensure()  # idempotent


def test_paths(store, root):
    assert store.sandbox_dir('s1') == os.path.join(root, 'sandboxes', 's1')
    assert store.shared_dir('s1') == os.path.join(root, 'sandboxes', 's1', 'shared')
    sock = store.agent_socket('x' * 128)
    assert os.path.dirname(sock) == os.path.join(root, 'sock')
    assert len(os.path.basename(sock)) == len('0123456789abcdef.sock')
    assert store.agent_socket('a') != store.agent_socket('b')


# ------------------------------------------------------------------- sandboxes

def test_sandbox_round_trip_atomic_and_private(store, root):
    saved = store.save_sandbox(SandboxRecord(id='s1', vcpus=1, labels={'a': 'b'}))
    assert saved['version'] == 1
    loaded = store.load_sandbox('s1')
    assert loaded == SandboxRecord(id='s1', vcpus=1, labels={'a': 'b'})
    sdir = store.sandbox_dir('s1')
    assert mode(os.path.join(sdir, 'sandbox.json')) == 0o600
    for sub in ('', 'containers', 'shared'):
        assert mode(os.path.join(sdir, sub)) == 0o700
    # overwrite: still one file, no temp leftovers anywhere
    store.save_sandbox(SandboxRecord(id='s1', vcpus=2))
    assert store.load_sandbox('s1').vcpus == 2
    assert not [p for p in tree(root) if p.endswith('.tmp') or '/.' in p]


def test_failed_save_keeps_old_record_and_leaves_no_temp(store, root):
    store.save_sandbox(SandboxRecord(id='s1', vcpus=1))
    before = tree(root)
    with pytest.raises(InvalidArgument, match='vcpus must be null or an integer'):
        store.save_sandbox(SandboxRecord(id='s1', vcpus=object()))
    assert store.load_sandbox('s1').vcpus == 1
    assert tree(root) == before


def test_load_missing_is_none(store):
    assert store.load_sandbox('nope') is None
    assert store.load_container('nope', 'c') is None


@pytest.mark.parametrize('bad', BAD_IDS)
def test_bad_ids_are_refused_before_anything_is_touched(store, root, bad):
    store.save_sandbox(SandboxRecord(id='good'))
    store.save_container(ContainerRecord(id='c1', sandbox='good'))
    store.set_mapping('c1', 'good')
    before = tree(root)
    calls = [
        lambda: store.save_sandbox(SandboxRecord(id=bad)),
        lambda: store.load_sandbox(bad),
        lambda: store.remove_sandbox(bad),
        lambda: store.sandbox_dir(bad),
        lambda: store.agent_socket(bad),
        lambda: store.save_container(ContainerRecord(id=bad, sandbox='good')),
        lambda: store.save_container(ContainerRecord(id='c2', sandbox=bad)),
        lambda: store.load_container('good', bad),
        lambda: store.remove_container('good', bad),
        lambda: store.list_containers(bad),
        lambda: store.set_mapping(bad, 'good'),
        lambda: store.set_mapping('c1', bad),
        lambda: store.get_mapping(bad),
        lambda: store.remove_mapping(bad),
    ]
    for call in calls:
        with pytest.raises(InvalidArgument) as info:
            call()
        assert repr(bad) in str(info.value)
    with pytest.raises(InvalidArgument):
        with store.lock(bad):
            pass  # pragma: no cover
    assert tree(root) == before
    assert store.get_mapping('c1') == 'good'


CORRUPT = {
    'truncated': b'{"id": "s1", "vers',
    'not json': b'this is not json\n',
    'not an object': b'[1, 2, 3]\n',
    'binary': b'\xff\xfe\x00',
    'empty': b'',
}


@pytest.mark.parametrize('kind', sorted(CORRUPT))
def test_corrupt_sandbox_record(store, kind):
    store.save_sandbox(SandboxRecord(id='good'))
    store.save_sandbox(SandboxRecord(id='s1'))
    path = os.path.join(store.sandbox_dir('s1'), 'sandbox.json')
    with open(path, 'wb') as f:
        f.write(CORRUPT[kind])
    with pytest.raises(CorruptRecord) as info:
        store.load_sandbox('s1')
    assert path in str(info.value)
    records, corrupt = store.list_sandboxes()
    assert [r.id for r in records] == ['good']
    assert len(corrupt) == 1
    assert corrupt[0]['id'] == 's1'
    assert corrupt[0]['path'] == path
    assert corrupt[0]['error']


def test_record_naming_another_id_is_corrupt(store):
    store.save_sandbox(SandboxRecord(id='s1'))
    path = os.path.join(store.sandbox_dir('s1'), 'sandbox.json')
    with open(path, 'w') as f:
        json.dump({'id': 'other', 'version': 1}, f)
    with pytest.raises(CorruptRecord, match="'other'"):
        store.load_sandbox('s1')


def test_newer_record_version_is_refused(store):
    store.save_sandbox(SandboxRecord(id='s1'))
    path = os.path.join(store.sandbox_dir('s1'), 'sandbox.json')
    with open(path, 'w') as f:
        json.dump({'id': 's1', 'version': 2}, f)
    with pytest.raises(CorruptRecord, match='version 2'):
        store.load_sandbox('s1')


def test_record_that_is_a_symlink_is_not_followed(store, tmp_path):
    secret = tmp_path / 'secret.json'
    secret.write_text('{"id": "s1", "version": 1}')
    store.save_sandbox(SandboxRecord(id='s1'))
    path = os.path.join(store.sandbox_dir('s1'), 'sandbox.json')
    os.unlink(path)
    os.symlink(str(secret), path)
    with pytest.raises(CorruptRecord, match='symlink'):
        store.load_sandbox('s1')


def test_sandbox_dir_without_record_is_reported(store):
    store.save_sandbox(SandboxRecord(id='good'))
    os.makedirs(store.sandbox_dir('half'))
    records, corrupt = store.list_sandboxes()
    assert [r.id for r in records] == ['good']
    assert [c['id'] for c in corrupt] == ['half']
    assert 'sandbox.json' in corrupt[0]['error']


def test_listing_ignores_temp_files_and_missing_root(store, root):
    assert store.list_sandboxes() == ([], [])
    assert store.list_containers('s1') == ([], [])
    assert store.list_mappings() == {}
    assert not os.path.exists(root)
    store.save_sandbox(SandboxRecord(id='s1'))
    store.save_container(ContainerRecord(id='c1', sandbox='s1'))
    open(os.path.join(store.sandbox_dir('s1'), 'containers', '.c2.json.abc.tmp'), 'w').close()
    os.makedirs(os.path.join(root, 'sandboxes', '.s2.tmp'))
    records, corrupt = store.list_sandboxes()
    assert ([r.id for r in records], corrupt) == (['s1'], [])
    records, corrupt = store.list_containers('s1')
    assert ([r.id for r in records], corrupt) == (['c1'], [])


def test_list_is_sorted(store):
    for sid in ('b', 'c', 'a'):
        store.save_sandbox(SandboxRecord(id=sid))
    assert [r.id for r in store.list_sandboxes()[0]] == ['a', 'b', 'c']


# ------------------------------------------------------------------ containers

def test_container_round_trip(store):
    store.save_sandbox(SandboxRecord(id='s1'))
    saved = store.save_container(ContainerRecord(id='c1', sandbox='s1', status='created'))
    assert saved['version'] == 1
    assert store.load_container('s1', 'c1').status == 'created'
    path = os.path.join(store.sandbox_dir('s1'), 'containers', 'c1.json')
    assert mode(path) == 0o600
    store.save_container(ContainerRecord(id='c2', sandbox='s1'))
    records, corrupt = store.list_containers('s1')
    assert [r.id for r in records] == ['c1', 'c2'] and corrupt == []
    assert store.remove_container('s1', 'c1') is True
    assert store.remove_container('s1', 'c1') is False
    assert [r.id for r in store.list_containers('s1')[0]] == ['c2']


def test_container_needs_its_sandbox(store, root):
    with pytest.raises(NotFound, match='s1'):
        store.save_container(ContainerRecord(id='c1', sandbox='s1'))
    assert not os.path.exists(os.path.join(root, 'sandboxes', 's1'))


@pytest.mark.parametrize('kind', sorted(CORRUPT))
def test_corrupt_container_record(store, kind):
    store.save_sandbox(SandboxRecord(id='s1'))
    store.save_container(ContainerRecord(id='c1', sandbox='s1'))
    store.save_container(ContainerRecord(id='c2', sandbox='s1'))
    path = os.path.join(store.sandbox_dir('s1'), 'containers', 'c2.json')
    with open(path, 'wb') as f:
        f.write(CORRUPT[kind])
    with pytest.raises(CorruptRecord) as info:
        store.load_container('s1', 'c2')
    assert path in str(info.value)
    records, corrupt = store.list_containers('s1')
    assert [r.id for r in records] == ['c1']
    assert [(c['id'], c['path']) for c in corrupt] == [('c2', path)]


# -------------------------------------------------------------------- mappings

def test_mapping_round_trip(store, root):
    assert store.get_mapping('c1') is None
    store.set_mapping('c1', 's1')
    store.set_mapping('c2', 's1')
    assert store.get_mapping('c1') == 's1'
    assert mode(os.path.join(root, 'mappings', 'c1')) == 0o600
    assert store.list_mappings() == {'c1': 's1', 'c2': 's1'}
    store.set_mapping('c1', 's2')
    assert store.get_mapping('c1') == 's2'
    assert store.remove_mapping('c1') is True
    assert store.remove_mapping('c1') is False
    assert store.list_mappings() == {'c2': 's1'}


def test_corrupt_mapping(store, root):
    store.set_mapping('c1', 's1')
    with open(os.path.join(root, 'mappings', 'c1'), 'w') as f:
        f.write('../../etc\n')
    with pytest.raises(CorruptRecord, match='c1'):
        store.get_mapping('c1')
    assert store.list_mappings() == {'c1': None}


# ------------------------------------------------------------------------ locks

def _holder(root, sid, timeout, hold_until_stdin=True):
    """A separate process that takes the lock, says 'locked', and holds it until stdin closes."""
    code = textwrap.dedent('''
        import sys
        from ansible_collections.kata.runtime.plugins.module_utils.kata.store import Store
        store = Store(sys.argv[1])
        with store.lock(sys.argv[2], timeout=float(sys.argv[3]), owner='test holder'):
            print('locked', flush=True)
            sys.stdin.read()
        print('released', flush=True)
    ''')
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    return subprocess.Popen([sys.executable, '-c', code, root, sid, str(timeout)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)


def test_lock_excludes_another_process_and_times_out(store):
    proc = _holder(store.root, 's1', 10)
    try:
        assert proc.stdout.readline().strip() == 'locked'
        start = time.monotonic()
        with pytest.raises(LockTimeout) as info:
            with store.lock('s1', timeout=0.3):
                pass  # pragma: no cover
        assert time.monotonic() - start >= 0.3
        msg = str(info.value)
        assert 's1' in msg and str(proc.pid) in msg and 'test holder' in msg
    finally:
        proc.stdin.close()
        proc.wait(10)
    with store.lock('s1', timeout=5):
        pass


def test_lock_waits_for_release(store):
    proc = _holder(store.root, 's1', 10)
    try:
        assert proc.stdout.readline().strip() == 'locked'
        # release after a moment from a timer
        import threading
        threading.Timer(0.5, proc.stdin.close).start()
        start = time.monotonic()
        with store.lock('s1', timeout=10):
            assert time.monotonic() - start >= 0.4
            assert proc.wait(10) == 0
    finally:
        proc.wait(10)


def test_lock_is_per_sandbox_and_reentrant(store):
    store.save_sandbox(SandboxRecord(id='s1'))
    with store.lock('s1', timeout=0):
        with store.lock('s1', timeout=0):  # same thread: re-entrant
            pass
        with store.lock('s2', timeout=0):
            pass
    assert mode(store.lock_path('s1')) == 0o600


def test_a_lock_of_an_id_without_a_sandbox_leaves_no_file(store):
    """A create refused before its record, a delete of nothing, a delete killed right before it
    unlinked the lock file: releasing a lock of an ID without a sandbox directory removes the
    file, so none of them leaves residue; a sandbox's lock file stays."""
    with store.lock('ghost', timeout=0):
        assert mode(store.lock_path('ghost')) == 0o600
    assert not os.path.lexists(store.lock_path('ghost'))
    store.ensure()
    with open(store.lock_path('left'), 'w'):
        pass  # what a delete killed at its last step leaves
    with store.try_lock('left') as free:
        assert free
    assert not os.path.lexists(store.lock_path('left'))
    store.save_sandbox(SandboxRecord(id='kept'))
    with store.try_lock('kept') as free:
        assert free
    assert os.path.isfile(store.lock_path('kept'))


def _wait_until_open(pid, path, timeout=20):
    deadline = time.monotonic() + timeout
    fd_dir = f'/proc/{pid}/fd'
    while time.monotonic() < deadline:
        try:
            targets = [os.readlink(os.path.join(fd_dir, fd)) for fd in os.listdir(fd_dir)]
        except OSError:
            targets = []
        if os.path.realpath(path) in targets:
            return
        time.sleep(0.02)
    pytest.fail(f'process {pid} never opened {path}')


def test_waiter_retries_when_lock_file_was_unlinked(store):
    """remove_sandbox unlinks the lock file while held; a waiter must not keep a stale inode."""
    store.save_sandbox(SandboxRecord(id='s1'))
    with store.lock('s1'):
        proc = _holder(store.root, 's1', 10)
        _wait_until_open(proc.pid, store.lock_path('s1'))  # now waiting on the old inode
        store.remove_sandbox('s1')
        assert not os.path.exists(store.lock_path('s1'))
    try:
        assert proc.stdout.readline().strip() == 'locked'
        # the waiter holds the lock on the file now at the path, so we are excluded
        with pytest.raises(LockTimeout):
            with store.lock('s1', timeout=0.2):
                pass  # pragma: no cover
    finally:
        proc.stdin.close()
        proc.wait(10)


@pytest.mark.parametrize('bad', [-1, 'soon', True])
def test_bad_lock_timeout(store, bad):
    with pytest.raises(InvalidArgument, match=repr(bad)):
        with store.lock('s1', timeout=bad):
            pass  # pragma: no cover


# ------------------------------------------------------------------ removal

def test_remove_sandbox_removes_tree_lock_and_socket_only(store, root):
    store.save_sandbox(SandboxRecord(id='s1'))
    store.save_sandbox(SandboxRecord(id='s2'))
    store.save_container(ContainerRecord(id='c1', sandbox='s1'))
    store.set_mapping('c1', 's1')
    os.makedirs(os.path.join(store.shared_dir('s1'), 'c1', 'rootfs', 'etc'))
    open(os.path.join(store.sandbox_dir('s1'), 'console.log'), 'w').close()
    open(store.agent_socket('s1'), 'w').close()
    with store.lock('s1'):
        pass
    assert store.remove_sandbox('s1') is True
    assert not os.path.lexists(store.sandbox_dir('s1'))
    assert not os.path.lexists(store.lock_path('s1'))
    assert not os.path.lexists(store.agent_socket('s1'))
    assert store.load_sandbox('s2') is not None
    assert store.get_mapping('c1') == 's1'  # mappings are the lifecycle's business
    assert store.remove_sandbox('s1') is False


def test_remove_missing_sandbox_creates_nothing(store, root):
    assert store.remove_sandbox('s1') is False
    assert not os.path.exists(root)


def test_remove_sandbox_does_not_follow_planted_symlinks(store, tmp_path):
    outside = tmp_path / 'outside'
    (outside / 'sub').mkdir(parents=True)
    (outside / 'precious').write_text('keep me')
    (outside / 'sub' / 'deep').write_text('keep me too')
    store.save_sandbox(SandboxRecord(id='s1'))
    shared = store.shared_dir('s1')
    os.symlink(str(outside), os.path.join(shared, 'dirlink'))
    os.symlink(str(outside / 'precious'), os.path.join(shared, 'filelink'))
    os.makedirs(os.path.join(shared, 'c1'))
    os.symlink(str(outside), os.path.join(shared, 'c1', 'rootfs'))
    assert store.remove_sandbox('s1') is True
    assert not os.path.lexists(store.sandbox_dir('s1'))
    assert (outside / 'precious').read_text() == 'keep me'
    assert (outside / 'sub' / 'deep').read_text() == 'keep me too'


def test_sandbox_dir_symlinked_outside_is_refused(store, tmp_path):
    outside = tmp_path / 'outside'
    outside.mkdir()
    (outside / 'sandbox.json').write_text('{"id": "s1", "version": 1}')
    store.ensure()
    os.symlink(str(outside), store.sandbox_dir('s1'))
    with pytest.raises(KataError) as info:
        store.remove_sandbox('s1')
    assert store.sandbox_dir('s1') in str(info.value)
    assert (outside / 'sandbox.json').exists()
    with pytest.raises(KataError, match='not a directory'):
        store.save_sandbox(SandboxRecord(id='s1'))
    with pytest.raises(KataError, match='outside the state root'):
        store.load_sandbox('s1')
    assert (outside / 'sandbox.json').read_text() == '{"id": "s1", "version": 1}'


def test_sandboxes_dir_symlinked_outside_is_refused(store, root, tmp_path):
    outside = tmp_path / 'elsewhere'
    (outside / 's1').mkdir(parents=True)
    (outside / 's1' / 'keep').write_text('x')
    os.makedirs(root)
    os.symlink(str(outside), os.path.join(root, 'sandboxes'))
    refused = 'outside the state root|not a directory'
    with pytest.raises(KataError, match=refused):
        store.remove_sandbox('s1')
    with pytest.raises(KataError, match=refused):
        store.save_sandbox(SandboxRecord(id='s2'))
    with pytest.raises(KataError, match='outside the state root'):
        store.load_sandbox('s1')
    assert (outside / 's1' / 'keep').exists()
    assert sorted(os.listdir(outside)) == ['s1']


def _mount(args):
    try:
        res = subprocess.run(['mount'] + args, capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired) as err:
        pytest.skip(f'mount not available: {err}')
    if res.returncode != 0:
        pytest.skip(f'mount not permitted here: {res.stderr.strip()}')


def _umount(path):
    subprocess.run(['umount', path], capture_output=True, timeout=20, check=False)


@pytest.mark.parametrize('how', ['tmpfs', 'bind'])
def test_remove_sandbox_refuses_mount_points(store, tmp_path, how):
    store.save_sandbox(SandboxRecord(id='s1'))
    rootfs = os.path.join(store.shared_dir('s1'), 'c1', 'rootfs')
    os.makedirs(rootfs)
    if how == 'tmpfs':
        _mount(['-t', 'tmpfs', 'tmpfs', rootfs])
    else:
        source = tmp_path / 'user-rootfs'
        source.mkdir()
        _mount(['--bind', str(source), rootfs])
    try:
        with open(os.path.join(rootfs, 'user-data'), 'w') as f:
            f.write('not ours')
        before = tree(store.sandbox_dir('s1'))
        with pytest.raises(Conflict) as info:
            store.remove_sandbox('s1')
        assert os.path.realpath(rootfs) in str(info.value)
        assert 'mounted' in str(info.value)
        assert tree(store.sandbox_dir('s1')) == before
        assert store.load_sandbox('s1') is not None
    finally:
        _umount(rootfs)
    if how == 'bind':
        assert (tmp_path / 'user-rootfs' / 'user-data').read_text() == 'not ours'
    assert store.remove_sandbox('s1') is True


def test_forked_child_does_not_inherit_a_held_lock(store):
    """Re-entrancy is per thread of one process: a fork()ed child must wait like anyone."""
    with store.lock('s1'):
        pid = os.fork()
        if pid == 0:  # pragma: no cover - child
            code = 1
            try:
                with store.lock('s1', timeout=0.2):
                    code = 2
            except LockTimeout:
                code = 0
            finally:
                os._exit(code)
        _pid, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


# ------------------------------------------------------ guest-made trees in shared/
# A hostile guest writes into shared/ over 9p: any depth, symlinks, fifos, sockets. Removal must
# neither recurse (RecursionError near 1,000 levels) nor pass paths to the kernel (ENAMETOOLONG
# past 4,096 bytes), so these chains are deeper than both, and are built through dir fds.

DEEP = 5000
# deeper than the recursion limit, and 'd/' per level makes the path longer than PATH_MAX
PAST_LIMITS = 2500
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason='mounting needs root')


def opendir(path):
    return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)


def chain(parent_fd, depth, name='d'):
    """Nest ``depth`` directories ``name`` under ``parent_fd``; an fd of the deepest (caller closes)."""
    fd = os.dup(parent_fd)
    for _level in range(depth):
        os.mkdir(name, dir_fd=fd)
        child = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
        os.close(fd)
        fd = child
    return fd


def chain_at(path, depth, name='d'):
    top = opendir(path)
    try:
        return chain(top, depth, name)
    finally:
        os.close(top)


def chain_depth(path, name='d'):
    """How many directories ``name`` are nested under ``path`` (walked by fd, never by path)."""
    fd, depth = opendir(path), 0
    try:
        while True:
            try:
                child = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            except OSError:
                return depth
            os.close(fd)
            fd, depth = child, depth + 1
    finally:
        os.close(fd)


def write_at(dir_fd, name, text):
    fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600, dir_fd=dir_fd)
    with os.fdopen(fd, 'w') as f:
        f.write(text)


def snapshot(path):
    """Everything under a (shallow) canary directory with file contents, to prove it untouched."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(path):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            if name in dirnames:
                out[os.path.relpath(full, path)] = None
            else:
                with open(full) as f:
                    out[os.path.relpath(full, path)] = f.read()
    return out


@pytest.fixture
def canary(tmp_path):
    """A directory outside the state root that planted symlinks point at; it must survive."""
    path = tmp_path / 'canary'
    (path / 'd' / 'd').mkdir(parents=True)  # names like the chains', for a walk that follows links
    (path / 'keep').write_text('keep me')
    (path / 'd' / 'd' / 'keep').write_text('keep me too')
    return path


@pytest.fixture(autouse=True)
def _no_deep_leftovers(tmp_path):
    """Remove what a failed or skipped test leaves under tmp_path before pytest has to.

    pytest deletes old temp dirs with shutil.rmtree, which (Python < 3.12) recurses and would
    die on a leftover deep chain; rm(1) walks by fd. --one-file-system: never into a mount.
    """
    yield
    subprocess.run(['rm', '-rf', '--one-file-system', '--', str(tmp_path)], capture_output=True,
                   timeout=300, check=False)


def test_remove_sandbox_removes_a_5000_deep_chain(store):
    store.save_sandbox(SandboxRecord(id='s1'))
    store.save_sandbox(SandboxRecord(id='s2'))
    bottom = chain_at(store.shared_dir('s1'), DEEP)
    try:
        write_at(bottom, 'at-the-bottom', 'x')
    finally:
        os.close(bottom)
    os.close(chain_at(store.shared_dir('s1'), 3, name='side'))
    assert chain_depth(store.shared_dir('s1')) == DEEP
    assert store.remove_sandbox('s1') is True
    assert not os.path.lexists(store.sandbox_dir('s1'))
    assert not os.path.lexists(store.lock_path('s1'))
    assert store.load_sandbox('s2') is not None
    assert store.remove_sandbox('s1') is False


def test_deep_removal_keeps_a_bounded_number_of_fds_open(store):
    """Not one fd per level: the chain is far deeper than the fd limit set here."""
    store.save_sandbox(SandboxRecord(id='s1'))
    os.close(chain_at(store.shared_dir('s1'), PAST_LIMITS))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    highest = max(int(fd) for fd in os.listdir('/proc/self/fd'))
    limit = highest + 1 + 300
    assert limit < PAST_LIMITS
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))
    try:
        assert store.remove_sandbox('s1') is True
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert not os.path.lexists(store.sandbox_dir('s1'))


def plant(dir_fd, canary, tmp_path):
    """Symlinks out of the root (to a dir, a file, nowhere), a fifo and a socket, in ``dir_fd``."""
    os.symlink(str(canary), 'dirlink', dir_fd=dir_fd)
    os.symlink(str(canary / 'keep'), 'filelink', dir_fd=dir_fd)
    os.symlink(str(tmp_path / 'nowhere'), 'dangling', dir_fd=dir_fd)
    os.symlink('../../../../../../../../../../..', 'up', dir_fd=dir_fd)
    os.mkfifo('fifo', dir_fd=dir_fd)
    os.mknod('sock', 0o600 | stat.S_IFSOCK, dir_fd=dir_fd)


def test_remove_sandbox_unlinks_hostile_entries_deep_in_the_tree(store, canary, tmp_path):
    store.save_sandbox(SandboxRecord(id='s1'))
    before = snapshot(canary)
    shared = opendir(store.shared_dir('s1'))
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    cwd = os.getcwd()
    try:
        plant(shared, canary, tmp_path)
        middle = chain(shared, PAST_LIMITS // 2)
        try:
            plant(middle, canary, tmp_path)
            os.fchdir(middle)  # a real, bound socket: bind() takes a path, short only from here
            listener.bind('listening.sock')
            listener.listen(1)
            bottom = chain(middle, PAST_LIMITS - PAST_LIMITS // 2)
        finally:
            os.chdir(cwd)
            os.close(middle)
        try:
            plant(bottom, canary, tmp_path)
            os.symlink(str(canary), 'd', dir_fd=bottom)  # the chain "goes on" into the canary
        finally:
            os.close(bottom)
    finally:
        os.close(shared)
    try:
        assert store.remove_sandbox('s1') is True
    finally:
        listener.close()
    assert not os.path.lexists(store.sandbox_dir('s1'))
    assert snapshot(canary) == before


def test_remove_sandbox_unlinks_a_symlink_in_place_of_shared(store, canary):
    """shared/ itself a symlink out of the root: unlinked, and the rest (deep) still goes."""
    store.save_sandbox(SandboxRecord(id='s1'))
    before = snapshot(canary)
    os.rmdir(store.shared_dir('s1'))
    os.symlink(str(canary), store.shared_dir('s1'))
    os.close(chain_at(store.containers_dir('s1'), PAST_LIMITS))
    assert store.remove_sandbox('s1') is True
    assert not os.path.lexists(store.sandbox_dir('s1'))
    assert snapshot(canary) == before


def test_remove_sandbox_does_not_follow_a_directory_swapped_mid_removal(store, canary, monkeypatch):
    """A guest moves a directory the removal is inside of and puts a symlink in its place.

    The removal holds fds only for some levels; coming back up it reopens the others by name,
    which must refuse the symlink (O_NOFOLLOW) and notice the directory is not the one it
    entered, then start again: the link is unlinked and the moved tree removed.
    """
    store.save_sandbox(SandboxRecord(id='s1'))
    before = snapshot(canary)
    shared = store.shared_dir('s1')
    os.mkdir(os.path.join(shared, 'a'))
    bottom = chain_at(os.path.join(shared, 'a'), PAST_LIMITS)
    bottom_ino = os.fstat(bottom).st_ino
    os.close(bottom)
    a_ino = os.lstat(os.path.join(shared, 'a')).st_ino
    real_scandir, swapped, a_listed = os.scandir, [], []

    def scandir(*args, **kwargs):
        if args and isinstance(args[0], int):
            ino = os.fstat(args[0]).st_ino
            if ino == a_ino:
                a_listed.append(bool(swapped))
            if ino == bottom_ino and not swapped:
                os.rename(os.path.join(shared, 'a'), os.path.join(shared, 'a.moved'))
                os.symlink(str(canary), os.path.join(shared, 'a'))
                swapped.append(True)
        return real_scandir(*args, **kwargs)

    monkeypatch.setattr(os, 'scandir', scandir)
    assert store.remove_sandbox('s1') is True
    # swapped at the bottom, then the moved directory was walked again from the top: the
    # way back up by name met the symlink and did not go on through it
    assert swapped and a_listed == [False, True]
    assert not os.path.lexists(store.sandbox_dir('s1'))
    assert snapshot(canary) == before


def test_mount_table_decides_without_walking_the_tree(store, monkeypatch):
    """Mount points come from the mount table: a deep tree is not walked to find them, and a
    mount point that only shares a prefix with the sandbox dir (s1x vs s1) is not under it."""
    store.save_sandbox(SandboxRecord(id='s1'))
    os.close(chain_at(store.shared_dir('s1'), PAST_LIMITS))
    real = os.path.realpath(store.sandbox_dir('s1'))
    table = {'/', os.path.dirname(real), real + 'x', real + 'x' + os.sep + 'shared'}
    monkeypatch.setattr(store_module, '_mount_points', lambda: set(table))
    table.add(real + os.sep + 'shared' + os.sep + 'c1')
    with pytest.raises(Conflict) as info:
        store.remove_sandbox('s1')
    assert info.value.details['mounts'] == [real + os.sep + 'shared' + os.sep + 'c1']
    assert chain_depth(store.shared_dir('s1')) == PAST_LIMITS  # nothing touched
    assert store.load_sandbox('s1') is not None
    table.discard(real + os.sep + 'shared' + os.sep + 'c1')
    assert store.remove_sandbox('s1') is True
    assert not os.path.lexists(store.sandbox_dir('s1'))


@needs_root
@pytest.mark.parametrize('how', ['tmpfs', 'bind'])
def test_remove_sandbox_refuses_a_mount_deep_in_a_guest_tree(store, tmp_path, how):
    """A mount under a deep chain, next to a deeper one: refused up front, nothing removed.

    The bind mount comes from the same file system, so st_dev alone could not tell it.
    """
    store.save_sandbox(SandboxRecord(id='s1'))
    shared = store.shared_dir('s1')
    os.close(chain_at(shared, PAST_LIMITS))
    levels = 1200  # past the recursion limit, and still a path mount(8) accepts
    os.close(chain_at(shared, levels, name='m'))
    mnt = os.path.join(shared, *['m'] * levels)
    if how == 'tmpfs':
        _mount(['-t', 'tmpfs', '-o', 'mode=0700', 'tmpfs', mnt])
    else:
        source = tmp_path / 'bind-source'
        source.mkdir()
        assert os.stat(source).st_dev == os.stat(shared).st_dev
        _mount(['--bind', str(source), mnt])
    try:
        with open(os.path.join(mnt, 'user-data'), 'w') as f:
            f.write('not ours')
        with pytest.raises(Conflict) as info:
            store.remove_sandbox('s1')
        msg = str(info.value)
        assert os.path.realpath(mnt) in msg and 'mounted' in msg
        assert info.value.details['mounts'] == [os.path.realpath(mnt)]
        with open(os.path.join(mnt, 'user-data')) as f:
            assert f.read() == 'not ours'
        assert chain_depth(shared) == PAST_LIMITS
        assert chain_depth(shared, 'm') == levels
        assert store.load_sandbox('s1') is not None
    finally:
        _umount(mnt)
    if how == 'bind':
        assert (tmp_path / 'bind-source' / 'user-data').read_text() == 'not ours'
    assert store.remove_sandbox('s1') is True
    assert not os.path.lexists(store.sandbox_dir('s1'))


@needs_root
def test_removal_refuses_a_mount_the_mount_table_did_not_show(store, monkeypatch):
    """The second guard: a mount made after the table was read (simulated: an empty table) is
    found by st_dev while removing; it is named, and nothing under it is touched."""
    store.save_sandbox(SandboxRecord(id='s1'))
    shared = store.shared_dir('s1')
    os.close(chain_at(shared, PAST_LIMITS))
    rootfs = os.path.join(shared, 'c1', 'rootfs')
    os.makedirs(rootfs)
    _mount(['-t', 'tmpfs', '-o', 'mode=0700', 'tmpfs', rootfs])
    try:
        with open(os.path.join(rootfs, 'user-data'), 'w') as f:
            f.write('not ours')
        monkeypatch.setattr(store_module, '_mount_points', set)
        with pytest.raises(Conflict) as info:
            store.remove_sandbox('s1')
        assert rootfs in str(info.value) and 'mount point' in str(info.value)
        assert info.value.details['mounts'] == [rootfs]
        with open(os.path.join(rootfs, 'user-data')) as f:
            assert f.read() == 'not ours'
        assert store.load_sandbox('s1') is not None  # the record goes last
    finally:
        _umount(rootfs)
    assert store.remove_sandbox('s1') is True
    assert not os.path.lexists(store.sandbox_dir('s1'))
