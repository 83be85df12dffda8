# Copyright: kata.runtime contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Sandbox lifecycle: create, start, stop, pause, resume, delete, and the live status.

A sandbox is one VM with the agent inside. It is also its own container of type
pod_sandbox (container ID == sandbox ID), which is why its ID gets a mapping to itself.

Status is observed, never just read back: the record says what we meant and what we must
clean up; libvirt says whether the VM runs; the agent says what runs inside it.
"""

from __future__ import annotations

import os
import signal
import time

from ansible_collections.kata.runtime.plugins.module_utils.kata import container as ctr
from ansible_collections.kata.runtime.plugins.module_utils.kata import hooks as oci_hooks
from ansible_collections.kata.runtime.plugins.module_utils.kata import (
    network,
    oci,
    options,
    share,
    template,
    vmm_memory,
)
from ansible_collections.kata.runtime.plugins.module_utils.kata.config import MAX_TIMEOUT, check_setting
from ansible_collections.kata.runtime.plugins.module_utils.kata.errors import (
    AgentError,
    Conflict,
    CorruptRecord,
    InvalidArgument,
    KataError,
    NotFound,
)
from ansible_collections.kata.runtime.plugins.module_utils.kata.guest import contract
from ansible_collections.kata.runtime.plugins.module_utils.kata.hypervisor.accel import choose_accel
from ansible_collections.kata.runtime.plugins.module_utils.kata.ids import validate_id
from ansible_collections.kata.runtime.plugins.module_utils.kata.model import (
    ContainerStatus,
    SandboxRecord,
    SandboxState,
    VmState,
    observed_sandbox_state,
    step,
)
from ansible_collections.kata.runtime.plugins.module_utils.kata.runtime import coerce_str_dict, now

# Settings kept in the record only, updated in place (the rest shape the VM: see options.py).
MUTABLE = options.SANDBOX_OPTIONS.keys(options.MUTABLE)
# The sandbox's own hooks that run once its VM is up (it has no process of its own to wait
# for: create and start are one step); poststart follows when the sandbox is running.
BOOT_HOOKS = ('prestart', 'createRuntime', 'createContainer', 'startContainer')


def check_timeout(name, value):
    """A module's wait option: None, or a positive number of seconds no clock overflows on."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                              or not 0 < value <= MAX_TIMEOUT):
        raise InvalidArgument('%s must be a positive number of seconds, at most %d; got %r' % (name, MAX_TIMEOUT, value))
    return value


def settings_from(config, opts):
    """The desired sandbox settings: module options over the host config, validated.

    ``opts`` holds the user's options (None = not given). Nothing is touched here.
    """
    def pick(key):
        value = opts.get(key)
        return getattr(config, key) if value is None else value

    s = {
        'vcpus': pick('vcpus'),
        'memory_mb': pick('memory_mb'),
        'kernel': pick('kernel'),
        'initrd': pick('initrd'),
        'kernel_params': pick('kernel_params') or '',
        'accel': pick('accel'),
        'labels': coerce_str_dict(opts.get('labels') or {}, 'labels'),
        'annotations': coerce_str_dict(opts.get('annotations') or {}, 'annotations'),
        'hooks': oci.validate_hooks(opts.get('hooks') or {}),
        'cgroups_path': opts.get('cgroups_path') or '',
        # how the VM comes up, not what it is: never a difference that needs recreate
        'template': pick('template'),
    }
    s['network'], s['ports'] = network.settings(pick('network'), opts.get('ports'))
    if not isinstance(s['template'], bool):
        raise InvalidArgument('template must be true or false, got %r' % (s['template'],))
    for key in ('vcpus', 'memory_mb', 'accel', 'kernel_params'):
        check_setting(key, s[key])  # the host config's own checks and bounds
    for key in ('kernel', 'initrd'):
        if not isinstance(s[key], str) or not os.path.isabs(s[key]):
            raise InvalidArgument('%s must be an absolute path, got %r' % (key, s[key]))
    return s


# ---------------------------------------------------------------------------------------------
# observation

def vm_state(rt, rec):
    """'running' | 'paused' | 'shutoff' | 'crashed' | 'missing' as libvirt sees it now."""
    return rt.hv.state(rec.domain)


def foreign_root(rt, name):
    """The other state root that VM ``name`` belongs to, or None when it is ours (or missing,
    or defined before VMs carried their root). A VM of another root is never touched."""
    root = rt.hv.state_root(name)
    if root is None or os.path.normpath(root) == rt.store.root:
        return None
    return root


