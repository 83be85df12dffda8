# Copyright: kata.runtime contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The option tables of the lifecycle modules and the Differences they compare into."""

from __future__ import annotations

import pytest
from ansible_collections.kata.runtime.plugins.module_utils.kata import options
from ansible_collections.kata.runtime.plugins.module_utils.kata import sandbox as sbx
from ansible_collections.kata.runtime.plugins.module_utils.kata.errors import InvalidArgument
from ansible_collections.kata.runtime.plugins.module_utils.kata.model import ContainerRecord, SandboxRecord
from ansible_collections.kata.runtime.plugins.module_utils.kata.options import (
    CONTAINER_OPTIONS,
    IMMUTABLE,
    MUTABLE,
    SANDBOX_OPTIONS,
    TEMPLATE_OPTIONS,
    Differences,
    Option,
    OptionTable,
)

# --- the tables: the argument specs the modules had before the tables existed --------------

SANDBOX_SPEC = dict(
    name=dict(type='str', required=True, aliases=['id']),
    state=dict(type='str', default='running', choices=['running', 'stopped', 'paused', 'absent']),
    force=dict(type='bool', default=False),
    vcpus=dict(type='int'),
    memory_mb=dict(type='int'),
    kernel=dict(type='path'),
    initrd=dict(type='path'),
    kernel_params=dict(type='str'),
    accel=dict(type='str', choices=['auto', 'kvm', 'tcg']),
    labels=dict(type='dict'),
    annotations=dict(type='dict'),
    hooks=dict(type='dict'),
    cgroups_path=dict(type='str'),
    recreate=dict(type='bool', default=False),
    timeout=dict(type='int'),
    template=dict(type='bool'),
    network=dict(type='str'),
    ports=dict(type='list', elements='raw'),
)

CONTAINER_SPEC = dict(
    name=dict(type='str', required=True, aliases=['id']),
    sandbox=dict(type='str'),
    state=dict(type='str', default='running', choices=['running', 'created', 'stopped', 'absent']),
    force=dict(type='bool', default=False),
    bundle=dict(type='path'),
    rootfs=dict(type='path'),
    readonly_rootfs=dict(type='bool'),
    command=dict(type='list', elements='str'),
    env=dict(type='dict'),
    cwd=dict(type='str', default='/'),
    user=dict(type='str'),
    volumes=dict(type='list', elements='raw'),
    hooks=dict(type='dict'),
    cgroups_path=dict(type='str'),
    annotations=dict(type='dict'),
    labels=dict(type='dict'),
    memory_mb=dict(type='int'),
    cpus=dict(type='float'),
    pids_limit=dict(type='int'),
    signal=dict(type='str', default='SIGTERM'),
    stop_timeout=dict(type='int', default=10),
    recreate=dict(type='bool', default=False),
)

TEMPLATE_SPEC = dict(
    state=dict(type='str', default='present', choices=['present', 'absent']),
    vcpus=dict(type='int'),
    memory_mb=dict(type='int'),
    accel=dict(type='str', choices=['auto', 'kvm', 'tcg']),
    kernel=dict(type='path'),
    initrd=dict(type='path'),
    network=dict(type='str'),
    force=dict(type='bool', default=False),
    timeout=dict(type='int'),
)


@pytest.mark.parametrize('table, spec', [(SANDBOX_OPTIONS, SANDBOX_SPEC), (CONTAINER_OPTIONS, CONTAINER_SPEC),
                                         (TEMPLATE_OPTIONS, TEMPLATE_SPEC)])
def test_argument_spec_is_the_one_the_modules_had(table, spec):
    assert table.argument_spec() == spec


def test_argument_spec_is_fresh_each_time():
    first = SANDBOX_OPTIONS.argument_spec()
    first['name']['aliases'].append('x')  # AnsibleModule fills specs in; nothing leaks back
    first['vcpus']['default'] = 3
    assert SANDBOX_OPTIONS.argument_spec()['vcpus'] == {'type': 'int'}


def test_kinds_are_the_recreate_rules():
    assert SANDBOX_OPTIONS.keys(IMMUTABLE) == ('vcpus', 'memory_mb', 'kernel', 'initrd', 'kernel_params', 'accel',
                                               'cgroups_path', 'hooks', 'network', 'ports')
    assert SANDBOX_OPTIONS.keys(MUTABLE) == ('labels', 'annotations') == sbx.MUTABLE
    assert CONTAINER_OPTIONS.keys(IMMUTABLE) == ('bundle', 'rootfs', 'readonly_rootfs', 'args', 'env', 'cwd', 'user',
                                                 'mounts', 'hooks', 'cgroups_path', 'annotations')
    assert CONTAINER_OPTIONS.keys(MUTABLE) == ('labels', 'memory_mb', 'cpus', 'pids_limit')
    assert CONTAINER_OPTIONS.module_args == {'mutually_exclusive': [
        ('bundle', 'rootfs'), ('bundle', 'command'), ('bundle', 'env'), ('bundle', 'user')]}


