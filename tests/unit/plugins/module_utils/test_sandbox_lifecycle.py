# Copyright: kata.runtime contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""sandbox.py on the fakes: every transition, and each fault at each step of each one.

The VMs and guest agents are fakes (lifecycle_fakes.py); everything else is real: the store
under a temp state root, a temp dir as the cgroup v2 mount, tmpfs shares (root only), real
hook scripts. After every fault: what is reported is true, every record is whole, and a forced
delete by the next run leaves zero residue.
"""

from __future__ import annotations

import errno
import json
import os
import re
import threading
import time

import pytest
from ansible_collections.kata.runtime.plugins.module_utils.kata import container as ctr
from ansible_collections.kata.runtime.plugins.module_utils.kata import mountinfo, prune, share, template
from ansible_collections.kata.runtime.plugins.module_utils.kata import sandbox as sbx
from ansible_collections.kata.runtime.plugins.module_utils.kata.errors import (
    AgentError,
    Conflict,
    CorruptRecord,
    HookError,
    InvalidArgument,
    KataError,
    NotFound,
)
from ansible_collections.kata.runtime.plugins.module_utils.kata.oci import HOOK_KINDS
from ansible_collections.kata.runtime.plugins.module_utils.kata.runtime import Runtime
from ansible_collections.kata.runtime.plugins.module_utils.kata.store import Store
from ansible_collections.kata.runtime.tests.unit.plugins.module_utils.lifecycle_fakes import (
    Env,
    Killed,
    Killer,
    StateFsFault,
    agent_cases,
    build_template,
    dry_run,
    hv_cases,
    kill_cases,
    reboot_host,
    records_parse,
    truthful,
    write_cases,
)

pytestmark = [pytest.mark.skipif(os.geteuid() != 0, reason='share.prepare mounts tmpfs: root only'),
              pytest.mark.usefixtures('quick_hooks')]


def log_hooks(env, kinds=HOOK_KINDS, name='hooks.log'):
    """One real hook script per kind, each appending '<kind> <state id> <status>' to a log."""
    log = os.path.join(env.tmp, name)
    path = env.hook('log-hook.sh', 'echo "$1 $(cat)" >> %s' % log)
    return {kind: [{'path': path, 'args': [path, kind]}] for kind in kinds}, log


def hook_log(log):
    """[(kind, state dict)] from a log written by log_hooks."""
    if not os.path.exists(log):
        return []
    out = []
    with open(log) as f:
        for line in f:
            kind, dummy, state = line.strip().partition(' ')
            out.append((kind, json.loads(state)))
    return out


# ---------------------------------------------------------------------------------------------
# the operations every fault runs against

def _running(env):
    env.sandbox('sb')


def _with_containers(env, hooks=None):
    env.sandbox('sb', hooks=hooks)
    env.container('sb', 'c1', hooks=hooks)
    env.container('sb', 'c2', start=False)


def _with_containers_and_hooks(env):
    _with_containers(env, hooks=log_hooks(env, kinds=('poststop',))[0])


def _stopped(env):
    env.sandbox('sb', boot=False)


def _paused(env):
    env.sandbox('sb')
    sbx.pause(env.rt, 'sb')


def _dead(env):
    _with_containers(env)
    env.hv.crash(env.hv.domain_name('sb'))


def _create(env):
    hooks, dummy = log_hooks(env)
    env.sandbox('sb', hooks=hooks, labels={'tier': 'web'})


def _template(env):
    build_template(env)


# name: (setup, operation)
SCENARIOS = {
    'create': (None, _create),
    'create_template': (_template, lambda e: e.sandbox('sb', template=True)),
    'create_noboot': (None, lambda e: e.sandbox('sb', boot=False)),
    'start_stopped': (_stopped, lambda e: sbx.start(e.rt, 'sb')),
    'start_paused': (_paused, lambda e: sbx.start(e.rt, 'sb')),
    'start_dead': (_dead, lambda e: sbx.start(e.rt, 'sb')),
    'stop': (_running, lambda e: sbx.stop(e.rt, 'sb')),
    'stop_force': (_with_containers, lambda e: sbx.stop(e.rt, 'sb', force=True)),
    'pause': (_running, lambda e: sbx.pause(e.rt, 'sb')),
    'update': (_running, lambda e: sbx.update(e.rt, 'sb', {'labels': {'a': 'b'}})),
    'delete': (_stopped, lambda e: sbx.delete(e.rt, 'sb')),
    'delete_force': (_with_containers_and_hooks, lambda e: sbx.delete(e.rt, 'sb', force=True)),
}
# The flows a SIGKILL is tried at every step of (the next run deletes with force), and those
# also cleaned up by prune instead.
KILLED = ('create', 'create_template', 'create_noboot', 'delete', 'delete_force', 'stop_force', 'start_dead')
PRUNED = ('create', 'create_template', 'delete_force')
# The flows a full or read-only state file system is tried at every write of.
WRITING = ('create', 'create_template', 'create_noboot', 'start_stopped', 'start_dead', 'stop_force', 'pause', 'update',
           'delete_force')

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
        flows = PRUNED if 'pruned' in metafunc.function.__name__ else KILLED
        metafunc.parametrize('scenario,kill_step', kill_cases(profile, flows))
    elif 'write_index' in names:
        metafunc.parametrize('scenario,write_index,code', write_cases(profile, WRITING, both=('create', 'delete_force')))


def run(env, name):
    """Set up and run flow ``name``; returns the exception it ended with (None on success)."""
    setup, operation = SCENARIOS[name]
    if setup is not None:
        setup(env)
    return attempt(operation, env)


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
    """After a fault in flow ``name``: the error was a clear one, what the next run sees is
    true and whole, a failed create left nothing, and the next run's forced delete leaves
    zero residue."""
    assert error is None or isinstance(error, KataError), 'not a KataError: %r' % (error,)
    rt = env.fresh()
    assert records_parse(rt) == []
    assert truthful(rt, env.hv) == []
    if error is not None and name.startswith('create'):
        assert env.residue() == {}, 'a failed create must remove what it made (%s)' % error
    sbx.delete(rt, 'sb', force=True)
    assert env.residue() == {}
    if name.endswith('template'):
        found, problems = template.list_templates(template.templates_dir(rt.store.root))
        assert len(found) == 1 and problems == [], 'the template must outlive its clone (%s)' % (problems,)


# ---------------------------------------------------------------------------------------------
# transitions

def test_every_flow_runs_clean_on_the_fakes():
    """The dry run of every flow the fault tests use succeeds (a fault test is only as good as
    the run it perturbs)."""
    if os.geteuid() != 0:
        pytest.skip('root only')
    failed = {name: repr(profile(name).error) for name in SCENARIOS if profile(name).error is not None}
    assert failed == {}


def test_create_boots_records_and_runs_hooks_in_order(env):
    """create: record running, self-mapping, cgroup dir, shares mounted, VM running with the
    full spec, agent ready; prestart..startContainer then poststart hooks, in that order."""
    hooks, log = log_hooks(env)
    rec = env.sandbox('sb', hooks=hooks, labels={'tier': 'web'})
    assert rec.state == 'running' and env.rt.store.load_sandbox('sb').state == 'running'
    assert env.rt.store.get_mapping('sb') == 'sb'
    assert rec.cgroups_paths and all(os.path.isdir(p) for p in rec.cgroups_paths)
    sdir = env.rt.store.sandbox_dir('sb')
    assert set(mountinfo.under(sdir)) == {os.path.join(sdir, 'output'), os.path.join(sdir, 'console'),
                                          os.path.join(sdir, 'volumes')}
    dom = env.hv.domain_of('sb')
    assert dom.state == 'running' and dom.vm['sandbox_id'] == 'sb'
    assert dom.vm.get('state_root') == env.rt.store.root, 'the VM must carry the state root that owns it'
    kinds = [k for k, dummy in hook_log(log)]
    assert kinds == ['prestart', 'createRuntime', 'createContainer', 'startContainer', 'poststart']
    assert all(state['id'] == 'sb' for dummy, state in hook_log(log))
    info = sbx.info(env.rt, env.rt.store.load_sandbox('sb'))
    assert info['state'] == 'running' and info['labels'] == {'tier': 'web'}


def test_create_without_boot_records_a_stopped_sandbox(env):
    """create boot=False: a stopped record and its cgroup dir; no VM, no mounts, no hooks."""
    hooks, log = log_hooks(env)
    rec = env.sandbox('sb', boot=False, hooks=hooks)
    assert rec.state == 'stopped'
    assert env.hv.domain_of('sb') is None
    assert mountinfo.under(env.rt.store.sandbox_dir('sb')) == []
    assert hook_log(log) == []
    assert sbx.info(env.rt, env.rt.store.load_sandbox('sb'))['state'] == 'stopped'


def test_start_boots_a_stopped_sandbox(env):
    """stopped -> running: the VM is defined and booted, the record says running."""
    env.sandbox('sb', boot=False)
    sbx.start(env.rt, 'sb')
    assert env.hv.domain_of('sb').state == 'running'
    assert sbx.info(env.rt, env.rt.store.load_sandbox('sb'))['state'] == 'running'


def test_pause_then_start_resumes(env):
    """running -> paused -> running (start on a paused sandbox resumes, no new boot)."""
    env.sandbox('sb')
    sbx.pause(env.rt, 'sb')
    assert sbx.info(env.rt, env.rt.store.load_sandbox('sb'))['state'] == 'paused'
    sbx.start(env.rt, 'sb')
    dom = env.hv.domain_of('sb')
    assert dom.state == 'running' and dom.boots == 1
    assert env.rt.store.load_sandbox('sb').state == 'running'


def test_pause_refuses_a_sandbox_that_does_not_run(env):
    """pause of a stopped sandbox: Conflict saying so, nothing changed."""
    env.sandbox('sb', boot=False)
    with pytest.raises(Conflict, match='cannot be paused'):
        sbx.pause(env.rt, 'sb')
    assert env.rt.store.load_sandbox('sb').state == 'stopped'


@pytest.mark.parametrize('vm_after', ['crashed', 'shutoff', 'missing'])
def test_vmm_killed_under_running_sandbox_is_dead_and_forced_delete_cleans(env, vm_after):
    """The VMM dies under a sandbox with containers: reported dead (never running), its
    containers stopped; the forced delete removes everything, the stale socket included."""
    _with_containers(env)
    env.hv.crash(env.hv.domain_name('sb'), state=vm_after)
    assert os.path.exists(env.rt.store.agent_socket('sb')), 'a killed VMM leaves its socket'
    assert truthful(env.rt, env.hv) == []
    sandboxes, dummy = sbx.list_all(env.rt)
    assert [(s['id'], s['state']) for s in sandboxes] == [('sb', 'dead')]
    containers, dummy = ctr.list_all(env.rt)
    assert {c['id']: c['status'] for c in containers} == {'sb': 'stopped', 'c1': 'stopped', 'c2': 'stopped'}
    assert sbx.delete(env.fresh(), 'sb', force=True) is True
    assert env.residue() == {}


def test_start_boots_a_dead_sandbox_again_and_its_containers_are_stopped(env):
    """dead -> running: the VM boots again; the containers that ran in the old guest are
    recorded stopped (their processes died with it)."""
    _dead(env)
    sbx.start(env.rt, 'sb')
    assert env.hv.domain_of('sb').state == 'running'
    assert {c.id: c.status for c in env.rt.store.list_containers('sb')[0]} == {'c1': 'stopped', 'c2': 'stopped'}


def test_stop_without_force_refuses_running_containers_and_changes_nothing(env):
    """stop with a running container and no force: Conflict naming it; VM and records as they were."""
    _with_containers(env)
    before = env.rt.store.load_sandbox('sb')
    with pytest.raises(Conflict, match='c1'):
        sbx.stop(env.rt, 'sb')
    assert env.hv.domain_of('sb').state == 'running'
    assert env.rt.store.load_sandbox('sb') == before


def test_stop_with_force_powers_off_and_marks_containers_stopped(env):
    """stop force: the guest powers off through the agent; record and containers stopped."""
    _with_containers(env)
    trace = env.rt.trace()
    sbx.stop(env.rt, 'sb', force=True, trace=trace)
    assert env.hv.domain_of('sb').state == 'shutoff'
    assert env.rt.store.load_sandbox('sb').state == 'stopped'
    assert {c.status for c in env.rt.store.list_containers('sb')[0]} == {'stopped'}
    assert any('powered off' in a for a in trace.actions), trace.actions


def test_stop_destroys_the_vm_when_the_guest_does_not_answer(env):
    """stop of a guest whose agent hangs: a warning naming the sandbox, the VM destroyed."""
    env.sandbox('sb')
    env.agents.fail('shutdown', mode='hang')
    trace = env.rt.trace()
    sbx.stop(env.rt, 'sb', trace=trace)
    assert env.hv.domain_of('sb').state == 'shutoff'
    assert any('sandbox sb' in w and 'timed out' in w for w in trace.warnings), trace.warnings


def test_update_changes_labels_and_refuses_immutable_settings(env):
    """update: labels and annotations change in place; anything else is refused unchanged."""
    env.sandbox('sb', labels={'a': '1'})
    sbx.update(env.rt, 'sb', {'labels': {'a': '2'}, 'annotations': {'x': 'y'}})
    rec = env.rt.store.load_sandbox('sb')
    assert rec.labels == {'a': '2'} and rec.annotations == {'x': 'y'}
    with pytest.raises(InvalidArgument, match='vcpus'):
        sbx.update(env.rt, 'sb', {'vcpus': 4})
    assert env.rt.store.load_sandbox('sb').vcpus == rec.vcpus


def test_update_of_a_missing_sandbox_is_not_found(env):
    """update, stop, pause, start of a sandbox that does not exist: NotFound naming it."""
    for operation in (lambda: sbx.update(env.rt, 'nope', {}), lambda: sbx.stop(env.rt, 'nope'),
                      lambda: sbx.pause(env.rt, 'nope'), lambda: sbx.start(env.rt, 'nope')):
        with pytest.raises(NotFound, match='nope'):
            operation()


def test_delete_without_force_refuses_running_containers(env):
    """delete with running containers and no force: Conflict naming them, nothing changed."""
    _with_containers(env)
    with pytest.raises(Conflict, match='c1'):
        sbx.delete(env.rt, 'sb')
    assert env.hv.domain_of('sb').state == 'running'
    assert env.rt.store.load_sandbox('sb').state == 'running'


def test_delete_with_force_leaves_zero_residue_and_runs_poststop_hooks(env):
    """delete force: containers killed, VM gone, poststop hooks of containers then sandbox,
    zero residue; a second delete finds nothing (False)."""
    _with_containers_and_hooks(env)
    log = os.path.join(env.tmp, 'hooks.log')
    assert sbx.delete(env.rt, 'sb', force=True) is True
    assert env.residue() == {}
    assert [(k, s['id']) for k, s in hook_log(log)] == [('poststop', 'c1'), ('poststop', 'sb')]
    assert sbx.delete(env.rt, 'sb', force=True) is False


def test_delete_of_a_stopped_sandbox_needs_no_force(env):
    """delete of a stopped sandbox: no force needed, zero residue."""
    env.sandbox('sb', boot=False)
    assert sbx.delete(env.rt, 'sb') is True
    assert env.residue() == {}


def test_delete_of_a_paused_sandbox_with_running_containers_needs_force(env):
    """A paused guest cannot answer: the records say c1 runs, so no force means Conflict."""
    _with_containers(env)
    sbx.pause(env.rt, 'sb')
    with pytest.raises(Conflict, match='c1'):
        sbx.delete(env.rt, 'sb')
    assert sbx.delete(env.rt, 'sb', force=True) is True
    assert env.residue() == {}


def test_create_refuses_an_existing_sandbox_and_an_id_used_by_a_container(env):
    """create of an existing ID, or of a container's ID: Conflict, the existing ones intact."""
    env.sandbox('sb')
    env.container('sb', 'c1')
    with pytest.raises(Conflict, match='already exists'):
        env.sandbox('sb')
    with pytest.raises(Conflict, match='c1'):
        env.sandbox('c1')
    assert env.rt.store.get_mapping('c1') == 'sb' and env.hv.domain_of('sb').state == 'running'
    assert env.hv.domain_of('c1') is None


