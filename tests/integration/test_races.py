# Copyright: kata.runtime contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Races with real guests (issue 8): module runs at the same time on the same sandboxes.

- 16 invocations at once (4 ansible-playbook processes, 4 forks each, strategy free) create,
  start, stop and force-delete the same 4 sandboxes and their containers. Each task ends with a
  result or an error of its own (never a crash); every invocation on a sandbox ends with that
  sandbox's intent, so the last operation on it is one of those and the final state must be the
  intent; nothing leaks and no record is corrupt.
- kata_prune runs while sandboxes are being created, with a selector that picks none of them,
  and from another state root sharing the domain prefix and cgroup parent: neither may touch
  them. Then two prunes at once over overlapping selections delete each sandbox exactly once.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

import pytest
import yaml
from ansible_collections.kata.runtime.plugins.module_utils.kata.config import load_config
from ansible_collections.kata.runtime.plugins.module_utils.kata.runtime import Runtime
from conftest import (
    Background,
    _tool,
    ansible_env,
    assert_clear_error,
    crash_of,
    residue,
    side,
    vmm_processes,
)

MEMORY_MB = 128
SIDS = ('r0', 'r1', 'r2', 'r3')
INTENT = {'r0': 'running', 'r1': 'absent', 'r2': 'running', 'r3': 'absent'}
PROCESSES = 4
LOCK_RETRIES = 3
STORM_TIMEOUT = 420


@pytest.fixture
def env(kata):
    kata.config.update({'memory_mb': MEMORY_MB})
    with open(kata.config_path, 'w') as f:
        yaml.safe_dump(kata.config, f, default_flow_style=False)
    return kata


class HostsRun:
    """One ansible-playbook process over several inventory hosts, all this machine (local
    connection), ``forks`` of them at once, each at its own pace (strategy free)."""

    def __init__(self, env, hosts, tasks, forks, tag='hosts'):
        self.run_dir = tempfile.mkdtemp(dir=env.workdir, prefix=tag + '-')
        self.names = [t['name'] for t in tasks]
        body = []
        for i, task in enumerate(tasks):
            task = dict(task)
            task['register'] = 'r%d' % i
            task.setdefault('ignore_errors', True)
            if task.pop('retry_when_locked', False):
                # what the LockTimeout message tells an operator to do: retry
                task.update({'until': "r%d is succeeded or 'is locked' not in (r%d.msg | default(''))" % (i, i),
                             'retries': LOCK_RETRIES, 'delay': 1})
            body.append(task)
        collect = '[%s]' % ', '.join('r%d | default({"skipped_by_playbook": true})' % i for i in range(len(tasks)))
        body.append({'name': 'collect', 'ansible.builtin.copy': {
            'content': '{{ %s | to_json }}' % collect, 'dest': os.path.join(self.run_dir, '{{ inventory_hostname }}.json'),
            'mode': '0600'}})
        play = [{'name': 'race', 'hosts': 'all', 'gather_facts': False, 'strategy': 'free',
                 'module_defaults': {'group/kata.runtime.kata': {'config': env.config_path}}, 'tasks': body}]
        inventory = {'all': {'hosts': {
            name: dict(hostvars, ansible_connection='local', ansible_python_interpreter=sys.executable)
            for name, hostvars in hosts.items()}}}
        self.hosts = list(hosts)
        for name, data in (('playbook.yml', play), ('inventory.yml', inventory)):
            with open(os.path.join(self.run_dir, name), 'w') as f:
                yaml.safe_dump(data, f, default_flow_style=False, sort_keys=False)
        self.proc = subprocess.Popen(
            [_tool('ansible-playbook'), '-i', 'inventory.yml', '-f', str(forks), 'playbook.yml'],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ansible_env(), cwd=self.run_dir)
        self.output = None

    def results(self, timeout):
        """{host: {task name: registered result}} once the run ends."""
        try:
            self.output = self.proc.communicate(timeout=timeout)[0]
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.output = self.proc.communicate()[0]
            raise AssertionError('ansible-playbook still running after %ss:\n%s' % (timeout, self.output[-4000:]))
        with open(os.path.join(self.run_dir, 'output.txt'), 'w') as f:
            f.write(self.output)
        out = {}
        for host in self.hosts:
            path = os.path.join(self.run_dir, host + '.json')
            assert os.path.exists(path), 'host %s wrote no results (rc %d):\n%s' % (
                host, self.proc.returncode, self.output[-4000:])
            with open(path) as f:
                out[host] = dict(zip(self.names, json.load(f)))
        assert self.proc.returncode == 0, 'ansible-playbook rc %d:\n%s' % (self.proc.returncode, self.output[-4000:])
        return out


