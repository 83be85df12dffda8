# Copyright: kata.runtime contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Limits of a container on the fakes (lifecycle_fakes.py): what create asks the guest for,
the refusal of a limit larger than the sandbox, and the in-place update through
kata_container's manager (changed, diff before/after, no restart, record kept)."""

from __future__ import annotations

import json
import os

import pytest
from ansible_collections.kata.runtime.plugins.module_utils.kata import common, limits
from ansible_collections.kata.runtime.plugins.module_utils.kata import container as ctr
from ansible_collections.kata.runtime.plugins.module_utils.kata import runtime as runtime_mod
from ansible_collections.kata.runtime.plugins.module_utils.kata.container_manager import ContainerManager
from ansible_collections.kata.runtime.plugins.module_utils.kata.errors import InvalidArgument
from ansible_collections.kata.runtime.plugins.module_utils.kata.model import ContainerRecord
from ansible_collections.kata.runtime.plugins.module_utils.kata.options import CONTAINER_OPTIONS

pytestmark = [pytest.mark.skipif(os.geteuid() != 0, reason='rootfs binds and share.prepare mount: root only'),
              pytest.mark.usefixtures('quick_hooks')]
MIB = 1024 * 1024


class FakeModule:
    """What StateManager uses of an AnsibleModule."""

    def __init__(self, check=False, **params):
        self.params = {name: spec.get('default') for name, spec in CONTAINER_OPTIONS.argument_spec().items()}
        self.params.update({'config': None, 'runtime_root': None})
        self.params.update(params)
        self.check_mode = check
        self._diff = True
        self.warnings = []
        self.result = None

    def warn(self, msg):
        self.warnings.append(msg)

    def exit_json(self, **result):
        self.result = result


def manage(env, monkeypatch, check=False, **params):
    monkeypatch.setattr(common, 'load_module_config', lambda module, **kw: env.rt.config)
    monkeypatch.setattr(runtime_mod, 'Runtime', lambda config, progress=None: env.fresh())
    module = FakeModule(check=check, **params)
    ContainerManager(module).run()
    return module


def guest_container(env, cid='c1'):
    return env.agents.guest('sb')[cid]


def test_create_asks_the_guest_for_limits_process_settings_and_hostname(env):
    env.sandbox('sb', memory_mb=256, vcpus=1)
    env.container('sb', 'c1', memory_mb=64, cpus=0.5, pids_limit=20)
    params = guest_container(env)['params']
    assert params['limits'] == {'memory.max': str(64 * MIB), 'cpu.max': '50000 100000', 'pids.max': '20'}
    assert params['hostname'] == 'c1'
    process = params['process']
    assert process['no_new_privileges'] is True and process['rlimits'] == [[7, 1024, 1024]]
    assert not process['capabilities']['bounding'] & (1 << 21)  # no CAP_SYS_ADMIN inline
    rec = env.rt.store.load_container('sb', 'c1')
    assert (rec.memory_mb, rec.cpus, rec.pids_limit) == (64, 0.5, 20)
    assert ctr.info(env.rt, rec)['limits'] == params['limits']


def test_a_limit_larger_than_the_sandbox_fails_create_and_creates_nothing(env):
    env.sandbox('sb', memory_mb=256, vcpus=1)
    with pytest.raises(InvalidArgument, match=r'memory limit 512 MiB .*sandbox sb \(memory_mb 256\)'):
        env.container('sb', 'c1', memory_mb=512)
    with pytest.raises(InvalidArgument, match=r'CPU limit 2 CPUs .*sandbox sb has \(vcpus 1\)'):
        env.container('sb', 'c1', cpus=2)
    assert env.rt.store.get_mapping('c1') is None and env.container_residue('sb', 'c1') == []
    assert 'c1' not in env.agents.guest('sb')


def test_a_bundle_with_an_unsupported_field_fails_naming_it_and_creates_nothing(env, tmp_path):
    env.sandbox('sb')
    bundle = tmp_path / 'b'
    bundle.mkdir()
    (bundle / 'config.json').write_text(json.dumps({
        'ociVersion': '1.0.2', 'root': {'path': env.rootfs}, 'process': {'args': ['true'], 'cwd': '/'},
        'linux': {'uidMappings': [{'containerID': 0, 'hostID': 1000, 'size': 1}]}}))
    with pytest.raises(InvalidArgument, match='linux.uidMappings'):
        env.container('sb', 'c1', bundle=str(bundle), rootfs=None, command=None)
    assert env.rt.store.get_mapping('c1') is None