def _our_vm_state(rt, rec, trace):
    """vm_state for a delete: a VM of another state root (same prefix, same ID) counts as
    missing here, with a warning: it is not ours to destroy."""
    vm = vm_state(rt, rec)
    if vm != VmState.MISSING:
        other = foreign_root(rt, rec.domain)
        if other is not None:
            trace.warn('sandbox %s: VM %s belongs to state root %s; left alone' % (rec.id, rec.domain, other))
            return VmState.MISSING
    return vm


def state_of(rec, vm):
    """The sandbox state users see (model.observed_sandbox_state of the record and VM)."""
    return observed_sandbox_state(rec.state, vm)


def info(rt, rec, vm=None, containers=None):
    """The public dict of one sandbox (the contract's `sandbox` return)."""
    if vm is None:
        vm = vm_state(rt, rec)
    if containers is None:
        containers, dummy = rt.store.list_containers(rec.id)
    pid = rt.hv.pid(rec.domain) if vm in VmState.LIVE else None
    return {
        'id': rec.id,
        'state': state_of(rec, vm),
        'vm_state': vm,
        'accel': rec.accel,
        'accel_reason': rec.accel_reason,
        'vcpus': rec.vcpus,
        'memory_mb': rec.memory_mb,
        'kernel': rec.kernel,
        'initrd': rec.initrd,
        'kernel_params': rec.kernel_params,
        'pid': pid,
        'domain': rec.domain,
        'containers': sorted(c.id for c in containers),
        'labels': rec.labels or {},
        'annotations': rec.annotations or {},
        'cgroups_path': rec.cgroups_path or '',
        'cgroups_paths': rec.cgroups_paths or [],
        'console_log': share.console_log(rt.store, rec.id),
        'created_at': rec.created_at,
        # how the VM last came up: 'cold' or 'template' (None: it never booted)
        'boot': rec.boot,
        'network': network.info(rec),
    }


def load(rt, sid):
    """The sandbox record, or None. A corrupt record raises CorruptRecord."""
    validate_id(sid, 'sandbox')
    return rt.store.load_sandbox(sid)


# ---------------------------------------------------------------------------------------------
# operations

def _check_boot_files(settings):
    for key in ('kernel', 'initrd'):
        path = settings[key]
        if not os.path.isfile(path):
            raise InvalidArgument(
                '%s %s does not exist: build the guest image first '
                '(kata.runtime.kata_guest_image, or the kata.runtime.kata_host role)' % (key, path))


def _state_json(rt, rec, status):
    pid = None
    if status in (ContainerStatus.CREATED, ContainerStatus.RUNNING):
        pid = rt.hv.pid(rec.domain)
    annotations = dict(rec.annotations or {})
    annotations.setdefault(oci.KATA_CONTAINER_TYPE_KEY, 'pod_sandbox')
    return oci.state(rec.id, status, pid, rt.store.sandbox_dir(rec.id), annotations)


def _run_hooks(rt, rec, kind, status, trace):
    hooks = rec.hooks or {}
    if not hooks.get(kind):
        return
    warnings = oci_hooks.run_hooks(kind, hooks, _state_json(rt, rec, status), rt.config.hook_timeout)
    for w in warnings:
        trace.warn(w)
    trace.step('ran %d %s hook(s) of sandbox %s' % (len(hooks[kind]), kind, rec.id))


def _cmdline(kernel_params, net):
    """The guest's command line: ours, what the guest's network needs, then the user's."""
    return ' '.join(p for p in (contract.KERNEL_PARAMS, network.kernel_param(net), kernel_params or '') if p)


def template_spec(rt, settings):
    """What template.build takes for a VM template of the sandboxes these ``settings``
    (settings_from) describe: the same kernel, initrd, command line, vCPUs, memory and accel
    (``auto`` chosen here, as create does). Returns ``(spec, accel reason)``; refuses what
    check_create would (missing boot files), before anything is touched."""
    _check_boot_files(settings)
    net = network.record(settings['network'], [])
    if net['mode'] not in (network.USER, network.NONE):
        # a clone would come up with the template's DHCP lease
        raise InvalidArgument('VM templates support network user or none, not %s' % net['spec'])
    accel, reason = choose_accel(settings['accel'])
    spec = {
        'vcpus': settings['vcpus'],
        'memory_mb': settings['memory_mb'],
        'kernel': settings['kernel'],
        'initrd': settings['initrd'],
        'cmdline': _cmdline(settings['kernel_params'], net),
        'network': network.vm_network(net),
        'accel': accel,
        'state_root': rt.store.root,
        'tb_cache_mb': rt.config.tcg_tb_cache_mb if accel == 'tcg' else 0,
    }
    return spec, reason


