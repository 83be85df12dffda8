# Copyright: kata.runtime contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""model.py: the records' JSON boundary, the states and the transition tables."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from ansible_collections.kata.runtime.plugins.module_utils.kata import model
from ansible_collections.kata.runtime.plugins.module_utils.kata.errors import Conflict, CorruptRecord, InvalidArgument
from ansible_collections.kata.runtime.plugins.module_utils.kata.model import (
    ContainerRecord,
    ContainerStatus,
    SandboxRecord,
    SandboxState,
    VmState,
)
from ansible_collections.kata.runtime.plugins.module_utils.kata.store import Store

# Records exactly as the runtime wrote them before model.py existed (every key it wrote,
# sorted, with the same value types): they must still load.
OLD_SANDBOX = json.loads('''{
  "accel": "tcg", "accel_reason": "KVM is paravirtual-only", "accel_requested": "auto",
  "annotations": {"io.example/a": "b"}, "boot": "cold", "cgroups_path": "",
  "cgroups_paths": ["/sys/fs/cgroup/kata/sb"], "created_at": "2026-11-30T10:00:00Z",
  "domain": "kata-sb", "hooks": {}, "id": "sb", "initrd": "/var/lib/kata-runtime/image/kata-initrd.img",
  "kernel": "/var/lib/kata-runtime/image/vmlinux", "kernel_params": "", "labels": {"tier": "web"},
  "libvirt_uri": "qemu:///system", "memory_mb": 256, "state": "running", "template": false,
  "vcpus": 1, "version": 1
}''')
OLD_CONTAINER = json.loads('''{
  "annotations": {}, "args": ["/bin/sh", "-c", "sleep 1000"], "bundle": null,
  "bundle_dir": "/run/kata-runtime/sandboxes/sb/bundles/c1", "cgroups_path": "",
  "cgroups_paths": [], "created_at": "2026-11-30T10:00:01Z", "cwd": "/",
  "env": ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"], "exit_code": null, "finished_at": null,
  "hooks": {"poststop": [{"path": "/bin/true", "args": ["true"], "env": null, "timeout": null}]},
  "id": "c1", "labels": {}, "pid": 42, "readonly_rootfs": false, "rootfs": "/srv/rootfs",
  "rootfs_mount": {"host": false, "target": "/run/kata-runtime/sandboxes/sb/shared/c1/rootfs"},
  "sandbox": "sb", "started_at": "2026-11-30T10:00:02Z", "status": "running", "type": "pod_container",
  "user": "0:0", "version": 1
}''')


def test_records_written_before_the_model_load_unchanged():
    rec = SandboxRecord.from_json(OLD_SANDBOX)
    assert rec.state == SandboxState.RUNNING and rec.labels == {'tier': 'web'} and rec.vcpus == 1
    # network came later: absent, it is null (no NIC), and the compare step sees network none
    assert rec.network is None and rec.network_spec == 'none' and rec.network_ports == []
    assert rec.to_json() == dict(OLD_SANDBOX, network=None)
    crec = ContainerRecord.from_json(OLD_CONTAINER)
    assert crec.status == ContainerStatus.RUNNING and crec.pid == 42 and crec.rootfs_mount['host'] is False
    # poststop_done is written by a cleanup only: absent, it means false; the guest settings
    # came later: absent, they mean none (no limits, the default process settings)
    assert crec.poststop_done is False and crec.limits == {} and crec.process is None
    assert crec.to_json() == dict(OLD_CONTAINER, poststop_done=False, mounts=[], volume_mounts=[], hostname=None, domainname=None, process=None,
                                  limits={}, oci_warnings=[], memory_mb=None, cpus=None, pids_limit=None)


@pytest.mark.parametrize('missing', ['readonly_rootfs', 'bundle_dir', 'rootfs_mount'])
def test_container_fields_added_later_take_their_default(missing):
    data = dict(OLD_CONTAINER)
    del data[missing]
    assert getattr(ContainerRecord.from_json(data), missing) == getattr(ContainerRecord(id='c', sandbox='s'), missing)


@pytest.mark.parametrize('missing', ['template', 'boot', 'accel_requested', 'libvirt_uri'])
def test_sandbox_fields_added_later_take_their_default(missing):
    data = dict(OLD_SANDBOX)
    del data[missing]
    assert getattr(SandboxRecord.from_json(data), missing) == getattr(SandboxRecord(id='s'), missing)


@pytest.mark.parametrize('data, says', [
    ([1, 2], 'expected a JSON object, found list'),
    (dict(OLD_SANDBOX, version=2), 'has version 2; this runtime reads version 1'),
    (dict(OLD_SANDBOX, version=None), 'has version None'),
    (dict(OLD_SANDBOX, shiny=True), "field(s) this runtime does not know: shiny"),
    ({k: v for k, v in OLD_SANDBOX.items() if k != 'id'}, 'it has no id'),
    (dict(OLD_SANDBOX, vcpus='1'), "vcpus must be null or an integer, found '1'"),
    (dict(OLD_SANDBOX, vcpus=True), 'vcpus must be null or an integer, found True'),
    (dict(OLD_SANDBOX, labels={'a': 1}), 'labels must be an object of strings'),
    (dict(OLD_SANDBOX, cgroups_paths='/x'), 'cgroups_paths must be a list of strings'),
    (dict(OLD_SANDBOX, template='yes'), 'template must be true or false'),
    (dict(OLD_SANDBOX, unreadable=True), 'does not know: unreadable'),  # in memory only
])
def test_from_json_refuses_what_it_cannot_read_naming_the_file_and_field(data, says):
    with pytest.raises(CorruptRecord) as info:
        SandboxRecord.from_json(data, '/state/sandboxes/sb/sandbox.json')
    assert says in str(info.value) and '/state/sandboxes/sb/sandbox.json' in str(info.value)


