# Copyright: kata.runtime contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What of a runtime-spec config the guest honours, and how: every field is supported,
refused (``InvalidArgument`` naming it) or ignored with a warning that names it. Nothing is
dropped silently (docs/oci.md holds the same table for people).

- ``check_fields(spec)``: refuses what cannot be honoured, returns the warnings.
- ``limits_from(...)``: ``linux.resources`` and the inline options as the cgroup v2 files the
  agent writes in the container's cgroup in the guest (``{'memory.max': '67108864', ...}``).
- ``process_from(spec)``: the process settings exec_init applies in the guest (capabilities as
  bit masks, rlimits by number, no_new_privileges, umask, additional gids, oom_score_adj).
- ``check_fits(limits, sandbox record)``: a limit larger than the sandbox is refused.

The spec lets a runtime ignore unknown properties: they are warnings, never errors.
"""

from __future__ import annotations

from ansible_collections.kata.runtime.plugins.module_utils.kata.errors import InvalidArgument
from ansible_collections.kata.runtime.plugins.module_utils.kata.guest import contract

# <linux/capability.h>, 0..40 (CAP_LAST_CAP of the guest kernel)
CAPABILITIES = (
    'CAP_CHOWN', 'CAP_DAC_OVERRIDE', 'CAP_DAC_READ_SEARCH', 'CAP_FOWNER', 'CAP_FSETID', 'CAP_KILL',
    'CAP_SETGID', 'CAP_SETUID', 'CAP_SETPCAP', 'CAP_LINUX_IMMUTABLE', 'CAP_NET_BIND_SERVICE',
    'CAP_NET_BROADCAST', 'CAP_NET_ADMIN', 'CAP_NET_RAW', 'CAP_IPC_LOCK', 'CAP_IPC_OWNER', 'CAP_SYS_MODULE',
    'CAP_SYS_RAWIO', 'CAP_SYS_CHROOT', 'CAP_SYS_PTRACE', 'CAP_SYS_PACCT', 'CAP_SYS_ADMIN', 'CAP_SYS_BOOT',
    'CAP_SYS_NICE', 'CAP_SYS_RESOURCE', 'CAP_SYS_TIME', 'CAP_SYS_TTY_CONFIG', 'CAP_MKNOD', 'CAP_LEASE',
    'CAP_AUDIT_WRITE', 'CAP_AUDIT_CONTROL', 'CAP_SETFCAP', 'CAP_MAC_OVERRIDE', 'CAP_MAC_ADMIN', 'CAP_SYSLOG',
    'CAP_WAKE_ALARM', 'CAP_BLOCK_SUSPEND', 'CAP_AUDIT_READ', 'CAP_PERFMON', 'CAP_BPF', 'CAP_CHECKPOINT_RESTORE',
)
CAP_SETS = ('bounding', 'effective', 'permitted', 'inheritable', 'ambient')

# <asm-generic/resource.h>
RLIMITS = {
    'RLIMIT_CPU': 0, 'RLIMIT_FSIZE': 1, 'RLIMIT_DATA': 2, 'RLIMIT_STACK': 3, 'RLIMIT_CORE': 4,
    'RLIMIT_RSS': 5, 'RLIMIT_NPROC': 6, 'RLIMIT_NOFILE': 7, 'RLIMIT_MEMLOCK': 8, 'RLIMIT_AS': 9,
    'RLIMIT_LOCKS': 10, 'RLIMIT_SIGPENDING': 11, 'RLIMIT_MSGQUEUE': 12, 'RLIMIT_NICE': 13,
    'RLIMIT_RTPRIO': 14, 'RLIMIT_RTTIME': 15,
}
U64 = 2 ** 64 - 1
MAX_GROUPS = 64
LIMIT_FILES = contract.LIMIT_FILES
# What a limit file goes back to when an update drops the limit.
LIMIT_DEFAULTS = {'cpuset.cpus': '', 'cpuset.mems': '', 'cpu.weight': '100', 'cpu.max': 'max 100000',
                  'cpu.max.burst': '0', 'cpu.idle': '0', 'memory.low': '0', 'memory.max': 'max',
                  'memory.swap.max': 'max', 'pids.max': 'max'}
CPU_PERIOD = 100000  # cpu.max's default period (microseconds)
MIB = 1024 * 1024

# The namespaces a container always gets in the guest (busybox unshare -p -m -u -i); the
# network namespace is the sandbox's, shared by its containers (the networking work).
OWN_NAMESPACES = ('pid', 'mount', 'uts', 'ipc')

# ------------------------------------------------------------------------------- the table
# Fields (dotted paths) and what happens to them. SUPPORTED: honoured. WARN: the spec lets a
# runtime ignore it, or it has no meaning in a guest: it is ignored with a warning naming it.
# REFUSE: a non-empty value fails create with a message naming it.
SUPPORTED = 'supported'
WARN = 'ignored with a warning'
REFUSE = 'refused'

TOP_FIELDS = {
    'ociVersion': SUPPORTED, 'root': SUPPORTED, 'mounts': SUPPORTED, 'process': SUPPORTED,
    'hostname': SUPPORTED, 'domainname': SUPPORTED, 'hooks': SUPPORTED, 'annotations': SUPPORTED,
    'linux': SUPPORTED, 'solaris': REFUSE, 'windows': REFUSE, 'vm': REFUSE, 'zos': REFUSE,
    'freebsd': REFUSE,
}
ROOT_FIELDS = {'path': SUPPORTED, 'readonly': SUPPORTED}
PROCESS_FIELDS = {
    'terminal': SUPPORTED,  # true: a warning (no pty; output captured as stdout/stderr)
    'consoleSize': WARN, 'cwd': SUPPORTED, 'env': SUPPORTED, 'args': SUPPORTED,
    'commandLine': REFUSE, 'user': SUPPORTED, 'capabilities': SUPPORTED, 'rlimits': SUPPORTED,
    'noNewPrivileges': SUPPORTED, 'oomScoreAdj': SUPPORTED, 'apparmorProfile': WARN,
    'selinuxLabel': WARN, 'ioPriority': WARN, 'scheduler': REFUSE, 'execCPUAffinity': REFUSE,
}
USER_FIELDS = {'uid': SUPPORTED, 'gid': SUPPORTED, 'umask': SUPPORTED, 'additionalGids': SUPPORTED,
               'username': REFUSE}
LINUX_FIELDS = {
    'namespaces': SUPPORTED, 'uidMappings': REFUSE, 'gidMappings': REFUSE, 'timeOffsets': REFUSE,
    'devices': REFUSE, 'cgroupsPath': SUPPORTED, 'resources': SUPPORTED, 'unified': REFUSE,
    'intelRdt': REFUSE, 'sysctl': REFUSE, 'seccomp': WARN, 'rootfsPropagation': WARN,
    'maskedPaths': WARN, 'readonlyPaths': WARN, 'mountLabel': WARN, 'personality': SUPPORTED,
    'memoryPolicy': REFUSE, 'netDevices': REFUSE,
}
RESOURCES_FIELDS = {
    'memory': SUPPORTED, 'cpu': SUPPORTED, 'pids': SUPPORTED, 'devices': WARN, 'blockIO': WARN,
    'hugepageLimits': WARN, 'network': WARN, 'rdma': WARN, 'unified': REFUSE,
}
MEMORY_FIELDS = {'limit': SUPPORTED, 'reservation': SUPPORTED, 'swap': SUPPORTED, 'kernel': WARN,
                 'kernelTCP': WARN, 'swappiness': WARN, 'disableOOMKiller': REFUSE, 'useHierarchy': WARN,
                 'checkBeforeUpdate': WARN}
CPU_FIELDS = {'shares': SUPPORTED, 'quota': SUPPORTED, 'period': SUPPORTED, 'burst': SUPPORTED,
              'realtimeRuntime': REFUSE, 'realtimePeriod': REFUSE, 'cpus': SUPPORTED, 'mems': SUPPORTED,
              'idle': SUPPORTED}
PIDS_FIELDS = {'limit': SUPPORTED}
NAMESPACE_TYPES = {'pid': SUPPORTED, 'mount': SUPPORTED, 'uts': SUPPORTED, 'ipc': SUPPORTED,
                   'network': SUPPORTED, 'cgroup': WARN, 'user': REFUSE, 'time': REFUSE}


def _refuse(field, value, why):
    return InvalidArgument('OCI config field %s (%s) is not supported: %s' % (field, _short(value), why))


def _short(value):
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + '...'


def _empty(value):
    return value is None or value in ({}, [], '', False)


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _walk(prefix, obj, table, warnings, why=None):
    """Check one object's keys against its table: refuse or warn, return the supported keys."""
    if obj is None:
        return {}
    if not isinstance(obj, dict):
        raise InvalidArgument('invalid OCI config field %s %s: must be an object' % (prefix, _short(obj)))
    for key in sorted(obj):
        field = '%s.%s' % (prefix, key) if prefix else key
        status = table.get(key)
        value = obj[key]
        if status is None:
            warnings.append('OCI config field %s is unknown to this runtime and ignored' % field)
        elif status == REFUSE and not _empty(value):
            raise _refuse(field, value, (why or {}).get(key, 'the guest cannot honour it'))
        elif status == WARN and not _empty(value):
            warnings.append('OCI config field %s is ignored: %s' % (field, (why or {}).get(key, 'not applied in the guest')))
    return obj