def _vm_spec(rt, rec, output_accessmode):
    sid = rec.id
    net = network.of(rec)
    cmdline = _cmdline(rec.kernel_params, net)
    return {
        'name': rec.domain,
        'sandbox_id': sid,
        'vcpus': rec.vcpus,
        'memory_mb': rec.memory_mb,
        'kernel': rec.kernel,
        'initrd': rec.initrd,
        'cmdline': cmdline,
        'accel': rec.accel,
        'console_log': share.console_log(rt.store, sid),
        'agent_socket': rt.store.agent_socket(sid),
        'shared_dir': share.shared_dir(rt.store, sid),
        'output_dir': share.output_dir(rt.store, sid),
        'output_accessmode': output_accessmode,
        'volumes_dir': share.volumes_dir(rt.store, sid),
        'state_root': rt.store.root,
        'tb_cache_mb': rt.config.tcg_tb_cache_mb if rec.accel == 'tcg' else 0,
        'free_page_reporting': rt.config.free_page_reporting,
        'network': network.vm_network(net),
    }


def _wait_agent(rt, rec, timeout, trace):
    sid = rec.id
    limit = timeout or rt.config.agent_timeout

    def tick(elapsed):
        trace.progress('sandbox %s: waiting for the agent in the guest (%.0fs of %ss)' % (sid, elapsed, limit))

    with rt.agent(sid) as client:  # its errors name the guest console log
        client.wait_ready(limit, progress=tick)
    trace.step('agent of sandbox %s is ready' % sid)


def _boot(rt, rec, timeout, trace):
    """Start the VM (from a template of its shape when the record asks for one and there is
    one, else defining it if needed), put the VMM in the sandbox's cgroups, wait for the
    agent. The shares and the capped console are mounted first: the VMM's mount namespace is
    a copy of ours taken when it starts. ``rec.boot`` says how the VM came up."""
    output_accessmode = share.prepare(rt, rec.id)
    vm = rt.hv.state(rec.domain)
    if vm in (VmState.SHUTOFF, VmState.CRASHED) and rec.boot == 'template':
        # a clone's definition loads a template's saved state when it starts: it cannot boot
        # again by itself, so it is made anew (from the template again, or cold)
        rt.hv.undefine(rec.domain)
        trace.step('undefined VM %s (a clone of a template does not boot again by itself)' % rec.domain)
        vm = VmState.MISSING
    cloned, pid = False, None
    if vm == VmState.MISSING:
        spec = _vm_spec(rt, rec, output_accessmode)
        if rec.template:
            cloned, pid = _boot_from_template(rt, rec, spec, timeout, trace)
        if not cloned:
            trace.progress('sandbox %s: booting %s (%s, %d vCPU, %d MiB)' % (
                rec.id, rec.domain, rec.accel, rec.vcpus, rec.memory_mb))
            rt.hv.create(spec)
            rec.boot = 'cold'
            trace.step('defined and started VM %s (accel %s)' % (rec.domain, rec.accel))
    elif vm in (VmState.SHUTOFF, VmState.CRASHED):
        rt.hv.start(rec.domain)
        rec.boot = 'cold'
        trace.step('started VM %s' % rec.domain)
    # every VMM started here; and one an interrupted create left running, which may lack some
    _forward_ports(rt, rec, trace)
    if not cloned:
        pid = _place_vmm(rt, rec, trace)
        _wait_agent(rt, rec, timeout, trace)
    if rt.config.release_boot_files and pid is not None:
        _release_boot_files(rec, pid, trace)


def _forward_ports(rt, rec, trace):
    """Add the sandbox's port forwards to the VMM just started (they die with it, so every
    boot adds them). A refused forward (a host port taken) stops the VM again: a sandbox is
    up with all its forwards or not at all."""
    try:
        network.add_forwards(rt, rec, trace)
    except KataError:
        rt.hv.destroy(rec.domain)
        trace.step('destroyed VM %s (its port forwards could not be added)' % rec.domain)
        raise