def test_container_from_json_needs_its_sandbox():
    data = {k: v for k, v in OLD_CONTAINER.items() if k != 'sandbox'}
    with pytest.raises(CorruptRecord, match='it has no sandbox'):
        ContainerRecord.from_json(data)


def test_to_json_refuses_a_value_that_would_not_read_back():
    with pytest.raises(InvalidArgument, match="cannot save sandbox record sb: memory_mb must be null or an integer"):
        SandboxRecord(id='sb', memory_mb=1.5).to_json()


def test_the_store_round_trips_records_and_keeps_stand_ins_unsaved(tmp_path):
    store = Store(str(tmp_path / 'state'))
    rec = SandboxRecord.from_json(OLD_SANDBOX)
    store.save_sandbox(rec)
    assert store.load_sandbox('sb') == rec
    stand_in = SandboxRecord.by_name('sb', 'kata-sb')
    assert stand_in.unreadable is True and 'unreadable' not in stand_in.to_json()
    with pytest.raises(InvalidArgument, match='must be a SandboxRecord'):
        store.save_sandbox(dict(OLD_SANDBOX))


def test_new_takes_the_settings_and_refuses_a_key_with_no_field():
    rec = SandboxRecord.new('sb', {'vcpus': 2, 'labels': {'a': 'b'}}, state=SandboxState.STOPPED)
    assert (rec.id, rec.vcpus, rec.labels, rec.state) == ('sb', 2, {'a': 'b'}, 'stopped')
    with pytest.raises(InvalidArgument, match='no record field for: colour'):
        ContainerRecord.new('sb', 'c1', {'colour': 'red'})


@pytest.mark.parametrize('recorded, vm, seen', [
    ('running', 'running', 'running'),
    ('running', 'paused', 'paused'),
    ('paused', 'running', 'running'),   # the VM says what is, not the record
    ('creating', 'running', 'creating'),
    ('creating', 'missing', 'dead'),
    ('running', 'shutoff', 'dead'),
    ('running', 'crashed', 'dead'),
    ('stopped', 'shutoff', 'stopped'),
    ('stopped', 'missing', 'stopped'),
    ('deleting', 'missing', 'dead'),
])
def test_observed_sandbox_state(recorded, vm, seen):
    assert model.observed_sandbox_state(recorded, vm) == seen


def test_every_sandbox_state_is_covered_by_start_stop_and_delete():
    seen = set(SandboxState.RECORDED) - {SandboxState.DELETING} | {SandboxState.DEAD}
    for op in ('start', 'stop'):
        assert set(model.SANDBOX_TRANSITIONS[op]) == seen, op
    assert set(model.SANDBOX_TRANSITIONS['delete']) == seen | {SandboxState.DELETING}


@pytest.mark.parametrize('op, state, action', [
    ('start', 'stopped', 'boot'), ('start', 'dead', 'boot'), ('start', 'paused', 'resume'),
    ('start', 'running', 'none'), ('start', 'creating', 'finish'),
    ('stop', 'running', 'shutdown'), ('stop', 'paused', 'shutdown'), ('stop', 'dead', 'mark'),
    ('pause', 'running', 'suspend'), ('resume', 'paused', 'resume'), ('resume', 'running', 'none'),
    ('delete', 'dead', 'delete'),
])
def test_sandbox_steps(op, state, action):
    assert model.step('sandbox', op, state, 'sb') == action


@pytest.mark.parametrize('op, state', [('pause', 'paused'), ('pause', 'stopped'), ('pause', 'dead'),
                                       ('resume', 'stopped'), ('resume', 'dead')])
def test_sandbox_steps_refused_name_the_state(op, state):
    with pytest.raises(Conflict, match=r'sandbox sb cannot be \w+: it is %s \(do this\)' % state):
        model.step('sandbox', op, state, 'sb', hint='do this')


@pytest.mark.parametrize('op, status, action', [
    ('start', 'created', 'start'), ('stop', 'running', 'kill'), ('stop', 'created', 'mark'),
    ('stop', 'stopped', 'mark'), ('delete', 'running', 'kill'), ('delete', 'stopped', 'remove'),
    ('delete', 'unknown', 'remove'),
])
def test_container_steps(op, status, action):
    assert model.step('container', op, status, 'c1') == action


@pytest.mark.parametrize('status', ['running', 'stopped', 'creating', 'unknown'])
def test_only_a_created_container_starts(status):
    with pytest.raises(Conflict, match='container c1 cannot be started: it is %s$' % status):
        model.step('container', 'start', status, 'c1')


def test_vm_states_partition():
    assert set(VmState.LIVE) | set(VmState.DOWN) == set(VmState.ALL)
    assert not set(VmState.LIVE) & set(VmState.DOWN)


def test_internals_md_shows_the_model_as_it_is():
    """docs/internals.md's record schema and state tables are generated from this module."""
    root = os.path.join(os.path.dirname(__file__), '..', '..', '..', '..')
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    res = subprocess.run([sys.executable, os.path.join(root, 'scripts', 'gen-internals.py'), '--check'],
                         capture_output=True, text=True, env=env, check=False)
    assert res.returncode == 0, res.stdout + res.stderr
