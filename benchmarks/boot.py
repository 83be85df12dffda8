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

VM templates (docs/templates.md; ``--no-template`` skips them): one template of the
benchmark's sandbox shape is built first (timed), and each run also creates a sandbox with
``template: true`` (``tpl``): ``sandbox.create`` until the clone's agent is ready, as users get
it, split with timers on the libvirt calls into libvirt's paused start, the state load, the
resume, the agent's first answer and post_clone (RNG reseed, clock, shares). Every such sandbox
must report ``boot == 'template'``: one that fell back to a cold boot is reported (and the run
exits 1), never counted as a clone. Ratios: template / floor (target <= 1/3), template / cold.
The memory figures add an idle clone at each size (a template of that size built if needed),
with the template's RAM file on the tmpfs next to it: host memory that a clone's PSS counts
only as far as the clone mapped it.

    PYTHONPATH=.collections .venv/bin/python benchmarks/boot.py [--runs N] [--no-template] [--json]
"""

from __future__ import annotations

import os
import re
import sys
import time

import _bench as b
from ansible_collections.kata.runtime.plugins.module_utils.kata import caps_cache, share, template
from ansible_collections.kata.runtime.plugins.module_utils.kata import sandbox as sbx
from ansible_collections.kata.runtime.plugins.module_utils.kata.guest import contract
from ansible_collections.kata.runtime.plugins.module_utils.kata.hypervisor import libvirt as libvirt_hv

TARGET = 1.2  # ours / bare floor
DEFINE_START_LIMIT = 1.0  # seconds; above it libvirt is most likely probing QEMU again
LEVERS_OFF = {'tcg_tb_cache_mb': 0, 'release_boot_files': False, 'free_page_reporting': False}
PSS_TARGET_MIB = 160  # idle, 128 MiB guest, cold-booted
IDLE_CPU_TARGET = 1.0  # percent of one core per idle sandbox
TPL_FLOOR_TARGET = 1 / 3  # template / bare floor
TPL_READY_TARGET_S = 0.5  # median, sandbox.create -> agent ready from a template
TPL_PSS_TARGET_MIB = 60  # idle clone
CLONE_READY_RE = re.compile(r'is ready ([0-9.]+)s after the clone started')


def boot_ours(bench, sid, memory_mb=None, rt=None):
    """Create a sandbox and time it; returns (figures, record)."""
    rt = rt or bench.rt
    hv = rt.hv
    trace = b.TimedTrace()
    settings = bench.settings(memory_mb=memory_mb)
    console = share.console_log(rt.store, sid)
    with b.timed_method(hv, 'create') as hvc, b.FileMarker(console, contract.INIT_MARKER) as init:
        t0 = time.perf_counter()
        rec = sbx.create(rt, sid, settings, trace=trace)
        t1 = time.perf_counter()
        pid = hv.pid(rec.domain)
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


def build_template(bench, memory_mb=None):
    """Build the template of the benchmark's sandbox shape (at ``memory_mb``), as kata_template
    does; returns (Template, figures)."""
    rt = bench.rt
    spec, _reason = sbx.template_spec(rt, bench.settings(memory_mb=memory_mb))
    b.log('template: building one of %d MiB' % spec['memory_mb'])
    t0 = time.perf_counter()
    # force: a template left by an interrupted run must not pass for this run's build
    tpl, _changed, timings = template.build_locked(rt.hv, rt.store.root, rt.config.template_tmpfs_mb, spec,
                                                   force=True, agent_timeout=rt.config.agent_timeout,
                                                   progress=b.log)
    return tpl, {
        'key': tpl.key,
        'memory_mb': spec['memory_mb'],
        'wall_s': time.perf_counter() - t0,  # tmpfs mount and locks included
        'build_s': timings.get('build_s'),
        'boot_to_agent_s': timings.get('boot_to_agent_s'),
        'save_s': timings.get('save_s'),
        'ram_bytes': tpl.record['sizes']['ram'],
        'state_bytes': tpl.record['sizes']['state'],
    }


def ram_file(tpl):
    """The template's RAM file: its size, and what of it the tmpfs holds (host memory)."""
    st = os.stat(tpl.ram)
    return {'size_bytes': st.st_size, 'allocated_bytes': st.st_blocks * 512}


def tmpfs_used_bytes(bench):
    path = template.templates_dir(bench.state_root)
    if not os.path.ismount(path):
        return 0
    st = os.statvfs(path)
    return (st.f_blocks - st.f_bfree) * st.f_frsize


