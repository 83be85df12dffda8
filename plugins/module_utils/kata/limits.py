# Copyright: kata.runtime contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A container's settings for the guest beyond its command: UTS names, process settings
(capabilities, rlimits, no_new_privileges, ...) and limits (its cgroup in the guest), and
what an in-place update of those limits writes (``container.update_limits`` applies it).

The OCI fields are read and checked in ``oci_support``; this module puts them into the
settings, the agent's ``create_container`` params, and ``update_container`` requests.
"""

from __future__ import annotations

from ansible_collections.kata.runtime.plugins.module_utils.kata import oci_support

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
