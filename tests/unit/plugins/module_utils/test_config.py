# Copyright: kata.runtime contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Host config file: defaults, file values, overrides and every refusal naming key and value."""

from __future__ import annotations

import json
import os

import pytest
from ansible_collections.kata.runtime.plugins.module_utils.kata import config as config_mod
from ansible_collections.kata.runtime.plugins.module_utils.kata.config import (
    DEFAULT_CONFIG_PATH,
    DEFAULTS,
    Config,
    load_config,
)
from ansible_collections.kata.runtime.plugins.module_utils.kata.errors import InvalidArgument


def write(tmp_path, text, name='config.yaml'):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_default_path_is_the_contracts():
    assert DEFAULT_CONFIG_PATH == '/etc/kata-runtime/config.yaml'


def test_defaults_table():
    cfg = Config()
    assert cfg.as_dict() == {
        'libvirt_uri': 'qemu:///system',
        'accel': 'auto',
        'image_dir': '/var/lib/kata-runtime/image',
        'kernel': '/var/lib/kata-runtime/image/vmlinux',
        'initrd': '/var/lib/kata-runtime/image/kata-initrd.img',
        'kernel_params': '',
        'vcpus': 1,
        'memory_mb': 256,
        'state_root': '/run/kata-runtime',
        'cgroup_root': '/sys/fs/cgroup',
        'cgroup_parent': 'kata',
        'agent_timeout': 60,
        'hook_timeout': 30,
        'domain_prefix': 'kata-',
        'guest_write_limit_mb': 64,
        'console_log_limit_kb': 1024,
        'tcg_tb_cache_mb': 32,
        'release_boot_files': True,
        'free_page_reporting': True,
        'template': False,
        'template_pool_size': 0,
        'template_tmpfs_mb': 2048,
        'network': 'user',
    }
    assert set(cfg.as_dict()) == set(DEFAULTS)


def test_lean_vmm_keys_take_their_off_values(tmp_path):
    cfg = load_config(write(tmp_path, 'tcg_tb_cache_mb: 0\nrelease_boot_files: false\n'))
    assert cfg.tcg_tb_cache_mb == 0 and cfg.release_boot_files is False
    assert load_config(os.devnull, overrides={'tcg_tb_cache_mb': 4096}).tcg_tb_cache_mb == 4096


def test_template_keys(tmp_path):
    cfg = load_config(write(tmp_path, 'template: true\ntemplate_pool_size: 3\ntemplate_tmpfs_mb: 512\n'))
    assert (cfg.template, cfg.template_pool_size, cfg.template_tmpfs_mb) == (True, 3, 512)
    assert load_config(os.devnull, overrides={'template': False}).template is False


def test_missing_default_file_means_defaults(tmp_path, monkeypatch):
    # Point the default at a path that does not exist (the real /etc one may exist here).
    monkeypatch.setattr(config_mod, 'DEFAULT_CONFIG_PATH', str(tmp_path / 'absent.yaml'))
    cfg = load_config()
    assert cfg == Config()
    assert cfg.path == str(tmp_path / 'absent.yaml')


def test_missing_explicit_file_is_an_error(tmp_path):
    missing = str(tmp_path / 'nope.yaml')
    with pytest.raises(InvalidArgument, match='nope.yaml'):
        load_config(missing)


def test_file_values_and_derived_kernel(tmp_path):
    path = write(tmp_path, 'accel: tcg\nvcpus: 2\nmemory_mb: 512\nimage_dir: /opt/img\n'
                           'state_root: /srv/kata/\nkernel_params: "console=ttyS0 quiet"\n'
                           'agent_timeout: 2.5\n')
    cfg = load_config(path)
    assert cfg.accel == 'tcg'
    assert cfg.vcpus == 2
    assert cfg.memory_mb == 512
    assert cfg.kernel == '/opt/img/vmlinux'
    assert cfg.initrd == '/opt/img/kata-initrd.img'
    assert cfg.state_root == '/srv/kata'
    assert cfg.kernel_params == 'console=ttyS0 quiet'
    assert cfg.agent_timeout == 2.5
    assert cfg.hook_timeout == 30


def test_explicit_kernel_is_kept(tmp_path):
    cfg = load_config(write(tmp_path, 'image_dir: /opt/img\nkernel: /boot/vmlinux-x\n'))
    assert cfg.kernel == '/boot/vmlinux-x'
    assert cfg.initrd == '/opt/img/kata-initrd.img'


def test_overrides_win_and_none_is_ignored(tmp_path):
    path = write(tmp_path, 'vcpus: 2\nmemory_mb: 512\n')
    cfg = load_config(path, overrides={'vcpus': 4, 'memory_mb': None, 'image_dir': '/x'})
    assert cfg.vcpus == 4
    assert cfg.memory_mb == 512
    assert cfg.kernel == '/x/vmlinux'


def test_empty_file_means_defaults(tmp_path):
    assert load_config(write(tmp_path, '')) == Config()
    assert load_config(write(tmp_path, '# only a comment\n', 'c.yaml')) == Config()


def test_json_file_works(tmp_path):
    cfg = load_config(write(tmp_path, json.dumps({'vcpus': 3}), 'config.json'))
    assert cfg.vcpus == 3