_WHY = {
    'solaris': 'this runtime runs Linux containers', 'windows': 'this runtime runs Linux containers',
    'vm': 'the sandbox is the VM: a container cannot ask for its own', 'zos': 'this runtime runs Linux containers',
    'freebsd': 'this runtime runs Linux containers',
    'commandLine': 'it is for Windows; give process.args', 'username': 'it is for Windows; give uid and gid',
    'consoleSize': 'the container has no terminal', 'apparmorProfile': 'the guest has no AppArmor',
    'selinuxLabel': 'the guest has no SELinux', 'ioPriority': 'I/O priorities are not set in the guest',
    'scheduler': 'scheduling policies are not set in the guest',
    'execCPUAffinity': 'CPU affinity is set with linux.resources.cpu.cpus',
    'uidMappings': 'user namespaces are not supported', 'gidMappings': 'user namespaces are not supported',
    'timeOffsets': 'time namespaces are not supported', 'devices': 'device nodes are not created in the guest',
    'unified': 'raw cgroup v2 files are not written; use memory, cpu and pids',
    'intelRdt': 'the guest has no resctrl', 'sysctl': 'sysctls are not set in the guest',
    'seccomp': 'no seccomp filter is installed in the guest (the VM is the boundary, as with Kata\'s default)',
    'rootfsPropagation': 'container mounts are private to its mount namespace',
    'maskedPaths': 'paths are not masked; /proc and /sys are the guest\'s own',
    'readonlyPaths': 'paths are not made read-only; /proc and /sys are the guest\'s own',
    'mountLabel': 'the guest has no SELinux',
    'memoryPolicy': 'NUMA memory policies are not set in the guest',
    'netDevices': 'network devices belong to the sandbox',
    'blockIO': 'containers have no block devices of their own in the guest',
    'hugepageLimits': 'the guest has no huge page pool', 'network': 'cgroup v2 has no net_cls/net_prio',
    'rdma': 'the guest has no RDMA devices',
    'kernel': 'deprecated; cgroup v2 accounts kernel memory in memory.max',
    'kernelTCP': 'deprecated; cgroup v2 accounts kernel memory in memory.max',
    'swappiness': 'cgroup v2 has no per-cgroup swappiness', 'disableOOMKiller': 'cgroup v2 cannot disable the OOM killer',
    'useHierarchy': 'cgroup v2 is always hierarchical', 'checkBeforeUpdate': 'updates are checked against the sandbox',
    'realtimeRuntime': 'the guest has no real-time group scheduling',
    'realtimePeriod': 'the guest has no real-time group scheduling',
}


