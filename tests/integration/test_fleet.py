# Copyright: kata.runtime contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The fleet path operators use: provisioning with ansible-playbook, then a forced deletion by
label, ad hoc and with playbooks/fleet_force_delete.yml, over real SSH to several hosts.

The hosts are this machine, reached through a private sshd on 127.0.0.1
(scripts/loopback_sshd.py: own config, host key and throwaway client key in a temp directory;
nothing of the host's SSH setup is used or changed). Each inventory host is its own world: a
``KataEnv`` (conftest.py) with its own config file, state root, domain prefix and cgroup
parent, passed to the modules as the host variable ``kata_config``. One more host points at a
loopback port nobody listens on: it must be reported UNREACHABLE while the others complete.

Every reachable host gets a tenant=acme and a tenant=other sandbox, each with a container; the
ad hoc ``kata_prune labels=tenant=acme force=true`` must remove exactly the acme ones, and
fleet_force_delete.yml, selecting pool=spot (the other tenant's sandbox on half of the hosts),
exactly those, with a per-host summary; its rerun changes nothing. At the end every world is
pruned and checked empty, and the sshd is stopped and its directory removed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
import yaml
from ansible_collections.kata.runtime.scripts.loopback_sshd import LoopbackSshd, SshdError, closed_port, find_sshd
from conftest import BIN_DIR, PLAYBOOK_TIMEOUT, REPO, ansible_env, assert_clean_teardown

HOSTS = ['kata-fleet-%d' % i for i in range(1, 5)]
SPOT = HOSTS[2:]  # their tenant=other sandbox also carries pool=spot (the others: pool=reserved)
GONE = 'kata-fleet-gone'
REACHABLE = 'kata_fleet'  # the inventory group of the reachable hosts
RC_UNREACHABLE = 4  # ansible's exit code when some host was unreachable (and none failed)
PROVISION = os.path.join(REPO, 'playbooks', 'provision.yml')
FORCE_DELETE = os.path.join(REPO, 'playbooks', 'fleet_force_delete.yml')
ADHOC_ARGS = 'labels=tenant=acme force=true config={{ kata_config }}'
REPORT_TASK = 'Report per host (deleted, orphans removed, failed)'
PRUNE_TASK = 'Force-delete the selection and collect orphans'
CALLBACKS = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'callback_plugins')  # kata_results

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason='the modules need root on the target')


def sandboxes(rootfs, pool):
    """What provision.yml puts on a host: one sandbox per tenant, one container in each."""
    def sandbox(name, labels):
        return {'name': name, 'labels': labels,
                'containers': [{'name': name + '-app', 'rootfs': rootfs,
                                'command': ['/bin/sh', '-c', 'while true; do sleep 5; done']}]}
    return [sandbox('acme-1', {'tenant': 'acme'}), sandbox('other-1', {'tenant': 'other', 'pool': pool})]


