# Copyright: kata.runtime contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Networking against the real libvirtd with the real guest image, user mode only (traffic goes
to loopback addresses only: the forwarded port on 127.0.0.1 and a test server on 127.0.0.1 that
the guest reaches through the user-mode gateway).

One sandbox with a forward 127.0.0.1:<port> -> 8080: a container serves a page with busybox
httpd and the host fetches it through the forward; a second container of the same sandbox
fetches it on localhost (the pod's network namespace), fetches a page from the host's test
server through 10.0.2.2, and sees eth0's address and the sandbox's DNS server. The listener is
the VMM's. Stopped and started again, the sandbox has its forward back. kata_prune removes the
sandbox and the listener with it.

Bridge mode: the tap libvirt makes on a bridge the test made goes with the domain (started
paused: no guest code runs, nothing is sent).
"""

from __future__ import annotations

import http.server
import os
import secrets
import socket
import subprocess
import threading
import time
import urllib.request
import xml.etree.ElementTree as ET

import pytest
from ansible_collections.kata.runtime.plugins.module_utils.kata.guest import contract
from conftest import residue, wait_until

pytest.importorskip('libvirt', reason='libvirt-python is not installed')


def _free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _listeners(port):
    """Inodes of the sockets listening on 127.0.0.1:``port`` (TCP)."""
    want = '0100007F:%04X' % port
    out = set()
    with open('/proc/net/tcp') as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            if fields[1] == want and fields[3] == '0A':
                out.add(fields[9])
    return out


def _owns(pid, inodes):
    """True when process ``pid`` holds every socket inode in ``inodes``."""
    held = set()
    for fd in os.listdir('/proc/%d/fd' % pid):
        try:
            target = os.readlink('/proc/%d/fd/%s' % (pid, fd))
        except OSError:
            continue
        if target.startswith('socket:['):
            held.add(target[len('socket:['):-1])
    return bool(inodes) and inodes <= held


def _fetch(url, timeout=5):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read().decode()


def _fetch_until(url, token, timeout=60):
    def attempt():
        try:
            return token in _fetch(url)
        except OSError:
            return False
    wait_until(attempt, timeout, 'a page with %s from %s' % (token, url), interval=0.5)


@pytest.fixture
def host_server():
    """An HTTP server of the test on 127.0.0.1 (a free port) answering every GET with a token."""
    token = 'host-' + secrets.token_hex(6)

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - the name http.server calls
            body = token.encode()
            self.send_response(200)
            self.send_header('Content-Length', str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1], token
    server.shutdown()
    server.server_close()


def test_ports_pod_network_and_host_loopback(kata, busybox_rootfs, host_server):
    t0 = time.monotonic()
    host_port, host_token = host_server
    port = _free_port()
    token = 'web-' + secrets.token_hex(6)
    web = {'name': 'web', 'sandbox': 'net1', 'rootfs': busybox_rootfs, 'readonly_rootfs': False,
           'command': ['/bin/sh', '-c', 'mkdir -p /tmp/www && echo %s > /tmp/www/index.html && '
                       'exec httpd -f -p 8080 -h /tmp/www' % token]}
    run = kata.playbook([
        {'name': 'sandbox', 'kata.runtime.kata_sandbox': {'name': 'net1', 'memory_mb': 128,
                                                          'ports': ['%d:8080' % port]}},
        {'name': 'web', 'kata.runtime.kata_container': web},
    ])
    sandbox = run.ok('sandbox')['sandbox']
    net = sandbox['network']
    assert net['mode'] == 'user' and net['addresses'] == [contract.USER_NET_ADDRESS], net
    assert net['ports'] == [{'host_ip': '127.0.0.1', 'host_port': port, 'container_port': 8080,
                             'protocol': 'tcp'}], net
    _fetch_until('http://127.0.0.1:%d/' % port, token)
    assert _owns(sandbox['pid'], _listeners(port)), 'the listener on 127.0.0.1:%d is the VMM\'s' % port

    probe = ('wget -q -O - http://127.0.0.1:8080/; echo; wget -q -O - http://%s:%d/; echo; '
             'ip -o -4 addr show %s; cat /etc/resolv.conf' % (contract.USER_NET_GATEWAY, host_port, contract.NET_IFACE))
    run = kata.playbook([
        {'name': 'client', 'kata.runtime.kata_container': {
            'name': 'client', 'sandbox': 'net1', 'rootfs': busybox_rootfs, 'readonly_rootfs': False,
            'command': ['/bin/sh', '-c', probe]}},
        {'name': 'client done', 'kata.runtime.kata_container_info': {'name': ['client']},
         'register': 'client_info', 'until': "client_info.containers[0].status == 'stopped'",
         'retries': 60, 'delay': 1},
        {'name': 'info', 'kata.runtime.kata_sandbox_info': {'name': ['net1']}},
    ])
    done = run.ok('client done')['containers'][0]
    with open(done['stdout_path']) as f:
        out = f.read()
    assert done['exit_code'] == 0, (done, out)
    assert token in out, 'the second container reaches the first on localhost: %r' % out
    assert host_token in out, 'a container reaches the host\'s loopback server through the gateway: %r' % out
    assert 'inet %s' % contract.USER_NET_ADDRESS in out and 'nameserver %s' % contract.USER_NET_DNS in out, out
    assert run.ok('info')['sandboxes'][0]['network'] == net

    # stopped and booted again: the forward comes back with the new VMM
    run = kata.playbook([
        {'name': 'stop', 'kata.runtime.kata_sandbox': {'name': 'net1', 'state': 'stopped', 'force': True}},
        {'name': 'start', 'kata.runtime.kata_sandbox': {'name': 'net1', 'ports': ['%d:8080' % port]}},
        {'name': 'web again', 'kata.runtime.kata_container': web},
    ])
    started = run.ok('start')
    assert any('forwarded 127.0.0.1:%d/tcp' % port in a for a in started['actions']), started['actions']
    _fetch_until('http://127.0.0.1:%d/' % port, token)
    assert _owns(started['sandbox']['pid'], _listeners(port))

    rc, result, stdout, stderr = kata.prune_all()  # kata_prune all=true force=true
    assert rc == 0 and result['deleted'] == ['net1'], (stdout[-3000:], stderr[-2000:])
    assert not _listeners(port), 'kata_prune left a listener on 127.0.0.1:%d' % port
    assert not residue(kata), residue(kata)
    print('\nnetwork test: %.1fs' % (time.monotonic() - t0))


def test_bridge_tap_is_made_and_removed_with_the_vm(guest_image):
    """Bridge mode on the real libvirtd: the domain starts with a tap on a bridge this test
    made (no address, link down) and the tap goes with the domain. The VM is started paused:
    no guest code runs, so nothing is sent anywhere. A bridge that does not exist is refused
    before anything is made."""
    from ansible_collections.kata.runtime.plugins.module_utils.kata import network
    from ansible_collections.kata.runtime.plugins.module_utils.kata.errors import InvalidArgument
    from ansible_collections.kata.runtime.plugins.module_utils.kata.hypervisor import libvirt as lv

    hexid = secrets.token_hex(3)
    bridge = 'kata-tb%s' % hexid
    hv = lv.LibvirtHypervisor('qemu:///system', prefix='kata-tnet-%s-' % hexid)
    net = network.vm_network(network.record('bridge:%s' % bridge, []))
    with pytest.raises(InvalidArgument, match='no bridge %s' % bridge):
        hv.check_network(net)
    subprocess.run(['ip', 'link', 'add', bridge, 'type', 'bridge'], check=True)
    try:
        hv.check_network(net)
        vm = {'name': hv.domain_name('br1'), 'sandbox_id': 'br1', 'vcpus': 1, 'memory_mb': 64,
              'kernel': guest_image['kernel'], 'initrd': guest_image['initrd'], 'cmdline': contract.KERNEL_PARAMS,
              'accel': 'tcg', 'console_log': None, 'agent_socket': None, 'shared_dir': None, 'output_dir': None,
              'state_root': '/run/kata-tnet-%s' % hexid, 'network': net}
        lv.create_from_xml(hv, vm, hv.build_xml(vm), paused=True)
        iface = ET.fromstring(hv.conn().lookupByName(vm['name']).XMLDesc(0)).find('devices/interface')
        tap = iface.find('target').get('dev')
        assert tap == lv.tap_name(vm['name']), 'the tap is named as ours'
        assert iface.find('mac').get('address') == net['mac']
        assert os.path.realpath('/sys/class/net/%s/master' % tap) == '/sys/devices/virtual/net/%s' % bridge
        hv.destroy(vm['name'])
        hv.undefine(vm['name'])
        assert not os.path.exists('/sys/class/net/%s' % tap), 'the tap %s outlived its VM' % tap
        assert os.listdir('/sys/class/net/%s/brif' % bridge) == []
    finally:
        for d in hv.list_ours():
            hv.destroy(d['name'])
            hv.undefine(d['name'])
        hv.close()
        subprocess.run(['ip', 'link', 'del', bridge], check=False)