def test_create_refuses_a_running_vm_it_has_no_record_of_and_leaves_nothing(env):
    """A running VM with our prefix and no record here (another root's, or an orphan) is
    refused, never destroyed; the refused create leaves nothing of its own behind."""
    name = env.hv.add_orphan('sb', state_root='/run/other-root')
    with pytest.raises(Conflict, match='sb'):
        env.sandbox('sb')
    assert env.hv.ours() == {name: 'running'}
    assert env.residue() == {'domains': ['%s (running)' % name]}


def test_create_drops_a_stale_definition_of_its_own_root(env):
    """A shut-off VM of ours left without a record (state root emptied by a reboot) is
    undefined and the new sandbox gets a fresh definition."""
    env.hv.add_orphan('sb', state_root=env.rt.store.root, state='shutoff')
    env.sandbox('sb')
    assert env.hv.domain_of('sb').boots == 1 and env.hv.domain_of('sb').vm.get('kernel')


@pytest.mark.parametrize('wipe', [True, False], ids=['state-on-tmpfs', 'state-kept'])
def test_host_reboot_then_forced_cleanup(env, wipe):
    """A simulated host reboot (VMs stopped, mounts and cgroups gone, the state root wiped or
    kept): status is truthful and a forced delete plus prune leaves zero residue."""
    _with_containers(env)
    env.sandbox('other', boot=False)
    reboot_host(env, wipe_state=wipe)
    rt = env.fresh()
    assert truthful(rt, env.hv) == []
    if not wipe:
        sandboxes, dummy = sbx.list_all(rt)
        assert {s['id']: s['state'] for s in sandboxes} == {'sb': 'dead', 'other': 'stopped'}
        sbx.delete(rt, 'sb', force=True)
        sbx.delete(rt, 'other', force=True)
    prune.prune(rt, prune.selected_ids(rt, select_all=True), force=True)
    assert env.residue() == {}


