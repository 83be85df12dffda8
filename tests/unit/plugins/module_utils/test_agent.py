# Copyright: kata.runtime contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The guest agent and its host client, end to end on the host.

The real guest agent runs as a subprocess serving a unix socket (``--listen``, the way qemu's
chardev serves the host) or connecting to one (``--connect``, the way the guest sees a port
whose host side comes and goes). Containers run for real in new pid/mount/uts/ipc namespaces
with a static busybox as their rootfs.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

import pytest
from ansible_collections.kata.runtime.plugins.module_utils.kata import agent as agent_mod
from ansible_collections.kata.runtime.plugins.module_utils.kata.agent import AgentClient
from ansible_collections.kata.runtime.plugins.module_utils.kata.errors import AgentError
from ansible_collections.kata.runtime.plugins.module_utils.kata.guest import agent as guest_agent
from ansible_collections.kata.runtime.plugins.module_utils.kata.guest import image

GUEST_AGENT = os.path.join(os.path.dirname(agent_mod.__file__), 'guest', 'agent.py')
BUSYBOX = shutil.which('busybox') or '/bin/busybox'
APPLETS = ('sh', 'sleep', 'echo', 'cat', 'id', 'hostname', 'true', 'ls', 'head', 'wc', 'grep')


def _namespaces_work():
    if os.geteuid() != 0 or not os.access(BUSYBOX, os.X_OK):
        return False
    try:
        res = subprocess.run([BUSYBOX, 'unshare', '-p', '-m', '-u', '-i', '-f', '--', BUSYBOX, 'true'],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=10,
                             check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return res.returncode == 0


needs_ns = pytest.mark.skipif(not _namespaces_work(),
                              reason='needs root, a static busybox and `busybox unshare -pmui`')


@pytest.fixture
def short_dir():
    """A short directory: sun_path holds only 108 bytes, pytest's tmp_path can be longer."""
    path = tempfile.mkdtemp(prefix='kag-', dir='/tmp')
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope='module')
def rootfs():
    path = tempfile.mkdtemp(prefix='kag-rootfs-', dir='/tmp')
    os.chmod(path, 0o755)  # mkdtemp makes it 0700: a non-root container user could not enter
    os.makedirs(os.path.join(path, 'bin'))
    os.makedirs(os.path.join(path, 'proc'))
    os.makedirs(os.path.join(path, 'work'))
    os.makedirs(os.path.join(path, 'dev'))
    shutil.copy2(BUSYBOX, os.path.join(path, 'bin', 'busybox'))
    for applet in APPLETS:
        os.symlink('busybox', os.path.join(path, 'bin', applet))
    yield path
    shutil.rmtree(path, ignore_errors=True)


class AgentProc:
    """The guest agent as a host process serving a unix socket."""

    def __init__(self, base, sock_name='agent.sock', extra_args=()):
        self.base = base
        self.extra_args = list(extra_args)
        self.sock = os.path.join(base, sock_name)
        self.shared = os.path.join(base, 'shared')
        self.log_path = os.path.join(base, 'agent.log')
        self.proc = None

    def start(self, wait=True):
        self.log = open(self.log_path, 'ab')
        self.proc = subprocess.Popen(
            [sys.executable, GUEST_AGENT, '--listen', self.sock, '--no-poweroff',
             '--shared-dir', self.shared, '--output-dir', self.shared,
             '--run-dir', os.path.join(self.base, 'run')] + self.extra_args,
            stdin=subprocess.DEVNULL, stdout=self.log, stderr=self.log)
        deadline = time.monotonic() + 10
        while wait and not os.path.exists(self.sock):
            assert self.proc.poll() is None, self.read_log()
            assert time.monotonic() < deadline, 'agent did not create its socket'
            time.sleep(0.01)
        return self

    def read_log(self):
        with open(self.log_path, 'rb') as fh:
            return fh.read().decode('utf-8', 'replace')

    def stop(self):
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # host mode: kill containers, then exit
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.log.close()
        self.proc = None


@pytest.fixture
def agent(short_dir):
    proc = AgentProc(short_dir).start()
    yield proc
    proc.stop()


@pytest.fixture
def client(agent):
    cli = AgentClient(agent.sock, timeout=10)
    yield cli
    cli.close()


