# Copyright: kata.runtime contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Faults with real guests (issue 8): each fault once, on real VMs through a real libvirtd.

The exhaustive step-by-step faults run on fakes in tests/unit; here each one happens for real:
the VMM SIGKILLed, libvirtd restarted and stopped in the middle of a create and of a delete,
the module process SIGKILLed in the middle of a delete, a host reboot (tmpfs and persistent
state root), hooks that fail or hang, and a guest whose agent stops answering (frozen VMM,
kernel panic). After each: the info modules tell the truth (checked against libvirt, /proc and
the state root), and a forced delete or a prune leaves nothing: no domain, cgroup directory,
record, mapping, lock, socket, mount, share directory or VMM process.

libvirtd is stopped and started again the way scripts/prepare-host.sh starts it (the script
itself runs); a finalizer brings it back whatever happened. These tests stop the daemon every
real-guest test uses: run one real-guest suite at a time on a host.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import os
import shlex
import shutil
import signal
import stat
import subprocess
import time

import pytest
import yaml
from conftest import (
    LIBVIRT_URI,
    REPO,
    Background,
    assert_clear_error,
    crash_of,
    libvirt_problem,
    privileged_bundle,
    residue,
    side,
    virsh,
    vmm_processes,
    wait_until,
)

MEMORY_MB = 128
GATES = []  # every Gate made; the finalizer of make_env releases them
PREPARE_HOST = os.path.join(REPO, 'scripts', 'prepare-host.sh')


# ---------------------------------------------------------------------------------------------
# libvirtd: stopped by pid, started by scripts/prepare-host.sh

def _pids_named(comm):
    out = []
    for entry in os.listdir('/proc'):
        if not entry.isdigit():
            continue
        try:
            with open('/proc/%s/comm' % entry) as f:
                if f.read().strip() == comm:
                    out.append(int(entry))
        except OSError:
            continue
    return out


def _alive(pid):
    """True for a live process (a zombie is dead)."""
    try:
        with open('/proc/%d/stat' % pid) as f:
            return f.read().rsplit(')', 1)[1].split()[0] != 'Z'
    except (OSError, IndexError):
        return False


def _systemd():
    try:
        with open('/proc/1/comm') as f:
            return f.read().strip() == 'systemd'
    except OSError:
        return False


def stop_libvirtd():
    """SIGTERM every libvirtd (by pid) and wait until they are gone; the VMs keep running."""
    pids = _pids_named('libvirtd')
    assert pids, 'no libvirtd process to stop'
    for pid in pids:
        os.kill(pid, signal.SIGTERM)
    try:
        wait_until(lambda: not any(_alive(p) for p in pids), 60, 'libvirtd to exit')
    except AssertionError:
        for pid in pids:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        wait_until(lambda: not any(_alive(p) for p in pids), 20, 'libvirtd to die')
    assert libvirt_problem() is not None, 'libvirt still answers on %s' % LIBVIRT_URI


def start_libvirtd():
    """Start libvirtd as the host was prepared: scripts/prepare-host.sh (under tini -s, without
    systemd); it returns once libvirt answers. Its output is the error if it does not."""
    # a libvirtd that is still exiting would pass for a running one
    wait_until(lambda: not any(_alive(p) for p in _pids_named('libvirtd')), 60, 'the old libvirtd to exit')
    proc = subprocess.run([PREPARE_HOST], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=600, check=False)
    problem = libvirt_problem()
    assert proc.returncode == 0 and problem is None, (
        'scripts/prepare-host.sh did not bring libvirtd back (rc %d, %s):\n%s'
        % (proc.returncode, problem, proc.stdout[-3000:]))


def ensure_libvirtd():
    """libvirtd answers again, whatever a test did: prepare-host.sh, and if even that fails,
    its own command line for libvirtd. Safe to call any number of times."""
    if libvirt_problem() is None:
        return
    try:
        start_libvirtd()
        return
    except (AssertionError, OSError, subprocess.SubprocessError):
        if libvirt_problem() is None:
            return
    if not any(_alive(p) for p in _pids_named('libvirtd')):
        subprocess.run('setsid -f tini -s -- libvirtd </dev/null >/dev/null 2>&1', shell=True, check=False,
                       timeout=60)
    wait_until(lambda: libvirt_problem() is None, 60, 'libvirtd to answer again')


class Libvirtd:
    """What a test does to the daemon."""

    stop = staticmethod(stop_libvirtd)
    start = staticmethod(start_libvirtd)

    @staticmethod
    def restart():
        stop_libvirtd()
        start_libvirtd()


@pytest.fixture
def libvirtd():
    """Lets a test stop and restart libvirtd; it answers again when the test ends, always."""
    if os.geteuid() != 0:
        pytest.skip('stopping libvirtd needs root')
    if _systemd():
        pytest.skip('libvirtd under systemd: socket activation would start it again on the next call')
    if not os.access(PREPARE_HOST, os.X_OK):
        pytest.skip('%s is missing' % PREPARE_HOST)
    if not _pids_named('libvirtd'):
        pytest.skip('libvirtd is not a local process here')
    atexit.register(ensure_libvirtd)  # even if the finalizer never runs (interrupted session)
    try:
        yield Libvirtd()
    finally:
        ensure_libvirtd()


