# Copyright: kata.runtime contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The host config file (``/etc/kata-runtime/config.yaml``), its defaults and per-call overrides.

``load_config(path=None, overrides=None)`` reads the file (YAML; JSON is accepted too), checks
every key and value, applies ``overrides`` (module options that are not None) on top and returns
a ``Config``. Every refusal is an ``InvalidArgument`` naming the key and the bad value.
"""

from __future__ import annotations

import json
import os
import re
import reprlib

from ansible_collections.kata.runtime.plugins.module_utils.kata import network
from ansible_collections.kata.runtime.plugins.module_utils.kata.errors import (
    InvalidArgument,
)

DEFAULT_CONFIG_PATH = '/etc/kata-runtime/config.yaml'

ACCELS = ('auto', 'kvm', 'tcg')
MIN_MEMORY_MB = 64
# What QEMU's x86 machines take at most (vCPUs of the pc machine, guest RAM of 4 TiB): a larger
# value is a mistake to refuse now, not a record that fails at every boot.
MAX_VCPUS = 255
MAX_MEMORY_MB = 4 * 1024 * 1024
DOMAIN_PREFIX_PATTERN = r'^[A-Za-z][A-Za-z0-9_.-]{0,31}$'
_DOMAIN_PREFIX_RE = re.compile(DOMAIN_PREFIX_PATTERN, re.ASCII)
_CGROUP_COMPONENT_RE = re.compile(r'^[A-Za-z0-9_.:@-]+$', re.ASCII)

# Order matters only for as_dict() and error messages; ``None`` means "derived".
DEFAULTS = {
    'libvirt_uri': 'qemu:///system',
    'accel': 'auto',
    'image_dir': '/var/lib/kata-runtime/image',
    'kernel': None,   # <image_dir>/vmlinux
    'initrd': None,   # <image_dir>/kata-initrd.img
    'kernel_params': '',
    'vcpus': 1,
    'memory_mb': 256,
    'state_root': '/run/kata-runtime',
    'cgroup_root': '/sys/fs/cgroup',
    'cgroup_parent': 'kata',
    'agent_timeout': 60,
    'hook_timeout': 30,
    'domain_prefix': 'kata-',
    # Caps on what a guest can make land on the host (docs/security.md): its writable share
    # (container output and anything else it writes there) and its serial console log.
    'guest_write_limit_mb': 64,
    'console_log_limit_kb': 1024,
    # A lean VMM (docs/benchmarks.md has the measured trade-offs). Under TCG, the most QEMU may
    # use for translated code (0: QEMU's own default, which lets it grow to 1 GiB; a full boot
    # of our guest translates ~64 MiB of it). And whether, once the agent answers, the VMM's
    # copies of the kernel and initrd are paged out of it (vmm_memory.py). And whether the guest
    # gives the pages it frees back to the host (virtio-balloon free page reporting; never on a
    # VM template or its clones, docs/benchmarks.md).
    'tcg_tb_cache_mb': 32,
    'release_boot_files': True,
    'free_page_reporting': True,
    # VM templates (template.py, docs/templates.md): off by default, as in Kata, because clones
    # share the template's pages with each other (a cross-VM side channel, docs/security.md).
    # ``template`` is the default of kata_sandbox's option of that name; templates live on a
    # tmpfs of ``template_tmpfs_mb`` MiB at <state_root>/templates (host RAM, used only as
    # templates fill it: each holds its guest's memory_mb plus ~0.4 MiB of device state).
    # ``template_pool_size``: paused clones kept ready (accepted and checked; no pool yet).
    'template': False,
    'template_pool_size': 0,
    'template_tmpfs_mb': 2048,
    # The default of kata_sandbox's network option (network.py, docs/networking.md): user (QEMU
    # user-mode networking), none, bridge:<name> or network:<libvirt network>.
    'network': 'user',
}

# Upper bounds keep a typo from turning a cap into no cap at all (both live in host RAM).
MAX_GUEST_WRITE_LIMIT_MB = 64 * 1024
MAX_CONSOLE_LOG_LIMIT_KB = 1024 * 1024
MIN_TB_CACHE_MB = 8
MAX_TB_CACHE_MB = 4096
MAX_TEMPLATE_POOL_SIZE = 1024
# The templates tmpfs holds at least one template of the smallest guest (MIN_MEMORY_MB).
MIN_TEMPLATE_TMPFS_MB = 128
MAX_TEMPLATE_TMPFS_MB = 16 * 1024 * 1024

KERNEL_NAME = 'vmlinux'
INITRD_NAME = 'kata-initrd.img'


# How a refused value is shown. YAML aliases let a short file build a list whose full repr is
# gigabytes ("billion laughs"); nested values are shown cut short, scalars in full.
_SHOW = reprlib.Repr()
_SHOW.maxlevel = 3
_SHOW.maxlist = _SHOW.maxtuple = _SHOW.maxdict = _SHOW.maxset = 8
_SHOW.maxstring = _SHOW.maxother = 200


def _show(value):
    if isinstance(value, (list, tuple, dict, set)):
        return _SHOW.repr(value)
    return repr(value)


def _fail(source, key, value, why):
    raise InvalidArgument(f'invalid {source} {key!r} = {_show(value)}: {why}')


def _string(source, key, value, allow_empty=False):
    if not isinstance(value, str):
        _fail(source, key, value, f'must be a string, not {type(value).__name__}')
    if not allow_empty and not value.strip():
        _fail(source, key, value, 'must not be empty')
    if '\x00' in value or '\n' in value or '\r' in value:
        _fail(source, key, value, 'must not contain NUL or line breaks')
    return value


def _abs_path(source, key, value):
    _string(source, key, value)
    if not os.path.isabs(value):
        _fail(source, key, value, 'must be an absolute path')
    path = os.path.normpath(value)
    # POSIX lets normpath keep exactly two leading slashes ('//' is not '/' to it); to Linux
    # they are the same directory, so '//' must not slip past a check for the root
    return '/' + path.lstrip('/')


def _int(source, key, value, minimum):
    # bool is an int subclass: "vcpus: yes" must not become 1
    if isinstance(value, bool) or not isinstance(value, int):
        _fail(source, key, value, f'must be an integer, not {type(value).__name__}')
    if value < minimum:
        _fail(source, key, value, f'must be at least {minimum}')
    return value


def _bounded_int(minimum, maximum):
    def check(source, key, value):
        _int(source, key, value, minimum)
        if value > maximum:
            _fail(source, key, value, f'must be at most {maximum}')
        return value
    return check


# The longest wait any timeout may ask for (a day): beyond it a number is a mistake, and a big
# enough one (10**400) cannot even be added to a clock reading.
MAX_TIMEOUT = 86400


def _timeout(source, key, value):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        _fail(source, key, value, f'must be a number of seconds, not {type(value).__name__}')
    if not 0 < value <= MAX_TIMEOUT:  # also refuses NaN and what no clock can add (10**400)
        _fail(source, key, value, f'must be a positive number of seconds, at most {MAX_TIMEOUT}')
    return value


def _check_libvirt_uri(source, key, value):
    _string(source, key, value)
    if any(c.isspace() for c in value) or ':' not in value:
        _fail(source, key, value, 'must be a libvirt URI such as qemu:///system')
    return value


def _check_accel(source, key, value):
    _string(source, key, value)
    if value not in ACCELS:
        _fail(source, key, value, f"must be one of {', '.join(ACCELS)}")
    return value


def _check_tb_cache(source, key, value):
    _int(source, key, value, 0)
    if value and not MIN_TB_CACHE_MB <= value <= MAX_TB_CACHE_MB:
        _fail(source, key, value, f"must be 0 (QEMU's default) or from {MIN_TB_CACHE_MB} to {MAX_TB_CACHE_MB} MiB")
    return value


def _bool(source, key, value):
    if not isinstance(value, bool):
        _fail(source, key, value, f'must be true or false, not {type(value).__name__}')
    return value


def _check_optional_path(source, key, value):
    if value is None:
        return None
    return _abs_path(source, key, value)


def _check_state_root(source, key, value):
    path = _abs_path(source, key, value)
    if path == os.sep:
        _fail(source, key, value, 'must not be the file system root')
    return path


def _check_cgroup_parent(source, key, value):
    _string(source, key, value)
    if value.startswith('/'):
        _fail(source, key, value, 'must be a relative path under the cgroup mounts')
    parts = value.split('/')
    for part in parts:
        if part in ('', '.', '..') or not _CGROUP_COMPONENT_RE.match(part):
            _fail(source, key, value,
                  'each path component must be letters, digits, "_", ".", ":", "@" or "-" '
                  '(no empty, "." or ".." components)')
    return value


def _check_domain_prefix(source, key, value):
    _string(source, key, value)
    if not _DOMAIN_PREFIX_RE.fullmatch(value):
        _fail(source, key, value, f'must match {DOMAIN_PREFIX_PATTERN}')
    return value


def check_setting(key, value, source='option'):
    """``value`` for setting ``key`` checked as the host config checks it (a module option
    overriding the config passes the same check); InvalidArgument names the key and value."""
    return _CHECKS[key](source, key, value)


def _check_network(source, key, value):
    _string(source, key, value)
    try:
        network.parse_mode(value, key)
    except InvalidArgument as err:
        _fail(source, key, value, str(err))
    return value.strip()


_CHECKS = {
    'libvirt_uri': _check_libvirt_uri,
    'accel': _check_accel,
    'image_dir': _abs_path,
    'kernel': _check_optional_path,
    'initrd': _check_optional_path,
    'kernel_params': lambda s, k, v: _string(s, k, v, allow_empty=True),
    'vcpus': _bounded_int(1, MAX_VCPUS),
    'memory_mb': _bounded_int(MIN_MEMORY_MB, MAX_MEMORY_MB),
    'state_root': _check_state_root,
    'cgroup_root': _abs_path,
    'cgroup_parent': _check_cgroup_parent,
    'agent_timeout': _timeout,
    'hook_timeout': _timeout,
    'domain_prefix': _check_domain_prefix,
    'guest_write_limit_mb': _bounded_int(1, MAX_GUEST_WRITE_LIMIT_MB),
    'console_log_limit_kb': _bounded_int(64, MAX_CONSOLE_LOG_LIMIT_KB),
    'tcg_tb_cache_mb': _check_tb_cache,
    'release_boot_files': _bool,
    'free_page_reporting': _bool,
    'template': _bool,
    'template_pool_size': _bounded_int(0, MAX_TEMPLATE_POOL_SIZE),
    'template_tmpfs_mb': _bounded_int(MIN_TEMPLATE_TMPFS_MB, MAX_TEMPLATE_TMPFS_MB),
    'network': _check_network,
}


class Config:
    """Resolved runtime settings; every attribute in ``DEFAULTS`` is always set."""

    __slots__ = tuple(DEFAULTS) + ('path',)

    def __init__(self, values=None, path=None):
        """Build from a dict of settings (checked here too); missing keys take the defaults."""
        values = check_values(dict(values or {}), source='setting')
        self.path = path
        for key, default in DEFAULTS.items():
            setattr(self, key, values.get(key, default))
        if self.kernel is None:
            self.kernel = os.path.join(self.image_dir, KERNEL_NAME)
        if self.initrd is None:
            self.initrd = os.path.join(self.image_dir, INITRD_NAME)

    def as_dict(self):
        return {key: getattr(self, key) for key in DEFAULTS}

    def __eq__(self, other):
        return isinstance(other, Config) and self.as_dict() == other.as_dict()

    def __repr__(self):
        return f'Config({self.as_dict()!r})'


def check_values(values, source='config key'):
    """Return a checked copy of ``values``; unknown keys and bad values are InvalidArgument."""
    if not isinstance(values, dict):
        raise InvalidArgument(
            f'{source} must be a mapping of settings, not {type(values).__name__}: {_show(values)}')
    checked = {}
    for key, value in values.items():
        if key not in _CHECKS:
            known = ', '.join(sorted(DEFAULTS))
            raise InvalidArgument(f'unknown {source} {key!r} (known keys: {known})')
        checked[key] = _CHECKS[key](source, key, value)
    return checked


def _parse(path, text):
    try:
        import yaml
    except ImportError:
        yaml = None
    if yaml is None:
        # JSON is a subset of YAML: a JSON config file still works without PyYAML.
        try:
            return json.loads(text) if text.strip() else None
        except (ValueError, RecursionError):  # RecursionError: nested deeper than the parser goes
            raise InvalidArgument(
                f'cannot parse config file {path}: PyYAML is not installed on this host '
                '(install python3-yaml) and the file is not JSON') from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise InvalidArgument(f'config file {path} is not valid YAML: {err}') from None
    except RecursionError:
        raise InvalidArgument(f'config file {path} is not valid YAML: nested deeper than the parser can '
                              'follow') from None
    except (ValueError, TypeError, OverflowError) as err:
        # PyYAML's constructors let these through for values their resolver misjudged, such
        # as "!!int 1e400" or an integer longer than Python converts
        raise InvalidArgument(f'config file {path} is not valid YAML: {err}') from None


def read_config_file(path):
    """Return the checked settings dict of the config file at ``path`` (``{}`` when empty)."""
    try:
        with open(path, 'rb') as handle:
            raw = handle.read()
    except OSError as err:
        raise InvalidArgument(f'cannot read config file {path}: {err.strerror or err}') from None
    try:
        text = raw.decode('utf-8')
    except UnicodeDecodeError as err:
        raise InvalidArgument(f'config file {path} is not UTF-8 text: {err}') from None
    data = _parse(path, text)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise InvalidArgument(
            f'config file {path} must hold a mapping of settings, not {type(data).__name__}')
    return check_values(data, source=f'key in config file {path}:')


def load_config(path=None, overrides=None):
    """Return the ``Config`` from ``path`` (default ``DEFAULT_CONFIG_PATH``) plus ``overrides``.

    A missing file at the default path means "all defaults"; a missing file at a path that was
    asked for explicitly is an error. Override values that are None are ignored, so module
    options can be passed straight through.
    """
    explicit = path is not None
    if not explicit:
        path = DEFAULT_CONFIG_PATH
    if not isinstance(path, str) or not path:
        raise InvalidArgument(f'invalid config file path {path!r}: must be a non-empty string')
    # Check the overrides first: bad input is refused before any file is even read.
    if overrides is not None and not isinstance(overrides, dict):
        raise InvalidArgument(f'config overrides must be a mapping, not {overrides!r}')
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    checked_overrides = check_values(given, source='option')
    if not explicit and not os.path.exists(path):
        values = {}
    elif explicit and not os.path.exists(path):
        raise InvalidArgument(f'config file {path} does not exist')
    else:
        values = read_config_file(path)
    values.update(checked_overrides)
    return Config(values, path=path)