def test_host_reboot_with_kept_state_then_start_boots_again(env):
    """After a reboot with the state kept, start boots the dead sandbox again (cgroup dirs
    made again as needed) and a forced delete still leaves zero residue."""
    _with_containers(env)
    reboot_host(env, wipe_state=False)
    rt = env.fresh()
    sbx.start(rt, 'sb')
    assert env.hv.domain_of('sb').state == 'running'
    sbx.delete(rt, 'sb', force=True)
    assert env.residue() == {}


# ---------------------------------------------------------------------------------------------
# the state of the agent

def test_dead_agent_forced_delete_completes_with_bounded_waits(env):
    """The guest agent stops answering (agent killed, kernel panic): the forced delete still
    removes everything, and its waits on the agent stay bounded."""
    _with_containers(env)
    env.agents.kill('sb')
    trace = env.rt.trace()
    assert sbx.delete(env.rt, 'sb', force=True, trace=trace) is True
    assert env.residue() == {}
    assert env.agents.waited <= 30, env.agents.waited
    assert any('agent' in a and 'timed out' in a for a in trace.actions + trace.warnings)


def test_agent_that_never_answers_fails_create_naming_the_sandbox(env):
    """A guest whose agent never answers: create fails with a message naming the sandbox
    (and its console log), and nothing is left."""
    env.agents.fail('wait_ready', mode='hang')
    with pytest.raises(AgentError) as info:
        env.sandbox('web-7')
    assert 'web-7' in str(info.value)
    assert 'see the guest console log %s' % share.console_log(env.rt.store, 'web-7') in str(info.value)
    assert env.residue() == {}


