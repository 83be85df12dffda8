# Copyright: kata.runtime contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""volumes.py: OCI mounts and the volumes option parsed and refused (each bad input named), the
host checks, the guest's part, and the binds on the fakes (a fake VMM has no pid, so the binds
are made in our own mount namespace, for real, in temp dirs); the guest agent's check of the
``mounts`` param and the container init's mounts, run for real in a mount namespace of their own.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys

import pytest
from ansible_collections.kata.runtime.plugins.module_utils.kata import container as ctr
from ansible_collections.kata.runtime.plugins.module_utils.kata import mountinfo, share, volumes
from ansible_collections.kata.runtime.plugins.module_utils.kata.errors import InvalidArgument, KataError
from ansible_collections.kata.runtime.plugins.module_utils.kata.guest import agent as guest_agent
from ansible_collections.kata.runtime.plugins.module_utils.kata.guest import contract, exec_init
from ansible_collections.kata.runtime.plugins.module_utils.kata.model import ContainerRecord

BUSYBOX = shutil.which('busybox') or '/bin/busybox'
root_only = pytest.mark.skipif(os.geteuid() != 0, reason='bind mounts: root only')

# what `runc spec` writes (runc 1.1)
RUNC_DEFAULT_MOUNTS = [
    {'destination': '/proc', 'type': 'proc', 'source': 'proc'},
    {'destination': '/dev', 'type': 'tmpfs', 'source': 'tmpfs', 'options': ['nosuid', 'strictatime', 'mode=755',
                                                                            'size=65536k']},
    {'destination': '/dev/pts', 'type': 'devpts', 'source': 'devpts',
     'options': ['nosuid', 'noexec', 'newinstance', 'ptmxmode=0666', 'mode=0620', 'gid=5']},
    {'destination': '/dev/shm', 'type': 'tmpfs', 'source': 'shm',
     'options': ['nosuid', 'noexec', 'nodev', 'mode=1777', 'size=65536k']},
    {'destination': '/dev/mqueue', 'type': 'mqueue', 'source': 'mqueue', 'options': ['nosuid', 'noexec', 'nodev']},
    {'destination': '/sys', 'type': 'sysfs', 'source': 'sysfs', 'options': ['nosuid', 'noexec', 'nodev', 'ro']},
    {'destination': '/sys/fs/cgroup', 'type': 'cgroup', 'source': 'cgroup',
     'options': ['nosuid', 'noexec', 'nodev', 'relatime', 'ro']},
]


@pytest.fixture
def host(tmp_path):
    """Volume sources on the temp dir: a directory, a file."""
    (tmp_path / 'data').mkdir()
    (tmp_path / 'data' / 'hello').write_text('hi\n')
    (tmp_path / 'conf.txt').write_text('k=v\n')
    return tmp_path


# ---------------------------------------------------------------------------------------------
# parsing


def test_the_inline_forms_become_bind_mounts(host):
    got = volumes.parse_volumes([
        '%s:/data' % (host / 'data'),
        '%s://etc/./conf.txt/:ro' % (host / 'conf.txt'),
        {'source': str(host / 'data'), 'destination': '/srv/x', 'read_only': True},
        {'source': str(host / 'data'), 'destination': '/rw', 'read_only': False},
        '%s:/rw2:rw' % (host / 'data'),
    ])
    assert got == [
        {'type': 'bind', 'source': str(host / 'data'), 'destination': '/data', 'options': ['bind', 'rw']},
        {'type': 'bind', 'source': str(host / 'conf.txt'), 'destination': '/etc/conf.txt', 'options': ['bind', 'ro']},
        {'type': 'bind', 'source': str(host / 'data'), 'destination': '/srv/x', 'options': ['bind', 'ro']},
        {'type': 'bind', 'source': str(host / 'data'), 'destination': '/rw', 'options': ['bind', 'rw']},
        {'type': 'bind', 'source': str(host / 'data'), 'destination': '/rw2', 'options': ['bind', 'rw']},
    ]
    assert volumes.parse_volumes(None) == [] and volumes.parse_volumes([]) == []


def test_a_source_is_resolved_to_what_it_names(host):
    os.symlink(host / 'data', host / 'link')
    assert volumes.parse_volumes(['%s:/d' % (host / 'link')])[0]['source'] == str(host / 'data')


