# Copyright: kata.runtime contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A container's settings for the guest beyond its command: UTS names, process settings
(capabilities, rlimits, no_new_privileges, ...) and limits (its cgroup in the guest), and
the in-place update of those limits on a container that exists.

The OCI fields are read and checked in ``oci_support``; this module puts them into the
settings, the agent's ``create_container`` params, and ``update_container`` requests.
"""

from __future__ import annotations

from ansible_collections.kata.runtime.plugins.module_utils.kata import oci_support
from ansible_collections.kata.runtime.plugins.module_utils.kata.errors import Conflict, NotFound

# The settings keys this module adds to a container's settings (and record).
GUEST_KEYS = ('hostname', 'domainname', 'limits', 'process', 'oci_warnings')
# The inline limit options (kata_container), kept in the record as given.
LIMIT_OPTIONS = ('memory_mb', 'cpus', 'pids_limit')


def guest_settings(spec, opts):
    """The guest settings of a checked runtime spec plus the module options: refuses what the
    guest cannot honour (naming the field) and lists what it ignores (``oci_warnings``)."""
    warnings = oci_support.check_fields(spec)
    hostname, domainname = oci_support.names_from(spec, None)
    process = oci_support.process_from(spec, warnings)
    process['domainname'] = domainname
    out = {
        'hostname': hostname,
        'domainname': domainname,
        'process': process,
        'limits': oci_support.limits_from(spec, memory_mb=opts.get('memory_mb'), cpus=opts.get('cpus'),
                                          pids_limit=opts.get('pids_limit')),
        'oci_warnings': warnings,
    }
    for key in LIMIT_OPTIONS:
        out[key] = opts.get(key)
    return out


def keep_recorded(settings, rec, params):
    """Settings of a request without a bundle on an existing container: the recorded limits,
    with only the limit options given changed (an option left out keeps its value)."""
    given = dict((k, params.get(k)) for k in LIMIT_OPTIONS if params.get(k) is not None)
    out = dict(settings)
    out['limits'] = dict(rec.limits)
    out['limits'].update(oci_support.limits_from(None, **given))
    for key in LIMIT_OPTIONS:
        out[key] = given.get(key, getattr(rec, key))
    return out


# Fixed at creation, like the command: a bundle that changes them needs recreate.
IMMUTABLE_KEYS = ('hostname', 'domainname', 'process')


def immutable_changes(rec, settings):
    """The guest settings fixed at creation that a bundle changed. A record older than them
    holds none (null): not a change, or every such container would need recreate."""
    return [key for key in IMMUTABLE_KEYS
            if getattr(rec, key) is not None and getattr(rec, key) != settings.get(key)]


def agent_params(rec):
    """The ``create_container`` params of the guest settings (hostname: the ID by default)."""
    params = {'hostname': (rec.hostname or rec.id)[:63], 'limits': dict(rec.limits)}
    process = rec.process
    if process is not None:
        params['process'] = process
    return params


def check_fits(settings, srec):
    """A limit larger than the sandbox fails, naming it (memory_mb, vcpus)."""
    oci_support.check_fits(settings.get('limits') or {}, srec)


def changes(rec, settings):
    """The limit files whose value changes from ``rec`` to ``settings`` (a dropped limit goes
    back to its default); {} when nothing changes."""
    before = rec.limits
    after = settings.get('limits') or {}
    out = {}
    for name in oci_support.LIMIT_FILES:
        old = before.get(name)
        new = after.get(name)
        if old != new:
            out[name] = oci_support.LIMIT_DEFAULTS[name] if new is None else new
    return out


def update(rt, sid, cid, settings, live, trace):
    """Apply new limits to a container in place: its cgroup in the guest (when it has a
    process or is about to: created or running), then its record. No restart."""
    from ansible_collections.kata.runtime.plugins.module_utils.kata import container as ctr
    with rt.store.lock(sid, owner='update container %s' % cid):
        rec = rt.store.load_container(sid, cid)
        if rec is None:
            raise NotFound('container %s does not exist (it was deleted meanwhile)' % cid)
        srec = rt.store.load_sandbox(sid)
        if srec is None:
            raise NotFound('sandbox %s does not exist' % sid)
        check_fits(settings, srec)
        writes = changes(rec, settings)
        if live:
            vm = rt.hv.state(srec.domain)
            status = ctr.status_of(rec, vm, ctr.live_states(rt, sid, vm))
            if status in ('created', 'running'):
                if writes:
                    with rt.agent(sid) as client:
                        res = client.call('update_container', id=cid, limits=writes)
                    trace.step('updated limits of container %s in the guest: %s'
                               % (cid, ', '.join('%s=%s' % (k, res['cgroup'].get(k, '?')) for k in sorted(writes))))
            elif status != 'stopped':
                raise Conflict('container %s is %s: its limits cannot be changed now' % (cid, status))
        rec.limits = dict(settings.get('limits') or {})
        for key in LIMIT_OPTIONS:
            setattr(rec, key, settings.get(key))
        rt.store.save_container(rec)
        trace.step('recorded the limits of container %s' % cid)
    return rec


def stats(rt, cid):
    """What the container's cgroup in the guest holds now (limits and usage)."""
    from ansible_collections.kata.runtime.plugins.module_utils.kata import container as ctr
    sid, _rec = ctr.find(rt, cid)
    if sid is None:
        raise NotFound('container %s does not exist' % cid)
    with rt.agent(sid) as client:
        return client.call('container_stats', id=cid)['cgroup']