def container(name, rootfs, state='running'):
    return {'name': name, 'sandbox': '{{ sid }}', 'rootfs': rootfs, 'command': ['sleep', '1000'], 'state': state}


def storm_tasks(rootfs):
    """Every invocation gets the same list; its ``variant`` picks the middle, its sandbox's
    ``intent`` the end (the same for every invocation on that sandbox). A sandbox stopped by
    variant 3 is started again by the end of a running intent."""
    sandbox = 'kata.runtime.kata_sandbox'
    ctr = 'kata.runtime.kata_container'
    mine = '{{ sid }}-v2'
    return [
        {'name': 'v0 sandbox', sandbox: {'name': '{{ sid }}'}, 'when': 'variant == 0'},
        {'name': 'v0 container', ctr: container('c-{{ sid }}', rootfs), 'when': 'variant == 0'},
        {'name': 'v1 forced delete', sandbox: {'name': '{{ sid }}', 'state': 'absent', 'force': True},
         'when': 'variant == 1'},
        {'name': 'v2 sandbox', sandbox: {'name': '{{ sid }}'}, 'when': 'variant == 2'},
        {'name': 'v2 created', ctr: container(mine, rootfs, 'created'), 'when': 'variant == 2'},
        {'name': 'v2 started', ctr: container(mine, rootfs), 'when': 'variant == 2'},
        {'name': 'v2 forced delete', ctr: {'name': mine, 'state': 'absent', 'force': True}, 'when': 'variant == 2'},
        {'name': 'v3 stopped', sandbox: {'name': '{{ sid }}', 'state': 'stopped', 'force': True},
         'when': 'variant == 3'},
        {'name': 'final sandbox', sandbox: {'name': '{{ sid }}', 'state': '{{ intent }}', 'force': True},
         'retry_when_locked': True},
        {'name': 'final container', ctr: container('c-{{ sid }}', rootfs), 'when': "intent == 'running'",
         'retry_when_locked': True},
    ]


def _records(env):
    """({sid: record}, {cid: container record}) read straight from the state root."""
    sandboxes, containers = {}, {}
    top = os.path.join(env.state_root, 'sandboxes')
    for sid in sorted(os.listdir(top)) if os.path.isdir(top) else []:
        path = os.path.join(top, sid, 'sandbox.json')
        with open(path) as f:
            sandboxes[sid] = json.load(f)
        cdir = os.path.join(top, sid, 'containers')
        for name in sorted(os.listdir(cdir)) if os.path.isdir(cdir) else []:
            with open(os.path.join(cdir, name)) as f:
                containers[name[:-len('.json')]] = json.load(f)
    return sandboxes, containers


def leaks(env):
    """What exists on the host that no record accounts for (a record without its mapping too)."""
    sandboxes, containers = _records(env)
    found = {}
    expected_domains = {env.domain_prefix + sid for sid in sandboxes}
    extra = sorted(set(env.domains()) - expected_domains)
    if extra:
        found['domains without a record'] = extra
    mappings = {}
    mdir = os.path.join(env.state_root, 'mappings')
    for cid in os.listdir(mdir) if os.path.isdir(mdir) else []:
        mappings[cid] = env.mapping(cid)
    wanted = dict({sid: sid for sid in sandboxes}, **{cid: c['sandbox'] for cid, c in containers.items()})
    if mappings != wanted:
        found['mappings'] = {'on disk': mappings, 'from the records': wanted}
    used = set()
    for rec in list(sandboxes.values()) + list(containers.values()):
        used.update(rec.get('cgroups_paths') or [])
    parents = {d for d in env.cgroup_dirs() if os.path.basename(d) == env.cgroup_parent}
    stray = sorted(d for d in env.cgroup_dirs() if d not in used and d not in parents)
    if stray:
        found['cgroup dirs no record lists'] = stray
    locks = os.path.join(env.state_root, 'locks')
    extra_locks = sorted(n for n in (os.listdir(locks) if os.path.isdir(locks) else [])
                         if n[:-len('.lock')] not in sandboxes)
    if extra_locks:
        found['locks of no sandbox'] = extra_locks
    socks = os.path.join(env.state_root, 'sock')
    if os.path.isdir(socks) and len(os.listdir(socks)) > len(sandboxes):
        found['sockets'] = sorted(os.listdir(socks))
    mounts = [m for m in env.mounts()
              if not any(m.startswith(env.sandbox_dir(sid) + '/') for sid in sandboxes)]
    if mounts:
        found['mounts of no sandbox'] = mounts
    vmms = vmm_processes(env.domain_prefix)
    running = [d for d in env.domains() if env.domain_state(d) in ('running', 'paused')]
    if len(vmms) != len(running):
        found['vmm processes'] = {'processes': vmms, 'running domains': running}
    # inside the guests: a container the agent keeps that the host has no record of
    rt = Runtime(load_config(env.config_path))
    for sid in sandboxes:
        if env.domain_state(env.domain_prefix + sid) != 'running':
            continue
        with rt.agent(sid, timeout=30) as client:
            in_guest = {c['id']: c.get('status') for c in client.call('list_containers')}
        unknown = {cid: st for cid, st in in_guest.items() if containers.get(cid, {}).get('sandbox') != sid}
        if unknown:
            found['containers in the guest of %s without a host record' % sid] = unknown
    return found


