# Copyright: kata.runtime contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""container.py on the fakes: every transition, and each fault at each step of each one.

Containers run in a sandbox whose VM and agent are fakes (lifecycle_fakes.py); the store,
cgroups, rootfs binds (in our own mount namespace: the fake VMM has no pid) and hooks are real.
After every fault: what is reported is true, records are whole, the next run's forced delete of
the container removes all of it without touching its sandbox, and a forced delete of the
sandbox then leaves zero residue.
"""

from __future__ import annotations

import json
import os
import re
import signal
import threading

import pytest
from ansible_collections.kata.runtime.plugins.module_utils.kata import container as ctr
from ansible_collections.kata.runtime.plugins.module_utils.kata import mountinfo, oci, prune
from ansible_collections.kata.runtime.plugins.module_utils.kata import sandbox as sbx
from ansible_collections.kata.runtime.plugins.module_utils.kata.errors import (
    AgentError,
    Conflict,
    InvalidArgument,
    KataError,
    NotFound,
)
from ansible_collections.kata.runtime.plugins.module_utils.kata.runtime import Runtime
from ansible_collections.kata.runtime.tests.unit.plugins.module_utils.lifecycle_fakes import (
    Killed,
    Killer,
    StateFsFault,
    agent_cases,
    dry_run,
    hv_cases,
    kill_cases,
    records_parse,
    truthful,
    write_cases,
)

pytestmark = [pytest.mark.skipif(os.geteuid() != 0, reason='rootfs binds and share.prepare mount: root only'),
              pytest.mark.usefixtures('quick_hooks')]


def log_hooks(env, kinds):
    """A real hook script per kind, appending '<kind> <state JSON>' to hooks.log."""
    log = os.path.join(env.tmp, 'hooks.log')
    path = env.hook('log-hook.sh', 'echo "$1 $(cat)" >> %s' % log)
    return {kind: [{'path': path, 'args': [path, kind]}] for kind in kinds}


def hook_log(env):
    path = os.path.join(env.tmp, 'hooks.log')
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [(kind, json.loads(state)) for kind, dummy, state in (line.strip().partition(' ') for line in f)]


def sandbox_intact(env):
    """The sandbox the container lived in still runs, with its record and mapping."""
    rec = env.rt.store.load_sandbox('sb')
    assert rec is not None and env.rt.store.get_mapping('sb') == 'sb'
    assert env.hv.domain_of('sb').state == 'running'
    assert all(os.path.isdir(p) for p in rec.cgroups_paths)


# ---------------------------------------------------------------------------------------------
# the flows every fault runs against

ALL_HOOKS = oci.HOOK_KINDS


def _sandbox(env):
    env.sandbox('sb')


def _created(env):
    env.sandbox('sb')
    env.container('sb', 'c1', start=False, hooks=log_hooks(env, ALL_HOOKS))


def _running(env):
    env.sandbox('sb')
    env.container('sb', 'c1', hooks=log_hooks(env, ('poststop',)))


def _stopped(env):
    _running(env)
    ctr.stop(env.rt, 'c1')


def _ignores_sigterm(env):
    _running(env)
    env.agents.ignored_signals.add(int(signal.SIGTERM))


SCENARIOS = {
    'create': (_sandbox, lambda e: ctr.create(e.rt, 'sb', 'c1', e.container_settings(hooks=log_hooks(e, ALL_HOOKS)))),
    'start': (_created, lambda e: ctr.start(e.rt, 'c1')),
    'stop': (_running, lambda e: ctr.stop(e.rt, 'c1')),
    'stop_sigkill': (_ignores_sigterm, lambda e: ctr.stop(e.rt, 'c1', timeout=1)),
    'delete': (_stopped, lambda e: ctr.delete(e.rt, 'c1')),
    'delete_force': (_running, lambda e: ctr.delete(e.rt, 'c1', force=True)),
    'delete_pod_sandbox': (_running, lambda e: ctr.delete(e.rt, 'sb', force=True)),
}
KILLED = ('create', 'start', 'delete', 'delete_force')
WRITING = ('create', 'start', 'stop', 'delete_force')

_PROFILES = {}


def profile(name):
    if name not in _PROFILES:
        _PROFILES[name] = dry_run(*SCENARIOS[name])
    return _PROFILES[name]


def pytest_generate_tests(metafunc):
    """The fault tests get one case per call, step or write the dry run of each flow made."""
    if os.geteuid() != 0:
        return
    names = metafunc.fixturenames
    if 'hv_call' in names:
        metafunc.parametrize('scenario,hv_call,late', hv_cases(profile, SCENARIOS))
    elif 'agent_call' in names:
        metafunc.parametrize('scenario,agent_call,method,mode', agent_cases(profile, SCENARIOS))
    elif 'kill_step' in names:
        metafunc.parametrize('scenario,kill_step', kill_cases(profile, KILLED))
    elif 'write_index' in names:
        metafunc.parametrize('scenario,write_index,code', write_cases(profile, WRITING, both=('create', 'delete_force')))


def traced(monkeypatch):
    """Every Trace the runtime makes from now on (to read the warnings of a flow)."""
    traces = []
    real = Runtime.trace

    def trace(rt):
        made = real(rt)
        traces.append(made)
        return made

    monkeypatch.setattr(Runtime, 'trace', trace)
    return traces


def attempt(operation, *args):
    try:
        operation(*args)
    except Exception as err:  # noqa: BLE001 - the caller asserts what it must be
        return err
    return None


def settle(env, name, error):
    """After a fault in flow ``name``: a clear error; the truth reported; records whole; a
    failed create removed the container and left its sandbox running; the next run's
    forced delete of the container leaves none of it, the sandbox's forced delete zero residue."""
    assert error is None or isinstance(error, KataError), 'not a KataError: %r' % (error,)
    rt = env.fresh()
    assert records_parse(rt) == []
    assert truthful(rt, env.hv) == []
    if error is not None and name == 'create':
        assert env.container_residue('sb', 'c1') == [], 'a failed create must remove the container (%s)' % error
    if name != 'delete_pod_sandbox':
        ctr.delete(rt, 'c1', force=True)
        assert env.container_residue('sb', 'c1') == []
        sandbox_intact(env)
    sbx.delete(rt, 'sb', force=True)
    assert env.residue() == {}


