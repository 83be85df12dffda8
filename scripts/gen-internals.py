#!/usr/bin/env python
# Copyright: kata.runtime contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Write the record schema and the state tables of docs/internals.md from model.py.

The block between ``<!-- model:begin -->`` and ``<!-- model:end -->`` is generated; the rest
of the file is prose. ``--check`` exits 1 (printing a diff) when the file is not current.
Run with the collection importable (``PYTHONPATH=.collections``, as ``make`` does).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
import sys

from ansible_collections.kata.runtime.plugins.module_utils.kata import model

DOC = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'docs', 'internals.md')
BEGIN, END = '<!-- model:begin -->', '<!-- model:end -->'


def _default(f):
    if f.default_factory is not dataclasses.MISSING:
        return '`%s`' % json.dumps(f.default_factory())
    if f.default is dataclasses.MISSING:
        return 'required'
    return '`%s`' % json.dumps(f.default)


def _fields(cls, what):
    lines = ['### `%s` (`%s`)' % (cls.__name__, what), '',
             '| field | JSON value | absent means | saved |', '| --- | --- | --- | --- |']
    for f in dataclasses.fields(cls):
        lines.append('| `%s` | %s | %s | %s |' % (f.name, f.metadata['check'].what, _default(f),
                                                  'yes' if f.metadata['saved'] else 'no (in memory)'))
    return lines


def _transitions(table, kind, states):
    ops = list(table)
    lines = ['| %s state | %s |' % (kind, ' | '.join('`%s`' % op for op in ops)),
             '| --- |%s' % (' --- |' * len(ops))]
    for state in states:
        lines.append('| `%s` | %s |' % (state, ' | '.join(table[op].get(state, 'refused') for op in ops)))
    return lines


# What the action names of the tables mean (sandbox.py, container.py).
ACTIONS = (
    ('finish', 'boots the VM again if needed, waits for the agent and runs the create-time hooks'),
    ('boot', 'marks the containers stopped and boots the VM (from a template when asked)'),
    ('resume', 'resumes the paused VM'),
    ('suspend', 'pauses the VM'),
    ('shutdown', 'asks the agent to power off, destroys the VM after the timeout (running containers need force)'),
    ('mark', 'records the state only (no VM to act on)'),
    ('delete', 'the seed\'s forced delete when asked (running containers need force)'),
    ('start', 'starts the process created in the guest'),
    ('kill', 'signals the process (stop: then SIGKILL after the timeout; delete: SIGKILL, only with force)'),
    ('remove', 'removes the container in the guest and its host side'),
    ('none', 'nothing to do'),
)


def render():
    out = [BEGIN, '',
           'Generated from `model.py` by `scripts/gen-internals.py` (a unit test fails when it is stale).',
           'Every record file holds `version` (%d); `from_json` refuses another version, a field it does'
           % model.RECORD_VERSION,
           'not know, a required field missing and a value of the wrong type, naming the file and field.', '']
    out += _fields(model.SandboxRecord, 'sandboxes/<id>/sandbox.json') + ['']
    out += _fields(model.ContainerRecord, 'sandboxes/<sandbox>/containers/<id>.json') + ['']
    out += ['### What each operation does, by state', '',
            'Sandbox states as users see them (`observed_sandbox_state`: the record\'s `state` and the',
            'live VM; `dead` is never recorded). "refused" is a `Conflict` naming the state.', '']
    out += _transitions(model.SANDBOX_TRANSITIONS, 'sandbox',
                        (model.SandboxState.CREATING, model.SandboxState.RUNNING, model.SandboxState.PAUSED,
                         model.SandboxState.STOPPED, model.SandboxState.DEAD, model.SandboxState.DELETING))
    out += ['', 'Container statuses (OCI, observed: the record, the VM state and the agent).', '']
    out += _transitions(model.CONTAINER_TRANSITIONS, 'container',
                        model.ContainerStatus.OCI + (model.ContainerStatus.UNKNOWN,))
    out += ['', 'Actions: ' + '; '.join('`%s` %s' % kv for kv in ACTIONS) + '.', '', END]
    return '\n'.join(out)


def main(argv):
    with open(DOC) as f:
        text = f.read()
    start, end = text.index(BEGIN), text.index(END) + len(END)
    new = text[:start] + render() + text[end:]
    if '--check' in argv:
        if new != text:
            sys.stdout.writelines(difflib.unified_diff(text.splitlines(True), new.splitlines(True),
                                                       'docs/internals.md', 'generated'))
            print('\ndocs/internals.md is stale: run scripts/gen-internals.py', file=sys.stderr)
            return 1
        return 0
    if new != text:
        with open(DOC, 'w') as f:
            f.write(new)
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
