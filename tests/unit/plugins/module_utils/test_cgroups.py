# Copyright: kata.runtime contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Cgroups against fake hierarchies in temp dirs, and against the real cgroupfs when writable."""

from __future__ import annotations

import os
import subprocess
import threading
import time
import uuid

import pytest
from ansible_collections.kata.runtime.plugins.module_utils.kata.cgroups import (
    Cgroups,
    detect_layout,
)
from ansible_collections.kata.runtime.plugins.module_utils.kata.errors import (
    CgroupError,
    InvalidArgument,
)

V1_CONTROLLERS = ('memory', 'pids', 'cpu,cpuacct')


def touch(path, text=''):
    path.write_text(text)


def make_v1(root):
    root.mkdir(exist_ok=True)
    for name in V1_CONTROLLERS + ('systemd',):
        d = root / name
        d.mkdir()
        touch(d / 'tasks')
        touch(d / 'cgroup.procs')
    # co-mounted controllers reachable under several names
    (root / 'cpu').symlink_to('cpu,cpuacct')
    (root / 'cpuacct').symlink_to('cpu,cpuacct')
    (root / 'not-a-cgroup').mkdir()
    return root


def make_v2(root):
    root.mkdir(exist_ok=True)
    touch(root / 'cgroup.controllers', 'cpu memory pids\n')
    touch(root / 'cgroup.procs')
    return root


def make_hybrid(root):
    make_v1(root)
    make_v2(root / 'unified')
    return root


