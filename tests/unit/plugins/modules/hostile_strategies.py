# Copyright: kata.runtime contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Hypothesis strategies for hostile module input (used by test_hostile_input.py).

Values are generated before the example's temp directory exists, so every path that must land
inside it is written with the ``D`` token ('@D'), replaced by ``materialize`` when the example
runs. Everything that could reach the real host is kept on a leash here:

- the state root, the cgroup root and ``runtime_root`` only ever name directories inside the
  example's tree (or are refused by validation: relative, NUL, the file system root, a file);
- the libvirt URI is ``test:///default`` or something that cannot connect anywhere;
- config documents either keep those keys or cannot be loaded at all (an empty or ``null``
  document would mean "all defaults": ``qemu:///system`` and ``/run/kata-runtime``);
- hook paths are the example's own scripts or paths that do not exist, never a host binary;
- paths with ``$`` or ``~`` (which the ``path`` option type expands) are only used where a
  module reads, never where it creates.
"""

from __future__ import annotations

import json

import yaml
from ansible_collections.kata.runtime.plugins.module_utils.kata.oci import HOOK_KINDS
from hypothesis import strategies as st

D = '@D'


class _Omit:
    """An option left out of the module's arguments."""

    def __repr__(self):
        return 'OMIT'


OMIT = _Omit()


class Raw(bytes):
    """A config.yaml or config.json document given as raw bytes (not a structure to dump)."""


def materialize(value, root):
    """``value`` with the ``D`` token replaced by ``root`` in every string (keys too)."""
    if isinstance(value, str):
        return value.replace(D, root)
    if isinstance(value, Raw):
        return Raw(bytes(value).replace(D.encode(), root.encode()))
    if isinstance(value, list):
        return [materialize(v, root) for v in value]
    if isinstance(value, dict):
        return {materialize(k, root): materialize(v, root) for k, v in value.items()}
    return value


# ---------------------------------------------------------------------------------------------
# scalars

SPECIAL_TEXT = [
    '', ' ', '.', '..', '/', '//', '../..', '../../etc', 'a/../..', 'x\x00y', '\x00', 'a\nb', '\n', '\r\n', '\t',
    'x' * 4097, 'caf\u00e9', '\u202e\u0645', '\U0001f600', '*', '?', '[', '[!a]', '**/..', '$HOME', '~',
    '{{ 7 * 7 }}', '-', '--force', 'a=b', '=', 'a:b:c', '%s%n', "'", '"', '\\', ' sb', 'sb ', 'SB', 'sb\n',
    'true', 'null', '0x10', '1e400', 'NaN', '\ufeff', '\x7f', '\x1b[31m',
]

texts = st.one_of(
    st.sampled_from(SPECIAL_TEXT),
    st.text(alphabet=st.characters(exclude_categories=('Cs',)), max_size=12),
)

HUGE = 10 ** 400
numbers = st.one_of(
    st.sampled_from([0, -1, 1, 2 ** 31, 2 ** 63, HUGE, -HUGE, 0.5, -0.0, 1e308]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(),
)

scalars = st.one_of(texts, numbers, st.booleans(), st.none())

nested = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(texts, inner, max_size=3)),
    max_leaves=6,
)

# what a string option may receive from a careless or hostile playbook
anything = st.one_of(texts, numbers, st.booleans(), st.none(), nested)
# the same, never a string (for options whose strings the strategies keep on a leash)
non_strings = st.one_of(
    numbers, st.booleans(),
    st.lists(nested, min_size=1, max_size=3),
    st.dictionaries(texts, nested, min_size=1, max_size=3),
)


def weird(strategy):
    """Mostly ``strategy``, sometimes anything at all."""
    return st.one_of(strategy, strategy, strategy, anything)


bools = weird(st.booleans()) | st.sampled_from(['yes', 'no', 'maybe', 2, [], {}])

# ---------------------------------------------------------------------------------------------
# IDs

