# Copyright: kata.runtime contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Host side of the agent protocol: JSON lines over the sandbox's agent socket.

libvirt's qemu listens on ``<state_root>/sock/<hash>.sock`` and relays it to the guest's
virtio-serial port ``agent.0``, where the guest agent (``guest/agent.py``) answers. Only one
client can be connected at a time; each module run connects, makes a few calls and leaves.

Because the guest keeps whatever a previous client left behind, every connection starts with
an empty line (ending any half-sent line in the guest) and every request carries an id drawn
from a per-client random base: replies with another id are stale and skipped.

Everything the guest sends is hostile input (docs/security.md), so this file is the one place
where its bytes become values: a reply line is read in time linear in its length and refused
past the protocol's line cap ``contract.MAX_LINE`` (the guest's cap on a request line too; an
honest reply is a few hundred bytes per container) as soon as that many bytes are in; its
nesting is measured before ``json.loads`` sees it; the reply must be an object with an integer
``id`` and a string or null ``error``; and its ``result`` must have the shape its method
returns (``_RESULTS``), keeping only the fields the host uses. Anything else is an
``AgentError`` naming the sandbox, the socket and the call, so every caller can treat a hostile
guest like an unreachable one.
"""

from __future__ import annotations

import errno
import json
import math
import os
import random
import re
import socket
import time

from ansible_collections.kata.runtime.plugins.module_utils.kata.errors import AgentError
from ansible_collections.kata.runtime.plugins.module_utils.kata.guest import contract
from ansible_collections.kata.runtime.plugins.module_utils.kata.ids import ID_PATTERN

# The deepest nesting accepted in a reply: honest ones nest four deep (the reply, the list of
# states, a state, its args). json.loads recurses once per level, so this is checked first.
MAX_REPLY_DEPTH = 32
# How much of a guest's error text, or of a value it sent, reaches a message.
MAX_ERROR_TEXT = 512
_MAX_REPR = 80
# Guest-supplied strings the host keeps (times, versions) are short.
_MAX_FIELD = 64
_RECV_SIZE = 65536

# JSON strings (an unterminated one runs to the end of the line, so no position is rescanned),
# and everything that is not a bracket: what is left after both is the nesting.
_JSON_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"?', re.DOTALL)
_NOT_BRACKET = re.compile(r'[^\[\]{}]+')
# C0 and C1 controls, line/paragraph separators and bidi overrides: guest text must not be
# able to forge lines or reorder what a terminal shows.
_CONTROL = re.compile(r'[\x00-\x1f\x7f-\x9f\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069]')
_ID_RE = re.compile(ID_PATTERN, re.ASCII)


class _Dropped(Exception):
    """The connection closed under us (EOF or reset)."""


class _Invalid(Exception):
    """A reply, or its result, does not have the shape its call returns (the why is the text)."""


class AgentClient:
    """A connection to one sandbox's agent.

    ``call(method, timeout=None, **params)`` sends one request and returns its ``result``,
    checked against the shape of that method's result; every failure (including a reply that
    is not what the method returns) is an ``AgentError`` saying which call, which socket and
    what to do. ``sandbox_id`` only names the sandbox in messages.
    """

    def __init__(self, socket_path, timeout=10, console_log=None, sandbox_id=None):
        self.socket_path = socket_path
        self.timeout = timeout
        self.console_log = console_log
        self.sandbox_id = sandbox_id
        self._sock = None
        # Received bytes not yet handed out as lines, and how far they are known to hold no
        # newline: each byte is searched once, however the line arrives.
        self._buf = bytearray()
        self._scanned = 0
        self._next_id = random.SystemRandom().randrange(1, 2 ** 31)

    # -- connection ---------------------------------------------------------------------------

    def _unavailable(self, err):
        return AgentError('%s is not available (%s): is the sandbox running?'
                          % (self._who(), err.strerror or err),
                          socket=self.socket_path, sandbox=self.sandbox_id)

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
            raise AgentError('connecting to %s timed out after %ss'
                             % (self._who(), _fmt(self.timeout if timeout is None else timeout)),
                             socket=self.socket_path, sandbox=self.sandbox_id) from None
        except OSError as err:
            sock.close()
            raise self._unavailable(err) from None
        self._sock = sock
        self._buf = bytearray()
        self._scanned = 0

    def close(self):
        if self._sock is not None:
            try:
                self._sock.close()
            finally:
                self._sock = None
                self._buf = bytearray()
                self._scanned = 0

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
        if method not in _RESULTS:
            # A programming error, caught before anything is sent: every result is checked.
            raise AgentError('agent method %r has no known result shape: add it to _RESULTS in agent.py'
                             % (method,), socket=self.socket_path, method=method)
        params = params or {}
        timeout = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        rid = self._new_id()
        line = json.dumps({'id': rid, 'method': method, 'params': params},
                          separators=(',', ':')).encode('utf-8') + b'\n'
        for attempt in (1, 2):
            reused = self._sock is not None
            self.connect(timeout=max(0.001, deadline - time.monotonic()))
            try:
                self._send(line, deadline)
                reply = self._read_reply({rid}, deadline, method)
            except AgentError:
                self.close()  # after a refused reply the rest of the stream is not trusted
                raise
            except _Dropped as err:
                self.close()
                # An idle connection kept from an earlier call may have gone stale (the VM
                # rebooted, qemu restarted): reconnect once. A fresh one dropping is an answer.
                if attempt == 1 and reused:
                    continue
                raise AgentError('agent call %r to %s failed: connection closed (%s); '
                                 'the sandbox may have stopped%s'
                                 % (method, self._who(), err, self._hint()),
                                 socket=self.socket_path, method=method, sandbox=self.sandbox_id) from None
            except socket.timeout:
                self.close()
                raise AgentError('agent call %r to %s timed out after %ss: the guest stopped '
                                 'answering (a forced delete still works)'
                                 % (method, self._who(), _fmt(timeout)),
                                 socket=self.socket_path, method=method, sandbox=self.sandbox_id) from None
            if reply.get('error') is not None:
                raise AgentError('agent call %r to %s failed: %s' % (method, self._who(), reply['error']),
                                 socket=self.socket_path, method=method, sandbox=self.sandbox_id)
            return self._result(method, params, reply)
        raise AssertionError('unreachable')

    def _result(self, method, params, reply):
        """The reply's result in the shape ``method`` returns, or ``AgentError``."""
        try:
            return _RESULTS[method](reply.get('result'), params)
        except _Invalid as err:
            self.close()
            raise self._invalid(method, str(err)) from None

    def _who(self):
        if self.sandbox_id:
            return 'the agent of sandbox %s (socket %s)' % (self.sandbox_id, self.socket_path)
        return 'the agent on socket %s' % self.socket_path

    def _invalid(self, method, why):
        return AgentError('%s sent an invalid reply to %s: %s' % (self._who(), method, why),
                          socket=self.socket_path, method=method, sandbox=self.sandbox_id)

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
            raise self._socket_error(err, 'send') from None

    def _socket_error(self, err, doing, method=None):
        """What an OSError of a send or receive means: the connection dropped (_Dropped: a
        reconnect may help), or an AgentError naming the socket."""
        if err.errno in (errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN, errno.ECONNABORTED):
            return _Dropped(err.strerror)
        return AgentError('agent socket %s: %s failed: %s' % (self.socket_path, doing, err),
                          socket=self.socket_path, method=method)

    def _read_reply(self, ids, deadline, method):
        """Read lines until a reply whose id is in ``ids``; other ids are stale, skipped.

        The reply returned is an object with an int ``id`` and an ``error`` that is None or a
        short, clean string; a line that cannot be one raises ``AgentError`` naming ``method``.
        """
        while True:
            line = self._next_line(method)
            while line is not None:
                try:
                    reply = _parse_reply(line)
                except _Invalid as err:
                    raise self._invalid(method, str(err)) from None
                if reply is not None and reply['id'] in ids:
                    return reply
                line = self._next_line(method)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise socket.timeout('timed out')
            self._sock.settimeout(remaining)
            try:
                chunk = self._sock.recv(_RECV_SIZE)
            except socket.timeout:
                raise
            except OSError as err:
                raise self._socket_error(err, 'receive', method) from None
            if not chunk:
                raise _Dropped('end of stream')
            self._buf += chunk

    def _next_line(self, method):
        """The next complete line (without its newline), or None until one has arrived.

        Searches only the bytes not searched before and refuses a line past contract.MAX_LINE as
        soon as that many bytes are in without a newline, so reading costs time linear in
        what arrived, never the length of the line squared.
        """
        end = self._buf.find(b'\n', self._scanned)
        if end < 0:
            self._scanned = len(self._buf)
            if self._scanned > contract.MAX_LINE:
                self._too_long(method)
            return None
        if end > contract.MAX_LINE:
            self._too_long(method)
        line = bytes(self._buf[:end])
        del self._buf[:end + 1]
        self._scanned = 0
        return line

    def _too_long(self, method):
        self.close()  # the rest of that line is still on its way: drop the connection with it
        raise AgentError('%s sent a reply line longer than %d bytes to %s: refused'
                         % (self._who(), contract.MAX_LINE, method),
                         socket=self.socket_path, method=method, sandbox=self.sandbox_id)

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
                    reply = self._read_reply(ids, try_deadline, 'ping')
                except AgentError:
                    self.close()
                    raise
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
                        self.close()
                        raise AgentError('%s refused ping: %s%s' % (self._who(), reply['error'], self._hint()),
                                         socket=self.socket_path)
                    return self._result('ping', {}, reply)
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


