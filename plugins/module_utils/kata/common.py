# Copyright: kata.runtime contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What every kata.runtime module shares on the module side.

This is the only file under ``module_utils/kata`` that knows about ``AnsibleModule``; the core
stays free of Ansible. It holds:

- ``COMMON_ARGS``: the argument spec of ``config`` and ``runtime_root`` (documented by the
  ``kata.runtime.kata`` doc fragment);
- ``load_module_config(module, **overrides)``: the ``Config`` for this run;
- ``require_state_root_dir(config)``: refuses a state root that is (or is under) a file;
- ``fail_on_kata_error(module)``: turns a ``KataError`` into ``fail_json`` in one place;
- ``Progress``: progress lines for long steps (boot, waiting for the agent, image builds);
- ``module_args(table)``: the ``AnsibleModule`` arguments from a module's ``OptionTable``;
- ``StateManager`` and ``run_manager``: the shared half of the lifecycle modules, with the one
  compare step (differences, ``--diff``, the refusal to recreate unasked);
- ``Differences`` (from ``options.py``): one record of differing settings that feeds the
  decision, ``--diff`` and the ``actions`` list.
"""

from __future__ import annotations

import os
import time

from ansible_collections.kata.runtime.plugins.module_utils.kata.config import (
    DEFAULT_CONFIG_PATH,
    load_config,
)
from ansible_collections.kata.runtime.plugins.module_utils.kata.errors import InvalidArgument, KataError
from ansible_collections.kata.runtime.plugins.module_utils.kata.options import IMMUTABLE

COMMON_ARGS = dict(
    config=dict(type='path', default=DEFAULT_CONFIG_PATH),
    runtime_root=dict(type='path'),
)


def common_argument_spec(**extra):
    """Return a fresh argument spec: ``COMMON_ARGS`` plus the module's own options."""
    spec = {name: dict(value) for name, value in COMMON_ARGS.items()}
    spec.update(extra)
    return spec


def module_args(table):
    """The ``AnsibleModule`` arguments of a lifecycle module, from its ``OptionTable``."""
    args = dict(argument_spec=common_argument_spec(**table.argument_spec()), supports_check_mode=True)
    args.update(table.module_args)
    return args


def load_module_config(module, **overrides):
    """Return the ``Config`` for this module run.

    Reads the file named by the ``config`` option; ``runtime_root`` overrides the file's
    ``state_root``, and ``overrides`` (config keys; None values are ignored) win over both.
    The default path given explicitly behaves as the default: a missing file means defaults.
    Raises ``InvalidArgument`` for a bad file or value; call it inside ``fail_on_kata_error``.
    """
    path = module.params.get('config')
    if path == DEFAULT_CONFIG_PATH:
        path = None
    values = {'state_root': module.params.get('runtime_root')}
    values.update(overrides)
    return load_config(path, overrides=values)


def require_state_root_dir(config):
    """Return ``config`` if its state root can hold state; InvalidArgument if it cannot.

    A state root that does not exist yet is fine (it is made when first needed); one that is,
    or goes through, an existing file or a dangling link is refused here, with its name, before
    anything lists or creates under it. Nothing is created or changed.
    """
    path = config.state_root
    probe = path
    while not os.path.lexists(probe):
        parent = os.path.dirname(probe)
        if parent == probe:
            return config
        probe = parent
    if not os.path.isdir(probe):
        where = 'it' if probe == path else probe
        raise InvalidArgument('state root %s cannot be used: %s exists and is not a directory'
                              % (path, where))
    return config


class fail_on_kata_error(object):
    """Context manager (and decorator) that turns a ``KataError`` into ``fail_json``.

    ``with fail_on_kata_error(module):`` ... any ``KataError`` raised inside ends the module
    with ``msg=str(err)`` and ``changed=False``. ``result`` adds keys to the failure (for
    example the ``actions`` done so far, or ``changed=True`` when something was already done
    before the error). Other exceptions pass through untouched.
    """

    def __init__(self, module, **result):
        self.module = module
        self.result = result

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc is None or not isinstance(exc, KataError):
            return False
        result = dict(changed=False)
        result.update(self.result)
        result['msg'] = str(exc)
        self.module.fail_json(**result)
        return True  # not reached: fail_json exits

    def __call__(self, func):
        def wrapper(*args, **kwargs):
            with fail_on_kata_error(self.module, **self.result):
                return func(*args, **kwargs)
        wrapper.__name__ = getattr(func, '__name__', 'wrapper')
        wrapper.__doc__ = getattr(func, '__doc__', None)
        return wrapper


