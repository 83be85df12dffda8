# Copyright: kata.runtime contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""OCI bundle load/validate/generate, hooks, container types and state JSON, on real files."""

from __future__ import annotations

import json
import os

import pytest
from ansible_collections.kata.runtime.plugins.module_utils.kata import oci
from ansible_collections.kata.runtime.plugins.module_utils.kata.errors import InvalidArgument


@pytest.fixture
def hook(tmp_path):
    path = tmp_path / 'hook.sh'
    path.write_text('#!/bin/sh\nexit 0\n')
    path.chmod(0o755)
    return str(path)


def make_bundle(tmp_path, spec=None, raw=None, rootfs='rootfs'):
    bundle = tmp_path / 'bundle'
    bundle.mkdir(exist_ok=True)
    if rootfs:
        (bundle / rootfs).mkdir(exist_ok=True)
    if spec is None and raw is None:
        spec = {'ociVersion': '1.0.2', 'process': {'args': ['/bin/sh', '-c', 'true'], 'cwd': '/'},
                'root': {'path': 'rootfs'}}
    (bundle / 'config.json').write_text(raw if raw is not None else json.dumps(spec))
    return str(bundle)


def snapshot(path):
    out = {}
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            full = os.path.join(dirpath, name)
            with open(full, 'rb') as f:
                out[full] = f.read()
    return out


# ----------------------------------------------------------------- container types

@pytest.mark.parametrize('annotations,expected', [
    (None, 'pod_container'),
    ({}, 'pod_container'),
    ({'io.katacontainers.pkg.oci.container_type': 'pod_sandbox'}, 'pod_sandbox'),
    ({'io.katacontainers.pkg.oci.container_type': 'pod_container'}, 'pod_container'),
    ({'io.kubernetes.cri.container-type': 'sandbox'}, 'pod_sandbox'),
    ({'io.kubernetes.cri.container-type': 'container'}, 'pod_container'),
    ({'io.kubernetes.cri-o.ContainerType': 'sandbox'}, 'pod_sandbox'),
    ({'io.kubernetes.docker.type': 'podsandbox'}, 'pod_sandbox'),
    # Kata's own key is consulted first
    ({'io.katacontainers.pkg.oci.container_type': 'pod_container',
      'io.kubernetes.cri.container-type': 'sandbox'}, 'pod_container'),
])
def test_container_type(annotations, expected):
    assert oci.container_type(annotations) == expected


@pytest.mark.parametrize('key,value', [
    ('io.katacontainers.pkg.oci.container_type', 'sandbox'),
    ('io.kubernetes.cri.container-type', 'pod_sandbox'),
    ('io.kubernetes.cri.container-type', ''),
])
def test_container_type_bad_value(key, value):
    with pytest.raises(InvalidArgument) as info:
        oci.container_type({key: value})
    assert key in str(info.value) and repr(value) in str(info.value)


def test_container_type_keys_exported():
    assert oci.KATA_CONTAINER_TYPE_KEY == 'io.katacontainers.pkg.oci.container_type'
    assert oci.CRI_CONTAINER_TYPE_KEY == 'io.kubernetes.cri.container-type'


def test_sandbox_id_from_annotations():
    assert 'io.kubernetes.cri.sandbox-id' in oci.SANDBOX_ID_KEYS
    assert oci.sandbox_id_from_annotations(None) is None
    assert oci.sandbox_id_from_annotations({'x': 'y'}) is None
    assert oci.sandbox_id_from_annotations({'io.kubernetes.cri.sandbox-id': 'pod1'}) == 'pod1'
    assert oci.sandbox_id_from_annotations({'io.kubernetes.cri-o.SandboxID': 'pod2'}) == 'pod2'


# -------------------------------------------------------------------------- hooks

def test_hook_kinds():
    assert oci.HOOK_KINDS == ('prestart', 'createRuntime', 'createContainer', 'startContainer',
                              'poststart', 'poststop')


def test_validate_hooks_normalises(hook):
    out = oci.validate_hooks({
        'createRuntime': [{'path': hook}],
        'poststop': [{'path': hook, 'args': ['hook', 'x'], 'env': ['A=1'], 'timeout': 5}],
        'prestart': None,
    })
    assert out == {
        'createRuntime': [{'path': hook, 'args': [hook], 'env': None, 'timeout': None}],
        'poststop': [{'path': hook, 'args': ['hook', 'x'], 'env': ['A=1'], 'timeout': 5}],
        'prestart': [],
    }
    assert oci.validate_hooks(None) == {}
    assert oci.validate_hooks({}) == {}


