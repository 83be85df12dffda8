# Copyright: kata.runtime contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""run_hooks against real hook scripts and real processes."""

from __future__ import annotations

import json
import os
import time

import pytest
from ansible_collections.kata.runtime.plugins.module_utils.kata.errors import (
    HookError,
    InvalidArgument,
)
from ansible_collections.kata.runtime.plugins.module_utils.kata.hooks import (
    TAIL_BYTES,
    run_hooks,
)
from ansible_collections.kata.runtime.plugins.module_utils.kata.oci import HOOK_KINDS

STATE = {'ociVersion': '1.3.0', 'id': 'c1', 'status': 'stopped', 'pid': 0,
         'bundle': '/', 'annotations': {'k': 'v'}}


def script(tmp_path, name, body, mode=0o755):
    path = tmp_path / name
    path.write_text('#!/bin/sh\n' + body)
    path.chmod(mode)
    return str(path)


def hook(path, args=None, env=None, timeout=None):
    return {'path': path, 'args': args, 'env': env, 'timeout': timeout}


def appender(tmp_path, name, log, extra=''):
    """A hook that appends its name to ``log`` (then runs ``extra``)."""
    return script(tmp_path, name, f'echo {name} >> {log}\n{extra}')


def process_dead(pid):
    """Gone, or a zombie waiting for its (new) parent to reap it."""
    try:
        with open(f'/proc/{pid}/stat') as f:
            stat = f.read()
    except FileNotFoundError:
        return True
    return stat.rsplit(')', 1)[1].split()[0] in ('Z', 'X')


def wait_dead(pid, limit=2.0):
    end = time.monotonic() + limit
    while time.monotonic() < end:
        if process_dead(pid):
            return True
        time.sleep(0.02)
    return process_dead(pid)


def test_state_on_stdin_argv_and_env_exactly_as_given(tmp_path):
    out = tmp_path / 'out'
    out.mkdir()
    # /bin/sh as the hook path with a custom argv[0]: the kernel shows the real argv in
    # /proc/<pid>/cmdline, and the initial environment in /proc/<pid>/environ
    cmd = (f'/bin/cat /proc/$$/cmdline > {out}/argv; /bin/cat /proc/$$/environ > {out}/env; '
           f'/bin/cat > {out}/stdin')
    hooks = {'createRuntime': [hook('/bin/sh', args=['kata-hook-argv0', '-c', cmd, 'x', 'y z'],
                                    env=['FOO=bar', 'EMPTY=', 'EQ=a=b'])]}
    assert run_hooks('createRuntime', hooks, STATE) == []
    assert json.loads((out / 'stdin').read_text()) == STATE
    assert (out / 'argv').read_bytes().split(b'\0')[:-1] == [b'kata-hook-argv0', b'-c', cmd.encode(), b'x', b'y z']
    assert sorted((out / 'env').read_bytes().split(b'\0')[:-1]) == [b'EMPTY=', b'EQ=a=b', b'FOO=bar']


def test_defaults_argv_is_path_and_env_is_minimal(tmp_path):
    out = tmp_path / 'out'
    path = script(tmp_path, 'rec', f'/bin/cat /proc/$$/environ > {out}.env\n')
    assert run_hooks('prestart', {'prestart': [hook(path)]}, STATE) == []
    assert (tmp_path / 'out.env').read_bytes().split(b'\0')[:-1] == [
        b'PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin']


def test_hook_output_is_captured_not_inherited(tmp_path, capfd):
    path = script(tmp_path, 'noisy', 'echo to-stdout; echo to-stderr >&2\n')
    assert run_hooks('poststart', {'poststart': [hook(path)]}, STATE) == []
    captured = capfd.readouterr()
    assert 'to-stdout' not in captured.out and 'to-stderr' not in captured.err


def test_order_is_preserved(tmp_path):
    log = tmp_path / 'log'
    names = ['h3', 'h1', 'h2']
    hooks = {'startContainer': [hook(appender(tmp_path, n, log)) for n in names]}
    assert run_hooks('startContainer', hooks, STATE) == []
    assert log.read_text().split() == names