SHORT_ID_REGEX = r'\A[A-Za-z0-9][A-Za-z0-9_.+-]{0,20}\Z'
PLANTED_IDS = ['sb', 'dead', 'c1', 'c2', 'ghost', 'bad', 'evil', 'linked', 'stranger', 'nowhere']
BAD_IDS = ['../x', 'a/b', '.hidden', '', 'a' * 129, 'caf\u00e9', 'x\n', '-a', '+a', '_a', 'a b', '.', '..',
           'x\x00', '/', 'sb/../dead', '*', 'A' * 128 + '\n']

valid_ids = st.one_of(
    st.sampled_from(PLANTED_IDS + ['new', 'A' * 128, '0', 'a.b+c_d-e']),
    st.from_regex(SHORT_ID_REGEX),
)
ids = st.one_of(valid_ids, valid_ids, st.sampled_from(BAD_IDS), anything)

# ---------------------------------------------------------------------------------------------
# paths (see the module docstring for what each kind may name)

TREE = ['rootfs', 'image', 'image/vmlinux', 'image/kata-initrd.img', 'hooks', 'hooks/ok.sh', 'canary',
        'canary/file', 'canary/empty', 'run', 'run/sandboxes', 'run/sandboxes/sb', 'cgroup', 'nonexistent',
        'nonexistent/deeper', 'links/to-canary', 'links/to-rootfs', 'links/loop', 'links/dangling',
        'config.yaml', 'bundle', 'bundle/config.json']

WEIRD_PATHS = ['', '.', '..', 'relative/path', './x', '../x', '/', '//', '/\x00', D + '/rootfs\x00',
               D + '/rootfs\n', D + '/' + 'x' * 300, D + '/' + 'a/' * 2100, D + '/rootfs/../../..',
               D + '/caf\u00e9', D + '/nonexistent/\u202e', D + '/../outer-canary', D + '/../outer-canary/file']

read_paths = st.one_of(
    st.sampled_from(TREE).map(lambda p: D + '/' + p),
    st.sampled_from(TREE).map(lambda p: D + '/rootfs/../' + p),
    st.sampled_from(WEIRD_PATHS + ['~', '~root/x', '$HOME/x', '${PATH}']),
    texts.map(lambda t: D + '/nonexistent/' + t),
    texts,
)
paths = weird(read_paths)

# state roots: a directory of the example that may be created, or something refused
STATE_ROOT_DIRS = ['run', 'run2', 'run/../run2', 'run/.', 'run//', 'cgroup/../run', 'links/to-run']
state_roots = st.one_of(
    st.sampled_from(STATE_ROOT_DIRS).map(lambda p: D + '/' + p),
    st.sampled_from(['', 'relative', 'run', '/', '//', D + '/run\x00', D + '/run\n', D + '/config.yaml',
                     D + '/config.yaml/run', D + '/image/vmlinux/x']),
    non_strings,
)
cgroup_roots = st.one_of(
    st.sampled_from(['cgroup', 'cgroup2', 'cgroup/.', 'image']).map(lambda p: D + '/' + p),
    st.sampled_from(['', 'relative', D + '/cgroup\x00', D + '/cgroup\n', D + '/config.yaml']),
    non_strings,
)

# ---------------------------------------------------------------------------------------------
# cgroupsPath (the example's cgroup mount holds kata-unit/evil -> canary and a plain file)

_CG_SEGMENTS = ['a', 'b', '.', '..', '', 'evil', 'afile', 'kata-unit', 'x' * 256, 'caf\u00e9', 'a:b', ' ',
                '\x00', 'sb', 'evil-parent']
cgroups_paths = st.one_of(
    st.sampled_from(['', '/', '//', '..', '../..', '/..', '/../..', 'a:b:c', 'system.slice:kata:c1',
                     '/kata-unit/x', 'kata-unit', 'evil/x', '/evil-parent/x', 'afile/x', 'a/../..', '/a/b/../..',
                     'x\n', '\x00']),
    st.builds(lambda lead, segs: lead + '/'.join(segs), st.sampled_from(['', '/']),
              st.lists(st.sampled_from(_CG_SEGMENTS), min_size=1, max_size=6)),
    texts,
    anything,
)

# ---------------------------------------------------------------------------------------------
# labels, annotations, env

label_keys = st.one_of(texts, st.sampled_from(['tenant', 'a=b', '', '\x00', 'x' * 300,
                                              'io.katacontainers.pkg.oci.container_type']))
