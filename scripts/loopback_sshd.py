#!/usr/bin/env python
# Copyright: kata.runtime contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A private sshd on 127.0.0.1, so tests and benchmarks can drive Ansible over real SSH.

Everything lives in one temporary directory (mode 0700): the sshd_config, a host key, the
authorized_keys with one throwaway client key, the PidFile, the log and a directory for
Ansible's ControlMaster sockets. The daemon listens on 127.0.0.1 only, on a free high port,
with ``UsePAM no`` and ``PermitRootLogin prohibit-password``; the host's own SSH setup is
neither used nor changed (not /etc/ssh/sshd_config or ssh_config, not the system sshd, not
~/.ssh): clients get the key, ``-F /dev/null`` and ``UserKnownHostsFile=/dev/null`` through
``ansible_vars()`` (inventory variables; ControlMaster sockets go to the directory too).
The one thing outside the directory is sshd's privilege-separation directory (/run/sshd, the
directory the distribution's unit creates), made when it is missing and left in place:
another private sshd may be using it.

Python: ``from ansible_collections.kata.runtime.scripts.loopback_sshd import LoopbackSshd``
with PYTHONPATH=.collections (tests/integration/test_fleet.py), or ``import loopback_sshd``
with scripts/ on sys.path (benchmarks)::

    with LoopbackSshd() as sshd:                 # start(): config, keys, daemon, a login check
        inventory_host_vars = sshd.ansible_vars()  # ansible_host/port/user/connection, key, ssh args
        subprocess.run(sshd.ssh_argv('true'), check=True)
    # stop(): the daemon and every session it forked are gone, the directory removed

Command line (for shells and other processes)::

    python scripts/loopback_sshd.py start [--dir DIR]   # JSON on stdout: dir, port, pid, ansible_vars
    python scripts/loopback_sshd.py stop DIR

