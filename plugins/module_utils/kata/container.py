# Copyright: kata.runtime contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Container lifecycle inside a sandbox's guest: create, start, stop, delete, live status.

The host side of a container is: its record, its cgroup paths, its ID mapping, the host
hooks, and its rootfs made visible to the guest under the sandbox's 9p share
(<shared>/<cid>/rootfs). The process itself runs in the guest, driven through the agent.
"""

from __future__ import annotations

import os
import signal as signals
import time

from ansible_collections.kata.runtime.plugins.module_utils.kata import hooks as oci_hooks
from ansible_collections.kata.runtime.plugins.module_utils.kata import limits as guest
from ansible_collections.kata.runtime.plugins.module_utils.kata import oci, share, volumes
from ansible_collections.kata.runtime.plugins.module_utils.kata.errors import (
    AgentError,
    Conflict,
    CorruptRecord,
    InvalidArgument,
    KataError,
    NotFound,
    StateWriteError,
)
from ansible_collections.kata.runtime.plugins.module_utils.kata.ids import validate_id
from ansible_collections.kata.runtime.plugins.module_utils.kata.model import (
    ContainerRecord,
    ContainerStatus,
    SandboxRecord,
    VmState,
    observed_sandbox_state,
    step,
)
from ansible_collections.kata.runtime.plugins.module_utils.kata.runtime import coerce_str_dict, now


def settings_from(opts):
    """The desired container settings from module options (bundle or inline), validated."""
    labels = coerce_str_dict(opts.get('labels') or {}, 'labels')
    if opts.get('bundle'):
        inline = [k for k in ('rootfs', 'command', 'env', 'cwd', 'user') if opts.get(k) not in (None, [], {})]
        if inline:
            raise InvalidArgument('bundle %s and inline %s are mutually exclusive'
                                  % (opts['bundle'], ', '.join(inline)))
        bundle = os.path.abspath(opts['bundle'])
        spec = oci.load_bundle(bundle)
    else:
        if not opts.get('rootfs') or not opts.get('command'):
            raise InvalidArgument('a container needs either bundle, or rootfs and command')
        if not os.path.isabs(opts['rootfs']):
            raise InvalidArgument('rootfs must be an absolute path, got %r' % (opts['rootfs'],))
        bundle = None
        spec = oci.generate_spec(opts['rootfs'], list(opts['command']), env=opts.get('env'),
                                 cwd=opts.get('cwd') or '/', user=opts.get('user'), hooks=opts.get('hooks'),
                                 cgroups_path=opts.get('cgroups_path'), annotations=opts.get('annotations'),
                                 readonly=bool(opts.get('readonly_rootfs')))
    # Options given next to a bundle add to / override what its config.json says.
    annotations = dict(spec.get('annotations') or {})
    annotations.update(opts.get('annotations') or {})
    hooks = spec.get('hooks') or {}
    if bundle and opts.get('hooks'):
        hooks = opts['hooks']
    cgroups_path = opts.get('cgroups_path') or (spec.get('linux') or {}).get('cgroupsPath') or ''
    process = spec['process']
    user = process.get('user') or {}
    rootfs = spec['root']['path']
    if bundle and not os.path.isabs(rootfs):
        rootfs = os.path.join(bundle, rootfs)
    if not os.path.isdir(rootfs):
        raise InvalidArgument('rootfs %s is not a directory' % rootfs)
    readonly = bool(spec['root'].get('readonly'))
    if opts.get('readonly_rootfs') is not None:
        readonly = bool(opts['readonly_rootfs'])  # next to a bundle, the option overrides
    # config.json's mounts (an inline container's generated ones), then the volumes option's
    mounts = volumes.parse_mounts(spec.get('mounts'), bundle=bundle) + volumes.parse_volumes(opts.get('volumes'))
    out = {
        'bundle': bundle,
        'rootfs': os.path.realpath(rootfs),
        'readonly_rootfs': readonly,
        'args': list(process['args']),
        'env': list(process.get('env') or []),
        'cwd': process.get('cwd') or '/',
        'user': '%d:%d' % (int(user.get('uid', 0)), int(user.get('gid', 0))),
        'hooks': oci.validate_hooks(hooks),
        'cgroups_path': cgroups_path,
        'annotations': annotations,
        'labels': dict(labels),
        'type': oci.container_type(annotations),
        'mounts': mounts,
    }
    out.update(guest.guest_settings(spec, opts))  # refuses what the guest cannot honour
    return out


# ---------------------------------------------------------------------------------------------
# observation

def observe_live(rt, sid, vm):
    """(live, error): what live_states returns, and why a running VM's agent gave nothing.

    Any AgentError (unreachable, timed out, or a reply that is not a list of container states:
    the guest is untrusted) makes the agent unusable for this look-up and nothing more; error
    is its message, for the info modules to show.
    """
    if vm != VmState.RUNNING:
        return None, None  # not asked: a paused guest cannot answer, a stopped one has nothing
    try:
        with rt.agent(sid, timeout=5) as client:
            states = client.call('list_containers')
    except AgentError as err:
        return None, str(err)
    return {s['id']: s for s in states}, None


def live_states(rt, sid, vm):
    """{cid: agent state} for the containers the agent knows, or None if it can't be asked."""
    return observe_live(rt, sid, vm)[0]