label_values = st.one_of(texts, texts, numbers, st.booleans(), st.none(), nested)
string_dicts = st.one_of(
    st.dictionaries(label_keys, label_values, max_size=4),
    st.dictionaries(label_keys, texts, max_size=4),
    st.sampled_from(['tenant=acme', 'a=b,c=d', '', 'no-equals', '{"a": 1}', '=x']),
    anything,
)
env_keys = st.one_of(texts, st.sampled_from(['PATH', 'A', 'A=B', '', '\x00', ' ', 'x' * 300]))
envs = st.one_of(
    st.dictionaries(env_keys, label_values, max_size=4),
    st.sampled_from(['A=1', 'A=1 B=2', '', '=']),
    anything,
)

# ---------------------------------------------------------------------------------------------
# hooks: the example has hooks/ok.sh (exit 0), hooks/fail.sh (exit 3), hooks/noexec.sh (0644)

hook_paths = st.one_of(
    st.sampled_from(['hooks/ok.sh', 'hooks/fail.sh', 'hooks/noexec.sh', 'hooks', 'nonexistent',
                     'links/to-ok', 'links/dangling', 'links/loop', 'hooks/ok.sh/x']).map(lambda p: D + '/' + p),
    st.sampled_from(['', 'relative/hook', 'ok.sh', D + '/hooks/ok.sh\x00', D + '/hooks/ok.sh\n', '/',
                     D + '/hooks/../hooks/ok.sh']),
    texts.map(lambda t: D + '/nonexistent/' + t),
    anything,
)
hook_args = weird(st.lists(texts, max_size=3))
hook_env = weird(st.lists(st.one_of(st.sampled_from(['A=1', 'PATH=/bin', '=x', 'noeq', 'A=\x00', '', 'A==']),
                                    texts), max_size=3))
hook_timeouts = weird(st.sampled_from([1, 5, 3600, 3601, 86400, 0, -1, HUGE, 1.5, True, '5', None]))
hook_entries = st.fixed_dictionaries(
    {'path': hook_paths},
    optional={'args': hook_args, 'env': hook_env, 'timeout': hook_timeouts, 'bogus': anything},
)
hooks = st.one_of(
    st.dictionaries(st.sampled_from(HOOK_KINDS + ('bogus', 'Poststop', '')),
                    weird(st.lists(weird(hook_entries), max_size=2)), max_size=3),
    anything,
)

# ---------------------------------------------------------------------------------------------
# config.yaml documents (keys and types: plugins/module_utils/kata/config.py)

SAFE_URIS = ['test:///default']
BAD_URIS = ['', ' ', 'nocolon', 'test:///default\n', 'a b:c', 'test:///' + D + '/nonexistent.xml',
            'test:///' + D + '/config.yaml', 'bogus:///x', 'test:///default\x00']


def base_config(image_dir=D + '/image'):
    return {
        'libvirt_uri': 'test:///default',
        'image_dir': image_dir,
        'state_root': D + '/run',
        'cgroup_root': D + '/cgroup',
        'cgroup_parent': 'kata-unit',
        'domain_prefix': 'kata-unit-',
    }


def _timeouts():
    return weird(st.sampled_from([1, 0.5, 60, 86400, 86401, 0, -1, HUGE, float('nan'), float('inf'), 1e-300,
                                  True, '5']))


def _ints(edges):
    return weird(st.sampled_from(edges + [0, -1, HUGE, 1.5, True, '2', None]))