# ---------------------------------------------------------------------------------------------
# transitions

def test_every_flow_runs_clean_on_the_fakes():
    """The dry run of every flow the fault tests use succeeds."""
    if os.geteuid() != 0:
        pytest.skip('root only')
    failed = {name: repr(profile(name).error) for name in SCENARIOS if profile(name).error is not None}
    assert failed == {}


def test_create_records_shares_and_creates_in_the_guest(env):
    """create: record 'created', mapping, cgroup dir, host bundle, rootfs bound read-only at
    shared/c1/rootfs, the container created in the guest; prestart, createRuntime,
    createContainer hooks in order, with the host bundle as the state's bundle."""
    _created(env)
    rec = env.rt.store.load_container('sb', 'c1')
    assert rec.status == 'created' and env.rt.store.get_mapping('c1') == 'sb'
    assert rec.cgroups_paths and all(os.path.isdir(p) for p in rec.cgroups_paths)
    target = os.path.join(env.rt.store.sandbox_dir('sb'), 'shared', 'c1', 'rootfs')
    flags = {m[0]: m[1] for m in mountinfo.mounts()}[target].split(',')
    assert 'ro' in flags and os.path.isdir(os.path.join(target, 'bin'))
    bundle = os.path.join(env.rt.store.sandbox_dir('sb'), 'bundles', 'c1')
    assert json.load(open(os.path.join(bundle, 'config.json')))['process']['args'] == rec.args
    assert env.agents.guest('sb')['c1']['status'] == 'created'
    assert [k for k, dummy in hook_log(env)] == ['prestart', 'createRuntime', 'createContainer']
    assert all(s['bundle'] == bundle and s['id'] == 'c1' for dummy, s in hook_log(env))
    assert ctr.info(env.rt, rec)['status'] == 'created'


def test_start_runs_it_with_start_hooks(env):
    """created -> running: guest pid recorded, startContainer then poststart hooks."""
    _created(env)
    rec = ctr.start(env.rt, 'c1')
    assert rec.status == 'running' and rec.pid == env.agents.guest('sb')['c1']['pid']
    assert [k for k, dummy in hook_log(env)][-2:] == ['startContainer', 'poststart']
    assert ctr.info(env.rt, env.rt.store.load_container('sb', 'c1'))['status'] == 'running'


def test_start_of_a_running_container_is_refused(env):
    """start of a running container: Conflict saying it is running; it keeps running."""
    _running(env)
    with pytest.raises(Conflict, match='running'):
        ctr.start(env.rt, 'c1')
    assert env.agents.guest('sb')['c1']['status'] == 'running'