def status_of(rec, vm, live, agent_error=None):
    """OCI status from the record, the VM state and what the agent reports.

    ``unknown`` when the VM runs and the agent could not be asked (``agent_error``, from
    observe_live): what the info modules report instead of a guess. Lifecycle decisions pass
    no error and get the record, which keeps their refusals (still running, no force) as
    careful as the record is.
    """
    recorded = rec.status or ContainerStatus.CREATING
    if recorded in (ContainerStatus.STOPPED, ContainerStatus.DELETING):
        return ContainerStatus.STOPPED
    if vm not in VmState.LIVE:
        return ContainerStatus.STOPPED  # the VM is gone: so is every process in it
    if live is None:
        if vm == VmState.RUNNING and agent_error is not None:
            return ContainerStatus.UNKNOWN
        return recorded  # paused VM (its agent cannot answer): the record is the best we know
    state = live.get(rec.id)
    if state is None:
        return ContainerStatus.CREATING if recorded == ContainerStatus.CREATING else ContainerStatus.STOPPED
    return state.get('status') or recorded


def info(rt, rec, vm=None, live=None, observed=True, agent_error=None):
    """The public dict of one container (the contract's `container` return).

    Status ``unknown`` comes with ``error``: why the agent of its running VM could not say.
    """
    sid = rec.sandbox
    if observed and vm is None:
        srec = rt.store.load_sandbox(sid)
        vm = rt.hv.state(srec.domain) if srec else VmState.MISSING
        live, agent_error = observe_live(rt, sid, vm)
    status = status_of(rec, vm, live, agent_error) if observed else rec.status
    state = (live or {}).get(rec.id) or {}
    stdout_path, stderr_path = share.output_paths(rt.store, sid, rec.id)
    exit_code = state.get('exit_code', rec.exit_code)
    out = {
        'id': rec.id,
        'sandbox': sid,
        'type': rec.type,
        'status': status,
        'pid': state.get('pid', rec.pid) if status in (ContainerStatus.CREATED, ContainerStatus.RUNNING) else None,
        'exit_code': exit_code if status == ContainerStatus.STOPPED else None,
        'bundle': rec.bundle or rec.bundle_dir,
        'rootfs': rec.rootfs,
        'readonly_rootfs': rec.readonly_rootfs,
        'args': rec.args,
        'annotations': rec.annotations or {},
        'labels': rec.labels or {},
        'cgroups_path': rec.cgroups_path or '',
        'cgroups_paths': rec.cgroups_paths or [],
        'limits': dict(rec.limits or {}),
        'stdout_path': stdout_path,
        'stderr_path': stderr_path,
        'created_at': rec.created_at,
        'started_at': rec.started_at,
        'finished_at': state.get('finished_at') or rec.finished_at,
    }
    if status == ContainerStatus.UNKNOWN:
        out['error'] = agent_error
    return out


def sandbox_as_container(rt, srec, vm):
    """A sandbox seen as its own pod_sandbox container."""
    state = observed_sandbox_state(srec.state, vm)
    # its "process" is the VM: running while the VM is up, paused or not
    status = ContainerStatus.RUNNING if state in VmState.LIVE else ContainerStatus.STOPPED
    return {
        'id': srec.id, 'sandbox': srec.id, 'type': 'pod_sandbox', 'status': status,
        'pid': rt.hv.pid(srec.domain) if status == ContainerStatus.RUNNING else None, 'exit_code': None,
        'bundle': None, 'rootfs': None, 'args': None,
        'annotations': srec.annotations or {}, 'labels': srec.labels or {},
        'cgroups_path': srec.cgroups_path or '', 'cgroups_paths': srec.cgroups_paths or [],
        'limits': {}, 'stdout_path': None, 'stderr_path': None, 'created_at': srec.created_at,
        'started_at': srec.created_at, 'finished_at': None,
    }


