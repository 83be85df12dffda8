# Copyright: kata.runtime contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Limits and process settings inside a real guest, on one sandbox.

A 64 MiB container that allocates 200 MiB is OOM-killed (137) while the sandbox and another
container keep running; a pids limit stops a fork bomb; a CPU quota is what the container's
cgroup measures; a capability dropped is absent from CapEff; rlimits, hostname and
no_new_privs are seen from inside; a memory limit changed through kata_container is applied
in place (same process) and read back from the guest's memory.max.
"""

from __future__ import annotations

import json
import os
import time

import pytest
from ansible_collections.kata.runtime.plugins.module_utils.kata import container as ctr
from ansible_collections.kata.runtime.plugins.module_utils.kata import oci_support
from ansible_collections.kata.runtime.plugins.module_utils.kata import sandbox as sbx
from ansible_collections.kata.runtime.plugins.module_utils.kata.config import load_config
from ansible_collections.kata.runtime.plugins.module_utils.kata.errors import InvalidArgument
from ansible_collections.kata.runtime.plugins.module_utils.kata.runtime import Runtime

SID = 'lim'
MIB = 1024 * 1024


@pytest.fixture
def env(kata_envs):
    e = kata_envs('lim')
    yield e
    left, skeleton, prune = e.teardown()
    assert not left, 'left behind: %s' % json.dumps(left, indent=1)


def run(rt, cid, rootfs, command, trace, **kw):
    ctr.create(rt, SID, cid, ctr.settings_from(dict({'rootfs': rootfs, 'command': command}, **kw)), trace=trace)
    return ctr.start(rt, cid, trace=trace)


def output(info, stream='stdout'):
    with open(info[stream + '_path']) as f:
        return f.read()


def status_fields(text):
    return dict(line.split(':', 1) for line in text.splitlines() if ':' in line)


def test_limits_and_process_settings_in_the_guest(env, busybox_rootfs, tmp_path):
    rt = Runtime(load_config(env.config_path))
    trace = rt.trace()
    sbx.create(rt, SID, sbx.settings_from(rt.config, {'vcpus': 1, 'memory_mb': 256}), trace=trace)
    keep = run(rt, 'keep', busybox_rootfs, ['sleep', '1000'], trace)

    # A limit larger than the sandbox fails, naming it, and creates nothing.
    with pytest.raises(InvalidArgument, match=r'memory limit 300 MiB .* larger than sandbox lim \(memory_mb 256\)'):
        run(rt, 'big', busybox_rootfs, ['true'], trace, memory_mb=300)
    with pytest.raises(InvalidArgument, match=r'more than sandbox lim has \(vcpus 1\)'):
        run(rt, 'big', busybox_rootfs, ['true'], trace, cpus=1.5)
    assert env.mapping('big') is None

    # 64 MiB limit, 200 MiB allocated (dd's buffer, filled from /dev/zero): OOM-killed.
    run(rt, 'oom', busybox_rootfs, ['dd', 'if=/dev/zero', 'of=/dev/null', 'bs=200M', 'count=1'], trace,
        memory_mb=64)
    oom = ctr.wait_for(rt, 'oom', 60)
    assert oom['status'] == 'stopped' and oom['exit_code'] == 137, (oom, output(oom, 'stderr'))
    oom_cg = ctr.guest_stats(rt, 'oom')
    assert oom_cg['memory.max'] == str(64 * MIB) and int(oom_cg['memory.events.oom_kill']) >= 1
    assert sbx.info(rt, rt.store.load_sandbox(SID))['state'] == 'running'
    assert ctr.info(rt, rt.store.load_container(SID, 'keep'))['status'] == 'running'

    # A fork bomb stops at pids.max: the shell cannot fork its 20th sleep.
    bomb = 'i=0; while [ $i -lt 40 ]; do sleep 100 & i=$((i+1)); done; echo all-forked'
    run(rt, 'bomb', busybox_rootfs, ['/bin/sh', '-c', bomb], trace, pids_limit=16)
    bombed = ctr.wait_for(rt, 'bomb', 60)
    assert bombed['status'] == 'stopped' and bombed['exit_code'] != 0
    assert 'all-forked' not in output(bombed) and 'fork' in output(bombed, 'stderr')
    assert ctr.guest_stats(rt, 'bomb')['pids.max'] == '16'

    # A busy loop under a quarter of a CPU: the guest's cpu.stat says it got about that.
    run(rt, 'cpu', busybox_rootfs, ['/bin/sh', '-c', 'while :; do :; done'], trace, cpus=0.25)
    first, t0 = ctr.guest_stats(rt, 'cpu'), time.monotonic()
    time.sleep(6)
    second, t1 = ctr.guest_stats(rt, 'cpu'), time.monotonic()
    share = (int(second['cpu.stat.usage_usec']) - int(first['cpu.stat.usage_usec'])) / 1e6 / (t1 - t0)
    assert second['cpu.max'] == '25000 100000'
    assert int(second['cpu.stat.nr_throttled']) > int(first['cpu.stat.nr_throttled'])
    assert 0.12 <= share <= 0.32, share
    ctr.delete(rt, 'cpu', force=True, trace=trace)

    # A bundle: capabilities without CAP_SYS_ADMIN and CAP_NET_RAW, rlimits, hostname,
    # domainname, no_new_privs; terminal true (runc spec's default) is a named warning.
    caps = [c for c in oci_support.CAPABILITIES if c not in ('CAP_SYS_ADMIN', 'CAP_NET_RAW')]
    bundle = tmp_path / 'bundle'
    bundle.mkdir()
    script = ('grep -E "^(CapEff|CapBnd|CapPrm|NoNewPrivs):" /proc/self/status; echo nofile=$(ulimit -n)/$(ulimit -Hn); '
              'echo host=$(hostname); echo domain=$(cat /proc/sys/kernel/domainname)')
    (bundle / 'config.json').write_text(json.dumps({
        'ociVersion': '1.0.2', 'hostname': 'limits-host', 'domainname': 'example.test',
        'root': {'path': busybox_rootfs, 'readonly': True},
        'process': {'terminal': True, 'user': {'uid': 0, 'gid': 0}, 'args': ['/bin/sh', '-c', script],
                    'env': ['PATH=/bin'], 'cwd': '/', 'noNewPrivileges': True,
                    'capabilities': {k: caps for k in ('bounding', 'effective', 'permitted')},
                    'rlimits': [{'type': 'RLIMIT_NOFILE', 'soft': 321, 'hard': 456}]},
        'linux': {'namespaces': [{'type': t} for t in ('pid', 'network', 'ipc', 'uts', 'mount')]},
    }))
    warned = rt.trace()
    ctr.create(rt, SID, 'caps', ctr.settings_from({'bundle': str(bundle)}), trace=warned)
    ctr.start(rt, 'caps', trace=warned)
    assert any('process.terminal' in w for w in warned.warnings), warned.warnings
    done = ctr.wait_for(rt, 'caps', 60)
    text = output(done)
    assert done['exit_code'] == 0, (text, output(done, 'stderr'))
    fields = status_fields(text)
    want = sum(1 << oci_support.CAPABILITIES.index(c) for c in caps)
    assert int(fields['CapEff'], 16) == want and int(fields['CapBnd'], 16) == want, text
    assert not int(fields['CapEff'], 16) & (1 << 21)  # CAP_SYS_ADMIN
    assert fields['NoNewPrivs'].strip() == '1'
    assert 'nofile=321/456' in text and 'host=limits-host' in text and 'domain=example.test' in text

    # The config `runc spec` writes (runc 1.1; its mounts left to the volumes tests): before,
    # it ran with every capability (CapEff 000001ffffffffff) and a writable root.
    runc = bundle.parent / 'runc'
    runc.mkdir()
    os.symlink(busybox_rootfs, str(runc / 'rootfs'))
    three = ['CAP_AUDIT_WRITE', 'CAP_KILL', 'CAP_NET_BIND_SERVICE']
    (runc / 'config.json').write_text(json.dumps({
        'ociVersion': '1.0.2-dev',
        'process': {'terminal': True, 'user': {'uid': 0, 'gid': 0},
                    'args': ['sh', '-c', script + '; touch /written || echo read-only-root'],
                    'env': ['PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin', 'TERM=xterm'],
                    'cwd': '/', 'capabilities': {k: three for k in ('bounding', 'effective', 'permitted', 'ambient')},
                    'rlimits': [{'type': 'RLIMIT_NOFILE', 'hard': 1024, 'soft': 1024}], 'noNewPrivileges': True},
        'root': {'path': 'rootfs', 'readonly': True},
        'hostname': 'runc',
        'linux': {'resources': {'devices': [{'allow': False, 'access': 'rwm'}]},
                  'namespaces': [{'type': t} for t in ('pid', 'network', 'ipc', 'uts', 'mount', 'cgroup')],
                  'maskedPaths': ['/proc/acpi', '/proc/kcore', '/proc/keys'],
                  'readonlyPaths': ['/proc/bus', '/proc/fs', '/proc/sys']},
    }))
    warned = rt.trace()
    ctr.create(rt, SID, 'runc', ctr.settings_from({'bundle': str(runc)}), trace=warned)
    ctr.start(rt, 'runc', trace=warned)
    for field in ('process.terminal', 'process.capabilities.ambient', 'linux.resources.devices', 'linux.maskedPaths',
                  'linux.readonlyPaths', 'linux.namespaces[5]'):
        assert any(field in w for w in warned.warnings), (field, warned.warnings)
    done = ctr.wait_for(rt, 'runc', 60)
    text = output(done)
    fields = status_fields(text)
    assert fields['CapEff'].strip() == fields['CapBnd'].strip() == '0000000020000420', text
    assert fields['NoNewPrivs'].strip() == '1' and 'host=runc' in text and 'nofile=1024/1024' in text
    assert 'read-only-root' in text

    # kata_container changes keep's memory limit in place: changed, diff, same process.
    before = ctr.info(rt, rt.store.load_container(SID, 'keep'))
    task = {'name': 'limit', 'kata.runtime.kata_container': {'name': 'keep', 'memory_mb': 96}}
    res = env.playbook([task], diff=True).ok('limit')
    assert res['changed'] is True, res
    assert res['diff']['before']['memory_mb'] is None and res['diff']['after']['memory_mb'] == 96
    assert res['diff']['after']['limits'] == {'memory.max': str(96 * MIB)}
    assert res['container']['limits'] == {'memory.max': str(96 * MIB)}
    assert ctr.guest_stats(rt, 'keep')['memory.max'] == str(96 * MIB)
    after = ctr.info(rt, rt.store.load_container(SID, 'keep'))
    assert after['status'] == 'running' and (after['pid'], after['started_at']) == (keep.pid, before['started_at'])
    again = env.playbook([task]).ok('limit')
    assert again['changed'] is False, again

    assert sbx.delete(rt, SID, force=True, trace=trace) is True
    assert env.leftovers() == {'domains': [], 'cgroups': [], 'state_files': [], 'mounts': []}
    assert os.path.isdir(busybox_rootfs)