# ---------------------------------------------------------------------------------------------
# The parse boundary: from a line of guest bytes to a reply, and from a result to its shape.

def _parse_reply(line):
    """A reply object from one line, None for a line that is no one's reply, else _Invalid.

    Empty lines and lines that are not JSON text are skipped: a line torn by an earlier
    client's exchange looks like that, and it can only delay the answer, never stand in for it.
    JSON too deep to decode safely, or JSON that is not a reply, is refused.
    """
    try:
        text = line.decode('utf-8')
    except UnicodeDecodeError:
        return None
    if not text.strip():
        return None
    if _depth(text) > MAX_REPLY_DEPTH:
        raise _Invalid('nested deeper than %d levels' % MAX_REPLY_DEPTH)
    try:
        reply = json.loads(text)
    except RecursionError:  # not reachable after the depth check; never let it escape
        raise _Invalid('nested too deep to decode') from None
    except ValueError:
        return None
    if not isinstance(reply, dict):
        raise _Invalid('expected a JSON object, got %s' % _kind(reply))
    rid = reply.get('id')
    if rid is None:
        return None  # the guest's answer to a line it could not read, sent to whoever listens
    if isinstance(rid, bool) or not isinstance(rid, int):
        raise _Invalid('id must be an integer, got %s' % _kind(rid))
    error = reply.get('error')
    if error is not None:
        if not isinstance(error, str):
            raise _Invalid('error must be a string or null, got %s' % _kind(error))
        reply['error'] = _clean(error, MAX_ERROR_TEXT) or '(empty error message)'
    return reply


