# Copyright: kata.runtime contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Many idle sandboxes on one host: memory and CPU per sandbox, cold-booted with the lean-VMM
levers on and off, and started from a VM template, each variant in the same run.

Variants (``--variants``, default ``ours,off``): ``ours`` (the config as it is, cold boots),
``off`` (``boot.LEVERS_OFF``, cold boots) and ``template`` (a VM template of the sandboxes'
shape is built first, then every sandbox starts as its clone; a sandbox that fell back to a
cold boot is counted and reported, never passed off as a clone). For each variant, N
sandboxes (default 10, 128 MiB) are created, one after another or ``--parallel`` at a time
(then "create all" is the wall-clock time of the whole batch). After ``--settle`` seconds:

- memory: the sum of the VMMs' PSS (``smaps_rollup``). PSS splits each shared page among the
  processes mapping it, so the sum is what the N sandboxes really take together; per sandbox is
  that sum / N. A template's RAM file lives on the templates tmpfs: PSS counts only the pages
  of it that clones map (split among them). The tmpfs in use is reported next to it, and
  "with tmpfs / sandbox" adds all of it: an upper bound, which counts the mapped pages twice.
- idle CPU: the VMMs' CPU time over ``--idle-window`` seconds, as a share of one core, summed
  and per sandbox.
- every agent answers a ping.

Then one ``kata_prune``-equivalent call (``prune.prune`` with all IDs, forced) removes them,
timed. The variants rotate which goes first run by run (``--runs``, default 1).

    PYTHONPATH=.collections .venv/bin/python benchmarks/density.py [--sandboxes N] [--parallel K]
        [--variants ours,off,template] [--json]
"""

from __future__ import annotations

import os
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import _bench as b
from ansible_collections.kata.runtime.plugins.module_utils.kata import prune as prn
from ansible_collections.kata.runtime.plugins.module_utils.kata import sandbox as sbx
from ansible_collections.kata.runtime.plugins.module_utils.kata import template
from boot import IDLE_CPU_TARGET, LEVERS_OFF

VARIANTS = ('ours', 'off', 'template')
LABELS = {'ours': 'levers on', 'off': 'levers off', 'template': 'template'}
TEMPLATE_PSS_TARGET_MIB = 60
CREATE_TIMEOUT = 600  # seconds for one agent: a parallel batch of cold boots under TCG is slow


def build_template(rt, memory_mb):
    """The template of the variant's shape: ``(template, seconds)``."""
    spec, _reason = sbx.template_spec(rt, sbx.settings_from(rt.config, {'memory_mb': memory_mb}))
    t0 = time.perf_counter()
    tpl, _changed, _timings = template.build_locked(rt.hv, rt.store.root, rt.config.template_tmpfs_mb, spec,
                                                    agent_timeout=CREATE_TIMEOUT, progress=b.log)
    return tpl, time.perf_counter() - t0


def tmpfs_used_mib(state_root):
    """MiB in use on the templates tmpfs (0 when none is mounted)."""
    path = template.templates_dir(state_root)
    if not os.path.ismount(path):
        return 0.0
    st = os.statvfs(path)
    return (st.f_blocks - st.f_bfree) * st.f_frsize / 1048576.0


def create_all(bench, who, count, memory_mb, parallel):
    """Create ``count`` sandboxes, ``parallel`` at a time, each through a Runtime of its own
    worker (one libvirt connection per thread); returns ([(sid, seconds, boot, pid)], wall s,
    [errors])."""
    opts = {'memory_mb': memory_mb}
    if who == 'template':
        opts['template'] = True
    local = threading.local()
    made = []

    def runtime():
        if parallel == 1:
            return bench.off if who == 'off' else bench.rt
        if getattr(local, 'rt', None) is None:
            local.rt = bench.runtime_with(**(LEVERS_OFF if who == 'off' else {}))
            made.append(local.rt)
        return local.rt

    def one(i):
        sid = 'dens-%s-%02d' % (who[:3], i + 1)
        rt = runtime()
        t0 = time.perf_counter()
        rec = sbx.create(rt, sid, sbx.settings_from(rt.config, opts), timeout=CREATE_TIMEOUT)
        took = time.perf_counter() - t0
        b.log('%s: %s up in %.2fs (boot %s)' % (who, sid, took, rec.boot))
        return sid, took, rec.boot, rt.hv.pid(rec.domain)

    results, errors = [], []
    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=parallel) as pool:
        futures = [pool.submit(one, i) for i in range(count)]
        for fut in futures:
            try:
                results.append(fut.result())
            except Exception as err:  # noqa: BLE001 - counted and reported
                errors.append(str(err))
                b.log('%s: a create failed: %s' % (who, err))
    wall = time.perf_counter() - t0
    for rt in made:
        rt.hv.close()
    return results, wall, errors


