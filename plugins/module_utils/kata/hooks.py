# Copyright: kata.runtime contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Running OCI hooks (runtime-spec 1.3): order, state on stdin, timeouts, failure rules.

``hooks`` is the normalised shape ``oci.validate_hooks`` returns:
``{kind: [{'path': str, 'args': [str] | None, 'env': ['K=V'] | None, 'timeout': int | None}]}``.

- Hooks of one kind run in the order given.
- The executable is ``path``; ``args`` (when given) is the full argv, ``args[0]`` being argv[0].
- The environment is exactly ``env`` when given, else a minimal one (just ``PATH``).
- The container state JSON is written on stdin.
- Each hook runs in its own session (and so its own process group): on timeout the whole group
  gets SIGKILL, so children the hook spawned die with it (a child that made its own session
  escapes, as it would with any runtime).
- stdout and stderr are captured (never inherited: a module's stdout is its result) and only the
  last ``TAIL_BYTES`` are kept for the message.
- A failing ``poststop`` hook is a warning (returned) and the next hooks still run; for every
  other kind the first failure raises ``HookError`` and the remaining hooks do not run.
"""

from __future__ import annotations

import errno
import json
import os
import selectors
import signal
import subprocess
import time

from ansible_collections.kata.runtime.plugins.module_utils.kata.errors import (
    HookError,
    InvalidArgument,
)
from ansible_collections.kata.runtime.plugins.module_utils.kata.guest import contract
from ansible_collections.kata.runtime.plugins.module_utils.kata.oci import HOOK_KINDS

WARN_ONLY_KINDS = ('poststop',)
TAIL_BYTES = 4096

# After the hook itself has exited, keep reading its pipes this long at most: a background
# child that inherited stderr must not keep us waiting until the timeout.
_DRAIN_AFTER_EXIT = 0.2
# Longest timeout a hook may have (the validation in oci.py refuses more, at most an hour);
# records written before that was checked are held to this when they run.
MAX_TIMEOUT = 86400
_POLL = 0.05


def run_hooks(kind, hooks, state, default_timeout=30):
    """Run ``hooks[kind]`` in order with ``state`` as JSON on stdin.

    Returns the list of warnings (only ``poststop`` failures produce them). Raises
    ``InvalidArgument`` for an unknown kind or a state that is not JSON-serialisable,
    ``HookError`` for a malformed hook entry (before any hook runs) and for the first failing
    hook of any kind other than ``poststop``.
    """
    if kind not in HOOK_KINDS:
        raise InvalidArgument(f"unknown hook kind {kind!r}: expected one of {', '.join(HOOK_KINDS)}")
    if (isinstance(default_timeout, bool) or not isinstance(default_timeout, (int, float))
            or not 0 < default_timeout <= MAX_TIMEOUT):
        raise InvalidArgument(f'invalid default hook timeout {default_timeout!r}: must be a positive number of '
                              f'seconds, at most {MAX_TIMEOUT}')
    entries = _entries(kind, hooks)
    try:
        payload = json.dumps(state, sort_keys=True).encode('utf-8')
    except (TypeError, ValueError) as exc:
        raise InvalidArgument(f'container state for {kind} hooks is not JSON-serialisable: {exc}')
    # check every entry before running any, so a malformed list runs nothing at all; for a
    # warn-only kind (poststop) a malformed entry is that entry's failure, never a reason to
    # stop: a delete must not become impossible because of what a record holds
    warnings = []
    prepared = []
    for index, hook in enumerate(entries):
        try:
            prepared.append(_prepare(kind, index, hook, default_timeout))
        except HookError as err:
            if kind not in WARN_ONLY_KINDS:
                raise
            warnings.append(str(err))
    cwd = '/'
    if isinstance(state, dict) and isinstance(state.get('bundle'), str) and os.path.isdir(state['bundle']):
        cwd = state['bundle']

    for spec in prepared:
        failure = _run_one(spec, payload, cwd)
        if failure is None:
            continue
        if kind in WARN_ONLY_KINDS:
            warnings.append(failure)
        else:
            raise HookError(failure, kind=kind, path=spec['path'])
    return warnings


def _entries(kind, hooks):
    if hooks is None:
        return []
    if not isinstance(hooks, dict):
        raise HookError(f'hooks must be a mapping of hook kind to a list of hooks, got {hooks!r}')
    entries = hooks.get(kind)
    if entries is None:
        return []
    if not isinstance(entries, list):
        raise HookError(f'{kind} hooks must be a list, got {entries!r}')
    return entries


def _label(kind, index, path):
    return f'{kind} hook #{index} ({path})'


def _prepare(kind, index, hook, default_timeout):
    """Check one normalised hook entry; return what ``_run_one`` needs. Raises HookError."""
    if not isinstance(hook, dict):
        raise HookError(f'{kind} hook #{index} must be a mapping with a path, got {hook!r}')
    path = hook.get('path')
    if not isinstance(path, str) or not path:
        raise HookError(f'{kind} hook #{index} has no path (got {path!r})')
    label = _label(kind, index, path)
    if '\0' in path or not os.path.isabs(path):
        raise HookError(f'{label}: hook path {path!r} must be absolute')

    args = hook.get('args')
    if args is None or args == []:
        argv = [path]
    elif isinstance(args, list) and all(isinstance(a, str) and '\0' not in a for a in args):
        argv = list(args)
    else:
        raise HookError(f'{label}: args must be a list of strings, got {args!r}')

    env_list = hook.get('env')
    if env_list is None:
        env = {'PATH': contract.DEFAULT_PATH}
    elif isinstance(env_list, list):
        env = {}
        for item in env_list:
            if not isinstance(item, str) or '=' not in item or item.startswith('=') or '\0' in item:
                raise HookError(f'{label}: env entry {item!r} is not of the form NAME=VALUE')
            name, value = item.split('=', 1)
            env[name] = value
    else:
        raise HookError(f'{label}: env must be a list of NAME=VALUE strings, got {env_list!r}')

    timeout = hook.get('timeout')
    if timeout is None:
        timeout = default_timeout
    elif isinstance(timeout, bool) or not isinstance(timeout, int) or not 0 < timeout <= MAX_TIMEOUT:
        raise HookError(f'{label}: timeout must be a positive integer of seconds, at most {MAX_TIMEOUT}; '
                        f'got {timeout!r}')

    return {'kind': kind, 'index': index, 'path': path, 'argv': argv, 'env': env,
            'timeout': timeout, 'label': label}


def _tail_text(data):
    text = bytes(data[-TAIL_BYTES:]).decode('utf-8', 'replace').strip()
    return text


def _describe(spec, what, stdout, stderr):
    msg = f"{spec['label']} {what}"
    err = _tail_text(stderr)
    if err:
        msg += f'; stderr: {err}'
    else:
        out = _tail_text(stdout)
        if out:
            msg += f'; stdout: {out}'
    return msg


def _run_one(spec, payload, cwd):
    """Run one hook. Returns None on success, else the failure message."""
    path = spec['path']
    if not os.path.exists(path):
        return f"{spec['label']} failed: {path} does not exist"
    if not os.path.isfile(path):
        return f"{spec['label']} failed: {path} is not a regular file"
    if not os.access(path, os.X_OK):
        return f"{spec['label']} failed: {path} is not executable"
    try:
        proc = subprocess.Popen(
            spec['argv'], executable=path, env=spec['env'], cwd=cwd,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            close_fds=True, start_new_session=True)
    except (OSError, ValueError) as exc:  # ValueError: what exec cannot take (a NUL byte)
        return f"{spec['label']} could not be executed: {getattr(exc, 'strerror', None) or exc}"

    stdout, stderr = bytearray(), bytearray()
    timed_out = _communicate(proc, payload, spec['timeout'], stdout, stderr)
    if timed_out:
        return _describe(spec, f"timed out after {spec['timeout']} s and was killed", stdout, stderr)
    code = proc.returncode
    if code == 0:
        return None
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f'signal {-code}'
        return _describe(spec, f'was killed by {name}', stdout, stderr)
    return _describe(spec, f'failed with exit code {code}', stdout, stderr)


def _kill_group(proc):
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except OSError as exc:
        if exc.errno != errno.ESRCH:
            raise
    proc.wait()


def _communicate(proc, payload, timeout, stdout, stderr):
    """Feed ``payload`` to stdin, keep the tails of stdout/stderr, wait with a deadline.

    Returns True when the deadline passed (the process group is then killed and reaped).
    """
    deadline = time.monotonic() + timeout
    sel = selectors.DefaultSelector()
    buffers = {proc.stdout: stdout, proc.stderr: stderr}
    try:
        for stream in buffers:
            os.set_blocking(stream.fileno(), False)
            sel.register(stream, selectors.EVENT_READ)
        os.set_blocking(proc.stdin.fileno(), False)
        if payload:
            sel.register(proc.stdin, selectors.EVENT_WRITE)
        else:
            proc.stdin.close()
        view = memoryview(payload)
        exited_at = None
        while True:
            now = time.monotonic()
            if exited_at is None and proc.poll() is not None:
                exited_at = now
            if exited_at is not None and (not sel.get_map() or now - exited_at >= _DRAIN_AFTER_EXIT):
                return False
            if exited_at is None and now >= deadline:
                _kill_group(proc)
                return True
            wait = _POLL if exited_at is None else max(0.0, min(_POLL, exited_at + _DRAIN_AFTER_EXIT - now))
            if not sel.get_map():
                time.sleep(wait)
                continue
            for key, _events in sel.select(wait):
                stream = key.fileobj
                if stream is proc.stdin:
                    try:
                        written = os.write(stream.fileno(), view[:65536])
                    except BlockingIOError:
                        continue
                    except OSError:
                        # the hook does not read its stdin: not a failure by itself
                        written = len(view)
                    view = view[written:]
                    if not view:
                        sel.unregister(stream)
                        stream.close()
                    continue
                try:
                    chunk = os.read(stream.fileno(), 65536)
                except BlockingIOError:
                    continue
                if not chunk:
                    sel.unregister(stream)
                    continue
                buf = buffers[stream]
                buf += chunk
                if len(buf) > TAIL_BYTES:
                    del buf[:-TAIL_BYTES]
    finally:
        sel.close()
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            try:
                stream.close()
            except OSError:
                pass
        if proc.returncode is None:
            _kill_group(proc)
