# Copyright: kata.runtime contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Seams for the lifecycle tests: a fake hypervisor, a fake guest agent, a process killer.

Not a test module (no ``test_`` prefix): the lifecycle tests import it as
``ansible_collections.kata.runtime.tests.unit.plugins.module_utils.lifecycle_fakes``.

- ``FakeHypervisor`` implements ``hypervisor/base.py`` in memory; ``FakeAgents`` keeps each
  VM's guest (its containers) and hands out clients shaped like ``agent.AgentClient``. Both
  can fail any chosen call: raise, hang, die, answer late, or run a callback first (``before=``)
  so a test can start a concurrent operation at exactly that point.
- ``Killer`` is the module process SIGKILLed at its Nth step: every side effect of the
  lifecycle (a VM or agent call that changes something, a record write or unlink, a directory
  made, a cgroup made or removed, a mount or umount, a hook run) is one step; at the Nth the
  ``Killed`` exception is raised, and from then on every step raises again (a dead process does
  nothing more, not even its ``except`` clauses' cleanup).
- ``StateFsFault`` makes the state file system full (ENOSPC) or read-only (EROFS) during the
  Nth record write.
- ``residue(rt, hv)`` lists everything a sandbox could leave behind.

Faults reproduce what our code sees from a failing dependency; what libvirt itself does is
proven against ``test:///default`` and a real libvirtd elsewhere.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal as signals
import socket
import stat
import subprocess
import tempfile
import threading
import time

import pytest
from ansible_collections.kata.runtime.plugins.module_utils.kata import agent as agent_mod
from ansible_collections.kata.runtime.plugins.module_utils.kata import container as ctr
from ansible_collections.kata.runtime.plugins.module_utils.kata import hooks as hooks_mod
from ansible_collections.kata.runtime.plugins.module_utils.kata import mountinfo, share, template
from ansible_collections.kata.runtime.plugins.module_utils.kata import sandbox as sbx
from ansible_collections.kata.runtime.plugins.module_utils.kata.cgroups import Cgroups
from ansible_collections.kata.runtime.plugins.module_utils.kata.config import Config
from ansible_collections.kata.runtime.plugins.module_utils.kata.errors import (
    AgentError,
    Conflict,
    HypervisorError,
    InvalidArgument,
)
from ansible_collections.kata.runtime.plugins.module_utils.kata.guest import contract
from ansible_collections.kata.runtime.plugins.module_utils.kata.hypervisor import base
from ansible_collections.kata.runtime.plugins.module_utils.kata.ids import validate_id
from ansible_collections.kata.runtime.plugins.module_utils.kata.runtime import Runtime
from ansible_collections.kata.runtime.plugins.module_utils.kata.store import Store

# What a vm spec for create() holds (hypervisor/base.py); 'state_root' is checked apart.
VM_KEYS = ('name', 'sandbox_id', 'vcpus', 'memory_mb', 'kernel', 'initrd', 'cmdline', 'accel',
           'console_log', 'agent_socket', 'shared_dir', 'output_dir', 'output_accessmode')

_DEFAULT = object()
_NO_REPLY = object()


class Killed(BaseException):
    """The module process was SIGKILLed: nothing after this point runs, not even cleanup."""


class Call:
    """One call into a fake: ``method``, ``target`` (VM name or sandbox ID), ``params``."""

    def __init__(self, source, method, target=None, params=None):
        self.source = source
        self.method = method
        self.target = target
        self.params = params or {}

    def __repr__(self):
        return 'Call(%s.%s %s)' % (self.source, self.method, self.target)


# ---------------------------------------------------------------------------------------------
# fault rules

class Rule:
    """Fires on calls ``at`` .. ``at + times - 1`` of ``methods`` counted from its creation
    (``times=None``: every call from ``at`` on)."""

    def __init__(self, methods, at=1, times=1, error=None, hang=None, before=None, mode=None,
                 reply=_NO_REPLY):
        if isinstance(methods, str):
            methods = (methods,)
        if not isinstance(at, int) or at < 1:
            raise ValueError('at counts calls from 1, got %r' % (at,))
        self.methods = tuple(methods)
        self.at = at
        self.times = times
        self.error = error
        self.hang = hang
        self.before = before
        self.mode = mode
        self.reply = reply
        self.seen = 0
        self.fired = 0

    def matches(self, method):
        if '*' not in self.methods and method not in self.methods:
            return False
        self.seen += 1
        if self.seen < self.at or (self.times is not None and self.fired >= self.times):
            return False
        self.fired += 1
        return True


class Faults:
    """The rules of one fake; ``fire(method)`` returns the rules this call triggers."""

    def __init__(self):
        self._rules = []
        self._lock = threading.Lock()

    def add(self, rule):
        with self._lock:
            self._rules.append(rule)
        return rule

    def fire(self, method):
        with self._lock:
            return [r for r in self._rules if r.matches(method)]

    def clear(self):
        with self._lock:
            self._rules = []


def _raise(error, default):
    """Raise ``error`` (an exception instance or class), or ``default`` for _DEFAULT."""
    if error is _DEFAULT:
        error = default
    if isinstance(error, type):
        error = error('injected fault')
    raise error


# ---------------------------------------------------------------------------------------------
# hypervisor

class Domain:
    """One VM: what create() was given, its state, and its guest (the agent's containers)."""

    def __init__(self, vm):
        self.name = vm['name']
        self.sandbox_id = vm['sandbox_id']
        self.state_root = vm.get('state_root')
        self.vm = dict(vm)
        self.state = base.SHUTOFF
        self.guest = {}
        self.agent_alive = True
        self.boots = 0
        self.foreign = False
        self.forwards = []  # user-mode port forwards of the running VMM (gone when it stops)


class FakeHypervisor(base.Hypervisor):
    """In-memory VMs behind the Hypervisor interface, as hypervisor/base.py documents it.

    ``pid()`` is always None: the lifecycle then skips moving a VMM into cgroups and makes
    rootfs binds in our own mount namespace. A booted VM creates its agent socket file (qemu
    listens there) and removes it when it stops cleanly; a crashed VMM leaves it behind.

    ``fail(method, error=..., at=N, times=1, hang=s, before=callable, late=False)``: the Nth
    call of ``method`` (``'*'``: any method; counted from now) runs ``before(call)``, sleeps
    ``hang`` seconds, then raises ``error`` (default: a HypervisorError, as with libvirtd
    down) -- before acting, or after acting with ``late=True`` (libvirtd restarted while the
    call was being carried out). With only ``before`` or ``hang`` given, nothing is raised.
    """

    MUTATING = ('create', 'start', 'shutdown', 'destroy', 'suspend', 'resume', 'undefine',
                'create_template_vm', 'save_state', 'create_clone', 'add_forwards')
    VMM_VERSION = '7.2.0'

    def __init__(self, prefix='kata-unit-', uri='test:///fake'):
        self.prefix = prefix
        self.uri = uri
        self.domains = {}
        self.calls = []
        self.faults = Faults()
        self.observers = []
        self.acpi_works = True
        self._lock = threading.RLock()

    # -- fault injection ----------------------------------------------------------------------

    def fail(self, method, error=_DEFAULT, at=1, times=1, hang=None, before=None, late=False):
        if error is _DEFAULT and (hang is not None or before is not None):
            error = None
        return self.faults.add(Rule(method, at=at, times=times, error=error, hang=hang, before=before,
                                    mode='late' if late else None))

    def _call(self, method, name=None):
        """Record a call, tell observers (the Killer), apply faults. Returns the late errors."""
        call = Call('hv', method, name)
        with self._lock:
            self.calls.append(call)
        for observer in list(self.observers):
            observer(call, method in self.MUTATING)
        late = []
        for rule in self.faults.fire(method):
            if rule.before is not None:
                rule.before(call)
            if rule.hang:
                time.sleep(rule.hang)
            if rule.error is None:
                continue
            default = HypervisorError('%s domain %s failed (libvirt %s): injected fault: cannot '
                                      'connect to libvirtd' % (method, name, self.uri))
            if rule.mode == 'late':
                late.append((rule.error, default))
            else:
                _raise(rule.error, default)
        return late

    @staticmethod
    def _late(late):
        for error, default in late:
            _raise(error, default)

    # -- simulation helpers (no faults, not counted) -------------------------------------------

    def crash(self, name, state=base.CRASHED):
        """The VMM died under the VM (SIGKILL, OOM): its guest is gone, its socket file stays.
        ``state`` 'crashed' or 'shutoff' keeps the definition; 'missing' drops it too."""
        with self._lock:
            dom = self.domains[name]
            dom.guest = {}
            dom.forwards = []  # the VMM held them
            if state == base.MISSING:
                del self.domains[name]
            else:
                dom.state = state

    def host_reboot(self, keep_definitions=True):
        """Every VM stopped (persistent definitions kept) or gone. Socket files stay: the
        caller decides whether the state root survived (see ``reboot_host``)."""
        with self._lock:
            for name, dom in list(self.domains.items()):
                dom.guest = {}
                if keep_definitions and not dom.foreign:
                    if dom.state in (base.RUNNING, base.PAUSED):
                        dom.state = base.SHUTOFF
                elif not dom.foreign:
                    del self.domains[name]

    def add_orphan(self, sandbox_id, state_root=None, state=base.RUNNING):
        """A VM of ours that no record names (what a lost state root leaves)."""
        name = self.domain_name(sandbox_id)
        dom = Domain({'name': name, 'sandbox_id': sandbox_id, 'state_root': state_root})
        dom.state = state
        with self._lock:
            self.domains[name] = dom
        return name

    def add_foreign(self, name, state=base.RUNNING):
        """A domain this runtime did not create: listed nowhere, refused by every method."""
        dom = Domain({'name': name, 'sandbox_id': None})
        dom.state = state
        dom.foreign = True
        with self._lock:
            self.domains[name] = dom
        return name

    def domain_of(self, sandbox_id):
        """The Domain of a sandbox ID, or None (no fault, not counted)."""
        with self._lock:
            dom = self.domains.get(self.prefix + sandbox_id)
        return None if dom is None or dom.foreign else dom

    def ours(self):
        """{name: state} of every VM of ours (no fault, not counted)."""
        with self._lock:
            return {n: d.state for n, d in self.domains.items() if not d.foreign}

    def count(self, method=None):
        return sum(1 for c in self.calls if method is None or c.method == method)

    # -- internals ----------------------------------------------------------------------------

    def _lookup(self, name):
        dom = self.domains.get(name)
        if dom is not None and dom.foreign:
            raise HypervisorError('domain %s is not managed by kata.runtime (no %s prefix or no '
                                  'kata:sandbox metadata for that name); nothing done' % (name, self.prefix))
        return dom

    def _require(self, name, what):
        dom = self._lookup(name)
        if dom is None:
            raise HypervisorError('cannot %s domain %s: it does not exist (libvirt %s)' % (what, name, self.uri))
        return dom

    def _boot(self, dom):
        sock = dom.vm.get('agent_socket')
        if sock:
            try:
                _make_socket(sock)
            except OSError as err:
                raise HypervisorError('starting domain %s failed (libvirt %s): Failed to bind socket to %s: %s'
                                      % (dom.name, self.uri, sock, err.strerror))
        dom.state = base.RUNNING
        dom.guest = {}
        dom.agent_alive = True
        dom.boots += 1
        dom.forwards = []

    def _stop(self, dom, state=base.SHUTOFF):
        """A clean stop: qemu exits and removes its socket."""
        dom.state = state
        dom.guest = {}
        dom.forwards = []
        sock = dom.vm.get('agent_socket')
        if sock and os.path.lexists(sock) and stat.S_ISSOCK(os.lstat(sock).st_mode):
            os.unlink(sock)

    # -- the interface ------------------------------------------------------------------------

    def domain_name(self, sandbox_id):
        return self.prefix + validate_id(sandbox_id, 'sandbox')

    def add_forwards(self, name, rules):
        """Forwards live in the running VMM: a second VMM taking a host port is refused."""
        self._call('add_forwards', name)
        with self._lock:
            dom = self._require(name, 'forward ports to')
            if dom.state not in (base.RUNNING, base.PAUSED):
                raise HypervisorError('domain %s is not running' % name)
            if not dom.vm.get('network') or dom.vm['network'].get('mode') != 'user':
                raise HypervisorError('domain %s has no running user-mode NIC to forward ports to' % name)
            taken = set(rule.split('-')[0] for d in self.domains.values() if d is not dom for rule in d.forwards)
            for rule in rules:
                # a rule of the same host side on this VMM is replaced, as hostfwd_remove + add do
                dom.forwards = [r for r in dom.forwards if r.split('-')[0] != rule.split('-')[0]]
                if rule.split('-')[0] in taken:
                    raise HypervisorError('forwarding %s to domain %s failed: Could not set up host forwarding rule'
                                          % (rule, name))
                dom.forwards.append(rule)
        return True

    def create(self, vm):
        late = self._call('create', vm.get('name') if isinstance(vm, dict) else None)
        if not isinstance(vm, dict):
            raise InvalidArgument('vm must be a dict, got %r' % (vm,))
        missing = [k for k in VM_KEYS if k not in vm]
        if missing:
            raise InvalidArgument('vm spec lacks %s' % ', '.join(missing))
        if vm['name'] != self.domain_name(vm['sandbox_id']):
            raise InvalidArgument('vm name %r does not match sandbox %r' % (vm['name'], vm['sandbox_id']))
        with self._lock:
            if vm['name'] in self.domains:
                raise Conflict('cannot create domain %s: a domain with that name already exists (libvirt %s)'
                               % (vm['name'], self.uri))
            dom = Domain(vm)
            self._boot(dom)  # a failed start defines nothing
            self.domains[dom.name] = dom
        self._late(late)
        return True

    def _define(self, vm, method):
        """create()'s checks and a new Domain (not yet booted, not yet added)."""
        if not isinstance(vm, dict):
            raise InvalidArgument('vm must be a dict, got %r' % (vm,))
        missing = [k for k in VM_KEYS if k not in vm]
        if missing:
            raise InvalidArgument('vm spec lacks %s' % ', '.join(missing))
        if vm['name'] != self.domain_name(vm['sandbox_id']):
            raise InvalidArgument('vm name %r does not match sandbox %r' % (vm['name'], vm['sandbox_id']))
        if vm['name'] in self.domains:
            raise Conflict('cannot create domain %s: a domain with that name already exists (libvirt %s)'
                           % (vm['name'], self.uri))
        if vm.get('free_page_reporting') and method != 'create':
            raise InvalidArgument('a VM whose RAM is a template file must not have a free-page-reporting balloon')
        return Domain(vm)

    def vmm_version(self):
        late = self._call('vmm_version')
        self._late(late)
        return self.VMM_VERSION

    def create_template_vm(self, vm, ram_path):
        """Boot ``vm`` with its RAM in ``ram_path``: the file appears (sparse), as QEMU makes it."""
        late = self._call('create_template_vm', vm.get('name') if isinstance(vm, dict) else None)
        with self._lock:
            dom = self._define(vm, 'create_template_vm')
            with open(ram_path, 'xb') as f:
                f.truncate(vm['memory_mb'] * 1024 * 1024)
            dom.ram = ram_path
            self._boot(dom)
            self.domains[dom.name] = dom
        self._late(late)
        return True

    def save_state(self, name, path):
        late = self._call('save_state', name)
        with self._lock:
            dom = self._require(name, 'save the state of')
            if dom.state != base.PAUSED:
                raise HypervisorError('cannot save domain %s: it is %s, not paused' % (name, dom.state))
            data = json.dumps({'vm': dom.vm['sandbox_id'], 'ram': getattr(dom, 'ram', None)}).encode()
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                os.write(fd, data)
            finally:
                os.close(fd)
        self._late(late)
        return len(data)

    def create_clone(self, vm, ram_path, state_path):
        """Start ``vm`` paused from a template's RAM and state files (both must be there)."""
        late = self._call('create_clone', vm.get('name') if isinstance(vm, dict) else None)
        with self._lock:
            dom = self._define(vm, 'create_clone')
            for path in (ram_path, state_path):
                if not os.path.isfile(path):
                    raise HypervisorError('starting domain %s failed (libvirt %s): %s: No such file'
                                          % (vm['name'], self.uri, path))
            dom.ram = ram_path
            self._boot(dom)
            dom.state = base.PAUSED  # loaded, not resumed
            dom.cloned_from = state_path
            self.domains[dom.name] = dom
        self._late(late)
        return True

    def start(self, name):
        late = self._call('start', name)
        with self._lock:
            dom = self._require(name, 'start')
            if dom.state in (base.RUNNING, base.PAUSED):
                acted = False
            else:
                self._boot(dom)
                acted = True
        self._late(late)
        return acted

    def shutdown(self, name, timeout):
        late = self._call('shutdown', name)
        with self._lock:
            dom = self._lookup(name)
            if dom is None or dom.state not in (base.RUNNING, base.PAUSED):
                done = True
            elif self.acpi_works:
                self._stop(dom)
                done = True
            else:
                done = False
        self._late(late)
        return done

    def destroy(self, name):
        late = self._call('destroy', name)
        with self._lock:
            dom = self._lookup(name)
            acted = dom is not None and dom.state in (base.RUNNING, base.PAUSED)
            if acted:
                self._stop(dom)
        self._late(late)
        return acted

    def suspend(self, name):
        late = self._call('suspend', name)
        with self._lock:
            dom = self._require(name, 'suspend')
            if dom.state == base.PAUSED:
                acted = False
            elif dom.state != base.RUNNING:
                raise HypervisorError('cannot pause domain %s: it is %s, not running' % (name, dom.state))
            else:
                dom.state = base.PAUSED
                acted = True
        self._late(late)
        return acted

    def resume(self, name):
        late = self._call('resume', name)
        with self._lock:
            dom = self._require(name, 'resume')
            if dom.state == base.RUNNING:
                acted = False
            elif dom.state != base.PAUSED:
                raise HypervisorError('cannot resume domain %s: it is %s, not paused' % (name, dom.state))
            else:
                dom.state = base.RUNNING
                acted = True
        self._late(late)
        return acted

    def state(self, name):
        late = self._call('state', name)
        with self._lock:
            dom = self._lookup(name)
            st = base.MISSING if dom is None else dom.state
        self._late(late)
        return st

    def pid(self, name):
        late = self._call('pid', name)
        with self._lock:
            self._lookup(name)
        self._late(late)
        return None

    def undefine(self, name):
        late = self._call('undefine', name)
        with self._lock:
            dom = self._lookup(name)
            if dom is None:
                acted = False
            elif dom.state in (base.RUNNING, base.PAUSED):
                raise Conflict('cannot undefine domain %s: it is still running; destroy it first' % name)
            else:
                del self.domains[name]
                acted = True
        self._late(late)
        return acted

    def list_ours(self):
        late = self._call('list_ours')
        with self._lock:
            out = [{'name': d.name, 'sandbox_id': d.sandbox_id, 'state': d.state, 'state_root': d.state_root}
                   for d in self.domains.values() if not d.foreign]
        self._late(late)
        return sorted(out, key=lambda d: d['name'])

    def state_root(self, name):
        late = self._call('state_root', name)
        with self._lock:
            dom = self._lookup(name)
            root = None if dom is None else dom.state_root
        self._late(late)
        return root

    def is_ours(self, name):
        late = self._call('is_ours', name)
        with self._lock:
            dom = self.domains.get(name)
            ours = dom is not None and not dom.foreign
        self._late(late)
        return ours

    def close(self):
        """Nothing to close (the libvirt backend has this too)."""


def _make_socket(path):
    """Leave a unix socket file at ``path``, as a listening qemu does."""
    if os.path.lexists(path):
        os.unlink(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
    finally:
        sock.close()


# ---------------------------------------------------------------------------------------------
# agent

class _GuestError(Exception):
    """The guest agent's own error reply (``{"id": n, "error": text}``)."""


class _FakeSocket:
    """Stands for the connection to qemu's socket in a FakeAgentClient."""

    def settimeout(self, timeout):
        """Nothing waits on it."""

    def close(self):
        """Nothing to close."""


class FakeAgents:
    """The guest agents of a FakeHypervisor's VMs; ``factory`` is Runtime's ``agent_factory``.

    Each VM's guest lives on its Domain (reset at every boot, gone when the VM stops). The
    clients are ``agent.AgentClient`` with the transport replaced (``FakeAgentClient``), so
    every message, timeout and result check is the real client's own.

    ``fail(method, mode='raise'|'hang'|'late'|'die', error=None, at=N, times=1, before=None,
    reply=...)`` on the Nth call of ``method`` (``'*'`` any; ``'wait_ready'`` the readiness
    wait), counted from now: ``raise``: an error reply with ``error`` (the guest's text; an
    exception instance is raised as it is); ``hang``: no answer, the client times out;
    ``late``: the guest acts but its answer comes after the client's timeout; ``die``: the
    agent stops answering, this call and every later one in that VM hang (until the VM boots
    again); ``reply``: the guest answers this (hostile) result instead; ``before(call)`` runs
    first. Hangs do not sleep: the seconds a real client would have waited add up in
    ``waited``. A VM that is not running refuses the connection, as qemu's socket does.
    """

    MUTATING = ('create_container', 'start_container', 'signal_container', 'remove_container',
                'kill_all', 'shutdown', 'post_clone')

    def __init__(self, hv, socket_of):
        self.hv = hv
        self.socket_of = socket_of
        self.faults = Faults()
        self.calls = []
        self.observers = []
        self.waited = 0.0
        self.ignored_signals = set()
        self.poweroff_on_shutdown = True
        self._next_pid = 100
        self._lock = threading.Lock()

    def factory(self, sandbox_id, timeout=10, console_log=None):
        return FakeAgentClient(self, sandbox_id, timeout, console_log)

    def fail(self, method, mode='raise', error=None, at=1, times=1, before=None, reply=_NO_REPLY):
        if mode not in ('raise', 'hang', 'late', 'die', None):
            raise ValueError('unknown agent fault mode %r' % (mode,))
        return self.faults.add(Rule(method, at=at, times=times, error=error, before=before, mode=mode,
                                    reply=reply))

    def kill(self, sandbox_id):
        """The agent in this sandbox's VM stops answering (its VM keeps running)."""
        self.hv.domain_of(sandbox_id).agent_alive = False

    def guest(self, sandbox_id):
        """{cid: state} of the containers in the sandbox's guest (a copy)."""
        dom = self.hv.domain_of(sandbox_id)
        if dom is None:
            return {}
        with self.hv._lock:  # pylint: disable=protected-access
            return {cid: dict(st) for cid, st in dom.guest.items()}

    def count(self, method=None):
        return sum(1 for c in self.calls if method is None or c.method == method)

    # -- the protocol -------------------------------------------------------------------------

    def _begin(self, client, method, params):
        call = Call('agent', method, client.sandbox_id, params)
        with self._lock:
            self.calls.append(call)
        for observer in list(self.observers):
            observer(call, method in self.MUTATING)
        mode, error, reply = None, None, _NO_REPLY
        for rule in self.faults.fire(method):
            if rule.before is not None:
                rule.before(call)
            if rule.mode is not None:
                mode = rule.mode
            if rule.error is not None:
                error = rule.error
            if rule.reply is not _NO_REPLY:
                reply = rule.reply
        return mode, error, reply

    def _wait(self, seconds):
        with self._lock:
            self.waited += max(0.0, seconds)

    def serve(self, client, request, deadline):
        """The reply to one request line, or socket.timeout / a dropped connection."""
        method, params, rid = request['method'], request.get('params') or {}, request['id']
        mode, error, reply = self._begin(client, method, params)
        dom = self.hv.domain_of(client.sandbox_id)
        if dom is None or dom.state not in (base.RUNNING, base.PAUSED):
            raise agent_mod._Dropped('end of stream')  # the VM went away: qemu closed the socket
        if mode == 'die':
            dom.agent_alive = False
        if dom.state == base.PAUSED or not dom.agent_alive or mode == 'hang':
            self._wait(deadline - time.monotonic())
            raise socket.timeout('timed out')
        if mode == 'raise':
            if isinstance(error, BaseException) or isinstance(error, type):
                _raise(error, None)
            return {'id': rid, 'error': error or 'injected error'}
        try:
            result = self._guest_call(dom, method, params)
        except _GuestError as err:
            return {'id': rid, 'error': str(err)}
        if mode == 'late':
            self._wait(deadline - time.monotonic())
            raise socket.timeout('timed out')
        if reply is not _NO_REPLY:
            result = reply
        return {'id': rid, 'result': result}

    def wait_ready(self, client, timeout):
        """AgentClient.wait_ready without the waiting (same outcomes, same messages)."""
        mode, error, dummy = self._begin(client, 'wait_ready', {})
        sock = client.socket_path
        hint = client._hint()
        dom = self.hv.domain_of(client.sandbox_id)
        if dom is None or dom.state not in (base.RUNNING, base.PAUSED):
            if os.path.lexists(sock):
                self._wait(1.0)
                raise AgentError('agent on socket %s unreachable after 1.0s (connection refused, 5 times in a '
                                 'row): the VM seems to have died%s' % (sock, hint), socket=sock)
            self._wait(timeout)
            raise AgentError('agent on socket %s did not answer within %ss (socket %s does not exist yet)%s'
                             % (sock, agent_mod._fmt(timeout), sock, hint), socket=sock)
        if mode == 'die':
            dom.agent_alive = False
        if mode in ('hang', 'late') or dom.state == base.PAUSED or not dom.agent_alive:
            self._wait(timeout)
            raise AgentError('agent on socket %s did not answer within %ss (connected, no reply yet)%s'
                             % (sock, agent_mod._fmt(timeout), hint), socket=sock)
        if mode == 'raise':
            raise AgentError('%s refused ping: %s%s' % (client._who(), error or 'injected error', hint), socket=sock)
        return agent_mod._RESULTS['ping'](self._guest_call(dom, 'ping', {}), {})

    # -- the guest ----------------------------------------------------------------------------

    def _guest_call(self, dom, method, params):
        handler = getattr(self, '_m_' + method, None)
        if handler is None:
            raise _GuestError('unknown method %s' % method)
        with self.hv._lock:  # pylint: disable=protected-access
            out = handler(dom, params)
        return json.loads(json.dumps(out))

    @staticmethod
    def _now():
        return time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())

    @staticmethod
    def _get(dom, params):
        cid = params.get('id')
        if cid not in dom.guest:
            raise _GuestError('container %s not found' % (cid,))
        return dom.guest[cid]

    @staticmethod
    def _signum(sig):
        if isinstance(sig, int):
            return sig
        name = str(sig).upper()
        try:
            return int(getattr(signals, name if name.startswith('SIG') else 'SIG' + name))
        except AttributeError:
            raise _GuestError('unknown signal %r' % (sig,))

    def _stop_one(self, st, signum):
        st.update({'status': 'stopped', 'exit_code': 128 + signum, 'pid': None, 'finished_at': self._now()})

    def _m_ping(self, dom, params):
        return {'version': 'fake', 'protocol': contract.PROTOCOL, 'pid': 1, 'uptime': 1.0}

    def _m_create_container(self, dom, params):
        cid = params['id']
        if cid in dom.guest:
            raise _GuestError('container %s already exists' % cid)
        dom.guest[cid] = {'id': cid, 'status': 'created', 'pid': None, 'exit_code': None,
                          'created_at': self._now(), 'started_at': None, 'finished_at': None,
                          'args': list(params.get('args') or []),
                          'cgroup': dict(params.get('limits') or {}), 'params': dict(params)}
        return dom.guest[cid]

    def _m_update_container(self, dom, params):
        st = self._get(dom, params)
        st['cgroup'].update(params.get('limits') or {})
        return {'id': st['id'], 'cgroup': dict(st['cgroup'])}

    def _m_container_stats(self, dom, params):
        st = self._get(dom, params)
        return {'id': st['id'], 'cgroup': dict(st['cgroup'])}

    def _m_start_container(self, dom, params):
        st = self._get(dom, params)
        if st['status'] != 'created':
            raise _GuestError('container %s is %s, not created' % (st['id'], st['status']))
        with self._lock:
            self._next_pid += 1
            pid = self._next_pid
        st.update({'status': 'running', 'pid': pid, 'started_at': self._now()})
        return {'id': st['id'], 'pid': pid, 'status': 'running', 'started_at': st['started_at']}

    def _m_signal_container(self, dom, params):
        st = self._get(dom, params)
        signum = self._signum(params.get('signal', 'SIGTERM'))
        signaled = st['status'] in ('created', 'running')
        if signaled and signum not in self.ignored_signals and signum != 0:
            self._stop_one(st, signum)
        return {'id': st['id'], 'signal': signum, 'signaled': signaled, 'status': st['status']}

    def _m_wait_container(self, dom, params):
        st = self._get(dom, params)
        if st['status'] != 'stopped':
            self._wait(agent_mod._number(params.get('timeout')))
        return {'id': st['id'], 'status': st['status'], 'exit_code': st['exit_code']}

    def _m_container_state(self, dom, params):
        return self._get(dom, params)

    def _m_remove_container(self, dom, params):
        cid = params.get('id')
        st = dom.guest.get(cid)
        if st is None:
            return {'id': cid, 'removed': False}
        if st['status'] == 'running':
            raise _GuestError('container %s is still running' % cid)
        del dom.guest[cid]
        return {'id': cid, 'removed': True}

    def _m_list_containers(self, dom, params):
        return [dom.guest[cid] for cid in sorted(dom.guest)]

    def _m_kill_all(self, dom, params):
        signum = self._signum(params.get('signal', 'SIGKILL'))
        count = 0
        for st in dom.guest.values():
            if st['status'] in ('created', 'running'):
                self._stop_one(st, signum)
                count += 1
        return {'signal': signum, 'count': count}

    def _m_post_clone(self, dom, params):
        """The guest's answer as guest/agent.py gives it; what it was sent is kept on the Domain."""
        import base64
        dom.post_clone = dict(params)
        return {'seeded': len(base64.b64decode(params['seed'])), 'clock_set': True,
                'mounted': list(params.get('mounts') or [])}

    def _m_shutdown(self, dom, params):
        for st in dom.guest.values():
            if st['status'] in ('created', 'running'):
                self._stop_one(st, int(signals.SIGKILL))
        if self.poweroff_on_shutdown:
            self.hv._stop(dom)  # pylint: disable=protected-access
        return {'poweroff': True}


class FakeAgentClient(agent_mod.AgentClient):
    """``agent.AgentClient`` talking to a FakeAgents guest instead of a socket: connecting,
    sending and reading a reply are replaced; messages, timeouts and the checks of every
    result are the real client's."""

    def __init__(self, agents, sandbox_id, timeout=10, console_log=None):
        super().__init__(agents.socket_of(sandbox_id), timeout=timeout, sandbox_id=sandbox_id,
                         console_log=console_log)
        self.agents = agents
        self._pending = None

    def connect(self, timeout=None):
        if self._sock is not None:
            return
        dom = self.agents.hv.domain_of(self.sandbox_id)
        if dom is None or dom.state not in (base.RUNNING, base.PAUSED):
            code = errno.ECONNREFUSED if os.path.lexists(self.socket_path) else errno.ENOENT
            raise self._unavailable(OSError(code, os.strerror(code)))
        self._sock = _FakeSocket()
        self._buf = bytearray()
        self._scanned = 0

    def _send(self, data, deadline):
        self._pending = json.loads(data.decode('utf-8'))

    def _read_reply(self, ids, deadline, method):
        request, self._pending = self._pending, None
        return self.agents.serve(self, request, deadline)

    def wait_ready(self, timeout, progress=None, interval=0.1):
        return self.agents.wait_ready(self, timeout)


# ---------------------------------------------------------------------------------------------
# the killer

class Killer:
    """SIGKILL of the module process at its ``at``-th step (None: only count the steps; a
    callable ``at(step, steps_done)``: at the first step it returns True for).

    Steps are the side effects: VM and agent calls that change something, record writes and
    unlinks, directories created (not existing ones), tree removals, lock files created,
    cgroups created or removed, mount/umount commands, hook runs. After the kill every step
    and every call into the fakes raises ``Killed`` again. ``disarm()`` (or the monkeypatch
    undo) makes everything pass through: the "next process".
    """

    def __init__(self, monkeypatch, hv, agents=(), at=None, root=None):
        self.at = at
        self.root = root
        self.steps = []
        self.dead = False
        self.armed = True
        self.killed_at = None
        self._lock = threading.Lock()
        hv.observers.append(self._observe)
        if isinstance(agents, FakeAgents):
            agents = [agents]
        for fake in agents:
            fake.observers.append(self._observe)
        self._patch(monkeypatch)

    def disarm(self):
        self.armed = False

    def _name(self, path):
        if self.root and isinstance(path, str) and path.startswith(self.root + os.sep):
            return os.path.relpath(path, self.root)
        return str(path)

    def step(self, what):
        """One side effect is about to happen: raise Killed if this is the one (or after)."""
        if not self.armed:
            return
        with self._lock:
            if self.dead:
                raise Killed('process already killed (at %s); not doing %s' % (self.killed_at, what))
            due = self.at(what, self.steps) if callable(self.at) else (
                self.at is not None and len(self.steps) + 1 >= self.at)
            if due:
                self.dead = True
                self.killed_at = what
                raise Killed('SIGKILL before step %d: %s' % (len(self.steps) + 1, what))
            self.steps.append(what)

    def check(self):
        if self.armed and self.dead:
            raise Killed('process already killed (at %s)' % self.killed_at)

    def _observe(self, call, mutating):
        if mutating:
            self.step('%s.%s %s' % (call.source, call.method, call.target or ''))
        else:
            self.check()

    def _patch(self, mp):
        killer = self

        def wrap(owner, name, describe):
            real = getattr(owner, name)

            def wrapper(*args, **kwargs):
                what = describe(*args, **kwargs)
                if what is None:
                    killer.check()
                else:
                    killer.step(what)
                return real(*args, **kwargs)

            wrapper.__name__ = name
            mp.setattr(owner, name, wrapper)

        def new(path):
            return not os.path.lexists(path)

        wrap(Store, '_write_bytes', lambda st, path, payload: 'write %s' % killer._name(path))
        wrap(Store, '_unlink', lambda st, path: 'unlink %s' % killer._name(path) if os.path.lexists(path) else None)
        wrap(Store, '_mkdir', lambda st, path: 'mkdir %s' % killer._name(path) if new(path) else None)
        wrap(Store, '_remove_tree', lambda st, top: 'rmtree %s' % killer._name(top))
        wrap(Store, 'remove_tree_at', lambda st, pfd, name, path: 'rmtree %s' % killer._name(path)
             if os.path.lexists(path) else None)
        wrap(Store, '_acquire', lambda st, sid, path, timeout: 'lockfile %s' % killer._name(path)
             if new(path) else None)
        wrap(Cgroups, 'remove', lambda cg, dirs: 'cgroup remove %s' % ','.join(os.path.basename(d) for d in dirs)
             if any(os.path.lexists(d) for d in dirs or ()) else None)
        if hasattr(Cgroups, 'remove_if_empty'):
            wrap(Cgroups, 'remove_if_empty', lambda cg, path: 'cgroup remove %s' % path if os.path.lexists(path) else None)
        real_create = Cgroups.create

        def create(cg, *args, **kwargs):
            # one step per directory made: after the journal note (before_mkdir), before mkdir
            killer.step('cgroup create %s' % (args[1] if len(args) > 1 else kwargs.get('default_name')))
            noted = kwargs.get('before_mkdir')
            if noted is not None:
                def before_mkdir(path):
                    noted(path)
                    killer.step('mkdir cgroup %s' % os.path.basename(path))
                kwargs['before_mkdir'] = before_mkdir
            return real_create(cg, *args, **kwargs)

        mp.setattr(Cgroups, 'create', create)
        wrap(share, '_run', lambda argv, what: '%s %s' % (argv[0], killer._name(argv[-1])))
        wrap(share, '_private_dir', lambda st, path: 'mkdir %s' % killer._name(path) if new(path) else None)
        wrap(share, '_mount_point', lambda rt, sid, cid: 'mkdir shared/%s/rootfs' % cid)
        wrap(hooks_mod, 'run_hooks', lambda kind, hooks, state, *a, **k: 'hook %s of %s' % (kind, state.get('id')))


def count_steps(monkeypatch, env, operation):
    """The steps ``operation(env)`` takes (a dry run with a Killer that never kills)."""
    killer = Killer(monkeypatch, env.hv, [env.agents], root=env.root)
    try:
        operation(env)
    finally:
        killer.disarm()
    return list(killer.steps)


class Profile:
    """What one operation did in a dry run: its hypervisor and agent calls (method names, in
    order), its steps (see Killer), and the error it ended with (None when it succeeded)."""

    def __init__(self):
        self.hv = []
        self.agent = []
        self.steps = []
        self.error = None

    @property
    def writes(self):
        return [s for s in self.steps if s.startswith('write ')]


def dry_run(setup, operation, **env_config):
    """Profile ``operation(env)`` after ``setup(env)`` on a throw-away temp host: what the
    fault tests parametrize over (the Nth hypervisor call, agent call, step, record write).
    Runs at collection time; never raises (a failure is kept in ``error``)."""
    tmp = tempfile.mkdtemp(prefix='kata-dry-run-')
    prof = Profile()
    try:
        mount_tmpfs(tmp)
        env = Env(tmp, **env_config)
        if setup is not None:
            setup(env)
        del env.hv.calls[:]
        del env.agents.calls[:]
        with pytest.MonkeyPatch.context() as mp:
            killer = Killer(mp, env.hv, env.agents, root=env.root)
            try:
                operation(env)
            finally:
                killer.disarm()
        prof.steps = list(killer.steps)
        prof.hv = [c.method for c in env.hv.calls]
        prof.agent = [c.method for c in env.agents.calls]
    except Exception as err:  # noqa: BLE001 - reported by the tests that run the operation
        prof.error = err
    finally:
        cleanup_mounts(tmp)
        shutil.rmtree(tmp, ignore_errors=True)
    return prof


def step_id(index, what):
    """A short pytest id for step ``index`` doing ``what``."""
    text = ''.join(c if c.isalnum() or c in '.-_' else '-' for c in what.replace('state/', ''))
    return '%02d-%s' % (index, text[:60])


AGENT_MODES = ('raise', 'hang', 'late', 'die')


def hv_cases(profile, names):
    """(flow, Nth hypervisor call, late) for every call of every flow; late only for calls
    that change something (for a look-up it is the same as failing)."""
    out = []
    for name in names:
        for i, method in enumerate(profile(name).hv, 1):
            out.append(pytest.param(name, i, False, id='%s-%s' % (name, step_id(i, method))))
            if method in FakeHypervisor.MUTATING:
                out.append(pytest.param(name, i, True, id='%s-%s-late' % (name, step_id(i, method))))
    return out


def agent_cases(profile, names):
    """(flow, Nth agent call, method, mode) for every agent call of every flow and every mode
    (a late answer only where the guest acts: to a question it is no answer)."""
    out = []
    for name in names:
        for i, method in enumerate(profile(name).agent, 1):
            for mode in AGENT_MODES:
                if mode == 'late' and method not in FakeAgents.MUTATING + ('wait_ready',):
                    continue
                out.append(pytest.param(name, i, method, mode, id='%s-%s-%s' % (name, step_id(i, method), mode)))
    return out


def kill_cases(profile, names):
    """(flow, step) for every step of every flow, except making the state root's top-level
    directories (a kill before one of those leaves nothing but empty top-level dirs, the same
    as a kill before the flow's first step, which is tried)."""
    return [pytest.param(name, i, id='%s-%s' % (name, step_id(i, what)))
            for name in names for i, what in enumerate(profile(name).steps, 1)
            if not (what.startswith('mkdir ') and what.count('/') == 1 and i > 1)]


def write_cases(profile, names, both=()):
    """(flow, Nth record write, errno) for every write of every flow: ENOSPC, and EROFS too
    for the flows in ``both`` (the runtime turns both into the same error; ENOSPC is the one
    that leaves half a temp file behind)."""
    return [pytest.param(name, i, code, id='%s-%s-%s' % (name, step_id(i, what), errno.errorcode[code]))
            for name in names for i, what in enumerate(profile(name).writes, 1)
            for code in ((errno.ENOSPC, errno.EROFS) if name in both else (errno.ENOSPC,))]


# ---------------------------------------------------------------------------------------------
# the state file system full or read-only

class StateFsFault:
    """The state file system fails during record writes number ``at`` .. ``at + times - 1``.

    ENOSPC: half the record reaches the temp file, then the next write fails (a partial write,
    as a full disk does). EROFS: creating the temp file fails. Only Store._write_bytes sees the
    fault (other threads and other file writes do not).
    """

    def __init__(self, monkeypatch, err=errno.ENOSPC, at=1, times=1):
        self.err = err
        self.at = at
        self.times = times
        self.count = 0
        self.paths = []
        self.failed = []
        self._local = threading.local()
        fault = self
        real_write_bytes = Store._write_bytes
        real_write = os.write
        real_open = os.open

        def write_bytes(store, path, payload):
            fault.count += 1
            fault.paths.append(path)
            active = fault.count >= fault.at and (fault.times is None or fault.count < fault.at + fault.times)
            if not active:
                return real_write_bytes(store, path, payload)
            fault._local.active = True
            fault._local.wrote = False
            fault.failed.append(path)
            try:
                return real_write_bytes(store, path, payload)
            finally:
                fault._local.active = False

        def write(fd, data):
            if getattr(fault._local, 'active', False) and fault.err == errno.ENOSPC:
                if not fault._local.wrote and len(data) > 1:
                    fault._local.wrote = True
                    return real_write(fd, bytes(data[:len(data) // 2]))
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return real_write(fd, data)

        def open_(path, flags, mode=0o777, *, dir_fd=None):
            if getattr(fault._local, 'active', False) and fault.err != errno.ENOSPC and flags & os.O_CREAT:
                raise OSError(fault.err, os.strerror(fault.err), path)
            return real_open(path, flags, mode, dir_fd=dir_fd)

        monkeypatch.setattr(Store, '_write_bytes', write_bytes)
        monkeypatch.setattr(os, 'write', write)
        monkeypatch.setattr(os, 'open', open_)


# ---------------------------------------------------------------------------------------------
# a temp host

class Env:
    """A temp host for lifecycle tests (root only: share.prepare mounts tmpfs).

    ``tmp``: the test's temp dir. It holds a cgroup v2 mount stand-in (``cgroup`` with
    ``cgroup.controllers``; pass ``cgroup=`` to share one), fake boot files, a rootfs, hook
    scripts, and the state root ``tmp/<name>``. ``hv`` can be shared between Envs (two state
    roots, one libvirt). ``rt`` is this run's Runtime; ``runtime()`` makes a fresh one (the next
    module run: same config, same VMs and guests, no faults of its own).
    """

    def __init__(self, tmp, hv=None, name='state', cgroup=None, prefix='kata-unit-', **config):
        self.tmp = str(tmp)
        self.root = self.tmp
        self.cgroup = cgroup or os.path.join(self.tmp, 'cgroup')
        os.makedirs(self.cgroup, exist_ok=True)
        with open(os.path.join(self.cgroup, 'cgroup.controllers'), 'w') as f:
            f.write('cpu memory pids\n')
        self.image = os.path.join(self.tmp, 'image')
        os.makedirs(self.image, exist_ok=True)
        for name_, data in (('vmlinux', b'kernel'), ('kata-initrd.img', b'initrd')):
            with open(os.path.join(self.image, name_), 'wb') as f:
                f.write(data)
        self.rootfs = os.path.join(self.tmp, 'rootfs')
        os.makedirs(os.path.join(self.rootfs, 'bin'), exist_ok=True)
        self.state_root = os.path.join(self.tmp, name)
        values = {
            'libvirt_uri': 'test:///default',
            'image_dir': self.image,
            'state_root': self.state_root,
            'cgroup_root': self.cgroup,
            'cgroup_parent': 'kata-unit',
            'domain_prefix': prefix,
            'accel': 'tcg',
            'agent_timeout': 5,
            'hook_timeout': 5,
            'guest_write_limit_mb': 1,
            'console_log_limit_kb': 64,
        }
        values.update(config)
        self.config = Config(values)
        self.hv = hv or FakeHypervisor(prefix)
        self.agents = FakeAgents(self.hv, Store(self.state_root).agent_socket)
        self.rt = self.runtime()

    def runtime(self):
        return Runtime(self.config, hypervisor=self.hv, agent_factory=self.agents.factory)

    def fresh(self):
        """The next module run: faults cleared (a dead agent stays dead), a new Runtime."""
        self.hv.faults.clear()
        self.agents.faults.clear()
        self.rt = self.runtime()
        return self.rt

    def hook(self, name, body):
        path = os.path.join(self.tmp, name)
        with open(path, 'w') as f:
            f.write('#!/bin/sh\n' + body + '\n')
        os.chmod(path, 0o755)
        return path

    def settings(self, **opts):
        return sbx.settings_from(self.config, opts)

    def container_settings(self, **opts):
        opts.setdefault('rootfs', self.rootfs)
        opts.setdefault('command', ['/bin/sh', '-c', 'sleep 1000'])
        return ctr.settings_from(opts)

    def sandbox(self, sid='sb', boot=True, rt=None, **opts):
        return sbx.create(rt or self.rt, sid, self.settings(**opts), boot=boot)

    def container(self, sid='sb', cid='c1', start=True, rt=None, **opts):
        rt = rt or self.rt
        rec = ctr.create(rt, sid, cid, self.container_settings(**opts))
        if start:
            rec = ctr.start(rt, cid)
        return rec

    def residue(self, **kw):
        return residue(self.rt, self.hv, **kw)

    def container_residue(self, sid, cid):
        return container_residue(self.rt, sid, cid)


def residue(rt, hv=None, all_domains=True, cgroup_dirs=True):
    """Everything left behind under ``rt``'s trees, as {kind: [items]} (empty kinds left out).

    - ``domains``: VMs in the fake hypervisor (all of them; ``all_domains=False``: only those
      whose state root is ``rt``'s);
    - ``cgroups``: every directory under the cgroup mount (``cgroup_dirs=False``: not looked at);
    - ``state``: under the state root, every file (records, mappings, locks, sockets, temp
      files) and every directory except the top-level ones ``Store.ensure()`` makes
      (``sandboxes/``, ``sock/``, ``mappings/``, ``locks/``, or any other of that level) while
      they are empty;
    - ``mounts``: every mount point under the state root (/proc/self/mountinfo).
    """
    out = {}
    if hv is not None:
        with hv._lock:  # pylint: disable=protected-access
            doms = sorted('%s (%s)' % (d.name, d.state) for d in hv.domains.values()
                          if not d.foreign and (all_domains or d.state_root == rt.store.root))
        if doms:
            out['domains'] = doms
    if cgroup_dirs:
        found = []
        for dirpath, dirnames, _files in os.walk(rt.config.cgroup_root):
            found.extend(os.path.join(dirpath, d) for d in dirnames)
        if found:
            out['cgroups'] = sorted(found)
    root = rt.store.root
    left = []
    for dirpath, dirnames, filenames in os.walk(root):
        depth = 0 if dirpath == root else os.path.relpath(dirpath, root).count(os.sep) + 1
        if _template_path(root, dirpath):
            dirnames[:] = []
            continue
        dirnames[:] = [d for d in dirnames if not _template_path(root, os.path.join(dirpath, d))]
        for d in dirnames:
            path = os.path.join(dirpath, d)
            if depth >= 1 or os.path.islink(path):
                left.append(os.path.relpath(path, root) + '/')
        left.extend(os.path.relpath(os.path.join(dirpath, f), root) for f in filenames)
    if left:
        out['state'] = sorted(left)
    mounts = [m for m in mountinfo.under(root) if not _template_path(root, m)] if os.path.isdir(root) else []
    if mounts:
        out['mounts'] = mounts
    return out


def _template_path(root, path):
    """True for the VM templates' tree (their tmpfs and locks): a template is not a sandbox's
    to leave behind or remove; the template tests check it apart."""
    rel = os.path.relpath(path, root)
    return rel == template.TEMPLATES_DIR or rel.startswith(template.TEMPLATES_DIR + os.sep) \
        or rel == os.path.join('locks', template.LOCKS_DIR) or rel.startswith(os.path.join('locks', template.LOCKS_DIR) + os.sep)


def container_residue(rt, sid, cid):
    """What container ``cid`` of sandbox ``sid`` left: its record, mapping, cgroup dirs (named
    after it), its dirs under shared/, output/, bundles/ and mounts there."""
    out = []
    sdir = rt.store.sandbox_dir(sid)
    paths = [os.path.join(rt.store.root, 'mappings', cid), os.path.join(sdir, 'containers', cid + '.json')]
    paths += [os.path.join(sdir, part, cid) for part in ('shared', 'output', 'bundles')]
    out.extend(p for p in paths if os.path.lexists(p))
    for dirpath, dirnames, _files in os.walk(rt.config.cgroup_root):
        out.extend(os.path.join(dirpath, d) for d in dirnames if d == cid)
    out.extend(m for m in mountinfo.under(sdir) if os.sep + cid + os.sep in m + os.sep)
    return sorted(out)


def records_parse(rt):
    """Every record and mapping under the state root is whole (parseable); temp files none.
    Returns the list of problems."""
    problems = []
    root = rt.store.root
    for dirpath, dirs, filenames in os.walk(root):
        if _template_path(root, dirpath):
            dirs[:] = []
            continue
        for f in filenames:
            path = os.path.join(dirpath, f)
            if f.endswith('.tmp'):
                problems.append('temp file left: %s' % path)
            elif f.endswith('.json') and os.sep + 'bundles' + os.sep not in path:
                try:
                    with open(path, 'rb') as handle:
                        data = json.loads(handle.read().decode('utf-8'))
                    if not isinstance(data, dict) or 'id' not in data:
                        problems.append('not a record: %s' % path)
                except ValueError as err:
                    problems.append('half-written record %s: %s' % (path, err))
    for cid in os.listdir(os.path.join(root, 'mappings')) if os.path.isdir(os.path.join(root, 'mappings')) else ():
        try:
            rt.store.get_mapping(cid)
        except Exception as err:  # noqa: BLE001 - reported, not raised
            problems.append('bad mapping %s: %s' % (cid, err))
    return problems


def truthful(rt, hv):
    """Problems with what the runtime reports now (list_all of sandboxes and containers):
    a sandbox is never running or paused unless its VM is, and one whose create did not finish
    (record ``creating``) is reported ``creating``, never running; containers of a VM that is
    not running are stopped. Listing must not fail."""
    problems = []
    sandboxes, dummy = sbx.list_all(rt)
    records = {r.id: r for r in rt.store.list_sandboxes()[0]}
    for s in sandboxes:
        vm = hv.state(s['domain'])
        if vm in (base.RUNNING, base.PAUSED):
            rec = records.get(s['id'])
            expected = 'creating' if rec is not None and rec.state == 'creating' else vm
            if s['state'] != expected:
                problems.append('sandbox %s is reported %s, its VM is %s' % (s['id'], s['state'], vm))
        elif s['state'] not in ('stopped', 'dead'):
            problems.append('sandbox %s is reported %s, its VM is %s' % (s['id'], s['state'], vm))
    containers, dummy = ctr.list_all(rt)
    states = {s['id']: hv.state(s['domain']) for s in sandboxes}
    for c in containers:
        if states.get(c['sandbox']) not in (base.RUNNING, base.PAUSED) and c['status'] != 'stopped':
            problems.append('container %s is reported %s, its VM is %s'
                            % (c['id'], c['status'], states.get(c['sandbox'])))
    return problems


# ---------------------------------------------------------------------------------------------
# host-level helpers

def mount_tmpfs(path, size_mb=64):
    """Mount a tmpfs at ``path`` for a temp host: the state root of a real host lives on one
    (/run), and fsync there costs nothing, which keeps hundreds of fault runs fast."""
    os.makedirs(str(path), exist_ok=True)
    subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=%dm,mode=0700' % size_mb, 'kata-unit-host', str(path)],
                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=True)


def cleanup_mounts(path):
    """Lazily unmount everything at or under ``path`` (deepest first); for test finalizers."""
    for point in mountinfo.under(str(path)):
        subprocess.run(['umount', '-l', point], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, check=False)


def reboot_host(env, wipe_state=True, keep_definitions=True):
    """A simulated host reboot: every VM stopped (definitions kept) or gone, every mount under
    the state root gone, the cgroup tree empty again (cgroupfs lives in memory) and, for a
    state root on tmpfs (``wipe_state``), the state root gone."""
    env.hv.host_reboot(keep_definitions=keep_definitions)
    cleanup_mounts(env.state_root)
    for dirpath, dirnames, _files in os.walk(env.cgroup, topdown=False):
        for d in dirnames:
            os.rmdir(os.path.join(dirpath, d))
    if wipe_state and os.path.isdir(env.state_root):
        _rmtree(env.state_root)


def _rmtree(path):
    for dirpath, dirnames, filenames in os.walk(path, topdown=False):
        for f in filenames:
            os.unlink(os.path.join(dirpath, f))
        for d in dirnames:
            full = os.path.join(dirpath, d)
            if os.path.islink(full):
                os.unlink(full)
            else:
                os.rmdir(full)
    os.rmdir(path)


def build_template(env, **opts):
    """The VM template of the sandboxes ``env.settings(**opts)`` describes, built through
    template.build_locked on the fakes (its tmpfs mounted under the state root)."""
    spec, dummy = sbx.template_spec(env.rt, env.settings(**opts))
    tpl, dummy, dummy = template.build_locked(env.hv, env.rt.store.root, 512, spec, agent_timeout=5, settle=0,
                                              agent=lambda vm: env.agents.factory(vm['sandbox_id'], 5))
    return tpl


def force_delete_all(env, rt=None):
    """The forced cleanup after a fault: every sandbox force-deleted, then prune's orphans."""
    from ansible_collections.kata.runtime.plugins.module_utils.kata import prune
    rt = rt or env.runtime()
    ids = prune.selected_ids(rt, select_all=True)
    return prune.prune(rt, ids, force=True)
