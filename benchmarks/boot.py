# Copyright: kata.runtime contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Boot time and idle memory of a sandbox, next to a bare QEMU boot measured in the same run.

Boot: ``sandbox.create`` until the agent in the guest answered (split into the host work
before the VM, libvirt define + start, and the wait for the agent) against
``qemu-system-x86_64`` booting the same kernel, initrd and command line with the same accel,
memory, vCPUs and guest devices (serial console, virtio-serial agent port, 9p share), timed
to the init's marker on the console (the floor) and to the agent's first ping reply. The two
alternate run by run, so drift on a noisy machine hits both alike; each run gives one pair.

A libvirt define + start above ``DEFINE_START_LIMIT`` (1 s) is flagged below the tables, with
what ``kata_check`` finds about the cause: libvirt probing QEMU again on every start (a
``/dev/kvm`` that the user libvirt runs QEMU as cannot open, on a host udev never prepared)
costs ~10 s per start here, against ~0.4 s when its capabilities cache stays valid.

The lean-VMM levers (config keys ``tcg_tb_cache_mb``, ``release_boot_files`` and
``free_page_reporting``) are measured
against themselves: each run also boots a sandbox with both turned off (``LEVERS_OFF``), so the
boot time they cost and the memory they save come from the same run.

Memory and idle CPU: RSS and PSS (``/proc/<pid>/smaps_rollup``) of the VMM of one idle sandbox,
a few seconds after its agent is ready, at each guest memory size, then the share of one core
it uses while idle (``--idle-window`` seconds); the same for a sandbox with the levers off and
for the bare QEMU at the same size.

    PYTHONPATH=.collections .venv/bin/python benchmarks/boot.py [--runs N] [--json]