@pytest.mark.parametrize('entry, message', [
    ('relative/dir:/data', "volumes\\[0\\]: source 'relative/dir' must be an absolute host path"),
    ('{missing}:/data', "volumes\\[0\\]: source '.*/missing' cannot be shared: No such file or directory"),
    ('/dev/null:/null', "volumes\\[0\\]: source '/dev/null' is neither a directory nor a regular file"),
    ('{data}:data', "volumes\\[0\\]: destination 'data' must be an absolute path inside the container"),
    ('{data}:/a/../../etc', "volumes\\[0\\]: destination '/a/../../etc' must not contain \"..\""),
    ('{data}:/', "volumes\\[0\\]: destination '/' is the container root"),
    ('{data}:/d:xx', "volumes\\[0\\]: '.*:/d:xx' is not HOST:CONTAINER\\[:ro\\]"),
    ('{data}', "volumes\\[0\\]: '.*/data' is not HOST:CONTAINER"),
    ('{data}:/d:ro:x', 'is not HOST:CONTAINER'),
    ({'source': '{data}', 'destination': '/d', 'mode': 'ro'}, "volumes\\[0\\]: unknown key 'mode'"),
    ({'source': '{data}', 'destination': '/d', 'read_only': 'yes'}, 'volumes\\[0\\]: read_only must be true or false'),
    ({'destination': '/d'}, "volumes\\[0\\]: source None must be an absolute host path"),
    ({'source': '{data}'}, "volumes\\[0\\]: destination None must be a non-empty string"),
    (42, 'volumes\\[0\\]: 42 must be a HOST:CONTAINER\\[:ro\\] string or a dict'),
    ('{data}:/d\n', 'volumes\\[0\\]: destination .* without control characters'),
])
def test_each_bad_volume_is_named(host, entry, message):
    def fill(value):
        return value.format(data=host / 'data', missing=host / 'missing') if isinstance(value, str) else value
    entry = {k: fill(v) for k, v in entry.items()} if isinstance(entry, dict) else fill(entry)
    with pytest.raises(InvalidArgument, match=message):
        volumes.parse_volumes([entry])


def test_volumes_must_be_a_list_without_a_destination_twice(host):
    with pytest.raises(InvalidArgument, match='volumes must be a list'):
        volumes.parse_volumes('%s:/d' % (host / 'data'))
    with pytest.raises(InvalidArgument, match='volumes\\[1\\]: destination \'/d\' is also the destination of '
                                              'volumes\\[0\\]'):
        volumes.parse_volumes(['%s:/d' % (host / 'data'), '%s:/d/' % (host / 'data')])


def test_the_runc_default_mounts_are_accepted_as_they_are():
    assert volumes.parse_mounts(RUNC_DEFAULT_MOUNTS) == [
        dict(m, options=m.get('options', [])) for m in RUNC_DEFAULT_MOUNTS]


def test_a_bind_is_known_by_its_options_and_a_relative_source_is_the_bundle_s(host):
    got = volumes.parse_mounts([
        {'destination': '/a', 'source': 'data', 'options': ['rbind', 'ro', 'nosuid', 'rprivate']},
        {'destination': '/b', 'type': 'none', 'source': str(host / 'conf.txt'), 'options': ['bind']},
        {'destination': '/c', 'type': 'bind', 'source': str(host / 'data')},
    ], bundle=str(host))
    assert [(m['type'], m['source']) for m in got] == [
        ('bind', str(host / 'data')), ('bind', str(host / 'conf.txt')), ('bind', str(host / 'data'))]


