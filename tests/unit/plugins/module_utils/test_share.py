# Copyright: kata.runtime contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""share.py with real mounts in a temporary state root (root only): the capped tmpfs file
systems, their flags, read-only rootfs binds, mount points made without following links, and
release() unmounting everything of a sandbox and nothing else."""

from __future__ import annotations

import errno
import os
import subprocess

import pytest
from ansible_collections.kata.runtime.plugins.module_utils.kata import mountinfo, share
from ansible_collections.kata.runtime.plugins.module_utils.kata.config import Config
from ansible_collections.kata.runtime.plugins.module_utils.kata.errors import KataError
from ansible_collections.kata.runtime.plugins.module_utils.kata.hypervisor.base import Hypervisor
from ansible_collections.kata.runtime.plugins.module_utils.kata.model import ContainerRecord, SandboxRecord
from ansible_collections.kata.runtime.plugins.module_utils.kata.runtime import Runtime

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason='mounts need root')


class SameNamespaceVMM(Hypervisor):
    """A VMM that is no local process (like libvirt's test driver): mounts go in our namespace."""

    def domain_name(self, sandbox_id):
        return 'kata-' + sandbox_id

    def pid(self, name):
        return None

    def state(self, name):
        return 'running'


@pytest.fixture
def rt(tmp_path):
    runtime = Runtime(Config({'state_root': str(tmp_path / 'state'), 'guest_write_limit_mb': 2,
                              'console_log_limit_kb': 64}), hypervisor=SameNamespaceVMM())
    yield runtime
    for sid in ('s1', 's2'):
        share.release(runtime, sid)


def flags(path):
    return {m[0]: m[1] for m in mountinfo.mounts()}[os.path.realpath(path)].split(',')


def fill(path, limit):
    """Write up to ``limit`` bytes; return (bytes written, errno that stopped it)."""
    written = 0
    with open(path, 'wb', buffering=0) as f:
        try:
            while written < limit:
                written += f.write(b'x' * 65536)
        except OSError as err:
            return written, err.errno
    return written, None


def test_prepare_mounts_capped_inert_file_systems_once(rt):
    mode = share.prepare(rt, 's1')
    assert mode == ('mapped' if share.user_xattrs_work(share.output_dir(rt.store, 's1')) else 'squash')
    out = share.output_dir(rt.store, 's1')
    console_dir = os.path.dirname(share.console_log(rt.store, 's1'))
    for path in (out, console_dir):
        assert {'nosuid', 'nodev', 'noexec', 'nosymfollow'} <= set(flags(path))
        assert os.stat(path).st_mode & 0o777 == 0o700
    before = mountinfo.under(rt.store.sandbox_dir('s1'))
    share.prepare(rt, 's1')  # idempotent: no second mount on top
    assert mountinfo.under(rt.store.sandbox_dir('s1')) == before
    # The caps hold: a guest filling its share or console gets ENOSPC.
    written, err = fill(os.path.join(out, 'flood'), 8 * 1024 * 1024)
    assert err == errno.ENOSPC and written <= 2 * 1024 * 1024
    written, err = fill(share.console_log(rt.store, 's1'), 1024 * 1024)
    assert err == errno.ENOSPC and written <= 64 * 1024
    # ...and so does the inode cap (a million empty files would cost host kernel memory).
    with pytest.raises(OSError) as info:
        for i in range(100000):
            os.mkdir(os.path.join(out, 'd%d' % i))
    assert info.value.errno == errno.ENOSPC


def test_output_mount_never_follows_a_planted_link(rt, tmp_path):
    share.prepare(rt, 's1')
    secret = tmp_path / 'secret'
    secret.write_text('host secret')
    out = share.output_dir(rt.store, 's1')
    os.mkdir(os.path.join(out, 'c1'))
    os.symlink(str(secret), os.path.join(out, 'c1', 'stdout'))
    os.symlink(str(tmp_path), os.path.join(out, 'c2'))
    for path in (os.path.join(out, 'c1', 'stdout'), os.path.join(out, 'c2', 'secret')):
        with pytest.raises(OSError) as info:
            open(path).close()
        assert info.value.errno == errno.ELOOP


def test_release_unmounts_everything_of_the_sandbox_and_nothing_else(rt):
    share.prepare(rt, 's1')
    share.prepare(rt, 's2')
    inner = os.path.join(share.shared_dir(rt.store, 's1'), 'c1', 'rootfs')
    os.makedirs(inner)
    subprocess.run(['mount', '--bind', share.shared_dir(rt.store, 's2'), inner], check=True)
    done = share.release(rt, 's1')
    assert inner in done and done.index(inner) == 0  # deepest first
    assert mountinfo.under(rt.store.sandbox_dir('s1')) == []
    assert len(mountinfo.under(rt.store.sandbox_dir('s2'))) == 3  # output, console, volumes
    assert share.release(rt, 's1') == []


@pytest.mark.parametrize('planted', ['cid', 'rootfs'])
def test_mount_point_refuses_a_planted_link_and_touches_nothing(rt, tmp_path, planted):
    share.prepare(rt, 's1')
    victim = tmp_path / 'victim'
    victim.mkdir()
    (victim / 'keep').write_text('keep')
    base = share.shared_dir(rt.store, 's1')
    if planted == 'cid':
        os.symlink(str(victim), os.path.join(base, 'c1'))
    else:
        os.mkdir(os.path.join(base, 'c1'))
        os.symlink(str(victim), os.path.join(base, 'c1', 'rootfs'))
    rootfs = tmp_path / 'rootfs'
    rootfs.mkdir()
    rec = ContainerRecord(id='c1', sandbox='s1', rootfs=str(rootfs))
    with pytest.raises(KataError, match='symlink; refusing to mount over it'):
        share.bind_rootfs(rt, SandboxRecord(id='s1', domain='kata-s1'), rec, rt.trace())
    assert os.listdir(str(victim)) == ['keep']
    assert mountinfo.under(str(victim)) == []
    assert rec.rootfs_mount is None


def test_rootfs_is_bound_read_only_and_unbound(rt, tmp_path):
    share.prepare(rt, 's1')
    rootfs = tmp_path / 'rootfs'
    (rootfs / 'bin').mkdir(parents=True)
    (rootfs / 'bin' / 'tool').write_text('x')
    srec, rec, trace = SandboxRecord(id='s1', domain='kata-s1'), ContainerRecord(id='c1', sandbox='s1', rootfs=str(rootfs)), rt.trace()
    share.bind_rootfs(rt, srec, rec, trace)
    target = rec.rootfs_mount['target']
    assert {'ro', 'nosuid', 'nodev'} <= set(flags(target))
    # a bind from the same file system: os.path.ismount cannot see it (the same st_dev), which
    # once made every delete skip the umount and then fail with "still mounted"; the mount
    # table sees it
    assert os.stat(rootfs).st_dev == os.stat(rt.store.root).st_dev and not os.path.ismount(target)
    for attempt in (lambda: os.chmod(os.path.join(target, 'bin', 'tool'), 0o4755),
                    lambda: os.mknod(os.path.join(target, 'dev'), 0o60600, os.makedev(8, 0)),
                    lambda: os.symlink('/etc', os.path.join(target, 'link'))):
        with pytest.raises(OSError) as info:
            attempt()
        assert info.value.errno == errno.EROFS
    share.unbind_rootfs(rt, srec, rec, trace)
    assert rec.rootfs_mount is None
    assert mountinfo.under(target) == []
    assert os.stat(str(rootfs / 'bin' / 'tool')).st_mode & 0o7777 == 0o644


def test_container_dirs_are_removed_without_following_links(rt, tmp_path):
    share.prepare(rt, 's1')
    canary = tmp_path / 'canary'
    canary.mkdir()
    (canary / 'keep').write_text('keep')
    out = os.path.join(share.output_dir(rt.store, 's1'), 'c1')
    os.mkdir(out)
    os.symlink(str(canary), os.path.join(out, 'stdout'))
    fd = os.open(out, os.O_RDONLY | os.O_DIRECTORY)
    for _level in range(1200):  # deeper than Python's recursion limit
        os.mkdir('d', dir_fd=fd)
        nfd = os.open('d', os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        os.close(fd)
        fd = nfd
    os.close(fd)
    os.makedirs(os.path.join(share.shared_dir(rt.store, 's1'), 'c1', 'rootfs'))
    share.remove_container_dirs(rt, 's1', 'c1')
    assert not os.path.lexists(out)
    assert not os.path.lexists(os.path.join(share.shared_dir(rt.store, 's1'), 'c1'))
    assert os.listdir(str(canary)) == ['keep']


def test_mount_table_names_odd_mount_points_exactly(tmp_path):
    """mountinfo escapes space, tab, newline and backslash; /x/ab is not under /x/a."""
    odd = tmp_path / 'a b\\c'
    odd.mkdir()
    near = tmp_path / 'a b\\cd'
    near.mkdir()
    subprocess.run(['mount', '-t', 'tmpfs', 'kata-test', str(near)], check=True)
    try:
        assert mountinfo.under(str(odd)) == []
        subprocess.run(['mount', '-t', 'tmpfs', 'kata-test', str(odd)], check=True)
        assert mountinfo.under(str(odd)) == [str(odd)]
        assert mountinfo.is_mounted(str(odd))
        assert [m[3] for m in mountinfo.mounts() if m[0] == str(odd)] == ['kata-test']
    finally:
        for path in (odd, near):
            subprocess.run(['umount', str(path)], check=False)