def find(rt, cid):
    """(sandbox id, record) of a container through its mapping; (None, None) if unknown."""
    validate_id(cid, 'container')
    sid = rt.store.get_mapping(cid)
    if sid is None:
        return None, None
    if sid == cid:
        return sid, None  # the sandbox itself (pod_sandbox)
    return sid, rt.store.load_container(sid, cid)


# ---------------------------------------------------------------------------------------------
# operations

def _state_json(rt, rec, status):
    annotations = dict(rec.annotations or {})
    annotations.setdefault(oci.KATA_CONTAINER_TYPE_KEY, rec.type)
    # An inline container's bundle is the host-owned bundles/<cid> (records older than it
    # name the rootfs, which the guest can no longer write either: it is shared read-only).
    bundle = rec.bundle or rec.bundle_dir or rec.rootfs
    return oci.state(rec.id, status, rec.pid if status in (ContainerStatus.CREATED, ContainerStatus.RUNNING) else None,
                     bundle, annotations)


def _write_bundle(rt, sid, rec, trace):
    """An inline container gets a real bundle: bundles/<cid>/config.json, 0700/0600, outside
    anything the guest can write. Hooks see it as the state's bundle and run in it."""
    path = share.bundle_dir(rt.store, sid, rec.id)
    env = dict(item.partition('=')[::2] for item in rec.env)
    spec = oci.generate_spec(rec.rootfs, rec.args, env=env, cwd=rec.cwd,
                             user=rec.user, hooks=rec.hooks or None,
                             cgroups_path=rec.cgroups_path or None, annotations=rec.annotations,
                             readonly=rec.readonly_rootfs)
    if rec.mounts:
        spec['mounts'] = [dict(m, options=list(m['options'])) for m in rec.mounts]  # with the volumes
    rt.store.write_private_json(path, 'config.json', spec)
    rec.bundle_dir = path
    trace.step('wrote bundle %s of container %s' % (path, rec.id))


def _run_hooks(rt, rec, kind, status, trace):
    hooks = rec.hooks or {}
    if not hooks.get(kind):
        return
    for w in oci_hooks.run_hooks(kind, hooks, _state_json(rt, rec, status), rt.config.hook_timeout):
        trace.warn(w)
    trace.step('ran %d %s hook(s) of container %s' % (len(hooks[kind]), kind, rec.id))


def _sandbox_running(rt, sid):
    srec = rt.store.load_sandbox(sid)
    if srec is None:
        raise NotFound('sandbox %s does not exist' % sid)
    vm = rt.hv.state(srec.domain)
    if vm != VmState.RUNNING:
        raise Conflict('sandbox %s is %s: containers need a running sandbox'
                       % (sid, observed_sandbox_state(srec.state, vm)))
    return srec


def check_create(rt, sid, cid, settings, replacing=False):
    """Everything create refuses before it touches anything, checked without touching
    anything (a recreate consults it before it deletes, check mode before "would create").
    ``replacing``: the container exists in ``sid`` and is about to be deleted first."""
    validate_id(sid, 'sandbox')
    validate_id(cid, 'container')
    if settings.get('type') == 'pod_sandbox':
        raise InvalidArgument('container %s is annotated as a pod_sandbox: create sandboxes with '
                              'kata.runtime.kata_sandbox' % cid)
    rt.cgroups.resolve(settings['cgroups_path'], cid)
    volumes.check_sources(rt, settings.get('mounts') or [])
    srec = _sandbox_running(rt, sid)
    guest.check_fits(settings, srec)
    owner = rt.store.get_mapping(cid)
    if owner is not None and not (replacing and owner == sid):
        raise Conflict('ID %s is already used in sandbox %s' % (cid, owner))
    return srec


