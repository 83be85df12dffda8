# Copyright: kata.runtime contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""oci_support: every OCI field is honoured, refused naming it, or ignored with a warning
naming it; linux.resources and the inline options become the guest's cgroup v2 files; the
process settings become what exec_init applies."""

from __future__ import annotations

import copy

import pytest
from ansible_collections.kata.runtime.plugins.module_utils.kata import oci_support as sup
from ansible_collections.kata.runtime.plugins.module_utils.kata.errors import InvalidArgument
from ansible_collections.kata.runtime.plugins.module_utils.kata.model import SandboxRecord

MIB = 1024 * 1024

# What `runc spec` writes (runc 1.1), trimmed of nothing.
RUNC_SPEC = {
    'ociVersion': '1.0.2-dev',
    'process': {
        'terminal': True, 'user': {'uid': 0, 'gid': 0}, 'args': ['sh'],
        'env': ['PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin', 'TERM=xterm'],
        'cwd': '/',
        'capabilities': {k: ['CAP_AUDIT_WRITE', 'CAP_KILL', 'CAP_NET_BIND_SERVICE']
                         for k in ('bounding', 'effective', 'permitted', 'ambient')},
        'rlimits': [{'type': 'RLIMIT_NOFILE', 'hard': 1024, 'soft': 1024}],
        'noNewPrivileges': True,
    },
    'root': {'path': 'rootfs', 'readonly': True},
    'hostname': 'runc',
    'mounts': [{'destination': '/proc', 'type': 'proc', 'source': 'proc'}],
    'linux': {
        'resources': {'devices': [{'allow': False, 'access': 'rwm'}]},
        'namespaces': [{'type': t} for t in ('pid', 'network', 'ipc', 'uts', 'mount', 'cgroup')],
        'maskedPaths': ['/proc/kcore'],
        'readonlyPaths': ['/proc/sys'],
    },
}


def spec_with(path, value):
    """RUNC_SPEC with ``value`` set at the dotted ``path``."""
    spec = copy.deepcopy(RUNC_SPEC)
    node = spec
    keys = path.split('.')
    for key in keys[:-1]:
        node = node.setdefault(key, {})
    node[keys[-1]] = value
    return spec


def test_runc_spec_runs_with_named_warnings_only():
    warnings = sup.check_fields(RUNC_SPEC)
    text = '\n'.join(warnings)
    for field in ('process.terminal', 'linux.resources.devices', 'linux.maskedPaths', 'linux.readonlyPaths',
                  'linux.namespaces[5]'):
        assert field in text, field
    assert len(warnings) == 5
    # ambient caps in runc's default are permitted but not inheritable: not raised, named (as runc)
    process = sup.process_from(RUNC_SPEC, warnings)
    assert process['capabilities']['ambient'] == 0
    assert 'process.capabilities.ambient: CAP_KILL, CAP_NET_BIND_SERVICE, CAP_AUDIT_WRITE not raised' in warnings[-1]


REFUSED = [
    ('solaris', {'milestone': 'x'}, 'solaris'),
    ('windows', {'layerFolders': []}, 'windows'),
    ('vm', {'kernel': {'path': '/k'}}, r'\bvm\b'),
    ('zos', {'namespaces': []}, 'zos'),
    ('process.commandLine', 'cmd.exe', 'process.commandLine'),
    ('process.user.username', 'root', 'process.user.username'),
    ('process.scheduler', {'policy': 'SCHED_FIFO'}, 'process.scheduler'),
    ('process.execCPUAffinity', {'initial': '0'}, 'process.execCPUAffinity'),
    ('linux.uidMappings', [{'containerID': 0, 'hostID': 1000, 'size': 1}], 'linux.uidMappings'),
    ('linux.gidMappings', [{'containerID': 0, 'hostID': 1000, 'size': 1}], 'linux.gidMappings'),
    ('linux.timeOffsets', {'monotonic': {'secs': 1}}, 'linux.timeOffsets'),
    ('linux.devices', [{'path': '/dev/fuse', 'type': 'c', 'major': 10, 'minor': 229}], 'linux.devices'),
    ('linux.intelRdt', {'closID': 'x'}, 'linux.intelRdt'),
    ('linux.sysctl', {'net.ipv4.ip_forward': '1'}, 'linux.sysctl'),
    ('linux.memoryPolicy', {'mode': 'MPOL_BIND'}, 'linux.memoryPolicy'),
    ('linux.netDevices', {'eth1': {}}, 'linux.netDevices'),
    ('linux.unified', {'memory.high': '1'}, 'linux.unified'),
    ('linux.personality', {'domain': 'LINUX32'}, 'linux.personality'),
    ('linux.resources.unified', {'memory.high': '1'}, 'linux.resources.unified'),
    ('linux.resources.memory', {'disableOOMKiller': True}, 'linux.resources.memory.disableOOMKiller'),
    ('linux.resources.cpu', {'realtimeRuntime': 1000}, 'linux.resources.cpu.realtimeRuntime'),
    ('linux.resources.cpu', {'realtimePeriod': 1000}, 'linux.resources.cpu.realtimePeriod'),
    ('linux.namespaces', [{'type': 'user'}], r'linux.namespaces\[0\]'),
    ('linux.namespaces', [{'type': 'time'}], r'linux.namespaces\[0\]'),
    ('linux.namespaces', [{'type': 'bogus'}], 'unknown namespace type'),
    ('linux.namespaces', [{'type': 'ipc', 'path': '/proc/1/ns/ipc'}], r'linux.namespaces\[0\].path'),
]


@pytest.mark.parametrize('path, value, named', REFUSED, ids=[r[0] + ('-' + str(i)) for i, r in enumerate(REFUSED)])
def test_each_refused_field_fails_naming_it(path, value, named):
    with pytest.raises(InvalidArgument, match=named):
        sup.check_fields(spec_with(path, value))


WARNED = [
    ('process.consoleSize', {'height': 1, 'width': 1}),
    ('process.apparmorProfile', 'docker-default'),
    ('process.selinuxLabel', 'system_u:system_r:svirt_lxc_net_t:s0'),
    ('process.ioPriority', {'class': 'IOPRIO_CLASS_IDLE'}),
    ('linux.seccomp', {'defaultAction': 'SCMP_ACT_ERRNO'}),
    ('linux.rootfsPropagation', 'rprivate'),
    ('linux.mountLabel', 'system_u:object_r:svirt_sandbox_file_t:s0'),
    ('linux.resources.blockIO', {'weight': 10}),
    ('linux.resources.hugepageLimits', [{'pageSize': '2MB', 'limit': 1}]),
    ('linux.resources.network', {'classID': 1}),
    ('linux.resources.rdma', {'mlx5_1': {'hcaHandles': 3}}),
    ('linux.resources.memory', {'kernel': 1}),
    ('linux.resources.memory', {'kernelTCP': 1}),
    ('linux.resources.memory', {'swappiness': 10}),
    ('linux.resources.memory', {'useHierarchy': True}),
    ('linux.resources.memory', {'checkBeforeUpdate': True}),
    ('someFutureField', 1),
    ('process.someFutureField', 1),
    ('linux.resources.cpu', {'someFutureField': 1}),
]


@pytest.mark.parametrize('path, value', WARNED, ids=[w[0] + '-' + str(i) for i, w in enumerate(WARNED)])
def test_each_ignored_field_is_a_warning_naming_it(path, value):
    spec = spec_with(path, value)
    baseline = len(sup.check_fields(RUNC_SPEC))
    warnings = sup.check_fields(spec)
    assert len(warnings) == baseline + 1
    name = path
    if path in ('linux.resources.memory', 'linux.resources.cpu'):
        name = '%s.%s' % (path, next(iter(value)))
    assert any(name in w for w in warnings), warnings


def test_an_empty_refused_field_is_no_refusal():
    spec = spec_with('linux.uidMappings', [])
    spec['linux']['devices'] = []
    spec['linux']['sysctl'] = {}
    assert len(sup.check_fields(spec)) == len(sup.check_fields(RUNC_SPEC))


def test_mounts_and_the_network_namespace_belong_to_other_work():
    spec = spec_with('linux.namespaces', [{'type': 'network', 'path': '/var/run/netns/x'}])
    spec['mounts'] = [{'destination': '/data', 'type': 'bind', 'source': '/srv', 'options': ['ro']}]
    assert not any('mounts' in w or 'namespaces' in w for w in sup.check_fields(spec))


def test_terminal_must_be_a_bool():
    with pytest.raises(InvalidArgument, match='process.terminal'):
        sup.check_fields(spec_with('process.terminal', 'yes'))
    assert not any('terminal' in w for w in sup.check_fields(spec_with('process.terminal', False)))


# ------------------------------------------------------------------------------- limits

def test_resources_become_cgroup_v2_files():
    spec = spec_with('linux.resources', {
        'memory': {'limit': 64 * MIB, 'reservation': 32 * MIB, 'swap': 96 * MIB},
        'cpu': {'shares': 1024, 'quota': 50000, 'period': 100000, 'cpus': '0-1', 'mems': '0', 'burst': 0, 'idle': 0},
        'pids': {'limit': 32},
    })
    assert sup.limits_from(spec) == {
        'memory.max': str(64 * MIB), 'memory.low': str(32 * MIB), 'memory.swap.max': str(32 * MIB),
        'cpu.weight': '39', 'cpu.max': '50000 100000', 'cpuset.cpus': '0-1', 'cpuset.mems': '0',
        'cpu.max.burst': '0', 'cpu.idle': '0', 'pids.max': '32'}


def test_unlimited_values_and_shares_bounds():
    spec = spec_with('linux.resources', {'memory': {'limit': -1, 'swap': -1}, 'cpu': {'quota': -1, 'period': 50000},
                                         'pids': {'limit': -1}})
    assert sup.limits_from(spec) == {'memory.swap.max': 'max', 'cpu.max': 'max 50000', 'pids.max': 'max'}
    assert sup.limits_from(spec_with('linux.resources.cpu', {'shares': 2}))['cpu.weight'] == '1'
    assert sup.limits_from(spec_with('linux.resources.cpu', {'shares': 262144}))['cpu.weight'] == '10000'


def test_inline_options_override_the_bundle():
    spec = spec_with('linux.resources', {'memory': {'limit': MIB}, 'pids': {'limit': 5}})
    assert sup.limits_from(spec, memory_mb=64, cpus=0.25, pids_limit=10) == {
        'memory.max': str(64 * MIB), 'cpu.max': '25000 100000', 'pids.max': '10'}
    assert sup.limits_from(None, cpus=1.5) == {'cpu.max': '150000 100000'}


@pytest.mark.parametrize('resources, named', [
    ({'memory': {'limit': 'lots'}}, 'linux.resources.memory.limit'),
    ({'memory': {'limit': 0}}, 'linux.resources.memory.limit'),
    ({'memory': {'swap': MIB}}, 'needs linux.resources.memory.limit'),
    ({'memory': {'limit': 2 * MIB, 'swap': MIB}}, 'must be at least'),
    ({'cpu': {'shares': 1}}, 'linux.resources.cpu.shares'),
    ({'cpu': {'quota': 10}}, 'linux.resources.cpu.quota'),
    ({'cpu': {'period': 10}}, 'linux.resources.cpu.period'),
    ({'cpu': {'cpus': '0;rm'}}, 'linux.resources.cpu.cpus'),
    ({'cpu': {'cpus': '3-1'}}, 'descending'),
    ({'cpu': {'idle': 2}}, 'linux.resources.cpu.idle'),
    ({'pids': {'limit': True}}, 'linux.resources.pids.limit'),
])
def test_bad_resources_are_named(resources, named):
    with pytest.raises(InvalidArgument, match=named):
        sup.limits_from(spec_with('linux.resources', resources))


@pytest.mark.parametrize('kw, named', [({'memory_mb': 0}, 'memory_mb'), ({'cpus': 0.001}, 'cpus'),
                                       ({'cpus': True}, 'cpus'), ({'pids_limit': 0}, 'pids_limit')])
def test_bad_inline_limits_are_named(kw, named):
    with pytest.raises(InvalidArgument, match=named):
        sup.limits_from(None, **kw)


def test_a_limit_larger_than_the_sandbox_is_refused_naming_it():
    sandbox = SandboxRecord(id='sb', memory_mb=256, vcpus=2)
    sup.check_fits({'memory.max': str(256 * MIB), 'cpu.max': '200000 100000', 'cpuset.cpus': '0-1'}, sandbox)
    with pytest.raises(InvalidArgument, match=r'memory limit 257 MiB .* larger than sandbox sb \(memory_mb 256\)'):
        sup.check_fits({'memory.max': str(256 * MIB + 1)}, sandbox)
    with pytest.raises(InvalidArgument, match=r'CPU limit 2.5 CPUs .* sandbox sb has \(vcpus 2\)'):
        sup.check_fits({'cpu.max': '250000 100000'}, sandbox)
    with pytest.raises(InvalidArgument, match=r'CPU set 0,2 names a CPU that sandbox sb does not have'):
        sup.check_fits({'cpuset.cpus': '0,2'}, sandbox)
    sup.check_fits({'memory.max': 'max', 'cpu.max': 'max 100000'}, sandbox)


# ------------------------------------------------------------------------------- process

def test_process_settings_for_the_guest():
    spec = spec_with('process.capabilities', {
        'bounding': ['CAP_CHOWN', 'CAP_KILL', 'CAP_NET_BIND_SERVICE'], 'effective': ['CAP_KILL'],
        'permitted': ['CAP_KILL', 'CAP_NET_BIND_SERVICE'], 'inheritable': ['NET_BIND_SERVICE'],
        'ambient': ['CAP_NET_BIND_SERVICE']})
    spec['process']['user'].update({'umask': 0o027, 'additionalGids': [10, 20]})
    spec['process']['oomScoreAdj'] = 500
    spec['process']['rlimits'].append({'type': 'RLIMIT_CORE', 'soft': 0, 'hard': 2 ** 64 - 1})
    out = sup.process_from(spec)
    assert out['capabilities'] == {'bounding': 1 << 0 | 1 << 5 | 1 << 10, 'effective': 1 << 5,
                                   'permitted': 1 << 5 | 1 << 10, 'inheritable': 1 << 10, 'ambient': 1 << 10}
    assert out['rlimits'] == [[7, 1024, 1024], [4, 0, -1]]
    assert (out['umask'], out['additional_gids'], out['oom_score_adj'], out['no_new_privileges']) == \
        (0o027, [10, 20], 500, True)
    assert sup.caps_names(out['capabilities']['bounding']) == ['CAP_CHOWN', 'CAP_KILL', 'CAP_NET_BIND_SERVICE']


def test_no_capabilities_object_leaves_the_process_as_it_is():
    spec = copy.deepcopy(RUNC_SPEC)
    del spec['process']['capabilities']
    assert sup.process_from(spec)['capabilities'] is None


@pytest.mark.parametrize('path, value, named', [
    ('process.capabilities', {'bounding': ['CAP_FLY']}, "unknown capability 'CAP_FLY'"),
    ('process.capabilities', {'bounding': 'CAP_KILL'}, 'process.capabilities.bounding'),
    ('process.capabilities', {'extra': []}, 'unknown set extra'),
    ('process.capabilities', {'effective': ['CAP_KILL']}, 'process.capabilities.effective: CAP_KILL not permitted'),
    ('process.rlimits', [{'type': 'RLIMIT_FLY', 'soft': 1, 'hard': 1}], r'process.rlimits\[0\]'),
    ('process.rlimits', [{'type': 'RLIMIT_NOFILE', 'soft': 2, 'hard': 1}], 'soft 2 is above hard 1'),
    ('process.rlimits', [{'type': 'RLIMIT_NOFILE', 'soft': 1}], 'soft and hard are required'),
    ('process.rlimits', [{'type': 'RLIMIT_NOFILE', 'soft': 1, 'hard': 1}] * 2, 'given twice'),
    ('process.noNewPrivileges', 'yes', 'process.noNewPrivileges'),
    ('process.oomScoreAdj', 2000, 'process.oomScoreAdj'),
    ('process.user', {'uid': 0, 'gid': 0, 'umask': 0o1777}, 'process.user.umask'),
    ('process.user', {'uid': 0, 'gid': 0, 'additionalGids': ['wheel']}, 'process.user.additionalGids'),
])
def test_bad_process_settings_are_named(path, value, named):
    spec = spec_with(path, value)
    if path != 'process.capabilities':
        del spec['process']['capabilities']
    with pytest.raises(InvalidArgument, match=named):
        sup.process_from(spec)


def test_hostname_and_domainname():
    assert sup.names_from({'hostname': 'web-1', 'domainname': 'example.test'}, 'cid') == ('web-1', 'example.test')
    assert sup.names_from({}, 'cid') == ('cid', None)
    for bad in ('a b', 'x' * 65, 7):
        with pytest.raises(InvalidArgument, match='hostname'):
            sup.names_from({'hostname': bad}, 'cid')