def test_validated_hooks_feed_the_hook_runner(hook):
    from ansible_collections.kata.runtime.plugins.module_utils.kata.hooks import run_hooks
    hooks = oci.validate_hooks({'poststop': [{'path': hook, 'timeout': 5}]})
    state = oci.state('c1', 'stopped', None, '/', {})
    assert run_hooks('poststop', hooks, state) == []


def _bad_hook(tmp_path, hook, case):
    plain = tmp_path / 'plain'
    plain.write_text('#!/bin/sh\n')
    plain.chmod(0o644)
    cases = {
        'relative path': ({'path': 'relative/hook'}, 'relative/hook'),
        'missing': ({'path': str(tmp_path / 'missing-hook')}, 'missing-hook'),
        'not executable': ({'path': str(plain)}, str(plain)),
        'directory': ({'path': str(tmp_path)}, str(tmp_path)),
        'no path': ({'args': ['x']}, 'None'),
        'timeout zero': ({'path': hook, 'timeout': 0}, '0'),
        'timeout negative': ({'path': hook, 'timeout': -3}, '-3'),
        'timeout bool': ({'path': hook, 'timeout': True}, 'True'),
        'timeout str': ({'path': hook, 'timeout': '5'}, "'5'"),
        'timeout huge': ({'path': hook, 'timeout': 10 ** 400}, '1000000'),
        'timeout over an hour': ({'path': hook, 'timeout': 3601}, '3601'),
        'args with NUL': ({'path': hook, 'args': ['hook', 'a\x00b']}, "'a\\x00b'"),
        'args not list': ({'path': hook, 'args': 'x y'}, "'x y'"),
        'args not str': ({'path': hook, 'args': ['x', 1]}, "['x', 1]"),
        'env not K=V': ({'path': hook, 'env': ['NOEQUALS']}, 'NOEQUALS'),
        'unknown key': ({'path': hook, 'timout': 5}, 'timout'),
        'not a mapping': ('/bin/true', '/bin/true'),
    }
    return cases[case]


BAD_HOOK_CASES = ['relative path', 'missing', 'not executable', 'directory', 'no path',
                  'timeout zero', 'timeout negative', 'timeout bool', 'timeout str',
                  'timeout huge', 'timeout over an hour', 'args with NUL',
                  'args not list', 'args not str', 'env not K=V', 'unknown key', 'not a mapping']


@pytest.mark.parametrize('case', BAD_HOOK_CASES)
def test_bad_hook_is_refused_naming_the_value(tmp_path, hook, case):
    entry, named = _bad_hook(tmp_path, hook, case)
    with pytest.raises(InvalidArgument) as info:
        oci.validate_hooks({'poststop': [{'path': hook}, entry]})
    msg = str(info.value)
    assert named in msg, msg
    assert 'hooks.poststop[1]' in msg


def test_bad_hook_kind_and_shape(hook):
    with pytest.raises(InvalidArgument, match="'postStop'"):
        oci.validate_hooks({'postStop': [{'path': hook}]})
    with pytest.raises(InvalidArgument, match='hooks'):
        oci.validate_hooks([{'path': hook}])
    with pytest.raises(InvalidArgument, match='hooks.poststop'):
        oci.validate_hooks({'poststop': {'path': hook}})


# ----------------------------------------------------------------------- bundles

def test_load_bundle_resolves_relative_rootfs(tmp_path):
    bundle = make_bundle(tmp_path)
    before = snapshot(tmp_path)
    spec = oci.load_bundle(bundle)
    assert spec['root']['path'] == os.path.join(bundle, 'rootfs')
    assert spec['process']['args'] == ['/bin/sh', '-c', 'true']
    assert snapshot(tmp_path) == before


def test_load_bundle_with_hooks_annotations_cgroups(tmp_path, hook):
    spec = {'ociVersion': '1.2.0', 'process': {'args': ['true']}, 'root': {'path': 'rootfs'},
            'hooks': {'poststop': [{'path': hook, 'timeout': 3}]},
            'annotations': {'io.kubernetes.cri.container-type': 'container'},
            'linux': {'cgroupsPath': '/kata/c1'}}
    out = oci.load_bundle(make_bundle(tmp_path, spec))
    assert out['hooks'] == {'poststop': [{'path': hook, 'args': [hook], 'timeout': 3}]}
    assert oci.container_type(out['annotations']) == 'pod_container'
    assert out['linux']['cgroupsPath'] == '/kata/c1'