def test_stop_without_force_with_a_dead_agent_says_why(env):
    """stop without force when the agent cannot say what runs: the records decide (c1 runs),
    Conflict; with force it stops."""
    _with_containers(env)
    env.agents.kill('sb')
    with pytest.raises(Conflict, match='c1'):
        sbx.stop(env.rt, 'sb')
    sbx.stop(env.rt, 'sb', force=True)
    assert env.hv.domain_of('sb').state == 'shutoff'


# ---------------------------------------------------------------------------------------------
# hooks

def test_prestart_hook_that_hangs_is_killed_at_its_timeout_and_create_leaves_nothing(tmp_host):
    """A prestart hook that hangs past hook_timeout: killed, create fails saying so, quickly,
    and nothing is left."""
    env = Env(tmp_host, hook_timeout=0.3)
    hook = env.hook('hang.sh', 'sleep 30')
    start = time.monotonic()
    with pytest.raises(HookError, match='timed out'):
        env.sandbox('sb', hooks={'prestart': [{'path': hook}]})
    assert time.monotonic() - start < 10
    assert env.residue() == {}


def test_failing_prestart_fails_create_and_leaves_nothing(env):
    """A prestart hook that fails: create fails with its stderr, and nothing is left."""
    hook = env.hook('fail.sh', 'echo no-way >&2; exit 3')
    with pytest.raises(HookError, match='no-way'):
        env.sandbox('sb', hooks={'prestart': [{'path': hook}]})
    assert env.residue() == {}