``closed_port()`` gives a loopback port that refuses connections for as long as the returned
socket stays open (bound, never listening): an inventory's unreachable host.
"""

from __future__ import annotations

import argparse
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

HOST = '127.0.0.1'
PRIVSEP_DIR = '/run/sshd'
START_TIMEOUT = 15
STOP_TIMEOUT = 10
PORT_ATTEMPTS = 5
STATE_FILE = 'state.json'
# What a client needs besides the key: no known_hosts, no host or user ssh_config.
CLIENT_OPTIONS = [
    '-F', '/dev/null',
    '-o', 'UserKnownHostsFile=/dev/null',
    '-o', 'StrictHostKeyChecking=no',
    '-o', 'IdentitiesOnly=yes',
    '-o', 'LogLevel=ERROR',
]


class SshdError(Exception):
    pass


def free_port():
    """A loopback TCP port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def closed_port():
    """(port, socket): the port refuses connections while the socket (bound, not listening) is open."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind((HOST, 0))
    return s.getsockname()[1], s


def find_sshd():
    path = os.pathsep.join(['/usr/sbin', '/usr/local/sbin', os.environ.get('PATH', '')])
    sshd = shutil.which('sshd', path=path)
    if sshd is None:
        raise SshdError('sshd is not installed (Debian: openssh-server; scripts/prepare-host.sh installs it)')
    return sshd


def _stat(pid):
    """(state letter, parent PID) of ``pid``, or None when there is no such process."""
    try:
        with open('/proc/%d/stat' % pid) as f:
            stat = f.read()
    except OSError:
        return None
    fields = stat[stat.rindex(')') + 2:].split()
    return fields[0], int(fields[1])


def _tree(root):
    """[(depth, pid)] of every live process below ``root``."""
    children = {}
    for entry in os.listdir('/proc'):
        if entry.isdigit():
            st = _stat(int(entry))
            if st is not None and st[0] != 'Z':
                children.setdefault(st[1], []).append(int(entry))
    out, todo = [], [(0, root)]
    while todo:
        depth, pid = todo.pop()
        for child in children.get(pid, []):
            out.append((depth + 1, child))
            todo.append((depth + 1, child))
    return out


def _signal(pids, sig):
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def _wait_gone(pids, keepers, proc=None):
    """Wait until every PID is gone: reaped, or a zombie whose parent is none of ``keepers``
    (its reaper is then some init that may never come: nothing to wait for)."""
    deadline = time.monotonic() + STOP_TIMEOUT
    while time.monotonic() < deadline:
        if proc is not None:
            proc.poll()
        left = [p for p in pids if _stat(p) is not None and (_stat(p)[0] != 'Z' or _stat(p)[1] in keepers)]
        if not left:
            return True
        time.sleep(0.05)
    return False


def _kill_tree(pid, config_path, proc=None):
    """Stop the listener ``pid`` (if it still runs our config) and every session it forked.

    Deepest processes first, so each dies while its parent still runs to reap it; the
    listener last.
    """
    try:
        with open('/proc/%d/cmdline' % pid, 'rb') as f:
            cmdline = f.read()
    except OSError:
        return
    if config_path.encode() not in cmdline:  # sshd rewrites its argv: a substring check
        return  # the PID belongs to someone else now
    for _round in range(3):  # a session accepted while we were at it
        tree = _tree(pid)
        if not tree:
            break
        keepers = {pid} | {p for _d, p in tree}
        for depth in sorted({d for d, _p in tree}, reverse=True):
            level = [p for d, p in tree if d == depth]
            _signal(level, signal.SIGTERM)
            if not _wait_gone(level, keepers):
                _signal(level, signal.SIGKILL)
                _wait_gone(level, keepers)
    _signal([pid], signal.SIGTERM)
    if not _wait_gone([pid], set(), proc):
        _signal([pid], signal.SIGKILL)
        _wait_gone([pid], set(), proc)


class LoopbackSshd:
    """One private sshd on 127.0.0.1; ``start()``/``stop()`` or a ``with`` block."""

    def __init__(self, workdir=None, user=None):
        self.user = user or pwd.getpwuid(os.getuid()).pw_name
        self.workdir = workdir
        self._own_workdir = workdir is None
        self.port = None
        self.pid = None
        self._proc = None

    # -- paths -----------------------------------------------------------------------------

    def _path(self, name):
        return os.path.join(self.workdir, name)

    @property
    def config_path(self):
        return self._path('sshd_config')

    @property
    def client_key(self):
        return self._path('client_key')

    @property
    def pid_file(self):
        return self._path('sshd.pid')

    @property
    def log_path(self):
        return self._path('sshd.log')

    @property
    def control_path_dir(self):
        return self._path('cp')

    # -- what clients use --------------------------------------------------------------------

    def client_options(self):
        """ssh options for a client of this daemon (key, no known_hosts, no ssh_config)."""
        return ['-i', self.client_key, '-p', str(self.port)] + CLIENT_OPTIONS

    def ssh_argv(self, *command):
        return ['ssh'] + self.client_options() + ['-o', 'BatchMode=yes', '%s@%s' % (self.user, HOST)] + list(command)

    def ansible_vars(self):
        """Inventory variables that make a host reach this machine through this daemon."""
        return {
            'ansible_host': HOST,
            'ansible_port': self.port,
            'ansible_user': self.user,
            'ansible_connection': 'ssh',
            'ansible_ssh_private_key_file': self.client_key,
            'ansible_ssh_common_args': ' '.join(CLIENT_OPTIONS),
            'ansible_control_path_dir': self.control_path_dir,
        }

    def state(self):
        return {'dir': self.workdir, 'host': HOST, 'port': self.port, 'user': self.user, 'pid': self.pid,
                'client_key': self.client_key, 'log': self.log_path, 'ansible_vars': self.ansible_vars()}

    # -- lifecycle ---------------------------------------------------------------------------

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def start(self, detach=False):
        """Write config and keys, start sshd, wait until a login works. ``detach``: outlive us."""
        sshd = find_sshd()
        if self.workdir is None:
            self.workdir = tempfile.mkdtemp(prefix='kata-sshd-')
        os.chmod(self.workdir, 0o700)
        try:
            self._keys()
            if os.geteuid() == 0 and not os.path.isdir(PRIVSEP_DIR):
                os.makedirs(PRIVSEP_DIR, mode=0o755, exist_ok=True)
            os.makedirs(self.control_path_dir, mode=0o700, exist_ok=True)
            self._launch(sshd, detach)
            self._check_login()
        except BaseException:
            self.stop()
            raise
        with open(self._path(STATE_FILE), 'w') as f:
            json.dump(self.state(), f, indent=1)
        return self

    def stop(self):
        """Stop the daemon and the sessions it forked; remove the directory if we made it."""
        if self.workdir is None:
            return
        pid = self.pid
        if pid is None and os.path.exists(self.pid_file):
            with open(self.pid_file) as f:
                pid = int(f.read().strip() or 0) or None
        if pid is not None:
            _kill_tree(pid, self.config_path, self._proc)
        if self._proc is not None:
            try:
                self._proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                pass
        self.pid = self._proc = None
        if self.workdir and self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def _keys(self):
        host_key = self._path('ssh_host_ed25519_key')
        for key, comment in ((host_key, 'kata loopback sshd host key'), (self.client_key, 'kata loopback client')):
            if not os.path.exists(key):
                subprocess.run(['ssh-keygen', '-q', '-t', 'ed25519', '-N', '', '-C', comment, '-f', key],
                               check=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        with open(self.client_key + '.pub') as f:
            pub = f.read().strip()
        # restrict: no forwarding of any kind, no ~/.ssh/rc; pty: Ansible asks for one (-tt)
        with open(self._path('authorized_keys'), 'w') as f:
            f.write('restrict,pty %s\n' % pub)

    def _write_config(self):
        lines = [
            'ListenAddress %s:%d' % (HOST, self.port),
            'AddressFamily inet',
            'HostKey %s' % self._path('ssh_host_ed25519_key'),
            'PidFile %s' % self.pid_file,
            'AuthorizedKeysFile %s' % self._path('authorized_keys'),
            'AllowUsers %s' % self.user,
            'AuthenticationMethods publickey',
            'PubkeyAuthentication yes',
            'PasswordAuthentication no',
            'KbdInteractiveAuthentication no',
            'UsePAM no',
            'PermitRootLogin prohibit-password',
            # the key files sit in our 0700 directory, but under a world-writable /tmp, which
            # StrictModes rejects for authorized_keys
            'StrictModes no',
            'PermitUserEnvironment no',
            'PermitUserRC no',
            'AllowAgentForwarding no',
            'AllowTcpForwarding no',
            'AllowStreamLocalForwarding no',
            'X11Forwarding no',
            'PermitTunnel no',
            'GatewayPorts no',
            'PrintMotd no',
            'PrintLastLog no',
            'UseDNS no',
            'LoginGraceTime 30',
            # a fleet of inventory hosts connects at once, each with a ControlMaster
            'MaxStartups 100:30:200',
            'MaxSessions 100',
            'Subsystem sftp internal-sftp',
            'LogLevel INFO',
        ]
        with open(self.config_path, 'w') as f:
            f.write('# private loopback sshd (scripts/loopback_sshd.py); nothing here is the host\'s\n')
            f.write('\n'.join(lines) + '\n')

    def _launch(self, sshd, detach):
        last_log = ''
        for _attempt in range(PORT_ATTEMPTS):
            self.port = free_port()
            self._write_config()
            check = subprocess.run([sshd, '-t', '-f', self.config_path], stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True, check=False)
            if check.returncode != 0:
                raise SshdError('sshd -t rejected %s: %s' % (self.config_path, check.stdout.strip()))
            if os.path.exists(self.pid_file):
                os.unlink(self.pid_file)
            log_start = os.path.getsize(self.log_path) if os.path.exists(self.log_path) else 0
            # -D: stay in the foreground as our child (reaped by stop()); a new session, so a
            # Ctrl-C meant for the caller's terminal does not hit it first
            proc = subprocess.Popen([sshd, '-D', '-f', self.config_path, '-E', self.log_path],
                                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL, start_new_session=True, close_fds=True)
            self._proc, self.pid = (None if detach else proc), proc.pid
            if self._wait_listening(proc):
                return
            proc.wait()
            with open(self.log_path) as f:
                f.seek(log_start)
                last_log = f.read().strip()
            if 'Address already in use' not in last_log:
                break
        raise SshdError('sshd did not start on %s:%s: %s' % (HOST, self.port, last_log[-2000:]))

    def _wait_listening(self, proc):
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                return False
            if os.path.exists(self.pid_file):  # written once the listening socket is bound
                try:
                    with socket.create_connection((HOST, self.port), timeout=1):
                        return True
                except OSError:
                    pass
            time.sleep(0.05)
        raise SshdError('sshd did not listen on %s:%s within %ds' % (HOST, self.port, START_TIMEOUT))

    def _check_login(self):
        proc = subprocess.run(self.ssh_argv('true'), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, timeout=60, check=False)
        if proc.returncode != 0:
            with open(self.log_path) as f:
                log = f.read()
            raise SshdError('ssh %s@%s -p %d failed (rc %d): %s\nsshd log:\n%s'
                            % (self.user, HOST, self.port, proc.returncode, proc.stdout.strip(), log[-2000:]))


def main(argv=None):
    p = argparse.ArgumentParser(description='A private sshd on 127.0.0.1 (see the module docstring).')
    sub = p.add_subparsers(dest='command', required=True)
    start = sub.add_parser('start', help='start a detached sshd; print its state as JSON')
    start.add_argument('--dir', help='directory for config, keys and pid file (default: a new temp dir)')
    start.add_argument('--user', help='the user clients log in as (default: the current user)')
    stop = sub.add_parser('stop', help='stop the sshd of DIR and its sessions, remove DIR')
    stop.add_argument('dir')
    args = p.parse_args(argv)
    if args.command == 'start':
        if args.dir:
            os.makedirs(args.dir, mode=0o700, exist_ok=True)
        sshd = LoopbackSshd(workdir=args.dir, user=args.user).start(detach=True)
        json.dump(sshd.state(), sys.stdout, indent=1)
        sys.stdout.write('\n')
        return 0
    with open(os.path.join(args.dir, STATE_FILE)) as f:
        state = json.load(f)
    sshd = LoopbackSshd(workdir=args.dir, user=state['user'])
    sshd._own_workdir = True  # the CLI's stop removes the directory, whoever made it
    sshd.pid = state['pid']
    sshd.stop()
    return 0


if __name__ == '__main__':
    sys.exit(main())
