# Copyright: kata.runtime contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The records this runtime keeps, their states, and which operation may run in which state.

``SandboxRecord`` and ``ContainerRecord`` are what ``store.py`` loads and saves (one JSON file
each, schema ``RECORD_VERSION``). ``from_json`` is the one place a record file is parsed: a
file it cannot read (another schema version, a field of the wrong type, a field it does not
know) is refused with ``CorruptRecord`` naming the file and the field, never half-loaded.

States come in three kinds, kept apart on purpose:

- ``VmState``: what the hypervisor says of the VM now (``Hypervisor.state``);
- ``SandboxState``: what a sandbox record means (its intent), and what users see once the
  live VM is taken into account (``observed_sandbox_state``: ``dead`` is never recorded, it
  is what an expected VM that is gone looks like);
- ``ContainerStatus``: the OCI status of a container, plus ``deleting`` (a cleanup in
  progress, shown as ``stopped``) and ``unknown`` (the agent could not say; shown only).

``SANDBOX_TRANSITIONS`` and ``CONTAINER_TRANSITIONS`` say, per operation, what it does from
each state; ``step`` looks an operation up and refuses the states it has no entry for.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, List, Optional

from ansible_collections.kata.runtime.plugins.module_utils.kata.errors import Conflict, CorruptRecord, InvalidArgument

# The schema of both record kinds; a record of another version is refused, not guessed at.
RECORD_VERSION = 1


class VmState:
    """Values of ``Hypervisor.state()``."""
    RUNNING = 'running'
    PAUSED = 'paused'
    SHUTOFF = 'shutoff'
    CRASHED = 'crashed'
    MISSING = 'missing'
    ALL = (RUNNING, PAUSED, SHUTOFF, CRASHED, MISSING)
    # a VMM process exists (and the guest's processes with it)
    LIVE = (RUNNING, PAUSED)
    # no guest runs: nothing in it can be asked or killed
    DOWN = (SHUTOFF, CRASHED, MISSING)


class SandboxState:
    """A sandbox record's ``state``, and (with DEAD) the state users see."""
    CREATING = 'creating'
    RUNNING = 'running'
    PAUSED = 'paused'
    STOPPED = 'stopped'
    DELETING = 'deleting'
    DEAD = 'dead'  # observed only: the record expects a VM and there is none
    RECORDED = (CREATING, RUNNING, PAUSED, STOPPED, DELETING)


class ContainerStatus:
    """A container record's ``status`` (OCI runtime-spec statuses plus DELETING), and UNKNOWN."""
    CREATING = 'creating'
    CREATED = 'created'
    RUNNING = 'running'
    STOPPED = 'stopped'
    DELETING = 'deleting'  # its cleanup started: shown as stopped
    UNKNOWN = 'unknown'  # observed only: the running VM's agent could not be asked
    RECORDED = (CREATING, CREATED, RUNNING, STOPPED, DELETING)
    # the OCI statuses, as the info modules and hooks show them
    OCI = (CREATING, CREATED, RUNNING, STOPPED)
    # a process exists (or is being made) in the guest
    ACTIVE = (CREATING, CREATED, RUNNING)


def observed_sandbox_state(recorded, vm):
    """The sandbox state users see, from the record's ``state`` and the live VM state.

    ``dead``: the record expects a VM (running or paused) and there is none: the VM crashed
    or the host rebooted; never reported as running. ``creating``: the VM is up but its
    create has not finished (in progress, or interrupted: start finishes it).
    """
    if vm in VmState.LIVE:
        return SandboxState.CREATING if recorded == SandboxState.CREATING else vm
    if recorded == SandboxState.STOPPED:
        return SandboxState.STOPPED
    return SandboxState.DEAD


# ---------------------------------------------------------------------------------------------
# transitions

# What each sandbox operation does from each state it accepts (states as users see them; a
# record still ``creating`` is looked up as CREATING whatever its VM does, since under the lock
# no create is in progress and start finishes it). A state missing from a row is refused.
SANDBOX_TRANSITIONS = {
    'start': {
        SandboxState.CREATING: 'finish',   # boot (again) and run the create-time hooks
        SandboxState.RUNNING: 'none',
        SandboxState.PAUSED: 'resume',
        SandboxState.STOPPED: 'boot',
        SandboxState.DEAD: 'boot',
    },
    'resume': {
        SandboxState.PAUSED: 'resume',
        SandboxState.RUNNING: 'none',
    },
    'stop': {
        SandboxState.CREATING: 'shutdown',
        SandboxState.RUNNING: 'shutdown',
        SandboxState.PAUSED: 'shutdown',   # destroyed: a paused guest cannot power off
        SandboxState.STOPPED: 'mark',
        SandboxState.DEAD: 'mark',
    },
    'pause': {
        SandboxState.CREATING: 'suspend',
        SandboxState.RUNNING: 'suspend',
    },
    # delete takes any state; running containers need force (sandbox.refuse_running)
    'delete': {state: 'delete' for state in SandboxState.RECORDED + (SandboxState.DEAD,)},
}