@pytest.mark.parametrize('body', ['echo boom >&2; exit 4', 'sleep 30'], ids=['fails', 'hangs'])
def test_poststop_hook_failure_is_a_warning_and_delete_completes(tmp_host, body):
    """A poststop hook that fails or hangs past its timeout: a warning, the delete completes."""
    env = Env(tmp_host, hook_timeout=0.3)
    hook = env.hook('bad.sh', body)
    env.sandbox('sb', hooks={'poststop': [{'path': hook}]})
    trace = env.rt.trace()
    assert sbx.delete(env.rt, 'sb', force=True, trace=trace) is True
    assert any('bad.sh' in w for w in trace.warnings), trace.warnings
    assert env.residue() == {}


def test_failing_poststart_is_a_warning_and_the_sandbox_runs(env):
    """A poststart hook that fails: a warning; the sandbox is created and runs."""
    hook = env.hook('fail.sh', 'exit 1')
    trace = env.rt.trace()
    sbx.create(env.rt, 'sb', env.settings(hooks={'poststart': [{'path': hook}]}), trace=trace)
    assert any('fail.sh' in w for w in trace.warnings), trace.warnings
    assert env.hv.domain_of('sb').state == 'running'


@pytest.mark.parametrize('field,value,shown', [
    ('args', ['x', 'a\x00b'], 'a\\x00b'),
    ('timeout', 10 ** 400, '1000000000'),
    ('timeout', 2 ** 64, str(2 ** 64)),
], ids=['nul-in-args', 'timeout-10**400', 'timeout-2**64'])
def test_unusable_hooks_are_refused_at_validation_naming_the_value(env, field, value, shown):
    """Hook args with NUL and absurd timeouts are refused when the settings are validated
    (never at run time, where a poststop would block delete), naming the bad value."""
    hook = env.hook('ok.sh', 'exit 0')
    hooks = {'poststop': [{'path': hook, field: value}]}
    with pytest.raises(InvalidArgument) as info:
        env.settings(hooks=hooks)
    assert field in str(info.value) and shown in str(info.value)
    with pytest.raises(InvalidArgument) as info:
        env.container_settings(hooks=hooks)
    assert field in str(info.value) and shown in str(info.value)
    assert not os.path.exists(env.state_root)


