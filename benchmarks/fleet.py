# Copyright: kata.runtime contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Fleet operations through Ansible, each next to its baseline measured in the same run.

- prune:     N sandboxes (default 20) on one host force-deleted by ONE kata_prune task, vs the
             same N deleted by a loop of N ``kata_sandbox state=absent force=true`` items.
             Target: prune at least 5x faster.
- provision: an idempotent rerun of playbooks/provision.yml with S sandboxes x C containers
             (default 10 x 2; changed must be 0), vs the same number of ``ansible.builtin.stat``
             calls (one per sandbox and one per container, in the same two looped tasks).
             Target: at most 1.5x the stat floor.
- ssh:       the ad hoc forced deletion ``ansible all -m kata.runtime.kata_prune -a
             'labels=... force=true config={{ kata_config }}'`` over a 4-host inventory that
             reaches this machine through a private sshd on 127.0.0.1 (every host its own
             state root, domain prefix and cgroup parent), wall time without and with SSH
             pipelining, and with the Mitogen strategy when a Mitogen that supports this
             ansible-core is installed.

Every playbook runs with the venv's ansible-playbook against this checkout's collection.
Setup (booting the sandboxes) is not measured; only the Ansible runs are.

    PYTHONPATH=.collections .venv/bin/python benchmarks/fleet.py [--runs N] [--sandboxes N]
        [--only prune,provision,ssh] [--json]
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor

import _bench as b
import yaml
from ansible_collections.kata.runtime.plugins.module_utils.kata import sandbox as sbx
from ansible_collections.kata.runtime.plugins.module_utils.kata.config import load_config
from ansible_collections.kata.runtime.plugins.module_utils.kata.runtime import Runtime

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.dirname(sys.executable)
PRUNE_TARGET = 5.0       # prune at least this many times faster than the loop
PROVISION_TARGET = 1.5   # idempotent provision at most this many times the stat floor
MEMORY_MB = 128          # the guests only have to answer; small ones boot as fast and fit more


def ansible_env(extra=None):
    env = dict(os.environ)
    collections = os.path.join(REPO, '.collections')
    env.update({
        'ANSIBLE_COLLECTIONS_PATH': collections,
        'PYTHONPATH': collections,
        'ANSIBLE_NOCOLOR': '1',
        'ANSIBLE_RETRY_FILES_ENABLED': '0',
        'ANSIBLE_LOCALHOST_WARNING': '0',
        'ANSIBLE_INVENTORY_UNPARSED_WARNING': '0',
        'ANSIBLE_DEPRECATION_WARNINGS': '0',
        # every result and the recap as JSON (ansible-core has no JSON callback of its own)
        'ANSIBLE_CALLBACK_PLUGINS': os.path.join(REPO, 'tests', 'integration', 'callback_plugins'),
        'ANSIBLE_CALLBACKS_ENABLED': 'kata_results',
        'ANSIBLE_LOAD_CALLBACK_PLUGINS': '1',
        'ANSIBLE_GATHERING': 'explicit',
        'ANSIBLE_HOST_KEY_CHECKING': 'False',
        'PATH': BIN + os.pathsep + env.get('PATH', ''),
    })
    env.update(extra or {})
    return env


def run_ansible(argv, cwd, env=None, expect=(0,)):
    """Run an ansible command; (wall seconds, {'tasks', 'stats'} from the results callback)."""
    results = os.path.join(cwd, 'results.json')
    env = dict(env or ansible_env(), KATA_RESULTS_FILE=results)
    if os.path.exists(results):
        os.unlink(results)
    start = time.perf_counter()
    proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          cwd=cwd, env=env, timeout=3600, check=False)
    wall = time.perf_counter() - start
    if proc.returncode not in expect:
        raise RuntimeError('%s failed (rc %d):\n%s\n%s'
                           % (' '.join(argv[:3]), proc.returncode, proc.stdout[-3000:], proc.stderr[-2000:]))
    try:
        with open(results) as f:
            data = json.load(f)
    except (OSError, ValueError):
        data = None
    return wall, data


def playbook(bench, name, plays, extra_args=()):
    """Write ``plays`` as a playbook next to the bench's files and run it on localhost."""
    path = os.path.join(bench.tmp, name + '.yml')
    with open(path, 'w') as f:
        yaml.safe_dump(plays, f, default_flow_style=False, sort_keys=False)
    argv = [os.path.join(BIN, 'ansible-playbook'), '-i', 'localhost,', '-c', 'local',
            '-e', 'ansible_python_interpreter=%s' % sys.executable, path] + list(extra_args)
    return run_ansible(argv, bench.tmp)


def changed_count(data):
    stats = (data or {}).get('stats') or {}
    return sum(h.get('changed', 0) for h in stats.values())


def write_config(bench):
    path = os.path.join(bench.tmp, 'config.yaml')
    with open(path, 'w') as f:
        yaml.safe_dump(bench.config.as_dict(), f, default_flow_style=False)
    return path