def create(rt, sid, cid, settings, trace=None):
    """Create a container in a running sandbox: record, cgroups, rootfs share, hooks, agent."""
    trace = trace or rt.trace()
    check_create(rt, sid, cid, settings)
    with rt.store.lock(sid, owner='create container %s' % cid):
        srec = check_create(rt, sid, cid, settings)  # again, under the lock
        rec = ContainerRecord.new(sid, cid, settings, status=ContainerStatus.CREATING, created_at=now())
        # the mapping first: it is how a delete finds the container, so whatever is made from
        # here on can be found again by a delete, even if this process dies
        rt.store.set_mapping(cid, sid)
        asked_guest = False
        try:
            rt.store.save_container(rec)
            trace.step('recorded container %s in sandbox %s' % (cid, sid))
            rec.cgroups_paths = rt.create_cgroups(settings['cgroups_path'], cid, sid)
            rt.store.save_container(rec)
            if not rec.bundle:
                _write_bundle(rt, sid, rec, trace)
            # the record names the mount point before the mount exists (see cleanup)
            share.bind_rootfs(rt, srec, rec, trace, before_mount=lambda: rt.store.save_container(rec))
            volumes.bind(rt, srec, rec, trace, save=lambda: rt.store.save_container(rec))
            guest_mounts, warnings = volumes.guest_plan(cid, rec.mounts)
            for warning in warnings:
                trace.warn(warning)
            for kind in ('prestart', 'createRuntime'):
                _run_hooks(rt, rec, kind, ContainerStatus.CREATING, trace)
            uid, gid = (int(x) for x in rec.user.split(':'))
            asked_guest = True
            params = dict(id=cid, args=rec.args, env=rec.env, cwd=rec.cwd, uid=uid, gid=gid,
                          readonly=bool(rec.readonly_rootfs), **guest.agent_params(rec))
            if guest_mounts:
                params['mounts'] = guest_mounts
            with rt.agent(sid) as client:
                try:
                    client.call('create_container', **params)
                except AgentError as err:
                    if 'already exists' not in str(err):
                        raise
                    # The guest still has a container of this ID that the host forgot (an
                    # earlier create or delete whose guest calls timed out). The ID is ours
                    # (mapping taken, lock held): that one goes, then the create is retried.
                    _drop_stale_in_guest(rt, sid, cid, trace)
                    client.call('create_container', **params)
            trace.step('created container %s in the guest' % cid)
            for warning in rec.oci_warnings:
                trace.warn('container %s: %s' % (cid, warning))
            _run_hooks(rt, rec, 'createContainer', ContainerStatus.CREATED, trace)
            rec.status = ContainerStatus.CREATED
            rt.store.save_container(rec)
        except BaseException:
            if asked_guest:
                # the guest may have made it even if its answer never came (late, lost)
                _remove_in_guest(rt, sid, cid, trace)
            cleanup(rt, srec, rec, trace, poststop=False)
            raise
    return rec


def start(rt, cid, trace=None):
    """created -> running. A failing startContainer hook or start tears the container down."""
    trace = trace or rt.trace()
    sid, rec = _must_find(rt, cid)
    with rt.store.lock(sid, owner='start container %s' % cid):
        srec = _sandbox_running(rt, sid)
        rec = _reload(rt, sid, cid)
        step('container', 'start', status_of(rec, VmState.RUNNING, live_states(rt, sid, VmState.RUNNING)), cid)
        try:
            _run_hooks(rt, rec, 'startContainer', ContainerStatus.CREATED, trace)
            with rt.agent(sid) as client:
                res = client.call('start_container', id=cid)
        except BaseException:
            _remove_in_guest(rt, sid, cid, trace)
            cleanup(rt, srec, rec, trace, poststop=False)
            raise
        rec.status, rec.pid, rec.started_at = ContainerStatus.RUNNING, (res or {}).get('pid'), now()
        rt.store.save_container(rec)
        trace.step('started container %s (guest pid %s)' % (cid, rec.pid))
    try:
        _run_hooks(rt, rec, 'poststart', ContainerStatus.RUNNING, trace)
    except KataError as err:
        trace.warn(str(err))
    return rec