def test_stop_signals_and_records_the_exit(env):
    """running -> stopped with SIGTERM: exit code 128+15 recorded, the guest agrees."""
    _running(env)
    rec = ctr.stop(env.rt, 'c1')
    assert rec.status == 'stopped' and rec.exit_code == 128 + signal.SIGTERM
    assert env.agents.guest('sb')['c1']['status'] == 'stopped'


def test_stop_sends_sigkill_when_sigterm_is_ignored(env):
    """A container that ignores SIGTERM (PID 1 without a handler) gets SIGKILL after the grace
    period: stopped, exit 137."""
    _ignores_sigterm(env)
    trace = env.rt.trace()
    rec = ctr.stop(env.rt, 'c1', timeout=1, trace=trace)
    assert rec.exit_code == 128 + signal.SIGKILL
    assert any('SIGKILL' in a for a in trace.actions), trace.actions


def test_delete_without_force_refuses_a_running_container(env):
    """delete of a running container without force: Conflict, nothing changed."""
    _running(env)
    with pytest.raises(Conflict, match='force'):
        ctr.delete(env.rt, 'c1')
    assert env.rt.store.load_container('sb', 'c1').status == 'running'
    assert env.agents.guest('sb')['c1']['status'] == 'running'


def test_delete_with_force_kills_and_removes_everything_of_it(env):
    """delete force: SIGKILL through the agent, removed in the guest, poststop hook, nothing
    of the container left; the sandbox untouched; a second delete finds nothing."""
    _running(env)
    assert ctr.delete(env.rt, 'c1', force=True) is True
    assert env.container_residue('sb', 'c1') == []
    assert 'c1' not in env.agents.guest('sb')
    assert [(k, s['id']) for k, s in hook_log(env)] == [('poststop', 'c1')]
    sandbox_intact(env)
    assert ctr.delete(env.rt, 'c1', force=True) is False


def test_delete_of_a_stopped_container_needs_no_force(env):
    """delete of a stopped container: no force needed, nothing of it left."""
    _stopped(env)
    assert ctr.delete(env.rt, 'c1') is True
    assert env.container_residue('sb', 'c1') == []


def test_deleting_the_pod_sandbox_id_deletes_the_whole_sandbox(env):
    """The sandbox's own ID as a container (pod_sandbox): the whole sandbox goes."""
    _running(env)
    assert ctr.delete(env.rt, 'sb', force=True) is True
    assert env.residue() == {}


def test_create_is_refused_where_it_cannot_run(env):
    """create in a missing sandbox (NotFound), a stopped one (Conflict), with a used ID
    (Conflict) or annotated as a pod_sandbox (InvalidArgument): nothing of it is left."""
    with pytest.raises(NotFound, match='sb'):
        ctr.create(env.rt, 'sb', 'c1', env.container_settings())
    env.sandbox('sb', boot=False)
    with pytest.raises(Conflict, match='stopped'):
        ctr.create(env.rt, 'sb', 'c1', env.container_settings())
    sbx.start(env.rt, 'sb')
    env.container('sb', 'c1')
    with pytest.raises(Conflict, match='c1'):
        ctr.create(env.rt, 'sb', 'c1', env.container_settings())
    with pytest.raises(Conflict, match='sb'):
        ctr.create(env.rt, 'sb', 'sb', env.container_settings())
    with pytest.raises(InvalidArgument, match='pod_sandbox'):
        ctr.create(env.rt, 'sb', 'c2', env.container_settings(
            annotations={oci.KATA_CONTAINER_TYPE_KEY: 'pod_sandbox'}))
    assert env.container_residue('sb', 'c2') == []


def test_failing_prestart_removes_the_container_and_keeps_the_sandbox(env):
    """A prestart hook that fails: create fails with its stderr; nothing of the container is
    left and the sandbox runs on."""
    env.sandbox('sb')
    hook = env.hook('fail.sh', 'echo refused >&2; exit 2')
    with pytest.raises(KataError, match='refused'):
        ctr.create(env.rt, 'sb', 'c1', env.container_settings(hooks={'prestart': [{'path': hook}]}))
    assert env.container_residue('sb', 'c1') == []
    sandbox_intact(env)


