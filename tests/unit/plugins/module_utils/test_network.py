# Copyright: kata.runtime contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A sandbox's network: the option values and forwards (network.py), the NIC in the domain XML
of each mode (libvirt's test:///default driver), the forwards added at every boot of the VM
(the fake hypervisor keeps them with its VMM, as QEMU does), the guest side's command line and
set-up script (guest/agent.py), and the compare step."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest
from ansible_collections.kata.runtime.plugins.module_utils.kata import network, options
from ansible_collections.kata.runtime.plugins.module_utils.kata import sandbox as sbx
from ansible_collections.kata.runtime.plugins.module_utils.kata.config import load_config
from ansible_collections.kata.runtime.plugins.module_utils.kata.errors import (
    HypervisorError,
    InvalidArgument,
)
from ansible_collections.kata.runtime.plugins.module_utils.kata.guest import agent as guest_agent
from ansible_collections.kata.runtime.plugins.module_utils.kata.guest import contract
from ansible_collections.kata.runtime.plugins.module_utils.kata.hypervisor import libvirt as lv
from ansible_collections.kata.runtime.plugins.module_utils.kata.model import SandboxRecord

# -- option values -----------------------------------------------------------------------------


@pytest.mark.parametrize('value, mode, source', [
    ('user', 'user', None), ('none', 'none', None), (' user ', 'user', None), ('bridge:br0', 'bridge', 'br0'),
    ('bridge:virbr-1.a', 'bridge', 'virbr-1.a'), ('network:default', 'network', 'default'),
])
def test_network_values(value, mode, source):
    assert network.parse_mode(value) == (mode, source)
    assert network.spec_of(mode, source) == value.strip()


@pytest.mark.parametrize('value', ['', 'passt', 'User', 'bridge', 'bridge:', 'bridge:' + 'b' * 16, 'bridge:br 0',
                                   'bridge:br0/x', 'network:', 'network:a/b', 'network:a<b', 'tap:tap0', None, 1, ['user']])
def test_bad_network_values_are_named(value):
    with pytest.raises(InvalidArgument) as err:
        network.parse_mode(value)
    assert repr(value) in str(err.value) and 'network' in str(err.value)


def test_ports_forms():
    ports = network.parse_ports(['8080:80', '127.0.0.2:5353:53/udp', {'host_port': '9000', 'container_port': 90},
                                 {'host_port': 9001, 'container_port': 91, 'host_ip': '0.0.0.0', 'protocol': 'TCP'}])
    assert ports == [
        {'host_ip': '0.0.0.0', 'host_port': 9001, 'container_port': 91, 'protocol': 'tcp'},
        {'host_ip': '127.0.0.1', 'host_port': 8080, 'container_port': 80, 'protocol': 'tcp'},
        {'host_ip': '127.0.0.1', 'host_port': 9000, 'container_port': 90, 'protocol': 'tcp'},
        {'host_ip': '127.0.0.2', 'host_port': 5353, 'container_port': 53, 'protocol': 'udp'},
    ]
    assert network.parse_ports(None) == [] and network.parse_ports([]) == []
    # the same forward on tcp and udp is two forwards
    assert len(network.parse_ports(['53:53/tcp', '53:53/udp'])) == 2


@pytest.mark.parametrize('ports, named', [
    ('8080:80', "'8080:80'"), ([8080], '8080'), (['8080'], "'8080'"), (['0:80'], "'0:80'"), (['8080:65536'], '65536'),
    (['8080:80/sctp'], 'sctp'), (['8080:80', '8080:81'], '127.0.0.1:8080/tcp'), (['::1:8080:80'], '::1'),
    ([{'host_port': 8080}], 'container_port'), ([{'host_port': 1, 'container_port': 2, 'bind': 'x'}], 'bind'),
    ([{'host_port': True, 'container_port': 2}], 'host_port'), ([{'host_port': 1, 'container_port': 2,
                                                                  'host_ip': 'localhost'}], 'localhost'),
    ([{'host_port': 1, 'container_port': 2, 'protocol': 'icmp'}], 'icmp'),
    (['%d:80' % p for p in range(1, network.MAX_PORTS + 2)], 'at most'),
])
def test_bad_ports_are_named(ports, named):
    with pytest.raises(InvalidArgument) as err:
        network.parse_ports(ports)
    assert named in str(err.value) and 'ports' in str(err.value)


@pytest.mark.parametrize('mode', ['none', 'bridge:br0', 'network:default'])
def test_ports_need_user_mode(mode):
    with pytest.raises(InvalidArgument, match='ports need network user.*network %s' % mode):
        network.settings(mode, ['8080:80'])
    assert network.settings(mode, []) == (mode, [])


def test_record_info_and_the_guests_command_line():
    fwd = network.parse_ports(['8080:80'])
    rec = network.record('user', fwd)
    assert network.is_mac(rec['mac']) and rec['addresses'] == [contract.USER_NET_ADDRESS]
    assert rec['gateway'] == contract.USER_NET_GATEWAY and rec['dns'] == [contract.USER_NET_DNS]
    assert network.info({'network': rec}) == {'mode': 'user', 'source': None, 'mac': rec['mac'],
                                              'addresses': ['10.0.2.15/24'], 'ports': fwd}
    assert network.kernel_param(rec) == 'kata.net=user'
    assert network.vm_network(rec) == {'mode': 'user', 'source': None, 'mac': rec['mac']}
    assert network.hostfwd(fwd[0]) == 'tcp:127.0.0.1:8080-10.0.2.15:80'
    bridge = network.record('bridge:br0', [])
    assert bridge['addresses'] == [] and network.kernel_param(bridge) == 'kata.net=dhcp'
    assert network.vm_network(bridge)['source'] == 'br0'
    none = network.record('none', [])
    assert none['mac'] is None and network.vm_network(none) is None and network.kernel_param(none) == ''
    assert network.record('user', [])['mac'] != network.record('user', [])['mac']
    # a record made before sandboxes had networks: no NIC
    assert network.info({'id': 'old'})['mode'] == 'none'


def test_the_host_config_key():
    assert load_config(overrides={}).network == 'user'
    assert load_config(overrides={'network': 'bridge:br0'}).network == 'bridge:br0'
    with pytest.raises(InvalidArgument, match="'network' = 'slirp'"):
        load_config(overrides={'network': 'slirp'})


def test_compare_network_and_ports_are_immutable():
    rec = SandboxRecord(id='sb', vcpus=1, network=network.record('user', network.parse_ports(['8080:80'])))
    settings = {'network': 'user', 'ports': network.parse_ports(['8080:80'])}
    same = options.SANDBOX_OPTIONS.compare(rec, settings, given=['network', 'ports'])
    assert not same
    # a record from before sandboxes had networks: none, no forwards
    assert not options.SANDBOX_OPTIONS.compare(SandboxRecord(id='old'), {'network': 'none', 'ports': []})\
        .names().count('network')
    diffs = options.SANDBOX_OPTIONS.compare(rec, {'network': 'none', 'ports': []}, given=['network', 'ports'])
    assert diffs.names() == ['network', 'ports']
    assert all(options.SANDBOX_OPTIONS.kind_of(k) == options.IMMUTABLE for k in diffs.names())
    assert diffs.get_before_after()[0]['network'] == 'user'


# -- the domain XML of each mode (test:///default) -----------------------------------------------

libvirt = pytest.importorskip('libvirt', reason='libvirt-python is not installed')


@pytest.fixture
def hv():
    from ansible_collections.kata.runtime.plugins.module_utils.kata.hypervisor.libvirt import LibvirtHypervisor
    h = LibvirtHypervisor('test:///default', prefix='kata-net-')
    yield h
    for d in h.list_ours():
        h.destroy(d['name'])
        h.undefine(d['name'])
    h.close()


def _vm(h, sid, net):
    return {
        'name': h.domain_name(sid), 'sandbox_id': sid, 'vcpus': 1, 'memory_mb': 128,
        'kernel': '/var/lib/kata-runtime/image/vmlinux', 'initrd': '/var/lib/kata-runtime/image/kata-initrd.img',
        'cmdline': 'console=ttyS0', 'accel': 'tcg', 'console_log': None, 'agent_socket': None,
        'shared_dir': None, 'output_dir': None, 'state_root': '/run/kata-runtime', 'network': net,
    }


@pytest.mark.parametrize('value, source_attr', [('user', None), ('bridge:br-kata', 'bridge'),
                                                ('network:default', 'network')])
def test_domain_xml_of_each_mode(hv, value, source_attr):
    net = network.vm_network(network.record(value, []))
    vm = _vm(hv, 'n1', net)
    ifaces = ET.fromstring(hv.build_xml(vm)).findall('devices/interface')
    assert len(ifaces) == 1
    iface = ifaces[0]
    assert iface.get('type') == net['mode'] and iface.find('model').get('type') == 'virtio'
    assert iface.find('mac').get('address') == net['mac'] and iface.find('rom').get('enabled') == 'no'
    if source_attr:
        assert iface.find('source').attrib == {source_attr: net['source']}
        # the tap is named as ours: kt + 13 hex digits of the domain name's sha256
        assert iface.find('target').get('dev') == lv.tap_name(vm['name'])
        assert re.fullmatch(r'kt[0-9a-f]{13}', lv.tap_name(vm['name']))
    else:
        assert iface.find('source') is None and iface.find('target') is None
    # libvirt takes it, defined and started, and keeps our MAC and model
    hv.create(vm)
    dom = hv.conn().lookupByName(vm['name'])
    live = ET.fromstring(dom.XMLDesc(0)).find('devices/interface')
    assert live.get('type') == net['mode'] and live.find('mac').get('address') == net['mac']
    assert live.find('model').get('type') == 'virtio'
    # what network adds to the host goes with the domain: nothing of it is left once it is gone
    hv.destroy(vm['name'])
    hv.undefine(vm['name'])
    assert hv.state(vm['name']) == 'missing'


def test_domain_xml_without_a_nic_and_bad_nics(hv):
    assert ET.fromstring(hv.build_xml(_vm(hv, 'n0', None))).find('devices/interface') is None
    for bad in ({'mode': 'passt'}, {'mode': 'user', 'mac': 'AA:BB:CC:DD:EE:FF'}, {'mode': 'bridge', 'source': ''},
                {'mode': 'user', 'mac': '52:54:00:00:00:0g'}, 'user'):
        with pytest.raises(InvalidArgument):
            hv.build_xml(_vm(hv, 'n0', bad))


def test_check_network_on_libvirt(hv):
    hv.check_network(None)
    hv.check_network({'mode': 'user'})
    hv.check_network({'mode': 'network', 'source': 'default'})  # the test driver's own network
    with pytest.raises(InvalidArgument, match='network:nope.*no network nope'):
        hv.check_network({'mode': 'network', 'source': 'nope'})


def test_forwards_need_a_running_user_nic(hv):
    vm = _vm(hv, 'n2', None)
    hv.create(vm)
    with pytest.raises(HypervisorError, match='no running user-mode NIC'):
        hv.add_forwards(vm['name'], ['tcp:127.0.0.1:8080-10.0.2.15:80'])


# -- the lifecycle on the fakes: forwards at every boot ------------------------------------------

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason='share.prepare mounts tmpfs: root only')