def _depth(text):
    """How deep the brackets of JSON ``text`` nest, in one pass and without recursion.

    Strings are cut out first (a bracket inside one is text); an unterminated string runs to
    the end, so the result is an upper bound for whatever json.loads would recurse into.
    """
    brackets = _NOT_BRACKET.sub('', _JSON_STRING.sub('', text))
    if len(brackets) <= MAX_REPLY_DEPTH:
        return len(brackets)
    depth = deepest = 0
    for ch in brackets:
        if ch == '[' or ch == '{':
            depth += 1
            if depth > deepest:
                deepest = depth
                if deepest > MAX_REPLY_DEPTH:
                    break  # deep enough to refuse: no need to read further
        else:
            depth -= 1
    return deepest


def _clean(text, limit):
    """Guest text fit for a message: controls replaced, at most ``limit`` characters."""
    if len(text) > limit:
        text = text[:limit] + '... (%d more characters)' % (len(text) - limit)
    return _CONTROL.sub('?', text)


def _kind(value):
    """What a JSON value is, for a message: its type and a short, clean repr."""
    if value is None:
        return 'null'
    if isinstance(value, (dict, list)):
        return '%s of %d' % (type(value).__name__, len(value))
    if isinstance(value, str):
        value = value[:_MAX_REPR]  # repr only what is shown
    return '%s %s' % (type(value).__name__, _clean(repr(value), _MAX_REPR))


