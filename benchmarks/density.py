# Copyright: kata.runtime contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Many idle sandboxes on one host: memory and CPU per sandbox, with the lean-VMM levers on
and, as the baseline in the same run, off.

For each variant (``ours``: the config as it is; ``off``: ``boot.LEVERS_OFF``), N sandboxes
(default 10, 128 MiB, cold boots) are created one after another. After ``--settle`` seconds:

- memory: the sum of the VMMs' PSS (``smaps_rollup``). PSS splits each shared page among the
  processes mapping it, so the sum is what the N sandboxes really take together; per sandbox is
  that sum / N.
- idle CPU: the VMMs' CPU time over ``--idle-window`` seconds, as a share of one core, summed
  and per sandbox.
- every agent answers a ping.

Then one ``kata_prune``-equivalent call (``prune.prune`` with all IDs, forced) removes them,
timed. The two variants alternate which goes first run by run (``--runs``, default 1).

    PYTHONPATH=.collections .venv/bin/python benchmarks/density.py [--sandboxes N] [--json]
"""

from __future__ import annotations

import statistics
import sys
import time

import _bench as b
from ansible_collections.kata.runtime.plugins.module_utils.kata import prune as prn
from ansible_collections.kata.runtime.plugins.module_utils.kata import sandbox as sbx
from boot import IDLE_CPU_TARGET, LEVERS_OFF


def one_variant(bench, rt, who, count, memory_mb, settle, window):
    created, pids, boot_s = [], [], []
    try:
        for i in range(count):
            sid = 'dens-%s-%02d' % (who, i + 1)
            t0 = time.perf_counter()
            rec = sbx.create(rt, sid, sbx.settings_from(rt.config, {'memory_mb': memory_mb}))
            boot_s.append(time.perf_counter() - t0)
            created.append(sid)
            pids.append(rt.hv.pid(rec['domain']))
            b.log('%s: %d/%d sandboxes up (%.2fs)' % (who, i + 1, count, boot_s[-1]))
        b.log('%s: %d idle sandboxes, settling %.0fs, then CPU over %.0fs' % (who, count, settle, window))
        time.sleep(settle)
        pss = [b.smaps_rollup(pid)['Pss'] for pid in pids]
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
        return {
            'sandboxes': count, 'memory_mb': memory_mb,
            'boot_s': b.summary(boot_s), 'boot_total_s': sum(boot_s),
            'pss_total_mib': sum(pss) / 1024, 'pss_per_sandbox_mib': sum(pss) / 1024 / count,
            'pss_each_mib': b.summary([p / 1024 for p in pss]),
            'idle_cpu_total_pct': sum(cpu), 'idle_cpu_per_sandbox_pct': statistics.median(cpu),
            'agents_answering': answered, 'prune_s': prune_s, 'prune_failed': failed,
        }
    finally:
        for sid in created:
            try:
                sbx.delete(rt, sid, force=True)
            except Exception as err:  # noqa: BLE001 - cleanup() reports what stays
                b.log('cleanup of %s: %s' % (sid, err))


def print_report(res):
    m = res['machine']
    print('density.py  %s  %d CPUs, %d MiB, %s, load at start %s' % (
        m['date'], m['cpus'], m.get('mem_mib', 0), m.get('qemu', '?'), m.get('loadavg_at_start')))
    print()
    rows = []
    for run in res['runs']:
        for who in run['order']:
            v = run[who]
            rows.append(('%d: %s' % (run['run'], 'levers on' if who == 'ours' else 'levers off'),
                         v['sandboxes'], b.fmt_s(v['boot_s']['median']), '%.1f' % v['boot_total_s'],
                         '%.0f' % v['pss_total_mib'], '%.1f' % v['pss_per_sandbox_mib'],
                         '%.1f' % v['idle_cpu_total_pct'], '%.2f' % v['idle_cpu_per_sandbox_pct'],
                         '%d/%d' % (v['agents_answering'], v['sandboxes']), b.fmt_s(v['prune_s'])))
    print(b.table(('run: variant', 'N', 'boot median s', 'boots total s', 'PSS total MiB', 'PSS / sandbox',
                   'idle CPU total %', 'idle CPU / sandbox %', 'agents', 'prune s'), rows))
    ours = [r['ours']['pss_per_sandbox_mib'] for r in res['runs']]
    off = [r['off']['pss_per_sandbox_mib'] for r in res['runs']]
    print()
    print('PSS per sandbox, levers on / off: %s (median over runs); idle CPU target <= %.0f%% of a core per sandbox'
          % (b.fmt_x(b.ratio(statistics.median(ours), statistics.median(off))), IDLE_CPU_TARGET))
    if res.get('cleanup_problems'):
        print()
        print('CLEANUP PROBLEMS: ' + '; '.join(res['cleanup_problems']))


def main():
    p = b.parser(__doc__.splitlines()[0], runs=1)
    p.add_argument('--sandboxes', type=int, default=10, help='idle sandboxes per variant (default %(default)s)')
    p.add_argument('--memory-mb', type=int, default=128, help='guest MiB (default %(default)s)')
    p.add_argument('--settle', type=float, default=10.0, help='seconds idle before measuring (default %(default)s)')
    p.add_argument('--idle-window', type=float, default=10.0, help='seconds of CPU sampling (default %(default)s)')
    args = p.parse_args()
    b.die_on_signals()
    bench = b.Bench('density', args)
    off_rt = bench.runtime_with(**LEVERS_OFF)
    res = {'machine': b.machine(), 'image': bench.image, 'levers_off': LEVERS_OFF, 'runs': []}
    try:
        for i in range(args.runs):
            order = ('ours', 'off') if i % 2 == 0 else ('off', 'ours')
            run = {'run': i + 1, 'order': order}
            for who in order:
                rt = bench.rt if who == 'ours' else off_rt
                run[who] = one_variant(bench, rt, who, args.sandboxes, args.memory_mb, args.settle, args.idle_window)
            res['runs'].append(run)
    finally:
        clean = b.cleaned(bench, res)
    return b.report(res, args, print_report, 0 if clean else 1)


if __name__ == '__main__':
    sys.exit(main())