def test_json_file_without_pyyaml(tmp_path, monkeypatch):
    import builtins
    real_import = builtins.__import__

    def no_yaml(name, *args, **kwargs):
        if name == 'yaml':
            raise ImportError('No module named yaml')
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, '__import__', no_yaml)
    assert load_config(write(tmp_path, '{"vcpus": 3}')).vcpus == 3
    with pytest.raises(InvalidArgument, match='PyYAML'):
        load_config(write(tmp_path, 'vcpus: 3\n', 'y.yaml'))


BAD_VALUES = [
    ('accel', 'xen'),
    ('accel', 1),
    ('vcpus', 0),
    ('vcpus', -1),
    ('vcpus', '2'),
    ('vcpus', True),
    ('vcpus', 1.5),
    ('memory_mb', 63),
    ('memory_mb', 0),
    ('agent_timeout', 0),
    ('agent_timeout', -5),
    ('agent_timeout', 'soon'),
    ('hook_timeout', 0),
    ('hook_timeout', -1),
    ('hook_timeout', 10 ** 400),
    ('agent_timeout', 86401),
    ('state_root', 'relative/run'),
    ('state_root', '/'),
    ('state_root', ''),
    ('image_dir', 'img'),
    ('kernel', 'vmlinux'),
    ('cgroup_root', 'sys/fs/cgroup'),
    ('cgroup_parent', '/abs'),
    ('cgroup_parent', '../escape'),
    ('cgroup_parent', 'a//b'),
    ('domain_prefix', 'bad prefix'),
    ('domain_prefix', '../'),
    ('domain_prefix', ''),
    ('domain_prefix', 'x' * 40),
    ('libvirt_uri', 'not a uri'),
    ('libvirt_uri', ''),
    ('kernel_params', 'a\nb'),
    ('guest_write_limit_mb', 0),
    ('guest_write_limit_mb', True),
    ('guest_write_limit_mb', '64'),
    ('guest_write_limit_mb', 10 ** 400),
    ('console_log_limit_kb', 8),
    ('console_log_limit_kb', 10 ** 9),
    ('tcg_tb_cache_mb', 4),
    ('tcg_tb_cache_mb', -1),
    ('tcg_tb_cache_mb', 4097),
    ('tcg_tb_cache_mb', True),
    ('tcg_tb_cache_mb', '32'),
    ('release_boot_files', 'yes'),
    ('release_boot_files', 1),
    ('free_page_reporting', 'no'),
    ('template', 'yes'),
    ('template', 1),
    ('template_pool_size', -1),
    ('template_pool_size', True),
    ('template_pool_size', '2'),
    ('template_pool_size', 1025),
    ('template_tmpfs_mb', 64),
    ('template_tmpfs_mb', 0),
    ('template_tmpfs_mb', '2048'),
    ('template_tmpfs_mb', 10 ** 400),
]


@pytest.mark.parametrize('key,value', BAD_VALUES)
def test_bad_override_names_key_and_value(key, value):
    with pytest.raises(InvalidArgument) as info:
        load_config(path=os.devnull, overrides={key: value})
    msg = str(info.value)
    assert repr(key) in msg
    assert repr(value) in msg


@pytest.mark.parametrize('key,value', BAD_VALUES)
def test_bad_file_value_names_key_and_value(tmp_path, key, value):
    path = write(tmp_path, json.dumps({key: value}))
    with pytest.raises(InvalidArgument) as info:
        load_config(path)
    msg = str(info.value)
    assert repr(key) in msg
    assert repr(value) in msg
    assert path in msg


def test_unknown_key_in_file(tmp_path):
    path = write(tmp_path, 'vcpu: 2\n')
    with pytest.raises(InvalidArgument, match="'vcpu'"):
        load_config(path)


def test_unknown_override():
    with pytest.raises(InvalidArgument, match="'memory'"):
        load_config(os.devnull, overrides={'memory': 512})


def test_file_not_a_mapping(tmp_path):
    with pytest.raises(InvalidArgument, match='mapping'):
        load_config(write(tmp_path, '- a\n- b\n'))


def test_file_not_yaml(tmp_path):
    path = write(tmp_path, 'vcpus: [1\n')
    with pytest.raises(InvalidArgument, match='not valid YAML'):
        load_config(path)


def test_config_path_is_a_directory(tmp_path):
    with pytest.raises(InvalidArgument, match='cannot read config file'):
        load_config(str(tmp_path))


def test_overrides_not_a_mapping():
    with pytest.raises(InvalidArgument, match='overrides'):
        load_config(os.devnull, overrides=['vcpus'])


def test_loading_changes_nothing(tmp_path):
    path = write(tmp_path, 'vcpus: 2\n')
    before = sorted(os.listdir(tmp_path))
    load_config(path)
    with pytest.raises(InvalidArgument):
        load_config(path, overrides={'vcpus': 0})
    assert sorted(os.listdir(tmp_path)) == before


def test_config_object_checks_its_values_too():
    assert Config({'vcpus': 2}).vcpus == 2
    with pytest.raises(InvalidArgument, match="'vcpus' = 0"):
        Config({'vcpus': 0})
    with pytest.raises(InvalidArgument, match="'bogus'"):
        Config({'bogus': 1})