def test_failing_hook_raises_for_prestart_and_stops(tmp_path):
    log = tmp_path / 'log'
    bad = appender(tmp_path, 'bad', log, 'echo something broke >&2\nexit 3\n')
    after = appender(tmp_path, 'after', log)
    with pytest.raises(HookError) as err:
        run_hooks('prestart', {'prestart': [hook(bad), hook(after)]}, STATE)
    msg = str(err.value)
    assert bad in msg and 'prestart' in msg and 'exit code 3' in msg and 'something broke' in msg
    assert log.read_text().split() == ['bad']


@pytest.mark.parametrize('kind', [k for k in HOOK_KINDS if k != 'poststop'])
def test_every_kind_but_poststop_raises(tmp_path, kind):
    bad = script(tmp_path, 'bad', 'exit 3\n')
    with pytest.raises(HookError, match='exit code 3'):
        run_hooks(kind, {kind: [hook(bad)]}, STATE)


def test_failing_poststop_is_a_warning_and_the_rest_run(tmp_path):
    log = tmp_path / 'log'
    first = appender(tmp_path, 'first', log, 'echo cleanup failed >&2\nexit 3\n')
    second = appender(tmp_path, 'second', log)
    warnings = run_hooks('poststop', {'poststop': [hook(first), hook(second)]}, STATE)
    assert len(warnings) == 1
    assert first in warnings[0] and 'poststop' in warnings[0] and 'exit code 3' in warnings[0]
    assert 'cleanup failed' in warnings[0]
    assert log.read_text().split() == ['first', 'second']


def test_killed_by_signal_is_a_failure(tmp_path):
    path = script(tmp_path, 'selfkill', 'kill -TERM $$\nsleep 5\n')
    with pytest.raises(HookError, match='killed by SIGTERM'):
        run_hooks('poststart', {'poststart': [hook(path)]}, STATE)


def test_timeout_kills_the_hook_and_its_children(tmp_path):
    pidfile = tmp_path / 'grandchild.pid'
    path = script(tmp_path, 'hang', f'echo about to hang >&2\nsleep 60 &\necho $! > {pidfile}\nsleep 60\n')
    start = time.monotonic()
    with pytest.raises(HookError) as err:
        run_hooks('createContainer', {'createContainer': [hook(path, timeout=1)]}, STATE)
    elapsed = time.monotonic() - start
    assert 0.9 <= elapsed < 10  # the hook would hang for 60 s; the slack is for a loaded host
    msg = str(err.value)
    assert 'timed out after 1 s' in msg and path in msg and 'about to hang' in msg
    grandchild = int(pidfile.read_text())
    assert wait_dead(grandchild), f'grandchild {grandchild} survived the timeout'


def test_default_timeout_applies_and_poststop_timeout_warns(tmp_path):
    log = tmp_path / 'log'
    hang = script(tmp_path, 'hang', 'exec sleep 60\n')
    after = appender(tmp_path, 'after', log)
    start = time.monotonic()
    warnings = run_hooks('poststop', {'poststop': [hook(hang), hook(after)]}, STATE, default_timeout=1)
    assert time.monotonic() - start < 10  # not the 60 s the hook hangs
    assert len(warnings) == 1 and 'timed out after 1 s' in warnings[0]
    assert log.read_text().split() == ['after']


def test_background_child_holding_stderr_does_not_block(tmp_path):
    pidfile = tmp_path / 'bg.pid'
    path = script(tmp_path, 'bg', f'sleep 30 &\necho $! > {pidfile}\nexit 0\n')
    start = time.monotonic()
    try:
        assert run_hooks('poststart', {'poststart': [hook(path, timeout=10)]}, STATE) == []
        assert time.monotonic() - start < 10  # not the 30 s the child holds stderr
    finally:
        if pidfile.exists():
            os.kill(int(pidfile.read_text()), 9)


def test_hook_ignoring_large_stdin_succeeds(tmp_path):
    path = script(tmp_path, 'ignore', 'exit 0\n')
    state = dict(STATE, annotations={'big': 'x' * 300000})
    assert run_hooks('prestart', {'prestart': [hook(path, timeout=5)]}, state) == []


def test_stderr_in_message_is_bounded_to_the_tail(tmp_path):
    path = script(tmp_path, 'loud', 'i=0; while [ $i -lt 3000 ]; do echo line-$i >&2; i=$((i+1)); done\nexit 1\n')
    with pytest.raises(HookError) as err:
        run_hooks('prestart', {'prestart': [hook(path)]}, STATE)
    msg = str(err.value)
    assert 'line-2999' in msg and 'line-0\n' not in msg
    assert len(msg) < TAIL_BYTES + 300