def _boot_from_template(rt, rec, spec, timeout, trace):
    """Start the sandbox's VM as a clone of the template of its shape and make it ready
    (template.py): ``(True, VMM pid)``. ``(False, None)`` when there is no current template of
    that shape, or cloning failed: the half-started clone is destroyed and undefined, an
    action says why, and the caller boots cold."""
    sid = rec.id
    try:
        tpl = template.find(rt.hv, template.templates_dir(rt.store.root), spec)
    except KataError as err:
        trace.step('no template for sandbox %s (%s); booting cold' % (sid, err))
        return False, None
    if tpl is None:
        trace.step('no current template of the shape of sandbox %s; booting cold' % sid)
        return False, None
    # recorded before the VM exists: an interrupted create then knows its VM is a clone,
    # which may not have been made ready (start destroys it and boots again)
    rec.boot = 'template'
    rt.store.save_sandbox(rec)
    limit = timeout or rt.config.agent_timeout
    trace.progress('sandbox %s: starting %s from template %s' % (sid, rec.domain, tpl.key))
    t0 = time.monotonic()
    try:
        template.start_paused(rt.hv, tpl, spec)
    except KataError as err:
        trace.step('starting VM %s from template %s failed (%s); booting cold' % (rec.domain, tpl.key, err))
        return False, None
    trace.step('started VM %s paused from template %s' % (rec.domain, tpl.key))
    try:
        pid = _place_vmm(rt, rec, trace)
        template.activate(rt.hv, tpl, spec, lambda: rt.agent(sid, timeout=limit), agent_timeout=limit)
    except KataError as err:
        rt.hv.destroy(rec.domain)
        rt.hv.undefine(rec.domain)
        trace.step('the clone of template %s failed (%s); destroyed and undefined VM %s, booting cold'
                   % (tpl.key, err, rec.domain))
        return False, None
    trace.step('agent of sandbox %s is ready %.2fs after the clone started (template %s; RNG reseeded, clock '
               'set, shares mounted)' % (sid, time.monotonic() - t0, tpl.key))
    return True, pid