def test_sixteen_invocations_on_four_sandboxes(env, busybox_rootfs):
    tasks = storm_tasks(busybox_rootfs)
    started = time.monotonic()
    runs = [HostsRun(env, {'p%dh%d' % (p, h): {'sid': sid, 'variant': p, 'intent': INTENT[sid]}
                           for h, sid in enumerate(SIDS)}, tasks, forks=len(SIDS), tag='storm%d' % p)
            for p in range(PROCESSES)]
    results = {}
    for run in runs:
        results.update(run.results(STORM_TIMEOUT - (time.monotonic() - started)))
    took = time.monotonic() - started

    # every task: a result, or an error of its own naming what it is about
    sid_of = {host: SIDS[int(host.split('h')[1])] for host in results}
    problems, errors = [], []
    for host, by_task in sorted(results.items()):
        for name, r in by_task.items():
            if r.get('skipped') or r.get('skipped_by_playbook'):
                continue
            crash = crash_of(r)
            if crash:
                problems.append('%s %s crashed: %s' % (host, name, crash))
            elif r.get('failed'):
                try:
                    msg = assert_clear_error(r, sid_of[host])
                except AssertionError as err:
                    problems.append('%s %s: %s' % (host, name, err))
                    continue
                errors.append('%s %s: %s' % (host, name, msg))
                if 'paused' in msg:  # nothing pauses a sandbox here: a booting one is not paused
                    problems.append('%s %s: an error that is not true: %s' % (host, name, msg))

    # each sandbox ends as its intent wherever every invocation's end on it succeeded
    look = env.playbook([
        {'name': 'sandboxes', 'kata.runtime.kata_sandbox_info': {}},
        {'name': 'containers', 'kata.runtime.kata_container_info': {}},
    ])
    sandboxes = {s['id']: s for s in look.ok('sandboxes')['sandboxes']}
    containers = {c['id']: c for c in look.ok('containers')['containers']}
    if look.ok('sandboxes')['corrupt'] or look.ok('containers')['corrupt']:
        problems.append('corrupt records: %s %s' % (look.ok('sandboxes')['corrupt'], look.ok('containers')['corrupt']))
    for sid in SIDS:
        mine = [by_task for host, by_task in results.items() if sid_of[host] == sid]
        ends = [t[name] for t in mine for name in ('final sandbox', 'final container') if not t[name].get('skipped')]
        if any(r.get('failed') for r in ends):
            continue  # an end was an error (listed): no intent to hold the sandbox to
        if INTENT[sid] == 'running':
            got = (sandboxes.get(sid, {}).get('state'), containers.get('c-' + sid, {}).get('status'))
            if got != ('running', 'running'):
                problems.append('%s should be running with c-%s running, is %s' % (sid, sid, got))
        elif sid in sandboxes or any(c['sandbox'] == sid for c in containers.values()):
            problems.append('%s should be absent: %s' % (sid, sandboxes.get(sid)))
        v2 = [t['v2 forced delete'] for t in mine if not t['v2 forced delete'].get('skipped')]
        if v2 and not any(r.get('failed') for r in v2) and sid + '-v2' in containers:
            problems.append('%s-v2 was force-deleted last but exists: %s' % (sid, containers[sid + '-v2']))
    left = leaks(env)
    if left:
        problems.append('leaks: %s' % json.dumps(left, indent=1))
    print('storm of %d invocations: %.0fs, %d clear errors' % (len(results), took, len(errors)))
    print('\n'.join(errors))
    assert not problems, '\n'.join(problems + ['', 'errors (%d):' % len(errors)] + errors)
    assert took < STORM_TIMEOUT, took


def _created(env, sids):
    """The sandboxes of ``sids`` whose record says 'creating' right now."""
    out = []
    for sid in sids:
        try:
            with open(os.path.join(env.sandbox_dir(sid), 'sandbox.json')) as f:
                if json.load(f).get('state') == 'creating':
                    out.append(sid)
        except (OSError, ValueError):
            continue
    return out