@needs_root
@pytest.mark.usefixtures('quick_hooks')
def test_forwards_are_added_at_every_boot_and_go_with_the_vmm(env):
    rec = env.sandbox('sb', ports=['18080:80', '18053:53/udp'])
    dom = env.hv.domain_of('sb')
    assert dom.vm['network']['mode'] == 'user' and dom.vm['network']['mac'] == rec.network['mac']
    assert 'kata.net=user' in dom.vm['cmdline'].split()
    assert dom.forwards == ['tcp:127.0.0.1:18080-10.0.2.15:80', 'udp:127.0.0.1:18053-10.0.2.15:53']
    saved = env.rt.store.load_sandbox('sb')
    assert saved.network['ports'] == network.parse_ports(['18080:80', '18053:53/udp'])
    info = sbx.info(env.rt, saved)
    assert info['network']['mode'] == 'user' and info['network']['addresses'] == ['10.0.2.15/24']
    assert [p['host_port'] for p in info['network']['ports']] == [18080, 18053]  # by protocol, then address and port

    sbx.stop(env.rt, 'sb', force=True)
    assert dom.state == 'shutoff' and dom.forwards == []
    sbx.start(env.rt, 'sb')
    assert dom.state == 'running' and len(dom.forwards) == 2 and dom.boots == 2
    # the VMM died (crash): booted again, its forwards come back with the new VMM
    env.hv.crash(env.hv.domain_name('sb'))
    assert dom.forwards == [] and sbx.info(env.rt, env.rt.store.load_sandbox('sb'))['state'] == 'dead'
    sbx.start(env.rt, 'sb')
    assert len(dom.forwards) == 2 and dom.state == 'running' and dom.boots == 3
    # paused and resumed: the same VMM, its forwards kept, none added twice
    sbx.pause(env.rt, 'sb')
    sbx.start(env.rt, 'sb')
    assert len(env.hv.domain_of('sb').forwards) == 2
    assert sbx.delete(env.rt, 'sb', force=True) is True
    assert env.hv.domain_of('sb') is None