class Progress(object):
    """Progress lines for the steps of a long operation.

    Ansible shows a module's output only when it ends, so progress goes where an operator can
    follow it while the module runs: the target's system log (``module.log``, which is syslog
    or the journal and honours ``no_log``), tagged with ``tag``. Every line is also kept, with
    the seconds since the start, so a module can return them (for example as ``progress``)
    and a failure can say how far it got. Call the object as a function: ``progress('booting')``.
    """

    def __init__(self, module=None, tag='kata.runtime', clock=time.monotonic):
        self.module = module
        self.tag = tag
        self._clock = clock
        self._start = clock()
        self.lines = []

    def __call__(self, msg, *args):
        if args:
            msg = msg % args
        elapsed = round(self._clock() - self._start, 3)
        self.lines.append({'elapsed': elapsed, 'msg': msg})
        if self.module is not None:
            self.module.log('%s: [%.1fs] %s' % (self.tag, elapsed, msg))
        return msg

    def messages(self):
        """The progress messages so far, without the timing."""
        return [line['msg'] for line in self.lines]


class StateManager(object):
    """The shared half of the declarative modules (kata_sandbox, kata_container, kata_template).

    A subclass plans its steps once through ``act()``: in check mode each step is only
    recorded (``would ...``), otherwise it runs with the shared Trace. So check mode and a
    real run cannot disagree about what they do. ``finish()`` reports the result the same way
    for every module: ``changed``, ``actions``, ``diff`` (with --diff), warnings.
    """

    def __init__(self, module):
        from ansible_collections.kata.runtime.plugins.module_utils.kata.runtime import Runtime
        self.module = module
        self.p = module.params
        self.check = module.check_mode
        self.config = require_state_root_dir(load_module_config(module))
        self.rt = Runtime(self.config, progress=Progress(module))
        self.trace = self.rt.trace()
        self.changed = False
        self.diff = {'before': {}, 'after': {}}

    def act(self, msg, func, *args, **kwargs):
        """Record a planned step; run it unless in check mode."""
        self.changed = True
        if self.check:
            self.trace.step('would ' + msg)
            return None
        return func(*args, trace=self.trace, **kwargs)

    def compare(self, what, name, table, record, settings, given=None):
        """The one compare step: how ``record`` differs from the desired ``settings``.

        ``table.compare`` finds the differences (only the options in ``given``; None compares
        all); they go into ``--diff``; differing immutable settings without ``recreate=true``
        end the run with an error naming each (``what`` ``name``: ``container app``) - in check
        mode too, before anything is done. Returns ``(differences, immutable names)``.
        """
        diffs = table.compare(record, settings, given=given)
        before, after = diffs.get_before_after()
        self.diff['before'].update(before)
        self.diff['after'].update(after)
        immutable = [key for key in diffs.names() if table.kind_of(key) == IMMUTABLE]
        if immutable and not self.p['recreate']:
            raise InvalidArgument(
                '%s %s exists with different %s (%s); set recreate=true to delete and create it again'
                % (what, name, ', '.join(immutable),
                   '; '.join('%s: %r -> %r' % (key, before[key], after[key]) for key in immutable)))
        return diffs, immutable

    def finish(self, **result):
        for warning in self.trace.warnings:
            self.module.warn(warning)
        if self.module._diff:
            result['diff'] = self.diff
        self.module.exit_json(changed=self.changed, actions=self.trace.actions, **result)


def run_manager(module, manager_class):
    """Build and run a StateManager; a KataError fails the task with what was already done.

    A failed create has already removed what it made, and its ``actions`` say so; ``changed``
    is true when steps ran before the error (never in check mode).
    """
    manager = None
    try:
        manager = manager_class(module)
        manager.run()
    except KataError as err:
        actions = manager.trace.actions if manager else []
        module.fail_json(msg=str(err), changed=bool(actions) and not module.check_mode, actions=actions)
