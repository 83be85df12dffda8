# Copyright: kata.runtime contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The module-side helpers, with real AnsibleModule instances and real config files."""

from __future__ import annotations

import json

import pytest
from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.testing import patch_module_args
from ansible_collections.kata.runtime.plugins.module_utils.kata.common import (
    COMMON_ARGS,
    Differences,
    Progress,
    common_argument_spec,
    fail_on_kata_error,
    load_module_config,
)
from ansible_collections.kata.runtime.plugins.module_utils.kata.config import DEFAULT_CONFIG_PATH
from ansible_collections.kata.runtime.plugins.module_utils.kata.errors import Conflict, InvalidArgument


def make_module(args=None, **spec):
    with patch_module_args(args or {}):
        return AnsibleModule(argument_spec=common_argument_spec(**spec), supports_check_mode=True)


def failure(capsys, func):
    # fail_json needs the module-args context the module was made in (its JSON profile)
    with patch_module_args({}), pytest.raises(SystemExit) as exc:
        func()
    assert exc.value.code == 1
    return json.loads(capsys.readouterr().out)


# --- argument spec and config ---------------------------------------------------------------

def test_common_args_defaults():
    module = make_module()
    assert module.params == {'config': DEFAULT_CONFIG_PATH, 'runtime_root': None}


def test_common_argument_spec_is_a_copy():
    spec = common_argument_spec(name=dict(type='str'))
    spec['config']['default'] = '/elsewhere'
    assert COMMON_ARGS['config']['default'] == DEFAULT_CONFIG_PATH
    assert set(spec) == {'config', 'runtime_root', 'name'}


def test_load_module_config_reads_file_and_runtime_root_wins(tmp_path):
    config = tmp_path / 'config.yaml'
    config.write_text('state_root: /run/from-file\nvcpus: 2\n')
    module = make_module({'config': str(config), 'runtime_root': str(tmp_path / 'state')})
    cfg = load_module_config(module)
    assert cfg.path == str(config)
    assert cfg.state_root == str(tmp_path / 'state')
    assert cfg.vcpus == 2


def test_load_module_config_without_runtime_root_keeps_file_value(tmp_path):
    config = tmp_path / 'config.yaml'
    config.write_text('state_root: /run/from-file\n')
    cfg = load_module_config(make_module({'config': str(config)}))
    assert cfg.state_root == '/run/from-file'


def test_load_module_config_overrides_and_none_ignored(tmp_path):
    config = tmp_path / 'config.yaml'
    config.write_text('vcpus: 2\nmemory_mb: 512\n')
    cfg = load_module_config(make_module({'config': str(config)}), vcpus=4, memory_mb=None)
    assert cfg.vcpus == 4
    assert cfg.memory_mb == 512


def test_load_module_config_bad_override_names_it(tmp_path):
    module = make_module({'config': str(tmp_path / 'absent.yaml')})
    with pytest.raises(InvalidArgument, match='vcpus'):
        load_module_config(module, vcpus=0)


def test_load_module_config_explicit_missing_file_is_an_error(tmp_path):
    missing = str(tmp_path / 'absent.yaml')
    with pytest.raises(InvalidArgument, match='does not exist'):
        load_module_config(make_module({'config': missing}))


def test_default_path_behaves_as_default():
    # The default path is used whether given or not: absent means built-in defaults.
    cfg = load_module_config(make_module({'config': DEFAULT_CONFIG_PATH, 'runtime_root': '/run/x'}))
    assert cfg.path == DEFAULT_CONFIG_PATH
    assert cfg.state_root == '/run/x'


# --- fail_on_kata_error ---------------------------------------------------------------------

def test_fail_on_kata_error_context_manager(capsys):
    def body():
        with fail_on_kata_error(make_module()):
            raise Conflict('container c1 is still running')

    result = failure(capsys, body)
    assert result['failed'] is True
    assert result['changed'] is False
    assert result['msg'] == 'container c1 is still running'


def test_fail_on_kata_error_extra_result(capsys):
    def body():
        with fail_on_kata_error(make_module(), changed=True, actions=['created c1']):
            raise InvalidArgument('bad')

    result = failure(capsys, body)
    assert result['changed'] is True
    assert result['actions'] == ['created c1']


def test_fail_on_kata_error_decorator(capsys):
    def body():
        @fail_on_kata_error(make_module())
        def act(value):
            if value:
                raise InvalidArgument('invalid value %r' % value)
            return 'ok'

        assert act(None) == 'ok'
        assert act.__name__ == 'act'
        act('x')

    result = failure(capsys, body)
    assert result['msg'] == "invalid value 'x'"


def test_fail_on_kata_error_lets_other_errors_through():
    module = make_module()
    with pytest.raises(ValueError):
        with fail_on_kata_error(module):
            raise ValueError('a bug, not a refusal')


def test_fail_on_kata_error_no_error():
    with fail_on_kata_error(make_module()) as guard:
        assert guard is not None


# --- Progress -------------------------------------------------------------------------------

def test_progress_keeps_lines_with_elapsed_time():
    ticks = iter([10.0, 10.5, 12.25])
    progress = Progress(make_module(), clock=lambda: next(ticks))
    assert progress('booting %s', 'sb1') == 'booting sb1'
    progress('agent answered')
    assert progress.lines == [{'elapsed': 0.5, 'msg': 'booting sb1'},
                              {'elapsed': 2.25, 'msg': 'agent answered'}]
    assert progress.messages() == ['booting sb1', 'agent answered']


def test_progress_without_module():
    progress = Progress()
    progress('step')
    assert progress.messages() == ['step']


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