def test_request_takes_the_setting_options_and_coerces_string_dicts():
    params = dict(SANDBOX_SPEC, vcpus=2, labels={'tier': 1, 'on': True}, annotations=None, template=True,
                  state='running', force=True)
    request = SANDBOX_OPTIONS.request(params)
    assert sorted(request) == sorted(['vcpus', 'memory_mb', 'kernel', 'initrd', 'kernel_params', 'accel', 'labels',
                                      'annotations', 'hooks', 'cgroups_path', 'template', 'network', 'ports'])
    assert request['labels'] == {'tier': '1', 'on': 'true'} and request['annotations'] is None
    assert request['template'] is True


def test_request_refuses_a_nested_string_dict_naming_the_option():
    with pytest.raises(InvalidArgument, match='env must map strings to strings'):
        CONTAINER_OPTIONS.request({'env': {'A': ['x']}})


def test_given_is_by_option_name():
    params = {'command': ['sh'], 'rootfs': '/r', 'cwd': '/', 'signal': 'SIGKILL', 'env': None}
    assert CONTAINER_OPTIONS.given(params) == ['rootfs', 'command', 'cwd']


def test_compare_only_what_is_given_immutable_first_and_by_record_key():
    record = SandboxRecord(id='sb', vcpus=1, accel_requested='auto')
    settings = {'vcpus': 2, 'accel': 'tcg', 'labels': {'a': 'b'}, 'annotations': {}, 'kernel_params': 'x',
                'template': True, 'hooks': {}, 'cgroups_path': '', 'network': 'none', 'ports': []}
    diffs = SANDBOX_OPTIONS.compare(record, settings, given=['labels', 'vcpus', 'accel', 'template'])
    assert diffs.names() == ['vcpus', 'accel', 'labels']
    assert diffs.get_before_after() == ({'vcpus': 1, 'accel': 'auto', 'labels': {}},
                                        {'vcpus': 2, 'accel': 'tcg', 'labels': {'a': 'b'}})
    assert SANDBOX_OPTIONS.compare(record, settings).names() == ['vcpus', 'kernel_params', 'accel', 'labels']


def test_compare_the_command_as_args_of_the_record():
    record = ContainerRecord(id='c1', sandbox='sb', args=['sh'])
    settings = {'args': ['true'], 'labels': {}, 'readonly_rootfs': False}
    diffs = CONTAINER_OPTIONS.compare(record, settings, given=['command', 'labels', 'readonly_rootfs'])
    assert diffs.names() == ['args']
    assert CONTAINER_OPTIONS.kind_of('args') == IMMUTABLE and CONTAINER_OPTIONS.kind_of('labels') == MUTABLE
    assert CONTAINER_OPTIONS.kind_of('signal') is None


def test_a_table_refuses_a_name_twice_and_an_unknown_kind():
    with pytest.raises(ValueError, match='declared twice'):
        OptionTable(options.FORCE, options.FORCE)
    with pytest.raises(ValueError, match='kind must be one of'):
        Option('x', 'sometimes', {})


# --- Differences ----------------------------------------------------------------------------

def test_differences_empty():
    diff = Differences()
    assert not diff
    assert diff.has_differences() is False
    assert diff.get_before_after() == ({}, {})
    assert diff.names() == []


def test_differences_add_and_before_after():
    diff = Differences()
    diff.add('vcpus', parameter=2, active=1)
    diff.add('memory_mb', parameter=512, active=256)
    assert diff and len(diff) == 2
    assert diff.names() == ['vcpus', 'memory_mb']
    assert diff.has_difference_for('vcpus') and not diff.has_difference_for('kernel')
    assert diff.get_before_after() == ({'vcpus': 1, 'memory_mb': 256}, {'vcpus': 2, 'memory_mb': 512})
    assert diff.as_list()[0] == {'name': 'vcpus', 'parameter': 2, 'active': 1}


def test_differences_each_name_once():
    diff = Differences()
    diff.add('state', parameter='running', active='stopped')
    diff.add('state', parameter='absent', active='stopped')
    assert diff.names() == ['state']
    assert diff.get_before_after() == ({'state': 'stopped'}, {'state': 'absent'})


def test_differences_compare_skips_unset_and_equal():
    diff = Differences()
    assert diff.compare('vcpus', None, 1) is False
    assert diff.compare('memory_mb', 256, 256) is False
    assert diff.compare('labels', {'a': '1'}, {}) is True
    assert diff.names() == ['labels']


def test_differences_merge():
    first, second = Differences(), Differences()
    first.add('a', 1, 0)
    second.add('b', 2, 0)
    second.add('a', 3, 0)
    first.merge(second)
    assert first.get_before_after() == ({'a': 0, 'b': 0}, {'a': 3, 'b': 2})