# The same for a container, keyed on its observed OCI status.
CONTAINER_TRANSITIONS = {
    'start': {
        ContainerStatus.CREATED: 'start',
    },
    'stop': {
        ContainerStatus.RUNNING: 'kill',   # signal, wait, then SIGKILL
        ContainerStatus.CREATED: 'mark',
        ContainerStatus.CREATING: 'mark',
        ContainerStatus.STOPPED: 'mark',   # saved only when the record still says otherwise
    },
    'delete': {
        ContainerStatus.RUNNING: 'kill',   # only with force: "still running" otherwise
        ContainerStatus.CREATED: 'remove',
        ContainerStatus.CREATING: 'remove',
        ContainerStatus.STOPPED: 'remove',
        ContainerStatus.UNKNOWN: 'remove',
    },
}

_PAST = {'start': 'started', 'resume': 'resumed', 'stop': 'stopped', 'pause': 'paused', 'delete': 'deleted'}
_TABLES = {'sandbox': SANDBOX_TRANSITIONS, 'container': CONTAINER_TRANSITIONS}


def step(kind, operation, state, name, hint=''):
    """What ``operation`` does to the ``kind`` ('sandbox' | 'container') ``name`` in ``state``.

    A state the operation's row does not list is refused: Conflict "<kind> <name> cannot be
    <done>: it is <state>", followed by ``hint`` (what to do instead) when given.
    """
    action = _TABLES[kind][operation].get(state)
    if action is None:
        raise Conflict('%s %s cannot be %s: it is %s%s' % (kind, name, _PAST[operation], state,
                                                           ' (%s)' % hint if hint else ''))
    return action


# ---------------------------------------------------------------------------------------------
# records

def _is_str(value):
    return isinstance(value, str)


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_bool(value):
    return isinstance(value, bool)


def _is_str_dict(value):
    return isinstance(value, dict) and all(_is_str(k) and _is_str(v) for k, v in value.items())


def _is_str_list(value):
    return isinstance(value, list) and all(_is_str(v) for v in value)


def _is_dict_list(value):
    return isinstance(value, list) and all(isinstance(v, dict) for v in value)


def _is_dict(value):
    return isinstance(value, dict)


def _optional(check):
    def accepts(value):
        return value is None or check(value)
    accepts.what = 'null or ' + check.what
    return accepts


_is_str.what = 'a string'
_is_int.what = 'an integer'
_is_bool.what = 'true or false'
_is_number.what = 'a number'
_is_str_dict.what = 'an object of strings'
_is_str_list.what = 'a list of strings'
_is_dict.what = 'an object'
_is_dict_list.what = 'a list of objects'


def _m(check, saved=True):
    """A record field's metadata: ``check`` accepts its JSON value; ``saved=False`` keeps it in
    memory only."""
    return {'check': check, 'saved': saved}


class _Record:
    """What both record kinds share: JSON in and out, checked field by field."""

    KIND = ''

    @classmethod
    def from_json(cls, data, path='<record>'):
        """The record that the JSON object ``data`` (read from ``path``) holds.

        Refused with CorruptRecord: not an object, another schema version, a field this
        runtime does not know, a required field missing, a field of the wrong type.
        """
        if not isinstance(data, dict):
            raise CorruptRecord('%s record %s is corrupt: expected a JSON object, found %s'
                                % (cls.KIND, path, type(data).__name__), path=path)
        version = data.get('version')
        if version != RECORD_VERSION:
            raise CorruptRecord('%s record %s has version %r; this runtime reads version %d'
                                % (cls.KIND, path, version, RECORD_VERSION), path=path)
        fields = {f.name: f for f in dataclasses.fields(cls) if f.metadata['saved']}
        unknown = sorted(set(data) - set(fields) - {'version'})
        if unknown:
            raise CorruptRecord('%s record %s has field(s) this runtime does not know: %s (written by a '
                                'newer runtime?)' % (cls.KIND, path, ', '.join(unknown)), path=path)
        values = {}
        for name, f in fields.items():
            if name not in data:
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                    raise CorruptRecord('%s record %s is corrupt: it has no %s' % (cls.KIND, path, name), path=path)
                continue  # written before the field existed: its default
            check = f.metadata['check']
            if not check(data[name]):
                raise CorruptRecord('%s record %s is corrupt: %s must be %s, found %r'
                                    % (cls.KIND, path, name, check.what, data[name]), path=path)
            values[name] = data[name]
        return cls(**values)

    def to_json(self):
        """The JSON object to save (with ``version``); InvalidArgument names a field whose value
        could not be read back."""
        out = {'version': RECORD_VERSION}
        for f in dataclasses.fields(self):
            if not f.metadata['saved']:
                continue
            value = getattr(self, f.name)
            if not f.metadata['check'](value):
                raise InvalidArgument('cannot save %s record %s: %s must be %s, not %r'
                                      % (self.KIND, getattr(self, 'id', '?'), f.name, f.metadata['check'].what, value))
            out[f.name] = value
        return out

    def copy(self):
        return dataclasses.replace(self)