@needs_root
@pytest.mark.usefixtures('quick_hooks')
def test_a_taken_host_port_fails_create_and_leaves_nothing(env):
    env.sandbox('sb1', ports=['18080:80'])
    with pytest.raises(HypervisorError, match='tcp:127.0.0.1:18080'):
        env.sandbox('sb2', ports=['18080:80'])
    assert env.rt.store.load_sandbox('sb2') is None and env.hv.domain_of('sb2') is None
    assert env.rt.store.get_mapping('sb2') is None


@needs_root
@pytest.mark.usefixtures('quick_hooks')
def test_finishing_an_interrupted_create_adds_the_forwards_once(env):
    """A create killed after its VM started but before the forwards were added: start
    finishes it on the running VM and adds them; adding them again replaces, never doubles."""
    env.sandbox('sb', ports=['18080:80'])
    rec = env.rt.store.load_sandbox('sb')
    rec.state = 'creating'
    env.rt.store.save_sandbox(rec)
    dom = env.hv.domain_of('sb')
    dom.forwards = []
    sbx.start(env.rt, 'sb')
    assert dom.forwards == ['tcp:127.0.0.1:18080-10.0.2.15:80'] and dom.boots == 1
    env.hv.add_forwards(dom.name, ['tcp:127.0.0.1:18080-10.0.2.15:80'])
    assert dom.forwards == ['tcp:127.0.0.1:18080-10.0.2.15:80']