def update_limits(rt, sid, cid, settings, live, trace=None):
    """Apply new limits (``settings['limits']``, limits.guest_settings) to a container in place:
    its cgroup in the guest when it has a process or is about to (created or running), then
    its record. No restart; ``live=False`` records them only."""
    trace = trace or rt.trace()
    with rt.store.lock(sid, owner='update container %s' % cid):
        rec = _reload(rt, sid, cid)
        srec = rt.store.load_sandbox(sid)
        if srec is None:
            raise NotFound('sandbox %s does not exist' % sid)
        guest.check_fits(settings, srec)
        writes = guest.changes(rec, settings)
        if live:
            vm = rt.hv.state(srec.domain)
            status = status_of(rec, vm, live_states(rt, sid, vm))
            if status in (ContainerStatus.CREATED, ContainerStatus.RUNNING):
                if writes:
                    with rt.agent(sid) as client:
                        res = client.call('update_container', id=cid, limits=writes)
                    trace.step('updated limits of container %s in the guest: %s'
                               % (cid, ', '.join('%s=%s' % (k, res['cgroup'].get(k, '?')) for k in sorted(writes))))
            elif status != ContainerStatus.STOPPED:
                raise Conflict('container %s is %s: its limits cannot be changed now' % (cid, status))
        rec.limits = dict(settings.get('limits') or {})
        for key in guest.LIMIT_OPTIONS:
            setattr(rec, key, settings.get(key))
        rt.store.save_container(rec)
        trace.step('recorded the limits of container %s' % cid)
    return rec


def guest_stats(rt, cid):
    """What the container's cgroup in the guest holds now (limits and usage)."""
    sid, dummy = _must_find(rt, cid)
    with rt.agent(sid) as client:
        return client.call('container_stats', id=cid)['cgroup']


def _signal_number(sig):
    if isinstance(sig, int):
        return sig
    name = str(sig).upper()
    if name.isdigit():
        return int(name)
    if not name.startswith('SIG'):
        name = 'SIG' + name
    try:
        return int(getattr(signals, name))
    except AttributeError:
        raise InvalidArgument('unknown signal %r' % (sig,))


def _kill_and_wait(rt, sid, cid, sig, timeout, trace):
    """Send sig, wait up to timeout, then SIGKILL. Returns the agent's final state."""
    with rt.agent(sid, timeout=timeout + 10) as client:
        client.call('signal_container', id=cid, signal=sig)
        trace.step('sent signal %d to container %s' % (sig, cid))
        res = client.call('wait_container', id=cid, timeout=timeout)
        if res.get('status') != ContainerStatus.STOPPED and sig != signals.SIGKILL:
            client.call('signal_container', id=cid, signal=int(signals.SIGKILL))
            trace.step('container %s still running after %ss: sent SIGKILL' % (cid, timeout))
            res = client.call('wait_container', id=cid, timeout=10)
    return res


def stop(rt, cid, sig='SIGTERM', timeout=10, trace=None):
    """running -> stopped: signal, wait stop_timeout, then SIGKILL."""
    trace = trace or rt.trace()
    signum = _signal_number(sig)
    sid, rec = _must_find(rt, cid)
    with rt.store.lock(sid, owner='stop container %s' % cid):
        srec = rt.store.load_sandbox(sid)
        vm = rt.hv.state(srec.domain) if srec else VmState.MISSING
        live = live_states(rt, sid, vm)
        rec = _reload(rt, sid, cid)
        if step('container', 'stop', status_of(rec, vm, live), cid) == 'kill':
            res = _kill_and_wait(rt, sid, cid, signum, timeout, trace)
            rec.exit_code = res.get('exit_code')
        elif live and cid in live:
            rec.exit_code = live[cid].get('exit_code')
        if rec.status != ContainerStatus.STOPPED:
            rec.status, rec.finished_at = ContainerStatus.STOPPED, rec.finished_at or now()
            rt.store.save_container(rec)
        if srec is not None and rec.volume_mounts:
            volumes.unbind(rt, srec, rec, trace)  # its process is gone: so is its need of them
            rt.store.save_container(rec)
    return rec


def _reload(rt, sid, cid):
    """The record again, under the sandbox's lock: a delete may have run since it was found."""
    rec = rt.store.load_container(sid, cid)
    if rec is None:
        raise NotFound('container %s does not exist (it was deleted meanwhile)' % cid)
    return rec


def _must_find(rt, cid):
    sid, rec = find(rt, cid)
    if sid is None or (rec is None and sid != cid):
        raise NotFound('container %s does not exist' % cid)
    return sid, rec