def raw_exchange(path, payload, timeout=5):
    """Send raw bytes on a fresh connection and return the reply lines as objects."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(path)
        sock.sendall(payload)
        want = payload.count(b'\n')
        buf = b''
        while buf.count(b'\n') < want:
            chunk = sock.recv(65536)
            if not chunk:
                break
            buf += chunk
    return [json.loads(line) for line in buf.splitlines() if line.strip()]


def pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open('/proc/%d/stat' % pid) as fh:
            return fh.read().rsplit(')', 1)[1].split()[0] != 'Z'
    except OSError:
        return False


# --- protocol basics ----------------------------------------------------------------------------


def test_ping_reports_version_protocol_pid_uptime(agent, client):
    res = client.ping()
    assert res['protocol'] == 1
    assert isinstance(res['version'], str) and res['version']
    assert res['pid'] == agent.proc.pid
    assert 0 <= res['uptime'] < 60


def test_malformed_lines_get_an_error_and_the_agent_keeps_serving(agent):
    replies = raw_exchange(agent.sock, b'this is not json\n[1, 2]\n'
                                       b'{"id": 7, "method": "no_such_method"}\n'
                                       b'{"id": 8, "method": "ping", "params": 3}\n'
                                       b'{"id": 9, "method": "ping"}\n')
    assert replies[0]['id'] is None and 'malformed' in replies[0]['error']
    assert replies[1]['id'] is None and 'malformed' in replies[1]['error']
    assert replies[2] == {'id': 7, 'error': "unknown method 'no_such_method'"}
    assert replies[3]['id'] == 8 and 'params' in replies[3]['error']
    assert replies[4]['id'] == 9 and replies[4]['result']['protocol'] == 1
    assert agent.proc.poll() is None


def test_partial_line_from_a_departed_client_is_dropped(agent):
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(agent.sock)
        sock.sendall(b'{"id": 1, "method": "shutd')
    # Had the torn line been kept, this ping would be glued to it and fail to parse.
    replies = raw_exchange(agent.sock, b'{"id": 2, "method": "ping"}\n')
    assert replies == [{'id': 2, 'result': replies[0]['result']}]
    assert agent.proc.poll() is None


def test_unknown_and_invalid_container_ids(client):
    with pytest.raises(AgentError, match='container nope not found'):
        client.container_state('nope')
    with pytest.raises(AgentError, match='not found'):
        client.start_container('nope')
    with pytest.raises(AgentError, match='not found'):
        client.signal_container('nope', 'SIGKILL')
    with pytest.raises(AgentError, match='not found'):
        client.wait_container('nope', 0)
    with pytest.raises(AgentError, match='invalid container id'):
        client.container_state('../etc')
    assert client.remove_container('nope') == {'id': 'nope', 'removed': False}
    assert client.list_containers() == []


def test_create_rejects_bad_input(client, rootfs, short_dir):
    with pytest.raises(AgentError, match='not a directory'):
        client.create_container('c1', ['true'], rootfs=os.path.join(short_dir, 'missing'))
    with pytest.raises(AgentError, match='must not be empty'):
        client.create_container('c1', [], rootfs=rootfs)
    with pytest.raises(AgentError, match='KEY=VALUE'):
        client.create_container('c1', ['true'], rootfs=rootfs, env=['NOEQUALS'])
    with pytest.raises(AgentError, match='uid must be'):
        client.create_container('c1', ['true'], rootfs=rootfs, uid=-1)
    assert client.list_containers() == []
    client.create_container('c1', ['true'], rootfs=rootfs)
    with pytest.raises(AgentError, match='already exists'):
        client.create_container('c1', ['true'], rootfs=rootfs)


# --- containers --------------------------------------------------------------------------------


@needs_ns
def test_container_prints_and_exits_3(client, agent, rootfs):
    created = client.create_container(
        'c3', ['sh', '-c', 'echo "out $$ $(hostname) $FOO $(pwd)"; echo err >&2; exit 3'],
        rootfs=rootfs, env=['FOO=bar'], cwd='/work', hostname='box3')
    assert created['status'] == 'created' and created['pid'] is None
    assert client.container_state('c3')['status'] == 'created'
    started = client.start_container('c3')
    assert isinstance(started['pid'], int) and started['pid'] > 0
    assert client.wait_container('c3', 10) == {'id': 'c3', 'status': 'stopped', 'exit_code': 3}
    state = client.container_state('c3')
    assert state['status'] == 'stopped' and state['exit_code'] == 3
    assert state['pid'] == started['pid']
    assert state['started_at'] and state['finished_at'] and state['created_at']
    with open(os.path.join(agent.shared, 'c3', 'stdout')) as fh:
        # $$ is 1: the process is PID 1 of its own pid namespace; the hostname is its own.
        assert fh.read() == 'out 1 box3 bar /work\n'
    with open(os.path.join(agent.shared, 'c3', 'stderr')) as fh:
        assert fh.read() == 'err\n'
    assert socket.gethostname() != 'box3'
    assert client.remove_container('c3') == {'id': 'c3', 'removed': True}
    assert client.remove_container('c3') == {'id': 'c3', 'removed': False}


@needs_ns
def test_container_starts_with_no_ignored_signals(client, agent, rootfs):
    """Ignored dispositions survive exec; the agent's (PID 1 ignores TERM, Python ignores
    PIPE) must not reach the container, or it could never trap TERM or die of SIGPIPE."""
    client.create_container('sigs', ['grep', 'SigIgn', '/proc/self/status'], rootfs=rootfs)
    client.start_container('sigs')
    assert client.wait_container('sigs', 10)['exit_code'] == 0
    with open(os.path.join(agent.shared, 'sigs', 'stdout')) as fh:
        label, mask = fh.read().split()
    # Signals 1-31; glibc reserves 32 and 33 and no process can change their disposition.
    assert label == 'SigIgn:' and int(mask, 16) & 0x7fffffff == 0, mask
    client.remove_container('sigs')


@needs_ns
def test_sleeper_lifecycle_and_sigkill(client, agent, rootfs):
    client.create_container('sl', ['sleep', '60'], rootfs=rootfs)
    assert client.container_state('sl')['status'] == 'created'
    pid = client.start_container('sl')['pid']
    state = client.container_state('sl')
    assert state['status'] == 'running' and state['exit_code'] is None
    # The reported pid is the container process itself, in namespaces of its own.
    with open('/proc/%d/cmdline' % pid, 'rb') as fh:
        assert fh.read().split(b'\0')[:2] == [b'sleep', b'60']
    with open('/proc/%d/status' % pid) as fh:
        nspid = [line.split()[1:] for line in fh if line.startswith('NSpid:')][0]
    assert nspid == [str(pid), '1']
    for ns in ('pid', 'mnt', 'uts', 'ipc'):
        assert os.readlink('/proc/%d/ns/%s' % (pid, ns)) != os.readlink('/proc/self/ns/%s' % ns)
    assert client.wait_container('sl', 0.2) == {'id': 'sl', 'status': 'running', 'exit_code': None}
    with pytest.raises(AgentError, match='still running'):
        client.remove_container('sl')
    with pytest.raises(AgentError, match='status is running'):
        client.start_container('sl')
    res = client.signal_container('sl', 'SIGKILL')
    assert res['signaled'] is True and res['signal'] == 9
    assert client.wait_container('sl', 10) == {'id': 'sl', 'status': 'stopped', 'exit_code': 137}
    assert not pid_alive(pid)
    assert client.signal_container('sl', 9)['signaled'] is False
    assert client.remove_container('sl')['removed'] is True


@needs_ns
def test_call_wait_container_timeout_is_the_wait(agent, rootfs):
    with AgentClient(agent.sock, timeout=0.5) as cli:
        cli.call('create_container', id='cw', args=['sh', '-c', 'sleep 1; exit 5'], rootfs=rootfs)
        cli.call('start_container', id='cw')
        # Waits in the guest past the client's own 0.5 s timeout and gets the exit code.
        res = cli.call('wait_container', id='cw', timeout=10)
        assert res == {'id': 'cw', 'status': 'stopped', 'exit_code': 5}
        with pytest.raises(AgentError, match='timeout must be a non-negative number'):
            cli.call('wait_container', id='cw', timeout='soon')


@needs_ns
def test_sigterm_by_name_reaches_a_trapping_init(client, rootfs):
    client.create_container('tr', ['sh', '-c', 'trap "exit 7" TERM; echo ready; '
                                               'while true; do sleep 0.05; done'], rootfs=rootfs)
    client.start_container('tr')
    time.sleep(0.3)  # let the shell install its trap
    assert client.signal_container('tr', 'TERM')['signal'] == 15
    assert client.wait_container('tr', 10)['exit_code'] == 7


@needs_ns
def test_uid_gid_switch(client, agent, rootfs):
    client.create_container('who', ['sh', '-c', 'echo $(id -u):$(id -g)'], rootfs=rootfs,
                            uid=1234, gid=4321)
    client.start_container('who')
    assert client.wait_container('who', 10)['exit_code'] == 0
    with open(os.path.join(agent.shared, 'who', 'stdout')) as fh:
        assert fh.read() == '1234:4321\n'


@needs_ns
def test_container_gets_private_proc_and_dev(client, agent, rootfs):
    client.create_container('dv', ['sh', '-c', 'echo gone > /dev/null && head -c 5 /dev/zero | wc -c; '
                                               'ls /proc | grep -c "^[0-9]"'], rootfs=rootfs, uid=1000)
    client.start_container('dv')
    assert client.wait_container('dv', 10)['exit_code'] == 0
    with open(os.path.join(agent.shared, 'dv', 'stdout')) as fh:
        # /dev/null and /dev/zero work for an unprivileged user; /proc shows only this ns.
        zeros, pids = fh.read().split()
    assert zeros == '5'
    assert 1 <= int(pids) <= 3  # sh, ls, grep: the host's own processes are not visible
    # The mounts stayed inside the container's mount namespace.
    assert os.listdir(os.path.join(rootfs, 'dev')) == [] and os.listdir(os.path.join(rootfs, 'proc')) == []


@needs_ns
def test_missing_executable_fails_start_with_reason(client, rootfs):
    client.create_container('bad', ['no-such-binary'], rootfs=rootfs)
    with pytest.raises(AgentError, match='no-such-binary: executable file not found'):
        client.start_container('bad')
    state = client.container_state('bad')
    assert state['status'] == 'stopped' and state['exit_code'] == 127


@needs_ns
def test_host_hanging_up_ends_a_pending_wait(agent, rootfs):
    with AgentClient(agent.sock, timeout=5) as cli:
        cli.create_container('w1', ['sleep', '60'], rootfs=rootfs)
        cli.start_container('w1')
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(agent.sock)
        sock.sendall(b'{"id": 5, "method": "wait_container", "params": {"id": "w1", "timeout": 60}}\n')
        time.sleep(0.2)
    start = time.monotonic()
    with AgentClient(agent.sock, timeout=5) as cli:
        assert cli.container_state('w1')['status'] == 'running'
        assert time.monotonic() - start < 3  # not queued behind the abandoned 60 s wait
        cli.signal_container('w1', 'SIGKILL')
        assert cli.wait_container('w1', 10)['exit_code'] == 137


def test_signal_to_created_container_stops_it(client, rootfs):
    client.create_container('cr', ['true'], rootfs=rootfs)
    assert client.signal_container('cr', 'SIGWINCH')['status'] == 'created'
    res = client.signal_container('cr', 'SIGTERM')
    assert res['status'] == 'stopped'
    assert client.container_state('cr')['exit_code'] == 128 + 15
    with pytest.raises(AgentError, match='unknown signal'):
        client.signal_container('cr', 'SIGNOPE')


@needs_ns
def test_kill_all_and_list(client, rootfs):
    pids = []
    for cid in ('k1', 'k2'):
        client.create_container(cid, ['sleep', '60'], rootfs=rootfs)
        pids.append(client.start_container(cid)['pid'])
    client.create_container('k3', ['true'], rootfs=rootfs)
    listed = {c['id']: c['status'] for c in client.list_containers()}
    assert listed == {'k1': 'running', 'k2': 'running', 'k3': 'created'}
    assert client.kill_all()['count'] == 2
    for cid in ('k1', 'k2'):
        assert client.wait_container(cid, 10)['exit_code'] == 137
    assert not any(pid_alive(p) for p in pids)


@needs_ns
def test_shutdown_kills_containers_and_exits_in_host_mode(client, agent, rootfs):
    client.create_container('s1', ['sleep', '60'], rootfs=rootfs)
    pid = client.start_container('s1')['pid']
    assert client.shutdown() == {'poweroff': False}
    assert agent.proc.wait(10) == 0
    deadline = time.monotonic() + 5
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not pid_alive(pid)


# --- client behaviour -------------------------------------------------------------------------


def test_client_reconnects_once_after_the_connection_dropped(short_dir):
    first = AgentProc(short_dir).start()
    cli = AgentClient(first.sock, timeout=5)
    try:
        pid1 = cli.ping()['pid']
        first.proc.kill()  # the far end goes away under an idle, open connection
        first.proc.wait(5)
        first.stop()
        os.unlink(first.sock)
        second = AgentProc(short_dir).start()
        try:
            pid2 = cli.ping()['pid']
            assert pid2 == second.proc.pid != pid1
        finally:
            second.stop()
    finally:
        cli.close()


def test_clients_take_turns(agent):
    with AgentClient(agent.sock, timeout=5) as one:
        assert one.ping()['pid'] == agent.proc.pid
    with AgentClient(agent.sock, timeout=5) as two:
        assert two.ping()['pid'] == agent.proc.pid
    # The first client reconnects lazily after close().
    assert one.ping()['pid'] == agent.proc.pid
    one.close()


class FakeAgent:
    """A scripted peer: for each request line it sends ``script(request)`` bytes back."""

    def __init__(self, path, script):
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(path)
        self.server.listen(1)
        self.script = script
        self.received = []
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        conn, dummy = self.server.accept()
        with conn:
            buf = b''
            while True:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                buf += chunk
                while b'\n' in buf:
                    line, buf = buf.split(b'\n', 1)
                    self.received.append(line)
                    if line.strip():
                        conn.sendall(self.script(json.loads(line)))

    def close(self):
        self.server.close()


def test_client_skips_stale_ids_and_torn_lines(short_dir):
    path = os.path.join(short_dir, 'fake.sock')

    def script(req):
        return (b'{"id": 424242, "result": "stale"}\n'
                b'{"id": 9, "res\n'
                b'{"id": null, "error": "malformed request"}\n'
                + json.dumps({'id': req['id'], 'result': {'id': req['params']['id'], 'removed': True}}).encode()
                + b'\n')

    fake = FakeAgent(path, script)
    try:
        with AgentClient(path, timeout=5) as cli:
            assert cli.call('remove_container', id='x1') == {'id': 'x1', 'removed': True}
        # Every connection opens with an empty line that ends a torn line left in the guest.
        assert fake.received[0] == b''
    finally:
        fake.close()


def test_error_reply_raises_agent_error_naming_the_call(short_dir):
    path = os.path.join(short_dir, 'fake.sock')
    fake = FakeAgent(path, lambda req: json.dumps({'id': req['id'], 'error': 'boom'}).encode() + b'\n')
    try:
        with AgentClient(path, timeout=5) as cli, pytest.raises(AgentError) as info:
            cli.call('start_container', id='x')
        assert str(info.value) == "agent call 'start_container' to the agent on socket %s failed: boom" % path
    finally:
        fake.close()


def test_timeout_when_nobody_answers(short_dir):
    path = os.path.join(short_dir, 'silent.sock')
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(4)  # connections queue but nothing ever answers
    try:
        cli = AgentClient(path, timeout=0.5)
        start = time.monotonic()
        with pytest.raises(AgentError) as info:
            cli.ping()
        assert 0.4 < time.monotonic() - start < 3
        msg = str(info.value)
        assert "'ping'" in msg and path in msg and 'timed out after 0.5s' in msg
        with pytest.raises(AgentError, match="'container_state'.*timed out after 0.2s"):
            cli.call('container_state', timeout=0.2, id='x')
    finally:
        server.close()


def test_missing_or_dead_socket_is_reported_as_unavailable(short_dir):
    path = os.path.join(short_dir, 'gone.sock')
    with pytest.raises(AgentError, match='the agent of sandbox sb1 .*gone.sock.* is not available.*is the sandbox running'):
        AgentClient(path, sandbox_id='sb1').ping()
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.close()  # the file stays, nobody listens: connection refused
    with pytest.raises(AgentError, match='is not available .*refused.*is the sandbox running'):
        AgentClient(path).ping()


# --- wait_ready -------------------------------------------------------------------------------


def test_wait_ready_returns_ping_once_the_agent_comes_up(short_dir):
    proc = AgentProc(short_dir)
    timer = threading.Timer(0.6, proc.start, kwargs={'wait': False})
    timer.start()
    ticks = []
    try:
        start = time.monotonic()
        res = AgentClient(proc.sock).wait_ready(10, progress=ticks.append)
        assert res['protocol'] == 1
        assert 0.5 < time.monotonic() - start < 8
    finally:
        timer.join()
        proc.stop()


def test_wait_ready_times_out_with_a_clear_message(short_dir):
    path = os.path.join(short_dir, 'silent.sock')
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(4)
    ticks = []
    try:
        cli = AgentClient(path, console_log='/var/log/console.log')
        start = time.monotonic()
        with pytest.raises(AgentError) as info:
            cli.wait_ready(2.2, progress=ticks.append)
        assert 2.0 < time.monotonic() - start < 10
        msg = str(info.value)
        assert 'did not answer within 2.2s' in msg and path in msg
        assert '/var/log/console.log' in msg
        assert len(ticks) >= 2 and all(0.9 < t < 4 for t in ticks)
    finally:
        server.close()


def test_wait_ready_gives_up_early_when_the_vm_is_dead(short_dir):
    path = os.path.join(short_dir, 'dead.sock')
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.close()  # a socket file with nobody behind it
    start = time.monotonic()
    with pytest.raises(AgentError, match=r'unreachable after \d+\.\ds .*died.*console log'):
        AgentClient(path).wait_ready(30)
    assert time.monotonic() - start < 5


def test_wait_ready_notices_the_socket_vanishing(short_dir):
    path = os.path.join(short_dir, 'vanish.sock')
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(4)

    def vm_dies():
        server.close()
        os.unlink(path)

    timer = threading.Timer(0.5, vm_dies)
    timer.start()
    start = time.monotonic()
    try:
        with pytest.raises(AgentError, match=r'(vanished|unreachable) after \d+\.\ds'):
            AgentClient(path).wait_ready(30)
        assert time.monotonic() - start < 6
    finally:
        timer.join()


# --- the guest side of a port whose host comes and goes ------------------------------------------


def test_connect_mode_reconnects_and_drops_torn_lines(short_dir):
    path = os.path.join(short_dir, 'port.sock')
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(1)
    server.settimeout(10)
    log = open(os.path.join(short_dir, 'agent.log'), 'wb')
    proc = subprocess.Popen([sys.executable, GUEST_AGENT, '--connect', path, '--no-poweroff',
                             '--run-dir', os.path.join(short_dir, 'run')],
                            stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    try:
        conn, dummy = server.accept()
        conn.settimeout(5)
        conn.sendall(b'{"id": 1, "method": "ping"}\n')
        assert json.loads(conn.makefile('rb').readline())['result']['pid'] == proc.pid
        conn.sendall(b'{"id": 2, "method": "shut')  # torn: the host side goes away mid-line
        conn.close()
        conn, dummy = server.accept()  # the agent comes back on its own
        conn.settimeout(5)
        conn.sendall(b'{"id": 3, "method": "ping"}\n')
        reply = json.loads(conn.makefile('rb').readline())
        assert reply['id'] == 3 and reply['result']['protocol'] == 1
        conn.close()
        assert proc.poll() is None
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()
        server.close()


# ---------------------------------------------------------------------------------------------
# how the agent gives a container its root filesystem: the host shares every rootfs read-only;
# a container that may write gets an overlay whose upper layer is a tmpfs in its own mount
# namespace, a read-only one a read-only bind. Both vanish with the container.

SCRIPT = 'echo data > /new-file; cat /new-file; chmod 4755 /bin/busybox; echo chmod=$?'


def _run(client, cid, rootfs, readonly):
    params = {'id': cid, 'args': ['sh', '-c', SCRIPT], 'rootfs': rootfs}
    if readonly is not None:
        params['readonly'] = readonly
    client.request('create_container', params)
    client.start_container(cid)
    assert client.wait_container(cid, 10)['status'] == 'stopped'
    client.remove_container(cid)


def _mounts(under):
    """The mount table's lines for mount points under ``under`` (the test's own tree: other
    test runs on the same host mount and unmount elsewhere meanwhile)."""
    with open('/proc/self/mountinfo') as f:
        return [line for line in f if line.split()[4].startswith(under)]


def _mode(path):
    return os.lstat(path).st_mode & 0o7777


@needs_ns
def test_writable_rootfs_is_an_overlay_that_leaves_the_shared_one_alone(client, agent, rootfs):
    before, mounts = _mode(os.path.join(rootfs, 'bin', 'busybox')), _mounts(os.path.dirname(agent.base))
    _run(client, 'ovl', rootfs, readonly=False)
    with open(os.path.join(agent.shared, 'ovl', 'stdout')) as f:
        assert f.read() == 'data\nchmod=0\n'
    assert not os.path.exists(os.path.join(rootfs, 'new-file'))
    assert _mode(os.path.join(rootfs, 'bin', 'busybox')) == before
    assert _mounts(os.path.dirname(agent.base)) == mounts
    assert not [n for n in os.listdir(os.path.join(agent.base, 'run')) if n.startswith('rootfs-')]


@needs_ns
def test_readonly_rootfs_refuses_writes(client, agent, rootfs):
    before = _mode(os.path.join(rootfs, 'bin', 'busybox'))
    _run(client, 'ro', rootfs, readonly=True)
    with open(os.path.join(agent.shared, 'ro', 'stdout')) as f:
        assert f.read() == 'chmod=1\n'
    with open(os.path.join(agent.shared, 'ro', 'stderr')) as f:
        assert 'Read-only file system' in f.read()
    assert not os.path.exists(os.path.join(rootfs, 'new-file'))
    assert _mode(os.path.join(rootfs, 'bin', 'busybox')) == before


def test_readonly_must_be_a_bool(client, rootfs):
    import pytest
    from ansible_collections.kata.runtime.plugins.module_utils.kata.errors import AgentError
    with pytest.raises(AgentError, match='readonly must be true or false'):
        client.request('create_container', {'id': 'x', 'args': ['true'], 'rootfs': rootfs, 'readonly': 'yes'})


def test_the_image_loads_overlay():
    """Writable rootfs layers need overlayfs in the guest (the agent's copy of the contract and
    the /init it shares names with are checked in test_contract.py)."""
    assert 'overlay' in image.DEFAULT_MODULES


# --- the device port while the host is away -------------------------------------------------


def test_device_transport_waits_for_sigio_instead_of_polling():
    """An idle sandbox's agent must not poll its port: it asks for SIGIO (the guest driver
    sends one when the host connects), backs off for IDLE_RETRY, and a wake-up ends the
    back-off. A pty stands in for the virtio port: it supports O_ASYNC, and a read after the
    other side closed fails like a port whose host went away."""
    master, slave = os.openpty()
    path = os.ttyname(slave)
    got = []
    old = signal.signal(signal.SIGIO, lambda signum, frame: got.append(signum))
    transport = guest_agent.DeviceTransport(path)
    try:
        fd = transport.fd()
        assert fd is not None and transport.async_io
        os.write(master, b'ping\n')
        deadline = time.monotonic() + 5
        while not got and time.monotonic() < deadline:
            time.sleep(0.01)
        assert got == [signal.SIGIO]  # data (and, on a virtio port, a host connecting) signals
        os.close(master)
        master = None
        assert transport.on_readable() in (b'', b'ping\n')
        while transport.on_readable() != b'':
            pass
        # the host is away: no look at the port for IDLE_RETRY seconds...
        assert transport.fd() is None
        assert guest_agent.IDLE_RETRY - 1 < transport.timeout() <= guest_agent.IDLE_RETRY
        assert guest_agent.IDLE_RETRY >= 1.0 > guest_agent.RETRY_DELAY
        # ...unless a signal says something happened
        transport.wake()
        assert transport.fd() == fd
    finally:
        signal.signal(signal.SIGIO, old)
        transport.close()
        os.close(slave)
        if master is not None:
            os.close(master)


def test_device_transport_polls_where_sigio_is_refused():
    transport = guest_agent.DeviceTransport(os.devnull)  # reads as "host away", like the port
    try:
        assert transport.fd() is not None
        transport.async_io = False  # what enable_sigio() reports when fcntl refuses O_ASYNC
        assert transport.on_readable() == b''
        assert 0 < transport.timeout() <= guest_agent.RETRY_DELAY
    finally:
        transport.close()


class ScriptedPort:
    """A virtio port as the guest driver shows it to the agent, scripted by the test.

    ``connected`` is the driver's idea of the host: while it is False, a read with nothing
    queued returns b'' and a write fails with EAGAIN, as virtio_console does before it has
    handled the host's "port open" notice, even though the host's bytes are already there.
    /dev/null stands in for the descriptor: select() always finds it ready."""

    eof_is_final = False

    def __init__(self):
        self.devnull = os.open(os.devnull, os.O_RDWR)
        self.connected = False
        self.queued = []
        self.sent = b''

    def fd(self):
        return self.devnull

    def data_fd(self):
        return self.devnull

    def timeout(self):
        return 0.01

    def on_readable(self):
        if self.queued:
            return self.queued.pop(0)
        return None if self.connected else b''

    def write(self, data):
        if not self.connected:
            raise BlockingIOError(11, 'host not connected yet')
        self.sent += data
        return len(data)

    def drop(self):
        pass

    def close(self):
        os.close(self.devnull)


@pytest.fixture
def port_agent(tmp_path):
    port = ScriptedPort()
    agent = guest_agent.Agent(port, shared_dir=str(tmp_path), poweroff=False, busybox='/bin/true',
                              run_dir=str(tmp_path / 'run'), output_dir=str(tmp_path / 'out'))
    yield port, agent
    port.close()
    for fd in (agent._wake_r, agent._wake_w):
        os.close(fd)


def _replies(port):
    return [json.loads(line) for line in port.sent.splitlines() if line.strip()]


def test_a_reply_waits_for_the_port_to_open_instead_of_being_dropped(port_agent):
    """The request is read before the driver handled "port open": the reply cannot be written
    and the next read says "no host". Measured on a real guest before this was handled: the
    agent logged 'dropping 0 unread and 332 unsent bytes' and the host got no answer."""
    port, agent = port_agent
    port.queued.append(b'{"id": 7, "method": "ping", "params": {}}\n')
    agent.turn()  # reads and answers; the write meets EAGAIN
    assert agent.outbuf and port.sent == b''
    agent.turn()  # the port reads as closed: not a hang-up this soon after a request
    assert agent.outbuf and port.sent == b''
    port.connected = True  # the driver handles the notice
    agent.turn()
    replies = _replies(port)
    assert [r['id'] for r in replies] == [7] and replies[0]['result']['protocol'] == guest_agent.PROTOCOL
    assert agent.outbuf == b''


def test_the_port_closed_long_after_the_last_request_is_a_hang_up(port_agent, monkeypatch):
    port, agent = port_agent
    port.queued.append(b'{"id": 8, "method": "ping", "params": {}}\n{"id": 9, "meth')
    agent.turn()
    assert agent.outbuf and agent.inbuf
    monkeypatch.setattr(agent, '_rx_at', time.monotonic() - guest_agent.OPEN_GRACE - 0.1)
    agent.turn()
    assert agent.outbuf == b'' and agent.inbuf == b''  # the host left: nothing stale is kept
    port.connected = True
    agent.turn()
    assert port.sent == b''


def test_a_wait_read_before_the_port_opened_is_not_abandoned(port_agent):
    """wait_container read while the driver still says "no host": the wait goes on (the host
    is there) instead of ending as if the host had hung up."""
    port, agent = port_agent
    ctr = type('Ctr', (), {'status': 'running'})()
    agent._received()
    t0 = time.monotonic()
    assert agent._wait_or_hangup(ctr, 0.3) is True  # waited its time out, host still there
    assert time.monotonic() - t0 >= 0.3
    agent._rx_at = time.monotonic() - guest_agent.OPEN_GRACE - 0.1
    assert agent._wait_or_hangup(ctr, 5.0) is False  # long after any request: a hang-up


# --- limits and process settings (a temporary directory stands in for the guest's cgroupfs) ---


@needs_ns
def test_limits_go_to_the_containers_cgroup_and_process_settings_apply(rootfs, short_dir):
    """create_container writes the limits into <cgroup root>/kata/<id> before the process runs;
    the process joins it ("0" to cgroup.procs), runs with the capability sets, rlimits,
    no_new_privs, umask, groups and domainname asked for; update_container rewrites limits in
    place; remove_container removes the cgroup."""
    cgroot = os.path.join(short_dir, 'cg')
    os.mkdir(cgroot)
    proc = AgentProc(short_dir, extra_args=['--cgroup-root', cgroot]).start()
    cli = AgentClient(proc.sock, timeout=10)
    try:
        kill = 5  # CAP_KILL
        caps = {'bounding': 1 << kill | 1 << 6 | 1 << 7, 'effective': 1 << kill, 'permitted': 1 << kill,
                'inheritable': 0, 'ambient': 0}
        process = {'capabilities': caps, 'rlimits': [[7, 77, 88]], 'no_new_privileges': True, 'umask': 0o027,
                   'additional_gids': [10, 20], 'domainname': 'example.test'}
        limits = {'memory.max': '67108864', 'pids.max': '16', 'cpu.max': '25000 100000'}
        script = ('grep -E "^(CapEff|CapBnd|CapPrm|NoNewPrivs|Groups):" /proc/self/status; ulimit -n; ulimit -Hn; umask; '
                  'cat /proc/sys/kernel/domainname')
        cli.call('create_container', id='lim', args=['sh', '-c', script], rootfs=rootfs, process=process,
                 limits=limits)
        cg = os.path.join(cgroot, 'kata', 'lim')
        written = {name: open(os.path.join(cg, name)).read() for name in limits}
        assert written == limits
        cli.start_container('lim')
        assert cli.wait_container('lim', 10)['exit_code'] == 0, proc.read_log()
        with open(os.path.join(proc.shared, 'lim', 'stdout')) as fh:
            out = fh.read()
        fields = dict(line.split(':', 1) for line in out.splitlines() if ':' in line)
        assert int(fields['CapEff'], 16) == 1 << kill and int(fields['CapPrm'], 16) == 1 << kill
        assert int(fields['CapBnd'], 16) == caps['bounding']
        assert fields['NoNewPrivs'].strip() == '1' and fields['Groups'].split() == ['10', '20']
        assert out.splitlines()[-4:] == ['77', '88', '0027', 'example.test']
        assert open(os.path.join(cg, 'cgroup.procs')).read() == '0'  # the init joined it
        updated = cli.call('update_container', id='lim', limits={'memory.max': 'max', 'pids.max': '32'})
        assert updated['cgroup']['memory.max'] == 'max' and updated['cgroup']['pids.max'] == '32'
        assert cli.call('container_stats', id='lim')['cgroup']['cpu.max'] == '25000 100000'
        with pytest.raises(AgentError, match="'cgroup.procs' is not a limit file"):
            cli.call('update_container', id='lim', limits={'cgroup.procs': '1'})
        with pytest.raises(AgentError, match='invalid value'):
            cli.call('update_container', id='lim', limits={'memory.max': '1\n2'})
        cli.remove_container('lim')
        assert not os.path.exists(cg)
    finally:
        cli.close()
        proc.stop()


def test_limits_without_a_cgroup_root_are_refused(client, rootfs):
    with pytest.raises(AgentError, match='no cgroup root'):
        client.call('create_container', id='x', args=['true'], rootfs=rootfs, limits={'pids.max': '4'})
    assert client.list_containers() == []
