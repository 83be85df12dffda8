# Copyright: kata.runtime contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Forced delete of a sandbox with running containers, next to its baselines in the same run.

Each run measures, in an order that rotates from run to run:
- full:  ``sandbox.delete(force=True)`` of a sandbox with N running containers (default 10);
- empty: the same delete of a sandbox without containers (the baseline);
- virsh: ``virsh destroy`` of a sandbox's domain alone (the VMM stop as libvirt does it).

Every delete is split per step (the Trace's steps timed as they are reported, plus the
libvirt calls themselves), and the VMM process is watched while it stops: when it exited
(a zombie or gone) and when its parent reaped it. libvirt's destroy returns only once the
VMM's pid no longer exists, so the reaping delay of the VMM's parent is part of every destroy.

    PYTHONPATH=.collections .venv/bin/python benchmarks/delete.py [--runs N] [--containers N] [--json]
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import _bench as b
from ansible_collections.kata.runtime.plugins.module_utils.kata import container as ctr
from ansible_collections.kata.runtime.plugins.module_utils.kata import sandbox as sbx
from ansible_collections.kata.runtime.plugins.module_utils.kata.agent import AgentClient

TARGET = 1.0  # seconds for the forced delete of a sandbox with 10 running containers

# Trace step -> the phase it ends (checked in order; the first match wins).
PHASES = (
    ('killed every container', 'kill_all (agent)'),
    ('agent unreachable', 'kill_all (agent)'),
    ('destroyed VM', 'destroy VM'),
    ('undefined VM', 'undefine VM'),
    ('of container', 'containers: host cleanup'),
    ('unshared rootfs', 'containers: host cleanup'),
    ('deleted container', 'containers: host cleanup'),
    ('removed ID mapping', None),  # container or sandbox: decided by the ID below
    ('ran ', 'hooks'),
)
PHASE_ORDER = ('lock, load, VM state', 'kill_all (agent)', 'destroy VM', 'undefine VM',
               'containers: host cleanup', 'sandbox: hooks, cgroups, state', 'hooks')


def phase_of(msg, sid):
    for prefix, phase in PHASES:
        if prefix in msg:
            if phase is None:
                return 'sandbox: hooks, cgroups, state' if msg.endswith(' ' + sid) else 'containers: host cleanup'
            return phase
    return 'sandbox: hooks, cgroups, state'