# ---------------------------------------------------------------------------------------------
# booting many sandboxes (setup, not measured)

def _create_one(config_path, sid, labels):
    rt = Runtime(load_config(config_path))
    sbx.create(rt, sid, sbx.settings_from(rt.config, {'labels': labels, 'memory_mb': MEMORY_MB}))
    rt.hv.close()
    return sid


def boot_many(config_path, ids, labels, workers=4):
    """Create sandboxes in parallel processes (a few at once: the host has 2 cores)."""
    start = time.perf_counter()
    with ProcessPoolExecutor(max_workers=workers) as pool:
        done = list(pool.map(_create_one, [config_path] * len(ids), ids, [labels] * len(ids)))
    b.log('booted %d sandbox(es) in %.1fs' % (len(done), time.perf_counter() - start))
    return done


def boot_across(config_paths, sid, labels):
    """One sandbox ``sid`` in each of several worlds (one per config file), in parallel."""
    start = time.perf_counter()
    with ProcessPoolExecutor(max_workers=len(config_paths)) as pool:
        list(pool.map(_create_one, config_paths, [sid] * len(config_paths), [labels] * len(config_paths)))
    b.log('booted %d sandbox(es) in %.1fs' % (len(config_paths), time.perf_counter() - start))


# ---------------------------------------------------------------------------------------------
# prune vs a loop of kata_sandbox state=absent

def bench_prune(args, res):
    bench = b.Bench('fleet-prune', args)
    config_path = write_config(bench)
    n = args.sandboxes
    ids = ['p%02d' % i for i in range(n)]
    out = {'sandboxes': n, 'prune_s': [], 'loop_s': []}
    try:
        for run in range(args.runs):
            variants = ('prune', 'loop') if run % 2 == 0 else ('loop', 'prune')
            for variant in variants:
                boot_many(config_path, ids, {'bench': 'fleet'})
                if variant == 'prune':
                    plays = [{'name': 'one kata_prune task', 'hosts': 'all', 'gather_facts': False, 'tasks': [
                        {'name': 'Force-delete by label', 'kata.runtime.kata_prune': {
                            'labels': {'bench': 'fleet'}, 'force': True, 'config': config_path}}]}]
                else:
                    plays = [{'name': 'a loop of kata_sandbox', 'hosts': 'all', 'gather_facts': False, 'tasks': [
                        {'name': 'Force-delete one by one', 'kata.runtime.kata_sandbox': {
                            'name': '{{ item }}', 'state': 'absent', 'force': True, 'config': config_path},
                         'loop': ids}]}]
                b.log('run %d: %s deleting %d sandboxes' % (run + 1, variant, n))
                wall, data = playbook(bench, variant, plays)
                left = sorted(r.id for r in bench.rt.store.list_sandboxes()[0])
                if left or bench.ours():
                    raise RuntimeError('%s left sandboxes behind: %s %s' % (variant, left, bench.ours()))
                out[variant + '_s'].append(round(wall, 3))
                b.log('  %s: %.2fs' % (variant, wall))
    finally:
        b.cleaned(bench, out)
    out['prune_median_s'] = b.median(out['prune_s'])
    out['loop_median_s'] = b.median(out['loop_s'])
    out['speedup'] = b.ratio(out['loop_median_s'], out['prune_median_s'])
    out['target_speedup'] = PRUNE_TARGET
    out['met'] = out['speedup'] is not None and out['speedup'] >= PRUNE_TARGET
    res['prune'] = out


# ---------------------------------------------------------------------------------------------
# idempotent provision vs stat