def check_fields(spec):
    """Refuse what the guest cannot honour (InvalidArgument naming the field); return the
    warnings for what is ignored. ``mounts`` is the volumes work's; the network namespace the
    networking work's (a container shares the sandbox's)."""
    warnings = []
    _walk('', spec, TOP_FIELDS, warnings, _WHY)
    _walk('root', spec.get('root'), ROOT_FIELDS, warnings, _WHY)
    process = _walk('process', spec.get('process'), PROCESS_FIELDS, warnings, _WHY)
    _walk('process.user', process.get('user'), USER_FIELDS, warnings, _WHY)
    if process.get('terminal') is True:
        warnings.append('OCI config field process.terminal (true) is ignored: the container runs without a '
                        'terminal; its output is captured in stdout_path and stderr_path')
    elif process.get('terminal') not in (None, False):
        raise InvalidArgument('invalid OCI config field process.terminal %s: must be true or false'
                              % _short(process['terminal']))
    linux = _walk('linux', spec.get('linux'), LINUX_FIELDS, warnings, _WHY)
    _check_namespaces(linux.get('namespaces'), warnings)
    personality = linux.get('personality')
    if personality is not None:
        if not isinstance(personality, dict) or personality.get('domain', 'LINUX') != 'LINUX' \
                or not _empty(personality.get('flags')):
            raise _refuse('linux.personality', personality, 'only the LINUX domain without flags runs in the guest')
    resources = _walk('linux.resources', linux.get('resources'), RESOURCES_FIELDS, warnings, _WHY)
    _walk('linux.resources.memory', resources.get('memory'), MEMORY_FIELDS, warnings, _WHY)
    _walk('linux.resources.cpu', resources.get('cpu'), CPU_FIELDS, warnings, _WHY)
    _walk('linux.resources.pids', resources.get('pids'), PIDS_FIELDS, warnings, _WHY)
    return warnings