def config_values(image_dirs):
    """{config key: strategy of values for it}: never one that reaches outside the example."""
    return {
        'libvirt_uri': st.one_of(st.sampled_from(SAFE_URIS + BAD_URIS), non_strings),
        'accel': weird(st.sampled_from(['auto', 'kvm', 'tcg', 'KVM', '', 'qemu'])),
        'image_dir': image_dirs,
        'kernel': st.one_of(paths, st.none()),
        'initrd': st.one_of(paths, st.none()),
        'kernel_params': weird(texts),
        'vcpus': _ints([1, 2, 512]),
        'memory_mb': _ints([64, 63, 256, 2 ** 40]),
        'state_root': state_roots,
        'cgroup_root': cgroup_roots,
        'cgroup_parent': weird(st.sampled_from(['kata-unit', 'kata', 'a/b', '/abs', '..', 'a/../..', '', 'x' * 300,
                                                'caf\u00e9', 'a b', 'evil-parent', 'kata-unit/evil', 'a:b'])),
        'agent_timeout': _timeouts(),
        'hook_timeout': _timeouts(),
        'domain_prefix': weird(st.sampled_from(['kata-unit-', 'kata-', 'te', 'x', '', '-a', 'a' * 33, 'a b',
                                                'caf\u00e9', 'kata-unit-s'])),
        'guest_write_limit_mb': _ints([1, 65536, 65537]),
        'console_log_limit_kb': _ints([64, 63, 1048576, 1048577]),
        'tcg_tb_cache_mb': _ints([0, 7, 8, 32, 4096, 4097]),
        'release_boot_files': bools,
        'free_page_reporting': bools,
        'template': bools,
        'template_pool_size': _ints([0, -1, 3, 1024, 1025]),
        'template_tmpfs_mb': _ints([128, 127, 2048, 2 ** 40]),
    }


# documents that can never load as a config (so defaults never apply): each is refused
RAW_DOCUMENTS = [
    b'[', b'{', b'a: [', b'- 1\n- 2\n', b'42', b'"just a string"', b'!!python/object/apply:os.system ["true"]',
    b'[' * 600, b'{a: ' * 600, b'- ' * 600 + b'x', b'\xff\xfe\x00', b'a: &x [*x]\n', b'state_root: [\n',
    b'{"libvirt_uri": "test:///default", "bogus": 1}', b'\x00', b'%YAML 9.9\n---\na: 1\n', b'!!binary x',
    b'? [a, b]\n: c\n', b'a: !!int 1e400\n',
]


@st.composite
def config_documents(draw, image_dirs=None):
    """A config document: the example's base config with keys changed or added, or raw bytes."""
    if image_dirs is None:
        image_dirs = st.one_of(st.just(D + '/image'), paths)
    values = config_values(image_dirs)
    kind = draw(st.sampled_from(['mutated', 'mutated', 'mutated', 'raw']))
    if kind == 'raw':
        return Raw(draw(st.sampled_from(RAW_DOCUMENTS)))
    doc = base_config()
    doc['image_dir'] = draw(image_dirs)
    changes = draw(st.dictionaries(st.sampled_from(sorted(values)), st.just(None), max_size=3))
    for key in changes:
        doc[key] = draw(values[key])
    for key in draw(st.lists(st.sampled_from(['accel', 'cgroup_parent', 'domain_prefix', 'kernel_params']),
                             max_size=2)):
        doc.pop(key, None)
    if draw(st.integers(0, 9)) == 0:
        doc[draw(st.sampled_from(['bogus', 'State_Root', '', 'state-root']))] = draw(scalars)
    return doc


def render_config(doc, fmt):
    """Bytes of a config document as YAML or JSON (a Raw document as it is)."""
    if isinstance(doc, Raw):
        return bytes(doc)
    if fmt == 'json':
        # JSON can write NaN/Infinity and huge integers as they are; PyYAML reads JSON too
        return json.dumps(doc).encode('utf-8')
    return yaml.safe_dump(doc, allow_unicode=True).encode('utf-8')


# ---------------------------------------------------------------------------------------------
# bundle config.json documents

def base_spec():
    """A valid runtime-spec config whose rootfs is the example's (what oci.generate_spec writes)."""
    return {
        'ociVersion': '1.3.0',
        'process': {'terminal': False, 'user': {'uid': 0, 'gid': 0}, 'args': ['/bin/sh'],
                    'env': ['PATH=/usr/bin:/bin'], 'cwd': '/'},
        'root': {'path': D + '/rootfs', 'readonly': False},
        'linux': {'namespaces': [{'type': 'pid'}]},
        'annotations': {},
    }