@pytest.mark.parametrize('mount, message', [
    ({'destination': '/x', 'type': 'nfs', 'source': 'srv:/x'}, "mounts\\[0\\]: type 'nfs' is not supported"),
    ({'destination': '/x', 'type': 'ext4', 'source': '/dev/vda'}, "mounts\\[0\\]: type 'ext4' is not supported"),
    ({'destination': '/x', 'type': 'overlay', 'source': 'o'}, "mounts\\[0\\]: type 'overlay' is not supported"),
    ({'destination': '/x', 'source': '/tmp'}, "mounts\\[0\\]: type None needs the options bind or rbind"),
    ({'destination': '/x', 'type': 'none', 'source': '/tmp', 'options': ['ro']}, "type 'none' needs the options"),
    ({'destination': '/x', 'type': 'bind', 'source': '/tmp', 'options': ['ro', 'x-foo']},
     "mounts\\[0\\]: option 'x-foo' is not a bind mount option"),
    ({'destination': '/x', 'type': 'bind', 'source': '/tmp', 'options': ['ro,nosuid']},
     "mounts\\[0\\]: option 'ro,nosuid' must be one option"),
    ({'destination': '/x', 'type': 'bind', 'source': '/tmp', 'options': 'ro'}, "mounts\\[0\\]: options 'ro' must be"),
    ({'destination': '/x', 'type': 'tmpfs', 'source': 'tmpfs', 'options': ['bogus=1']},
     "mounts\\[0\\]: option 'bogus=1' is not an option of a tmpfs mount"),
    ({'destination': '/x', 'type': 'sysfs', 'source': 'sysfs', 'options': ['size=1m']},
     "option 'size=1m' is not an option of a sysfs mount"),
    ({'destination': 'x', 'type': 'tmpfs'}, "mounts\\[0\\]: destination 'x' must be an absolute path"),
    ({'destination': '/../x', 'type': 'tmpfs'}, "mounts\\[0\\]: destination '/../x' must not contain"),
    ({'destination': '/x', 'type': 'tmpfs', 'uidMappings': [{'containerID': 0, 'hostID': 1, 'size': 1}]},
     'mounts\\[0\\]: uidMappings/gidMappings .* are not supported'),
    ({'destination': '/x', 'type': 'tmpfs', 'flags': 1}, "mounts\\[0\\]: field 'flags' is not a field of a mount"),
    ('tmpfs', "mounts\\[0\\]: entry 'tmpfs' must be an object"),
    ({'destination': '/x', 'type': 'bind', 'source': 'rel', 'options': ['bind']},
     "mounts\\[0\\]: source 'rel' must be an absolute host path"),
])
def test_each_bad_mount_is_named(mount, message):
    with pytest.raises(InvalidArgument, match=message):
        volumes.parse_mounts([mount])


def test_mounts_must_be_a_list_of_bounded_length():
    with pytest.raises(InvalidArgument, match='mounts must be a list'):
        volumes.parse_mounts({'destination': '/x'})
    with pytest.raises(InvalidArgument, match='at most 64'):
        volumes.parse_mounts([{'destination': '/x%d' % i, 'type': 'tmpfs'} for i in range(65)])


def test_the_last_of_ro_and_rw_wins():
    assert volumes.read_only(['ro']) and not volumes.read_only(['ro', 'rw']) and not volumes.read_only([])


# ---------------------------------------------------------------------------------------------
# the guest's part


def test_the_guest_plan_skips_what_the_init_mounts_and_warns_of_what_it_leaves_out(host):
    mounts = volumes.parse_mounts(RUNC_DEFAULT_MOUNTS) + volumes.parse_mounts([
        {'destination': '/ro', 'source': str(host / 'data'), 'options': ['rbind', 'ro', 'nosuid', 'noexec', 'nodev']},
        {'destination': '/etc/conf', 'type': 'bind', 'source': str(host / 'conf.txt')},
    ])
    plan, warnings = volumes.guest_plan('c1', mounts)
    assert [(m['type'], m['destination']) for m in plan] == [
        ('devpts', '/dev/pts'), ('tmpfs', '/dev/shm'), ('mqueue', '/dev/mqueue'), ('sysfs', '/sys'),
        ('bind', '/ro'), ('bind', '/etc/conf')]
    assert plan[3]['options'] == ['nosuid', 'noexec', 'nodev', 'ro'] and plan[3]['source'] == 'sysfs'
    assert plan[4] == {'type': 'bind', 'source': contract.SHARED_MOUNT + '/c1/volumes/0', 'destination': '/ro',
                       'options': ['ro', 'nosuid', 'noexec', 'nodev'], 'file': False}
    assert plan[5] == {'type': 'bind', 'source': contract.VOLUMES_MOUNT + '/c1@1', 'destination': '/etc/conf',
                       'options': ['rw'], 'file': True}
    assert len(warnings) == 2
    assert 'mount of type cgroup at /sys/fs/cgroup is not made' in warnings[0]
    assert 'rbind of %s is done as a bind' % (host / 'data') in warnings[1]
    # what the guest agent takes is exactly what the host sends
    assert len(guest_agent.parse_mounts(plan)) == len(plan)