@pytest.mark.parametrize('field,value', [('args', ['x', 'a\x00b']), ('timeout', 10 ** 400)],
                         ids=['nul-in-args', 'timeout-10**400'])
def test_a_record_with_unusable_hooks_stays_deletable(env, field, value):
    """A record written before validation refused such hooks (an older version) never makes
    the sandbox undeletable: its poststop hook fails as a warning and the delete completes."""
    hook = env.hook('ok.sh', 'exit 0')
    env.sandbox('sb')
    rec = env.rt.store.load_sandbox('sb')
    rec.hooks = {'poststop': [{'path': hook, 'args': [hook], 'env': None, 'timeout': None, field: value}]}
    env.rt.store.save_sandbox(rec)
    trace = env.rt.trace()
    assert sbx.delete(env.rt, 'sb', force=True, trace=trace) is True
    assert trace.warnings, 'the unusable hook must be reported'
    assert env.residue() == {}


# ---------------------------------------------------------------------------------------------
# state on disk

def test_sandbox_dir_without_record_is_removed_by_forced_delete(env):
    """What ENOSPC on the first save leaves (a sandbox directory without sandbox.json): delete
    without force says to use force; forced delete removes it, zero residue."""
    env.rt.store.ensure_sandbox('sb')
    with pytest.raises(KataError, match='force'):
        sbx.delete(env.rt, 'sb')
    assert sbx.delete(env.rt, 'sb', force=True) is True
    assert env.residue() == {}


def test_corrupt_sandbox_record_is_removed_by_forced_delete_with_its_vm(env):
    """An unreadable sandbox.json: forced delete removes it, its VM (found by name) and every
    container, zero residue."""
    _with_containers(env)
    with open(os.path.join(env.rt.store.sandbox_dir('sb'), 'sandbox.json'), 'w') as f:
        f.write('{"id": "sb", "trunc')
    with pytest.raises(CorruptRecord):
        sbx.delete(env.rt, 'sb')
    trace = env.rt.trace()
    assert sbx.delete(env.rt, 'sb', force=True, trace=trace) is True
    assert trace.warnings
    prune.prune(env.rt, [], force=True)  # the cgroup dirs only the unreadable record listed
    assert env.residue() == {}


def test_forced_delete_works_while_the_state_file_system_stays_full(env, monkeypatch):
    """Forced deletion must work whatever state the host is in: with the state file system
    full for the whole delete (every record write fails), everything is still removed."""
    _with_containers(env)
    StateFsFault(monkeypatch, err=errno.ENOSPC, at=1, times=None)
    assert sbx.delete(env.rt, 'sb', force=True) is True
    monkeypatch.undo()
    assert env.residue() == {}