_DELETE = object()
SPEC_FIELDS = {
    ('ociVersion',): weird(st.sampled_from(['1.0.2', '', ' '])),
    ('process',): anything,
    ('process', 'args'): weird(st.lists(texts, max_size=3)),
    ('process', 'env'): weird(st.lists(st.one_of(st.sampled_from(['A=1', 'noeq', '=x', 'A=\x00']), texts),
                                       max_size=3)),
    ('process', 'cwd'): weird(st.one_of(st.sampled_from(['/', 'relative', '', '/\x00', '/tmp/../..']), texts)),
    ('process', 'user'): anything,
    ('process', 'user', 'uid'): weird(st.sampled_from([0, 1000, -1, 2 ** 32 - 2, 2 ** 32 - 1, HUGE, 1.0, True])),
    ('process', 'user', 'gid'): weird(st.sampled_from([0, -1, 2 ** 32, HUGE, 0.5, False])),
    ('root',): anything,
    ('root', 'path'): st.one_of(st.sampled_from(['rootfs-rel', '../rootfs', 'links/to-canary', D + '/links/to-canary',
                                                 '', '.', '/nonexistent\x00']), paths),
    ('root', 'readonly'): anything,
    ('hooks',): hooks,
    ('linux',): anything,
    ('linux', 'cgroupsPath'): cgroups_paths,
    ('annotations',): string_dicts,
    ('annotations', 'io.katacontainers.pkg.oci.container_type'): weird(st.sampled_from(
        ['pod_sandbox', 'pod_container', 'sandbox', 'bogus'])),
    ('annotations', 'io.kubernetes.cri.container-type'): weird(st.sampled_from(['sandbox', 'container', 'x'])),
}
RAW_SPECS = [b'', b'{', b'null', b'[]', b'"x"', b'NaN', b'\xff\xfe', b'{"ociVersion": "1.0.2"}', b'[' * 100000,
             b'{"a":' * 100000, b'{"ociVersion": "1.0.2", "process": {"args": ["/bin/sh"]}, "root": {"path": "/"}}'
             b' trailing']


@st.composite
def bundle_specs(draw):
    """A bundle's config.json: the base spec with fields set to hostile values or removed, or raw bytes."""
    if draw(st.integers(0, 5)) == 0:
        return Raw(draw(st.sampled_from(RAW_SPECS)))
    spec = base_spec()
    for field in draw(st.lists(st.sampled_from(sorted(SPEC_FIELDS)), min_size=1, max_size=3, unique=True)):
        value = draw(st.one_of(SPEC_FIELDS[field], st.just(_DELETE)))
        node = spec
        for key in field[:-1]:
            if not isinstance(node.get(key), dict):
                node[key] = {}
            node = node[key]
        if value is _DELETE:
            node.pop(field[-1], None)
        else:
            node[field[-1]] = value
    return spec


def render_spec(spec):
    if isinstance(spec, Raw):
        return bytes(spec)
    return json.dumps(spec).encode('utf-8')


# ---------------------------------------------------------------------------------------------
# whole calls: mostly valid options with a few hostile ones, so that examples get past the first
# refusal and reach the deeper code as often as they stop at it

@st.composite
def calls(draw, valid, hostile, required=()):
    """Module options: each drawn from ``valid`` (the ``required`` ones always), then up to three
    of them (or options not given yet) replaced by a draw from ``hostile``."""
    opts = draw(st.fixed_dictionaries({k: valid[k] for k in required},
                                      optional={k: s for k, s in valid.items() if k not in required}))
    for key in draw(st.lists(st.sampled_from(sorted(hostile)), max_size=3, unique=True)):
        opts[key] = draw(hostile[key])
    return opts


def _options(table):
    """(valid, hostile) strategy dicts from {option: (valid strategy or None, hostile strategy)}."""
    valid = {k: v for k, (v, h) in table.items() if v is not None}
    hostile = {k: h for k, (v, h) in table.items()}
    return valid, hostile


config_paths = st.one_of(
    st.just(D + '/config.yaml'), st.just(D + '/config.yaml'), st.just(D + '/config.yaml'),
    st.sampled_from([D + '/nonexistent.yaml', D + '/canary', D + '/canary/file', D + '/links/dangling',
                     D + '/links/loop', '', 'config.yaml', D + '/config.yaml\x00', '~/nonexistent-kata.yaml',
                     D + '/config.yaml/x', 5, True]),
)