@pytest.mark.parametrize('mount, message', [
    ({'type': 'nfs', 'source': 's', 'destination': '/x'}, "type 'nfs' is not one of"),
    ({'type': 'bind', 'source': '/etc', 'destination': '/x'}, 'a bind source must be in a share'),
    ({'type': 'bind', 'source': contract.SHARED_MOUNT + '/../../etc', 'destination': '/x'}, 'must be in a share'),
    ({'type': 'tmpfs', 'source': 't', 'destination': 'x'}, "destination 'x' must be absolute"),
    ({'type': 'tmpfs', 'source': 't', 'destination': '/a/../x'}, 'must be absolute, without'),
    ({'type': 'tmpfs', 'source': 't\nx', 'destination': '/x'}, 'source must be a non-empty string without NUL'),
    ({'type': 'tmpfs', 'source': 't', 'destination': '/x', 'options': ['a,b']}, 'options must be a list of single'),
    ({'type': 'tmpfs', 'source': 't', 'destination': '/x', 'file': 'yes'}, 'file must be true or false'),
])
def test_the_guest_agent_checks_the_mounts_it_is_sent(mount, message):
    with pytest.raises(guest_agent.RequestError, match=message):
        guest_agent.parse_mounts([mount])
    with pytest.raises(guest_agent.RequestError, match='at most 64'):
        guest_agent.parse_mounts([{'type': 'tmpfs', 'source': 't', 'destination': '/x'}] * 65)


def test_a_mount_destination_is_resolved_inside_the_root(tmp_path):
    root = tmp_path / 'root'
    (root / 'etc').mkdir(parents=True)
    os.symlink('/../../../etc', root / 'up')
    os.symlink('../etc/sub', root / 'etc' / 'rel')

    def fail(code, message):
        raise AssertionError(message)

    assert exec_init.resolve_in(str(root), '/up/x', fail) == str(root) + '/etc/x'
    assert exec_init.resolve_in(str(root), '/etc/rel/y', fail) == str(root) + '/etc/sub/y'
    assert exec_init.resolve_in(str(root), '/../../a', fail) == str(root) + '/a'


@pytest.mark.skipif(os.geteuid() != 0 or not os.access(BUSYBOX, os.X_OK) or not shutil.which('unshare'),
                    reason='needs root, a static busybox and unshare')
def test_the_container_init_makes_its_mounts_with_their_flags(tmp_path, host):
    """exec_init.py for real, in a mount namespace of its own: a tmpfs with its size, a read-only
    volume that refuses writes, a writable one, proc; the mount points it lacks are made."""
    root = tmp_path / 'rootfs'
    (root / 'bin').mkdir(parents=True)
    shutil.copy2(BUSYBOX, root / 'bin' / 'busybox')
    for applet in ('sh', 'cat', 'echo', 'grep'):
        os.symlink('busybox', root / 'bin' / applet)
    (host / 'rw').mkdir()
    plan = [['proc', 'proc', '/proc', 'nosuid,nodev,noexec', 'd'],
            ['tmpfs', 'tmpfs', '/scratch', 'size=1m,mode=1777,nosuid', 'd'],
            ['bind', str(host / 'data'), '/ro', 'ro,nosuid,nodev,noexec', 'd'],
            ['bind', str(host / 'rw'), '/srv/rw', 'rw,nosuid', 'd'],
            ['bind', str(host / 'conf.txt'), '/etc/conf.txt', 'ro', 'f']]
    fifo = str(tmp_path / 'status')
    with open(fifo + '.mounts', 'w') as fh:
        fh.write(''.join('\x00'.join(m) + '\n' for m in plan))
    os.mkfifo(fifo, 0o600)
    status_r = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    script = ('grep -E " /(scratch|ro|srv/rw|etc/conf.txt) " /proc/self/mounts; cat /etc/conf.txt; '
              'echo w > /ro/x 2>/dev/null || echo ro-refused; echo w > /srv/rw/f && echo rw-ok')
    spec = {'rootfs': str(root), 'hostname': None, 'cwd': '/', 'uid': 0, 'gid': 0, 'env': [],
            'args': ['/bin/sh', '-c', script]}
    argv = ['unshare', '-m', '--propagation', 'private', '--'] + guest_agent.exec_init_argv(
        sys.executable, spec, fifo, BUSYBOX)
    try:
        proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=30, check=False)
    finally:
        os.close(status_r)
    out = proc.stdout.decode()
    assert proc.returncode == 0, (out, proc.stderr)
    lines = {line.split()[1]: line.split() for line in out.splitlines() if line.count(' ') >= 3}
    assert lines['/scratch'][2] == 'tmpfs' and 'size=1024k' in lines['/scratch'][3]
    assert lines['/ro'][3].split(',')[:4] == ['ro', 'nosuid', 'nodev', 'noexec']
    assert lines['/srv/rw'][3].startswith('rw,nosuid') and lines['/etc/conf.txt'][3].startswith('ro')
    assert 'k=v' in out and 'ro-refused' in out and 'rw-ok' in out
    assert (host / 'rw' / 'f').read_text() == 'w\n' and not (host / 'data' / 'x').exists()
    assert not mountinfo.under(str(root)), 'the mounts lived in the namespace of the container only'