class Fleet:
    """The inventory, its worlds (host -> KataEnv) and the sshd they are reached through."""

    def __init__(self, workdir, sshd, worlds, gone_port, rootfs):
        self.workdir = workdir
        self.sshd = sshd
        self.worlds = worlds
        self.runs = 0
        self.inventory = os.path.join(workdir, 'inventory.yml')
        common = dict(sshd.ansible_vars(), ansible_python_interpreter=sys.executable)
        inventory = {'all': {'vars': common, 'children': {
            REACHABLE: {'hosts': {host: {'kata_config': env.config_path,
                                         'kata_sandboxes': sandboxes(rootfs, 'spot' if host in SPOT else 'reserved')}
                                  for host, env in worlds.items()}},
            'kata_gone': {'hosts': {GONE: {'ansible_port': gone_port,
                                           'kata_config': os.path.join(workdir, 'gone.yaml')}}},
        }}}
        with open(self.inventory, 'w') as f:
            yaml.safe_dump(inventory, f, default_flow_style=False)

    def ansible(self, tool, *args, expect_rc=0):
        """Run ``ansible``/``ansible-playbook`` over SSH: (results {task name: {host: result}},
        recap {host: counts}, seconds). The default output is kept next to the inventory."""
        self.runs += 1
        run = os.path.join(self.workdir, 'run%02d-%s' % (self.runs, tool))
        cmd = [os.path.join(BIN_DIR, tool), '-i', self.inventory] + list(args)
        env = ansible_env({
            'ANSIBLE_CALLBACK_PLUGINS': CALLBACKS,
            'ANSIBLE_CALLBACKS_ENABLED': 'kata_results',
            'ANSIBLE_LOAD_CALLBACK_PLUGINS': '1',  # ad hoc runs too
            'KATA_RESULTS_FILE': run + '.json',
            'ANSIBLE_FORKS': '10',
        })
        started = time.monotonic()
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                              cwd=self.workdir, timeout=PLAYBOOK_TIMEOUT, check=False)
        seconds = time.monotonic() - started
        with open(run + '.txt', 'w') as f:
            f.write(' '.join(cmd) + '\n' + proc.stdout + '\n--- stderr ---\n' + proc.stderr)
        assert proc.returncode == expect_rc and os.path.exists(run + '.json'), '%s exited %d (expected %d):\n%s\n%s' % (
            ' '.join(cmd), proc.returncode, expect_rc, proc.stdout[-6000:], proc.stderr[-3000:])
        with open(run + '.json') as f:
            data = json.load(f)
        return data['tasks'], data['stats'], seconds

    def inspect(self):
        """Over SSH, per reachable host: {sandbox: (state, labels, pid)}, {container: (sandbox, status)}."""
        path = os.path.join(self.workdir, 'inspect.yml')
        with open(path, 'w') as f:
            yaml.safe_dump([{
                'name': 'What runs on each host',
                'hosts': REACHABLE,
                'gather_facts': False,
                'module_defaults': {'group/kata.runtime.kata': {'config': '{{ kata_config }}'}},
                'tasks': [{'name': 'sandboxes', 'kata.runtime.kata_sandbox_info': {}},
                          {'name': 'containers', 'kata.runtime.kata_container_info': {'type': 'pod_container'}}],
            }], f, default_flow_style=False, sort_keys=False)
        results, _stats, _seconds = self.ansible('ansible-playbook', path)
        out = {}
        for host in self.worlds:
            sbs = results['sandboxes'][host]['sandboxes']
            cts = results['containers'][host]['containers']
            out[host] = ({s['id']: (s['state'], s['labels'], s['pid']) for s in sbs},
                         {c['id']: (c['sandbox'], c['status']) for c in cts})
        return out


@pytest.fixture(scope='module')
def sshd():
    try:
        find_sshd()
    except SshdError as err:
        pytest.skip(str(err))
    daemon = LoopbackSshd().start()
    workdir = daemon.workdir
    try:
        yield daemon
    finally:
        daemon.stop()
    assert not os.path.exists(workdir), 'the sshd directory %s is still there' % workdir


@pytest.fixture(scope='module')
def fleet(kata_envs, busybox_rootfs, sshd, tmp_path_factory):
    worlds = {host: kata_envs('fl') for host in HOSTS}
    gone_port, gone_socket = closed_port()  # bound, never listening: connections are refused
    try:
        yield Fleet(str(tmp_path_factory.mktemp('fleet')), sshd, worlds, gone_port, busybox_rootfs)
    finally:
        gone_socket.close()
        problems = {}
        for host, env in worlds.items():  # every world, even when one of them fails
            try:
                assert_clean_teardown(env)
            except AssertionError as err:
                problems[host] = str(err)
        assert not problems, 'worlds not left clean: %s' % json.dumps(problems, indent=1)


def assert_worlds(fleet, remaining, before):
    """Over SSH and on the host itself: each world holds exactly ``remaining[host]``, each of
    those sandboxes untouched since ``before`` (same labels, same VMM) with its container
    running, and nothing of the others is left (domain, record, ID mappings)."""
    seen = fleet.inspect()
    for host, env in fleet.worlds.items():
        sbs, cts = seen[host]
        keep = remaining[host]
        assert sorted(sbs) == keep, (host, sbs)
        for sid in keep:
            assert sbs[sid] == ('running',) + before[host][0][sid][1:], (host, sid, sbs[sid], before[host][0][sid])
        assert cts == {sid + '-app': (sid, 'running') for sid in keep}, (host, cts)
        assert env.domains() == [env.domain_prefix + sid for sid in keep], (host, env.domains())
        assert all(env.domain_state(env.domain_prefix + sid) == 'running' for sid in keep), host
        for sid in sorted(set(before[host][0]) - set(keep)):
            assert not os.path.exists(env.sandbox_dir(sid)), (host, sid, env.state_dirs())
            assert env.mapping(sid) is None and env.mapping(sid + '-app') is None, (host, sid, env.state_files())