def _touches(result, env, sids):
    """What of ``sids`` (sandboxes of ``env``) a prune result deleted or collected."""
    hit = [s for s in result.get('deleted') or [] if s in sids]
    for orphan in result.get('orphans_removed') or []:
        oid = orphan['id']
        if oid in sids or oid in {env.domain_prefix + s for s in sids} or \
                any('/%s/%s' % (env.cgroup_parent, s) in oid for s in sids):
            hit.append('%s %s' % (orphan['kind'], oid))
    return hit


def test_prunes_during_creates_and_two_prunes_at_once(env, busybox_rootfs, tmp_path):
    sids = ('p0', 'p1', 'p2', 'p3')
    labels = {'p0': {'tenant': 't1'}, 'p1': {'tenant': 't1', 'grp': 'yz'}, 'p2': {'tenant': 't1', 'grp': 'yz'},
              'p3': {'tenant': 't1', 'grp': 'yz'}}
    # another state root with the same domain prefix and cgroup parent (as `runtime_root` makes)
    other_root = env.state_root + '-b'
    other_config = str(tmp_path / 'other.yaml')
    with open(other_config, 'w') as f:
        yaml.safe_dump(dict(env.config, state_root=other_root), f, default_flow_style=False)
    creates = HostsRun(env, {'h%s' % sid: {'sid': sid, 'labels': labels[sid]} for sid in sids},
                       [{'name': 'create', 'kata.runtime.kata_sandbox': {'name': '{{ sid }}', 'labels': '{{ labels }}'}}],
                       forks=len(sids), tag='creates')
    prunes = []
    try:
        deadline = time.monotonic() + 240
        while creates.proc.poll() is None and time.monotonic() < deadline:
            if not _created(env, sids):
                time.sleep(0.1)
                continue
            run = side(env).playbook([
                {'name': 'unrelated', 'kata.runtime.kata_prune': {'labels': {'tenant': 'nobody'}, 'force': True}},
                {'name': 'other root', 'kata.runtime.kata_prune': {'all': True, 'force': True,
                                                                   'config': other_config}},
            ])
            prunes.append(run)
        created = creates.results(60)
        assert prunes, 'no prune ran while the sandboxes were being created'
        for run in prunes:
            for name in ('unrelated', 'other root'):
                r = run.ok(name)
                assert r['deleted'] == [], r
                assert _touches(r, env, sids) == [], (name, r)
        for host, by_task in sorted(created.items()):
            r = by_task['create']
            assert not r.get('failed') and r['sandbox']['state'] == 'running', (host, r)
    finally:
        if os.path.isdir(other_root) and not [m for m in env.mounts() if m.startswith(other_root + '/')]:
            subprocess.run(['rm', '-rf', '--one-file-system', other_root], check=False)
    look = env.playbook([{'name': 'sandboxes', 'kata.runtime.kata_sandbox_info': {}}])
    assert {s['id']: s['state'] for s in look.ok('sandboxes')['sandboxes']} == dict.fromkeys(sids, 'running')
    assert len(vmm_processes(env.domain_prefix)) == len(sids)

    # two prunes at once: p0-p2 by name, p1-p3 by label; each sandbox deleted exactly once
    run = env.playbook([{'name': 'c-' + sid, 'kata.runtime.kata_container': {
        'name': 'c-' + sid, 'sandbox': sid, 'rootfs': busybox_rootfs, 'command': ['sleep', '1000']}}
        for sid in ('p1', 'p2')])
    run.ok('c-p1')
    run.ok('c-p2')
    by_name = Background(side(env).playbook, [{'name': 'prune', 'kata.runtime.kata_prune': {
        'names': ['p0', 'p1', 'p2'], 'force': True}}])
    by_label = Background(side(env).playbook, [{'name': 'prune', 'kata.runtime.kata_prune': {
        'labels': {'grp': 'yz'}, 'force': True}}])
    first, second = by_name.get()['prune'], by_label.get()['prune']
    for r in (first, second):
        assert crash_of(r) is None and not r.get('failed') and r['failures'] == [], r
    assert not set(first['deleted']) & set(second['deleted']), (first['deleted'], second['deleted'])
    assert sorted(first['deleted'] + second['deleted']) == list(sids), (first['deleted'], second['deleted'])
    assert set(first['deleted']) <= {'p0', 'p1', 'p2'} and set(second['deleted']) <= {'p1', 'p2', 'p3'}
    left = residue(env)
    assert left == {}, json.dumps(left, indent=1)