COMMON = {
    'config': (None, config_paths),
    'runtime_root': (st.sampled_from([D + '/run', D + '/run2']), state_roots),
}

simple_dicts = st.dictionaries(st.sampled_from(['tenant', 'tier', 'app.kubernetes.io/name', 'x']),
                               st.one_of(st.sampled_from(['acme', 'other', '', 'v 1']), st.integers(-5, 5),
                                         st.booleans(), st.floats(allow_nan=False, allow_infinity=False)),
                               max_size=3)
valid_hooks = st.dictionaries(
    st.sampled_from(HOOK_KINDS),
    st.lists(st.fixed_dictionaries(
        {'path': st.sampled_from([D + '/hooks/ok.sh', D + '/hooks/fail.sh', D + '/links/to-ok'])},
        optional={'args': st.lists(st.sampled_from(['hook', '--flag', '']), max_size=2),
                  'env': st.lists(st.sampled_from(['A=1', 'PATH=/bin', 'B=']), max_size=2),
                  'timeout': st.integers(1, 3600)}), max_size=2),
    max_size=2)
valid_cgroups_paths = st.sampled_from(['', 'mine', 'a/b', '/kata-unit/mine', 'kata-unit-x', './c', 'x/../y'])

SANDBOX = _options({
    'name': (valid_ids, st.one_of(st.just(OMIT), ids)),
    'id': (None, ids),
    'state': (st.sampled_from(['stopped', 'absent', 'stopped', 'running', 'paused']),
              weird(st.sampled_from(['Running', '', 'dead', 'created']))),
    'vcpus': (st.sampled_from([1, 2, 4]), weird(st.sampled_from([0, -1, HUGE, 1.5, '2', True, 2 ** 31]))),
    'memory_mb': (st.sampled_from([64, 128, 256]), weird(st.sampled_from([63, 0, HUGE, -5, 64.0, '128']))),
    'kernel': (st.sampled_from([D + '/image/vmlinux', D + '/canary/file']), paths),
    'initrd': (st.sampled_from([D + '/image/kata-initrd.img']), paths),
    'kernel_params': (st.sampled_from(['', 'quiet', 'a=b c=d']), weird(texts)),
    'accel': (st.sampled_from(['auto', 'kvm', 'tcg']), weird(st.sampled_from(['KVM', '', 'qemu']))),
    'labels': (simple_dicts, string_dicts),
    'annotations': (simple_dicts, string_dicts),
    'hooks': (valid_hooks, hooks),
    'cgroups_path': (valid_cgroups_paths, cgroups_paths),
    'force': (st.booleans(), bools),
    'recreate': (st.booleans(), bools),
    'timeout': (st.sampled_from([1, 30]), weird(st.sampled_from([0, -1, HUGE, 0.5]))),
    **COMMON,
})

CONTAINER_INLINE = ('rootfs', 'command', 'env', 'cwd', 'user', 'readonly_rootfs')
CONTAINER = _options({
    'name': (valid_ids, st.one_of(st.just(OMIT), ids)),
    'id': (None, ids),
    'sandbox': (st.sampled_from(['sb', 'dead', 'new', 'sb', 'linked', 'evil']), ids),
    'state': (st.sampled_from(['running', 'created', 'stopped', 'absent']),
              weird(st.sampled_from(['paused', 'Running', '']))),
    'bundle': (st.just(D + '/bundle'), paths),
    'rootfs': (st.sampled_from([D + '/rootfs', D + '/links/to-rootfs']), paths),
    'command': (st.lists(st.sampled_from(['/bin/sh', '-c', 'true', '']), min_size=1, max_size=3),
                weird(st.lists(texts, max_size=3))),
    'env': (simple_dicts, envs),
    'cwd': (st.sampled_from(['/', '/tmp']), weird(st.one_of(st.sampled_from(['relative', '', '/\x00']), texts))),
    'user': (st.sampled_from(['0', '0:0', '1000:1000']),
             weird(st.sampled_from(['root', '-1', '4294967295', '1:2:3', '', ' 1', '4294967294:0']))),
    'readonly_rootfs': (st.booleans(), bools),
    'hooks': (valid_hooks, hooks),
    'cgroups_path': (valid_cgroups_paths, cgroups_paths),
    'annotations': (simple_dicts, string_dicts),
    'labels': (simple_dicts, string_dicts),
    'signal': (st.sampled_from(['SIGTERM', 'KILL', '9']), weird(st.sampled_from(['SIGFOO', '', '-1', '99999']))),
    'stop_timeout': (st.sampled_from([1, 10]), weird(st.sampled_from([0, -1, HUGE]))),
    'force': (st.booleans(), bools),
    'recreate': (st.booleans(), bools),
    **COMMON,
})