def test_failing_poststop_is_a_warning_and_delete_completes(env):
    """A failing poststop hook of a container: a warning, the delete completes."""
    env.sandbox('sb')
    hook = env.hook('fail.sh', 'echo boom >&2; exit 3')
    env.container('sb', 'c1', hooks={'poststop': [{'path': hook}]})
    trace = env.rt.trace()
    assert ctr.delete(env.rt, 'c1', force=True, trace=trace) is True
    assert any('fail.sh' in w and 'boom' in w for w in trace.warnings), trace.warnings
    assert env.container_residue('sb', 'c1') == []


def test_a_record_with_unusable_hooks_stays_deletable(env):
    """A container record holding hooks validation now refuses (args with NUL, a timeout of
    10**400: what an older version accepted) never blocks its forced delete."""
    env.sandbox('sb')
    hook = env.hook('ok.sh', 'exit 0')
    env.container('sb', 'c1')
    rec = env.rt.store.load_container('sb', 'c1')
    rec.hooks = {'poststop': [{'path': hook, 'args': [hook, 'a\x00b'], 'env': None, 'timeout': None},
                              {'path': hook, 'args': [hook], 'env': None, 'timeout': 10 ** 400}]}
    env.rt.store.save_container(rec)
    trace = env.rt.trace()
    assert ctr.delete(env.rt, 'c1', force=True, trace=trace) is True
    assert len(trace.warnings) >= 2, trace.warnings
    assert env.container_residue('sb', 'c1') == []


# ---------------------------------------------------------------------------------------------
# agent and records

def test_dead_agent_forced_delete_removes_the_host_side(env):
    """The agent stops answering: a forced delete warns (naming the container and sandbox)
    and removes the host side; the waits on the agent stay bounded."""
    _running(env)
    env.agents.kill('sb')
    trace = env.rt.trace()
    assert ctr.delete(env.rt, 'c1', force=True, trace=trace) is True
    assert any('c1' in w and 'sb' in w for w in trace.warnings), trace.warnings
    assert env.container_residue('sb', 'c1') == []
    assert env.agents.waited <= 60, env.agents.waited


def test_agent_timeouts_name_the_sandbox_and_the_call(env):
    """A container call that times out says which sandbox's agent, and which call."""
    env.sandbox('sb-timeout-7')
    env.agents.fail('create_container', mode='hang')
    with pytest.raises(AgentError) as info:
        ctr.create(env.rt, 'sb-timeout-7', 'c1', env.container_settings())
    assert 'sb-timeout-7' in str(info.value) and 'create_container' in str(info.value)
    assert 'timed out' in str(info.value)


def test_a_create_answered_late_can_be_retried(env):
    """The guest created the container but its answer came after the timeout: create fails
    and removes the container, and creating it again then works (the guest is not left
    holding a container the host does not know)."""
    env.sandbox('sb')
    env.agents.fail('create_container', mode='late')
    with pytest.raises(AgentError):
        ctr.create(env.rt, 'sb', 'c1', env.container_settings())
    assert env.container_residue('sb', 'c1') == []
    env.container('sb', 'c1')
    assert env.agents.guest('sb')['c1']['status'] == 'running'


def test_hostile_list_reply_makes_status_unknown_not_a_crash(env):
    """An agent answering list_containers with garbage: the container's status is unknown
    with the reason; a forced delete still removes it."""
    _running(env)
    env.agents.fail('list_containers', mode=None, reply=[{'id': '../../etc', 'status': 'pwned'}], times=None)
    containers, dummy = ctr.list_all(env.rt)
    c1 = next(c for c in containers if c['id'] == 'c1')
    assert c1['status'] == 'unknown' and 'invalid reply' in c1['error']
    assert ctr.delete(env.rt, 'c1', force=True) is True
    assert env.container_residue('sb', 'c1') == []


@pytest.mark.parametrize('content', [b'{"id": "c1", "trunc', b'[]', b'\xff\xfe', b''],
                         ids=['truncated', 'not-an-object', 'not-utf8', 'empty'])
def test_corrupt_container_record_is_deleted_with_force(env, content):
    """A corrupt container record: without force an error naming it, with force the delete
    succeeds; after the sandbox's forced delete and prune, zero residue."""
    _running(env)
    path = os.path.join(env.rt.store.sandbox_dir('sb'), 'containers', 'c1.json')
    with open(path, 'wb') as f:
        f.write(content)
    with pytest.raises(KataError, match='c1'):
        ctr.delete(env.rt, 'c1')
    assert ctr.delete(env.rt, 'c1', force=True) is True
    assert not os.path.exists(path) and env.rt.store.get_mapping('c1') is None
    sandbox_intact(env)
    sbx.delete(env.rt, 'sb', force=True)
    prune.prune(env.rt, [], force=True)
    assert env.residue() == {}