# ---------------------------------------------------------------------------------------------
# worlds, hooks and checks

@pytest.fixture
def make_env(kata_envs):
    """make_env(tag, **config): a fresh world with small guests; each is pruned and checked
    clean at the end (libvirtd first brought back if a test left it stopped)."""
    made = []

    def make(tag='ft', **config):
        env = kata_envs(tag)
        env.config.update({'memory_mb': MEMORY_MB})
        env.config.update(config)
        with open(env.config_path, 'w') as f:
            yaml.safe_dump(env.config, f, default_flow_style=False)
        made.append(env)
        return env

    yield make
    ensure_libvirtd()
    while GATES:  # a test that failed before it released a gate: the prune would wait on it
        GATES.pop().release()
    problems = []
    for env in made:
        left, _skeleton, (rc, _result, stdout, _stderr) = env.teardown()
        if rc != 0 or left:
            problems.append('%s: prune rc %d, left %s\n%s'
                            % (env.state_root, rc, json.dumps(left, indent=1), stdout[-2000:]))
    assert not problems, '\n'.join(problems)


def script(path, body):
    with open(path, 'w') as f:
        f.write('#!/bin/sh\n' + body)
    os.chmod(path, os.stat(path).st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


def failing_hook(env, name, code=7):
    path = script(os.path.join(env.workdir, name), 'cat > /dev/null\necho %s-boom >&2\nexit %d\n' % (name, code))
    return {'path': path}


class HangingHook:
    """A hook that never ends by itself (nor does the child it starts); ``pids()`` are both."""

    def __init__(self, env, name, timeout):
        self.pidfile = os.path.join(env.workdir, name + '.pids')
        path = script(os.path.join(env.workdir, name),
                      'cat > /dev/null\nsleep 600 &\necho "$$ $!" > %s\nwait\n' % shlex.quote(self.pidfile))
        self.hook = {'path': path, 'timeout': timeout}

    def pids(self):
        with open(self.pidfile) as f:
            return [int(p) for p in f.read().split()]

    def assert_killed(self):
        pids = self.pids()
        assert len(pids) == 2, pids
        wait_until(lambda: not any(_alive(p) for p in pids), 10, 'the timed-out hook and its child to die')


class Gate:
    """A hook whose first run blocks until released (later runs pass at once): a fixed point
    in the middle of a delete. Hooks run in their own session, so ``kill()`` gets its group."""

    def __init__(self, env, name):
        self.started = os.path.join(env.workdir, name + '.started')
        self.released = os.path.join(env.workdir, name + '.release')
        s, r = shlex.quote(self.started), shlex.quote(self.released)
        path = script(os.path.join(env.workdir, name),
                      'cat > /dev/null\n[ -e %s ] && exit 0\necho $$ > %s.tmp && mv %s.tmp %s\n'
                      'n=0\nwhile [ ! -e %s ] && [ $n -lt 3000 ]; do sleep 0.1; n=$((n+1)); done\n'
                      % (s, s, s, s, r))
        self.hook = {'path': path, 'timeout': 600}
        GATES.append(self)

    def pid(self):
        try:
            with open(self.started) as f:
                return int(f.read().strip())
        except (OSError, ValueError):
            return None

    def wait_started(self, running, timeout=180):
        """Wait until the hook runs; ``running`` (a Background) must not end before."""
        def started():
            assert running.is_alive() or self.pid(), 'the operation ended before the hook ran: %s' % (
                running.get().results,)
            return self.pid()
        return wait_until(started, timeout, 'hook %s to start' % self.started)

    def release(self):
        with open(self.released, 'w'):
            pass

    def kill(self):
        pid = self.pid()
        if pid and _alive(pid):
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def forced_delete(sid, name='delete'):
    """The task that force-deletes sandbox ``sid``."""
    return {'name': name, 'kata.runtime.kata_sandbox': {'name': sid, 'state': 'absent', 'force': True}}


def sleeper(name, sid, rootfs, **extra):
    spec = {'name': name, 'sandbox': sid, 'rootfs': rootfs, 'command': ['sleep', '1000']}
    spec.update(extra)
    return spec


def qemu_alive(pid):
    if not pid or not _alive(pid):
        return False
    try:
        with open('/proc/%d/cmdline' % pid, 'rb') as f:
            return b'qemu' in os.path.basename(f.read().split(b'\0')[0])
    except OSError:
        return False


def vm_as_virsh_says(domain):
    """Our vm_state names for what virsh says of ``domain``."""
    proc = virsh('domstate', '--reason', domain, check=False)
    if proc.returncode != 0:
        return {'missing'}
    text = proc.stdout.strip()
    if text.startswith('running') or text.startswith('in shutdown'):
        return {'running'}
    if text.startswith('paused') or text.startswith('pmsuspended'):
        return {'paused'}
    if text.startswith('crashed') or '(crashed)' in text:
        return {'crashed'}
    return {'shutoff'}


def records_of(env, sid):
    """IDs of the container records on disk for sandbox ``sid``."""
    path = os.path.join(env.sandbox_dir(sid), 'containers')
    if not os.path.isdir(path):
        return []
    return sorted(n[:-len('.json')] for n in os.listdir(path) if n.endswith('.json'))


def _recorded_state(env, sid):
    try:
        with open(os.path.join(env.sandbox_dir(sid), 'sandbox.json')) as f:
            return json.load(f).get('state')
    except (OSError, ValueError):
        return None


def check_sandboxes(env, items):
    """What kata_sandbox_info said agrees with libvirt, /proc and the state root."""
    for sb in items:
        assert sb['vm_state'] in vm_as_virsh_says(sb['domain']), (sb, vm_as_virsh_says(sb['domain']))
        # a create that did not finish (record still 'creating': interrupted by the fault) is
        # reported as such, never as running; kata_sandbox state=running finishes it
        unfinished = _recorded_state(env, sb['id']) == 'creating'
        if sb['vm_state'] == 'running':
            assert sb['state'] == ('creating' if unfinished else 'running') and qemu_alive(sb['pid']), sb
        elif sb['vm_state'] == 'paused':
            assert sb['state'] == ('creating' if unfinished else 'paused'), sb
        else:
            assert sb['state'] in ('dead', 'stopped') and sb['pid'] is None, sb
        assert sorted(sb['containers']) == records_of(env, sb['id']), sb


def check_containers(sandboxes, containers):
    """Containers of a sandbox whose VM does not run are stopped, without a pid."""
    vm = {sb['id']: sb['vm_state'] for sb in sandboxes}
    for c in containers:
        if vm.get(c['sandbox']) != 'running':
            assert c['status'] == 'stopped' and c['pid'] is None, c


def by_id(items):
    return {i['id']: i for i in items}


def look(env, sids):
    """kata_sandbox_info and kata_container_info of ``sids``, checked for truth; returns both."""
    run = env.playbook([
        {'name': 'sandboxes', 'kata.runtime.kata_sandbox_info': {'name': list(sids)}},
        {'name': 'containers', 'kata.runtime.kata_container_info': {'sandbox': list(sids)}},
    ])
    sandboxes = run.ok('sandboxes')
    containers = run.ok('containers')
    assert sandboxes['corrupt'] == [] and containers['corrupt'] == [], (sandboxes, containers)
    check_sandboxes(env, sandboxes['sandboxes'])
    check_containers(sandboxes['sandboxes'], containers['containers'])
    return by_id(sandboxes['sandboxes']), by_id(containers['containers'])


def gone(env, sid, cids=(), libvirt=True):
    """What is left of sandbox ``sid`` (and of containers ``cids``) on the host; {} when
    nothing. ``libvirt=False`` leaves libvirt out (it may be stopped)."""
    left = {}
    if libvirt and env.domain_prefix + sid in env.domains():
        left['domain'] = env.domain_prefix + sid
    for what, path in (('sandbox_dir', env.sandbox_dir(sid)),
                       ('lock', os.path.join(env.state_root, 'locks', sid + '.lock')),
                       ('socket', agent_socket(env, sid))):
        if os.path.lexists(path):
            left[what] = path
    names = (sid,) + tuple(cids)
    mappings = [c for c in names if env.mapping(c) is not None]
    if mappings:
        left['mappings'] = mappings
    dirs = [d for d in env.cgroup_dirs() if os.path.basename(d) in names]
    if dirs:
        left['cgroups'] = dirs
    mounts = [m for m in env.mounts() if m.startswith(env.sandbox_dir(sid) + '/')]
    if mounts:
        left['mounts'] = mounts
    vmms = _vmm_pids_of(env.domain_prefix + sid)
    if vmms:
        left['vmm'] = vmms
    return left


def container_left(env, sid, cid):
    """What is left of container ``cid`` of the (existing) sandbox ``sid``; {} when nothing."""
    left = {}
    if env.mapping(cid) is not None:
        left['mapping'] = env.mapping(cid)
    record = os.path.join(env.sandbox_dir(sid), 'containers', cid + '.json')
    if os.path.lexists(record):
        left['record'] = record
    dirs = [d for d in env.cgroup_dirs() if os.path.basename(d) == cid]
    if dirs:
        left['cgroups'] = dirs
    for sub in ('bundles', 'shared', 'output'):
        path = os.path.join(env.sandbox_dir(sid), sub, cid)
        if os.path.lexists(path):
            left[sub] = path
    mounts = [m for m in env.mounts() if '/%s/' % cid in m + '/']
    if mounts:
        left['mounts'] = mounts
    return left


def agent_socket(env, sid):
    """Where the store puts the agent socket of ``sid`` (sock/<sha256(sid)[:16]>.sock)."""
    return os.path.join(env.state_root, 'sock', hashlib.sha256(sid.encode('ascii')).hexdigest()[:16] + '.sock')


def _vmm_pids_of(domain):
    out = []
    for pid in vmm_processes(domain):
        try:
            with open('/proc/%d/cmdline' % pid, 'rb') as f:
                args = f.read().decode('utf-8', 'replace').split('\0')
        except OSError:
            continue
        if any(a == 'guest=' + domain or a.startswith('guest=' + domain + ',') for a in args):
            out.append(pid)
    return out


def assert_ok_or_clear(result, *words):
    """A task that may fail because of the fault: success, or a clear error naming ``words``."""
    if result.get('failed'):
        return assert_clear_error(result, *words)
    assert crash_of(result) is None, result
    return None


def finish(env, soft=()):
    """The end of every test: nothing of ``env`` is left, and no soft problem was noted."""
    problems = list(soft)
    left = residue(env)
    if left:
        problems.append('left behind after the forced deletes: %s' % json.dumps(left, indent=1))
    assert not problems, '\n'.join(problems)


def vmm_in_sandbox_cgroup(sb):
    """True when the VMM's pid is in every cgroup directory of the sandbox (as Kata places it)."""
    dirs = [d for d in sb['cgroups_paths'] if os.path.basename(d) == sb['id']]
    if not dirs or not sb['pid']:
        return False
    for d in dirs:
        try:
            with open(os.path.join(d, 'cgroup.procs')) as f:
                if str(sb['pid']) not in f.read().split():
                    return False
        except OSError:
            return False
    return True


# ---------------------------------------------------------------------------------------------
# 1. the VMM is SIGKILLed under a running sandbox with containers

def test_vmm_killed_under_a_running_sandbox_with_containers(make_env, busybox_rootfs):
    env = make_env('fv')
    run = env.playbook([
        {'name': 'sandbox', 'kata.runtime.kata_sandbox': {'name': 'vk', 'labels': {'fault': 'vmm'}}},
        {'name': 'c1', 'kata.runtime.kata_container': sleeper('vk-c1', 'vk', busybox_rootfs)},
        {'name': 'c2', 'kata.runtime.kata_container': sleeper('vk-c2', 'vk', busybox_rootfs)},
    ])
    sb = run.ok('sandbox')['sandbox']
    assert run.ok('c1')['container']['status'] == 'running' and run.ok('c2')['container']['status'] == 'running'
    assert qemu_alive(sb['pid']), sb

    os.kill(sb['pid'], signal.SIGKILL)
    wait_until(lambda: 'running' not in vm_as_virsh_says(sb['domain']), 60, 'libvirt to see the VMM die')

    sandboxes, containers = look(env, ['vk'])
    assert sandboxes['vk']['state'] == 'dead' and sandboxes['vk']['vm_state'] in ('crashed', 'shutoff'), sandboxes
    assert sandboxes['vk']['containers'] == ['vk-c1', 'vk-c2']
    assert {c: containers[c]['status'] for c in ('vk', 'vk-c1', 'vk-c2')} == dict.fromkeys(
        ('vk', 'vk-c1', 'vk-c2'), 'stopped'), containers

    run = env.playbook([
        {'name': 'container in the dead sandbox', 'kata.runtime.kata_container': sleeper('vk-c3', 'vk', busybox_rootfs)},
        forced_delete('vk', 'forced delete'),
        {'name': 'after', 'kata.runtime.kata_sandbox_info': {'name': ['vk']}},
    ])
    assert_clear_error(run['container in the dead sandbox'], 'vk', 'dead')
    deleted = run.ok('forced delete')
    assert deleted['changed'] is True and deleted['sandbox'] == {}, deleted
    assert run.ok('after')['sandboxes'] == []
    finish(env)
    assert gone(env, 'vk', ('vk-c1', 'vk-c2', 'vk-c3')) == {}


# ---------------------------------------------------------------------------------------------
# 2. libvirtd restarted, and stopped, in the middle of a create and of a delete

def _start_create(env, sid):
    """kata_sandbox ``sid`` in the background; returns once its VM is defined (being started)."""
    create = Background(side(env).playbook, [{'name': 'create', 'kata.runtime.kata_sandbox': {'name': sid}}])

    def defined():
        assert create.is_alive(), 'the create ended before its VM was defined: %s' % (create.get()['create'],)
        return env.domain_prefix + sid in env.domains()
    wait_until(defined, 120, 'the VM of %s to be defined' % sid, interval=0.05)
    return create


def _converges(env, sid, rootfs):
    """A create interrupted by the fault, run again, gives a whole sandbox: its VMM in its
    cgroup and a container that runs. Returns the problems found (soft, reported at the end)."""
    run = env.playbook([
        {'name': 'again', 'kata.runtime.kata_sandbox': {'name': sid}},
        {'name': 'echo', 'kata.runtime.kata_container': {'name': sid + '-echo', 'sandbox': sid, 'rootfs': rootfs,
                                                         'command': ['sh', '-c', 'echo converged']}},
    ])
    problems = []
    again = run['again']
    if again.get('failed'):
        problems.append('kata_sandbox %s run again after the fault failed: %s' % (sid, again.get('msg')))
        return problems
    sb = again['sandbox']
    if sb['state'] != 'running':
        problems.append('kata_sandbox %s run again after the fault left it %s' % (sid, sb['state']))
    elif not vmm_in_sandbox_cgroup(sb):
        problems.append('sandbox %s (record left by the interrupted create) reported running and unchanged '
                        '(changed=%s, actions=%s) but its VMM (pid %s) is not in its cgroup %s: the create '
                        'was never finished' % (sid, again.get('changed'), again.get('actions'), sb['pid'],
                                                [d for d in sb['cgroups_paths'] if d.endswith('/' + sid)]))
    echo = run['echo']
    if echo.get('failed'):
        problems.append('a container in %s after the fault failed: %s' % (sid, echo.get('msg')))
    return problems


def test_libvirtd_restarted_during_a_create_and_a_delete(make_env, busybox_rootfs, libvirtd):
    env = make_env('fr')
    gate = Gate(env, 'rd-c1-poststop')
    run = env.playbook([
        {'name': 'sandbox', 'kata.runtime.kata_sandbox': {'name': 'rd'}},
        {'name': 'container', 'kata.runtime.kata_container': sleeper('rd-c1', 'rd', busybox_rootfs,
                                                                     hooks={'poststop': [gate.hook]})},
    ])
    run.ok('sandbox')
    run.ok('container')
    soft = []

    # restarted while the VM of 'rc' is being defined and started
    create = _start_create(env, 'rc')
    libvirtd.restart()
    created = create.get()['create']
    assert_ok_or_clear(created, 'libvirt', LIBVIRT_URI)
    sandboxes, containers = look(env, ['rd', 'rc'])
    for _attempt in range(3):
        # 'unknown' (with its reason) is the truthful answer of an agent that took longer than
        # the look allows, which a TCG guest can while another one boots on two cores: ask again
        if containers['rd-c1']['status'] != 'unknown':
            break
        time.sleep(2)
        sandboxes, containers = look(env, ['rd', 'rc'])
    # the guests did not notice: rd and its container still run
    assert sandboxes['rd']['state'] == 'running' and containers['rd-c1']['status'] == 'running', \
        (sandboxes['rd'], containers['rd-c1'])
    assert 'rc' in sandboxes or gone(env, 'rc') == {}, (sandboxes, gone(env, 'rc'))
    soft += _converges(env, 'rc', busybox_rootfs)

    # restarted while the delete of 'rd' runs the container's poststop hook (VM destroyed by then)
    delete = Background(side(env).playbook, [forced_delete('rd')])
    try:
        gate.wait_started(delete)
        libvirtd.restart()
    finally:
        gate.release()
    deleted = delete.get()['delete']
    if assert_ok_or_clear(deleted, 'libvirt', LIBVIRT_URI) is not None:
        soft.append('the forced delete of rd failed although libvirtd answered again when it next called it '
                    '(restarted while the delete ran a poststop hook): %s' % deleted['msg'])
        look(env, ['rd'])
        again = env.playbook([forced_delete('rd', 'again')])
        again.ok('again')
    assert gone(env, 'rd', ('rd-c1',)) == {}

    run = env.playbook([forced_delete('rc', 'delete rc')])
    run.ok('delete rc')
    finish(env, soft)


def test_libvirtd_stopped_during_a_create_and_a_delete(make_env, busybox_rootfs, libvirtd):
    env = make_env('fs')
    gate = Gate(env, 'sd-c1-poststop')
    run = env.playbook([
        {'name': 'sandbox', 'kata.runtime.kata_sandbox': {'name': 'sd'}},
        {'name': 'container', 'kata.runtime.kata_container': sleeper('sd-c1', 'sd', busybox_rootfs,
                                                                     hooks={'poststop': [gate.hook]})},
    ])
    run.ok('sandbox')
    run.ok('container')
    soft = []

    # stopped while the VM of 'sc' is being defined and started: the create fails, clearly
    create = _start_create(env, 'sc')
    try:
        libvirtd.stop()
        created = create.get()['create']
        assert_clear_error(created, 'libvirt', LIBVIRT_URI)
        # with libvirtd stopped every call says so, and changes nothing
        before = {'sd': gone(env, 'sd', ('sd-c1',), libvirt=False), 'state': env.state_files()}
        run = env.playbook([
            {'name': 'info', 'kata.runtime.kata_sandbox_info': {}},
            {'name': 'containers', 'kata.runtime.kata_container_info': {}},
            {'name': 'new sandbox', 'kata.runtime.kata_sandbox': {'name': 'sx'}},
            forced_delete('sd'),
            {'name': 'prune', 'kata.runtime.kata_prune': {'all': True, 'force': True}},
        ])
        for name in ('info', 'containers', 'new sandbox', 'delete', 'prune'):
            assert_clear_error(run[name], 'libvirt', LIBVIRT_URI)
        assert gone(env, 'sx', libvirt=False) == {}
        assert {'sd': gone(env, 'sd', ('sd-c1',), libvirt=False), 'state': env.state_files()} == before
    finally:
        libvirtd.start()
    sandboxes, containers = look(env, ['sd', 'sc'])
    assert sandboxes['sd']['state'] == 'running' and containers['sd-c1']['status'] == 'running', (sandboxes, containers)
    assert 'sc' in sandboxes or gone(env, 'sc') == {}, (sandboxes, gone(env, 'sc'))
    soft += _converges(env, 'sc', busybox_rootfs)

    # stopped while the delete of 'sd' runs the container's poststop hook: the delete fails
    # clearly, the next one (libvirtd back) finishes it
    delete = Background(side(env).playbook, [forced_delete('sd')])
    try:
        gate.wait_started(delete)
        libvirtd.stop()
        gate.release()
        deleted = delete.get()['delete']
        assert_clear_error(deleted, 'libvirt', LIBVIRT_URI)
        run = env.playbook([{'name': 'containers', 'kata.runtime.kata_container_info': {}}])
        assert_clear_error(run['containers'], 'libvirt', LIBVIRT_URI)
    finally:
        gate.release()
        libvirtd.start()
    sandboxes, containers = look(env, ['sd'])
    assert sandboxes['sd']['state'] == 'dead', sandboxes
    run = env.playbook([
        forced_delete('sd', 'delete sd'),
        forced_delete('sc', 'delete sc'),
    ])
    run.ok('delete sd')
    run.ok('delete sc')
    finish(env, soft)


# ---------------------------------------------------------------------------------------------
# 3. the module process SIGKILLed during a delete (twice: in a container's poststop hook, then
#    in the sandbox's); the next run finishes it. test_lifecycle.py kills the core in a
#    container's hook; this goes through the module and stops at a later step too.

def _module_pids(module, cwd):
    """Pids of the Python process running ``module`` (AnsiballZ) with working directory ``cwd``."""
    out = []
    for entry in os.listdir('/proc'):
        if not entry.isdigit():
            continue
        try:
            with open('/proc/%s/cmdline' % entry, 'rb') as f:
                args = f.read().decode('utf-8', 'replace').split('\0')
            here = os.readlink('/proc/%s/cwd' % entry)
        except OSError:
            continue
        if ('python' in os.path.basename(args[0]) and any(a.endswith('AnsiballZ_%s.py' % module) for a in args)
                and os.path.realpath(here) == os.path.realpath(cwd)):
            out.append(int(entry))
    return out


def _delete_killed_in(env, sid, gate):
    """A forced delete through the module, SIGKILLed while ``gate`` holds it; returns its result."""
    worker = side(env)
    delete = Background(worker.playbook, [forced_delete(sid)])
    run_dir = os.path.join(worker.workdir, 'run001')
    try:
        gate.wait_started(delete)
        pids = _module_pids('kata_sandbox', run_dir)
        assert len(pids) == 1, pids
        os.kill(pids[0], signal.SIGKILL)
        result = delete.get()['delete']
    finally:
        gate.kill()  # the hook runs in its own session: it outlives the module, as with any runtime
    assert result.get('failed'), result
    return result


def test_module_killed_during_a_delete_the_next_run_finishes_it(make_env, busybox_rootfs):
    env = make_env('fk')
    in_container = Gate(env, 'mk-c1-poststop')
    in_sandbox = Gate(env, 'mk-poststop')
    warn = failing_hook(env, 'mk-poststop-fails')
    run = env.playbook([
        {'name': 'sandbox', 'kata.runtime.kata_sandbox': {
            'name': 'mk', 'hooks': {'poststop': [in_sandbox.hook, warn]}}},
        {'name': 'c1', 'kata.runtime.kata_container': sleeper('mk-c1', 'mk', busybox_rootfs,
                                                              hooks={'poststop': [in_container.hook]})},
        {'name': 'c2', 'kata.runtime.kata_container': sleeper('mk-c2', 'mk', busybox_rootfs)},
    ])
    for name in ('sandbox', 'c1', 'c2'):
        run.ok(name)

    # killed in mk-c1's poststop hook: the VM is gone, both container records remain
    _delete_killed_in(env, 'mk', in_container)
    sandboxes, containers = look(env, ['mk'])
    assert sandboxes['mk']['state'] == 'dead' and sandboxes['mk']['containers'] == ['mk-c1', 'mk-c2'], sandboxes
    assert env.domains() == []

    # killed again in the sandbox's own poststop hook: the containers are gone by then
    _delete_killed_in(env, 'mk', in_sandbox)
    sandboxes, containers = look(env, ['mk'])
    assert sandboxes['mk']['state'] == 'dead' and sandboxes['mk']['containers'] == [], sandboxes
    assert sorted(containers) == ['mk'], containers
    assert container_left(env, 'mk', 'mk-c1') == {} and container_left(env, 'mk', 'mk-c2') == {}

    # the next run finishes it; the failing poststop hook is a warning (5.)
    run = env.playbook([
        forced_delete('mk')])
    done = run.ok('delete')
    assert done['changed'] is True, done
    assert any('mk-poststop-fails-boom' in w and 'poststop' in w for w in done.get('warnings') or []), done
    finish(env)


# ---------------------------------------------------------------------------------------------
# 4. host reboot, simulated: VMs gone, mounts and cgroup dirs gone; the state root emptied
#    (a tmpfs) or kept (persistent)

def simulate_reboot(env, keep_state):
    for name in env.domains():
        virsh('destroy', name, check=False)
    wait_until(lambda: not vmm_processes(env.domain_prefix), 60, 'the VMMs to end')
    for point in sorted(env.mounts(), reverse=True):
        if subprocess.run(['umount', point], check=False).returncode != 0:
            subprocess.run(['umount', '-l', point], check=True)
    for path in sorted(env.cgroup_dirs(), key=len, reverse=True):
        wait_until(lambda p=path: _rmdir(p), 20, 'cgroup dir %s to be removable' % path)
    if not keep_state:
        shutil.rmtree(env.state_root)


def _rmdir(path):
    try:
        os.rmdir(path)
    except FileNotFoundError:
        pass
    except OSError:
        return False
    return True


def _create_with_container(env, sid, rootfs, command):
    return env.playbook([
        {'name': 'sandbox', 'kata.runtime.kata_sandbox': {'name': sid}},
        {'name': 'container', 'kata.runtime.kata_container': {'name': sid + '-c1', 'sandbox': sid, 'rootfs': rootfs,
                                                              'command': command}},
    ])


def test_host_reboot_with_a_tmpfs_and_with_a_persistent_state_root(make_env, busybox_rootfs):
    tmpfs, disk = make_env('ft'), make_env('fp')
    boots = [Background(_create_with_container, side(e), 'rb', busybox_rootfs, ['sleep', '1000'])
             for e in (tmpfs, disk)]
    for boot in boots:
        run = boot.get()
        run.ok('sandbox')
        run.ok('container')
    domains = {e: e.domains() for e in (tmpfs, disk)}
    simulate_reboot(tmpfs, keep_state=False)
    simulate_reboot(disk, keep_state=True)

    # persistent: the records are there, the VM is not: dead, its container stopped
    sandboxes, containers = look(disk, ['rb'])
    assert sandboxes['rb']['state'] == 'dead' and sandboxes['rb']['vm_state'] == 'shutoff', sandboxes
    assert containers['rb-c1']['status'] == 'stopped' and containers['rb']['status'] == 'stopped', containers
    run = disk.playbook([forced_delete('rb')])
    assert run.ok('delete')['changed'] is True
    finish(disk)

    # tmpfs: nothing is known any more; only libvirt's definition is left, and prune takes it
    run = tmpfs.playbook([
        {'name': 'sandboxes', 'kata.runtime.kata_sandbox_info': {}},
        {'name': 'containers', 'kata.runtime.kata_container_info': {}},
        {'name': 'prune', 'kata.runtime.kata_prune': {'names': [], 'force': True}},
    ])
    assert run.ok('sandboxes')['sandboxes'] == [] and run.ok('sandboxes')['corrupt'] == []
    assert run.ok('containers')['containers'] == []
    pruned = run.ok('prune')
    assert [o['id'] for o in pruned['orphans_removed'] if o['kind'] == 'vm_without_state'] == domains[tmpfs], pruned
    finish(tmpfs, [] if pruned['changed'] else ['prune removed nothing: %s' % pruned])

    # the same ID works again in both
    boots = [Background(_create_with_container, side(e), 'rb', busybox_rootfs, ['sh', '-c', 'echo after-reboot'])
             for e in (tmpfs, disk)]
    for env, boot in zip((tmpfs, disk), boots):
        run = boot.get()
        assert run.ok('sandbox')['sandbox']['state'] == 'running'
        run.ok('container')
        out = run.ok('container')['container']['stdout_path']
        wait_until(lambda p=out: os.path.exists(p) and open(p).read() == 'after-reboot\n', 30, 'the output')
        run = env.playbook([forced_delete('rb')])
        run.ok('delete')
        finish(env)


# ---------------------------------------------------------------------------------------------
# 5. hooks with a real guest: a prestart hook that hangs past its timeout (container) or fails
#    (container, and sandbox: its VM had booted) leaves nothing; the failing poststop is in 3.

def test_prestart_hooks_that_hang_or_fail(make_env, busybox_rootfs):
    env = make_env('fh')
    sb_fail = failing_hook(env, 'sb-prestart')
    c_hang = HangingHook(env, 'c-hang', timeout=2)
    c_fail = failing_hook(env, 'c-prestart', code=9)
    # the sandbox whose prestart hook fails boots while the other one does
    failing = Background(side(env).playbook, [
        {'name': 'fails', 'kata.runtime.kata_sandbox': {'name': 'hf', 'hooks': {'prestart': [sb_fail]}}}])
    run = env.playbook([
        {'name': 'sandbox', 'kata.runtime.kata_sandbox': {'name': 'hk'}},
        {'name': 'hangs', 'kata.runtime.kata_container': sleeper('hk-hang', 'hk', busybox_rootfs,
                                                                 hooks={'prestart': [c_hang.hook]})},
        {'name': 'fails', 'kata.runtime.kata_container': sleeper('hk-fail', 'hk', busybox_rootfs,
                                                                 hooks={'prestart': [c_fail]})},
        {'name': 'containers', 'kata.runtime.kata_container_info': {'sandbox': ['hk']}},
    ])
    run.ok('sandbox')
    assert_clear_error(run['hangs'], 'prestart', 'timed out')
    assert_clear_error(run['fails'], 'prestart', 'exit code 9', 'c-prestart-boom')
    assert [c['id'] for c in run.ok('containers')['containers']] == ['hk']
    c_hang.assert_killed()
    for cid in ('hk-hang', 'hk-fail'):
        assert container_left(env, 'hk', cid) == {}, cid
    assert records_of(env, 'hk') == []

    # a sandbox whose prestart hook fails: its VM booted, then everything it made is removed
    assert_clear_error(failing.get()['fails'], 'prestart', 'exit code 7', 'sb-prestart-boom')
    assert gone(env, 'hf') == {}
    look(env, ['hk'])
    run = env.playbook([forced_delete('hk')])
    run.ok('delete')
    finish(env)


# ---------------------------------------------------------------------------------------------
# 6. the agent stops answering: the guest frozen (VMM SIGSTOPped), and a guest kernel panic
#    (sysrq from a container; the agent is the guest's PID 1, so killing it panics the kernel too)

def test_agent_stops_answering_frozen_guest_and_kernel_panic(make_env, busybox_rootfs):
    env = make_env('fa')
    boot = Background(_create_with_container, side(env), 'pn', busybox_rootfs, ['sleep', '1000'])
    run = _create_with_container(env, 'fz', busybox_rootfs, ['sleep', '1000'])
    frozen = run.ok('sandbox')['sandbox']
    run.ok('container')
    boot.get().ok('container')

    # frozen: libvirt still says running; the agent does not answer; calls time out and say so
    os.kill(frozen['pid'], signal.SIGSTOP)
    try:
        started = time.monotonic()
        run = env.playbook([
            {'name': 'containers', 'kata.runtime.kata_container_info': {'sandbox': ['fz']}},
            {'name': 'new container', 'kata.runtime.kata_container': sleeper('fz-c2', 'fz', busybox_rootfs)},
        ])
        asked = time.monotonic() - started
        c1 = by_id(run.ok('containers')['containers'])['fz-c1']
        assert c1['status'] == 'unknown' and 'agent' in c1['error'] and 'timed out' in c1['error'], c1
        assert_clear_error(run['new container'], 'agent', 'timed out')
        assert container_left(env, 'fz', 'fz-c2') == {} and records_of(env, 'fz') == ['fz-c1']
        assert asked < 120, asked
        started = time.monotonic()
        run = env.playbook([forced_delete('fz')])
        run.ok('delete')
        assert time.monotonic() - started < 60
        assert gone(env, 'fz', ('fz-c1', 'fz-c2')) == {}
    finally:
        if _alive(frozen['pid']):
            os.kill(frozen['pid'], signal.SIGCONT)

    # panic: a privileged container (root in the guest, every capability) crashes the guest
    # kernel through sysrq
    run = env.playbook([{'name': 'boom', 'kata.runtime.kata_container': {
        'name': 'pn-boom', 'sandbox': 'pn', 'bundle': privileged_bundle(
            busybox_rootfs, ['sh', '-c', 'mount -t proc proc /proc && sleep 2 && echo c > /proc/sysrq-trigger'])}}])
    run.ok('boom')
    domain = env.domain_prefix + 'pn'
    wait_until(lambda: 'running' not in vm_as_virsh_says(domain), 60, 'the panicked guest to end')
    sandboxes, containers = look(env, ['pn'])
    assert sandboxes['pn']['state'] == 'dead', sandboxes
    assert containers['pn-c1']['status'] == 'stopped' and containers['pn-boom']['status'] == 'stopped', containers
    run = env.playbook([
        {'name': 'new container', 'kata.runtime.kata_container': sleeper('pn-c2', 'pn', busybox_rootfs)},
        forced_delete('pn'),
    ])
    assert_clear_error(run['new container'], 'pn', 'dead')
    run.ok('delete')
    finish(env)
