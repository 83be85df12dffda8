# Copyright: kata.runtime contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A sandbox's network: the mode its NIC is on, its port forwards, and what the record keeps.

Modes (the ``network`` option and host config key; docs/networking.md):

- ``user``: QEMU user-mode networking (slirp) inside the VMM. Nothing is added to the host
  but the VMM's own listening sockets for the port forwards, which die with the VMM. The guest
  takes the static address slirp expects (contract.USER_NET_*).
- ``bridge:<name>``: a tap on an existing host bridge (libvirt makes and removes the tap with
  the domain); the guest asks the bridge's network for an address (DHCP).
- ``network:<name>``: a tap on a libvirt network; DHCP from that network.
- ``none``: no NIC; the guest has only its loopback interface.

Port forwards exist in ``user`` mode only: they are added through the VMM's monitor each time
the VM starts. In the other modes the guest is reachable at its own address on the bridge or
network, and forwards are refused (this runtime adds no firewall or NAT rules to the host).

Plain data and no Ansible; the libvirt side is in hypervisor/libvirt.py.
"""

from __future__ import annotations

import ipaddress
import re
import secrets

from ansible_collections.kata.runtime.plugins.module_utils.kata.errors import InvalidArgument
from ansible_collections.kata.runtime.plugins.module_utils.kata.guest import contract

USER = 'user'
BRIDGE = 'bridge'
NETWORK = 'network'
NONE = 'none'
MODES = (USER, BRIDGE, NETWORK, NONE)

# A Linux interface name (IFNAMSIZ - 1) and a libvirt network name (no "/", no spaces or
# control characters: what goes into the domain XML).
_IFNAME_RE = re.compile(r'^[A-Za-z0-9_.:-]{1,15}$', re.ASCII)
_NETNAME_RE = re.compile(r'^[A-Za-z0-9_.:+-]{1,64}$', re.ASCII)
_PORT_RE = re.compile(r'^(?:(?P<ip>\d{1,3}(?:\.\d{1,3}){3}):)?(?P<host>\d{1,5}):(?P<ctr>\d{1,5})(?:/(?P<proto>tcp|udp))?$')
PROTOCOLS = ('tcp', 'udp')
DEFAULT_HOST_IP = '127.0.0.1'
MAX_PORTS = 64
# QEMU's locally administered prefix, as libvirt uses for the MACs it makes
MAC_PREFIX = '52:54:00'
_MAC_RE = re.compile(r'^52:54:00(?::[0-9a-f]{2}){3}$')


def parse_mode(value, what='network'):
    """``(mode, source)`` of a network value: ``('user', None)``, ``('bridge', 'br0')``, ...

    InvalidArgument names the value when it is none of the forms."""
    if not isinstance(value, str):
        raise InvalidArgument('%s must be a string (user, none, bridge:<name> or network:<name>), got %r'
                              % (what, value))
    text = value.strip()
    if text in (USER, NONE):
        return text, None
    kind, sep, name = text.partition(':')
    if sep and kind == BRIDGE:
        if not _IFNAME_RE.match(name):
            raise InvalidArgument('%s %r: the bridge name must be 1-15 letters, digits, "_", ".", ":" or "-"'
                                  % (what, value))
        return BRIDGE, name
    if sep and kind == NETWORK:
        if not _NETNAME_RE.match(name):
            raise InvalidArgument('%s %r: the libvirt network name must be 1-64 letters, digits, "_", ".", '
                                  '":", "+" or "-"' % (what, value))
        return NETWORK, name
    raise InvalidArgument('%s must be user, none, bridge:<name> or network:<name>, got %r' % (what, value))


def spec_of(mode, source):
    """The normalised option value of ``(mode, source)``: ``user``, ``bridge:br0``, ..."""
    return mode if source is None else '%s:%s' % (mode, source)


def _port_number(value, what, item):
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise InvalidArgument('ports: %s must be a port number from 1 to 65535 in %r' % (what, item))
    return value


def _host_ip(value, item):
    try:
        addr = ipaddress.IPv4Address(value)
    except (ipaddress.AddressValueError, ValueError, TypeError):
        raise InvalidArgument('ports: host_ip must be an IPv4 address of this host in %r' % (item,)) from None
    return str(addr)


def parse_port(item):
    """One forward as a dict ``host_ip, host_port, container_port, protocol``, from
    ``[HOST_IP:]HOST:CONTAINER[/tcp|udp]`` or a dict of those keys."""
    if isinstance(item, str):
        m = _PORT_RE.match(item.strip())
        if not m:
            raise InvalidArgument('ports: %r is not HOST:CONTAINER[/tcp|udp] (or a dict with host_port, '
                                  'container_port, host_ip, protocol)' % (item,))
        raw = {'host_port': m.group('host'), 'container_port': m.group('ctr'),
               'host_ip': m.group('ip') or DEFAULT_HOST_IP, 'protocol': m.group('proto') or 'tcp'}
    elif isinstance(item, dict):
        unknown = sorted(str(k) for k in item if k not in ('host_port', 'container_port', 'host_ip', 'protocol'))
        if unknown:
            raise InvalidArgument('ports: unknown key(s) %s in %r (known: host_port, container_port, host_ip, '
                                  'protocol)' % (', '.join(unknown), item))
        for key in ('host_port', 'container_port'):
            if item.get(key) is None:
                raise InvalidArgument('ports: %s is required in %r' % (key, item))
        raw = {'host_port': item['host_port'], 'container_port': item['container_port'],
               'host_ip': item.get('host_ip') or DEFAULT_HOST_IP, 'protocol': item.get('protocol') or 'tcp'}
    else:
        raise InvalidArgument('ports: each entry must be a string HOST:CONTAINER[/tcp|udp] or a dict, got %r'
                              % (item,))
    protocol = raw['protocol']
    if not isinstance(protocol, str) or protocol.lower() not in PROTOCOLS:
        raise InvalidArgument('ports: protocol must be tcp or udp in %r' % (item,))
    return {
        'host_ip': _host_ip(raw['host_ip'], item),
        'host_port': _port_number(raw['host_port'], 'host_port', item),
        'container_port': _port_number(raw['container_port'], 'container_port', item),
        'protocol': protocol.lower(),
    }


def parse_ports(value):
    """The forwards of the ``ports`` option, normalised and sorted; [] for None."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise InvalidArgument('ports must be a list of HOST:CONTAINER[/tcp|udp] strings or dicts, got %r' % (value,))
    if len(value) > MAX_PORTS:
        raise InvalidArgument('ports: at most %d forwards, got %d' % (MAX_PORTS, len(value)))
    out = [parse_port(item) for item in value]
    seen = {}
    for fwd in out:
        key = (fwd['host_ip'], fwd['host_port'], fwd['protocol'])
        if key in seen:
            raise InvalidArgument('ports: %s:%d/%s is forwarded twice' % key)
        seen[key] = fwd
    return sorted(out, key=lambda f: (f['protocol'], f['host_ip'], f['host_port']))