@dataclasses.dataclass
class SandboxRecord(_Record):
    """sandboxes/<id>/sandbox.json: what a sandbox was asked to be and what it made."""

    KIND = 'sandbox'

    id: str = dataclasses.field(metadata=_m(_is_str))
    state: str = dataclasses.field(default=SandboxState.CREATING, metadata=_m(_optional(_is_str)))
    domain: Optional[str] = dataclasses.field(default=None, metadata=_m(_optional(_is_str)))
    # the settings (options.SANDBOX_OPTIONS; sandbox.settings_from)
    vcpus: Optional[int] = dataclasses.field(default=None, metadata=_m(_optional(_is_int)))
    memory_mb: Optional[int] = dataclasses.field(default=None, metadata=_m(_optional(_is_int)))
    kernel: Optional[str] = dataclasses.field(default=None, metadata=_m(_optional(_is_str)))
    initrd: Optional[str] = dataclasses.field(default=None, metadata=_m(_optional(_is_str)))
    kernel_params: str = dataclasses.field(default='', metadata=_m(_optional(_is_str)))
    labels: Dict[str, str] = dataclasses.field(default_factory=dict, metadata=_m(_is_str_dict))
    annotations: Dict[str, str] = dataclasses.field(default_factory=dict, metadata=_m(_is_str_dict))
    hooks: Dict[str, Any] = dataclasses.field(default_factory=dict, metadata=_m(_is_dict))
    cgroups_path: str = dataclasses.field(default='', metadata=_m(_optional(_is_str)))
    template: bool = dataclasses.field(default=False, metadata=_m(_is_bool))  # boot from a VM template when one fits
    # what create chose and made
    accel: Optional[str] = dataclasses.field(default=None, metadata=_m(_optional(_is_str)))  # 'kvm' | 'tcg' (accel_requested may be 'auto')
    accel_requested: Optional[str] = dataclasses.field(default=None, metadata=_m(_optional(_is_str)))
    accel_reason: Optional[str] = dataclasses.field(default=None, metadata=_m(_optional(_is_str)))
    cgroups_paths: List[str] = dataclasses.field(default_factory=list, metadata=_m(_is_str_list))
    boot: Optional[str] = dataclasses.field(default=None, metadata=_m(_optional(_is_str)))  # 'cold' | 'template': how the VM last came up
    created_at: Optional[str] = dataclasses.field(default=None, metadata=_m(_optional(_is_str)))
    libvirt_uri: Optional[str] = dataclasses.field(default=None, metadata=_m(_optional(_is_str)))
    # mode, source, spec (the option's value), mac, addresses, gateway, dns, ports (network.record);
    # absent in records from before sandboxes had networks: no NIC (network.of)
    network: Optional[Dict[str, Any]] = dataclasses.field(default=None, metadata=_m(_optional(_is_dict)))
    # in memory only: a stand-in for a record that could not be read (a forced delete)
    unreadable: bool = dataclasses.field(default=False, metadata=_m(_is_bool, saved=False))

    # The network settings as the compare step sees them (options.SANDBOX_OPTIONS record keys):
    # the option's value and the forwards; a record without a network has none.
    @property
    def network_spec(self):
        return (self.network or {}).get('spec') or 'none'

    @property
    def network_ports(self):
        return list((self.network or {}).get('ports') or [])

    @classmethod
    def by_name(cls, sid, domain, state=SandboxState.DEAD):
        """What any sandbox owns by its ID alone: for a delete that has no readable record."""
        return cls(id=sid, domain=domain, state=state, unreadable=True)

    @classmethod
    def new(cls, sid, settings, **made):
        """A new sandbox's record: its ``settings`` (sandbox.settings_from) and what create made."""
        return cls(id=sid, **_pick(cls, settings), **made)