def one_variant(bench, who, count, memory_mb, settle, window, parallel):
    rt = bench.off if who == 'off' else bench.rt
    build_s = None
    created = []
    try:
        if who == 'template':
            tpl, build_s = build_template(rt, memory_mb)
            b.log('template %s built in %.1fs' % (tpl.key, build_s))
        results, wall, errors = create_all(bench, who, count, memory_mb, parallel)
        created = [r[0] for r in results]
        boot_s = [r[1] for r in results]
        boots = [r[2] for r in results]
        pids = [r[3] for r in results]
        b.log('%s: %d idle sandboxes, settling %.0fs, then CPU over %.0fs' % (who, len(created), settle, window))
        time.sleep(settle)
        pss = [b.smaps_rollup(pid)['Pss'] for pid in pids]
        tmpfs_mib = tmpfs_used_mib(rt.store.root)
        cpu0 = [b.cpu_seconds(pid) for pid in pids]
        t0 = time.perf_counter()
        time.sleep(window)
        elapsed = time.perf_counter() - t0
        cpu = [100.0 * (b.cpu_seconds(pid) - c) / elapsed for pid, c in zip(pids, cpu0)]
        answered = 0
        for sid in created:
            with rt.agent(sid, timeout=30) as client:
                if client.ping().get('protocol') == 1:
                    answered += 1
        t0 = time.perf_counter()
        res = prn.prune(rt, list(created), force=True)
        prune_s = time.perf_counter() - t0
        failed = res['failed']
        gone = set(res['deleted'])
        created = [sid for sid in created if sid not in gone]
        n = max(1, len(pids))
        return {
            'sandboxes': count, 'created': len(pids), 'create_errors': errors, 'memory_mb': memory_mb,
            'parallel': parallel, 'create_wall_s': wall, 'template_build_s': build_s,
            'boots': {kind: boots.count(kind) for kind in sorted(set(boots), key=str)},
            'boot_s': b.summary(boot_s), 'boot_total_s': sum(boot_s),
            'pss_total_mib': sum(pss) / 1024, 'pss_per_sandbox_mib': sum(pss) / 1024 / n,
            'pss_each_mib': b.summary([p / 1024 for p in pss]),
            'templates_tmpfs_mib': tmpfs_mib,
            'with_tmpfs_per_sandbox_mib': (sum(pss) / 1024 + tmpfs_mib) / n,
            'idle_cpu_total_pct': sum(cpu), 'idle_cpu_per_sandbox_pct': statistics.median(cpu) if cpu else None,
            'agents_answering': answered, 'prune_s': prune_s, 'prune_failed': failed,
        }
    finally:
        for sid in created:
            try:
                sbx.delete(rt, sid, force=True)
            except Exception as err:  # noqa: BLE001 - cleanup() reports what stays
                b.log('cleanup of %s: %s' % (sid, err))
        if who == 'template':  # the next variants boot cold and must not find its tmpfs
            for tpl in template.list_templates(template.templates_dir(rt.store.root))[0]:
                template.remove_locked(rt.store.root, tpl.key)


