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
