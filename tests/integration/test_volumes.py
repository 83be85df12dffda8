# Copyright: kata.runtime contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Volumes on a real guest: one sandbox, containers added to it while it runs.

A bundle with the runtime-spec default mounts plus a read-only, a read-write, a noexec/nosuid
and a file volume and a tmpfs: the read-only one refuses writes, the read-write one takes them
and the host sees the file root-owned, without setuid bits, a device node or a link, whatever
the container (guest root) did; flags and the tmpfs size hold in the guest. The inline
``volumes`` option through Ansible, and its change refused without ``recreate``. Deletes leave
no bind mount on the host or in the VMM's mount namespace, and never touch what a link the
container planted points at.
"""

from __future__ import annotations

import json
import os
import stat
import textwrap
import time

import pytest
from ansible_collections.kata.runtime.plugins.module_utils.kata import container as ctr
from ansible_collections.kata.runtime.plugins.module_utils.kata import mountinfo, oci, volumes
from ansible_collections.kata.runtime.plugins.module_utils.kata import sandbox as sbx
from ansible_collections.kata.runtime.plugins.module_utils.kata.config import load_config
from ansible_collections.kata.runtime.plugins.module_utils.kata.runtime import Runtime
from ansible_collections.kata.runtime.tests.unit.plugins.module_utils.test_volumes import RUNC_DEFAULT_MOUNTS
from conftest import snapshot


def our_mounts(rt, sid, pid=None):
    """Mount points of volumes under the sandbox's directory, in our namespace and the VMM's."""
    sdir = os.path.realpath(rt.store.sandbox_dir(sid))
    found = []
    for ns in ['self'] + ([pid] if pid else []):
        found += [m[0] for m in mountinfo.mounts(ns) if m[0].startswith(sdir + '/')
                  and ('/volumes/' in m[0] or m[0].startswith(os.path.join(sdir, 'volumes') + '/'))]
    return found


@pytest.fixture
def env(kata_envs):
    e = kata_envs('vol')
    yield e
    left, skeleton, prune = e.teardown()
    assert not left, 'left behind: %s\n%s' % (json.dumps(left, indent=1), prune[2][-3000:])


def test_volumes_on_a_real_guest(env, busybox_rootfs, tmp_path):
    rt = Runtime(load_config(env.config_path))
    trace = rt.trace()
    ro_dir, rw_dir, nx_dir, canary = (tmp_path / n for n in ('ro', 'rw', 'nx', 'canary'))
    for d in (ro_dir, rw_dir, nx_dir, canary):
        d.mkdir()
    (ro_dir / 'hello').write_text('hello from the host\n')
    (canary / 'secret').write_text('host secret\n')
    conf = tmp_path / 'app.conf'
    conf.write_text('answer=42\n')
    before_ro, before_canary = snapshot(str(ro_dir)), snapshot(str(canary))

    sbx.create(rt, 'sb', sbx.settings_from(rt.config, {}), trace=trace)
    vmm = sbx.info(rt, rt.store.load_sandbox('sb'))['pid']

    # -- a bundle: the runc defaults plus volumes of each kind and a tmpfs ----------------------
    script = textwrap.dedent('''\
        cat /ro/hello; cat /etc/app.conf
        echo x > /ro/new; echo ro_write=$?
        echo data > /rw/made; echo rw_write=$?
        chmod 4755 /rw/made; echo chmod=$?
        chown 1234:1234 /rw/made; echo chown=$?
        mknod /rw/blk b 8 0; echo mknod=$?
        ln -s %s/secret /rw/link; echo link=$?
        mkdir /rw/sub && echo nested > /rw/sub/f; echo mkdir=$?
        cp /bin/busybox /nx/bb; /nx/bb true; echo noexec=$?
        dd if=/dev/zero of=/scratch/big bs=1k count=4096 2>/dev/null; echo tmpfs_full=$?
        ls /sys/kernel >/dev/null; echo sysfs=$?
        grep -E ' /(ro|rw|nx|scratch|etc/app.conf|sys|dev/mqueue|dev/pts) ' /proc/self/mounts
        ''' % canary)
    bundle = tmp_path / 'bundle'
    bundle.mkdir()
    spec = oci.generate_spec(busybox_rootfs, ['/bin/sh', '-c', script])
    spec['mounts'] = RUNC_DEFAULT_MOUNTS + [
        {'destination': '/ro', 'type': 'bind', 'source': str(ro_dir), 'options': ['rbind', 'ro']},
        {'destination': '/rw', 'type': 'bind', 'source': str(rw_dir), 'options': ['rbind', 'rw']},
        {'destination': '/nx', 'source': str(nx_dir), 'options': ['bind', 'noexec', 'nosuid', 'nodev']},
        {'destination': '/etc/app.conf', 'type': 'bind', 'source': str(conf), 'options': ['bind', 'ro']},
        {'destination': '/scratch', 'type': 'tmpfs', 'source': 'tmpfs',
         'options': ['size=1m', 'mode=1777', 'nosuid']},
    ]
    (bundle / 'config.json').write_text(json.dumps(spec))
    settings = ctr.settings_from({'bundle': str(bundle)})
    ctr.create(rt, 'sb', 'c1', settings, trace=trace)
    assert any('cgroup at /sys/fs/cgroup is not made' in w for w in trace.warnings), trace.warnings
    ctr.start(rt, 'c1', trace=trace)
    done = ctr.wait_for(rt, 'c1', 120)
    out = open(done['stdout_path']).read()
    err = open(done['stderr_path']).read()
    assert done['status'] == 'stopped' and done['exit_code'] == 0, (out, err)
    assert 'hello from the host' in out and 'answer=42' in out, (out, err)
    # guest root may do anything on the read-write volume...
    for line in ('ro_write=1', 'rw_write=0', 'chmod=0', 'chown=0', 'mknod=0', 'link=0', 'mkdir=0', 'sysfs=0'):
        assert line in out, (line, out, err)
    assert 'Read-only file system' in err
    assert 'noexec=126' in out and 'tmpfs_full=1' in out, (out, err)
    mounts = {line.split()[1]: line.split()[3].split(',') for line in out.splitlines() if line.count(' ') >= 5}
    assert 'ro' in mounts['/ro'] and 'rw' in mounts['/rw'] and 'ro' in mounts['/etc/app.conf'], mounts
    assert {'noexec', 'nosuid', 'nodev'} <= set(mounts['/nx']) and 'ro' in mounts['/sys'], mounts
    assert 'size=1024k' in mounts['/scratch'] and '/dev/mqueue' in mounts and '/dev/pts' in mounts, mounts
    # ...and the host gets plain root-owned files: no setuid bit, no device node, no link
    made = os.lstat(rw_dir / 'made')
    assert stat.S_ISREG(made.st_mode) and made.st_uid == 0 and made.st_gid == 0, made
    assert not made.st_mode & (stat.S_ISUID | stat.S_ISGID | 0o111), oct(made.st_mode)
    assert (rw_dir / 'made').read_text() == 'data\n' and (rw_dir / 'sub' / 'f').read_text() == 'nested\n'
    assert stat.S_ISREG(os.lstat(rw_dir / 'blk').st_mode)
    assert stat.S_ISREG(os.lstat(rw_dir / 'link').st_mode) and not os.path.islink(rw_dir / 'link')
    assert not os.lstat(nx_dir / 'bb').st_mode & (stat.S_ISUID | stat.S_ISGID | 0o111)
    assert snapshot(str(ro_dir)) == before_ro and snapshot(str(canary)) == before_canary
    assert len(our_mounts(rt, 'sb', vmm)) == 4  # bound in the VMM's namespace, not in ours
    assert not our_mounts(rt, 'sb')

    # -- a read-only rootfs without the mount point: made in memory, then the root sealed --------
    settings = ctr.settings_from({'rootfs': busybox_rootfs, 'readonly_rootfs': True, 'volumes': ['%s:/data:ro' % ro_dir],
                                  'command': ['/bin/sh', '-c', 'cat /data/hello; touch /x; echo touch=$?']})
    ctr.create(rt, 'sb', 'ro', settings, trace=trace)
    ctr.start(rt, 'ro', trace=trace)
    done = ctr.wait_for(rt, 'ro', 60)
    out = open(done['stdout_path']).read()
    assert out == 'hello from the host\ntouch=1\n', (out, open(done['stderr_path']).read())
    assert ctr.delete(rt, 'ro', trace=trace)

    # -- the inline volumes option through Ansible, in the same running sandbox -----------------
    task = {'kata.runtime.kata_container': {
        'name': 'c2', 'sandbox': 'sb', 'config': env.config_path, 'rootfs': busybox_rootfs,
        'command': ['/bin/sh', '-c', 'cat /data/hello; echo more > /out/more; sleep 300'],
        'volumes': ['%s:/data:ro' % ro_dir, {'source': str(rw_dir), 'destination': '/out'}]}}
    changed = dict(task['kata.runtime.kata_container'], volumes=['%s:/data' % ro_dir])
    state_root = dict(task['kata.runtime.kata_container'], name='c3', volumes=['%s:/x:ro' % rt.store.root])
    run = env.playbook([dict(task, name='create'), dict(task, name='again'),
                        {'name': 'changed', 'kata.runtime.kata_container': changed},
                        {'name': 'state root', 'kata.runtime.kata_container': state_root}])
    assert run.ok('create')['changed'] and not run.ok('again')['changed']
    assert 'mounts' in run.failed('changed')['msg'] and 'recreate' in run.failed('changed')['msg']
    assert 'is inside the runtime state root' in run.failed('state root')['msg'], run.failed('state root')
    assert rt.store.get_mapping('c3') is None
    assert sbx.info(rt, rt.store.load_sandbox('sb'))['pid'] == vmm, 'the VM did not restart'
    info = ctr.info(rt, rt.store.load_container('sb', 'c2'))
    assert info['status'] == 'running', info
    for _attempt in range(100):
        if os.path.exists(rw_dir / 'more'):
            break
        time.sleep(0.1)
    assert (rw_dir / 'more').read_text() == 'more\n'
    assert 'hello from the host' in open(info['stdout_path']).read()
    assert len(our_mounts(rt, 'sb', vmm)) == 6

    # -- deletes unbind everything, in our namespace and the VMM's; the planted link is not followed
    assert ctr.delete(rt, 'c1', trace=trace)
    assert len(our_mounts(rt, 'sb', vmm)) == 2
    assert ctr.delete(rt, 'c2', force=True, trace=trace)
    assert our_mounts(rt, 'sb', vmm) == []
    assert sorted(os.listdir(os.path.join(rt.store.sandbox_dir('sb'), 'volumes'))) == []
    assert sbx.delete(rt, 'sb', force=True, trace=trace)
    assert not os.path.exists(rt.store.sandbox_dir('sb'))
    assert snapshot(str(canary)) == before_canary and snapshot(str(ro_dir)) == before_ro
    assert (rw_dir / 'made').read_text() == 'data\n', 'the operator\'s volume keeps what was written'
    assert not [m for m in mountinfo.mounts() if m[0].startswith(str(tmp_path))]
    assert volumes.points_of(rt, 'sb', 'c1') == []