@dataclasses.dataclass
class ContainerRecord(_Record):
    """sandboxes/<sandbox>/containers/<id>.json: one container of a sandbox."""

    KIND = 'container'

    id: str = dataclasses.field(metadata=_m(_is_str))
    sandbox: str = dataclasses.field(metadata=_m(_is_str))
    status: str = dataclasses.field(default=ContainerStatus.CREATING, metadata=_m(_optional(_is_str)))
    type: str = dataclasses.field(default='pod_container', metadata=_m(_optional(_is_str)))
    # the settings (options.CONTAINER_OPTIONS; container.settings_from)
    bundle: Optional[str] = dataclasses.field(default=None, metadata=_m(_optional(_is_str)))  # the user's bundle (None: inline)
    rootfs: Optional[str] = dataclasses.field(default=None, metadata=_m(_optional(_is_str)))
    readonly_rootfs: bool = dataclasses.field(default=False, metadata=_m(_is_bool))
    args: List[str] = dataclasses.field(default_factory=list, metadata=_m(_is_str_list))
    env: List[str] = dataclasses.field(default_factory=list, metadata=_m(_is_str_list))
    cwd: str = dataclasses.field(default='/', metadata=_m(_optional(_is_str)))
    user: str = dataclasses.field(default='0:0', metadata=_m(_optional(_is_str)))
    hooks: Dict[str, Any] = dataclasses.field(default_factory=dict, metadata=_m(_is_dict))
    cgroups_path: str = dataclasses.field(default='', metadata=_m(_optional(_is_str)))
    annotations: Dict[str, str] = dataclasses.field(default_factory=dict, metadata=_m(_is_str_dict))
    labels: Dict[str, str] = dataclasses.field(default_factory=dict, metadata=_m(_is_str_dict))
    # what create made and what happened since
    bundle_dir: Optional[str] = dataclasses.field(default=None, metadata=_m(_optional(_is_str)))  # an inline container's own bundle
    cgroups_paths: List[str] = dataclasses.field(default_factory=list, metadata=_m(_is_str_list))
    rootfs_mount: Optional[Dict[str, Any]] = dataclasses.field(default=None, metadata=_m(_optional(_is_dict)))  # share.bind_rootfs
    pid: Optional[int] = dataclasses.field(default=None, metadata=_m(_optional(_is_int)))  # in the guest
    exit_code: Optional[int] = dataclasses.field(default=None, metadata=_m(_optional(_is_int)))
    created_at: Optional[str] = dataclasses.field(default=None, metadata=_m(_optional(_is_str)))
    started_at: Optional[str] = dataclasses.field(default=None, metadata=_m(_optional(_is_str)))
    finished_at: Optional[str] = dataclasses.field(default=None, metadata=_m(_optional(_is_str)))
    poststop_done: bool = dataclasses.field(default=False, metadata=_m(_is_bool))
    # OCI mounts from config.json and the volumes option (volumes.py: type, source, destination,
    # options), and the host binds of its volumes to undo (target, host)
    mounts: List[Dict[str, Any]] = dataclasses.field(default_factory=list, metadata=_m(_is_dict_list))
    volume_mounts: List[Dict[str, Any]] = dataclasses.field(default_factory=list, metadata=_m(_is_dict_list))
    # in the guest (limits.py, oci_support.py): UTS names (hostname null: the container ID),
    # process settings (capabilities, rlimits, no_new_privileges, ...), the cgroup v2 files of
    # its limits, what the OCI config asked that is ignored; absent in older records: none
    hostname: Optional[str] = dataclasses.field(default=None, metadata=_m(_optional(_is_str)))
    domainname: Optional[str] = dataclasses.field(default=None, metadata=_m(_optional(_is_str)))
    process: Optional[Dict[str, Any]] = dataclasses.field(default=None, metadata=_m(_optional(_is_dict)))
    limits: Dict[str, str] = dataclasses.field(default_factory=dict, metadata=_m(_is_str_dict))
    oci_warnings: List[str] = dataclasses.field(default_factory=list, metadata=_m(_is_str_list))
    # the inline limit options as given (kata_container memory_mb, cpus, pids_limit)
    memory_mb: Optional[int] = dataclasses.field(default=None, metadata=_m(_optional(_is_int)))
    cpus: Optional[float] = dataclasses.field(default=None, metadata=_m(_optional(_is_number)))
    pids_limit: Optional[int] = dataclasses.field(default=None, metadata=_m(_optional(_is_int)))

    @classmethod
    def by_name(cls, sandbox, cid):
        """What a container owns by its ID alone (its record is gone or unreadable)."""
        return cls(id=cid, sandbox=sandbox, status=ContainerStatus.DELETING)

    @classmethod
    def new(cls, sandbox, cid, settings, **made):
        """A new container's record: its ``settings`` (container.settings_from) and what create made."""
        return cls(id=cid, sandbox=sandbox, **_pick(cls, settings), **made)


def _pick(cls, settings):
    """The entries of ``settings`` that are fields of ``cls``; an unknown one is a bug here."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(settings) - names)
    if unknown:
        raise InvalidArgument('%s settings have no record field for: %s' % (cls.KIND, ', '.join(unknown)))
    return dict(settings)
