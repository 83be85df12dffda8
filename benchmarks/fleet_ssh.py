# Copyright: kata.runtime contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The SSH part of benchmarks/fleet.py: the ad hoc forced deletion over a multi-host inventory.

Every inventory host is this machine, reached through a private sshd on 127.0.0.1
(scripts/loopback_sshd.py), each with its own runtime world (state root, domain prefix,
cgroup parent) and its own config file passed as ``config={{ kata_config }}``, exactly as an
operator passes per-host settings. Before each measured run every host gets one sandbox
labelled ``bench=ssh`` (not measured); the run is the wall time of

    ansible all -i <inventory> -m kata.runtime.kata_prune -a 'labels=bench=ssh force=true config={{ kata_config }}'

without SSH pipelining, with it, and with the Mitogen strategy when a Mitogen is installed in
this venv (``pip install mitogen``) and accepts this ansible-core.
"""

from __future__ import annotations

import os
import sys

import _bench as b
import yaml
from ansible_collections.kata.runtime.plugins.module_utils.kata import sandbox as sbx
from fleet import BIN, ansible_env, boot_across, run_ansible, write_config

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'scripts'))
from loopback_sshd import LoopbackSshd  # noqa: E402 - scripts/ is not a package

LABEL = {'bench': 'ssh'}


def mitogen_strategy():
    """(strategy plugin dir, version) of an installed Mitogen, or (None, why not)."""
    try:
        import ansible_mitogen
        import mitogen
    except ImportError:
        return None, 'not installed in this venv (pip install mitogen)'
    path = os.path.join(os.path.dirname(ansible_mitogen.__file__), 'plugins', 'strategy')
    version = '.'.join(str(x) for x in getattr(mitogen, '__version__', ()))
    return path, version


def bench_ssh(args, res):
    worlds = [b.Bench('fleet-ssh%d' % i, args) for i in range(args.hosts)]
    out = {'hosts': args.hosts, 'variants': {}}
    variants = {
        'plain': {'ANSIBLE_PIPELINING': 'False'},
        'pipelining': {'ANSIBLE_PIPELINING': 'True'},
    }
    strategy, version = mitogen_strategy()
    if strategy:
        variants['mitogen'] = {'ANSIBLE_PIPELINING': 'True', 'ANSIBLE_STRATEGY_PLUGINS': strategy,
                               'ANSIBLE_STRATEGY': 'mitogen_linear'}
        out['mitogen_version'] = version
    else:
        out['mitogen_note'] = version
    try:
        with LoopbackSshd() as sshd:
            hosts = {}
            configs = []
            for i, world in enumerate(worlds):
                config_path = write_config(world)
                configs.append(config_path)
                host = dict(sshd.ansible_vars(), kata_config=config_path,
                            ansible_python_interpreter=sys.executable)
                hosts['h%d' % i] = host
            inventory = os.path.join(worlds[0].tmp, 'inventory.yml')
            with open(inventory, 'w') as f:
                yaml.safe_dump({'all': {'hosts': hosts}}, f, default_flow_style=False)
            adhoc = [os.path.join(BIN, 'ansible'), 'all', '-i', inventory, '-m', 'kata.runtime.kata_prune',
                     '-a', 'labels=bench=ssh force=true config={{ kata_config }}', '-f', str(args.hosts)]
            names = list(variants)
            for run in range(args.runs):
                for variant in names[run % len(names):] + names[:run % len(names)]:
                    boot_across(configs, 's%d' % run, LABEL)  # one sandbox per host
                    env = ansible_env(variants[variant])
                    try:
                        wall, dummy = run_ansible(adhoc, worlds[0].tmp, env)
                    except RuntimeError as err:
                        if variant == 'mitogen':
                            out['mitogen_note'] = 'Mitogen %s failed: %s' % (version, str(err).splitlines()[0][:300])
                            names.remove('mitogen')
                            variants.pop('mitogen')
                            for world in worlds:  # what the failed run did not delete
                                for rec in world.rt.store.list_sandboxes()[0]:
                                    sbx.delete(world.rt, rec.id, force=True)
                            continue
                        raise
                    left = [r.id for w in worlds for r in w.rt.store.list_sandboxes()[0]]
                    if left:
                        raise RuntimeError('%s: sandboxes left after the ad hoc prune: %s' % (variant, left))
                    out['variants'].setdefault(variant, []).append(round(wall, 3))
                    b.log('run %d: %s %.2fs' % (run + 1, variant, wall))
    finally:
        problems = []
        for world in worlds:
            problems.extend(world.cleanup())
        out['cleanup_problems'] = problems
    out['medians_s'] = {k: b.median(v) for k, v in out['variants'].items()}
    res['ssh'] = out