def boot_tpl(bench, sid, memory_mb=None):
    """Create a sandbox with ``template: true`` and time it; returns (figures, record, why).

    ``why`` is None when the VM came up as a clone, else the trace's reason for a cold boot:
    the caller must not count such a boot as a template one."""
    rt = bench.rt
    hv = rt.hv
    trace = b.TimedTrace()
    settings = bench.settings(memory_mb=memory_mb, template=True)
    with b.timed_method(libvirt_hv, 'create_from_xml') as started, b.timed_method(libvirt_hv, 'load_state') as loaded, \
            b.timed_method(hv, 'resume') as resumed, b.timed_method(template, 'post_clone') as post:
        t0 = time.perf_counter()
        rec = sbx.create(rt, sid, settings, trace=trace)
        t1 = time.perf_counter()
        pid = hv.pid(rec.domain)
        cpu = b.cpu_seconds(pid)
    if rec.boot != 'template':
        why = [msg for dummy, msg in trace.times if 'booting cold' in msg]
        return {'total_s': t1 - t0}, rec, (why[-1] if why else 'boot is %r' % rec.boot)
    clone = [float(m.group(1)) for m in (CLONE_READY_RE.search(msg) for dummy, msg in trace.times) if m]
    (s0, s1), = started.calls
    (l0, l1), = loaded.calls
    (r0, r1), = resumed.calls
    (p0, p1), = post.calls
    return {
        'total_s': t1 - t0,
        'host_prep_s': s0 - t0,         # validation, record, cgroups, shares, finding the template
        'paused_start_s': s1 - s0,      # libvirt define + start paused (-incoming defer)
        'state_load_s': l1 - l0,        # migrate-incoming of the device state (x-ignore-shared)
        'place_vmm_s': r0 - l1,         # VMM into the sandbox cgroup
        'resume_s': r1 - r0,
        'agent_answer_s': p0 - r1,      # connect + first ping answered
        'post_clone_s': p1 - p0,        # RNG reseed, clock, 9p mounts
        'after_ready_s': t1 - p1,       # checks, boot files released, record
        'clone_s': clone[-1] if clone else None,  # the trace's own figure: clone start -> ready
        'vmm_cpu_s': cpu,
    }, rec, None


def boot_bare(bench, spec, memory_mb=None):
    vm = b.BareVM(spec['kernel'], spec['initrd'], spec['cmdline'], spec['accel'],
                  memory_mb or spec['memory_mb'], spec['vcpus'], bench.tmp)
    try:
        vm.boot()
        return {'init_s': vm.init_s, 'agent_s': vm.agent_s, 'vmm_cpu_s': vm.agent_cpu_s}
    finally:
        vm.stop()


def run_boot(bench, runs, warmup, templates=None):
    """Paired runs of ours, levers off, bare and (with ``templates``, a dict of the templates
    built, by guest MiB) a sandbox started from a template."""
    # A first sandbox opens the libvirt connection and warms the page cache for the image;
    # its record also gives the exact VM spec the bare boot copies.
    b.log('warm-up: one sandbox and one bare boot')
    dummy, rec = boot_ours(bench, 'warmup')
    spec = sbx._vm_spec(bench.rt, rec, None)  # only the boot files, command line and shape are used
    sbx.delete(bench.rt, 'warmup', force=True)
    for _dummy in range(warmup):
        boot_bare(bench, spec)
    tpl_build = None
    if templates is not None:
        tpl, tpl_build = build_template(bench)
        templates[tpl_build['memory_mb']] = (tpl, tpl_build)
        b.log('template %s built in %.2fs (agent after %.2fs, state saved in %.3fs)'
              % (tpl.key, tpl_build['build_s'], tpl_build['boot_to_agent_s'], tpl_build['save_s']))
    pairs = []
    rotation = ('ours', 'off', 'tpl', 'bare') if templates is not None else ('ours', 'off', 'bare')
    n = len(rotation)
    for i in range(runs):
        order = rotation[i % n:] + rotation[:i % n]
        pair = {'run': i + 1, 'first': order[0]}
        for which in order:
            if which == 'tpl':
                sid = 'boot-%d-tpl' % (i + 1)
                figures, rec, why = boot_tpl(bench, sid)
                t = time.perf_counter()
                sbx.delete(bench.rt, sid, force=True)
                figures['delete_s'] = time.perf_counter() - t
                pair['tpl_boot'] = rec.boot
                if why is None:
                    pair['tpl'] = figures
                else:  # never counted as a template boot
                    pair['tpl'] = None
                    pair['tpl_fallback'] = {'reason': why, 'figures': figures}
                    b.log('RUN %d: THE TEMPLATE SANDBOX BOOTED COLD (%s); not counted' % (i + 1, why))
            elif which in ('ours', 'off'):
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
        if templates is not None:
            tp = pair['tpl']
            pair['ratio_tpl_init'] = b.ratio(tp and tp['total_s'], r['init_s'])
            pair['ratio_tpl_cold'] = b.ratio(tp and tp['total_s'], o['total_s'])
            b.log('run %d/%d: template %s (paused start %s, state load %s, resume %s, agent %s, post_clone %s)'
                  % (i + 1, runs, *(b.fmt_s(tp and tp[k]) for k in (
                      'total_s', 'paused_start_s', 'state_load_s', 'resume_s', 'agent_answer_s', 'post_clone_s'))))
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
    if templates is not None:
        out['template'] = template_summary(pairs, med, tpl_build)
    return out


