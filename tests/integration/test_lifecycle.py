# Copyright: kata.runtime contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The lifecycle core on real guests: sandbox.py and container.py driven directly.

Boots real VMs through libvirtd (TCG where KVM cannot run a stock kernel), runs real
processes in them through the agent, and proves that a forced delete leaves no domain,
cgroup directory, state file, mount or mapping behind, also when a delete is interrupted.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from ansible_collections.kata.runtime.plugins.module_utils.kata import container as ctr
from ansible_collections.kata.runtime.plugins.module_utils.kata import sandbox as sbx
from ansible_collections.kata.runtime.plugins.module_utils.kata.config import load_config
from ansible_collections.kata.runtime.plugins.module_utils.kata.errors import Conflict
from ansible_collections.kata.runtime.plugins.module_utils.kata.runtime import Runtime


@pytest.fixture
def env(kata_envs):
    e = kata_envs('lc')
    yield e
    left, skeleton, prune = e.teardown()
    assert not left, 'left behind: %s' % json.dumps(left, indent=1)


def runtime(env):
    return Runtime(load_config(env.config_path))


def run_container(rt, sid, cid, rootfs, script, trace, **kw):
    settings = ctr.settings_from(dict({'rootfs': rootfs, 'command': ['/bin/sh', '-c', script]}, **kw))
    ctr.create(rt, sid, cid, settings, trace=trace)
    return ctr.start(rt, cid, trace=trace)


def test_two_containers_outputs_exit_codes_stop_and_forced_delete(env, busybox_rootfs):
    rt = runtime(env)
    trace = rt.trace()
    sbx.create(rt, 'sb', sbx.settings_from(rt.config, {}), trace=trace)
    info = sbx.info(rt, rt.store.load_sandbox('sb'))
    assert info['state'] == 'running' and info['pid'] and os.path.exists('/proc/%d' % info['pid'])
    assert env.domains() == [info['domain']]
    # As in Kata, the VMM runs in the sandbox's cgroup, in every hierarchy.
    for path in rt.cgroups.resolve('', 'sb'):
        with open(os.path.join(path, 'cgroup.procs')) as f:
            assert str(info['pid']) in f.read().split(), path

    run_container(rt, 'sb', 'short', busybox_rootfs, 'echo to-stdout; echo to-stderr >&2; exit 3', trace)
    long_rec = run_container(rt, 'sb', 'long', busybox_rootfs, 'sleep 1000', trace)
    assert long_rec.pid

    short = ctr.wait_for(rt, 'short', 30)
    assert short['status'] == 'stopped' and short['exit_code'] == 3
    with open(short['stdout_path']) as f:
        assert f.read() == 'to-stdout\n'
    with open(short['stderr_path']) as f:
        assert f.read() == 'to-stderr\n'
    long_info = ctr.info(rt, rt.store.load_container('sb', 'long'))
    assert long_info['status'] == 'running' and long_info['exit_code'] is None

    # The seed: a running container is not deleted without force, and nothing changes.
    with pytest.raises(Conflict, match='still running'):
        ctr.delete(rt, 'long', force=False, trace=trace)
    with pytest.raises(Conflict, match='long'):
        sbx.delete(rt, 'sb', force=False, trace=trace)
    assert ctr.info(rt, rt.store.load_container('sb', 'long'))['status'] == 'running'

    # sleep is PID 1 of its namespace: SIGTERM has no handler there, so the stop escalates.
    stopped = ctr.stop(rt, 'long', sig='SIGTERM', timeout=2, trace=trace)
    assert stopped.status == 'stopped' and stopped.exit_code == 128 + signal.SIGKILL
    assert any('SIGKILL' in a for a in trace.actions)

    run_container(rt, 'sb', 'again', busybox_rootfs, 'sleep 1000', trace)
    started = time.monotonic()
    assert sbx.delete(rt, 'sb', force=True, trace=trace) is True
    took = time.monotonic() - started
    assert env.leftovers() == {'domains': [], 'cgroups': [], 'state_files': [], 'mounts': []}, took
    assert env.mapping('sb') is None and env.mapping('short') is None
    assert sbx.delete(rt, 'sb', force=True, trace=trace) is False


def test_interrupted_forced_delete_completes_when_run_again(env, busybox_rootfs, tmp_path):
    """Kill the deleting process in the middle (inside a slow poststop hook, after the VM is
    gone and the first container is cleaned), then run the delete again: it finishes."""
    rt = runtime(env)
    trace = rt.trace()
    marker = tmp_path / 'hook-started'
    hook = tmp_path / 'slow-hook.sh'
    hook.write_text('#!/bin/sh\ncat > /dev/null\ntouch %s\nsleep 60\n' % marker)
    hook.chmod(0o755)
    sbx.create(rt, 'sb', sbx.settings_from(rt.config, {'hooks': {'poststop': [{'path': str(hook)}]}}),
               trace=trace)
    run_container(rt, 'sb', 'c1', busybox_rootfs, 'sleep 1000', trace)
    run_container(rt, 'sb', 'c2', busybox_rootfs, 'sleep 1000', trace,
                  hooks={'poststop': [{'path': str(hook)}]})

    code = textwrap.dedent('''
        from ansible_collections.kata.runtime.plugins.module_utils.kata import sandbox as sbx
        from ansible_collections.kata.runtime.plugins.module_utils.kata.config import load_config
        from ansible_collections.kata.runtime.plugins.module_utils.kata.runtime import Runtime
        rt = Runtime(load_config(%r))
        sbx.delete(rt, 'sb', force=True)
    ''' % env.config_path)
    proc = subprocess.Popen([sys.executable, '-c', code], env=dict(os.environ))
    deadline = time.monotonic() + 60
    while not marker.exists() and time.monotonic() < deadline:
        assert proc.poll() is None, 'delete ended before its poststop hook ran'
        time.sleep(0.1)
    assert marker.exists()
    proc.kill()
    proc.wait()
    subprocess.run(['pkill', '-f', str(hook)], check=False)  # the orphaned hook

    # Half done: the VM is gone, records remain.
    assert env.domains() == []
    assert rt.store.load_sandbox('sb') is not None
    hook.write_text('#!/bin/sh\ncat > /dev/null\n')  # the rerun's hooks are quick
    assert sbx.delete(rt, 'sb', force=True, trace=trace) is True
    assert env.leftovers() == {'domains': [], 'cgroups': [], 'state_files': [], 'mounts': []}
    assert env.mapping('c1') is None and env.mapping('c2') is None and env.mapping('sb') is None
