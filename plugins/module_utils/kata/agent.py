# Copyright: kata.runtime contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Host side of the agent protocol: JSON lines over the sandbox's agent socket.

libvirt's qemu listens on ``<state_root>/sock/<hash>.sock`` and relays it to the guest's
virtio-serial port ``agent.0``, where the guest agent (``guest/agent.py``) answers. Only one
client can be connected at a time; each module run connects, makes a few calls and leaves.

Because the guest keeps whatever a previous client left behind, every connection starts with
an empty line (ending any half-sent line in the guest) and every request carries an id drawn
from a per-client random base: replies with another id are stale and skipped.
"""

from __future__ import annotations

import errno
import json
import os
import random
import socket
import time

from ansible_collections.kata.runtime.plugins.module_utils.kata.errors import AgentError

PROTOCOL = 1
_MAX_REPLY = 64 * 1024 * 1024


class _Dropped(Exception):
    """The connection closed under us (EOF or reset)."""


class AgentClient:
    """A connection to one sandbox's agent.

    ``call(method, timeout=None, **params)`` sends one request and returns its ``result``;
    every failure is an ``AgentError`` saying which call, which socket and what to do.
    """

    def __init__(self, socket_path, timeout=10, console_log=None):
        self.socket_path = socket_path
        self.timeout = timeout
        self.console_log = console_log
        self._sock = None
        self._buf = b''
        self._next_id = random.SystemRandom().randrange(1, 2 ** 31)

    # -- connection ---------------------------------------------------------------------------

    def _unavailable(self, err):
        return AgentError('agent socket %s not available (%s): is the sandbox running?'
                          % (self.socket_path, err.strerror or err),
                          socket=self.socket_path)

    def connect(self, timeout=None):
        """Open the connection if it is not open yet."""
        if self._sock is not None:
            return
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout if timeout is None else timeout)
        try:
            sock.connect(self.socket_path)
            # End whatever partial line an earlier client may have left in the guest.
            sock.sendall(b'\n')
        except socket.timeout:
            sock.close()
            raise AgentError('connecting to agent socket %s timed out after %ss'
                             % (self.socket_path, _fmt(self.timeout if timeout is None else timeout)),
                             socket=self.socket_path) from None
        except OSError as err:
            sock.close()
            raise self._unavailable(err) from None
        self._sock = sock
        self._buf = b''

    def close(self):
        if self._sock is not None:
            try:
                self._sock.close()
            finally:
                self._sock = None
                self._buf = b''

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:  # noqa: BLE001 - never raise from a finaliser
            pass

    # -- requests -----------------------------------------------------------------------------

    def call(self, method, timeout=None, **params):
        """Call ``method`` with ``params``; ``timeout`` (seconds) defaults to the client's.

        For ``wait_container`` the ``timeout`` is the wait itself (a param of the method):
        ``call('wait_container', id=c, timeout=30)`` waits up to 30 s in the guest and allows
        the client's own timeout on top for the reply to arrive.
        """
        if method == 'wait_container' and timeout is not None:
            params['timeout'] = timeout
            timeout = self.timeout + _number(timeout)
        return self.request(method, params, timeout=timeout)

    def request(self, method, params=None, timeout=None):
        """Like ``call`` with the params as a dict (for params named ``timeout``)."""
        timeout = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        rid = self._new_id()
        line = json.dumps({'id': rid, 'method': method, 'params': params or {}},
                          separators=(',', ':')).encode('utf-8') + b'\n'
        for attempt in (1, 2):
            reused = self._sock is not None
            self.connect(timeout=max(0.001, deadline - time.monotonic()))
            try:
                self._send(line, deadline)
                reply = self._read_reply({rid}, deadline)
            except _Dropped as err:
                self.close()
                # An idle connection kept from an earlier call may have gone stale (the VM
                # rebooted, qemu restarted): reconnect once. A fresh one dropping is an answer.
                if attempt == 1 and reused:
                    continue
                raise AgentError('agent call %r on socket %s failed: connection closed (%s); '
                                 'the sandbox may have stopped%s'
                                 % (method, self.socket_path, err, self._hint()),
                                 socket=self.socket_path, method=method) from None
            except socket.timeout:
                self.close()
                raise AgentError('agent call %r on socket %s timed out after %ss'
                                 % (method, self.socket_path, _fmt(timeout)),
                                 socket=self.socket_path, method=method) from None
            if 'error' in reply and reply['error'] is not None:
                raise AgentError('agent call %r failed: %s' % (method, reply['error']),
                                 socket=self.socket_path, method=method)
            return reply.get('result')
        raise AssertionError('unreachable')

    def _new_id(self):
        rid = self._next_id
        self._next_id = 1 if self._next_id >= 2 ** 53 else self._next_id + 1
        return rid

    def _send(self, data, deadline):
        self._sock.settimeout(max(0.001, deadline - time.monotonic()))
        try:
            self._sock.sendall(data)
        except socket.timeout:
            raise
        except OSError as err:
            if err.errno in (errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN, errno.ECONNABORTED):
                raise _Dropped(err.strerror) from None
            raise AgentError('agent socket %s: send failed: %s' % (self.socket_path, err),
                             socket=self.socket_path) from None

    def _read_reply(self, ids, deadline):
        """Read lines until a reply whose id is in ``ids``; other ids are stale, skipped."""
        while True:
            while b'\n' in self._buf:
                line, self._buf = self._buf.split(b'\n', 1)
                try:
                    reply = json.loads(line.decode('utf-8'))
                except ValueError:
                    continue  # a torn line from an earlier exchange
                if isinstance(reply, dict) and reply.get('id') in ids:
                    return reply
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise socket.timeout('timed out')
            self._sock.settimeout(remaining)
            try:
                chunk = self._sock.recv(65536)
            except socket.timeout:
                raise
            except OSError as err:
                if err.errno in (errno.ECONNRESET, errno.ENOTCONN, errno.ECONNABORTED, errno.EPIPE):
                    raise _Dropped(err.strerror) from None
                raise
            if not chunk:
                raise _Dropped('end of stream')
            self._buf += chunk
            if len(self._buf) > _MAX_REPLY:
                self._buf = b''
                raise AgentError('agent socket %s sent a line longer than %d bytes'
                                 % (self.socket_path, _MAX_REPLY), socket=self.socket_path)

    def _hint(self):
        if self.console_log:
            return '; see the guest console log %s' % self.console_log
        return '; see the sandbox console log'

    # -- readiness ----------------------------------------------------------------------------

    def wait_ready(self, timeout, progress=None, interval=0.1):
        """Wait until the agent answers a ping; return the ping result.

        Keeps one connection open and pings about once a second (the guest may still be
        booting; qemu holds the bytes until the agent opens its port). ``progress(elapsed)``
        is called about once a second. A VM that died (its socket vanished, or connections
        refused or closed again and again for a while) and the deadline both raise
        ``AgentError`` with the elapsed time.
        """
        start = time.monotonic()
        deadline = start + timeout
        last_progress = start
        seen_socket = False
        failures = 0
        first_failure = None
        last_error = 'no answer yet'
        ids = set()
        self.close()
        while True:
            now = time.monotonic()
            if progress is not None and now - last_progress >= 1.0:
                last_progress = now
                progress(now - start)
            if now >= deadline:
                self.close()
                raise AgentError('agent on socket %s did not answer within %ss (%s)%s'
                                 % (self.socket_path, _fmt(timeout), last_error, self._hint()),
                                 socket=self.socket_path, elapsed=now - start)
            failed = None
            if self._sock is None:
                failed = self._try_connect(min(1.0, deadline - now))
                if failed is None:
                    seen_socket = True
                elif failed == 'missing' and seen_socket:
                    elapsed = time.monotonic() - start
                    raise AgentError('agent socket %s vanished after %.1fs: the VM has stopped%s'
                                     % (self.socket_path, elapsed, self._hint()),
                                     socket=self.socket_path, elapsed=elapsed)
                elif failed == 'missing':
                    last_error = 'socket %s does not exist yet' % self.socket_path
                else:
                    seen_socket = True
            if failed is None:
                rid = self._new_id()
                ids.add(rid)
                line = json.dumps({'id': rid, 'method': 'ping', 'params': {}},
                                  separators=(',', ':')).encode('utf-8') + b'\n'
                try_deadline = min(deadline, time.monotonic() + 1.0)
                try:
                    self._send(line, try_deadline)
                    reply = self._read_reply(ids, try_deadline)
                except socket.timeout:
                    # Connected but the guest is not answering yet: keep the connection.
                    failures, first_failure = 0, None
                    last_error = 'connected, no reply yet'
                    continue
                except _Dropped:
                    self.close()
                    failed = 'connection closed'
                else:
                    if reply.get('error') is not None:
                        raise AgentError('agent on socket %s refused ping: %s'
                                         % (self.socket_path, reply['error']),
                                         socket=self.socket_path)
                    return reply.get('result')
            if failed != 'missing':
                last_error = failed
                failures += 1
                if first_failure is None:
                    first_failure = time.monotonic()
                if failures >= 5 and time.monotonic() - first_failure >= 1.0:
                    elapsed = time.monotonic() - start
                    raise AgentError('agent on socket %s unreachable after %.1fs (%s, %d times '
                                     'in a row): the VM seems to have died%s'
                                     % (self.socket_path, elapsed, last_error, failures,
                                        self._hint()),
                                     socket=self.socket_path, elapsed=elapsed)
            time.sleep(max(0.0, min(interval, deadline - time.monotonic())))

    def _try_connect(self, timeout):
        """Connect for ``wait_ready``: None when connected, else why not."""
        try:
            self.connect(timeout=max(0.001, timeout))
        except AgentError as err:
            if not os.path.exists(self.socket_path):
                return 'missing'
            return 'connection refused' if 'not available' in str(err) else 'connect timed out'
        return None

    # -- convenience wrappers -----------------------------------------------------------------

    def ping(self, timeout=None):
        return self.request('ping', {}, timeout=timeout)

    def create_container(self, container_id, args, rootfs=None, env=None, cwd=None, uid=None,
                         gid=None, hostname=None, stdout=None, stderr=None, timeout=None):
        params = {'id': container_id, 'args': list(args), 'rootfs': rootfs,
                  'env': list(env) if env is not None else None, 'cwd': cwd, 'uid': uid,
                  'gid': gid, 'hostname': hostname, 'stdout': stdout, 'stderr': stderr}
        return self.request('create_container',
                            {k: v for k, v in params.items() if v is not None}, timeout=timeout)

    def start_container(self, container_id, timeout=None):
        return self.request('start_container', {'id': container_id}, timeout=timeout)

    def signal_container(self, container_id, signal='SIGTERM', timeout=None):
        return self.request('signal_container', {'id': container_id, 'signal': signal},
                            timeout=timeout)

    def wait_container(self, container_id, timeout=0):
        """Wait up to ``timeout`` seconds in the guest for the container to stop."""
        return self.request('wait_container', {'id': container_id, 'timeout': timeout},
                            timeout=self.timeout + _number(timeout))

    def container_state(self, container_id, timeout=None):
        return self.request('container_state', {'id': container_id}, timeout=timeout)

    def remove_container(self, container_id, timeout=None):
        return self.request('remove_container', {'id': container_id}, timeout=timeout)

    def list_containers(self, timeout=None):
        return self.request('list_containers', {}, timeout=timeout)

    def kill_all(self, signal='SIGKILL', timeout=None):
        return self.request('kill_all', {'signal': signal}, timeout=timeout)

    def shutdown(self, timeout=None):
        """Ask the guest to stop its containers and power off; the connection then closes."""
        try:
            return self.request('shutdown', {}, timeout=timeout)
        finally:
            self.close()


def _fmt(seconds):
    return ('%.1f' % seconds).rstrip('0').rstrip('.') if isinstance(seconds, float) else str(seconds)


def _number(value):
    try:
        return max(0.0, float(value))
    except (TypeError, ValueError):
        return 0.0  # the agent itself refuses the bad value with a clear message