@needs_root
@pytest.mark.usefixtures('quick_hooks')
def test_a_taken_host_port_on_start_stops_the_vm_again(env):
    env.sandbox('sb1', boot=False, ports=['18080:80'])
    env.sandbox('sb2', ports=['18080:80'])
    with pytest.raises(HypervisorError, match='18080'):
        sbx.start(env.rt, 'sb1')
    assert env.hv.domain_of('sb1').state == 'shutoff'
    assert sbx.info(env.rt, env.rt.store.load_sandbox('sb1'))['state'] == 'stopped'


@needs_root
@pytest.mark.usefixtures('quick_hooks')
def test_network_none_has_no_nic_and_bridge_mode_asks_for_dhcp(env):
    env.sandbox('sb0', network='none')
    dom = env.hv.domain_of('sb0')
    assert dom.vm['network'] is None and 'kata.net' not in dom.vm['cmdline']
    env.sandbox('sb1', network='bridge:br-kata')
    dom = env.hv.domain_of('sb1')
    assert dom.vm['network']['mode'] == 'bridge' and dom.vm['network']['source'] == 'br-kata'
    assert 'kata.net=dhcp' in dom.vm['cmdline'].split() and dom.forwards == []
    with pytest.raises(InvalidArgument, match='ports need network user'):
        env.settings(network='bridge:br-kata', ports=['8080:80'])
    with pytest.raises(InvalidArgument, match='VM templates support network user or none'):
        sbx.template_spec(env.rt, env.settings(network='bridge:br-kata'))


# -- the guest side -------------------------------------------------------------------------------

def test_the_guest_reads_its_network_from_the_command_line():
    assert guest_agent.net_mode('console=ttyS0 kata.net=user quiet') == 'user'
    assert guest_agent.net_mode('kata.net=dhcp') == 'dhcp'
    assert guest_agent.net_mode('console=ttyS0') is None
    assert guest_agent.net_mode('kata.net=/bin/sh') is None and guest_agent.net_mode('kata.netx=user') is None


def test_the_guest_set_up_scripts():
    user = guest_agent.net_script('user')
    for line in ('ip link set lo up', 'ip addr add 10.0.2.15/24 dev eth0', 'ip link set eth0 up',
                 'ip route add default via 10.0.2.2 dev eth0', 'echo "nameserver 10.0.2.3"',
                 'mount -o remount,bind,ro %s' % contract.NET_RESOLV_CONF):
        assert line in user
    dhcp = guest_agent.net_script('dhcp')
    assert 'udhcpc -i eth0' in dhcp and 'ip addr add' not in dhcp.split('KATA_EOF', maxsplit=1)[0]
    busybox = shutil.which('busybox')
    if busybox:  # both parse as shell
        for script in (user, dhcp):
            assert subprocess.run([busybox, 'sh', '-n', '-c', script], check=False).returncode == 0


def test_containers_get_the_resolv_conf_on_their_command_line():
    spec = {'rootfs': '/r', 'hostname': None, 'cwd': '/', 'uid': 0, 'gid': 0, 'env': [], 'args': ['true']}
    argv = guest_agent.exec_init_argv(sys.executable, spec, '/f', '/bin/busybox', '', contract.NET_RESOLV_CONF)
    assert argv[argv.index('/r') + 3] == contract.NET_RESOLV_CONF
    assert guest_agent.exec_init_argv(sys.executable, spec, '/f', '/bin/busybox')[argv.index('/r') + 3] == ''