def template_summary(pairs, med, build):
    """The template variant's medians and ratios; boots that fell back to cold are listed
    apart and counted in no figure."""
    clones = [p['tpl'] for p in pairs if p.get('tpl')]
    keys = list(clones[0]) if clones else ['total_s']
    tmed = {k: b.summary([c[k] for c in clones]) for k in keys}
    total = tmed['total_s']['median']
    return {
        'build': build,
        'clones': len(clones),
        'fallbacks': [{'run': p['run'], 'boot': p.get('tpl_boot'), 'reason': p['tpl_fallback']['reason']}
                      for p in pairs if p.get('tpl_fallback')],
        'summary': tmed,
        'ratio_of_medians': {
            'tpl_vs_bare_init': b.ratio(total, med['bare_init_s']['median']),
            'tpl_vs_bare_agent': b.ratio(total, med['bare_agent_s']['median']),
            'tpl_vs_cold': b.ratio(total, med['total_s']['median']),
            'vmm_cpu_tpl_vs_cold': b.ratio(tmed.get('vmm_cpu_s', {}).get('median'), med['vmm_cpu_s']['median']),
        },
        'median_of_paired_ratios': {
            'tpl_vs_bare_init': b.median([p['ratio_tpl_init'] for p in pairs]),
            'tpl_vs_cold': b.median([p['ratio_tpl_cold'] for p in pairs]),
        },
        'target_vs_floor': TPL_FLOOR_TARGET,
        'target_ready_s': TPL_READY_TARGET_S,
    }


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


def idle_memory(bench, spec, sizes, settle, window, templates=None):
    """Idle VMM memory and CPU at each size: ours, levers off, bare, and (with ``templates``,
    the templates built so far by guest MiB; one is built for a size missing) a clone."""
    out = []
    for size in sizes:
        entry = {'memory_mb': size}
        for who, rt in (('ours', bench.rt), ('off', bench.off)):
            sid = 'mem-%d-%s' % (size, who)
            b.log('memory: sandbox at %d MiB%s, then %.0fs idle' % (size, ', levers off' if who == 'off' else '', window))
            dummy, rec = boot_ours(bench, sid, memory_mb=size, rt=rt)
            try:
                time.sleep(settle)
                pid = rt.hv.pid(rec.domain)
                entry[who + '_kib'] = b.smaps_rollup(pid)
                entry[who + '_idle_cpu_pct'] = b.idle_cpu(pid, window)
            finally:
                sbx.delete(rt, sid, force=True)
        if templates is not None:
            idle_clone(bench, entry, size, settle, window, templates)
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


def idle_clone(bench, entry, size, settle, window, templates):
    """One idle clone of the template of ``size`` MiB into ``entry`` (tpl_*): its PSS and idle
    CPU, and the template's RAM file on the tmpfs, which no PSS counts beyond what clones map."""
    if size not in templates:
        tpl, built = build_template(bench, memory_mb=size)
        templates[size] = (tpl, built)
        b.log('template %s (%d MiB) built in %.2fs' % (tpl.key, size, built['build_s']))
    tpl, built = templates[size]
    entry['tpl_key'] = tpl.key
    entry['tpl_ram_file'] = ram_file(tpl)
    sid = 'mem-%d-tpl' % size
    b.log('memory: sandbox from template at %d MiB, then %.0fs idle' % (size, window))
    figures, rec, why = boot_tpl(bench, sid, memory_mb=size)
    try:
        entry['tpl_boot'] = rec.boot
        if why is not None:
            entry['tpl_fallback'] = why
            b.log('MEMORY: THE TEMPLATE SANDBOX AT %d MiB BOOTED COLD (%s); not counted' % (size, why))
            return
        entry['tpl_ready_s'] = figures['total_s']
        time.sleep(settle)
        pid = bench.rt.hv.pid(rec.domain)
        entry['tpl_kib'] = b.smaps_rollup(pid)
        entry['tpl_idle_cpu_pct'] = b.idle_cpu(pid, window)
        # read while the clone is the only process mapping the file
        entry['tpl_ram_file'] = ram_file(tpl)
        entry['templates_tmpfs_used_bytes'] = tmpfs_used_bytes(bench)
    finally:
        sbx.delete(bench.rt, sid, force=True)