globs = weird(st.lists(st.one_of(st.sampled_from(['*', 'sb', 'd*', '[', '[!s]*', '**', '?', '\x00', 'x' * 3000]),
                                 ids), max_size=3))
valid_globs = st.lists(st.sampled_from(['*', 'sb', 'dead', 'c*', 'bad', 'nothing', '[sd]*']), max_size=3)
QUERIES = ['[].id', '[?vcpus > `1`].id', '[?', '', 'length(@)', 'sort_by(@, &id)', 'max_by(@, &labels)',
           '`1e400`', "[?labels.tenant=='acme']", '@', '[*].labels', 'foo.bar', '[0:1:0]', 'ceil(`1e400`)',
           'floor(to_number(`"nan"`))', '[?contains(id, `1`)]', '(' * 3000 + '@' + ')' * 3000, '!' * 3000 + '@',
           '[' * 3000, 'a' * 10000, 'sum([].vcpus)', '`"\\u0000"`', 'to_string(@)', '[].{id: id, x: `{}`}',
           'merge(@)', "join(',', [].id)", '[].containers[]', '[?state==`dead`]', '[0]']
valid_queries = st.sampled_from(['[].id', "[?labels.tenant=='acme'].id", '[?vcpus > `0`]', 'length(@)', '[0]'])
queries = weird(st.one_of(st.sampled_from(QUERIES), texts))

SANDBOX_INFO = _options({
    'name': (valid_globs, globs),
    'labels': (simple_dicts, string_dicts),
    'state': (st.lists(st.sampled_from(['running', 'paused', 'stopped', 'dead']), max_size=2),
              weird(st.lists(st.sampled_from(['bogus', 'Running', '']), min_size=1, max_size=2))),
    'query': (valid_queries, queries),
    **COMMON,
})
CONTAINER_INFO = _options({
    'name': (valid_globs, globs),
    'sandbox': (valid_globs, globs),
    'labels': (simple_dicts, string_dicts),
    'status': (st.lists(st.sampled_from(['creating', 'created', 'running', 'stopped', 'unknown']), max_size=2),
               weird(st.lists(st.sampled_from(['x', 'Running', '']), min_size=1, max_size=2))),
    'type': (st.sampled_from(['pod_sandbox', 'pod_container']), weird(st.sampled_from(['x', '']))),
    'query': (valid_queries, queries),
    **COMMON,
})
PRUNE = _options({
    'names': (valid_globs, globs),
    'labels': (simple_dicts, string_dicts),
    'query': (valid_queries, queries),
    'all': (st.booleans(), bools),
    'force': (st.booleans(), bools),
    'orphans': (st.booleans(), bools),
    'workers': (st.sampled_from([1, 4, 16]), weird(st.sampled_from([0, -1, HUGE, 2.0, 2.5, '3']))),
    **COMMON,
})
CHECK = _options({'strict': (st.booleans(), bools), **COMMON})

NO_IMAGE = D + '/nonexistent-image'
GUEST_IMAGE = _options({
    'dest': (st.sampled_from([NO_IMAGE, NO_IMAGE + '/../new-image']),
             st.one_of(st.sampled_from(['relative', '', '/\x00', NO_IMAGE + '\x00', NO_IMAGE + '\n',
                                        D + '/config.yaml']), non_strings)),
    'kernel': (st.sampled_from([D + '/image/vmlinux']), paths),
    'modules_dir': (st.sampled_from([D + '/rootfs']), paths),
    'busybox': (st.sampled_from([D + '/hooks/ok.sh']), paths),
    'python': (st.sampled_from([D + '/hooks/ok.sh']), paths),
    'force': (st.booleans(), bools),
    **COMMON,
})