"""

from __future__ import annotations

import sys
import time

import _bench as b
from ansible_collections.kata.runtime.plugins.module_utils.kata import caps_cache, share
from ansible_collections.kata.runtime.plugins.module_utils.kata import sandbox as sbx
from ansible_collections.kata.runtime.plugins.module_utils.kata.guest import image

TARGET = 1.2  # ours / bare floor
DEFINE_START_LIMIT = 1.0  # seconds; above it libvirt is most likely probing QEMU again
LEVERS_OFF = {'tcg_tb_cache_mb': 0, 'release_boot_files': False, 'free_page_reporting': False}
PSS_TARGET_MIB = 160  # idle, 128 MiB guest, cold-booted
IDLE_CPU_TARGET = 1.0  # percent of one core per idle sandbox


def boot_ours(bench, sid, memory_mb=None, rt=None):
    """Create a sandbox and time it; returns (figures, record)."""
    rt = rt or bench.rt
    hv = rt.hv
    trace = b.TimedTrace()
    settings = bench.settings(memory_mb=memory_mb)
    console = share.console_log(rt.store, sid)
    with b.timed_method(hv, 'create') as hvc, b.FileMarker(console, image.INIT_MARKER) as init:
        t0 = time.perf_counter()
        rec = sbx.create(rt, sid, settings, trace=trace)
        t1 = time.perf_counter()
        pid = hv.pid(rec['domain'])
        cpu = b.cpu_seconds(pid)
        spawned = b.process_start(pid)
    (c0, c1), = hvc.calls
    ready = [t for t, msg in trace.times if msg.startswith('agent of sandbox')][-1]
    return {
        'total_s': t1 - t0,
        'host_prep_s': c0 - t0,        # validation, record, cgroups, share dir, libvirt lookup
        'define_start_s': c1 - c0,     # LibvirtHypervisor.create: define + start (qemu spawned)
        # ... of which libvirt's work until it forked the VMM, and after (exec, qemu init, QMP, cont)
        'libvirt_to_spawn_s': None if spawned is None else spawned - c0,
        'spawn_to_running_s': None if spawned is None else c1 - spawned,
        'agent_wait_s': ready - c1,    # guest boot + agent start, seen through the socket
        'after_ready_s': t1 - ready,   # hooks (none here), final record
        # the same marker the bare boot is timed to, read from the console log file
        'init_s': None if init.at is None else init.at - t0,
        'init_to_agent_s': None if init.at is None else ready - init.at,
        'vmm_cpu_s': cpu,              # CPU the VMM used until just after the agent answered
    }, rec


def boot_bare(bench, spec, memory_mb=None):
    vm = b.BareVM(spec['kernel'], spec['initrd'], spec['cmdline'], spec['accel'],
                  memory_mb or spec['memory_mb'], spec['vcpus'], bench.tmp)
    try:
        vm.boot()
        return {'init_s': vm.init_s, 'agent_s': vm.agent_s, 'vmm_cpu_s': vm.agent_cpu_s}
    finally:
        vm.stop()


def run_boot(bench, runs, warmup):
    # A first sandbox opens the libvirt connection and warms the page cache for the image;
    # its record also gives the exact VM spec the bare boot copies.
    b.log('warm-up: one sandbox and one bare boot')
    dummy, rec = boot_ours(bench, 'warmup')
    spec = sbx._vm_spec(bench.rt, rec, None)  # only the boot files, command line and shape are used
    sbx.delete(bench.rt, 'warmup', force=True)
    for _dummy in range(warmup):
        boot_bare(bench, spec)
    pairs = []
    rotation = ('ours', 'off', 'bare')
    for i in range(runs):
        order = rotation[i % 3:] + rotation[:i % 3]
        pair = {'run': i + 1, 'first': order[0]}
        for which in order:
            if which in ('ours', 'off'):
                sid = 'boot-%d%s' % (i + 1, '-off' if which == 'off' else '')
                rt = bench.off if which == 'off' else bench.rt
                pair[which], dummy = boot_ours(bench, sid, rt=rt)
                t = time.perf_counter()
                sbx.delete(rt, sid, force=True)
                pair[which]['delete_s'] = time.perf_counter() - t
            else:
                pair['bare'] = boot_bare(bench, spec)
        o, r = pair['ours'], pair['bare']
        pair['ratio_init'] = b.ratio(o['total_s'], r['init_s'])
        pair['ratio_agent'] = b.ratio(o['total_s'], r['agent_s'])
        pair['ratio_levers'] = b.ratio(o['total_s'], pair['off']['total_s'])
        b.log('run %d/%d: ours %.2fs (define+start %.2f%s, agent wait %.2f)  levers off %.2fs  bare init %.2fs agent %.2fs'
              % (i + 1, runs, o['total_s'], o['define_start_s'],
                 ' SLOW' if o['define_start_s'] > DEFINE_START_LIMIT else '',
                 o['agent_wait_s'], pair['off']['total_s'], r['init_s'], r['agent_s']))
        pairs.append(pair)
    med = {k: b.summary([p['ours'][k] for p in pairs]) for k in pairs[0]['ours']}
    med.update({'off_' + k: b.summary([p['off'][k] for p in pairs]) for k in pairs[0]['off']})
    med.update({'bare_' + k: b.summary([p['bare'][k] for p in pairs]) for k in pairs[0]['bare']})
    out = {
        'spec': {k: spec[k] for k in ('accel', 'vcpus', 'memory_mb', 'cmdline', 'kernel', 'initrd')},
        'runs': pairs,
        'summary': med,
        'ratio_of_medians': {
            'ours_vs_bare_init': b.ratio(med['total_s']['median'], med['bare_init_s']['median']),
            'ours_vs_bare_agent': b.ratio(med['total_s']['median'], med['bare_agent_s']['median']),
            'vmm_cpu_ours_vs_bare': b.ratio(med['vmm_cpu_s']['median'], med['bare_vmm_cpu_s']['median']),
            'ours_vs_levers_off': b.ratio(med['total_s']['median'], med['off_total_s']['median']),
            'vmm_cpu_ours_vs_levers_off': b.ratio(med['vmm_cpu_s']['median'], med['off_vmm_cpu_s']['median']),
        },
        'median_of_paired_ratios': {
            'ours_vs_bare_init': b.median([p['ratio_init'] for p in pairs]),
            'ours_vs_bare_agent': b.median([p['ratio_agent'] for p in pairs]),
            'ours_vs_levers_off': b.median([p['ratio_levers'] for p in pairs]),
        },
        'levers_off': LEVERS_OFF,
        'target': TARGET,
        'define_start_limit_s': DEFINE_START_LIMIT,
        'define_start_flag': define_start_flag(bench, pairs),
    }
    return out


def define_start_flag(bench, pairs):
    """None when every define + start stayed within the limit; else which runs did not, and
    what kata_check's capabilities cache check says about this host (the usual cause)."""
    slow = [p['run'] for p in pairs if p['ours']['define_start_s'] > DEFINE_START_LIMIT]
    if not slow:
        return None
    flag = {'runs': slow, 'median_s': b.median([p['ours']['define_start_s'] for p in pairs]),
            'caps_cache': None}
    uri = bench.config.libvirt_uri
    cache_dir = caps_cache.cache_dir_for(uri)
    if cache_dir:
        try:
            conn = bench.rt.hv.conn()
            before = caps_cache.cache_files(cache_dir)
            xml = conn.getCapabilities()
            emulator = caps_cache.emulator_of(xml, bench.rt.hv.arch)
            flag['caps_cache'] = caps_cache.check(xml, emulator, cache_dir=cache_dir, before=before)
        except Exception as err:  # noqa: BLE001 - a hint only, never the benchmark's failure
            b.log('could not check libvirt\'s capabilities cache: %s' % err)
    return flag


