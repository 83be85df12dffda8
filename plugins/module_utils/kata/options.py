# Copyright: kata.runtime contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The options of the lifecycle modules, each declared once.

An ``OptionTable`` lists a module's options (``config`` and ``runtime_root`` aside, see
``common.COMMON_ARGS``). Each ``Option`` carries its argument spec, its kind and the settings
key it fills. From the table come:

- the argument spec (``argument_spec()``) and the module's other ``AnsibleModule`` arguments;
- the request (``request(params)``): the setting options as given, scalar-valued dicts coerced
  to strings, ready for ``sandbox.settings_from`` / ``container.settings_from``;
- what was given explicitly (``given(params)``), by option name;
- the comparison of a record with the desired settings (``compare()``), as ``Differences``.

Kinds:

- ``IMMUTABLE``: a setting fixed at creation; a different value needs ``recreate``;
- ``MUTABLE``: a setting kept in the record only, updated in place;
- ``CONTROL``: how the module acts (``state``, ``force``, ``timeout``, ...), never compared.
  A control option with a ``key`` still goes into the request (``template``: how a VM comes
  up, not what it is).

Plain data and no Ansible: the core reads the tables too (``sandbox.update`` accepts only the
sandbox's mutable settings).
"""

from __future__ import annotations

import copy

from ansible_collections.kata.runtime.plugins.module_utils.kata.runtime import coerce_str_dict

IMMUTABLE = 'immutable'
MUTABLE = 'mutable'
CONTROL = 'control'
KINDS = (IMMUTABLE, MUTABLE, CONTROL)


class Option(object):
    """One module option: its name, kind, argument spec and the settings key it fills.

    ``key`` defaults to the name for a setting (immutable or mutable) and to None (not part of
    the request) for a control. ``record_key`` is where a record holds the setting when it is
    not ``key`` (a sandbox records the accel asked for as ``accel_requested``). ``str_dict``
    marks a dict whose scalar values become strings (YAML reads ``tier: 1`` as an int).
    """

    def __init__(self, name, kind, spec, key=None, record_key=None, str_dict=False):
        if kind not in KINDS:
            raise ValueError('option %s: kind must be one of %s, got %r' % (name, ', '.join(KINDS), kind))
        self.name = name
        self.kind = kind
        self.spec = spec
        self.key = key or (name if kind != CONTROL else None)
        self.record_key = record_key or self.key
        self.str_dict = str_dict

    def __repr__(self):
        return 'Option(%r, %r)' % (self.name, self.kind)


class OptionTable(object):
    """A lifecycle module's options, in order; ``module_args`` go to ``AnsibleModule`` as they are."""

    def __init__(self, *options, **module_args):
        self.options = options
        self.by_name = dict((option.name, option) for option in options)
        if len(self.by_name) != len(options):
            raise ValueError('an option is declared twice')
        self.module_args = module_args

    def argument_spec(self):
        """The module's own options (a fresh dict: AnsibleModule fills it in)."""
        return dict((option.name, copy.deepcopy(option.spec)) for option in self.options)

    def settings(self):
        """The options that make up the request (every one with a settings key), in order."""
        return [option for option in self.options if option.key]

    def keys(self, kind):
        """The settings keys of the options of ``kind``, in order."""
        return tuple(option.key for option in self.options if option.kind == kind and option.key)

    def request(self, params):
        """``{option name: value}`` of the setting options as given (None = not given)."""
        out = {}
        for option in self.settings():
            value = params.get(option.name)
            out[option.name] = coerce_str_dict(value, option.name) if option.str_dict else value
        return out

    def given(self, params):
        """The names of the setting options given explicitly (not None)."""
        return [option.name for option in self.settings() if params.get(option.name) is not None]

    def compare(self, record, settings, given=None):
        """The settings that differ between ``record`` (active) and ``settings`` (parameter).

        Immutable settings come first, then mutable ones, each in table order. ``given`` (option
        names) limits the comparison to what the user asked for, so a changed host default is
        not a difference; None compares everything. ``record`` is a model record (a setting is
        its attribute ``record_key``). Returns ``Differences`` keyed on the settings keys.
        """
        diffs = Differences()
        for kind in (IMMUTABLE, MUTABLE):
            for option in self.options:
                if option.kind != kind or not option.key or (given is not None and option.name not in given):
                    continue
                current = getattr(record, option.record_key)
                desired = settings.get(option.key)
                if current != desired:
                    diffs.add(option.key, parameter=desired, active=current)
        return diffs

    def kind_of(self, key):
        """The kind of the option filling settings key ``key`` (None for an unknown key)."""
        for option in self.options:
            if option.key == key:
                return option.kind
        return None


class Differences(object):
    """Which settings differ between what is asked (``parameter``) and what is (``active``).

    Each difference is recorded once, by name, in the order found. The same record decides
    (``has_differences()``, ``names()``), feeds ``--diff`` (``get_before_after()``) and the
    error that names immutable fields.
    """

    def __init__(self):
        self._items = []

    def add(self, name, parameter=None, active=None):
        """Record that ``name`` differs: it should be ``parameter`` and is ``active``."""
        for item in self._items:
            if item['name'] == name:
                item['parameter'] = parameter
                item['active'] = active
                return
        self._items.append({'name': name, 'parameter': parameter, 'active': active})

    def compare(self, name, parameter, active):
        """Add ``name`` when ``parameter`` is given (not None) and differs from ``active``.

        Return True when a difference was recorded.
        """
        if parameter is None or parameter == active:
            return False
        self.add(name, parameter=parameter, active=active)
        return True

    def merge(self, other):
        for item in other._items:
            self.add(item['name'], parameter=item['parameter'], active=item['active'])

    def has_differences(self):
        return bool(self._items)

    __bool__ = has_differences

    def __len__(self):
        return len(self._items)

    def has_difference_for(self, name):
        return any(item['name'] == name for item in self._items)

    def names(self):
        """The names of the differing settings, in the order found."""
        return [item['name'] for item in self._items]

    def get_before_after(self):
        """Return ``(before, after)`` dicts of the differing settings, for ``--diff``."""
        before = {}
        after = {}
        for item in self._items:
            before[item['name']] = item['active']
            after[item['name']] = item['parameter']
        return before, after

    def as_list(self):
        """``[{'name', 'parameter', 'active'}]``, for results and messages."""
        return [dict(item) for item in self._items]


# ---------------------------------------------------------------------------------------------
# the tables (options two modules share are declared once, here)

NAME = Option('name', CONTROL, dict(type='str', required=True, aliases=['id']))
FORCE = Option('force', CONTROL, dict(type='bool', default=False))
RECREATE = Option('recreate', CONTROL, dict(type='bool', default=False))
TIMEOUT = Option('timeout', CONTROL, dict(type='int'))
VCPUS = Option('vcpus', IMMUTABLE, dict(type='int'))
MEMORY_MB = Option('memory_mb', IMMUTABLE, dict(type='int'))
KERNEL = Option('kernel', IMMUTABLE, dict(type='path'))
INITRD = Option('initrd', IMMUTABLE, dict(type='path'))
ACCEL = Option('accel', IMMUTABLE, dict(type='str', choices=['auto', 'kvm', 'tcg']), record_key='accel_requested')
HOOKS = Option('hooks', IMMUTABLE, dict(type='dict'))
CGROUPS_PATH = Option('cgroups_path', IMMUTABLE, dict(type='str'))
LABELS = Option('labels', MUTABLE, dict(type='dict'), str_dict=True)
# user | none | bridge:<name> | network:<name> (network.py); the host config's network by default
NETWORK = Option('network', IMMUTABLE, dict(type='str'), record_key='network_spec')

SANDBOX_OPTIONS = OptionTable(
    NAME,
    Option('state', CONTROL, dict(type='str', default='running', choices=['running', 'stopped', 'paused', 'absent'])),
    FORCE,
    VCPUS,
    MEMORY_MB,
    KERNEL,
    INITRD,
    Option('kernel_params', IMMUTABLE, dict(type='str')),
    ACCEL,
    CGROUPS_PATH,
    HOOKS,
    LABELS,
    Option('annotations', MUTABLE, dict(type='dict'), str_dict=True),
    NETWORK,
    # HOST:CONTAINER[/tcp|udp] strings or dicts (network.parse_ports); forwards are added when the
    # VM starts, so a change needs recreate
    Option('ports', IMMUTABLE, dict(type='list', elements='raw'), record_key='network_ports'),
    # how the VM comes up, not what it is: never a difference that needs recreate
    Option('template', CONTROL, dict(type='bool'), key='template'),
    RECREATE,
    TIMEOUT,
)

CONTAINER_OPTIONS = OptionTable(
    NAME,
    Option('sandbox', CONTROL, dict(type='str')),
    Option('state', CONTROL, dict(type='str', default='running', choices=['running', 'created', 'stopped', 'absent'])),
    FORCE,
    Option('bundle', IMMUTABLE, dict(type='path')),
    Option('rootfs', IMMUTABLE, dict(type='path')),
    Option('readonly_rootfs', IMMUTABLE, dict(type='bool')),
    Option('command', IMMUTABLE, dict(type='list', elements='str'), key='args'),
    Option('env', IMMUTABLE, dict(type='dict'), str_dict=True),  # oci.generate_spec makes the K=V list
    Option('cwd', IMMUTABLE, dict(type='str', default='/')),
    Option('user', IMMUTABLE, dict(type='str')),
    # HOST:CONTAINER[:ro] or dicts; they become bind mounts, recorded with config.json's mounts
    Option('volumes', IMMUTABLE, dict(type='list', elements='raw'), key='mounts'),
    HOOKS,
    CGROUPS_PATH,
    LABELS,
    Option('annotations', IMMUTABLE, dict(type='dict'), str_dict=True),
    # limits inside the guest: a change is applied in place (container.update_limits)
    Option('memory_mb', MUTABLE, dict(type='int')),
    Option('cpus', MUTABLE, dict(type='float')),
    Option('pids_limit', MUTABLE, dict(type='int')),
    Option('signal', CONTROL, dict(type='str', default='SIGTERM')),
    Option('stop_timeout', CONTROL, dict(type='int', default=10)),
    RECREATE,
    mutually_exclusive=[('bundle', 'rootfs'), ('bundle', 'command'), ('bundle', 'env'), ('bundle', 'user')],
)

# A template's shape: the settings that pick (and build) it; nothing is compared.
TEMPLATE_OPTIONS = OptionTable(
    Option('state', CONTROL, dict(type='str', default='present', choices=['present', 'absent'])),
    VCPUS,
    MEMORY_MB,
    ACCEL,
    KERNEL,
    INITRD,
    NETWORK,
    FORCE,
    TIMEOUT,
)
