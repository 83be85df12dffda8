# Copyright: kata.runtime contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""OCI runtime-spec pieces: bundle ``config.json`` load/validate/generate, hooks, state JSON.

Validation is strict where a mistake would otherwise surface later and far away (inside the
guest, or as a hook that never runs): every error names the field and the bad value.
"""

from __future__ import annotations

import copy
import json
import os
import re

from ansible_collections.kata.runtime.plugins.module_utils.kata.errors import InvalidArgument
from ansible_collections.kata.runtime.plugins.module_utils.kata.guest import contract
from ansible_collections.kata.runtime.plugins.module_utils.kata.ids import validate_id

OCI_VERSION = '1.3.0'
CONFIG_FILE = 'config.json'

HOOK_KINDS = ('prestart', 'createRuntime', 'createContainer', 'startContainer', 'poststart',
              'poststop')
HOOK_KEYS = ('path', 'args', 'env', 'timeout')

STATUSES = ('creating', 'created', 'running', 'stopped')

POD_SANDBOX = 'pod_sandbox'
POD_CONTAINER = 'pod_container'

KATA_CONTAINER_TYPE_KEY = 'io.katacontainers.pkg.oci.container_type'
CRI_CONTAINER_TYPE_KEY = 'io.kubernetes.cri.container-type'

# Annotation key -> {value: container type}, in the order they are consulted (Kata's own
# first, then containerd's CRI, CRI-O and dockershim, as Kata's runtime does).
CONTAINER_TYPE_KEYS = (
    (KATA_CONTAINER_TYPE_KEY, {'pod_sandbox': POD_SANDBOX, 'pod_container': POD_CONTAINER}),
    (CRI_CONTAINER_TYPE_KEY, {'sandbox': POD_SANDBOX, 'container': POD_CONTAINER}),
    ('io.kubernetes.cri-o.ContainerType', {'sandbox': POD_SANDBOX, 'container': POD_CONTAINER}),
    ('io.kubernetes.docker.type', {'podsandbox': POD_SANDBOX, 'container': POD_CONTAINER}),
)

# Annotations naming the sandbox a pod_container belongs to (containerd, CRI-O, dockershim).
SANDBOX_ID_KEYS = (
    'io.kubernetes.cri.sandbox-id',
    'io.kubernetes.cri-o.SandboxID',
    'io.kubernetes.sandbox.id',
)

DEFAULT_PATH_ENV = 'PATH=' + contract.DEFAULT_PATH
MAX_ID = 2 ** 32 - 2  # (uid_t)-1 is "no change"
_ENV_KEY_RE = re.compile(r'^[^=\x00]+$')
_USER_RE = re.compile(r'^(\d+)(?::(\d+))?$', re.ASCII)

DEFAULT_CAPABILITIES = [
    'CAP_CHOWN', 'CAP_DAC_OVERRIDE', 'CAP_FSETID', 'CAP_FOWNER', 'CAP_MKNOD', 'CAP_NET_RAW',
    'CAP_SETGID', 'CAP_SETUID', 'CAP_SETFCAP', 'CAP_SETPCAP', 'CAP_NET_BIND_SERVICE',
    'CAP_SYS_CHROOT', 'CAP_KILL', 'CAP_AUDIT_WRITE',
]


def _bad(field, value, why):
    return InvalidArgument(f'invalid {field} {value!r}: {why}')


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _str_list(field, value, allow_empty=True):
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _bad(field, value, 'must be a list of strings')
    if not allow_empty and not value:
        raise _bad(field, value, 'must not be empty')
    return value


def _env_list(field, value):
    _str_list(field, value)
    for item in value:
        key, sep, _val = item.partition('=')
        if not sep or not key or '\x00' in item:
            raise _bad(field, item, 'each entry must be "KEY=VALUE"')
    return value


def _annotations(field, value):
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _bad(field, value, 'must be a mapping of string to string')
    for key, val in value.items():
        if not isinstance(key, str) or not key:
            raise _bad(f'{field} key', key, 'must be a non-empty string')
        if not isinstance(val, str):
            raise _bad(f'{field}[{key!r}]', val, 'must be a string')
    return value


# ------------------------------------------------------------------ container types

def container_type(annotations):
    """``'pod_sandbox'`` or ``'pod_container'`` from the annotations (default pod_container)."""
    annotations = _annotations('annotations', annotations)
    for key, values in CONTAINER_TYPE_KEYS:
        if key in annotations:
            value = annotations[key]
            if value not in values:
                raise _bad(f'annotation {key}', value,
                           f"must be one of {', '.join(sorted(values))}")
            return values[value]
    return POD_CONTAINER


def sandbox_id_from_annotations(annotations):
    """The sandbox ID named by a CRI annotation, or None when no such annotation is set."""
    annotations = _annotations('annotations', annotations)
    for key in SANDBOX_ID_KEYS:
        if annotations.get(key):
            return annotations[key]
    return None


# -------------------------------------------------------------------------- hooks

# A hook's own timeout, at most (an hour): a hook is a short host-side step, and a number no
# clock can add (10**400) must be refused here, not fail later in the middle of a delete.
MAX_HOOK_TIMEOUT = 3600


def _validate_hook(kind, index, hook):
    field = f'hooks.{kind}[{index}]'
    if not isinstance(hook, dict):
        raise _bad(field, hook, 'must be a mapping with at least "path"')
    unknown = sorted(set(hook) - set(HOOK_KEYS))
    if unknown:
        raise _bad(field, hook, f"unknown keys {', '.join(map(str, unknown))} "
                                f"(allowed: {', '.join(HOOK_KEYS)})")
    path = hook.get('path')
    if not isinstance(path, str) or not path:
        raise _bad(f'{field}.path', path, 'is required and must be a string')
    if not os.path.isabs(path):
        raise _bad(f'{field}.path', path, 'must be an absolute path')
    if not os.path.exists(path):
        raise _bad(f'{field}.path', path, 'does not exist')
    if not os.path.isfile(path):
        raise _bad(f'{field}.path', path, 'is not a regular file')
    if not os.access(path, os.X_OK):
        raise _bad(f'{field}.path', path, 'is not executable')
    if '\x00' in path:
        raise _bad(f'{field}.path', path, 'must not contain a NUL byte')
    args = hook.get('args')
    args = [path] if args is None else _str_list(f'{field}.args', args)
    for arg in args:
        if '\x00' in arg:
            raise _bad(f'{field}.args', arg, 'must not contain a NUL byte (no process can be given it)')
    env = hook.get('env')
    # None (not []) when unset: the hook runner then gives a minimal PATH-only environment
    env = None if env is None else list(_env_list(f'{field}.env', env))
    timeout = hook.get('timeout')
    if timeout is not None and (not _is_int(timeout) or not 0 < timeout <= MAX_HOOK_TIMEOUT):
        raise _bad(f'{field}.timeout', timeout, f'must be a positive integer of seconds, at most {MAX_HOOK_TIMEOUT}')
    return {'path': path, 'args': list(args), 'env': env, 'timeout': timeout}


def validate_hooks(hooks):
    """Return ``{kind: [{'path', 'args', 'env', 'timeout'}]}`` for an OCI ``hooks`` object.

    Missing ``args`` becomes ``[path]``; missing ``env`` and ``timeout`` stay None (the hook
    runner then uses a minimal environment and the default timeout).
    """
    if hooks is None:
        return {}
    if not isinstance(hooks, dict):
        raise _bad('hooks', hooks, f"must be a mapping of hook kind ({', '.join(HOOK_KINDS)}) "
                                   'to a list of hooks')
    out = {}
    for kind, entries in hooks.items():
        if kind not in HOOK_KINDS:
            raise _bad('hook kind', kind, f"must be one of {', '.join(HOOK_KINDS)}")
        if entries is None:
            entries = []
        if not isinstance(entries, list):
            raise _bad(f'hooks.{kind}', entries, 'must be a list of hooks')
        out[kind] = [_validate_hook(kind, i, hook) for i, hook in enumerate(entries)]
    return out


def _spec_hooks(validated):
    """Validated hooks in config.json form (no ``timeout`` key when unset)."""
    out = {}
    for kind, entries in validated.items():
        out[kind] = []
        for hook in entries:
            item = {'path': hook['path'], 'args': hook['args']}
            if hook['env'] is not None:
                item['env'] = hook['env']
            if hook['timeout'] is not None:
                item['timeout'] = hook['timeout']
            out[kind].append(item)
    return out


# --------------------------------------------------------------------------- spec

def validate_spec(spec, bundle=None):
    """Check a runtime-spec config and return a copy with ``root.path`` made absolute.

    A relative ``root.path`` is resolved against ``bundle``; the rootfs must exist. Hooks are
    checked with ``validate_hooks`` (the copy keeps them in config.json form).
    """
    if not isinstance(spec, dict):
        raise _bad('OCI config', spec, 'must be a JSON object')
    spec = copy.deepcopy(spec)
    version = spec.get('ociVersion')
    if not isinstance(version, str) or not version.strip():
        raise _bad('ociVersion', version, 'is required and must be a non-empty string')

    process = spec.get('process')
    if not isinstance(process, dict):
        raise _bad('process', process, 'is required and must be an object')
    _str_list('process.args', process.get('args'), allow_empty=False)
    if 'env' in process:
        _env_list('process.env', process['env'])
    cwd = process.get('cwd', '/')
    if not isinstance(cwd, str) or not os.path.isabs(cwd):
        raise _bad('process.cwd', cwd, 'must be an absolute path')
    user = process.get('user')
    if user is not None:
        if not isinstance(user, dict):
            raise _bad('process.user', user, 'must be an object with uid and gid')
        for key in ('uid', 'gid'):
            if key in user and (not _is_int(user[key]) or not 0 <= user[key] <= MAX_ID):
                raise _bad(f'process.user.{key}', user[key], 'must be an integer >= 0')

    root = spec.get('root')
    if not isinstance(root, dict):
        raise _bad('root', root, 'is required and must be an object with "path"')
    path = root.get('path')
    if not isinstance(path, str) or not path:
        raise _bad('root.path', path, 'is required and must be a non-empty string')
    if not os.path.isabs(path):
        if bundle is None:
            raise _bad('root.path', path, 'is relative, so it needs a bundle directory')
        resolved = os.path.normpath(os.path.join(os.path.abspath(bundle), path))
    else:
        resolved = os.path.normpath(path)
    if not os.path.isdir(resolved):
        raise _bad('root.path', path, f'does not exist as a directory ({resolved})')
    if not isinstance(root.get('readonly', False), bool):
        raise _bad('root.readonly', root['readonly'], 'must be true or false')
    root['path'] = resolved

    if 'hooks' in spec and spec['hooks'] is not None:
        spec['hooks'] = _spec_hooks(validate_hooks(spec['hooks']))

    linux = spec.get('linux')
    if linux is not None:
        if not isinstance(linux, dict):
            raise _bad('linux', linux, 'must be an object')
        cgroups_path = linux.get('cgroupsPath')
        if cgroups_path is not None and not isinstance(cgroups_path, str):
            raise _bad('linux.cgroupsPath', cgroups_path, 'must be a string')

    if 'annotations' in spec:
        _annotations('annotations', spec['annotations'])
    return spec


def load_bundle(path):
    """Read and validate ``<path>/config.json``; returns the checked spec (see validate_spec)."""
    if not isinstance(path, str) or not path:
        raise _bad('bundle', path, 'must be the path of a directory holding config.json')
    bundle = os.path.abspath(path)
    if not os.path.isdir(bundle):
        raise _bad('bundle', path, 'is not a directory')
    config = os.path.join(bundle, CONFIG_FILE)
    try:
        with open(config, 'rb') as handle:
            raw = handle.read()
    except FileNotFoundError:
        raise _bad('bundle', path, f'has no {CONFIG_FILE}') from None
    except OSError as err:
        raise InvalidArgument(f'cannot read {config}: {err.strerror}') from None
    try:
        spec = json.loads(raw.decode('utf-8'))
    except (UnicodeDecodeError, ValueError) as err:
        raise InvalidArgument(f'{config} is not valid JSON: {err}') from None
    except RecursionError:
        raise InvalidArgument(f'{config} is not a runtime spec: nested deeper than the JSON parser '
                              'can follow') from None
    return validate_spec(spec, bundle=bundle)


def parse_user(user):
    """``'uid[:gid]'`` (or an int uid) -> ``{'uid': n, 'gid': m}``; gid defaults to 0."""
    if user is None:
        return {'uid': 0, 'gid': 0}
    if _is_int(user):
        user = str(user)
    match = _USER_RE.fullmatch(user) if isinstance(user, str) else None
    if not match:
        raise _bad('user', user, 'must be "uid" or "uid:gid" with numeric IDs')
    uid = int(match.group(1))
    gid = int(match.group(2) or 0)
    for name, value in (('uid', uid), ('gid', gid)):
        if value > MAX_ID:
            raise _bad(f'user {name}', value, f'must be at most {MAX_ID}')
    return {'uid': uid, 'gid': gid}


def env_list(env):
    """``{'K': 'V'}`` -> ``['K=V']`` (numbers are written as text; other values refused)."""
    if env is None:
        return []
    if not isinstance(env, dict):
        raise _bad('env', env, 'must be a mapping of variable name to value')
    out = []
    for key, value in env.items():
        if not isinstance(key, str) or not _ENV_KEY_RE.match(key):
            raise _bad('env name', key, 'must be a non-empty string without "="')
        if _is_int(value) or isinstance(value, float):
            value = str(value)
        if not isinstance(value, str) or '\x00' in value:
            raise _bad(f'env[{key!r}]', value, 'must be a string')
        out.append(f'{key}={value}')
    return out


def _default_mounts():
    return [
        {'destination': '/proc', 'type': 'proc', 'source': 'proc'},
        {'destination': '/dev', 'type': 'tmpfs', 'source': 'tmpfs',
         'options': ['nosuid', 'strictatime', 'mode=755', 'size=65536k']},
        {'destination': '/dev/pts', 'type': 'devpts', 'source': 'devpts',
         'options': ['nosuid', 'noexec', 'newinstance', 'ptmxmode=0666', 'mode=0620']},
        {'destination': '/dev/shm', 'type': 'tmpfs', 'source': 'shm',
         'options': ['nosuid', 'noexec', 'nodev', 'mode=1777', 'size=65536k']},
        {'destination': '/dev/mqueue', 'type': 'mqueue', 'source': 'mqueue',
         'options': ['nosuid', 'noexec', 'nodev']},
        {'destination': '/sys', 'type': 'sysfs', 'source': 'sysfs',
         'options': ['nosuid', 'noexec', 'nodev', 'ro']},
    ]


def generate_spec(rootfs, args, env=None, cwd='/', user=None, hooks=None, cgroups_path=None,
                  annotations=None, hostname=None, readonly=False, resources=None):
    """A complete runtime-spec 1.x config for an inline container (rootfs must be absolute)."""
    if not isinstance(rootfs, str) or not os.path.isabs(rootfs):
        raise _bad('rootfs', rootfs, 'must be an absolute path')
    _str_list('command', args, allow_empty=False)
    environment = env_list(env)
    if not any(item.startswith('PATH=') for item in environment):
        environment.insert(0, DEFAULT_PATH_ENV)
    if hostname is not None and (not isinstance(hostname, str) or not hostname):
        raise _bad('hostname', hostname, 'must be a non-empty string')
    if cgroups_path is not None and not isinstance(cgroups_path, str):
        raise _bad('cgroups_path', cgroups_path, 'must be a string')
    caps = list(DEFAULT_CAPABILITIES)
    spec = {
        'ociVersion': OCI_VERSION,
        'process': {
            'terminal': False,
            'user': parse_user(user),
            'args': list(args),
            'env': environment,
            'cwd': cwd,
            'capabilities': {'bounding': caps, 'effective': caps, 'permitted': caps},
            'rlimits': [{'type': 'RLIMIT_NOFILE', 'hard': 1024, 'soft': 1024}],
            'noNewPrivileges': True,
        },
        'root': {'path': rootfs, 'readonly': bool(readonly)},
        'mounts': _default_mounts(),
        'linux': {
            # only what the guest honours (docs/oci.md): no device rules, masked or read-only
            # paths, which it would ignore with a warning
            'namespaces': [{'type': t} for t in ('pid', 'network', 'ipc', 'uts', 'mount')],
        },
        'annotations': dict(_annotations('annotations', annotations)),
    }
    if hostname is not None:
        spec['hostname'] = hostname
    if cgroups_path is not None:
        spec['linux']['cgroupsPath'] = cgroups_path
    if resources:
        spec['linux']['resources'] = copy.deepcopy(resources)
    if hooks:
        spec['hooks'] = _spec_hooks(validate_hooks(hooks))
    return validate_spec(spec)


def state(cid, status, pid, bundle, annotations):
    """The runtime-spec state JSON of a container (``pid`` omitted when None)."""
    validate_id(cid, 'container')
    if status not in STATUSES:
        raise _bad('status', status, f"must be one of {', '.join(STATUSES)}")
    if pid is not None and (not _is_int(pid) or pid < 0):
        raise _bad('pid', pid, 'must be a non-negative integer')
    out = {
        'ociVersion': OCI_VERSION,
        'id': cid,
        'status': status,
        'bundle': bundle or '',
        'annotations': dict(_annotations('annotations', annotations)),
    }
    if pid is not None:
        out['pid'] = pid
    return out