@pytest.mark.skipif(os.geteuid() != 0 or not os.access(BUSYBOX, os.X_OK) or not shutil.which('unshare'),
                    reason='needs root, a static busybox and unshare')
def test_a_read_only_root_gets_its_mount_points_then_is_sealed(tmp_path, host):
    """A read-only rootfs lacking a mount point: made in a layer in memory, then the root is
    remounted read-only; the operator's directory gains nothing."""
    root = tmp_path / 'rootfs'
    (root / 'bin').mkdir(parents=True)
    shutil.copy2(BUSYBOX, root / 'bin' / 'busybox')
    for applet in ('sh', 'cat', 'touch', 'echo'):
        os.symlink('busybox', root / 'bin' / applet)
    before = sorted(os.listdir(root))
    scratch = tmp_path / 'scratch'
    scratch.mkdir()
    fifo = str(tmp_path / 'status')
    with open(fifo + '.mounts', 'w') as fh:
        fh.write('\x00'.join(['bind', str(host / 'data'), '/data', 'ro', 'd']) + '\n')
    os.mkfifo(fifo, 0o600)
    status_r = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    spec = {'rootfs': str(root), 'rootfs_mode': 'readonly', 'hostname': None, 'cwd': '/', 'uid': 0, 'gid': 0,
            'env': [], 'args': ['/bin/sh', '-c', 'cat /data/hello; touch /x; echo touch=$?']}
    argv = ['unshare', '-m', '--propagation', 'private', '--'] + guest_agent.exec_init_argv(
        sys.executable, spec, fifo, BUSYBOX, str(scratch))
    try:
        proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=30, check=False)
    finally:
        os.close(status_r)
    assert proc.stdout.decode() == 'hi\ntouch=1\n', proc.stderr
    assert b'Read-only file system' in proc.stderr
    assert sorted(os.listdir(root)) == before


# ---------------------------------------------------------------------------------------------
# host checks and binds, on the fakes


def test_a_source_in_or_above_the_state_root_is_refused(env, host):
    root = env.rt.store.root
    os.makedirs(os.path.join(root, 'sandboxes'), exist_ok=True)
    for src in (root, os.path.join(root, 'sandboxes'), os.path.dirname(root)):
        mounts = volumes.parse_volumes(['%s:/x:ro' % src])
        with pytest.raises(InvalidArgument, match='is (inside|a parent of) the runtime state root'):
            volumes.check_sources(env.rt, mounts)
    volumes.check_sources(env.rt, volumes.parse_volumes(['%s:/x' % (host / 'data')]))


def test_a_read_write_volume_needs_user_xattrs_and_a_read_only_one_does_not(env):
    assert not volumes.user_xattrs_supported('/proc/sys')
    with pytest.raises(InvalidArgument, match="source '/proc/sys' is on a file system without user xattrs"):
        volumes.check_sources(env.rt, volumes.parse_volumes(['/proc/sys:/x']))
    volumes.check_sources(env.rt, volumes.parse_volumes(['/proc/sys:/x:ro']))


def _mounts_of(env):
    sdir = os.path.realpath(env.rt.store.sandbox_dir('sb'))
    own = {os.path.join(sdir, d) for d in ('output', 'console', 'volumes')}
    return {m[0]: m[1].split(',') for m in mountinfo.mounts() if m[0].startswith(sdir + '/') and m[0] not in own}


