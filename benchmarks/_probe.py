# Copyright: kata.runtime contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A bare QEMU boot of a guest kernel and initrd, for the tests and the benchmarks.

``qemu_argv(...)`` is the command line of a direct-kernel boot with a bare
``qemu-system-x86_64`` (no libvirt); ``probe_boot(...)`` boots it once and measures the time to
the init's marker and to the agent's first reply. Neither is part of the runtime: Ansible never
ships this file to a target.
"""

from __future__ import annotations

import json
import os
import selectors
import shutil
import socket
import subprocess
import tempfile
import time

from ansible_collections.kata.runtime.plugins.module_utils.kata.errors import ImageError
from ansible_collections.kata.runtime.plugins.module_utils.kata.guest.contract import (
    AGENT_PORT_NAME,
    INIT_MARKER,
    KERNEL_PARAMS,
    OUTPUT_TAG,
    SHARED_TAG,
)


def _qemu_opt(value):
    return str(value).replace(',', ',,')


def qemu_argv(kernel, initrd, append=KERNEL_PARAMS, qemu='qemu-system-x86_64', accel='tcg',
              machine='pc', memory_mb=256, vcpus=1, agent_socket=None, shared_dir=None, output_dir=None):
    """The argv of a bare direct-kernel boot: serial console on stdio, no default devices,
    the agent's virtio-serial port ``agent.0`` on a unix socket (QEMU is the server) and the
    9p shares ``kataShared`` (read-only) and ``kataOutput`` when asked for."""
    argv = [qemu, '-accel', accel, '-M', machine, '-m', str(memory_mb), '-smp', str(vcpus),
            '-nodefaults', '-no-user-config', '-display', 'none', '-serial', 'stdio', '-no-reboot',
            '-kernel', kernel, '-initrd', initrd, '-append', append]
    if agent_socket:
        argv += ['-chardev', 'socket,id=agent0,path=%s,server=on,wait=off' % _qemu_opt(agent_socket),
                 '-device', 'virtio-serial-pci,id=vser0',
                 '-device', 'virtserialport,bus=vser0.0,chardev=agent0,name=%s' % AGENT_PORT_NAME]
    if shared_dir:
        argv += ['-fsdev', 'local,id=fs0,path=%s,security_model=passthrough,readonly=on' % _qemu_opt(shared_dir),
                 '-device', 'virtio-9p-pci,fsdev=fs0,mount_tag=%s' % SHARED_TAG]
    if output_dir:
        argv += ['-fsdev', 'local,id=fs1,path=%s,security_model=none' % _qemu_opt(output_dir),
                 '-device', 'virtio-9p-pci,fsdev=fs1,mount_tag=%s' % OUTPUT_TAG]
    return argv


def probe_boot(kernel, initrd, append=KERNEL_PARAMS, timeout=90, shared_dir=None, output_dir=None, agent=True,
               qemu='qemu-system-x86_64', accel='tcg', machine='pc', memory_mb=256, requests=None):
    """Boot once with bare QEMU and time it; the VM is killed afterwards.

    Returns {'init_s': seconds to the init's marker on the console, 'agent_s': seconds to the
    agent's reply to a ``ping`` (None when ``agent`` is false), 'ping': that reply,
    'replies': replies to ``requests`` (a list of {"method", "params"} sent after the ping),
    'console': the console text}. Raises ImageError when QEMU exits or the deadline passes
    first, with the console's tail.
    """
    work = tempfile.mkdtemp(prefix='kata-probe-')
    sock_path = os.path.join(work, 'agent.sock')
    argv = qemu_argv(kernel, initrd, append, qemu=qemu, accel=accel, machine=machine,
                     memory_mb=memory_mb, agent_socket=sock_path if agent else None,
                     shared_dir=shared_dir, output_dir=output_dir)
    console = bytearray()
    result = {'init_s': None, 'agent_s': None, 'ping': None, 'replies': [], 'console': ''}
    pending = [{'id': 1, 'method': 'ping', 'params': {}}]
    for i, req in enumerate(requests or (), start=2):
        pending.append({'id': i, 'method': req['method'], 'params': req.get('params', {})})
    want = {r['id'] for r in pending}
    t0 = time.monotonic()
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT)
    except OSError as err:
        shutil.rmtree(work, ignore_errors=True)
        raise ImageError('cannot run %s: %s' % (qemu, err))
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ, 'console')
    conn = None
    rbuf = b''
    try:
        deadline = t0 + timeout
        while time.monotonic() < deadline:
            if agent and conn is None and os.path.exists(sock_path):
                conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                try:
                    conn.connect(sock_path)
                except OSError:
                    conn.close()
                    conn = None
                else:
                    conn.sendall(b''.join(json.dumps(r).encode('utf-8') + b'\n' for r in pending))
                    sel.register(conn, selectors.EVENT_READ, 'agent')
            for ready in sel.select(0.05):
                key = ready[0]
                if key.data == 'console':
                    chunk = os.read(proc.stdout.fileno(), 65536)
                    if not chunk:
                        sel.unregister(proc.stdout)
                        continue
                    console += chunk
                    if result['init_s'] is None and INIT_MARKER.encode('ascii') in console:
                        result['init_s'] = time.monotonic() - t0
                else:
                    chunk = conn.recv(65536)
                    if not chunk:
                        sel.unregister(conn)
                        continue
                    rbuf += chunk
                    while b'\n' in rbuf:
                        line, rbuf = rbuf.split(b'\n', 1)
                        try:
                            msg = json.loads(line.decode('utf-8'))
                        except ValueError:
                            continue
                        if not isinstance(msg, dict) or msg.get('id') not in want:
                            continue
                        want.discard(msg['id'])
                        if msg['id'] == 1:
                            result['agent_s'] = time.monotonic() - t0
                            result['ping'] = msg
                        else:
                            result['replies'].append(msg)
            if result['init_s'] is not None and (not agent or not want):
                break
            if proc.poll() is not None:
                raise ImageError('qemu exited (status %s) before the guest was ready:\n%s' % (
                    proc.returncode, console.decode('utf-8', 'replace')[-3000:]))
        else:
            raise ImageError('the guest was not ready within %ss (init %s, agent %s):\n%s' % (
                timeout, result['init_s'], result['agent_s'],
                console.decode('utf-8', 'replace')[-3000:]))
    finally:
        if conn is not None:
            conn.close()
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        proc.stdout.close()
        sel.close()
        shutil.rmtree(work, ignore_errors=True)
    result['console'] = console.decode('utf-8', 'replace')
    result['replies'].sort(key=lambda m: m['id'])
    return result