def _spec(**changes):
    spec = {'ociVersion': '1.0.2', 'process': {'args': ['true']}, 'root': {'path': 'rootfs'}}
    for key, value in changes.items():
        if value is _DROP:
            spec.pop(key)
        else:
            spec[key] = value
    return spec


_DROP = object()

BAD_BUNDLES = [
    # (name, spec or raw text, text the error must contain)
    ('not json', '{"ociVersion": "1.0.2", ', 'not valid JSON'),
    ('not json at all', 'hello', 'config.json'),
    ('not an object', '[1, 2]', '[1, 2]'),
    ('no ociVersion', _spec(ociVersion=_DROP), 'ociVersion'),
    ('ociVersion not str', _spec(ociVersion=1.0), 'ociVersion 1.0'),
    ('no process', _spec(process=_DROP), 'process'),
    ('no process.args', _spec(process={'cwd': '/'}), 'process.args None'),
    ('empty process.args', _spec(process={'args': []}), 'process.args []'),
    ('process.args not str', _spec(process={'args': ['sh', 3]}), "process.args ['sh', 3]"),
    ('relative cwd', _spec(process={'args': ['true'], 'cwd': 'tmp'}), "process.cwd 'tmp'"),
    ('bad env', _spec(process={'args': ['true'], 'env': ['NOPE']}), "'NOPE'"),
    ('bad uid', _spec(process={'args': ['true'], 'user': {'uid': -1, 'gid': 0}}), 'uid -1'),
    ('no root', _spec(root=_DROP), 'root'),
    ('missing relative rootfs', _spec(root={'path': 'nosuchrootfs'}), "'nosuchrootfs'"),
    ('missing absolute rootfs', _spec(root={'path': '/nonexistent/rootfs'}), '/nonexistent/rootfs'),
    ('annotation not str', _spec(annotations={'a': 1}), "annotations['a'] 1"),
    ('annotations not dict', _spec(annotations=['a']), "annotations ['a']"),
    ('cgroupsPath not str', _spec(linux={'cgroupsPath': 5}), 'linux.cgroupsPath 5'),
    ('bad hook', _spec(hooks={'prestart': [{'path': 'relative/hook'}]}), 'relative/hook'),
]


@pytest.mark.parametrize('name,content,named', BAD_BUNDLES, ids=[b[0] for b in BAD_BUNDLES])
def test_bad_bundle_is_refused_naming_the_value(tmp_path, name, content, named):
    if isinstance(content, str):
        bundle = make_bundle(tmp_path, raw=content)
    else:
        bundle = make_bundle(tmp_path, content)
    before = snapshot(tmp_path)
    with pytest.raises(InvalidArgument) as info:
        oci.load_bundle(bundle)
    assert named in str(info.value), str(info.value)
    assert snapshot(tmp_path) == before


def test_bundle_without_config_json(tmp_path):
    (tmp_path / 'b').mkdir()
    with pytest.raises(InvalidArgument, match='config.json'):
        oci.load_bundle(str(tmp_path / 'b'))


def test_bundle_that_is_not_a_directory(tmp_path):
    with pytest.raises(InvalidArgument, match='nosuchbundle'):
        oci.load_bundle(str(tmp_path / 'nosuchbundle'))


def test_validate_spec_relative_root_needs_bundle():
    with pytest.raises(InvalidArgument, match="'rootfs'"):
        oci.validate_spec({'ociVersion': '1.0.2', 'process': {'args': ['true']},
                           'root': {'path': 'rootfs'}})


def test_validate_spec_does_not_modify_its_input(tmp_path, hook):
    rootfs = tmp_path / 'rootfs'
    rootfs.mkdir()
    spec = {'ociVersion': '1.0.2', 'process': {'args': ['true']}, 'root': {'path': 'rootfs'},
            'hooks': {'poststop': [{'path': hook}]}}
    copy = json.loads(json.dumps(spec))
    out = oci.validate_spec(spec, bundle=str(tmp_path))
    assert spec == copy
    assert out['root']['path'] == str(rootfs)


# ----------------------------------------------------------------------- generate