def test_fleet_over_ssh(fleet):
    timings = {}

    # provision every reachable host over SSH, each into its own world
    _results, stats, timings['provision'] = fleet.ansible('ansible-playbook', PROVISION, '-e', 'target=' + REACHABLE)
    for host in HOSTS:
        assert stats[host]['failures'] == 0 and stats[host]['unreachable'] == 0, (host, stats[host])
        assert stats[host]['changed'] == 2, (host, stats[host])
    assert GONE not in stats, stats
    with open(fleet.sshd.log_path) as f:
        logins = f.read().count('Accepted publickey for %s from 127.0.0.1' % fleet.sshd.user)
    assert logins >= len(HOSTS), 'the hosts were not reached over SSH (%d logins)' % logins
    before = fleet.inspect()
    for host, env in fleet.worlds.items():
        sbs, cts = before[host]
        pool = 'spot' if host in SPOT else 'reserved'
        assert {k: v[:2] for k, v in sbs.items()} == {
            'acme-1': ('running', {'tenant': 'acme'}),
            'other-1': ('running', {'tenant': 'other', 'pool': pool})}, (host, sbs)
        assert cts == {'acme-1-app': ('acme-1', 'running'), 'other-1-app': ('other-1', 'running')}, (host, cts)
        assert env.domains() == sorted(env.domain_prefix + s for s in ('acme-1', 'other-1')), (host, env.domains())

    # the incident command, ad hoc: exactly the acme sandboxes go, on every reachable host
    results, stats, timings['ad hoc prune'] = fleet.ansible('ansible', 'all', '-m', 'kata.runtime.kata_prune',
                                                            '-a', ADHOC_ARGS, expect_rc=RC_UNREACHABLE)
    assert len(results) == 1, sorted(results)
    by_host = next(iter(results.values()))
    for host in HOSTS:
        r = by_host[host]
        assert not r.get('failed') and not r.get('unreachable'), (host, r)
        assert r['changed'] is True and r['deleted'] == ['acme-1'], (host, r)
        assert r['failures'] == [] and r['orphans_removed'] == [], (host, r)
        assert stats[host]['changed'] == 1 and stats[host]['failures'] == 0, (host, stats[host])
    assert by_host[GONE].get('unreachable') is True, by_host[GONE]
    assert stats[GONE]['unreachable'] == 1, stats[GONE]
    assert_worlds(fleet, {host: ['other-1'] for host in HOSTS}, before)

    # the playbook, with another label: pool=spot is on half of the hosts; a rerun changes nothing
    selector = json.dumps({'labels': {'pool': 'spot'}})
    for attempt in ('first', 'rerun'):
        results, stats, timings['fleet_force_delete.yml ' + attempt] = fleet.ansible(
            'ansible-playbook', FORCE_DELETE, '-e', selector, expect_rc=RC_UNREACHABLE)
        for host in HOSTS:
            deleted = ['other-1'] if host in SPOT and attempt == 'first' else []
            r = results[PRUNE_TASK][host]
            assert not r.get('failed') and r['deleted'] == deleted and r['failures'] == [], (attempt, host, r)
            # a world whose last sandbox went: its cgroup parent went with that delete (a delete
            # collects what sandboxes gone before it made), so no orphan is left for prune
            orphans = ['%s %s' % (o['kind'], o['id']) for o in r['orphans_removed']]
            assert orphans == [], (attempt, host, orphans)
            assert results[REPORT_TASK][host]['msg'] == 'deleted %d %s, orphans removed %d %s, failed 0 []' % (
                len(deleted), json.dumps(deleted), len(orphans), json.dumps(orphans)), \
                (attempt, host, results[REPORT_TASK][host])
            assert stats[host]['failures'] == 0 and stats[host]['unreachable'] == 0, (attempt, host, stats[host])
            assert stats[host]['changed'] == (1 if deleted else 0), (attempt, host, stats[host])
        assert results[PRUNE_TASK][GONE].get('unreachable') is True, (attempt, results[PRUNE_TASK][GONE])
        assert stats[GONE]['unreachable'] == 1, (attempt, stats[GONE])
    assert_worlds(fleet, {host: [] if host in SPOT else ['other-1'] for host in HOSTS}, before)

    print('\nfleet over SSH (%d hosts + 1 unreachable): %s' % (
        len(HOSTS), ', '.join('%s %.1fs' % kv for kv in timings.items())))