def _drop_stale_in_guest(rt, sid, cid, trace):
    try:
        _kill_and_wait(rt, sid, cid, int(signals.SIGKILL), 10, trace)
    except AgentError as err:
        trace.step('container %s left in the guest did not take SIGKILL (%s)' % (cid, err))
    _remove_in_guest(rt, sid, cid, trace)
    trace.warn('container %s: the guest still had a container of this ID that the host had no record '
               'of (an earlier create or delete timed out); it was removed' % cid)


def _remove_in_guest(rt, sid, cid, trace):
    try:
        with rt.agent(sid, timeout=5) as client:
            client.call('remove_container', id=cid)
        trace.step('removed container %s in the guest' % cid)
    except AgentError as err:
        trace.step('container %s not removed in the guest (%s)' % (cid, err))


def delete(rt, cid, force=False, trace=None):
    """The seed's delete: returns True when something was removed.

    1. validate; find the sandbox through the mapping; take its lock; load the record.
    2. type pod_sandbox -> the whole sandbox goes (sandbox.delete).
    3. running and not force -> Conflict, nothing changed; running and force -> SIGKILL, wait.
    4. remove the container in the guest, then (in cleanup) its record.
    5. poststop hooks with the state on stdin: a failure is a warning, the rest go on.
    6. remove the cgroup paths and the ID mapping.
    """
    trace = trace or rt.trace()
    try:
        sid, rec = find(rt, cid)
    except CorruptRecord as err:
        if not force:
            raise CorruptRecord('%s; delete it with force=true' % err)
        return _delete_unreadable(rt, cid, err, trace)
    if sid is None:
        return False
    if sid == cid:
        from ansible_collections.kata.runtime.plugins.module_utils.kata import sandbox as sbx
        return sbx.delete(rt, sid, force=force, trace=trace)
    with rt.store.lock(sid, owner='delete container %s' % cid):
        try:
            rec = rt.store.load_container(sid, cid)
        except CorruptRecord as err:
            if not force:
                raise CorruptRecord('%s; delete it with force=true' % err)
            return _delete_unreadable(rt, cid, err, trace)
        if rec is None:
            # a create or a delete that was killed: what it left is found by name
            _remove_by_name(rt, _sandbox_or_name(rt, sid, True), cid, trace)
            trace.step('removed what was left of container %s' % cid)
            return True
        srec = _sandbox_or_name(rt, sid, force)
        vm = rt.hv.state(srec.domain)
        if step('container', 'delete', status_of(rec, vm, live_states(rt, sid, vm)), cid) == 'kill':
            if not force:
                raise Conflict('container %s is still running: stop it first or use force=true' % cid)
            try:
                res = _kill_and_wait(rt, sid, cid, int(signals.SIGKILL), 10, trace)
                rec.exit_code = res.get('exit_code')
            except AgentError as err:
                # A guest that will not (or cannot) answer does not stop a forced delete: the
                # host side goes now; the process ends with the sandbox's VM at the latest.
                trace.warn('container %s: could not kill it through the agent (%s); its host '
                           'side is removed, its process ends with sandbox %s' % (cid, err, sid))
        if vm == VmState.RUNNING:
            _remove_in_guest(rt, sid, cid, trace)
        cleanup(rt, srec, rec, trace)
    return True


def _sandbox_or_name(rt, sid, force):
    """The sandbox's record; what its name alone says when there is none (or, forced, when
    it cannot be read)."""
    try:
        srec = rt.store.load_sandbox(sid)
    except CorruptRecord:
        if not force:
            raise
        srec = None
    return srec or SandboxRecord.by_name(sid, rt.hv.domain_name(sid))


def _delete_unreadable(rt, cid, err, trace):
    """Forced delete of a container whose mapping or record cannot be read: what it owns is
    found by name (its process in the guest, its rootfs mount point, its directories, the
    cgroup dirs the journal noted for it); its hooks are unknown and do not run."""
    trace.warn('container %s: %s; deleting what can be found (its hooks do not run)' % (cid, err))
    try:
        sid = rt.store.get_mapping(cid)
    except CorruptRecord:
        rt.store.remove_mapping(cid)
        trace.step('removed unreadable ID mapping %s' % cid)
        return True
    if sid is None:
        return False
    with rt.store.lock(sid, owner='delete container %s' % cid):
        srec = _sandbox_or_name(rt, sid, True)
        if rt.hv.state(srec.domain) == VmState.RUNNING:
            try:
                _kill_and_wait(rt, sid, cid, int(signals.SIGKILL), 10, trace)
            except AgentError as agent_err:
                trace.warn('container %s: could not kill it through the agent (%s); its process '
                           'ends with sandbox %s' % (cid, agent_err, sid))
            _remove_in_guest(rt, sid, cid, trace)
        _remove_by_name(rt, srec, cid, trace)
        trace.step('deleted container %s (unreadable record)' % cid)
    return True