def idle_memory(bench, spec, sizes, settle, window):
    out = []
    for size in sizes:
        entry = {'memory_mb': size}
        for who, rt in (('ours', bench.rt), ('off', bench.off)):
            sid = 'mem-%d-%s' % (size, who)
            b.log('memory: sandbox at %d MiB%s, then %.0fs idle' % (size, ', levers off' if who == 'off' else '', window))
            dummy, rec = boot_ours(bench, sid, memory_mb=size, rt=rt)
            try:
                time.sleep(settle)
                pid = rt.hv.pid(rec['domain'])
                entry[who + '_kib'] = b.smaps_rollup(pid)
                entry[who + '_idle_cpu_pct'] = b.idle_cpu(pid, window)
            finally:
                sbx.delete(rt, sid, force=True)
        b.log('memory: bare qemu at %d MiB' % size)
        vm = b.BareVM(spec['kernel'], spec['initrd'], spec['cmdline'], spec['accel'], size, spec['vcpus'], bench.tmp)
        try:
            vm.boot()
            time.sleep(settle)
            entry['bare_kib'] = b.smaps_rollup(vm.pid)
            entry['bare_idle_cpu_pct'] = b.idle_cpu(vm.pid, window)
        finally:
            vm.stop()
        out.append(entry)
    return out


def print_report(res):
    m = res['machine']
    print('boot.py  %s  %d CPUs, %d MiB, %s, load at start %s' % (
        m['date'], m['cpus'], m.get('mem_mib', 0), m.get('qemu', '?'), m.get('loadavg_at_start')))
    if 'boot' in res:
        bt = res['boot']
        s = bt['summary']
        spec = bt['spec']
        print()
        print('Boot to agent ready: %d paired runs, accel %s, %d vCPU, %d MiB; cmdline "%s"' % (
            len(bt['runs']), spec['accel'], spec['vcpus'], spec['memory_mb'], spec['cmdline']))
        rows = []
        for key, label in (('total_s', 'ours: sandbox.create -> agent ready'),
                           ('host_prep_s', '  host prep (record, cgroups)'),
                           ('define_start_s', '  libvirt define + start'),
                           ('libvirt_to_spawn_s', '    (until libvirt forked the VMM process, +-10 ms)'),
                           ('spawn_to_running_s', '    (fork -> running: exec, qemu init, QMP, cont)'),
                           ('agent_wait_s', '  agent wait (guest boot + agent)'),
                           ('init_s', '  (create -> init marker in console log)'),
                           ('init_to_agent_s', '  (init marker -> agent ready)'),
                           ('after_ready_s', '  after ready (record)'),
                           ('off_total_s', 'levers off: sandbox.create -> agent ready'),
                           ('off_vmm_cpu_s', 'levers off: VMM CPU seconds to agent ready'),
                           ('bare_init_s', 'bare qemu -> init marker (floor)'),
                           ('bare_agent_s', 'bare qemu -> agent ping reply'),
                           ('delete_s', '(ours: forced delete afterwards)'),
                           ('vmm_cpu_s', 'ours: VMM CPU seconds to agent ready'),
                           ('bare_vmm_cpu_s', 'bare: qemu CPU seconds to agent ready')):
            x = s[key]
            rows.append((label, b.fmt_s(x['median']), b.fmt_s(x['min']), b.fmt_s(x['max'])))
        print(b.table(('seconds', 'median', 'min', 'max'), rows))
        rm, pr = bt['ratio_of_medians'], bt['median_of_paired_ratios']
        print()
        print(b.table(('ratio', 'of medians', 'median of pairs', 'target'), [
            ('ours / bare to init (floor)', b.fmt_x(rm['ours_vs_bare_init']), b.fmt_x(pr['ours_vs_bare_init']),
             '<= %.1fx' % bt['target']),
            ('ours / bare to agent', b.fmt_x(rm['ours_vs_bare_agent']), b.fmt_x(pr['ours_vs_bare_agent']), ''),
            ('VMM CPU to agent: ours / bare', b.fmt_x(rm['vmm_cpu_ours_vs_bare']), '', ''),
            ('ours / levers off (what the levers cost)', b.fmt_x(rm['ours_vs_levers_off']),
             b.fmt_x(pr['ours_vs_levers_off']), '<= 1.1x'),
            ('VMM CPU to agent: ours / levers off', b.fmt_x(rm['vmm_cpu_ours_vs_levers_off']), '', ''),
        ]))
        print()
        print(b.table(('run', 'first', 'ours', 'define+start', 'agent wait', 'levers off', 'bare init', 'bare agent',
                       'ratio init', 'ratio agent'),
                      [(p['run'], p['first'], b.fmt_s(p['ours']['total_s']), b.fmt_s(p['ours']['define_start_s']),
                        b.fmt_s(p['ours']['agent_wait_s']), b.fmt_s(p['off']['total_s']), b.fmt_s(p['bare']['init_s']),
                        b.fmt_s(p['bare']['agent_s']), b.fmt_x(p['ratio_init']), b.fmt_x(p['ratio_agent']))
                       for p in bt['runs']]))
        flag = bt.get('define_start_flag')
        if flag:
            print()
            print('FLAG: libvirt define + start above %.1f s in run%s %s of %d (median %s s)'
                  % (bt['define_start_limit_s'], '' if len(flag['runs']) == 1 else 's',
                     ', '.join(str(r) for r in flag['runs']), len(bt['runs']), b.fmt_s(flag['median_s'])))
            cc = flag.get('caps_cache')
            if cc and cc.get('stable') is False:
                print('  cause: %s' % cc['reason'])
                print('  fix: %s (or run the kata.runtime.kata_host role, or scripts/prepare-host.sh)' % cc['fix'])
            elif cc and cc.get('stable'):
                print('  not libvirt re-probing QEMU: %s; a loaded machine (load at start %s) slows the start too'
                      % (cc['reason'], res['machine'].get('loadavg_at_start')))
            elif cc:
                print('  libvirt capabilities cache: %s (stable: %s; libvirt re-probed QEMU during this check: %s)'
                      % (cc['reason'], cc['stable'], cc['reprobed']))
            else:
                print('  run kata.runtime.kata_check: it says whether libvirt probes QEMU again on every start')
    if 'memory' in res:
        print()
        print('Idle VMM memory, %ss after the agent answered (MiB; PSS split anon/file), then CPU over %ss idle '
              '(%% of one core)' % (res['memory_settle_s'], res['idle_window_s']))
        rows = []
        labels = {'ours': 'sandbox VMM', 'off': 'sandbox VMM, levers off', 'bare': 'bare qemu'}
        for e in res['memory']:
            for who in ('ours', 'off', 'bare'):
                k = e[who + '_kib']
                cpu = e.get(who + '_idle_cpu_pct')
                rows.append(('%s @ %d MiB guest' % (labels[who], e['memory_mb']),
                             '%.1f' % (k['Rss'] / 1024), '%.1f' % (k['Pss'] / 1024),
                             '%.1f' % (k.get('Pss_Anon', 0) / 1024), '%.1f' % (k.get('Pss_File', 0) / 1024),
                             '%.1f' % (k.get('AnonHugePages', 0) / 1024), '-' if cpu is None else '%.2f' % cpu))
        print(b.table(('process', 'RSS', 'PSS', 'PSS anon', 'PSS file', 'anon huge', 'idle CPU %'), rows))
        print()
        print('targets: idle PSS <= %d MiB at 128 MiB; idle CPU <= %.0f%% of a core per sandbox'
              % (PSS_TARGET_MIB, IDLE_CPU_TARGET))
    if res.get('cleanup_problems'):
        print()
        print('CLEANUP PROBLEMS: ' + '; '.join(res['cleanup_problems']))