def print_template(res):
    """The template variant's tables (after the cold ones, which stay as they were)."""
    tp = res['boot']['template']
    bt = res['boot']
    bd = tp['build']
    print()
    print('From a VM template: %d of %d runs started as clones; template %s built in %s s (agent after %s s, '
          'state saved in %s s; %d MiB RAM file, %d KiB state)'
          % (tp['clones'], len(bt['runs']), bd['key'], b.fmt_s(bd['build_s']), b.fmt_s(bd['boot_to_agent_s']),
             b.fmt_s(bd['save_s']), bd['ram_bytes'] // 1048576, bd['state_bytes'] // 1024))
    if tp['clones']:
        s = tp['summary']
        rows = []
        for key, label in (('total_s', 'template: sandbox.create -> agent ready'),
                           ('host_prep_s', '  host prep (record, cgroups, shares, finding the template)'),
                           ('paused_start_s', '  libvirt define + start paused'),
                           ('state_load_s', '  device state load (migrate-incoming)'),
                           ('place_vmm_s', '  VMM into the sandbox cgroup'),
                           ('resume_s', '  resume'),
                           ('agent_answer_s', '  agent answers (connect + ping)'),
                           ('post_clone_s', '  post_clone (RNG reseed, clock, 9p mounts)'),
                           ('after_ready_s', '  after ready (record)'),
                           ('clone_s', '(clone start -> ready, from the trace)'),
                           ('delete_s', '(template: forced delete afterwards)'),
                           ('vmm_cpu_s', 'template: VMM CPU seconds to agent ready')):
            x = s[key]
            rows.append((label, b.fmt_s(x['median']), b.fmt_s(x['min']), b.fmt_s(x['max'])))
        for key, label in (('total_s', 'cold (ours): sandbox.create -> agent ready'),
                           ('bare_init_s', 'bare qemu -> init marker (floor)')):
            x = bt['summary'][key]
            rows.append((label, b.fmt_s(x['median']), b.fmt_s(x['min']), b.fmt_s(x['max'])))
        print(b.table(('seconds', 'median', 'min', 'max'), rows))
        rm, pr = tp['ratio_of_medians'], tp['median_of_paired_ratios']
        print()
        print(b.table(('ratio', 'of medians', 'median of pairs', 'target'), [
            ('template / bare to init (floor)', b.fmt_x(rm['tpl_vs_bare_init']), b.fmt_x(pr['tpl_vs_bare_init']),
             '<= %.2fx' % tp['target_vs_floor']),
            ('template / bare to agent', b.fmt_x(rm['tpl_vs_bare_agent']), '', ''),
            ('template / cold (ours)', b.fmt_x(rm['tpl_vs_cold']), b.fmt_x(pr['tpl_vs_cold']), ''),
            ('VMM CPU to agent: template / cold', b.fmt_x(rm['vmm_cpu_tpl_vs_cold']), '', ''),
        ]))
        med = s['total_s']['median']
        print('template median %s s (target <= %.1f s: %s)'
              % (b.fmt_s(med), tp['target_ready_s'], 'met' if med <= tp['target_ready_s'] else 'NOT met'))
        print()
        print(b.table(('run', 'template', 'paused start', 'state load', 'resume', 'agent', 'post_clone', 'cold',
                       'bare init', 'tpl/floor', 'tpl/cold'),
                      [(p['run'], b.fmt_s(p['tpl'] and p['tpl']['total_s']),
                        b.fmt_s(p['tpl'] and p['tpl']['paused_start_s']), b.fmt_s(p['tpl'] and p['tpl']['state_load_s']),
                        b.fmt_s(p['tpl'] and p['tpl']['resume_s']), b.fmt_s(p['tpl'] and p['tpl']['agent_answer_s']),
                        b.fmt_s(p['tpl'] and p['tpl']['post_clone_s']), b.fmt_s(p['ours']['total_s']),
                        b.fmt_s(p['bare']['init_s']), b.fmt_x(p['ratio_tpl_init']), b.fmt_x(p['ratio_tpl_cold']))
                       for p in bt['runs']]))
    for f in tp['fallbacks']:
        print('FALLBACK: run %d: the sandbox asked for the template booted %s, not counted: %s'
              % (f['run'], f['boot'], f['reason']))


def print_template_memory(res):
    rows = []
    notes = []
    for e in res['memory']:
        if 'tpl_kib' in e:
            k = e['tpl_kib']
            cpu = e.get('tpl_idle_cpu_pct')
            rows.append(('template clone @ %d MiB guest' % e['memory_mb'], '%.1f' % (k['Rss'] / 1024),
                         '%.1f' % (k['Pss'] / 1024), '%.1f' % (k.get('Pss_Anon', 0) / 1024),
                         '%.1f' % (k.get('Pss_File', 0) / 1024), '%.1f' % (k.get('Pss_Shmem', 0) / 1024),
                         '-' if cpu is None else '%.2f' % cpu))
            rf = e['tpl_ram_file']
            notes.append('template %s @ %d MiB: RAM file %.1f MiB on the templates tmpfs (%.1f MiB allocated; tmpfs '
                         'in use %.1f MiB); a clone\'s PSS counts only the pages of it the clone mapped ("PSS shmem", '
                         'split among the clones mapping them); host memory for one template and one clone: '
                         '%.1f MiB (PSS + the file\'s unmapped rest)'
                         % (e['tpl_key'], e['memory_mb'], rf['size_bytes'] / 1048576, rf['allocated_bytes'] / 1048576,
                            e['templates_tmpfs_used_bytes'] / 1048576,
                            (k['Pss'] + max(0, rf['allocated_bytes'] // 1024 - k.get('Pss_Shmem', 0))) / 1024))
        elif 'tpl_fallback' in e:
            notes.append('FALLBACK: the sandbox asked for the template at %d MiB booted %s, not counted: %s'
                         % (e['memory_mb'], e.get('tpl_boot'), e['tpl_fallback']))
    if not rows and not notes:
        return
    print()
    print('Idle template clone, same settle and window (MiB; PSS shmem: pages of the template\'s RAM file it maps)')
    if rows:
        print(b.table(('process', 'RSS', 'PSS', 'PSS anon', 'PSS file', 'PSS shmem', 'idle CPU %'), rows))
    for n in notes:
        print(n)
    print('target: idle PSS of a template clone <= %d MiB' % TPL_PSS_TARGET_MIB)


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
        if bt.get('template'):
            print_template(res)
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
        print_template_memory(res)
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
    p.add_argument('--no-template', action='store_true', help='no VM template, no sandboxes started from one')
    args = p.parse_args()
    b.die_on_signals()
    bench = b.Bench('boot', args)
    bench.off = bench.runtime_with(**LEVERS_OFF)
    res = {'machine': b.machine(), 'image': bench.image}
    rc = 0
    templates = None if args.no_template else {}
    try:
        if not args.skip_boot:
            res['boot'] = run_boot(bench, args.runs, args.warmup, templates)
            spec = res['boot']['spec']
        else:
            dummy, rec = boot_ours(bench, 'warmup')
            spec = sbx._vm_spec(bench.rt, rec, None)  # only the boot files, command line and shape are used
            sbx.delete(bench.rt, 'warmup', force=True)
        if not args.skip_memory:
            sizes = [int(x) for x in args.memory_sizes.split(',') if x]
            res['memory'] = idle_memory(bench, spec, sizes, args.settle, args.idle_window, templates)
            res['memory_settle_s'] = args.settle
            res['idle_window_s'] = args.idle_window
        if templates is not None:
            res['templates'] = [built for dummy, built in sorted(templates.values(), key=lambda t: t[1]['memory_mb'])]
            fell_back = (len(res.get('boot', {}).get('template', {}).get('fallbacks', ()))
                         + sum(1 for e in res.get('memory', ()) if 'tpl_fallback' in e))
            if fell_back:
                b.log('%d sandbox(es) asked for a template and booted cold: not counted, exit status 1' % fell_back)
                rc = 1
    finally:
        clean = b.cleaned(bench, res)
    return b.report(res, args, print_report, rc if clean else 1)


if __name__ == '__main__':
    sys.exit(main())