@root_only
def test_volumes_are_bound_where_the_guest_sees_them_and_unbound_by_stop_and_delete(env, host):
    (host / 'rw').mkdir()
    env.sandbox('sb')
    vols = ['%s:/data:ro' % (host / 'data'), '%s:/srv/rw' % (host / 'rw'), '%s:/etc/conf.txt:ro' % (host / 'conf.txt')]
    rec = env.container('sb', 'c1', start=False, volumes=vols)
    sdir = os.path.realpath(env.rt.store.sandbox_dir('sb'))
    ro0 = os.path.join(sdir, 'shared', 'c1', 'volumes', '0')
    rw1 = os.path.join(sdir, 'volumes', 'c1@1')
    ro2 = os.path.join(sdir, 'shared', 'c1', 'volumes', '2')
    got = _mounts_of(env)
    assert {'ro', 'nosuid', 'nodev'} <= set(got[ro0]) and {'ro', 'nosuid', 'nodev'} <= set(got[ro2])
    assert {'rw', 'nosuid', 'nodev'} <= set(got[rw1])
    assert os.stat(rw1).st_ino == os.stat(host / 'rw').st_ino and stat.S_ISREG(os.stat(ro2).st_mode)
    assert [v['target'] for v in rec.volume_mounts] == [ro0, rw1, ro2]
    # the agent was asked to mount them where the guest finds them
    call = [c for c in env.agents.calls if c.method == 'create_container'][-1]
    plan = [m for m in call.params['mounts'] if m['type'] == 'bind']
    assert [(m['source'], m['destination'], m['options'], m['file']) for m in plan] == [
        (contract.SHARED_MOUNT + '/c1/volumes/0', '/data', ['ro'], False),
        (contract.VOLUMES_MOUNT + '/c1@1', '/srv/rw', ['rw'], False),
        (contract.SHARED_MOUNT + '/c1/volumes/2', '/etc/conf.txt', ['ro'], True)]
    # the bundle hooks see lists them
    bundle = json.load(open(os.path.join(sdir, 'bundles', 'c1', 'config.json')))
    assert [m['destination'] for m in bundle['mounts'] if m['type'] == 'bind'] == ['/data', '/srv/rw', '/etc/conf.txt']
    ctr.start(env.rt, 'c1')
    ctr.stop(env.rt, 'c1')
    rootfs = os.path.join(sdir, 'shared', 'c1', 'rootfs')
    assert list(_mounts_of(env)) == [rootfs] and env.rt.store.load_container('sb', 'c1').volume_mounts == []
    assert not os.path.lexists(rw1)
    ctr.delete(env.rt, 'c1')
    assert _mounts_of(env) == {} and os.listdir(os.path.join(sdir, 'volumes')) == []
    assert (host / 'data' / 'hello').read_text() == 'hi\n' and (host / 'conf.txt').read_text() == 'k=v\n'


@root_only
def test_a_forced_delete_and_a_sandbox_delete_leave_no_volume_mounted(env, host):
    env.sandbox('sb')
    env.container('sb', 'c1', volumes=['%s:/data' % (host / 'data')])
    env.container('sb', 'c2', volumes=['%s:/data:ro' % (host / 'data')])
    assert len(_mounts_of(env)) == 4  # two rootfs, two volumes
    ctr.delete(env.rt, 'c1', force=True)
    assert len(_mounts_of(env)) == 2
    from ansible_collections.kata.runtime.plugins.module_utils.kata import sandbox as sbx
    sbx.delete(env.rt, 'sb', force=True)
    assert mountinfo.under(str(host)) == [os.path.realpath(host)]  # the temp host's own tmpfs only
    assert not os.path.exists(env.rt.store.sandbox_dir('sb'))
    assert (host / 'data' / 'hello').read_text() == 'hi\n'


@root_only
def test_a_link_in_place_of_a_mount_point_fails_that_container_and_mounts_nothing(env, host):
    env.sandbox('sb')
    victim = host / 'victim'
    victim.mkdir()
    os.symlink(str(victim), os.path.join(share.volumes_dir(env.rt.store, 'sb'), 'c1@0'))
    with pytest.raises(KataError, match='c1@0 is not a directory of ours; refusing to mount over it'):
        env.container('sb', 'c1', volumes=['%s:/data' % (host / 'data')])
    assert _mounts_of(env) == {} and os.listdir(victim) == []
    assert env.rt.store.load_container('sb', 'c1') is None and env.rt.store.get_mapping('c1') is None


@root_only
def test_a_bad_volume_creates_nothing(env, host):
    env.sandbox('sb')
    settings = env.container_settings(volumes=['%s:/x' % env.rt.store.root])
    with pytest.raises(InvalidArgument, match='the runtime state root'):
        ctr.create(env.rt, 'sb', 'c1', settings)
    assert env.rt.store.get_mapping('c1') is None and env.agents.count('create_container') == 0
    assert _mounts_of(env) == {}


def test_a_record_from_before_volumes_means_no_mounts():
    rec = ContainerRecord.from_json({'version': 1, 'id': 'c1', 'sandbox': 'sb'})
    assert rec.mounts == [] and rec.volume_mounts == []