def bench_provision(args, res):
    bench = b.Bench('fleet-prov', args)
    config_path = write_config(bench)
    rootfs = b.busybox_rootfs(bench.tmp)
    sandboxes = [{'name': 'v%02d' % i, 'memory_mb': MEMORY_MB, 'labels': {'bench': 'fleet'},
                  'containers': [{'name': 'v%02d-c%d' % (i, j), 'rootfs': rootfs,
                                  'command': ['/bin/sh', '-c', 'sleep 100000']}
                                 for j in range(args.containers)]}
                 for i in range(args.provision_sandboxes)]
    inv_vars = {'kata_sandboxes': sandboxes}
    vars_file = os.path.join(bench.tmp, 'provision-vars.yml')
    with open(vars_file, 'w') as f:
        yaml.safe_dump(inv_vars, f)
    provision = os.path.join(REPO, 'playbooks', 'provision.yml')
    calls = len(sandboxes) + sum(len(s['containers']) for s in sandboxes)
    stat_plays = [{'name': 'the stat floor', 'hosts': 'all', 'gather_facts': False, 'tasks': [
        {'name': 'One stat per sandbox', 'ansible.builtin.stat': {'path': '/'}, 'loop': [s['name'] for s in sandboxes]},
        {'name': 'One stat per container', 'ansible.builtin.stat': {'path': '/'},
         'loop': [c['name'] for s in sandboxes for c in s['containers']]}]}]
    out = {'sandboxes': len(sandboxes), 'containers': calls - len(sandboxes), 'module_calls': calls,
           'provision_s': [], 'stat_s': [], 'changed': []}
    # provision.yml takes the host's config file from the variable kata_config
    # (already root here: no become, which would need sudo)
    base = [os.path.join(BIN, 'ansible-playbook'), '-i', 'localhost,', '-c', 'local',
            '-e', 'ansible_python_interpreter=%s' % sys.executable, '-e', 'ansible_become=false',
            '-e', '@' + vars_file,
            '-e', json.dumps({'kata_config': config_path})]
    env = ansible_env()
    try:
        b.log('provision: first run creates %d sandboxes and %d containers (not measured)'
              % (len(sandboxes), calls - len(sandboxes)))
        run_ansible(base + [provision], bench.tmp, env)
        for run in range(args.runs):
            order = ('provision', 'stat') if run % 2 == 0 else ('stat', 'provision')
            for variant in order:
                if variant == 'provision':
                    wall, data = run_ansible(base + [provision], bench.tmp, env)
                    out['changed'].append(changed_count(data))
                else:
                    wall, data = playbook(bench, 'stat', stat_plays)
                out[variant + '_s'].append(round(wall, 3))
                b.log('run %d: %s %.2fs' % (run + 1, variant, wall))
    finally:
        b.cleaned(bench, out)
    out['provision_median_s'] = b.median(out['provision_s'])
    out['stat_median_s'] = b.median(out['stat_s'])
    out['ratio'] = b.ratio(out['provision_median_s'], out['stat_median_s'])
    out['target_ratio'] = PROVISION_TARGET
    out['met'] = (out['ratio'] is not None and out['ratio'] <= PROVISION_TARGET
                  and not any(out['changed']))
    res['provision'] = out


# ---------------------------------------------------------------------------------------------

def print_report(res):
    m = res['machine']
    print('fleet benchmark: %s, %s CPUs, %s MiB, %s' % (m.get('date'), m.get('cpus'), m.get('mem_mib'),
                                                        m.get('kernel')))
    rows = []
    p = res.get('prune')
    if p:
        rows.append(('%d sandboxes: one kata_prune task' % p['sandboxes'], b.fmt_s(p['prune_median_s']), '', ''))
        rows.append(('%d sandboxes: loop of kata_sandbox absent' % p['sandboxes'], b.fmt_s(p['loop_median_s']),
                     b.fmt_x(p['speedup']) + ' faster', '>= %.0fx: %s' % (PRUNE_TARGET, 'met' if p['met'] else 'NOT met')))
    v = res.get('provision')
    if v:
        rows.append(('provision.yml rerun (%d sandboxes, %d containers)' % (v['sandboxes'], v['containers']),
                     b.fmt_s(v['provision_median_s']), 'changed=%s' % v['changed'], ''))
        rows.append(('%d ansible.builtin.stat calls' % v['module_calls'], b.fmt_s(v['stat_median_s']),
                     b.fmt_x(v['ratio']) + ' the floor',
                     '<= %.1fx: %s' % (PROVISION_TARGET, 'met' if v['met'] else 'NOT met')))
    s = res.get('ssh')
    if s:
        for key, label in (('plain', 'ad hoc prune over SSH, %d hosts'), ('pipelining', '  with pipelining'),
                           ('mitogen', '  with the Mitogen strategy')):
            if key in s.get('variants', {}):
                rows.append((label % s['hosts'] if '%d' in label else label,
                             b.fmt_s(b.median(s['variants'][key])), '', ''))
        if s.get('mitogen_note'):
            rows.append(('  Mitogen', s['mitogen_note'], '', ''))
    print(b.table(('what (median of runs, wall seconds)', 'seconds', 'ratio', 'target'), rows))


def main(argv=None):
    p = b.parser(__doc__.splitlines()[0], runs=3)
    p.add_argument('--sandboxes', type=int, default=20, help='sandboxes for the prune comparison')
    p.add_argument('--provision-sandboxes', type=int, default=10)
    p.add_argument('--containers', type=int, default=2, help='containers per provisioned sandbox')
    p.add_argument('--hosts', type=int, default=4, help='SSH inventory hosts')
    p.add_argument('--only', default='prune,provision,ssh')
    args = p.parse_args(argv)
    b.die_on_signals()
    res = {'machine': b.machine()}
    parts = [x.strip() for x in args.only.split(',') if x.strip()]
    if 'prune' in parts:
        bench_prune(args, res)
    if 'provision' in parts:
        bench_provision(args, res)
    if 'ssh' in parts:
        import fleet_ssh  # the SSH part lives beside this file
        fleet_ssh.bench_ssh(args, res)
    ok = all(res[k].get('met', True) for k in ('prune', 'provision') if k in res)
    return b.report(res, args, print_report, 0 if ok else 1)


if __name__ == '__main__':
    sys.exit(main())
