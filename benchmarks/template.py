# Copyright: kata.runtime contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""VM templates: build time, clone ready time and idle PSS per clone, next to a cold boot of
the same guest measured in the same run.

Drives template.py and the libvirt backend directly (no sandbox records, no Ansible) with a
state root, templates tmpfs and domain prefix of its own, and removes all of it at the end.

- build: boot to an answering agent, pause, save the device state (template.build)
- clone ready: from the libvirt call to the agent having reseeded the RNG, set the clock and
  mounted both 9p shares (template.clone), split into libvirt's paused start, the state load,
  the resume, the agent's first answer and post_clone
- from a pool: clones started paused with their state loaded beforehand (template.start_paused,
  Kata's VM cache), then made ready (template.activate): resume, answer, post_clone
- cold: LibvirtHypervisor.create to the agent's first answer, shares mounted by /init
- PSS: /proc/<pid>/smaps_rollup of each VMM, all clones alive at once, after a settle

    PYTHONPATH=.collections .venv/bin/python benchmarks/template.py [--runs N] [--memory-mb M] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import statistics
import sys
import time

from ansible_collections.kata.runtime.plugins.module_utils.kata import template
from ansible_collections.kata.runtime.plugins.module_utils.kata.agent import AgentClient
from ansible_collections.kata.runtime.plugins.module_utils.kata.errors import AgentError
from ansible_collections.kata.runtime.plugins.module_utils.kata.guest import contract, image
from ansible_collections.kata.runtime.plugins.module_utils.kata.hypervisor.accel import choose_accel
from ansible_collections.kata.runtime.plugins.module_utils.kata.hypervisor.libvirt import LibvirtHypervisor

SETTLE = 3.0


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def vm_for(hv, spec, root, sid):
    base = os.path.join(root, 'sandboxes', sid)
    for d in ('shared', 'output'):
        os.makedirs(os.path.join(base, d), mode=0o700)
    return dict(spec, name=hv.domain_name(sid), sandbox_id=sid, console_log=os.path.join(base, 'console.log'),
                agent_socket=os.path.join(root, 'sock-%s' % sid), shared_dir=os.path.join(base, 'shared'),
                output_dir=os.path.join(base, 'output'), output_accessmode='squash')


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n', maxsplit=1)[0])
    p.add_argument('--runs', type=int, default=3, help='clones started (all kept alive; default %(default)s)')
    p.add_argument('--memory-mb', type=int, default=128)
    p.add_argument('--tb-cache-mb', type=int, default=0, help='TCG translation cache cap (0: QEMU default)')
    p.add_argument('--image-dir', default='/var/lib/kata-runtime/image-test')
    p.add_argument('--pool', type=int, default=2, help='clones taken from a pool of paused ones (default %(default)s)')
    p.add_argument('--no-cold', action='store_true', help='skip the cold boot baseline')
    p.add_argument('--json', action='store_true')
    args = p.parse_args()

    img = image.build_image(args.image_dir)
    hexid = secrets.token_hex(4)
    root = '/run/kata-bench-tpl-%s' % hexid
    os.makedirs(root, mode=0o700)
    hv = LibvirtHypervisor('qemu:///system', prefix='kata-bench-tpl-%s-' % hexid)
    tdir = os.path.join(root, 'templates')
    spec = {'kernel': img['kernel'], 'initrd': img['initrd'], 'vcpus': 1, 'memory_mb': args.memory_mb,
            'accel': choose_accel('auto')[0], 'cmdline': contract.KERNEL_PARAMS, 'state_root': root,
            'tb_cache_mb': args.tb_cache_mb or None}
    res = {'memory_mb': args.memory_mb, 'accel': spec['accel'], 'tb_cache_mb': args.tb_cache_mb, 'clones': [],
           'pool': []}
    try:
        template.ensure_tmpfs(tdir, args.memory_mb * 2 + 64)
        tpl, dummy, t = template.build(hv, tdir, spec, agent_timeout=300, progress=log)
        res['build'] = {'total_s': t['build_s'], 'boot_to_agent_s': t['boot_to_agent_s'], 'save_s': t['save_s'],
                        'state_bytes': tpl.record['sizes']['state']}
        for n in range(args.runs):
            vm = vm_for(hv, spec, root, 'clone%d' % n)
            timings, dummy = template.clone(hv, tpl, vm)
            res['clones'].append({'name': vm['name'], 'timings': timings})
            log('clone %d ready in %.3fs' % (n, timings['ready']))
        pool = []
        for n in range(args.pool):
            vm = vm_for(hv, spec, root, 'pool%d' % n)
            pool.append((vm, template.start_paused(hv, tpl, vm)))
        if pool:
            time.sleep(SETTLE)
            res['pool_paused_pss_mib'] = [(template.vmm_pss_kib(hv.pid(vm['name'])) or 0) / 1024.0 for vm, t in pool]
        for vm, t in pool:
            timings, dummy = template.activate(hv, tpl, vm)
            res['pool'].append({'name': vm['name'], 'paused': t, 'timings': timings})
            log('pooled clone ready in %.3fs' % timings['ready'])
        if not args.no_cold:
            vm = vm_for(hv, spec, root, 'cold')
            t0 = time.monotonic()
            hv.create(vm)
            with AgentClient(vm['agent_socket'], timeout=300) as client:
                client.wait_ready(300)
            res['cold'] = {'name': vm['name'], 'ready_s': time.monotonic() - t0}
            log('cold boot ready in %.3fs' % res['cold']['ready_s'])
        time.sleep(SETTLE)
        for c in res['clones'] + res['pool'] + ([res['cold']] if 'cold' in res else []):
            try:
                with AgentClient(os.path.join(root, 'sock-%s' % c['name'][len(hv.prefix):]), timeout=15) as client:
                    client.ping()
            except AgentError as err:  # a known intermittent stall of clones, see template.py
                c['ping_failed'] = str(err)
                log('%s: %s' % (c['name'], err))
            c['pss_mib'] = (template.vmm_pss_kib(hv.pid(c['name'])) or 0) / 1024.0
    finally:
        for d in hv.list_ours():
            hv.destroy(d['name'])
            hv.undefine(d['name'])
        left = hv.list_ours()
        hv.close()
        template.release_tmpfs(tdir)
        shutil.rmtree(root, ignore_errors=True)
        if left:
            log('LEFT BEHIND: %s' % left)

    if args.json:
        print(json.dumps(res, indent=1, sort_keys=True))
        return 0
    b = res['build']
    print('template build %.2fs (boot to agent %.2fs, save %.3fs, state %d KiB); %d MiB guest, accel %s, tb-cache %s'
          % (b['total_s'], b['boot_to_agent_s'], b['save_s'], b['state_bytes'] // 1024, args.memory_mb, spec['accel'],
             '%d MiB' % args.tb_cache_mb if args.tb_cache_mb else 'default'))
    # 'loaded': libvirt's paused start and the state load together (Hypervisor.create_clone)
    print('%-8s %8s %8s %8s %8s %9s' % ('clone', 'loaded', 'resumed', 'answer', 'ready', 'PSS MiB'))
    for i, c in enumerate(res['clones']):
        t = c['timings']
        print('%-8d %8.3f %8.3f %8.3f %8.3f %9.1f' % (i, t['loaded'], t['resumed'], t['answered'], t['ready'],
                                                      c['pss_mib']))
    ready = [c['timings']['ready'] for c in res['clones']]
    pss = [c['pss_mib'] for c in res['clones']]
    failed = [c['name'] for c in res['clones'] + res['pool'] if c.get('ping_failed')]
    if failed:
        print('NOTE: the agents of %s did not answer a later reconnect (15 s)' % ', '.join(failed))
    print('median clone ready %.3fs, median PSS %.1f MiB (targets: <= 0.5 s, <= 60 MiB)'
          % (statistics.median(ready), statistics.median(pss)))
    if res['pool']:
        print('%-8s %8s %8s %8s %9s' % ('pooled', 'resumed', 'answer', 'ready', 'PSS MiB'))
        for i, c in enumerate(res['pool']):
            t = c['timings']
            print('%-8d %8.3f %8.3f %8.3f %9.1f' % (i, t['resumed'], t['answered'], t['ready'], c['pss_mib']))
        print('median pooled clone ready %.3fs (target <= 0.15 s); PSS while paused in the pool %s MiB'
              % (statistics.median(c['timings']['ready'] for c in res['pool']),
                 ', '.join('%.1f' % v for v in res['pool_paused_pss_mib'])))
    if 'cold' in res:
        print('cold boot ready %.3fs, PSS %.1f MiB' % (res['cold']['ready_s'], res['cold']['pss_mib']))
    return 0


if __name__ == '__main__':
    sys.exit(main())
