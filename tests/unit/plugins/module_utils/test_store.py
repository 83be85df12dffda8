# Copyright: kata.runtime contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Store: real files under a temp state root, real processes for the locks, real mounts."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import textwrap
import time

import pytest
from ansible_collections.kata.runtime.plugins.module_utils.kata.errors import (
    Conflict,
    CorruptRecord,
    InvalidArgument,
    KataError,
    LockTimeout,
    NotFound,
)
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
    assert store.console_log('s1') == os.path.join(root, 'sandboxes', 's1', 'console.log')
    sock = store.agent_socket('x' * 128)
    assert os.path.dirname(sock) == os.path.join(root, 'sock')
    assert len(os.path.basename(sock)) == len('0123456789abcdef.sock')
    assert store.agent_socket('a') != store.agent_socket('b')


# ------------------------------------------------------------------- sandboxes

def test_sandbox_round_trip_atomic_and_private(store, root):
    saved = store.save_sandbox({'id': 's1', 'vcpus': 1, 'labels': {'a': 'b'}})
    assert saved['version'] == 1
    loaded = store.load_sandbox('s1')
    assert loaded == {'id': 's1', 'vcpus': 1, 'labels': {'a': 'b'}, 'version': 1}
    sdir = store.sandbox_dir('s1')
    assert mode(os.path.join(sdir, 'sandbox.json')) == 0o600
    for sub in ('', 'containers', 'shared'):
        assert mode(os.path.join(sdir, sub)) == 0o700
    # overwrite: still one file, no temp leftovers anywhere
    store.save_sandbox({'id': 's1', 'vcpus': 2})
    assert store.load_sandbox('s1')['vcpus'] == 2
    assert not [p for p in tree(root) if p.endswith('.tmp') or '/.' in p]


def test_failed_save_keeps_old_record_and_leaves_no_temp(store, root):
    store.save_sandbox({'id': 's1', 'vcpus': 1})
    before = tree(root)
    with pytest.raises(InvalidArgument, match='JSON'):
        store.save_sandbox({'id': 's1', 'vcpus': object()})
    assert store.load_sandbox('s1')['vcpus'] == 1
    assert tree(root) == before


def test_load_missing_is_none(store):
    assert store.load_sandbox('nope') is None
    assert store.load_container('nope', 'c') is None