def test_update_on_a_full_state_file_system_keeps_the_old_record(env, monkeypatch):
    """A record write that fails (ENOSPC) leaves the old record, whole, and says so."""
    env.sandbox('sb', labels={'a': '1'})
    StateFsFault(monkeypatch, err=errno.ENOSPC, at=1)
    with pytest.raises(KataError) as info:
        sbx.update(env.rt, 'sb', {'labels': {'a': '2'}})
    monkeypatch.undo()
    assert os.strerror(errno.ENOSPC) in str(info.value) and 'sandbox.json' in str(info.value)
    assert env.rt.store.load_sandbox('sb').labels == {'a': '1'}
    assert records_parse(env.rt) == []


def test_cgroup_dirs_a_killed_create_made_are_all_removed_whatever_the_journal_order(tmp_host):
    """A create killed after making its cgroup dirs (our parent and its own) but before its
    record listed them: the forced delete removes both, and their journal notes. Tried under
    several state roots, since the order the notes are listed in varies with their paths: a
    parent looked at before its child is still busy with it."""
    for i in range(8):
        env = Env(tmp_host / str(i))
        leaf = os.path.join(env.cgroup, 'kata-unit', 'sb')
        with pytest.MonkeyPatch.context() as mp:
            killer = Killer(mp, env.hv, env.agents, at=lambda what, done, leaf=leaf: os.path.isdir(leaf),
                            root=env.root)
            with pytest.raises(Killed):
                env.sandbox('sb', boot=False)
            killer.disarm()
        sbx.delete(env.fresh(), 'sb', force=True)
        assert env.residue() == {}, 'state root #%d' % i


# ---------------------------------------------------------------------------------------------
# races

def test_lock_is_not_dropped_while_the_delete_still_runs(env, monkeypatch):
    """Issue 8 #3: a create of the same ID that starts right after the delete unlinked the
    lock file keeps its mapping and its record (the delete touches nothing of it after)."""
    env.sandbox('sb', boot=False)
    lock = env.rt.store.lock_path('sb')
    real_unlink = Store._unlink
    outcome = {}

    def second_create():
        try:
            rt2 = env.runtime()
            sbx.create(rt2, 'sb', env.settings(), boot=False)
            outcome['ok'] = True
        except Exception as err:  # noqa: BLE001 - checked below
            outcome['error'] = err

    def unlink(store, path):
        removed = real_unlink(store, path)
        if path == lock and 'started' not in outcome:
            outcome['started'] = True
            worker = threading.Thread(target=second_create)
            worker.start()
            worker.join(20)
        return removed

    monkeypatch.setattr(Store, '_unlink', unlink)
    assert sbx.delete(env.rt, 'sb') is True
    monkeypatch.undo()
    assert outcome.get('started'), 'the delete never unlinked its lock file'
    assert outcome.get('ok'), outcome
    assert env.rt.store.load_sandbox('sb') is not None
    assert env.rt.store.get_mapping('sb') == 'sb', 'the first delete removed the new sandbox mapping'
    assert sbx.delete(env.rt, 'sb') is True
    assert env.residue() == {}


def test_concurrent_creates_of_one_id_make_one_sandbox(env):
    """Two creates of the same ID at once (the second starts while the first boots): one
    wins, the other gets Conflict; one VM, one record, zero residue after delete."""
    outcome = {}

    def second(call):
        def work():
            try:
                sbx.create(env.runtime(), 'sb', env.settings(), boot=True)
                outcome['second'] = 'ok'
            except KataError as err:
                outcome['second'] = err
        worker = threading.Thread(target=work)
        worker.start()
        worker.join(0.5)  # it waits on the lock: let the first go on
        outcome['worker'] = worker

    env.hv.fail('create', before=second)
    env.sandbox('sb')
    outcome['worker'].join(20)
    assert isinstance(outcome['second'], Conflict), outcome
    assert list(env.hv.ours()) == [env.hv.domain_name('sb')]
    sbx.delete(env.rt, 'sb', force=True)
    assert env.residue() == {}


# ---------------------------------------------------------------------------------------------
# each fault at each step

def test_hypervisor_error_at_each_call(env, scenario, hv_call, late):
    """libvirt fails the Nth call of a flow (before acting, or after acting: libvirtd restarted
    mid-call): a KataError, the truth reported, a failed create leaves nothing, and the next
    run's forced delete leaves zero residue."""
    setup, operation = SCENARIOS[scenario]
    if setup is not None:
        setup(env)
    env.hv.fail('*', at=hv_call, late=late)
    error = attempt(operation, env)
    settle(env, scenario, error)