def test_relative_path_is_refused_and_nothing_runs(tmp_path):
    log = tmp_path / 'log'
    good = appender(tmp_path, 'good', log)
    with pytest.raises(HookError, match="'bin/hook' must be absolute"):
        run_hooks('prestart', {'prestart': [hook(good), hook('bin/hook')]}, STATE)
    assert not log.exists()


def test_malformed_poststop_entries_are_warnings_and_the_others_run(tmp_path):
    """A record holding what no process can run (NUL in args, a relative path, a timeout no
    clock can add) must not make a delete impossible: poststop only warns."""
    log = tmp_path / 'log'
    good = appender(tmp_path, 'good', log)
    bad = [hook('bin/hook'), dict(hook(good), args=[good, 'a\x00b']), dict(hook(good), timeout=10 ** 400)]
    warnings = run_hooks('poststop', {'poststop': bad + [hook(good)]}, STATE)
    assert len(warnings) == 3, warnings
    assert "'bin/hook' must be absolute" in warnings[0] and 'args' in warnings[1] and 'timeout' in warnings[2]
    assert log.read_text().count('\n') == 1


def test_missing_hook_is_refused_naming_it(tmp_path):
    missing = str(tmp_path / 'no-such-hook')
    with pytest.raises(HookError, match='no-such-hook does not exist'):
        run_hooks('prestart', {'prestart': [hook(missing)]}, STATE)


def test_not_executable_hook_is_refused_naming_it(tmp_path):
    path = script(tmp_path, 'plain', 'exit 0\n', mode=0o644)
    with pytest.raises(HookError) as err:
        run_hooks('createRuntime', {'createRuntime': [hook(path)]}, STATE)
    assert path in str(err.value) and 'not executable' in str(err.value)


def test_missing_poststop_hook_warns_and_the_rest_run(tmp_path):
    log = tmp_path / 'log'
    missing = str(tmp_path / 'gone')
    after = appender(tmp_path, 'after', log)
    warnings = run_hooks('poststop', {'poststop': [hook(missing), hook(after)]}, STATE)
    assert len(warnings) == 1 and missing in warnings[0]
    assert log.read_text().split() == ['after']


def test_exec_error_is_a_failure(tmp_path):
    # executable bit set, but no interpreter line and not an ELF: exec fails with ENOEXEC
    path = tmp_path / 'junk'
    path.write_bytes(b'\x00\x01\x02garbage')
    path.chmod(0o755)
    with pytest.raises(HookError, match='could not be executed'):
        run_hooks('prestart', {'prestart': [hook(str(path))]}, STATE)


@pytest.mark.parametrize('entry, match', [
    ({'path': '/bin/true', 'env': ['NOEQUALS']}, "'NOEQUALS' is not of the form"),
    ({'path': '/bin/true', 'timeout': 0}, 'timeout must be a positive integer'),
    ({'path': '/bin/true', 'timeout': True}, 'timeout must be a positive integer'),
    ({'path': '/bin/true', 'args': 'true'}, 'args must be a list'),
    ({'args': ['x']}, 'has no path'),
    ('/bin/true', 'must be a mapping'),
])
def test_malformed_entries_are_refused_before_anything_runs(tmp_path, entry, match):
    log = tmp_path / 'log'
    good = appender(tmp_path, 'good', log)
    with pytest.raises(HookError, match=match):
        run_hooks('prestart', {'prestart': [hook(good), entry]}, STATE)
    assert not log.exists()


def test_unknown_kind_is_invalid(tmp_path):
    with pytest.raises(InvalidArgument, match="'poststopp'"):
        run_hooks('poststopp', {}, STATE)


def test_no_hooks_of_that_kind(tmp_path):
    assert run_hooks('prestart', None, STATE) == []
    assert run_hooks('prestart', {'poststop': [hook('/bin/false')]}, STATE) == []
    assert run_hooks('prestart', {'prestart': []}, STATE) == []


def test_unserialisable_state_is_invalid(tmp_path):
    log = tmp_path / 'log'
    with pytest.raises(InvalidArgument, match='not JSON-serialisable'):
        run_hooks('prestart', {'prestart': [hook(appender(tmp_path, 'h', log))]}, {'pid': object()})
    assert not log.exists()