def _release_boot_files(rec, pid, trace):
    """Page the VMM's copies of the kernel and initrd out of it (vmm_memory.py): the guest
    has them in its own memory by now. Best effort: a failure is a note in the actions."""
    released, why = vmm_memory.release_file_pages(pid, (rec.kernel, rec.initrd))
    if why:
        trace.step('kept the VMM\'s copies of the kernel and initrd: %s' % why)
    else:
        trace.step('paged %d MiB of kernel and initrd copies out of VMM pid %d' % (released // (1 << 20), pid))


def _place_vmm(rt, rec, trace):
    """Move the VMM into the sandbox's cgroup (in every hierarchy), as Kata does, so limits
    set on the sandbox's cgroup path apply to the whole VM. Returns its pid, or None."""
    pid = rt.hv.pid(rec.domain)
    if pid is None:
        return None  # a VMM that is not a local process (remote URI, test driver)
    dirs = rt.cgroups.resolve(rec.cgroups_path or '', rec.id)
    rt.cgroups.add_pid(dirs, pid)
    trace.step('moved VMM pid %d into the sandbox cgroup' % pid)
    return pid


def record_settings(settings, accel):
    """What a new sandbox's record keeps of its ``settings`` (settings_from): the accel chosen
    (the one asked for is kept as ``accel_requested``), and its network with the port forwards
    in it (network.record: the MAC is chosen here)."""
    out = dict(settings, accel=accel, network=network.record(settings['network'], settings['ports']))
    del out['ports']
    return out


def check_create(rt, sid, settings, replacing=False):
    """Everything create refuses before it touches anything, checked without touching
    anything: a recreate consults it before it deletes, and check mode before it says "would
    create". ``replacing``: the sandbox exists and is deleted first, so its VM name is its own.
    Returns (accel, reason)."""
    validate_id(sid, 'sandbox')
    _check_boot_files(settings)
    accel, reason = choose_accel(settings['accel'])
    rt.hv.check_network(network.vm_network(network.record(settings['network'], [])))
    rt.cgroups.resolve(settings['cgroups_path'], sid)  # refuse a bad path before anything exists
    owner = rt.store.get_mapping(sid)
    if owner is not None and owner != sid:
        raise Conflict('ID %s is already used by a container of sandbox %s' % (sid, owner))
    if not replacing:
        if rt.store.load_sandbox(sid) is not None:
            raise Conflict('sandbox %s already exists' % sid)
        _check_vm_name(rt, sid)
    return accel, reason


def _check_vm_name(rt, sid):
    """The state of the VM already called as sandbox ``sid``'s would be ('missing' when the
    name is free); refuses a name taken by a domain that is not ours (HypervisorError), by a
    sandbox of another state root, or by a VM that runs without a record here."""
    name = rt.hv.domain_name(sid)
    vm = rt.hv.state(name)
    if vm == VmState.MISSING:
        return vm
    other = foreign_root(rt, name)
    if other is not None:
        raise Conflict('sandbox %s: its VM name %s is taken by a sandbox of state root %s (same '
                       'domain prefix); use another ID, or another domain_prefix for one of the '
                       'roots' % (sid, name, other))
    if vm in VmState.LIVE:
        raise Conflict('sandbox %s has no record here but its VM %s is %s: it belongs to another '
                       'state root with the same domain prefix, or it is an orphan (kata_prune '
                       'collects those)' % (sid, name, vm))
    return vm


def create(rt, sid, settings, timeout=None, trace=None, boot=True):
    """Boot a new sandbox: record, cgroups, VM, agent, hooks. Tears down on failure.

    With ``boot=False`` the sandbox is only recorded (state stopped); starting it boots it.
    """
    trace = trace or rt.trace()
    accel, reason = check_create(rt, sid, settings)
    rt.store.ensure()
    with rt.store.lock(sid, owner='create sandbox %s' % sid):
        if rt.store.load_sandbox(sid) is not None:
            raise Conflict('sandbox %s already exists' % sid)
        _drop_stale_definition(rt, sid, trace)
        rec = SandboxRecord.new(
            sid, record_settings(settings, accel),
            state=SandboxState.CREATING,
            domain=rt.hv.domain_name(sid),
            accel_requested=settings['accel'],
            accel_reason=reason,
            created_at=now(),
            libvirt_uri=rt.config.libvirt_uri,
        )
        rt.store.save_sandbox(rec)
        rt.store.set_mapping(sid, sid)
        trace.step('recorded sandbox %s' % sid)
        try:
            rec.cgroups_paths = rt.create_cgroups(settings['cgroups_path'], sid, sid)
            rt.store.save_sandbox(rec)
            if rec.cgroups_paths:
                trace.step('created %d cgroup dir(s)' % len(rec.cgroups_paths))
            if boot:
                _boot(rt, rec, timeout, trace)
                for kind in BOOT_HOOKS:
                    _run_hooks(rt, rec, kind, ContainerStatus.CREATED, trace)
            rec.state = SandboxState.RUNNING if boot else SandboxState.STOPPED
            rt.store.save_sandbox(rec)
        except BaseException:
            _teardown(rt, rec, trace, poststop=False)
            raise
    if boot:
        _poststart(rt, rec, trace)
    return rec


def _drop_stale_definition(rt, sid, trace):
    """A new sandbox gets a new VM definition. One of ours left without a record (a state
    root under /run emptied by a reboot keeps libvirt's definitions) would otherwise be booted
    with its old settings and devices; a running one may belong to another state root that
    shares the domain prefix, so it is refused, never destroyed."""
    if _check_vm_name(rt, sid) == VmState.MISSING:  # again, under the lock
        return
    name = rt.hv.domain_name(sid)
    rt.hv.undefine(name)
    trace.step('undefined the stale definition of VM %s (no record of it here)' % name)


def start(rt, sid, timeout=None, trace=None, use_template=None):
    """stopped -> running (boot again); paused -> running (resume); dead -> boot again.
    ``use_template`` (when not None) replaces the record's wish to boot from a template."""
    trace = trace or rt.trace()
    finished = False
    with rt.store.lock(sid, owner='start sandbox %s' % sid):
        rec = _must_load(rt, sid)
        if use_template is not None:
            rec.template = bool(use_template)
        vm = vm_state(rt, rec)
        # under the lock no create is in progress: a record still 'creating' is one that was
        # interrupted (its process killed, libvirt restarted under it), whatever its VM does
        state = SandboxState.CREATING if rec.state == SandboxState.CREATING else state_of(rec, vm)
        action = step('sandbox', 'start', state, sid)
        if action == 'finish':
            # finish it as create would have
            trace.step('finishing the interrupted create of sandbox %s' % sid)
            if rec.boot == 'template' and vm in VmState.LIVE:
                # a clone may have been killed before its agent reseeded, set the clock and
                # mounted the shares: it is made again rather than trusted
                rt.hv.destroy(rec.domain)
                trace.step('destroyed VM %s (a clone whose create was interrupted)' % rec.domain)
            elif vm == VmState.PAUSED:
                rt.hv.resume(rec.domain)
            _boot(rt, rec, timeout, trace)
            for kind in BOOT_HOOKS:
                _run_hooks(rt, rec, kind, ContainerStatus.CREATED, trace)
            finished = True
        elif action == 'resume':
            rt.hv.resume(rec.domain)
            trace.step('resumed VM %s' % rec.domain)
        elif action == 'boot':
            _mark_containers_stopped(rt, sid, trace)
            _boot(rt, rec, timeout, trace)
        rec.state = SandboxState.RUNNING
        rt.store.save_sandbox(rec)
    if finished:
        _poststart(rt, rec, trace)
    return rec


def _poststart(rt, rec, trace):
    """The poststart hooks of a sandbox that is up: a failure is a warning (runtime-spec)."""
    try:
        _run_hooks(rt, rec, 'poststart', ContainerStatus.RUNNING, trace)
    except KataError as err:
        trace.warn(str(err))


def running_containers(rt, sid, vm):
    """IDs of the sandbox's containers whose process runs now (asks the agent once; in a
    paused VM the agent cannot answer and the records say what was running)."""
    containers, dummy = rt.store.list_containers(sid)
    live = ctr.live_states(rt, sid, vm)
    return [c.id for c in containers if ctr.status_of(c, vm, live) == ContainerStatus.RUNNING]


def refuse_running(rt, sid, vm):
    """The seed's rule: without force, a sandbox whose containers still run is not stopped or
    deleted; Conflict names them and nothing is changed."""
    if vm not in VmState.LIVE:
        return
    running = running_containers(rt, sid, vm)
    if running:
        raise Conflict('sandbox %s still has running containers (%s): stop them first or use force=true'
                       % (sid, ', '.join(running)))


def _mark_containers_stopped(rt, sid, trace):
    containers, dummy = rt.store.list_containers(sid)
    for c in containers:
        if c.status in ContainerStatus.ACTIVE:
            c.status = ContainerStatus.STOPPED
            c.finished_at = c.finished_at or now()
            rt.store.save_container(c)
            trace.step('container %s is stopped (its VM is not running)' % c.id)


def stop(rt, sid, force=False, timeout=30, trace=None):
    """Shut the VM down and keep the record. Running containers need force."""
    trace = trace or rt.trace()
    with rt.store.lock(sid, owner='stop sandbox %s' % sid):
        rec = _must_load(rt, sid)
        vm = vm_state(rt, rec)
        if step('sandbox', 'stop', state_of(rec, vm), sid) == 'shutdown':
            if not force:
                refuse_running(rt, sid, vm)
            _shutdown_vm(rt, rec, vm, timeout, trace)
        _mark_containers_stopped(rt, sid, trace)
        rec.state = SandboxState.STOPPED
        rt.store.save_sandbox(rec)
    return rec


def _shutdown_vm(rt, rec, vm, timeout, trace):
    """Ask the agent to power the guest off; destroy the VM if it does not within timeout."""
    done = False
    if vm == VmState.RUNNING:
        try:
            with rt.agent(rec.id, timeout=5) as client:
                client.call('shutdown')
            trace.progress('sandbox %s: waiting for the guest to power off (up to %ss)' % (rec.id, timeout))
            done = _wait_vm_off(rt, rec.domain, timeout)
        except AgentError as err:
            trace.warn('sandbox %s: graceful shutdown failed (%s); destroying the VM' % (rec.id, err))
    if done:
        trace.step('guest of sandbox %s powered off' % rec.id)
    else:
        rt.hv.destroy(rec.domain)
        trace.step('destroyed VM %s' % rec.domain)


def _wait_vm_off(rt, name, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if rt.hv.state(name) in VmState.DOWN:
            return True
        time.sleep(0.1)
    return False


def pause(rt, sid, trace=None):
    """running -> paused: the VM is suspended (its memory kept, its vCPUs stopped)."""
    trace = trace or rt.trace()
    with rt.store.lock(sid, owner='pause sandbox %s' % sid):
        rec = _must_load(rt, sid)
        step('sandbox', 'pause', state_of(rec, vm_state(rt, rec)), sid, hint='start it first')
        rt.hv.suspend(rec.domain)
        trace.step('paused VM %s' % rec.domain)
        rec.state = SandboxState.PAUSED
        rt.store.save_sandbox(rec)
    return rec


def resume(rt, sid, trace=None):
    """paused -> running: the VM's vCPUs go on where they stopped."""
    trace = trace or rt.trace()
    with rt.store.lock(sid, owner='resume sandbox %s' % sid):
        rec = _must_load(rt, sid)
        if step('sandbox', 'resume', state_of(rec, vm_state(rt, rec)), sid, hint='start it') == 'resume':
            rt.hv.resume(rec.domain)
            trace.step('resumed VM %s' % rec.domain)
        rec.state = SandboxState.RUNNING
        rt.store.save_sandbox(rec)
    return rec


def update(rt, sid, changes, trace=None):
    """Update mutable settings (labels, annotations) in place."""
    trace = trace or rt.trace()
    with rt.store.lock(sid, owner='update sandbox %s' % sid):
        rec = _must_load(rt, sid)
        for key, value in changes.items():
            if key not in MUTABLE:
                raise InvalidArgument('%s cannot be changed in place' % key)
            setattr(rec, key, value)
            trace.step('updated %s of sandbox %s' % (key, sid))
        rt.store.save_sandbox(rec)
    return rec


def _must_load(rt, sid):
    rec = load(rt, sid)
    if rec is None:
        raise NotFound('sandbox %s does not exist' % sid)
    return rec


def delete(rt, sid, force=False, trace=None):
    """The seed's delete for a pod_sandbox: returns True when something was removed.

    1. validate; take the sandbox lock; load the record (missing -> nothing to do).
    2. running containers and not force -> Conflict, nothing changed.
    3. kill every container, destroy the VM and drop its definition.
    4. delete every container: its poststop hooks, cgroups, mapping, record.
    5. the sandbox's poststop hooks (failures are warnings).
    6. remove the sandbox's cgroup paths, its state and its ID mapping.
    Each step is idempotent: an interrupted delete finishes when run again.
    """
    trace = trace or rt.trace()
    validate_id(sid, 'sandbox')
    if not os.path.exists(rt.store.sandbox_dir(sid)):
        return drop_leftover_lock(rt, sid)  # nothing else to delete; do not create a lock file
    with rt.store.lock(sid, owner='delete sandbox %s' % sid):
        try:
            rec = rt.store.load_sandbox(sid)
            if rec is None and os.path.lexists(rt.store.sandbox_dir(sid)):
                # what a create that failed (or was killed) on its first write leaves
                raise CorruptRecord('sandbox %s has a directory %s but no record in it'
                                    % (sid, rt.store.sandbox_dir(sid)))
        except CorruptRecord as err:
            if not force:
                raise CorruptRecord('%s; delete it with force=true' % err)
            trace.warn('sandbox %s: %s; deleting what can be found' % (sid, err))
            # What any sandbox owns, by name alone; not saved (the file on disk is unreadable).
            rec = SandboxRecord.by_name(sid, rt.hv.domain_name(sid))
        if rec is None:
            return False
        containers, corrupt = rt.store.list_containers(sid)
        vm = _our_vm_state(rt, rec, trace)
        if not force:
            refuse_running(rt, sid, vm)
        step('sandbox', 'delete', state_of(rec, vm), sid)
        if vm == VmState.RUNNING and containers:
            try:
                with rt.agent(sid, timeout=2) as client:
                    client.call('kill_all', signal=int(signal.SIGKILL))
                trace.step('killed every container of sandbox %s' % sid)
            except AgentError as err:
                trace.step('agent unreachable (%s): the VM is destroyed with its containers' % err)
        if vm != VmState.MISSING:
            if vm in VmState.LIVE:
                rt.hv.destroy(rec.domain)
                trace.step('destroyed VM %s' % rec.domain)
            rt.hv.undefine(rec.domain)
            trace.step('undefined VM %s' % rec.domain)
        rec.state = SandboxState.DELETING
        if not rec.unreadable:
            _save_if_possible(rt, rec, force, trace)
        for c in containers:
            ctr.cleanup(rt, rec, c, trace)
        for c in corrupt:
            rt.store.remove_container(sid, c['id'])
            rt.store.remove_mapping(c['id'])
            trace.step('removed corrupt record of container %s' % c['id'])
        _teardown(rt, rec, trace, poststop=True)
    return True


def _save_if_possible(rt, rec, force, trace):
    """Save a delete's progress mark. A forced delete goes on when the state file system is
    full or read-only: what it removes needs no space, and the mark only speeds up a rerun."""
    try:
        rt.store.save_sandbox(rec)
    except KataError as err:  # a full or read-only file system, a planted non-directory
        if not force:
            raise
        trace.warn('sandbox %s: %s; deleting anyway' % (rec.id, err))


def _collect_parents_of_gone(rt, sid, notes):
    """The journal-noted dirs of sandboxes that are gone (no directory): only the sandbox that
    made a dir lists it, so once that one is gone nothing does; each is removed if empty,
    under its sandbox's lock (skipped while another operation holds it)."""
    removed = []
    by_sandbox = {}
    for note in notes:
        if note['sandbox'] != sid and not os.path.lexists(rt.store.sandbox_dir(note['sandbox'])):
            by_sandbox.setdefault(note['sandbox'], []).append(note)
    for other, mine in sorted(by_sandbox.items()):
        with rt.store.try_lock(other) as free:
            if free and not os.path.lexists(rt.store.sandbox_dir(other)):
                removed += rt.collect_cgroups(mine)
    return removed


def drop_leftover_lock(rt, sid):
    """Remove the lock file a delete killed at its very last step leaves (the sandbox has no
    directory any more); a lock held by an operation in progress stays. True if removed."""
    path = rt.store.lock_path(sid)
    if not os.path.lexists(path):
        return False
    with rt.store.try_lock(sid):
        pass  # released without a sandbox directory, the lock takes its file with it
    return not os.path.lexists(path)


def _teardown(rt, rec, trace, poststop):
    """Remove the VM (if any), hooks, cgroups, state and mapping of a sandbox. Idempotent."""
    sid = rec.id
    vm = _our_vm_state(rt, rec, trace)
    if vm in VmState.LIVE:
        rt.hv.destroy(rec.domain)
        trace.step('destroyed VM %s' % rec.domain)
    if vm != VmState.MISSING:
        rt.hv.undefine(rec.domain)
        trace.step('undefined VM %s' % rec.domain)
    if poststop:
        _run_hooks(rt, rec, 'poststop', ContainerStatus.STOPPED, trace)
    if rec.cgroups_paths:
        rt.remove_cgroups(rec.cgroups_paths, sid)
        trace.step('removed cgroup paths of sandbox %s' % sid)
    # what an interrupted create made before its record listed it (the journal has it), and
    # shared parents made by sandboxes deleted earlier (kept then for this one's dirs)
    notes = rt.store.list_cgroup_journal()
    left = rt.collect_cgroups([n for n in notes if n['sandbox'] == sid])
    left += _collect_parents_of_gone(rt, sid, notes)
    if left:
        trace.step('removed %d cgroup dir(s) no record listed' % len(left))
    share.release(rt, sid, trace)
    # Container mappings a killed delete left (each container's goes last), then the
    # sandbox's own, all before the state: remove_sandbox unlinks the lock file, and from then
    # on a new sandbox of the same ID can take a fresh lock; nothing of ours is touched after.
    for cid, owner in sorted(rt.store.list_mappings().items()):
        if owner == sid and cid != sid:
            rt.store.remove_mapping(cid)
            trace.step('removed ID mapping %s left by an interrupted delete' % cid)
    if rt.store.get_mapping(sid, unreadable=sid) == sid:  # an unreadable one points nowhere: ours
        rt.store.remove_mapping(sid)
        trace.step('removed ID mapping %s' % sid)
    rt.store.remove_sandbox(sid)
    trace.step('removed state of sandbox %s' % sid)


def list_all(rt):
    """(public dicts of every sandbox, corrupt records) — one libvirt look-up per sandbox."""
    records, corrupt = rt.store.list_sandboxes()
    out = []
    for rec in records:
        vm = vm_state(rt, rec)
        containers, dummy = rt.store.list_containers(rec.id)
        out.append(info(rt, rec, vm=vm, containers=containers))
    return out, corrupt
