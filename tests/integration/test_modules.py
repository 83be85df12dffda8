# Copyright: kata.runtime contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The modules end to end: real ansible-playbook runs on localhost, real libvirtd, real guests,
real OCI hooks. What a module reports is checked against what the host shows (libvirt,
/proc, the state root, cgroupfs).

Each test has its own config (state root, domain prefix, cgroup parent: see conftest.py) and
its finalizer deletes everything with ``kata_prune all=true force=true`` and checks that
nothing is left.
"""

from __future__ import annotations

import json
import os
import stat

import pytest

BAD_IDS = ['../x', 'a/b', '.hidden', 'a' * 129]


def qemu_alive(pid):
    """True when ``pid`` is a live qemu process on the host."""
    try:
        with open('/proc/%d/cmdline' % pid, 'rb') as f:
            argv0 = f.read().split(b'\0')[0]
    except (FileNotFoundError, ProcessLookupError, TypeError):
        return False
    return b'qemu' in os.path.basename(argv0)


def script(path, body):
    with open(path, 'w') as f:
        f.write('#!/bin/sh\n' + body)
    os.chmod(path, os.stat(path).st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


def record_hook(env, name):
    """A hook that appends its stdin (the container state JSON) as one line to <workdir>/<name>.jsonl."""
    hook = script(os.path.join(env.workdir, 'record-stdin'), 'cat >> "$1"\necho >> "$1"\n')
    out = os.path.join(env.workdir, name + '.jsonl')
    return {'path': hook, 'args': ['record-stdin', out]}, out


def hook_runs(path):
    """The state JSON each run of a record hook got on stdin ([] if it never ran)."""
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f.read().splitlines() if line.strip()]


def ids(items):
    return sorted(i['id'] for i in items)


def snapshot(env):
    """Everything a refused call must not touch."""
    return {
        'domains': env.domains(),
        'cgroups': env.cgroup_dirs(),
        'state_files': env.state_files(),
        'state_dirs': env.state_dirs(),
    }


# ---------------------------------------------------------------------------------------------

def test_sandbox_lifecycle(kata):
    sid = 'life'
    dom = kata.domain_prefix + sid

    # check mode: planned, nothing created
    run = kata.playbook([
        {'name': 'plan', 'kata.runtime.kata_sandbox': {'name': sid, 'labels': {'tier': 'web'}}, 'check_mode': True},
    ])
    plan = run.ok('plan')
    assert plan['changed'] is True
    assert plan['sandbox']['id'] == sid and plan['sandbox']['state'] == 'running'
    assert any('would create' in a for a in plan['actions']), plan['actions']
    assert kata.domains() == []
    assert not os.path.exists(kata.state_root), kata.state_dirs()
    assert kata.cgroup_dirs() == []

    # create; then the same request in check mode and for real changes nothing
    run = kata.playbook([
        {'name': 'create', 'kata.runtime.kata_sandbox': {'name': sid, 'labels': {'tier': 'web'}}},
        {'name': 'check again', 'kata.runtime.kata_sandbox': {'name': sid, 'labels': {'tier': 'web'}},
         'check_mode': True},
        {'name': 'rerun', 'kata.runtime.kata_sandbox': {'name': sid, 'labels': {'tier': 'web'}}},
    ])
    created = run.ok('create')
    sb = created['sandbox']
    assert created['changed'] is True
    assert sb['state'] == 'running' and sb['vm_state'] == 'running'
    assert sb['domain'] == dom and sb['labels'] == {'tier': 'web'}
    assert sb['vcpus'] == 1 and sb['memory_mb'] == 256 and sb['containers'] == []
    assert sb['accel'] in ('kvm', 'tcg') and sb['accel_reason'], sb
    if not os.path.exists('/dev/kvm'):
        assert sb['accel'] == 'tcg', sb
    assert qemu_alive(sb['pid']), sb['pid']
    pid = sb['pid']
    assert kata.domains() == [dom] and kata.domain_state(dom) == 'running'
    assert os.path.isfile(os.path.join(kata.sandbox_dir(sid), 'sandbox.json'))
    assert kata.mapping(sid) == sid
    assert sb['cgroups_paths'] and all(os.path.isdir(p) for p in sb['cgroups_paths'])
    assert all(kata.cgroup_parent in p for p in sb['cgroups_paths'])
    for name in ('check again', 'rerun'):
        r = run.ok(name)
        assert r['changed'] is False, (name, r['actions'])
        assert r['sandbox']['pid'] == pid and r['sandbox']['state'] == 'running'

    # labels change in place (diff shown, no reboot); an immutable change is refused
    run = kata.playbook([
        {'name': 'relabel', 'kata.runtime.kata_sandbox': {'name': sid, 'labels': {'tier': 'web', 'owner': 'qa'}}},
        {'name': 'vcpus', 'kata.runtime.kata_sandbox': {'name': sid, 'vcpus': 2}},
        {'name': 'after vcpus', 'kata.runtime.kata_sandbox_info': {'name': [sid]}},
        {'name': 'dominfo', 'ansible.builtin.command': 'virsh -c qemu:///system dominfo %s' % dom},
    ], diff=True)
    relabel = run.ok('relabel')
    assert relabel['changed'] is True
    assert relabel['sandbox']['labels'] == {'tier': 'web', 'owner': 'qa'}
    assert relabel['sandbox']['pid'] == pid
    assert relabel['diff']['before']['labels'] == {'tier': 'web'}
    assert relabel['diff']['after']['labels'] == {'tier': 'web', 'owner': 'qa'}
    assert '--- before' in run.stdout and '+++ after' in run.stdout, run.stdout[-3000:]
    assert '"owner": "qa"' in run.stdout, run.stdout[-3000:]
    refused = run.failed('vcpus')
    assert refused['changed'] is False
    assert 'vcpus' in refused['msg'] and 'recreate' in refused['msg'], refused['msg']
    after = run.ok('after vcpus')['sandboxes']
    assert len(after) == 1 and after[0]['vcpus'] == 1 and after[0]['pid'] == pid
    assert after[0]['labels'] == {'tier': 'web', 'owner': 'qa'}
    assert 'CPU(s):         1' in run.ok('dominfo')['stdout'], run['dominfo']['stdout']

    # paused -> running (resume), stopped -> running (boot again), absent twice
    run = kata.playbook([
        {'name': 'pause', 'kata.runtime.kata_sandbox': {'name': sid, 'state': 'paused'}},
        {'name': 'paused vm', 'ansible.builtin.command': 'virsh -c qemu:///system domstate %s' % dom},
        {'name': 'pause again', 'kata.runtime.kata_sandbox': {'name': sid, 'state': 'paused'}},
        {'name': 'resume', 'kata.runtime.kata_sandbox': {'name': sid}},
        {'name': 'stop', 'kata.runtime.kata_sandbox': {'name': sid, 'state': 'stopped'}},
        {'name': 'stopped vm', 'ansible.builtin.command': 'virsh -c qemu:///system domstate %s' % dom},
        {'name': 'stop again', 'kata.runtime.kata_sandbox': {'name': sid, 'state': 'stopped'}},
        {'name': 'boot again', 'kata.runtime.kata_sandbox': {'name': sid}},
    ])
    paused = run.ok('pause')
    assert paused['changed'] is True and paused['sandbox']['state'] == 'paused'
    assert run.ok('paused vm')['stdout'].strip() == 'paused'
    assert run.ok('pause again')['changed'] is False
    resumed = run.ok('resume')
    assert resumed['changed'] is True and resumed['sandbox']['state'] == 'running'
    assert any('resumed' in a for a in resumed['actions']), resumed['actions']
    assert resumed['sandbox']['pid'] == pid
    stopped = run.ok('stop')
    assert stopped['changed'] is True and stopped['sandbox']['state'] == 'stopped'
    assert stopped['sandbox']['pid'] is None
    assert run.ok('stopped vm')['stdout'].strip() == 'shut off'
    assert run.ok('stop again')['changed'] is False
    booted = run.ok('boot again')
    assert booted['changed'] is True and booted['sandbox']['state'] == 'running'
    assert any('started VM' in a for a in booted['actions']), booted['actions']
    assert any('agent' in a and 'ready' in a for a in booted['actions']), booted['actions']
    assert booted['sandbox']['pid'] != pid and qemu_alive(booted['sandbox']['pid'])
    assert not qemu_alive(pid)
    assert booted['sandbox']['labels'] == {'tier': 'web', 'owner': 'qa'}
    new_pid = booted['sandbox']['pid']
    cgroups = booted['sandbox']['cgroups_paths']

    run = kata.playbook([
        {'name': 'delete', 'kata.runtime.kata_sandbox': {'name': sid, 'state': 'absent'}},
        {'name': 'delete again', 'kata.runtime.kata_sandbox': {'name': sid, 'state': 'absent'}},
    ])
    deleted = run.ok('delete')
    assert deleted['changed'] is True and deleted['sandbox'] == {}
    again = run.ok('delete again')
    assert again['changed'] is False and again['actions'] == []
    assert kata.domains() == []
    assert not qemu_alive(new_pid)
    assert not os.path.exists(kata.sandbox_dir(sid))
    assert kata.mapping(sid) is None
    assert not any(os.path.exists(p) for p in cgroups), cgroups


def test_containers(kata, busybox_rootfs):
    sid = 'pod'
    fail_hook = script(os.path.join(kata.workdir, 'failing-hook'), 'echo poststop-broke >&2\nexit 7\n')
    long_hook, long_out = record_hook(kata, 'long-poststop')
    step_hook, step_out = record_hook(kata, 'step-poststop')
    tail_hook, tail_out = record_hook(kata, 'tail-poststop')
    base = {'sandbox': sid, 'rootfs': busybox_rootfs}

    # a container that prints and exits 3; a long-running one that refuses a plain delete
    run = kata.playbook([
        {'name': 'sandbox', 'kata.runtime.kata_sandbox': {'name': sid}},
        {'name': 'hello', 'kata.runtime.kata_container': dict(
            base, name='hello', env={'GREETING': 'kata'},
            command=['/bin/sh', '-c', 'echo "hello from $GREETING"; exit 3'])},
        {'name': 'hello done', 'kata.runtime.kata_container_info': {'name': ['hello']},
         'register': 'hello_info', 'until': "hello_info.containers[0].status == 'stopped'",
         'retries': 60, 'delay': 1},
        {'name': 'long', 'kata.runtime.kata_container': dict(
            base, name='long', command=['sleep', '1000'], hooks={'poststop': [long_hook]})},
        {'name': 'long absent', 'kata.runtime.kata_container': {'name': 'long', 'state': 'absent'}},
        {'name': 'long after', 'kata.runtime.kata_container_info': {'name': ['long']}},
    ])
    assert run.ok('sandbox')['sandbox']['state'] == 'running'
    hello = run.ok('hello')
    assert hello['changed'] is True and hello['container']['sandbox'] == sid
    assert hello['container']['type'] == 'pod_container'
    done = run.ok('hello done')['containers'][0]
    assert done['status'] == 'stopped' and done['exit_code'] == 3, done
    with open(done['stdout_path']) as f:
        assert f.read() == 'hello from kata\n'
    assert kata.mapping('hello') == sid
    long = run.ok('long')['container']
    assert long['status'] == 'running' and long['pid'], long
    refused = run.failed('long absent')
    assert refused['changed'] is False
    assert 'long' in refused['msg'] and 'still running' in refused['msg'], refused['msg']
    still = run.ok('long after')['containers']
    assert len(still) == 1 and still[0]['status'] == 'running' and still[0]['pid'] == long['pid']
    assert kata.mapping('long') == sid
    assert hook_runs(long_out) == []
    long_cgroups = still[0]['cgroups_paths']
    assert long_cgroups and all(os.path.isdir(p) for p in long_cgroups)

    # force delete runs poststop; created -> running -> stopped -> running (recreated) -> absent
    step = dict(base, name='step', command=['/bin/sh', '-c', "trap 'exit 143' TERM; while :; do sleep 1; done"],
                hooks={'poststop': [{'path': fail_hook}, step_hook]})
    run = kata.playbook([
        {'name': 'long forced', 'kata.runtime.kata_container': {'name': 'long', 'state': 'absent', 'force': True}},
        {'name': 'long forced again', 'kata.runtime.kata_container': {'name': 'long', 'state': 'absent',
                                                                      'force': True}},
        {'name': 'long gone', 'kata.runtime.kata_container_info': {'name': ['long']}},
        {'name': 'created', 'kata.runtime.kata_container': dict(step, state='created')},
        {'name': 'started', 'kata.runtime.kata_container': {'name': 'step', 'state': 'running'}},
        {'name': 'started again', 'kata.runtime.kata_container': {'name': 'step', 'state': 'running'}},
        {'name': 'stopped', 'kata.runtime.kata_container': {'name': 'step', 'state': 'stopped',
                                                            'signal': 'SIGTERM', 'stop_timeout': 3}},
        {'name': 'restarted', 'kata.runtime.kata_container': {'name': 'step', 'state': 'running'}},
        {'name': 'killed', 'kata.runtime.kata_container': {'name': 'step', 'state': 'stopped',
                                                           'signal': 'SIGUSR2', 'stop_timeout': 1}},
        {'name': 'step absent', 'kata.runtime.kata_container': {'name': 'step', 'state': 'absent'}},
        {'name': 'step gone', 'kata.runtime.kata_container_info': {'name': ['step']}},
    ])
    forced = run.ok('long forced')
    assert forced['changed'] is True and forced['container'] == {}
    assert run.ok('long forced again')['changed'] is False
    assert run.ok('long gone')['containers'] == []
    runs = hook_runs(long_out)
    assert len(runs) == 1 and runs[0]['id'] == 'long' and runs[0]['status'] == 'stopped', runs
    assert runs[0]['annotations'].get('io.katacontainers.pkg.oci.container_type') == 'pod_container', runs
    assert kata.mapping('long') is None
    assert not any(os.path.exists(p) for p in long_cgroups), long_cgroups

    created = run.ok('created')
    assert created['changed'] is True and created['container']['status'] == 'created'
    started = run.ok('started')
    assert started['changed'] is True and started['container']['status'] == 'running'
    assert run.ok('started again')['changed'] is False
    stopped = run.ok('stopped')
    assert stopped['changed'] is True and stopped['container']['status'] == 'stopped'
    assert stopped['container']['exit_code'] in (143, 137), stopped['container']
    restarted = run.ok('restarted')
    assert restarted['changed'] is True and restarted['container']['status'] == 'running'
    acts = restarted['actions']
    assert 'deleted container step' in acts and 'recorded container step in sandbox pod' in acts, acts
    assert acts.index('deleted container step') < acts.index('recorded container step in sandbox pod'), acts
    assert restarted['container']['started_at'] != started['container']['started_at'] or \
        restarted['container']['pid'] != started['container']['pid']
    # the recreate deleted the old container: its poststop hooks ran, the failing one as a warning
    assert any('failing-hook' in w for w in restarted.get('warnings', [])), restarted.get('warnings')
    killed = run.ok('killed')
    # SIGUSR2 is ignored by a PID 1 shell without a handler: SIGKILL after stop_timeout
    assert killed['container']['status'] == 'stopped' and killed['container']['exit_code'] == 137, killed
    step_absent = run.ok('step absent')
    assert step_absent['changed'] is True
    warnings = step_absent.get('warnings') or []
    assert any('failing-hook' in w and 'poststop' in w for w in warnings), warnings
    assert '[WARNING]' in run.stdout + run.stderr
    runs = hook_runs(step_out)  # the hook after the failing one still ran, at each delete
    assert [(r['id'], r['status']) for r in runs] == [('step', 'stopped')] * 2, runs
    assert step_absent['container'] == {} and run.ok('step gone')['containers'] == []
    assert kata.mapping('step') is None

    # kata_container on the sandbox's own ID (pod_sandbox) deletes the whole sandbox
    run = kata.playbook([
        {'name': 'tail', 'kata.runtime.kata_container': dict(base, name='tail', command=['sleep', '1000'],
                                                             hooks={'poststop': [tail_hook]})},
        {'name': 'as container', 'kata.runtime.kata_container_info': {'name': [sid]}},
        {'name': 'pod absent', 'kata.runtime.kata_container': {'name': sid, 'state': 'absent'}},
        {'name': 'pod forced', 'kata.runtime.kata_container': {'name': sid, 'state': 'absent', 'force': True}},
        {'name': 'pod gone', 'kata.runtime.kata_sandbox_info': {'name': [sid]}},
        {'name': 'nothing left', 'kata.runtime.kata_container_info': {}},
    ])
    assert run.ok('tail')['container']['status'] == 'running'
    as_ctr = run.ok('as container')['containers']
    assert len(as_ctr) == 1 and as_ctr[0]['type'] == 'pod_sandbox' and as_ctr[0]['status'] == 'running'
    refused = run.failed('pod absent')
    assert refused['changed'] is False and 'tail' in refused['msg'], refused['msg']
    assert run.ok('pod forced')['changed'] is True
    assert run.ok('pod gone')['sandboxes'] == []
    assert run.ok('nothing left')['containers'] == []
    assert [r['id'] for r in hook_runs(tail_out)] == ['tail']
    assert kata.domains() == []
    assert not os.path.exists(kata.sandbox_dir(sid))
    for cid in (sid, 'hello', 'tail'):
        assert kata.mapping(cid) is None, cid
    assert [d for d in kata.cgroup_dirs() if d.endswith('/' + sid) or d.endswith('/tail')] == []


@pytest.fixture(scope='module')
def shared_pod(kata_session):
    """A running sandbox for the tests that only need one to exist (session env: pruned at the end)."""
    sid = 'shared'
    run = kata_session.playbook([{'name': 'sandbox', 'kata.runtime.kata_sandbox': {'name': sid}}])
    assert run.ok('sandbox')['sandbox']['state'] == 'running'
    return kata_session, sid


def remove_containers(env, *cids):
    run = env.playbook([{'name': 'remove %s' % c, 'kata.runtime.kata_container': {
        'name': c, 'state': 'absent', 'force': True}} for c in cids])
    for c in cids:
        run.ok('remove %s' % c)


def test_bad_ids_are_refused_before_anything(shared_pod, busybox_rootfs):
    kata, sid = shared_pod
    before = snapshot(kata)
    tasks = []
    for n, bad in enumerate(BAD_IDS):
        tasks += [
            {'name': 'container %d' % n, 'kata.runtime.kata_container': {
                'name': bad, 'sandbox': sid, 'rootfs': busybox_rootfs, 'command': ['true']}},
            {'name': 'in sandbox %d' % n, 'kata.runtime.kata_container': {
                'name': 'fine', 'sandbox': bad, 'rootfs': busybox_rootfs, 'command': ['true']}},
            {'name': 'absent %d' % n, 'kata.runtime.kata_container': {'name': bad, 'state': 'absent', 'force': True}},
            {'name': 'sandbox %d' % n, 'kata.runtime.kata_sandbox': {'name': bad}},
            {'name': 'sandbox absent %d' % n,
             'kata.runtime.kata_sandbox': {'name': bad, 'state': 'absent', 'force': True}},
        ]
    run = kata.playbook(tasks)
    for task in tasks:
        r = run.failed(task['name'])
        bad = BAD_IDS[int(task['name'].split()[-1])]
        assert r['changed'] is False, (task['name'], r)
        assert repr(bad) in r['msg'], (task['name'], r['msg'])
    assert snapshot(kata) == before
    assert kata.mapping('fine') is None


def test_info_filters_and_a_vm_killed_behind_our_back(kata, busybox_rootfs):
    base = {'sandbox': 'web-1', 'rootfs': busybox_rootfs}
    run = kata.playbook([
        {'name': 'web', 'kata.runtime.kata_sandbox': {'name': 'web-1', 'labels': {'tier': 'web', 'team': 'a'}}},
        {'name': 'db', 'kata.runtime.kata_sandbox': {'name': 'db-1', 'state': 'stopped',
                                                     'labels': {'tier': 'db', 'team': 'a'}}},
        {'name': 'w-run', 'kata.runtime.kata_container': dict(base, name='w-run', command=['sleep', '1000'],
                                                              labels={'role': 'server'})},
        {'name': 'w-new', 'kata.runtime.kata_container': dict(base, name='w-new', command=['sleep', '1000'],
                                                              labels={'role': 'server'}, state='created')},
        {'name': 'w-done', 'kata.runtime.kata_container': dict(base, name='w-done', command=['true'],
                                                               labels={'role': 'job'})},
        {'name': 'w-done stopped', 'kata.runtime.kata_container_info': {'name': ['w-done']},
         'register': 'done', 'until': "done.containers[0].status == 'stopped'", 'retries': 60, 'delay': 1},
        {'name': 'glob', 'kata.runtime.kata_sandbox_info': {'name': ['web-*']}},
        {'name': 'team a', 'kata.runtime.kata_sandbox_info': {'labels': {'team': 'a'}}},
        {'name': 'tier db', 'kata.runtime.kata_sandbox_info': {'labels': {'tier': 'db'}}},
        {'name': 'no match', 'kata.runtime.kata_sandbox_info': {'labels': {'team': 'a', 'tier': 'cache'}}},
        {'name': 'stopped ones', 'kata.runtime.kata_sandbox_info': {'state': ['stopped']}},
        {'name': 'running ones', 'kata.runtime.kata_sandbox_info': {'state': ['running']}},
        {'name': 'query', 'kata.runtime.kata_sandbox_info': {'query': "[?labels.tier=='web'].id"}},
        {'name': 'bad query', 'kata.runtime.kata_sandbox_info': {'query': '[?'}},
        {'name': 'all containers', 'kata.runtime.kata_container_info': {'sandbox': ['web-1']}},
        {'name': 'running containers', 'kata.runtime.kata_container_info': {'status': ['running'],
                                                                            'type': 'pod_container'}},
        {'name': 'created containers', 'kata.runtime.kata_container_info': {'status': ['created']}},
        {'name': 'servers', 'kata.runtime.kata_container_info': {'labels': {'role': 'server'}}},
        {'name': 'container glob', 'kata.runtime.kata_container_info': {'name': ['w-*'], 'status': ['stopped']}},
        {'name': 'container query', 'kata.runtime.kata_container_info': {
            'query': "[?type=='pod_container'] | sort_by(@, &id)[].[id, status]"}},
    ])
    web = run.ok('web')['sandbox']
    assert web['state'] == 'running'
    assert run.ok('db')['sandbox']['state'] == 'stopped' and kata.domains() == [web['domain']]
    assert run.ok('w-done stopped')['containers'][0]['exit_code'] == 0
    assert ids(run.ok('glob')['sandboxes']) == ['web-1']
    assert ids(run.ok('team a')['sandboxes']) == ['db-1', 'web-1']
    assert ids(run.ok('tier db')['sandboxes']) == ['db-1']
    assert run.ok('no match')['sandboxes'] == []
    assert ids(run.ok('stopped ones')['sandboxes']) == ['db-1']
    assert ids(run.ok('running ones')['sandboxes']) == ['web-1']
    assert run.ok('query')['sandboxes'] == ['web-1']
    bad = run.failed('bad query')
    assert '[?' in bad['msg'] and bad['changed'] is False
    assert ids(run.ok('all containers')['containers']) == ['w-done', 'w-new', 'w-run', 'web-1']
    assert ids(run.ok('running containers')['containers']) == ['w-run']
    assert ids(run.ok('created containers')['containers']) == ['w-new']
    assert ids(run.ok('servers')['containers']) == ['w-new', 'w-run']
    assert ids(run.ok('container glob')['containers']) == ['w-done']
    assert run.ok('container query')['containers'] == [['w-done', 'stopped'], ['w-new', 'created'],
                                                       ['w-run', 'running']]

    # the VM dies behind the runtime's back
    from conftest import virsh
    virsh('destroy', web['domain'])
    assert not qemu_alive(web['pid'])
    run = kata.playbook([
        {'name': 'dead', 'kata.runtime.kata_sandbox_info': {'name': ['web-1']}},
        {'name': 'dead ones', 'kata.runtime.kata_sandbox_info': {'state': ['dead']}},
        {'name': 'running ones', 'kata.runtime.kata_sandbox_info': {'state': ['running']}},
        {'name': 'containers', 'kata.runtime.kata_container_info': {'sandbox': ['web-1']}},
        {'name': 'running containers', 'kata.runtime.kata_container_info': {'status': ['running']}},
        {'name': 'one container', 'kata.runtime.kata_container': {'name': 'w-run', 'state': 'stopped'}},
        {'name': 'orphans planned', 'kata.runtime.kata_prune': {'names': []}, 'check_mode': True},
        {'name': 'still there', 'kata.runtime.kata_sandbox_info': {}},
        {'name': 'orphans', 'kata.runtime.kata_prune': {'names': []}},
        {'name': 'left', 'kata.runtime.kata_sandbox_info': {}},
        {'name': 'left containers', 'kata.runtime.kata_container_info': {}},
    ])
    dead = run.ok('dead')['sandboxes']
    assert len(dead) == 1 and dead[0]['state'] == 'dead' and dead[0]['pid'] is None, dead
    assert ids(run.ok('dead ones')['sandboxes']) == ['web-1']
    assert run.ok('running ones')['sandboxes'] == []
    containers = run.ok('containers')['containers']
    assert ids(containers) == ['w-done', 'w-new', 'w-run', 'web-1']
    assert all(c['status'] == 'stopped' for c in containers), containers
    assert run.ok('running containers')['containers'] == []
    one = run.ok('one container')
    assert one['changed'] is False and one['container']['status'] == 'stopped', one
    planned = run.ok('orphans planned')
    assert planned['changed'] is True
    assert {'kind': 'sandbox_without_vm', 'id': 'web-1'} in [
        {'kind': o['kind'], 'id': o['id']} for o in planned['orphans_removed']], planned
    assert ids(run.ok('still there')['sandboxes']) == ['db-1', 'web-1']
    pruned = run.ok('orphans')
    assert pruned['changed'] is True and pruned['deleted'] == []
    assert 'web-1' in [o['id'] for o in pruned['orphans_removed'] if o['kind'] == 'sandbox_without_vm']
    left = run.ok('left')['sandboxes']
    assert ids(left) == ['db-1'] and left[0]['state'] == 'stopped'
    assert ids(run.ok('left containers')['containers']) == ['db-1']
    assert kata.domains() == []
    assert not os.path.exists(kata.sandbox_dir('web-1'))
    for cid in ('web-1', 'w-run', 'w-new', 'w-done'):
        assert kata.mapping(cid) is None, cid
    assert kata.mapping('db-1') == 'db-1'
    assert [d for d in kata.cgroup_dirs() if 'web-1' in d or '/w-' in d] == []


def test_prune(kata, busybox_rootfs, capsys):
    # each sandbox's poststop hook logs when it starts and ends: overlapping spans = parallel
    hook = script(os.path.join(kata.workdir, 'span-hook'),
                  'echo "start $(date +%s.%N)" >> "$1"\nsleep 3\necho "end $(date +%s.%N)" >> "$1"\n')
    spans = {s: os.path.join(kata.workdir, s + '.span') for s in ('acme-1', 'acme-2', 'acme-3', 'other-1')}

    def sandbox(sid, tenant, state):
        return {'name': sid, 'kata.runtime.kata_sandbox': {
            'name': sid, 'state': state, 'labels': {'tenant': tenant},
            'hooks': {'poststop': [{'path': hook, 'args': ['span-hook', spans[sid]]}]}}}

    run = kata.playbook([
        sandbox('acme-1', 'acme', 'running'),
        sandbox('acme-2', 'acme', 'stopped'),
        sandbox('acme-3', 'acme', 'stopped'),
        sandbox('other-1', 'other', 'stopped'),
        {'name': 'app', 'kata.runtime.kata_container': {'name': 'app', 'sandbox': 'acme-1',
                                                        'rootfs': busybox_rootfs, 'command': ['sleep', '1000']}},
        {'name': 'no selector', 'kata.runtime.kata_prune': {'force': True}},
        {'name': 'planned', 'kata.runtime.kata_prune': {'labels': {'tenant': 'acme'}, 'force': True},
         'check_mode': True},
        {'name': 'after plan', 'kata.runtime.kata_sandbox_info': {}},
        {'name': 'not forced', 'kata.runtime.kata_prune': {'names': ['acme-1']}},
        {'name': 'acme', 'kata.runtime.kata_prune': {'labels': {'tenant': 'acme'}, 'force': True}},
        {'name': 'left', 'kata.runtime.kata_sandbox_info': {}},
        {'name': 'again', 'kata.runtime.kata_prune': {'labels': {'tenant': 'acme'}, 'force': True}},
    ])
    acme1 = run.ok('acme-1')['sandbox']
    assert acme1['state'] == 'running'
    assert run.ok('app')['container']['status'] == 'running'
    refused = run.failed('no selector')
    assert refused['changed'] is False and 'selector' in refused['msg']
    planned = run.ok('planned')
    assert planned['changed'] is True and sorted(planned['deleted']) == ['acme-1', 'acme-2', 'acme-3']
    after_plan = run.ok('after plan')['sandboxes']
    assert ids(after_plan) == ['acme-1', 'acme-2', 'acme-3', 'other-1']
    assert [s['state'] for s in after_plan if s['id'] == 'acme-1'] == ['running']
    # a running container without force: refused with the reason, the sandbox is untouched
    not_forced = run.failed('not forced')
    assert 'acme-1' in not_forced['msg'] and 'app' in not_forced['msg'], not_forced['msg']
    pruned = run.ok('acme')
    assert pruned['changed'] is True and sorted(pruned['deleted']) == ['acme-1', 'acme-2', 'acme-3']
    left = run.ok('left')['sandboxes']
    assert ids(left) == ['other-1']
    again = run.ok('again')
    assert again['changed'] is False and again['deleted'] == []

    intervals = []
    for sid in ('acme-1', 'acme-2', 'acme-3'):
        with open(spans[sid]) as f:
            marks = dict(line.split() for line in f.read().splitlines())
        assert set(marks) == {'start', 'end'}, (sid, marks)  # the hook ran exactly once
        intervals.append((float(marks['start']), float(marks['end'])))
    intervals.sort()
    # one after the other, three 3 s hooks take 9 s or more; in parallel they overlap
    overlapping = any(b[0] < a[1] for a, b in zip(intervals, intervals[1:]))
    elapsed = intervals[-1][1] - intervals[0][0]
    assert overlapping and elapsed < 8, 'the deletes did not run in parallel: %s' % intervals
    assert not os.path.exists(spans['other-1'])
    assert not qemu_alive(acme1['pid'])
    assert kata.mapping('app') is None and kata.mapping('other-1') == 'other-1'

    # the ad hoc form an operator types during an incident
    rc, result, stdout, stderr = kata.adhoc(
        'kata.runtime.kata_prune', 'all=true force=true config=%s' % kata.config_path)
    assert rc == 0, stdout + stderr
    assert result['changed'] is True and result['deleted'] == ['other-1'], result
    assert os.path.exists(spans['other-1'])
    left = kata.leftovers()
    assert left == {'domains': [], 'cgroups': [], 'state_files': [], 'mounts': []}, left
    assert not os.listdir(os.path.join(kata.state_root, 'mappings'))
    with capsys.disabled():
        print('\nstate root after kata_prune all=true force=true: %s' % kata.state_dirs())


def test_stop_signal_reaches_the_container(shared_pod, busybox_rootfs, request):
    """A container that handles SIGTERM stops on SIGTERM, well before stop_timeout: the
    signal dispositions of the guest's PID 1 must not leak into containers."""
    kata, sid = shared_pod
    request.addfinalizer(lambda: remove_containers(kata, 'graceful'))
    run = kata.playbook([
        {'name': 'start', 'kata.runtime.kata_container': {
            'name': 'graceful', 'sandbox': sid, 'rootfs': busybox_rootfs,
            'command': ['/bin/sh', '-c', "trap 'echo got TERM; exit 0' TERM; echo ready; "
                                         "while :; do sleep 1; done"]}},
        {'name': 'stop', 'kata.runtime.kata_container': {'name': 'graceful', 'state': 'stopped',
                                                         'signal': 'SIGTERM', 'stop_timeout': 10}},
    ])
    assert run.ok('start')['container']['status'] == 'running'
    stop = run.ok('stop')
    with open(stop['container']['stdout_path']) as f:
        output = f.read()
    assert not any('SIGKILL' in a for a in stop['actions']), (stop['actions'], output)
    assert stop['container']['exit_code'] == 0 and 'got TERM' in output, (stop['container'], output)