def _want_dict(result, what):
    if not isinstance(result, dict):
        raise _Invalid('expected %s, got %s' % (what, _kind(result)))
    return result


# What _want returns for an optional field the guest left out.
_ABSENT = object()


def _want(result, key, check, what, required=True):
    """``result[key]`` if ``check`` accepts it; _ABSENT if it is missing and not required."""
    if key not in result:
        if required:
            raise _Invalid('%s missing' % key)
        return _ABSENT
    value = result[key]
    if not check(value):
        raise _Invalid('%s must be %s, got %s' % (key, what, _kind(value)))
    return value


def _is_int(value, low=None, high=None):
    if isinstance(value, bool) or not isinstance(value, int):
        return False
    return (low is None or value >= low) and (high is None or value <= high)


def _is_seconds(value):
    if isinstance(value, float):
        return math.isfinite(value) and value >= 0
    return _is_int(value, 0, 2 ** 53)


def _is_short_str(value):
    return isinstance(value, str) and len(value) <= _MAX_FIELD


def _is_id(value):
    return isinstance(value, str) and _ID_RE.fullmatch(value) is not None


STATUSES = ('creating', 'created', 'running', 'stopped')

# The fields of a container state the host uses, each with its check; the guest sends more
# (rootfs, args, stdout, stderr), which the host never reads and so never keeps.
_STATE_FIELDS = (
    ('status', lambda v: v in STATUSES, 'one of %s' % ', '.join(STATUSES), True),
    ('pid', lambda v: v is None or _is_int(v, 0, 2 ** 31), 'null or a process id', False),
    ('exit_code', lambda v: v is None or _is_int(v, -2 ** 31, 2 ** 31), 'null or an exit code', False),
    ('created_at', lambda v: v is None or _is_short_str(v), 'null or a short string', False),
    ('started_at', lambda v: v is None or _is_short_str(v), 'null or a short string', False),
    ('finished_at', lambda v: v is None or _is_short_str(v), 'null or a short string', False),
)


def _state(result, want_id=None, what='a container state (an object)'):
    """A container state: ``id`` (``want_id`` when the call named one) and the checked fields."""
    _want_dict(result, what)
    cid = _want(result, 'id', _is_id, 'a container ID')
    if want_id is not None and cid != want_id:
        raise _Invalid('the state is of container %s, not %s' % (_clean(cid, _MAX_REPR), want_id))
    out = {'id': cid}
    for key, check, what_value, required in _STATE_FIELDS:
        value = _want(result, key, check, what_value, required)
        if value is not _ABSENT:
            out[key] = value
    return out


def _one_state(result, params):
    return _state(result, want_id=params.get('id'))


def _state_list(result, params):
    if not isinstance(result, list):
        raise _Invalid('expected a list of container states, got %s' % _kind(result))
    out = []
    for index, item in enumerate(result):
        try:
            out.append(_state(item))
        except _Invalid as err:
            raise _Invalid('item %d: %s' % (index, err)) from None
    return out