def test_a_limit_update_is_applied_in_place(env, monkeypatch):
    env.sandbox('sb', memory_mb=256, vcpus=1)
    started = env.container('sb', 'c1', memory_mb=64)
    # check mode: planned, nothing changed
    module = manage(env, monkeypatch, check=True, name='c1', memory_mb=96, pids_limit=10)
    assert module.result['changed'] is True
    assert guest_container(env)['cgroup'] == {'memory.max': str(64 * MIB)}
    # the real run: the guest's cgroup, then the record; the same process keeps running
    module = manage(env, monkeypatch, name='c1', memory_mb=96, pids_limit=10)
    result = module.result
    assert result['changed'] is True and any('updated limits of container c1 in the guest' in a for a in result['actions']), result['actions']
    assert result['diff']['before']['memory_mb'] == 64 and result['diff']['after']['memory_mb'] == 96
    assert result['diff']['before']['limits'] == {'memory.max': str(64 * MIB)}
    assert result['diff']['after']['limits'] == {'memory.max': str(96 * MIB), 'pids.max': '10'}
    assert guest_container(env)['cgroup'] == {'memory.max': str(96 * MIB), 'pids.max': '10'}
    assert guest_container(env)['pid'] == started.pid and env.agents.count('start_container') == 1
    rec = env.rt.store.load_container('sb', 'c1')
    assert (rec.memory_mb, rec.pids_limit, rec.limits['memory.max']) == (96, 10, str(96 * MIB))
    assert result['container']['limits'] == rec.limits
    # the same again: nothing to do
    assert manage(env, monkeypatch, name='c1', memory_mb=96).result['changed'] is False
    # too large for the sandbox: refused, nothing written
    with pytest.raises(InvalidArgument, match='memory limit 300 MiB'):
        manage(env, monkeypatch, name='c1', memory_mb=300)
    assert guest_container(env)['cgroup']['memory.max'] == str(96 * MIB)


def test_dropping_a_limit_of_a_bundle_resets_it_in_the_guest(env):
    env.sandbox('sb', memory_mb=256, vcpus=1)
    env.container('sb', 'c1', memory_mb=64, pids_limit=10)
    rec = env.rt.store.load_container('sb', 'c1')
    settings = dict(rec.to_json(), limits={'pids.max': '10'}, memory_mb=None)
    assert limits.changes(rec, settings) == {'memory.max': 'max'}
    ctr.update_limits(env.rt, 'sb', 'c1', settings, True, env.rt.trace())
    assert guest_container(env)['cgroup']['memory.max'] == 'max'
    assert env.rt.store.load_container('sb', 'c1').limits == {'pids.max': '10'}


def test_a_record_older_than_limits_reads_as_unlimited(env):
    env.sandbox('sb')
    env.container('sb', 'c1')
    data = env.rt.store.load_container('sb', 'c1').to_json()
    for key in ('limits', 'process', 'hostname', 'memory_mb', 'oci_warnings'):
        del data[key]
    rec = ContainerRecord.from_json(data)  # as written before these settings existed
    assert rec.limits == {} and limits.agent_params(rec)['hostname'] == 'c1'
    assert ctr.info(env.rt, rec)['limits'] == {}


def test_a_bundle_that_changes_capabilities_or_hostname_needs_recreate(env, monkeypatch, tmp_path):
    env.sandbox('sb')
    bundle = tmp_path / 'b'
    bundle.mkdir()
    config = {'ociVersion': '1.0.2', 'root': {'path': env.rootfs}, 'hostname': 'one',
              'process': {'args': ['sleep', '100'], 'cwd': '/', 'capabilities': {'bounding': ['CAP_KILL']}}}
    (bundle / 'config.json').write_text(json.dumps(config))
    manage(env, monkeypatch, name='c1', sandbox='sb', bundle=str(bundle))
    assert guest_container(env)['params']['hostname'] == 'one'
    assert manage(env, monkeypatch, name='c1', sandbox='sb', bundle=str(bundle)).result['changed'] is False
    config['hostname'] = 'two'
    config['process']['capabilities']['bounding'] = ['CAP_CHOWN']
    (bundle / 'config.json').write_text(json.dumps(config))
    with pytest.raises(InvalidArgument, match='container c1 exists with different hostname, process'):
        manage(env, monkeypatch, name='c1', sandbox='sb', bundle=str(bundle))
    result = manage(env, monkeypatch, name='c1', sandbox='sb', bundle=str(bundle), recreate=True, force=True).result
    assert result['changed'] is True and result['diff']['after']['hostname'] == 'two'
    assert guest_container(env)['params']['hostname'] == 'two'
    assert guest_container(env)['params']['process']['capabilities']['bounding'] == 1