@pytest.mark.parametrize('bad', BAD_IDS)
def test_bad_ids_are_refused_before_anything_is_touched(store, root, bad):
    store.save_sandbox({'id': 'good'})
    store.save_container({'id': 'c1', 'sandbox': 'good'})
    store.set_mapping('c1', 'good')
    before = tree(root)
    calls = [
        lambda: store.save_sandbox({'id': bad}),
        lambda: store.load_sandbox(bad),
        lambda: store.remove_sandbox(bad),
        lambda: store.sandbox_dir(bad),
        lambda: store.agent_socket(bad),
        lambda: store.save_container({'id': bad, 'sandbox': 'good'}),
        lambda: store.save_container({'id': 'c2', 'sandbox': bad}),
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
    store.save_sandbox({'id': 'good'})
    store.save_sandbox({'id': 's1'})
    path = os.path.join(store.sandbox_dir('s1'), 'sandbox.json')
    with open(path, 'wb') as f:
        f.write(CORRUPT[kind])
    with pytest.raises(CorruptRecord) as info:
        store.load_sandbox('s1')
    assert path in str(info.value)
    records, corrupt = store.list_sandboxes()
    assert [r['id'] for r in records] == ['good']
    assert len(corrupt) == 1
    assert corrupt[0]['id'] == 's1'
    assert corrupt[0]['path'] == path
    assert corrupt[0]['error']


def test_record_naming_another_id_is_corrupt(store):
    store.save_sandbox({'id': 's1'})
    path = os.path.join(store.sandbox_dir('s1'), 'sandbox.json')
    with open(path, 'w') as f:
        json.dump({'id': 'other', 'version': 1}, f)
    with pytest.raises(CorruptRecord, match="'other'"):
        store.load_sandbox('s1')


def test_newer_record_version_is_refused(store):
    store.save_sandbox({'id': 's1'})
    path = os.path.join(store.sandbox_dir('s1'), 'sandbox.json')
    with open(path, 'w') as f:
        json.dump({'id': 's1', 'version': 2}, f)
    with pytest.raises(CorruptRecord, match='version 2'):
        store.load_sandbox('s1')


def test_record_that_is_a_symlink_is_not_followed(store, tmp_path):
    secret = tmp_path / 'secret.json'
    secret.write_text('{"id": "s1", "version": 1}')
    store.save_sandbox({'id': 's1'})
    path = os.path.join(store.sandbox_dir('s1'), 'sandbox.json')
    os.unlink(path)
    os.symlink(str(secret), path)
    with pytest.raises(CorruptRecord, match='symlink'):
        store.load_sandbox('s1')


def test_sandbox_dir_without_record_is_reported(store):
    store.save_sandbox({'id': 'good'})
    os.makedirs(store.sandbox_dir('half'))
    records, corrupt = store.list_sandboxes()
    assert [r['id'] for r in records] == ['good']
    assert [c['id'] for c in corrupt] == ['half']
    assert 'sandbox.json' in corrupt[0]['error']


def test_listing_ignores_temp_files_and_missing_root(store, root):
    assert store.list_sandboxes() == ([], [])
    assert store.list_containers('s1') == ([], [])
    assert store.list_mappings() == {}
    assert not os.path.exists(root)
    store.save_sandbox({'id': 's1'})
    store.save_container({'id': 'c1', 'sandbox': 's1'})
    open(os.path.join(store.sandbox_dir('s1'), 'containers', '.c2.json.abc.tmp'), 'w').close()
    os.makedirs(os.path.join(root, 'sandboxes', '.s2.tmp'))
    records, corrupt = store.list_sandboxes()
    assert ([r['id'] for r in records], corrupt) == (['s1'], [])
    records, corrupt = store.list_containers('s1')
    assert ([r['id'] for r in records], corrupt) == (['c1'], [])


def test_list_is_sorted(store):
    for sid in ('b', 'c', 'a'):
        store.save_sandbox({'id': sid})
    assert [r['id'] for r in store.list_sandboxes()[0]] == ['a', 'b', 'c']


# ------------------------------------------------------------------ containers

def test_container_round_trip(store):
    store.save_sandbox({'id': 's1'})
    saved = store.save_container({'id': 'c1', 'sandbox': 's1', 'status': 'created'})
    assert saved['version'] == 1
    assert store.load_container('s1', 'c1')['status'] == 'created'
    path = os.path.join(store.sandbox_dir('s1'), 'containers', 'c1.json')
    assert mode(path) == 0o600
    store.save_container({'id': 'c2', 'sandbox': 's1'})
    records, corrupt = store.list_containers('s1')
    assert [r['id'] for r in records] == ['c1', 'c2'] and corrupt == []
    assert store.remove_container('s1', 'c1') is True
    assert store.remove_container('s1', 'c1') is False
    assert [r['id'] for r in store.list_containers('s1')[0]] == ['c2']


def test_container_needs_its_sandbox(store, root):
    with pytest.raises(NotFound, match='s1'):
        store.save_container({'id': 'c1', 'sandbox': 's1'})
    assert not os.path.exists(os.path.join(root, 'sandboxes', 's1'))


@pytest.mark.parametrize('kind', sorted(CORRUPT))
def test_corrupt_container_record(store, kind):
    store.save_sandbox({'id': 's1'})
    store.save_container({'id': 'c1', 'sandbox': 's1'})
    store.save_container({'id': 'c2', 'sandbox': 's1'})
    path = os.path.join(store.sandbox_dir('s1'), 'containers', 'c2.json')
    with open(path, 'wb') as f:
        f.write(CORRUPT[kind])
    with pytest.raises(CorruptRecord) as info:
        store.load_container('s1', 'c2')
    assert path in str(info.value)
    records, corrupt = store.list_containers('s1')
    assert [r['id'] for r in records] == ['c1']
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
    with store.lock('s1', timeout=0):
        with store.lock('s1', timeout=0):  # same thread: re-entrant
            pass
        with store.lock('s2', timeout=0):
            pass
    assert mode(store.lock_path('s1')) == 0o600


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
    store.save_sandbox({'id': 's1'})
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
    store.save_sandbox({'id': 's1'})
    store.save_sandbox({'id': 's2'})
    store.save_container({'id': 'c1', 'sandbox': 's1'})
    store.set_mapping('c1', 's1')
    os.makedirs(os.path.join(store.shared_dir('s1'), 'c1', 'rootfs', 'etc'))
    open(store.console_log('s1'), 'w').close()
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
    store.save_sandbox({'id': 's1'})
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
        store.save_sandbox({'id': 's1'})
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
        store.save_sandbox({'id': 's2'})
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
    store.save_sandbox({'id': 's1'})
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