def tree(root):
    """Every path under ``root`` with its kind: a snapshot to prove nothing changed."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            kind = 'link' if os.path.islink(path) else 'dir' if os.path.isdir(path) else 'file'
            out.append((os.path.relpath(path, root), kind))
    return sorted(out)


@pytest.fixture(params=['v1', 'v2', 'hybrid'])
def fake(request, tmp_path):
    root = tmp_path / 'cgroup'
    {'v1': make_v1, 'v2': make_v2, 'hybrid': make_hybrid}[request.param](root)
    return Cgroups(str(root), parent='kata')


# -- layout ----------------------------------------------------------------------------------

def test_layout_v2(tmp_path):
    root = make_v2(tmp_path / 'cg')
    cg = Cgroups(str(root))
    assert cg.layout == 'v2'
    assert cg.mounts() == [str(root)]


def test_layout_v1_skips_systemd_and_dedupes_comounts(tmp_path):
    root = make_v1(tmp_path / 'cg')
    cg = Cgroups(str(root))
    assert cg.layout == 'v1'
    assert cg.mounts() == [str(root / 'cpu,cpuacct'), str(root / 'memory'), str(root / 'pids')]


def test_layout_hybrid(tmp_path):
    root = make_hybrid(tmp_path / 'cg')
    cg = Cgroups(str(root))
    assert cg.layout == 'hybrid'
    assert cg.mounts() == [str(root / 'cpu,cpuacct'), str(root / 'memory'), str(root / 'pids'),
                           str(root / 'unified')]


def test_layout_none(tmp_path):
    (tmp_path / 'empty').mkdir()
    assert detect_layout(str(tmp_path / 'empty')) == ('none', [])
    assert detect_layout(str(tmp_path / 'missing')) == ('none', [])
    cg = Cgroups(str(tmp_path / 'empty'))
    assert cg.layout == 'none'
    with pytest.raises(CgroupError, match='no cgroup hierarchy found'):
        cg.create(None, 'c1')
    assert os.listdir(tmp_path / 'empty') == []


@pytest.mark.parametrize('root, parent, match', [
    ('relative/root', 'kata', "cgroup root 'relative/root'"),
    ('/sys/fs/cgroup', '../kata', "cgroup parent '../kata'"),
    ('/sys/fs/cgroup', '', "cgroup parent ''"),
    ('/sys/fs/cgroup', None, 'cgroup parent None'),
])
def test_bad_constructor_arguments(root, parent, match):
    with pytest.raises(InvalidArgument, match=match):
        Cgroups(root, parent)


# -- resolve ---------------------------------------------------------------------------------

def test_resolve_absolute_relative_and_empty(fake):
    mounts = fake.mounts()
    assert fake.resolve('/pod/c1', 'x') == [os.path.join(m, 'pod', 'c1') for m in mounts]
    assert fake.resolve('pod/c1', 'x') == [os.path.join(m, 'kata', 'pod', 'c1') for m in mounts]
    assert fake.resolve('', 'c1') == [os.path.join(m, 'kata', 'c1') for m in mounts]
    assert fake.resolve(None, 'c1') == [os.path.join(m, 'kata', 'c1') for m in mounts]
    assert fake.resolve('/a/./b//c/../d/', 'x') == [os.path.join(m, 'a', 'b', 'd') for m in mounts]


def test_nested_parent(tmp_path):
    cg = Cgroups(str(make_v2(tmp_path / 'cg')), parent='/tenants/acme/')
    assert cg.parent == 'tenants/acme'
    assert cg.resolve('c1', 'x') == [str(tmp_path / 'cg' / 'tenants' / 'acme' / 'c1')]


@pytest.mark.parametrize('path', [
    '../../etc', '/sys/../../tmp', 'a/../../..', '..', '/..', '/', '', 'a/..', './.',
    'pod\0evil', 'system.slice:kata:c1', ':kata:c1', 'x' * 256, 5, ['a'],
])
def test_bad_paths_are_refused_and_nothing_is_created(fake, path):
    default_name = '..' if path == '' else 'c1'   # '' falls back to the default name
    before = tree(fake.root)
    with pytest.raises(InvalidArgument) as err:
        fake.create(path, default_name)
    shown = repr(default_name) if path == '' else repr(path)[:40]
    assert shown in str(err.value)
    assert tree(fake.root) == before


@pytest.mark.parametrize('name', ['', '.', '..', 'a/b', None, 'x\0'])
def test_bad_default_names_are_refused(fake, name):
    before = tree(fake.root)
    with pytest.raises(InvalidArgument, match='invalid cgroup name'):
        fake.create(None, name)
    assert tree(fake.root) == before


def test_systemd_form_message_is_clear(fake):
    with pytest.raises(InvalidArgument, match="systemd 'slice:prefix:name' form"):
        fake.resolve('system.slice:kata:c1', 'c1')


def test_symlink_out_of_the_mount_is_refused(tmp_path):
    root = make_v2(tmp_path / 'cg')
    outside = tmp_path / 'outside'
    outside.mkdir()
    (root / 'kata').mkdir()
    (root / 'kata' / 'evil').symlink_to(outside)
    cg = Cgroups(str(root))
    with pytest.raises(InvalidArgument, match='outside the cgroup mount'):
        cg.create('evil/c1', 'x')
    assert os.listdir(outside) == []


# -- create / remove -------------------------------------------------------------------------

def test_create_makes_every_level_and_returns_them_in_order(fake):
    created = fake.create(None, 'c1')
    expected = []
    for m in fake.mounts():
        expected += [os.path.join(m, 'kata'), os.path.join(m, 'kata', 'c1')]
    assert created == expected
    assert all(os.path.isdir(d) for d in created)


def test_create_returns_only_new_dirs_and_remove_keeps_existing_parents(fake):
    for m in fake.mounts():
        os.mkdir(os.path.join(m, 'kata'))
    before = tree(fake.root)
    created = fake.create('pod/c1', 'x')
    expected = []
    for m in fake.mounts():
        expected += [os.path.join(m, 'kata', 'pod'), os.path.join(m, 'kata', 'pod', 'c1')]
    assert created == expected
    assert fake.create('pod/c1', 'x') == []      # all there now: nothing new
    assert sorted(fake.remove(created)) == sorted(created)
    assert tree(fake.root) == before               # the pre-existing 'kata' dirs are still there


def test_remove_is_idempotent(fake):
    created = fake.create(None, 'c1')
    assert len(fake.remove(created)) == len(created)
    assert fake.remove(created) == []
    assert fake.remove([]) == []
    assert fake.remove(None) == []


def test_remove_goes_deepest_first_whatever_the_order_given(fake):
    created = fake.create('/a/b/c', 'x')
    assert sorted(fake.remove(list(reversed(created))[::2] + list(reversed(created))[1::2])) == sorted(created)
    for m in fake.mounts():
        assert not os.path.exists(os.path.join(m, 'a'))


def test_remove_leaves_a_parent_that_holds_someone_elses_cgroup(fake):
    created = fake.create(None, 'c1')
    fake.create(None, 'c2')
    removed = fake.remove(created)
    for m in fake.mounts():
        assert os.path.join(m, 'kata', 'c1') in removed
        assert os.path.isdir(os.path.join(m, 'kata', 'c2'))
        assert os.path.join(m, 'kata') not in removed


def test_remove_refuses_dirs_outside_the_mounts_before_touching_anything(fake, tmp_path):
    created = fake.create(None, 'c1')
    outsider = tmp_path / 'victim'
    outsider.mkdir()
    mount = fake.mounts()[0]
    bads = [str(outsider), mount, mount + '/', os.path.join(mount, 'kata', '..', '..', 'victim'),
            'kata/c1', '/tmp', 42]
    if fake.layout != 'v2':
        bads.append(os.path.join(fake.root, 'systemd', 'kata'))   # the init system's hierarchy
    for bad in bads:
        with pytest.raises(InvalidArgument) as err:
            fake.remove(created + [bad])
        assert repr(bad) in str(err.value)
        assert all(os.path.isdir(d) for d in created)
    assert outsider.is_dir()
    with pytest.raises(InvalidArgument, match='must be a list'):
        fake.remove(created[0])


def test_remove_never_deletes_files(fake):
    created = fake.create(None, 'c1')
    leaf = created[1]
    with open(os.path.join(leaf, 'precious'), 'w') as f:
        f.write('keep me')
    with pytest.raises(CgroupError) as err:
        fake.remove(created)
    assert leaf in str(err.value)
    assert os.path.isfile(os.path.join(leaf, 'precious'))
    # the other hierarchies were still cleaned
    for d in created[2:]:
        assert not os.path.exists(d)


def test_failed_create_removes_what_it_made(tmp_path):
    root = make_v1(tmp_path / 'cg')
    touch(root / 'pids' / 'kata', 'a file where a cgroup should go')
    cg = Cgroups(str(root))
    before = tree(root)
    with pytest.raises(CgroupError) as err:
        cg.create(None, 'c1')
    assert str(root / 'pids' / 'kata') in str(err.value)
    assert tree(root) == before


def test_add_pid(tmp_path):
    root = make_v2(tmp_path / 'cg')
    cg = Cgroups(str(root))
    created = cg.create(None, 'c1')
    # a fake cgroup has no pseudo-files: writing must fail, never create a file
    with pytest.raises(CgroupError, match='cannot add pid 1234 to cgroup'):
        cg.add_pid([created[-1]], 1234)
    assert os.listdir(created[-1]) == []
    (root / 'existing').mkdir()
    touch(root / 'existing' / 'cgroup.procs')
    cg.add_pid([str(root / 'existing')], 1234)
    assert (root / 'existing' / 'cgroup.procs').read_text() == '1234'
    for bad in (0, -1, True, '1234', None):
        with pytest.raises(InvalidArgument, match='invalid pid'):
            cg.add_pid([str(root / 'existing')], bad)
    with pytest.raises(InvalidArgument, match='not inside any cgroup mount'):
        cg.add_pid([str(tmp_path)], 1234)


# -- EBUSY: a mount point is busy for rmdir, exactly like a cgroup with tasks ------------------

@pytest.fixture
def busy_leaf(tmp_path):
    root = make_v2(tmp_path / 'cg')
    cg = Cgroups(str(root))
    created = cg.create(None, 'c1')
    leaf = created[-1]
    if subprocess.run(['mount', '-t', 'tmpfs', 'kata-test', leaf], capture_output=True, check=False).returncode != 0:
        cg.remove(created)
        pytest.skip('cannot mount a tmpfs here (needs root with CAP_SYS_ADMIN)')
    try:
        yield cg, created, leaf
    finally:
        if os.path.ismount(leaf):
            subprocess.run(['umount', leaf], check=True)


def test_ebusy_is_retried_until_it_clears(busy_leaf):
    cg, created, leaf = busy_leaf
    # lazy: remove() keeps opening the busy directory while it retries, and a plain umount
    # that lands during one of those opens fails with "target is busy"
    timer = threading.Timer(0.3, subprocess.run, (['umount', '--lazy', leaf],), {'check': True})
    start = time.monotonic()
    timer.start()
    try:
        assert sorted(cg.remove(created)) == sorted(created)
    finally:
        timer.join()
    assert time.monotonic() - start >= 0.25
    assert not os.path.exists(leaf)


def test_ebusy_gives_up_after_about_a_second(busy_leaf):
    cg, created, leaf = busy_leaf
    start = time.monotonic()
    with pytest.raises(CgroupError) as err:
        cg.remove(created)
    assert 0.9 <= time.monotonic() - start < 5.0
    assert leaf in str(err.value) and 'busy' in str(err.value)
    assert os.path.isdir(leaf)
    subprocess.run(['umount', leaf], check=True)
    assert cg.remove(created) == [leaf, os.path.dirname(leaf)]


# -- the real cgroupfs -----------------------------------------------------------------------

def real_cgroups():
    cg = Cgroups('/sys/fs/cgroup', parent='kata-unit-' + uuid.uuid4().hex[:12])
    if cg.layout == 'none':
        pytest.skip('no cgroup hierarchy under /sys/fs/cgroup')
    for mount in cg.mounts():
        probe = os.path.join(mount, cg.parent)
        try:
            os.mkdir(probe)
            os.rmdir(probe)
        except OSError as exc:
            pytest.skip(f'cgroupfs not writable here ({mount}: {exc.strerror})')
    return cg


def cgroup_of(pid):
    with open(f'/proc/{pid}/cgroup') as f:
        return f.read()


def test_real_cgroupfs_create_add_remove():
    cg = real_cgroups()
    proc = subprocess.Popen(['sleep', '60'])
    created = []
    try:
        created = cg.create(None, 'c1')
        leaves = cg.resolve(None, 'c1')
        assert len(created) == 2 * len(cg.mounts())
        cg.add_pid(leaves, proc.pid)
        for leaf in leaves:
            with open(os.path.join(leaf, 'cgroup.procs')) as f:
                assert str(proc.pid) in f.read().split()
        assert cg.parent in cgroup_of(proc.pid)
        # the kernel refuses to remove a cgroup with a process inside ...
        with pytest.raises(OSError) as err:
            os.rmdir(leaves[0])
        assert err.value.strerror == 'Device or resource busy'
        # ... so remove moves it out to the parent first
        assert sorted(cg.remove(created)) == sorted(created)
        assert not any(os.path.exists(d) for d in created)
        assert proc.poll() is None, 'the process must survive, moved out of the cgroup'
        assert cg.parent not in cgroup_of(proc.pid)
        assert cg.remove(created) == []
    finally:
        proc.kill()
        proc.wait()
        if created:
            cg.remove(created)


def test_real_cgroupfs_bad_path_creates_nothing():
    cg = real_cgroups()
    before = {m: sorted(os.listdir(m)) for m in cg.mounts()}
    for bad in ('../../etc', '/sys/../../tmp', 'a/../../..'):
        with pytest.raises(InvalidArgument):
            cg.create(bad, 'c1')
    assert {m: sorted(os.listdir(m)) for m in cg.mounts()} == before