def print_report(res):
    m = res['machine']
    print('density.py  %s  %d CPUs, %d MiB, %s, load at start %s' % (
        m['date'], m['cpus'], m.get('mem_mib', 0), m.get('qemu', '?'), m.get('loadavg_at_start')))
    print()
    rows = []
    for run in res['runs']:
        for who in run['order']:
            v = run[who]
            boots = ', '.join('%s %d' % (k, c) for k, c in v['boots'].items())
            rows.append(('%d: %s' % (run['run'], LABELS[who]), '%d/%d' % (v['created'], v['sandboxes']), boots,
                         v['parallel'], b.fmt_s(v['boot_s']['median']), '%.1f' % v['create_wall_s'],
                         '%.0f' % v['pss_total_mib'], '%.1f' % v['pss_per_sandbox_mib'],
                         '%.0f' % v['templates_tmpfs_mib'], '%.1f' % v['with_tmpfs_per_sandbox_mib'],
                         '%.1f' % v['idle_cpu_total_pct'], '%.2f' % (v['idle_cpu_per_sandbox_pct'] or 0),
                         '%d/%d' % (v['agents_answering'], v['created']), b.fmt_s(v['prune_s'])))
    print(b.table(('run: variant', 'N', 'boots', 'parallel', 'create median s', 'create all s', 'PSS total MiB',
                   'PSS / sandbox', 'tmpfs MiB', 'with tmpfs / sandbox', 'idle CPU total %',
                   'idle CPU / sandbox %', 'agents', 'prune s'), rows))
    print()

    def per(who, key):
        vals = [r[who][key] for r in res['runs'] if who in r]
        return statistics.median(vals) if vals else None

    if per('ours', 'pss_per_sandbox_mib') and per('off', 'pss_per_sandbox_mib'):
        print('PSS per sandbox, levers on / off: %s (median over runs)'
              % b.fmt_x(b.ratio(per('ours', 'pss_per_sandbox_mib'), per('off', 'pss_per_sandbox_mib'))))
    if per('template', 'pss_per_sandbox_mib'):
        print('template: PSS per sandbox %.1f MiB (target <= %d), %.1f MiB with the template tmpfs shared out; '
              'built in %.1fs' % (per('template', 'pss_per_sandbox_mib'), TEMPLATE_PSS_TARGET_MIB,
                                  per('template', 'with_tmpfs_per_sandbox_mib'), per('template', 'template_build_s')))
        if per('ours', 'create_wall_s'):
            print('create all: template / cold %s' % b.fmt_x(b.ratio(per('template', 'create_wall_s'),
                                                                     per('ours', 'create_wall_s'))))
    print('idle CPU target <= %.0f%% of a core per sandbox' % IDLE_CPU_TARGET)
    for run in res['runs']:
        for who in run['order']:
            v = run[who]
            if v['create_errors']:
                print('%d: %s: %d creates FAILED: %s' % (run['run'], LABELS[who], len(v['create_errors']),
                                                         '; '.join(v['create_errors'][:3])))
            if who == 'template' and v['boots'].get('template', 0) != v['created']:
                print('%d: template: %s of %d sandboxes did NOT start from the template'
                      % (run['run'], v['created'] - v['boots'].get('template', 0), v['created']))
    if res.get('cleanup_problems'):
        print()
        print('CLEANUP PROBLEMS: ' + '; '.join(res['cleanup_problems']))


def main():
    p = b.parser(__doc__.splitlines()[0], runs=1)
    p.add_argument('--sandboxes', type=int, default=10, help='idle sandboxes per variant (default %(default)s)')
    p.add_argument('--memory-mb', type=int, default=128, help='guest MiB (default %(default)s)')
    p.add_argument('--settle', type=float, default=10.0, help='seconds idle before measuring (default %(default)s)')
    p.add_argument('--idle-window', type=float, default=10.0, help='seconds of CPU sampling (default %(default)s)')
    p.add_argument('--parallel', type=int, default=1, help='sandboxes created at a time (default %(default)s)')
    p.add_argument('--variants', default='ours,off',
                   help='comma-separated, of %s (default %%(default)s)' % ', '.join(VARIANTS))
    args = p.parse_args()
    variants = tuple(v.strip() for v in args.variants.split(',') if v.strip())
    bad = [v for v in variants if v not in VARIANTS]
    if bad or not variants:
        p.error('--variants: unknown %s (known: %s)' % (', '.join(bad) or 'none given', ', '.join(VARIANTS)))
    if args.parallel < 1 or args.sandboxes < 1:
        p.error('--parallel and --sandboxes must be at least 1')
    b.die_on_signals()
    bench = b.Bench('density', args)
    bench.off = bench.runtime_with(**LEVERS_OFF)
    res = {'machine': b.machine(), 'image': bench.image, 'levers_off': LEVERS_OFF, 'runs': []}
    try:
        for i in range(args.runs):
            order = variants[i % len(variants):] + variants[:i % len(variants)]
            run = {'run': i + 1, 'order': order}
            for who in order:
                run[who] = one_variant(bench, who, args.sandboxes, args.memory_mb, args.settle, args.idle_window,
                                       args.parallel)
            res['runs'].append(run)
    finally:
        clean = b.cleaned(bench, res)
    return b.report(res, args, print_report, 0 if clean else 1)


if __name__ == '__main__':
    sys.exit(main())