def _check_namespaces(namespaces, warnings):
    if namespaces is None:
        return
    if not isinstance(namespaces, list):
        raise InvalidArgument('invalid OCI config field linux.namespaces %s: must be a list' % _short(namespaces))
    for index, entry in enumerate(namespaces):
        field = 'linux.namespaces[%d]' % index
        if not isinstance(entry, dict) or not isinstance(entry.get('type'), str):
            raise InvalidArgument('invalid OCI config field %s %s: must be an object with a type' % (field, _short(entry)))
        kind = entry['type']
        status = NAMESPACE_TYPES.get(kind)
        if status is None:
            raise _refuse(field, entry, 'unknown namespace type %r' % kind)
        if status == REFUSE:
            raise _refuse(field, entry, 'the guest does not create %s namespaces for containers' % kind)
        if kind == 'network':
            continue  # the sandbox's network namespace, shared by its containers
        if entry.get('path'):
            raise _refuse(field + '.path', entry['path'], 'a container cannot join an existing %s namespace' % kind)
        if status == WARN:
            warnings.append('OCI config field %s (%s namespace) is ignored: the container shares the guest\'s '
                            'cgroup namespace and has no cgroupfs mounted' % (field, kind))


# ------------------------------------------------------------------------------- limits

def _int_field(field, value, low=0, high=U64):
    if value is None:
        return None
    if not _is_int(value) or not low <= value <= high:
        raise InvalidArgument('invalid OCI config field %s %s: must be an integer from %d to %d'
                              % (field, _short(value), low, high))
    return value