def _ping(result, params):
    _want_dict(result, 'an object')
    out = {}
    for key, check, what in (('version', _is_short_str, 'a short string'),
                             ('protocol', lambda v: _is_int(v, 0, 2 ** 31), 'an integer'),
                             ('pid', lambda v: _is_int(v, 0, 2 ** 31), 'a process id'),
                             ('uptime', _is_seconds, 'a number of seconds')):
        value = _want(result, key, check, what, required=False)
        if value is not _ABSENT:
            out[key] = value
    return out


def _fields(*spec):
    """A check for an object result that must hold the fields ``spec`` ((key, check, what)
    each); those are kept, anything else the guest sent is dropped."""
    def check(result, params):
        _want_dict(result, 'an object')
        out = {key: _want(result, key, ok, what) for key, ok, what in spec}
        if 'id' in out and params.get('id') is not None and out['id'] != params['id']:
            raise _Invalid('the reply is about container %s, not %s'
                           % (_clean(out['id'], _MAX_REPR), params['id']))
        return out
    return check


def _post_clone(result, params):
    """A clone's answer to post_clone (guest/agent.py m_post_clone): how many seed bytes it mixed
    into its RNG, whether it set its clock, and which of the shares asked for it mounted."""
    _want_dict(result, 'an object')
    seeded = _want(result, 'seeded', lambda v: _is_int(v, 0, 4096), 'a byte count')
    clock_set = _want(result, 'clock_set', lambda v: isinstance(v, bool), 'a boolean')
    asked = params.get('mounts') or []
    mounted = _want(result, 'mounted', lambda v: isinstance(v, list) and len(v) <= len(asked)
                    and len(set(map(repr, v))) == len(v) and all(t in asked for t in v),
                    'a list of distinct shares asked for (%s)' % ', '.join(asked))
    return {'seeded': seeded, 'clock_set': clock_set, 'mounted': list(mounted)}


_CGROUP_VALUE_RE = re.compile(r'^[0-9a-z ,-]{0,64}$')
_CGROUP_KEY_RE = re.compile(r'^[a-z_]{1,16}(\.[a-z_]{1,16}){1,2}$')


def _is_cgroup(value):
    """What a container's cgroup holds (guest/agent.py cgroup_read): a small flat object of
    cgroup file names and their plain values."""
    return (isinstance(value, dict) and len(value) <= 32
            and all(isinstance(k, str) and _CGROUP_KEY_RE.match(k) and isinstance(v, str)
                    and _CGROUP_VALUE_RE.match(v) for k, v in value.items()))


_ID_FIELD = ('id', _is_id, 'a container ID')
_SIGNAL_FIELD = ('signal', lambda v: _is_int(v, 0, 64), 'a signal number')

# What each method returns (guest/agent.py m_<method>), as a check that returns the checked
# value: nothing the guest sends is used before it went through here.
_RESULTS = {
    'ping': _ping,
    'create_container': _one_state,
    'start_container': _one_state,
    'container_state': _one_state,
    'wait_container': _one_state,
    'list_containers': _state_list,
    'signal_container': _fields(_ID_FIELD, _SIGNAL_FIELD, ('signaled', lambda v: isinstance(v, bool), 'a boolean'),
                                ('status', lambda v: v in STATUSES, 'one of %s' % ', '.join(STATUSES))),
    'remove_container': _fields(_ID_FIELD, ('removed', lambda v: isinstance(v, bool), 'a boolean')),
    'kill_all': _fields(_SIGNAL_FIELD, ('count', lambda v: _is_int(v, 0), 'a count')),
    'shutdown': _fields(('poweroff', lambda v: isinstance(v, bool), 'a boolean')),
    'post_clone': _post_clone,
    'update_container': _fields(_ID_FIELD, ('cgroup', _is_cgroup, 'an object of cgroup files')),
    'container_stats': _fields(_ID_FIELD, ('cgroup', _is_cgroup, 'an object of cgroup files')),
}