@pytest.mark.parametrize('operation', ['start', 'stop'])
def test_start_or_stop_after_a_concurrent_delete_is_not_found(env, operation):
    """start/stop found the container, then a concurrent delete removed it before they took
    the lock: a clear NotFound, not an AttributeError."""
    if operation == 'start':
        _created(env)
    else:
        _running(env)

    # Both find the container, then take the sandbox's lock: right before that, another
    # process (a thread with its own Runtime) force-deletes the container.
    real_lock = env.rt.store.lock
    fired = []

    def lock(sid, *args, **kwargs):
        if not fired:
            fired.append(sid)
            worker = threading.Thread(target=ctr.delete, args=(env.runtime(), 'c1'), kwargs={'force': True})
            worker.start()
            worker.join(20)
        return real_lock(sid, *args, **kwargs)

    env.rt.store.lock = lock
    with pytest.raises(NotFound, match='c1'):
        getattr(ctr, operation)(env.rt, 'c1')
    assert fired and env.container_residue('sb', 'c1') == []


# ---------------------------------------------------------------------------------------------
# each fault at each step

def test_hypervisor_error_at_each_call(env, scenario, hv_call, late):
    """libvirt fails the Nth call of a container flow: a KataError, the truth reported, and the
    next run's forced deletes leave zero residue."""
    setup, operation = SCENARIOS[scenario]
    setup(env)
    env.hv.fail('*', at=hv_call, late=late)
    settle(env, scenario, attempt(operation, env))


def test_agent_fault_at_each_call(env, scenario, agent_call, method, mode):
    """The agent fails the Nth call of a container flow (error reply, no answer, late answer,
    dead from then on): a KataError (naming the sandbox when it is the agent's), the truth
    reported, and the next run's forced deletes leave zero residue."""
    setup, operation = SCENARIOS[scenario]
    setup(env)
    env.agents.fail('*', mode=mode, at=agent_call)
    error = attempt(operation, env)
    if isinstance(error, AgentError):
        assert re.search(r'\bsb\b', str(error)), 'the agent error must name the sandbox: %s' % error
    settle(env, scenario, error)
    assert env.agents.waited < 120, env.agents.waited


def test_killed_at_each_step(env, monkeypatch, scenario, kill_step):
    """The module process SIGKILLed before step N of a container flow: the next run reports the
    truth, its forced delete of the container removes all of it (the sandbox runs on), and the
    sandbox's forced delete leaves zero residue."""
    setup, operation = SCENARIOS[scenario]
    setup(env)
    killer = Killer(monkeypatch, env.hv, env.agents, at=kill_step, root=env.root)
    with pytest.raises(Killed):
        operation(env)
    killer.disarm()
    rt = env.fresh()
    assert records_parse(rt) == []
    assert truthful(rt, env.hv) == []
    ctr.delete(rt, 'c1', force=True)
    assert env.container_residue('sb', 'c1') == []
    sandbox_intact(env)
    sbx.delete(rt, 'sb', force=True)
    assert env.residue() == {}


def test_state_fs_fault_at_each_write(env, monkeypatch, scenario, write_index, code):
    """The state file system full or read-only at the Nth record write of a container flow:
    it fails saying so (a forced delete may go on, warning so), no record is half-written, and
    forced deletes leave zero residue."""
    setup, operation = SCENARIOS[scenario]
    setup(env)
    fault = StateFsFault(monkeypatch, err=code, at=write_index)
    traces = traced(monkeypatch)
    error = attempt(operation, env)
    monkeypatch.undo()
    assert fault.failed, 'the fault hit no write'
    assert error is None or isinstance(error, KataError), repr(error)
    said = [str(error)] if error is not None else [w for t in traces for w in t.warnings]
    assert any(os.strerror(code) in m for m in said), 'the failed write of %s went unreported: %s' % (
        fault.failed[0], said)
    rt = env.fresh()
    assert records_parse(rt) == []
    assert truthful(rt, env.hv) == []
    ctr.delete(rt, 'c1', force=True)
    assert env.container_residue('sb', 'c1') == []
    sbx.delete(rt, 'sb', force=True)
    assert env.residue() == {}
