# Copyright: kata.runtime contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The facade the modules call: one Runtime per module run.

A Runtime holds the pieces every lifecycle operation needs (config, store, cgroups,
hypervisor, agent clients) and a Trace that records what was done, in order, and the
warnings to hand back to the user. The lifecycle itself lives in sandbox.py and container.py.
"""

from __future__ import annotations

import os
import time

from ansible_collections.kata.runtime.plugins.module_utils.kata import share
from ansible_collections.kata.runtime.plugins.module_utils.kata.agent import AgentClient
from ansible_collections.kata.runtime.plugins.module_utils.kata.cgroups import Cgroups
from ansible_collections.kata.runtime.plugins.module_utils.kata.errors import InvalidArgument
from ansible_collections.kata.runtime.plugins.module_utils.kata.store import Store


class Trace:
    """What a lifecycle operation did, in order, plus warnings and progress lines.

    ``progress`` is a callable taking one string; it is how long waits tell the user what
    they wait for (the modules send it to the log, benchmarks to stderr).
    """

    def __init__(self, progress=None):
        self.actions = []
        self.warnings = []
        self._progress = progress

    def step(self, msg):
        self.actions.append(msg)

    def warn(self, msg):
        self.warnings.append(msg)

    def progress(self, msg):
        if self._progress is not None:
            self._progress(msg)


class Runtime:
    """Everything one module run needs, built lazily from a Config."""

    def __init__(self, config, hypervisor=None, progress=None, agent_factory=None):
        """``hypervisor`` and ``agent_factory`` replace the libvirt backend and the agent
        client (``agent_factory(sandbox_id, timeout)`` returns what ``agent()`` does): the seams
        tests use to make a dependency fail at a chosen call."""
        self.config = config
        self.store = Store(config.state_root)
        self.cgroups = Cgroups(config.cgroup_root, config.cgroup_parent)
        self._hv = hypervisor
        self._progress = progress
        self._agent_factory = agent_factory

    def trace(self):
        return Trace(self._progress)

    def create_cgroups(self, cgroups_path, owner, sandbox):
        """``cgroups.create`` for ``owner`` (a container of ``sandbox``, or the sandbox itself),
        each directory noted in the state root's cgroup journal before it is made: what orphan
        collection may remove is exactly what this state root created."""
        return self.cgroups.create(
            cgroups_path, owner,
            before_mkdir=lambda path: self.store.journal_cgroup(sandbox, owner, path),
            not_made=lambda path: self.store.unjournal_cgroup(owner, path))

    def collect_cgroups(self, notes, used=()):
        """Remove the journal-noted cgroup dirs (``store.list_cgroup_journal`` entries) that are
        not in ``used``, hold no process and no child cgroup; forget the notes of dirs that are
        gone. Returns the paths removed. The caller holds the lock of each note's sandbox."""
        removed = []
        # deepest first: a parent is empty only once its children are gone
        for note in sorted(notes, key=lambda n: n['path'].count('/'), reverse=True):
            path = note['path']
            if path in used:
                continue
            try:
                if self.cgroups.remove_if_empty(path):
                    removed.append(path)
            except InvalidArgument:
                pass  # not under today's cgroup mounts: never ours to touch; forget the note
            if not os.path.lexists(path) or not self._under_mounts(path):
                self.store.unjournal_cgroup(note['owner'], path)
        return removed

    def _under_mounts(self, path):
        return any(path.startswith(m.rstrip('/') + '/') for m in self.cgroups.mounts())

    def remove_cgroups(self, dirs, owner):
        """``cgroups.remove`` of ``owner``'s directories, and their notes once they are gone
        (a directory kept for another owner's children keeps its note: orphan collection
        removes it once it is empty)."""
        try:
            self.cgroups.remove(dirs)
        finally:
            for path in dirs or []:
                if isinstance(path, str) and not os.path.lexists(path):
                    self.store.unjournal_cgroup(owner, path)

    @property
    def hv(self):
        if self._hv is None:
            from ansible_collections.kata.runtime.plugins.module_utils.kata.hypervisor.libvirt import (
                LibvirtHypervisor,
            )
            self._hv = LibvirtHypervisor(self.config.libvirt_uri, self.config.domain_prefix)
        return self._hv

    def agent(self, sandbox_id, timeout=10):
        """A client of the sandbox's agent; its errors name the guest console log to read."""
        console_log = share.console_log(self.store, sandbox_id)
        if self._agent_factory is not None:
            return self._agent_factory(sandbox_id, timeout, console_log)
        return AgentClient(self.store.agent_socket(sandbox_id), timeout=timeout, sandbox_id=sandbox_id,
                           console_log=console_log)


def now():
    """RFC 3339 UTC timestamp, the format every record uses."""
    return time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())


def coerce_str_dict(value, what):
    """A dict of strings from user input: scalar values become strings, anything else is refused.

    YAML turns ``tier: 1`` into an int; labels and annotations are strings in OCI, so scalars
    are converted the way a user means them, and nested values get a clear error.
    """
    if value is None:
        return None
    if not isinstance(value, dict):
        raise InvalidArgument('%s must be a dict of strings, got %r' % (what, value))
    out = {}
    for key, item in value.items():
        if isinstance(item, bool):
            item = 'true' if item else 'false'
        elif isinstance(item, (int, float)):
            item = str(item)
        if not isinstance(key, str) or not isinstance(item, str):
            raise InvalidArgument('%s must map strings to strings: %r: %r is not a string' % (what, key, item))
        out[key] = item
    return out