def _save_progress(rt, rec, trace):
    """Save a cleanup's progress mark; a full or read-only state file system does not stop the
    cleanup (removing needs no space; the mark only spares a rerun its poststop hooks)."""
    try:
        rt.store.save_container(rec)
    except StateWriteError as err:
        trace.warn('container %s: %s; removing it anyway' % (rec.id, err))


def cleanup(rt, srec, rec, trace, poststop=True):
    """Host-side removal of one container, after its process is gone. Idempotent.

    Marks the record 'deleting' first so an interrupted cleanup resumes here; runs poststop
    hooks once (failures are warnings), removes the rootfs share, cgroups, directories, the
    record, and the mapping last (how a delete run again finds what is left).
    """
    cid = rec.id
    if rec.status != ContainerStatus.DELETING:
        rec.status = ContainerStatus.DELETING
        rec.finished_at = rec.finished_at or now()
        _save_progress(rt, rec, trace)
    share.unbind_rootfs(rt, srec, rec, trace)
    volumes.unbind(rt, srec, rec, trace)
    if poststop and not rec.poststop_done:
        _run_hooks(rt, rec, 'poststop', ContainerStatus.STOPPED, trace)
        rec.poststop_done = True
        _save_progress(rt, rec, trace)
    if rec.cgroups_paths:
        rt.remove_cgroups(rec.cgroups_paths, cid)
        trace.step('removed cgroup paths of container %s' % cid)
    _remove_by_name(rt, srec, cid, trace)
    trace.step('deleted container %s' % cid)


def _remove_by_name(rt, srec, cid, trace):
    """What a container owns by its name alone, mapping last: until the mapping goes, a
    delete run again (after this one was killed) finds the container and finishes here."""
    sid = srec.id
    target = os.path.join(share.shared_dir(rt.store, sid), cid, 'rootfs')
    stand_in = ContainerRecord.by_name(sid, cid)
    stand_in.rootfs_mount = {'target': target, 'host': share.mounted_on_host(target)}
    share.unbind_rootfs(rt, srec, stand_in, trace)
    volumes.unbind(rt, srec, stand_in, trace)
    # what an interrupted create made before the record listed it (the journal has it)
    rt.collect_cgroups([n for n in rt.store.list_cgroup_journal() if n['sandbox'] == sid and n['owner'] == cid])
    share.remove_container_dirs(rt, sid, cid)
    rt.store.remove_container(sid, cid)
    if rt.store.get_mapping(cid, unreadable=None) in (sid, None) and rt.store.remove_mapping(cid):
        trace.step('removed ID mapping %s' % cid)


def wait_for(rt, cid, timeout, poll=0.2):
    """Wait until the container stops (for tests and playbooks that run to completion)."""
    deadline = time.monotonic() + timeout
    while True:
        sid, rec = _must_find(rt, cid)
        out = info(rt, rec)
        if out['status'] == ContainerStatus.STOPPED or time.monotonic() >= deadline:
            return out
        time.sleep(poll)


def list_all(rt, sandboxes=None):
    """(public dicts of the containers of every sandbox or of ``sandboxes``, corrupt records).

    One libvirt look-up and one agent call per sandbox, not per container. A sandbox whose
    agent cannot be asked lists its containers as ``unknown`` and the others as usual.
    """
    records, corrupt = rt.store.list_sandboxes()
    out = []
    for srec in records:
        sid = srec.id
        if sandboxes is not None and sid not in sandboxes:
            continue
        vm = rt.hv.state(srec.domain)
        containers, bad = rt.store.list_containers(sid)
        corrupt.extend(bad)
        live, agent_error = observe_live(rt, sid, vm) if containers else (None, None)
        out.append(sandbox_as_container(rt, srec, vm))
        for rec in containers:
            out.append(info(rt, rec, vm=vm, live=live, agent_error=agent_error))
    return out, corrupt