def test_agent_fault_at_each_call(env, scenario, agent_call, method, mode):
    """The guest agent fails the Nth call of a flow (error reply, no answer, a late answer, or
    dead from then on): a KataError naming the sandbox when it is the agent's, the truth
    reported, and the next run's forced delete leaves zero residue, the dead agent notwithstanding."""
    setup, operation = SCENARIOS[scenario]
    if setup is not None:
        setup(env)
    env.agents.fail('*', mode=mode, at=agent_call)
    error = attempt(operation, env)
    if isinstance(error, AgentError):
        assert re.search(r'\bsb\b', str(error)), 'the agent error must name the sandbox: %s' % error
    settle(env, scenario, error)
    assert env.agents.waited < 120, 'waits on the agent must stay bounded (%ss)' % env.agents.waited


def test_killed_at_each_step(env, monkeypatch, scenario, kill_step):
    """The module process SIGKILLed before step N of a flow: what the next run reports is true
    and whole, and its forced delete leaves zero residue (no domain, cgroup dir, record,
    mapping, lock, socket, mount)."""
    setup, operation = SCENARIOS[scenario]
    if setup is not None:
        setup(env)
    killer = Killer(monkeypatch, env.hv, env.agents, at=kill_step, root=env.root)
    with pytest.raises(Killed):
        operation(env)
    killer.disarm()
    rt = env.fresh()
    assert records_parse(rt) == []
    assert truthful(rt, env.hv) == []
    sbx.delete(rt, 'sb', force=True)
    assert env.residue() == {}


def test_killed_at_each_step_then_pruned(env, monkeypatch, scenario, kill_step):
    """The same kills, cleaned up by kata_prune all=true force=true instead: zero residue."""
    setup, operation = SCENARIOS[scenario]
    if setup is not None:
        setup(env)
    killer = Killer(monkeypatch, env.hv, env.agents, at=kill_step, root=env.root)
    with pytest.raises(Killed):
        operation(env)
    killer.disarm()
    rt = env.fresh()
    result = prune.prune(rt, prune.selected_ids(rt, select_all=True), force=True)
    assert result['failed'] == []
    assert env.residue() == {}


def test_state_fs_fault_at_each_write(env, monkeypatch, scenario, write_index, code):
    """The state file system full (ENOSPC: half the bytes, then the error) or read-only (EROFS)
    at the Nth record write of a flow: the flow fails saying the state could not be written (a
    forced delete may go on, warning so), no record is half-written, and the next run's forced
    delete leaves zero residue."""
    setup, operation = SCENARIOS[scenario]
    if setup is not None:
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
    sbx.delete(rt, 'sb', force=True)
    assert env.residue() == {}


def test_a_create_interrupted_after_its_vm_booted_is_reported_creating_and_start_finishes_it(env, monkeypatch):
    """A create whose process died after the VM booted (or whose libvirtd restarted under it)
    leaves a running VM and a record still ``creating``: reported ``creating``, never
    ``running`` (its create-time hooks never ran); ``start`` finishes the create -- the hooks
    run, then the record says running."""
    hooks, log = log_hooks(env)
    killer = Killer(monkeypatch, env.hv, env.agents, root=env.root,
                    at=lambda what, done: what == 'hook prestart of sb')
    with pytest.raises(Killed):
        env.sandbox('sb', hooks=hooks)
    killer.disarm()
    rt = env.fresh()
    assert env.hv.domain_of('sb').state == 'running'
    assert sbx.info(rt, rt.store.load_sandbox('sb'))['state'] == 'creating'
    assert hook_log(log) == []
    sbx.start(rt, 'sb')
    assert rt.store.load_sandbox('sb').state == 'running'
    assert sbx.info(rt, rt.store.load_sandbox('sb'))['state'] == 'running'
    assert [k for k, dummy in hook_log(log)] == [
        'prestart', 'createRuntime', 'createContainer', 'startContainer', 'poststart']
    sbx.delete(rt, 'sb', force=True)
    assert env.residue() == {}


def test_the_lock_file_names_the_operation_holding_it(env, tmp_path):
    """What a waiter that times out shows ("locked by pid N (delete sandbox sb)") comes from the
    lock file the operation wrote: a poststop hook, run under the delete's lock, reads it."""
    seen = tmp_path / 'lock-seen'
    hook = env.hook('read-lock.sh', 'cat %s > %s' % (env.rt.store.lock_path('sb'), seen))
    env.sandbox('sb', hooks={'poststop': [{'path': hook}]})
    assert sbx.delete(env.rt, 'sb', force=True) is True
    held = json.loads(seen.read_text())
    assert held['owner'] == 'delete sandbox sb' and held['pid'] == os.getpid()