class ProcWatch:
    """Poll /proc/<pid>/stat from a thread: when the process exited (zombie or gone) and when
    it was gone (reaped), in perf_counter seconds."""

    def __init__(self, pid, interval=0.002):
        self.pid, self.interval = pid, interval
        self.exited = self.gone = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _state(self):
        try:
            with open('/proc/%d/stat' % self.pid) as f:
                return f.read().rsplit(')', 1)[1].split()[0]
        except OSError:
            return None

    def _run(self):
        while not self._stop.is_set():
            st = self._state()
            now = time.perf_counter()
            if st in (None, 'Z', 'X') and self.exited is None:
                self.exited = now
            if st is None:
                self.gone = now
                return
            time.sleep(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        # let the watch see the reaping that ends libvirt's wait, then stop
        self._thread.join(timeout=0.05)
        self._stop.set()
        self._thread.join()


def make_sandbox(bench, sid, containers, rootfs):
    sbx.create(bench.rt, sid, bench.settings())
    settings = ctr.settings_from({'rootfs': rootfs, 'command': ['/bin/sh', '-c', 'sleep 1000']})
    for i in range(containers):
        cid = '%s-c%d' % (sid, i)
        ctr.create(bench.rt, sid, cid, settings)
        ctr.start(bench.rt, cid)
    live = ctr.live_states(bench.rt, sid, 'running') or {}
    running = sum(1 for s in live.values() if s.get('status') == 'running')
    if running != containers:
        raise RuntimeError('sandbox %s: %d of %d containers running' % (sid, running, containers))
    return bench.rt.store.load_sandbox(sid)


def timed_delete(bench, sid):
    """sandbox.delete(force=True) with its steps, libvirt calls and the VMM's exit timed."""
    rt = bench.rt
    hv = rt.hv
    rec = rt.store.load_sandbox(sid)
    pid = hv.pid(rec.domain)
    trace = b.TimedTrace()
    with b.timed_method(hv, 'destroy') as destroy, b.timed_method(hv, 'undefine') as undefine, \
            b.timed_method(hv, 'state') as state, b.timed_method(ctr, 'cleanup') as cleanup, \
            b.timed_method(AgentClient, 'call') as agent, ProcWatch(pid) as watch:
        t0 = trace.t0 = time.perf_counter()
        sbx.delete(rt, sid, force=True, trace=trace)
        t1 = time.perf_counter()
    # Before the first action (kill_all or destroy): the lock, the records, the VM state.
    starts = [a for a, dummy in destroy.calls + agent.calls]
    lead = min(starts) - t0 if starts else 0.0
    phases = dict.fromkeys(PHASE_ORDER, 0.0)
    phases['lock, load, VM state'] = lead
    for n, (msg, secs) in enumerate(trace.durations()):
        phase = phase_of(msg, sid)
        phases[phase] = phases.get(phase, 0.0) + (secs - lead if n == 0 else secs)
    d0 = destroy.calls[0][0] if destroy.calls else None
    return {
        'total_s': t1 - t0,
        'phases_s': phases,
        'calls_s': {'hv.destroy': destroy.total(), 'hv.undefine': undefine.total(),
                    'hv.state': state.total(), 'hv.state_calls': len(state.calls),
                    'ctr.cleanup': cleanup.total()},
        'vmm_exit_after_destroy_s': None if d0 is None or watch.exited is None else watch.exited - d0,
        'vmm_reaped_after_destroy_s': None if d0 is None or watch.gone is None else watch.gone - d0,
        'steps': [(msg, round(secs, 4)) for msg, secs in trace.durations()],
    }


def timed_virsh_destroy(bench, sid):
    rt = bench.rt
    rec = rt.store.load_sandbox(sid)
    pid = rt.hv.pid(rec.domain)
    with ProcWatch(pid) as watch:
        t0 = time.perf_counter()
        subprocess.run(['virsh', '-q', '-c', rt.config.libvirt_uri, 'destroy', rec.domain],
                       stdout=subprocess.DEVNULL, check=True)
        t1 = time.perf_counter()
    sbx.delete(rt, sid, force=True)
    return {
        'total_s': t1 - t0,
        'vmm_exit_s': None if watch.exited is None else watch.exited - t0,
        'vmm_reaped_s': None if watch.gone is None else watch.gone - t0,
    }


def orphan_reap_delay():
    """(seconds an orphaned process stays a zombie, the pid it was reparented to).

    libvirt daemonizes the VMM, so the VMM's parent is PID 1 (or the nearest subreaper):
    this measures the same reaping on a throw-away process."""
    r, w = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - forked child
        os.close(r)
        grandchild = os.fork()
        if grandchild == 0:
            time.sleep(0.2)
            os._exit(0)
        os.write(w, str(grandchild).encode())
        os._exit(0)
    os.close(w)
    orphan = int(os.read(r, 64))
    os.close(r)
    os.waitpid(child, 0)
    parent = None
    try:
        with open('/proc/%d/status' % orphan) as f:
            parent = int(f.read().split('PPid:')[1].split()[0])
    except (OSError, IndexError, ValueError):
        pass
    with ProcWatch(orphan, interval=0.001) as watch:
        deadline = time.perf_counter() + 30
        while watch.gone is None and time.perf_counter() < deadline:
            time.sleep(0.01)
    if watch.exited is None or watch.gone is None:
        return None, parent
    return watch.gone - watch.exited, parent


def virsh_floor():
    """Wall time of a virsh call that does nothing to a domain: its own start-up and connect."""
    t0 = time.perf_counter()
    subprocess.run(['virsh', '-q', '-c', 'qemu:///system', 'uri'], stdout=subprocess.DEVNULL, check=True)
    return time.perf_counter() - t0


def run(bench, runs, containers):
    rootfs = b.busybox_rootfs(bench.tmp)
    b.log('warm-up: one sandbox with one container')
    make_sandbox(bench, 'warmup', 1, rootfs)
    sbx.delete(bench.rt, 'warmup', force=True)
    kinds = ('full', 'empty', 'virsh')
    out = {k: [] for k in kinds}
    out['virsh_noop_s'] = []
    out['orphan_reap_s'] = []
    out['orphan_parent'] = None
    for i in range(runs):
        order = kinds[i % 3:] + kinds[:i % 3]
        for kind in order:
            sid = '%s-%d' % (kind, i + 1)
            make_sandbox(bench, sid, containers if kind == 'full' else 0, rootfs)
            time.sleep(0.5)  # let the guest settle after the last start
            if kind == 'virsh':
                r = timed_virsh_destroy(bench, sid)
            else:
                r = timed_delete(bench, sid)
            r['run'] = i + 1
            out[kind].append(r)
        out['virsh_noop_s'].append(virsh_floor())
        delay, parent = orphan_reap_delay()
        out['orphan_reap_s'].append(delay)
        out['orphan_parent'] = parent
        b.log('run %d/%d: full %.3fs  empty %.3fs  virsh destroy %.3fs' % (
            i + 1, runs, out['full'][-1]['total_s'], out['empty'][-1]['total_s'], out['virsh'][-1]['total_s']))
    return out


def summarize(res):
    s = {}
    for kind in ('full', 'empty'):
        rows = res[kind]
        s[kind] = {
            'total_s': b.summary([r['total_s'] for r in rows]),
            # derived: the delete less the time the exited VMM waited to be reaped
            'total_without_reap_wait_s': b.summary([
                r['total_s'] - (r['vmm_reaped_after_destroy_s'] - r['vmm_exit_after_destroy_s'])
                for r in rows if r['vmm_reaped_after_destroy_s'] is not None]),
            'phases_s': {p: b.median([r['phases_s'].get(p, 0.0) for r in rows]) for p in PHASE_ORDER},
            'calls_s': {c: b.median([r['calls_s'][c] for r in rows]) for c in rows[0]['calls_s']},
            'vmm_exit_after_destroy_s': b.summary([r['vmm_exit_after_destroy_s'] for r in rows]),
            'vmm_reaped_after_destroy_s': b.summary([r['vmm_reaped_after_destroy_s'] for r in rows]),
        }
    v = res['virsh']
    s['virsh'] = {k: b.summary([r[k] for r in v]) for k in ('total_s', 'vmm_exit_s', 'vmm_reaped_s')}
    s['virsh_noop_s'] = b.summary(res['virsh_noop_s'])
    s['orphan_reap_s'] = b.summary(res['orphan_reap_s'])
    full, empty = s['full']['total_s']['median'], s['empty']['total_s']['median']
    s['ratio_full_vs_empty'] = b.ratio(full, empty)
    s['ratio_full_vs_virsh'] = b.ratio(full, s['virsh']['total_s']['median'])
    s['target_s'] = TARGET
    return s


def print_report(res):
    m = res['machine']
    s = res['summary']
    print('delete.py  %s  %d CPUs, %d MiB, %s, load at start %s' % (
        m['date'], m['cpus'], m.get('mem_mib', 0), m.get('qemu', '?'), m.get('loadavg_at_start')))
    print()
    print('Forced delete, %d runs; "full" has %d running containers' % (res['runs'], res['containers']))
    rows = []
    for label, x in (('full: sandbox.delete(force) + %d containers' % res['containers'], s['full']['total_s']),
                     ('empty: sandbox.delete(force), no containers', s['empty']['total_s']),
                     ('virsh destroy alone', s['virsh']['total_s']),
                     ('  (virsh start-up + connect, no-op call)', s['virsh_noop_s']),
                     ('  (virsh destroy: VMM exited after)', s['virsh']['vmm_exit_s']),
                     ('  (virsh destroy: VMM reaped after)', s['virsh']['vmm_reaped_s']),
                     ('full: VMM exited after hv.destroy began', s['full']['vmm_exit_after_destroy_s']),
                     ('full: VMM reaped after hv.destroy began', s['full']['vmm_reaped_after_destroy_s']),
                     ('full: less the wait for the reaping (derived)', s['full']['total_without_reap_wait_s']),
                     ('empty: less the wait for the reaping (derived)', s['empty']['total_without_reap_wait_s']),
                     ('host: an orphan waits to be reaped by pid %s' % res.get('orphan_parent'),
                      s['orphan_reap_s'])):
        rows.append((label, b.fmt_s(x['median']), b.fmt_s(x['min']), b.fmt_s(x['max'])))
    print(b.table(('seconds', 'median', 'min', 'max'), rows))
    print()
    print('full / empty %s, full / virsh destroy %s; target for full: <= %.1f s (median %s s)' % (
        b.fmt_x(s['ratio_full_vs_empty']), b.fmt_x(s['ratio_full_vs_virsh']), s['target_s'],
        b.fmt_s(s['full']['total_s']['median'])))
    print()
    print('Where the time goes (median seconds per phase)')
    rows = [(p, b.fmt_s(s['full']['phases_s'][p]), b.fmt_s(s['empty']['phases_s'][p])) for p in PHASE_ORDER]
    rows.append(('(libvirt calls inside: hv.destroy)', b.fmt_s(s['full']['calls_s']['hv.destroy']),
                 b.fmt_s(s['empty']['calls_s']['hv.destroy'])))
    rows.append(('(libvirt calls inside: hv.state, %d / %d calls)' % (
        s['full']['calls_s']['hv.state_calls'], s['empty']['calls_s']['hv.state_calls']),
        b.fmt_s(s['full']['calls_s']['hv.state']), b.fmt_s(s['empty']['calls_s']['hv.state'])))
    rows.append(('(ctr.cleanup, all containers)', b.fmt_s(s['full']['calls_s']['ctr.cleanup']),
                 b.fmt_s(s['empty']['calls_s']['ctr.cleanup'])))
    print(b.table(('phase', 'full', 'empty'), rows))
    if res.get('cleanup_problems'):
        print()
        print('CLEANUP PROBLEMS: ' + '; '.join(res['cleanup_problems']))


def main():
    p = b.parser(__doc__.splitlines()[0], runs=3)
    p.add_argument('--containers', type=int, default=10, help='running containers in "full" (default %(default)s)')
    args = p.parse_args()
    b.die_on_signals()
    bench = b.Bench('delete', args)
    res = {'machine': b.machine(), 'image': bench.image, 'runs': args.runs, 'containers': args.containers}
    rc = 0
    try:
        res.update(run(bench, args.runs, args.containers))
        res['summary'] = summarize(res)
    finally:
        clean = b.cleaned(bench, res)
    return b.report(res, args, print_report, rc if clean else 1)


if __name__ == '__main__':
    sys.exit(main())