def test_generate_spec_full(tmp_path, hook):
    rootfs = str(tmp_path)
    spec = oci.generate_spec(rootfs, ['/bin/app', '--flag'], env={'A': 'x', 'PORT': 8080},
                             cwd='/srv', user='1000:100', hooks={'poststop': [{'path': hook}]},
                             cgroups_path='/kata/c1', annotations={'k': 'v'}, hostname='box')
    assert spec['ociVersion'].startswith('1.')
    assert spec['process']['args'] == ['/bin/app', '--flag']
    assert spec['process']['user'] == {'uid': 1000, 'gid': 100}
    assert spec['process']['cwd'] == '/srv'
    env = spec['process']['env']
    assert 'A=x' in env and 'PORT=8080' in env
    assert any(e.startswith('PATH=') for e in env)
    assert spec['root']['path'] == rootfs
    assert spec['hostname'] == 'box'
    assert spec['linux']['cgroupsPath'] == '/kata/c1'
    assert spec['annotations'] == {'k': 'v'}
    assert spec['hooks'] == {'poststop': [{'path': hook, 'args': [hook]}]}
    assert {m['destination'] for m in spec['mounts']} >= {'/proc', '/dev', '/sys'}
    assert {n['type'] for n in spec['linux']['namespaces']} >= {'pid', 'mount'}
    # the generated spec is itself valid and JSON-serialisable
    assert oci.validate_spec(json.loads(json.dumps(spec))) == spec


def test_generate_spec_defaults(tmp_path):
    spec = oci.generate_spec(str(tmp_path), ['true'])
    assert spec['process']['user'] == {'uid': 0, 'gid': 0}
    assert spec['process']['cwd'] == '/'
    assert spec['process']['env'] == [oci.DEFAULT_PATH_ENV]
    assert 'hooks' not in spec and 'hostname' not in spec
    assert 'cgroupsPath' not in spec['linux']


def test_generate_spec_keeps_user_path(tmp_path):
    spec = oci.generate_spec(str(tmp_path), ['true'], env={'PATH': '/opt/bin'})
    assert spec['process']['env'] == ['PATH=/opt/bin']


@pytest.mark.parametrize('user,expected', [
    ('0', {'uid': 0, 'gid': 0}),
    ('1000', {'uid': 1000, 'gid': 0}),
    ('1000:1001', {'uid': 1000, 'gid': 1001}),
    (65534, {'uid': 65534, 'gid': 0}),
])
def test_parse_user(user, expected):
    assert oci.parse_user(user) == expected


@pytest.mark.parametrize('user', ['root', '1000:', ':1000', '-1', 'a:b', '1000:1000:1',
                                  ' 1000', '4294967295', 1.5, True, ['1000']])
def test_bad_user_is_refused(tmp_path, user):
    with pytest.raises(InvalidArgument) as info:
        oci.generate_spec(str(tmp_path), ['true'], user=user)
    assert repr(user) in str(info.value) or str(user) in str(info.value)


@pytest.mark.parametrize('kwargs,named', [
    ({'rootfs': 'relative/rootfs'}, "'relative/rootfs'"),
    ({'rootfs': '/nonexistent/rootfs'}, '/nonexistent/rootfs'),
    ({'args': []}, 'command []'),
    ({'args': 'true'}, "command 'true'"),
    ({'env': {'A=B': 'x'}}, "'A=B'"),
    ({'env': {'A': ['x']}}, "['x']"),
    ({'env': ['A=1']}, "['A=1']"),
    ({'cwd': 'relative'}, "'relative'"),
    ({'annotations': {'a': 1}}, "annotations['a'] 1"),
    ({'cgroups_path': 7}, 'cgroups_path 7'),
    ({'hooks': {'poststop': [{'path': 'relative/hook'}]}}, 'relative/hook'),
])
def test_generate_spec_bad_input(tmp_path, kwargs, named):
    options = dict(kwargs)
    rootfs = options.pop('rootfs', str(tmp_path))
    command = options.pop('args', ['true'])
    with pytest.raises(InvalidArgument) as info:
        oci.generate_spec(rootfs, command, **options)
    assert named in str(info.value), str(info.value)


# -------------------------------------------------------------------------- state

def test_state():
    out = oci.state('c1', 'running', 42, '/b', {'a': 'b'})
    assert out == {'ociVersion': oci.OCI_VERSION, 'id': 'c1', 'status': 'running', 'pid': 42,
                   'bundle': '/b', 'annotations': {'a': 'b'}}
    stopped = oci.state('c1', 'stopped', None, '/b', None)
    assert 'pid' not in stopped and stopped['annotations'] == {}
    json.dumps(out)


@pytest.mark.parametrize('args,named', [
    (('c1', 'dead', 1, '/b', {}), "'dead'"),
    (('c1', 'running', -1, '/b', {}), 'pid -1'),
    (('../c1', 'running', 1, '/b', {}), "'../c1'"),
])
def test_state_bad_input(args, named):
    with pytest.raises(InvalidArgument) as info:
        oci.state(*args)
    assert named in str(info.value)