def settings(network, ports):
    """``(normalised network value, normalised ports)``; refuses ports outside user mode."""
    mode, source = parse_mode(network)
    forwards = parse_ports(ports)
    if forwards and mode != USER:
        raise InvalidArgument('ports need network user (QEMU user-mode networking); network %s gets no '
                              'forwards: this runtime adds no firewall or NAT rules to the host. Reach the '
                              'guest at its own address on that network, or use network user'
                              % spec_of(mode, source))
    return spec_of(mode, source), forwards


def new_mac():
    """A random MAC in QEMU's locally administered range."""
    return '%s:%s' % (MAC_PREFIX, ':'.join('%02x' % b for b in secrets.token_bytes(3)))


def is_mac(value):
    return isinstance(value, str) and bool(_MAC_RE.match(value))


def record(network, ports, mac=None):
    """What a sandbox record keeps under ``network``: mode, source, spec (the option value), mac,
    addresses (known when the host chooses them), gateway, dns and ports."""
    mode, source = parse_mode(network)
    rec = {'mode': mode, 'source': source, 'spec': spec_of(mode, source), 'mac': None,
           'addresses': [], 'gateway': None, 'dns': [], 'ports': list(ports or [])}
    if mode != NONE:
        rec['mac'] = mac or new_mac()
    if mode == USER:
        rec['addresses'] = [contract.USER_NET_ADDRESS]
        rec['gateway'] = contract.USER_NET_GATEWAY
        rec['dns'] = [contract.USER_NET_DNS]
    return rec


def of(rec):
    """The ``network`` record of sandbox record ``rec`` (a model.SandboxRecord or a dict of one);
    a sandbox recorded before sandboxes had networks has none."""
    net = rec.get('network') if isinstance(rec, dict) else rec.network
    if not isinstance(net, dict) or net.get('mode') not in MODES:
        return record(NONE, [])
    return net


def info(rec):
    """The public ``network`` of a sandbox: mode, addresses, ports (and mac, source)."""
    net = of(rec)
    return {'mode': net['mode'], 'source': net.get('source'), 'mac': net.get('mac'),
            'addresses': list(net.get('addresses') or []), 'ports': [dict(p) for p in net.get('ports') or []]}


def vm_network(net):
    """The NIC part of a VM spec (Hypervisor.create's ``network``), or None for no NIC."""
    if net['mode'] == NONE:
        return None
    return {'mode': net['mode'], 'source': net.get('source'), 'mac': net.get('mac')}


def kernel_param(net):
    """What the guest's command line says about its network (contract.NET_PARAM), or ''."""
    if net['mode'] == USER:
        return '%s=%s' % (contract.NET_PARAM, contract.NET_STATIC_USER)
    if net['mode'] in (BRIDGE, NETWORK):
        return '%s=%s' % (contract.NET_PARAM, contract.NET_DHCP)
    return ''


def hostfwd(fwd):
    """The ``hostfwd_add`` rule of one forward: ``tcp:127.0.0.1:8080-:80`` (to the guest's
    user-mode address)."""
    return '%s:%s:%d-%s:%d' % (fwd['protocol'], fwd['host_ip'], fwd['host_port'],
                               contract.USER_NET_ADDRESS.split('/', maxsplit=1)[0], fwd['container_port'])


def add_forwards(rt, rec, trace):
    """Add the record's forwards to its running VM (user mode); nothing for other modes."""
    net = of(rec)
    if net['mode'] != USER or not net.get('ports'):
        return
    rules = [hostfwd(fwd) for fwd in net['ports']]
    rt.hv.add_forwards(rec.domain, rules)
    trace.step('forwarded %s to sandbox %s' % (', '.join('%s:%d/%s' % (f['host_ip'], f['host_port'], f['protocol'])
                                                         for f in net['ports']), rec.id))