def main():
    p = b.parser(__doc__.splitlines()[0], runs=5)
    p.add_argument('--warmup', type=int, default=1, help='unmeasured bare boots first (default %(default)s)')
    p.add_argument('--memory-sizes', default='128,256', help='guest MiB for the memory figures (default %(default)s)')
    p.add_argument('--settle', type=float, default=3.0, help='seconds idle before reading memory (default %(default)s)')
    p.add_argument('--idle-window', type=float, default=10.0,
                   help='seconds over which idle CPU is sampled (default %(default)s)')
    p.add_argument('--skip-boot', action='store_true')
    p.add_argument('--skip-memory', action='store_true')
    args = p.parse_args()
    b.die_on_signals()
    bench = b.Bench('boot', args)
    bench.off = bench.runtime_with(**LEVERS_OFF)
    res = {'machine': b.machine(), 'image': bench.image}
    rc = 0
    try:
        if not args.skip_boot:
            res['boot'] = run_boot(bench, args.runs, args.warmup)
            spec = res['boot']['spec']
        else:
            dummy, rec = boot_ours(bench, 'warmup')
            spec = sbx._vm_spec(bench.rt, rec, None)  # only the boot files, command line and shape are used
            sbx.delete(bench.rt, 'warmup', force=True)
        if not args.skip_memory:
            sizes = [int(x) for x in args.memory_sizes.split(',') if x]
            res['memory'] = idle_memory(bench, spec, sizes, args.settle, args.idle_window)
            res['memory_settle_s'] = args.settle
            res['idle_window_s'] = args.idle_window
    finally:
        clean = b.cleaned(bench, res)
    return b.report(res, args, print_report, rc if clean else 1)


if __name__ == '__main__':
    sys.exit(main())