def _cpu_list(field, value):
    if value is None or value == '':
        return None
    if not isinstance(value, str) or len(value) > 256 or not all(c in '0123456789,-' for c in value):
        raise InvalidArgument('invalid OCI config field %s %s: must be a CPU list such as "0-1,3"' % (field, _short(value)))
    return value


def cpus_in_list(value):
    """The highest CPU number in a cpuset list plus one (``'0-1,3'`` -> 4)."""
    top = -1
    for part in value.split(','):
        if not part:
            raise InvalidArgument('invalid CPU list %r: empty element' % value)
        low, _sep, high = part.partition('-')
        try:
            numbers = [int(low)] + ([int(high)] if high else [])
        except ValueError:
            raise InvalidArgument('invalid CPU list %r' % value) from None
        if len(numbers) == 2 and numbers[1] < numbers[0]:
            raise InvalidArgument('invalid CPU list %r: %s is a descending range' % (value, part))
        top = max([top] + numbers)
    return top + 1


def limits_from(spec, memory_mb=None, cpus=None, pids_limit=None):
    """The cgroup v2 files (name -> value) for the container's cgroup in the guest.

    From ``linux.resources`` first; the inline options ``memory_mb``, ``cpus`` (a fraction of
    CPUs: cpu.max quota over a 100 ms period) and ``pids_limit`` override it.
    """
    resources = ((spec.get('linux') or {}).get('resources') or {}) if spec else {}
    out = {}
    memory = resources.get('memory') or {}
    limit = memory.get('limit')
    if limit is not None and limit != -1:
        limit = _int_field('linux.resources.memory.limit', limit, 1)
        out['memory.max'] = str(limit)
    reservation = memory.get('reservation')
    if reservation is not None and reservation != -1:
        out['memory.low'] = str(_int_field('linux.resources.memory.reservation', reservation, 0))
    swap = memory.get('swap')
    if swap is not None:
        if swap == -1:
            out['memory.swap.max'] = 'max'
        else:
            swap = _int_field('linux.resources.memory.swap', swap, 0)
            if limit is None or limit == -1:
                raise InvalidArgument('invalid OCI config field linux.resources.memory.swap %d: it counts memory '
                                      'plus swap, so it needs linux.resources.memory.limit' % swap)
            if swap < limit:
                raise InvalidArgument('invalid OCI config field linux.resources.memory.swap %d: must be at least '
                                      'linux.resources.memory.limit (%d): it counts memory plus swap' % (swap, limit))
            out['memory.swap.max'] = str(swap - limit)
    cpu = resources.get('cpu') or {}
    shares = _int_field('linux.resources.cpu.shares', cpu.get('shares'), 2, 262144)
    if shares is not None:
        # runc's conversion of cgroup v1 shares (2..262144) to v2 weight (1..10000)
        out['cpu.weight'] = str(1 + ((shares - 2) * 9999) // 262142)
    quota = cpu.get('quota')
    period = _int_field('linux.resources.cpu.period', cpu.get('period'), 1000, 1000000)
    if quota is not None and quota != -1 and quota != 0:
        quota = _int_field('linux.resources.cpu.quota', quota, 1000, 2 ** 53)
        out['cpu.max'] = '%d %d' % (quota, period or CPU_PERIOD)
    elif period is not None:
        out['cpu.max'] = 'max %d' % period
    burst = _int_field('linux.resources.cpu.burst', cpu.get('burst'), 0, 2 ** 53)
    if burst is not None:
        out['cpu.max.burst'] = str(burst)
    idle = cpu.get('idle')
    if idle is not None:
        out['cpu.idle'] = str(_int_field('linux.resources.cpu.idle', idle, 0, 1))
    cpuset = _cpu_list('linux.resources.cpu.cpus', cpu.get('cpus'))
    if cpuset:
        cpus_in_list(cpuset)
        out['cpuset.cpus'] = cpuset
    mems = _cpu_list('linux.resources.cpu.mems', cpu.get('mems'))
    if mems:
        out['cpuset.mems'] = mems
    pids = (resources.get('pids') or {}).get('limit')
    if pids is not None:
        out['pids.max'] = 'max' if pids in (-1, 0) else str(_int_field('linux.resources.pids.limit', pids, 1, 2 ** 31))
    if memory_mb is not None:
        if not _is_int(memory_mb) or memory_mb < 1:
            raise InvalidArgument('invalid memory_mb %r: must be a positive number of MiB' % (memory_mb,))
        out['memory.max'] = str(memory_mb * MIB)
    if cpus is not None:
        if isinstance(cpus, bool) or not isinstance(cpus, (int, float)) or not 0.01 <= cpus <= 1024:
            raise InvalidArgument('invalid cpus %r: must be a number of CPUs from 0.01' % (cpus,))
        out['cpu.max'] = '%d %d' % (round(cpus * CPU_PERIOD), CPU_PERIOD)
    if pids_limit is not None:
        if not _is_int(pids_limit) or pids_limit < 1:
            raise InvalidArgument('invalid pids_limit %r: must be a positive integer' % (pids_limit,))
        out['pids.max'] = str(pids_limit)
    return out


def check_fits(limits, sandbox):
    """Refuse a limit larger than the sandbox (its memory_mb, its vcpus), naming it."""
    sid, memory_mb, vcpus = sandbox.id, sandbox.memory_mb, sandbox.vcpus
    mem = limits.get('memory.max')
    if mem and mem != 'max' and memory_mb and int(mem) > memory_mb * MIB:
        raise InvalidArgument('memory limit %d MiB (%d bytes) is larger than sandbox %s (memory_mb %d)'
                              % (-(-int(mem) // MIB), int(mem), sid, memory_mb))
    cpu_max = limits.get('cpu.max')
    if cpu_max and vcpus:
        quota, _sep, period = cpu_max.partition(' ')
        if quota != 'max' and int(quota) > vcpus * int(period):
            raise InvalidArgument('CPU limit %g CPUs (cpu.max %s) is more than sandbox %s has (vcpus %d)'
                                  % (int(quota) / int(period), cpu_max, sid, vcpus))
    cpuset = limits.get('cpuset.cpus')
    if cpuset and vcpus and cpus_in_list(cpuset) > vcpus:
        raise InvalidArgument('CPU set %s names a CPU that sandbox %s does not have (vcpus %d: 0-%d)'
                              % (cpuset, sid, vcpus, vcpus - 1))


# ------------------------------------------------------------------------------- process

def _caps_mask(field, names):
    if names is None:
        return 0
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise InvalidArgument('invalid OCI config field %s %s: must be a list of capability names' % (field, _short(names)))
    mask = 0
    for name in names:
        key = name.upper()
        if not key.startswith('CAP_'):
            key = 'CAP_' + key
        if key not in CAPABILITIES:
            raise InvalidArgument('invalid OCI config field %s: unknown capability %r' % (field, name))
        mask |= 1 << CAPABILITIES.index(key)
    return mask


def caps_names(mask):
    return [name for bit, name in enumerate(CAPABILITIES) if mask >> bit & 1]


def process_from(spec, warnings=None):
    """The process settings the guest applies before exec (a JSON-able dict); what is not
    applied is appended to ``warnings``."""
    process = spec.get('process') or {}
    out = {'no_new_privileges': False, 'capabilities': None, 'rlimits': [], 'umask': None,
           'additional_gids': [], 'oom_score_adj': None}
    nnp = process.get('noNewPrivileges', False)
    if not isinstance(nnp, bool):
        raise InvalidArgument('invalid OCI config field process.noNewPrivileges %s: must be true or false' % _short(nnp))
    out['no_new_privileges'] = nnp
    caps = process.get('capabilities')
    if caps is not None:
        if not isinstance(caps, dict):
            raise InvalidArgument('invalid OCI config field process.capabilities %s: must be an object' % _short(caps))
        unknown = sorted(set(caps) - set(CAP_SETS))
        if unknown:
            raise InvalidArgument('invalid OCI config field process.capabilities: unknown set %s (sets: %s)'
                                  % (', '.join(unknown), ', '.join(CAP_SETS)))
        masks = {name: _caps_mask('process.capabilities.' + name, caps.get(name)) for name in CAP_SETS}
        ambient = masks['ambient'] & ~(masks['permitted'] & masks['inheritable'])
        if ambient:
            # The kernel raises an ambient capability only when it is permitted and inheritable;
            # like runc (whose `runc spec` lists ambient capabilities and no inheritable set),
            # the others are not raised, with a warning.
            masks['ambient'] &= ~ambient
            if warnings is not None:
                warnings.append('OCI config field process.capabilities.ambient: %s not raised (an ambient '
                                'capability must also be permitted and inheritable)' % ', '.join(caps_names(ambient)))
        if masks['effective'] & ~masks['permitted']:
            raise InvalidArgument('invalid OCI config field process.capabilities.effective: %s not permitted'
                                  % ', '.join(caps_names(masks['effective'] & ~masks['permitted'])))
        out['capabilities'] = masks
    rlimits = process.get('rlimits')
    if rlimits is not None:
        if not isinstance(rlimits, list):
            raise InvalidArgument('invalid OCI config field process.rlimits %s: must be a list' % _short(rlimits))
        seen = set()
        for index, item in enumerate(rlimits):
            field = 'process.rlimits[%d]' % index
            if not isinstance(item, dict) or item.get('type') not in RLIMITS:
                raise InvalidArgument('invalid OCI config field %s %s: type must be one of %s'
                                      % (field, _short(item), ', '.join(sorted(RLIMITS))))
            if item['type'] in seen:
                raise InvalidArgument('invalid OCI config field %s: %s given twice' % (field, item['type']))
            seen.add(item['type'])
            soft = _int_field(field + '.soft', item.get('soft'))
            hard = _int_field(field + '.hard', item.get('hard'))
            if soft is None or hard is None:
                raise InvalidArgument('invalid OCI config field %s: soft and hard are required' % field)
            if soft > hard:
                raise InvalidArgument('invalid OCI config field %s: soft %d is above hard %d' % (field, soft, hard))
            # RLIM_INFINITY is -1 to the guest (any value of 2**63 and up means no limit)
            out['rlimits'].append([RLIMITS[item['type']], -1 if soft >= 2 ** 63 else soft,
                                   -1 if hard >= 2 ** 63 else hard])
    user = process.get('user') or {}
    if user.get('umask') is not None:
        out['umask'] = _int_field('process.user.umask', user['umask'], 0, 0o777)
    gids = user.get('additionalGids')
    if gids is not None:
        if not isinstance(gids, list) or len(gids) > MAX_GROUPS:
            raise InvalidArgument('invalid OCI config field process.user.additionalGids %s: a list of at most %d gids'
                                  % (_short(gids), MAX_GROUPS))
        out['additional_gids'] = [_int_field('process.user.additionalGids', g, 0, 2 ** 32 - 2) for g in gids]
    if process.get('oomScoreAdj') is not None:
        out['oom_score_adj'] = _int_field('process.oomScoreAdj', process['oomScoreAdj'], -1000, 1000)
    return out


HOSTNAME_CHARS = frozenset('abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.')


def names_from(spec, default_hostname):
    """(hostname, domainname) of the container's UTS namespace."""
    out = []
    for field, default in (('hostname', default_hostname), ('domainname', None)):
        value = spec.get(field)
        if value is None or value == '':
            out.append(default)
            continue
        if not isinstance(value, str) or len(value) > 64 or not set(value) <= HOSTNAME_CHARS:
            raise InvalidArgument('invalid OCI config field %s %s: at most 64 letters, digits, "-" and "."'
                                  % (field, _short(value)))
        out.append(value)
    return tuple(out)
