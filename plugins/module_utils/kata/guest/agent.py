# Copyright: kata.runtime contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The agent that runs inside the sandbox guest.

The initrd's ``/init`` execs ``/usr/bin/python3 /opt/kata/agent.py``; the agent is then PID 1
of the guest. It serves JSON lines (protocol 1, see docs/internals.md) on the virtio-serial
port named ``agent.0`` and runs each OCI container in its own pid, mount, uts and ipc
namespaces through ``busybox unshare``.

This file runs standalone with a minimal stdlib: it imports nothing from the collection and
does nothing on import. Host-side test modes:

  --listen PATH     serve a unix socket (one client at a time, like qemu's chardev)
  --connect PATH    connect to a unix socket and reconnect whenever it drops
  --device PATH     a character device (virtio-serial semantics) or a unix socket
  --no-poweroff     ``shutdown`` exits the agent instead of powering the machine off
  --cgroup-root DIR where containers' cgroups go (default: /sys/fs/cgroup as PID 1 of a
                    guest, none otherwise: a host test never touches the host's cgroups)
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import select
import signal
import stat
import sys
import time

# socket (host test modes only) and subprocess (first container start) are imported where
# they are used: under emulation every import at start-up delays the agent's first answer.

AGENT_VERSION = '1.0.0'
# -- the guest's copy of guest/contract.py ------------------------------------------------------
# This file runs alone in the initrd, with nothing of the collection next to it, so it keeps its
# own copy of the names it shares with the host and the image builder, under the same names
# (contract.GUEST_NAMES); a unit test checks that the copy equals the contract.
AGENT_PORT_NAME = 'agent.0'
PROTOCOL = 1
MAX_LINE = 4 * 1024 * 1024
NINEP_OPTIONS = 'trans=virtio,version=9p2000.L,msize=262144'
SHARED_TAG = 'kataShared'
SHARED_MOUNT = '/run/kata-containers/shared'
SHARED_OPTIONS = 'ro,nodev'
OUTPUT_TAG = 'kataOutput'
OUTPUT_MOUNT = '/run/kata-containers/output'
OUTPUT_OPTIONS = 'nosuid,nodev,noexec'
VOLUMES_TAG = 'kataVolumes'
VOLUMES_MOUNT = '/run/kata-containers/volumes'
VOLUMES_OPTIONS = 'nosuid,nodev'
TEMPLATE_FLAG = 'kata.template=1'
DEFAULT_PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'
NET_PARAM = 'kata.net'
NET_STATIC_USER = 'user'
NET_DHCP = 'dhcp'
NET_IFACE = 'eth0'
USER_NET_ADDRESS = '10.0.2.15/24'
USER_NET_GATEWAY = '10.0.2.2'
USER_NET_DNS = '10.0.2.3'
NET_RESOLV_CONF = '/run/kata-containers/resolv.conf'
CGROUP_PARENT = 'kata'
CGROUP_CONTROLLERS = ('cpu', 'cpuset', 'memory', 'pids')
LIMIT_FILES = ('cpuset.cpus', 'cpuset.mems', 'cpu.weight', 'cpu.max', 'cpu.max.burst', 'cpu.idle',
               'memory.low', 'memory.max', 'memory.swap.max', 'pids.max')
# -- end of the copy ---------------------------------------------------------------------------

RUN_DIR = '/run/kata-agent'
# VM templates: a template guest boots (TEMPLATE_FLAG) without its 9p shares; a clone's
# post_clone mounts them, each at its one place with the options /init would have used.
# Nothing else can be mounted through it.
CLONE_SHARES = {
    SHARED_TAG: (SHARED_MOUNT, SHARED_OPTIONS),
    OUTPUT_TAG: (OUTPUT_MOUNT, OUTPUT_OPTIONS),
    VOLUMES_TAG: (VOLUMES_MOUNT, VOLUMES_OPTIONS),
}
# The host's random bytes for a clone's RNG: enough to reseed, small enough to bound the line.
CLONE_SEED_MIN = 32
CLONE_SEED_MAX = 512
# <linux/random.h>: RNDADDENTROPY = _IOW('R', 0x03, int[2]), RNDRESEEDCRNG = _IO('R', 0x07)
RNDADDENTROPY = 0x40085203
RNDRESEEDCRNG = 0x5207
BASE64_RE = re.compile(r'^[A-Za-z0-9+/]*={0,2}$')
MAC_RE = re.compile(r'^[0-9a-f]{2}(:[0-9a-f]{2}){5}$')
# The guest's network (contract NET_*): the DNS servers it was given are written here, and
# NET_RESOLV_CONF is a read-only view of this file that each container gets at /etc/resolv.conf.
NET_DIR = '/run/kata-agent-net'
ID_RE = re.compile(r'^[A-Za-z0-9][A-Za-z0-9_.+-]{0,127}$')
RETRY_DELAY = 0.05
# virtio-serial delivers the host's data and its "port open" notice on two queues, and the guest
# driver handles the notice later (from a workqueue): a request can be read while the driver
# still says "no host" (a read returns 0, a write EAGAIN). Within this many seconds of the last
# bytes received, such a read is not a hang-up: the reply waits for the port to open.
OPEN_GRACE = 2.0
# With SIGIO telling us when the host connects, the longest an idle agent sleeps between two
# looks at its port (each wake-up costs the VMM CPU, under emulation a lot of it)
IDLE_RETRY = 5.0
START_TIMEOUT = 30.0
MAX_WAIT = 86400.0
# Signals whose default action does not end a process: sending one of them to a container
# that was created but never started changes nothing.
NON_FATAL = ('SIGCHLD', 'SIGCONT', 'SIGURG', 'SIGWINCH', 'SIGSTOP', 'SIGTSTP', 'SIGTTIN', 'SIGTTOU')


class RequestError(Exception):
    """A request failed; the message goes back to the host as the error reply."""


class HostGone(Exception):
    """The host hung up while a request was in progress: its reply has nobody to go to."""


def log(msg):
    try:
        sys.stderr.write('kata-agent[%d]: %s\n' % (os.getpid(), msg))
        sys.stderr.flush()
    except (OSError, ValueError):
        pass


def iso_time(ts):
    if ts is None:
        return None
    frac = int((ts - int(ts)) * 1000000)
    return time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime(ts)) + '.%06dZ' % frac


def find_busybox():
    for path in ('/bin/busybox', '/usr/bin/busybox', '/sbin/busybox', '/usr/sbin/busybox'):
        if os.access(path, os.X_OK):
            return path
    return 'busybox'


def parse_signal(value):
    if isinstance(value, bool):
        raise RequestError('invalid signal %r' % (value,))
    if isinstance(value, int):
        num = value
    elif isinstance(value, str) and value.strip().isdigit():
        num = int(value.strip())
    elif isinstance(value, str) and value.strip():
        name = value.strip().upper()
        if not name.startswith('SIG'):
            name = 'SIG' + name
        try:
            num = int(signal.Signals[name])
        except KeyError:
            raise RequestError('unknown signal %r' % (value,)) from None
    else:
        raise RequestError('invalid signal %r' % (value,))
    if num < 0 or num >= getattr(signal, 'NSIG', 65):
        raise RequestError('signal %r out of range' % (value,))
    return num


def signal_is_fatal(num):
    if num == 0:
        return False
    try:
        return signal.Signals(num).name not in NON_FATAL
    except ValueError:
        return True


def exit_code_of(status):
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    if os.WIFEXITED(status):
        return os.WEXITSTATUS(status)
    return None


# ---------------------------------------------------------------------------------------------
# Transports. Each one exposes: fd() -> fd to select on for reading (None while backing off),
# data_fd() -> fd to write to (None when no peer), on_readable() -> bytes (b'' = the peer went
# away, None = nothing to deliver), write(data) -> bytes written, and drop() on disconnect.
# ---------------------------------------------------------------------------------------------


def enable_sigio(fd):
    """Ask for SIGIO on ``fd`` (O_ASYNC, owned by this process). False where that fails."""
    try:
        fcntl.fcntl(fd, fcntl.F_SETOWN, os.getpid())
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_ASYNC)
    except OSError as err:
        log('no SIGIO on the port (%s): polling it every %.2fs while the host is away' % (err, RETRY_DELAY))
        return False
    return True


class DeviceTransport:
    """A character device such as /dev/vport0p1.

    virtio-serial semantics: while no host client is connected, read() returns 0 (and poll says
    "hang-up" at once). That is not the end: whatever was half-received is dropped and we wait
    for the host to connect; but right after a request such a read only says that the driver
    has not yet handled the host's "port open" notice (``eof_is_final``, OPEN_GRACE).

    The port is opened with O_ASYNC, so the guest driver sends SIGIO when the host side opens
    (and when data arrives); the signal wakes the main loop through its wake-up pipe and
    ``wake()`` ends the back-off at once. So an idle sandbox does not poll: it wakes every
    ``IDLE_RETRY`` seconds at most (a fallback should a SIGIO ever be missed).
    Where O_ASYNC cannot be set, it polls every ``RETRY_DELAY`` as before.
    """

    # A read of 0 may only mean the driver has not yet handled the host's "port open" notice
    # (see OPEN_GRACE); on the sockets of the host test modes it is the end.
    eof_is_final = False

    def __init__(self, path):
        self.path = path
        self._fd = None
        self._retry_at = 0.0
        self._hup_logged = False
        self.async_io = False

    def _open(self):
        try:
            self._fd = os.open(self.path, os.O_RDWR | os.O_NONBLOCK | os.O_NOCTTY)
            log('opened %s' % self.path)
        except OSError as err:
            if self._retry_at == 0.0 or err.errno != errno.EBUSY:
                log('cannot open %s: %s' % (self.path, err))
            self._retry_at = time.monotonic() + 1.0
            return
        self.async_io = enable_sigio(self._fd)

    def wake(self):
        """A signal arrived (SIGIO: the host connected or sent data): stop backing off."""
        if self._fd is not None:
            self._retry_at = 0.0

    def fd(self):
        if self._fd is None:
            if time.monotonic() >= self._retry_at:
                self._open()
            return None if self._fd is None or time.monotonic() < self._retry_at else self._fd
        if time.monotonic() < self._retry_at:
            return None
        return self._fd

    def data_fd(self):
        return self._fd

    def timeout(self):
        return max(0.0, self._retry_at - time.monotonic()) if self._retry_at else 1.0

    def on_readable(self):
        try:
            data = os.read(self._fd, 65536)
        except OSError as err:
            if err.errno in (errno.EAGAIN, errno.EINTR):
                return None
            if err.errno in (errno.EIO, errno.ENXIO, errno.ENODEV, errno.EPIPE):
                data = b''
            else:
                raise
        if data:
            self._hup_logged = False
            return data
        self._retry_at = time.monotonic() + (IDLE_RETRY if self.async_io else RETRY_DELAY)
        return b''

    def write(self, data):
        return os.write(self._fd, data)

    def drop(self):
        """No host connected right now; the port itself stays open."""

    def close(self):
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _recv(sock):
    """Bytes read from a host-test socket: None when nothing is there yet, b'' when it is gone."""
    try:
        return sock.recv(65536)
    except (BlockingIOError, InterruptedError):
        return None
    except OSError:
        return b''


class ConnectTransport:
    """Connect to a unix socket (a test harness listening like qemu); reconnect on drop."""

    def __init__(self, path):
        self.path = path
        self.sock = None
        self._retry_at = 0.0
        self._failures = 0

    def fd(self):
        if self.sock is None and time.monotonic() >= self._retry_at:
            import socket
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.connect(self.path)
            except OSError as err:
                sock.close()
                if self._failures % 100 == 0:
                    log('cannot connect to %s: %s' % (self.path, err))
                self._failures += 1
                self._retry_at = time.monotonic() + RETRY_DELAY
                return None
            sock.setblocking(False)
            self._failures = 0
            self.sock = sock
        return self.sock.fileno() if self.sock is not None else None

    def data_fd(self):
        return self.sock.fileno() if self.sock is not None else None

    def timeout(self):
        return RETRY_DELAY if self.sock is None else 1.0

    def on_readable(self):
        return _recv(self.sock)

    def write(self, data):
        return self.sock.send(data)

    def drop(self):
        if self.sock is not None:
            self.sock.close()
            self.sock = None
            self._retry_at = time.monotonic() + RETRY_DELAY

    def close(self):
        self.drop()


class ListenTransport:
    """Serve a unix socket, one client at a time (what qemu's chardev does for the host)."""

    def __init__(self, path):
        self.path = path
        if os.path.exists(path):
            os.unlink(path)
        # Bind under a temporary name and rename once listening, so the socket never
        # exists without a listener (a client would get "connection refused").
        tmp = '%s.%d.tmp' % (path, os.getpid())
        import socket
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(tmp)
        self.server.listen(8)
        os.rename(tmp, path)
        self.server.setblocking(False)
        self.conn = None

    def fd(self):
        return self.conn.fileno() if self.conn is not None else self.server.fileno()

    def data_fd(self):
        return self.conn.fileno() if self.conn is not None else None

    def timeout(self):
        return 1.0

    def on_readable(self):
        if self.conn is None:
            try:
                conn, _addr = self.server.accept()
            except (BlockingIOError, InterruptedError):
                return None
            conn.setblocking(False)
            self.conn = conn
            return None
        return _recv(self.conn)

    def write(self, data):
        return self.conn.send(data)

    def drop(self):
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def close(self):
        self.drop()
        self.server.close()
        try:
            os.unlink(self.path)
        except OSError:
            pass


def find_virtio_port(name=AGENT_PORT_NAME, sysdir='/sys/class/virtio-ports'):
    try:
        entries = sorted(os.listdir(sysdir))
    except OSError:
        return None
    for entry in entries:
        try:
            with open(os.path.join(sysdir, entry, 'name')) as fh:
                if fh.read().strip() == name:
                    return '/dev/' + entry
        except OSError:
            continue
    return None


def wait_for_virtio_port():
    start = time.monotonic()
    last = -10.0
    while True:
        path = find_virtio_port()
        if path and os.path.exists(path):
            return path
        elapsed = time.monotonic() - start
        if elapsed - last >= 5.0:
            log('waiting for the virtio-serial port %r (%.0fs)' % (AGENT_PORT_NAME, elapsed))
            last = elapsed
        time.sleep(0.1)


def transport_for(path):
    try:
        if stat.S_ISSOCK(os.stat(path).st_mode):
            return ConnectTransport(path)
    except OSError:
        pass
    return DeviceTransport(path)


# ---------------------------------------------------------------------------------------------
# Containers
# ---------------------------------------------------------------------------------------------


class Container:
    def __init__(self, spec):
        self.id = spec['id']
        self.spec = spec
        self.status = 'created'
        self.proc = None
        self.wrapper_pid = None
        self.pid = None
        self.exit_code = None
        self.created_at = time.time()
        self.started_at = None
        self.finished_at = None
        self.scratch = None  # mount point of the writable layer (mounted in its namespace only)

    def state(self):
        return {
            'id': self.id,
            'status': self.status,
            'pid': self.pid,
            'exit_code': self.exit_code,
            'created_at': iso_time(self.created_at),
            'started_at': iso_time(self.started_at),
            'finished_at': iso_time(self.finished_at),
            'rootfs': self.spec['rootfs'],
            'args': self.spec['args'],
            'stdout': self.spec['stdout'],
            'stderr': self.spec['stderr'],
        }


def _str_list(value, what):
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise RequestError('%s must be a list of strings, got %r' % (what, value))
    return value


def _int_param(params, key, default):
    value = params.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise RequestError('%s must be a non-negative integer, got %r' % (key, value))
    return value


def _number_param(params, key, default):
    value = params.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise RequestError('%s must be a non-negative number, got %r' % (key, value))
    return float(value)


def parse_post_clone(params):
    """``(seed bytes, epoch seconds, [share tags])`` from post_clone's params, or RequestError.

    Strict: exactly the keys ``seed`` (base64 of CLONE_SEED_MIN..CLONE_SEED_MAX bytes),
    ``time`` (seconds since the epoch, a plausible one) and ``mounts`` (optional, distinct tags
    of CLONE_SHARES)."""
    unknown = sorted(k for k in params if k not in ('seed', 'time', 'mounts', 'mac'))
    if unknown:
        raise RequestError('post_clone: unknown params %s' % ', '.join(repr(k)[:40] for k in unknown[:5]))
    seed = params.get('seed')
    if not isinstance(seed, str) or len(seed) > 4 * CLONE_SEED_MAX // 3 + 4:
        raise RequestError('post_clone: seed must be a base64 string of at most %d bytes' % CLONE_SEED_MAX)
    if len(seed) % 4 or not BASE64_RE.match(seed):
        raise RequestError('post_clone: seed is not valid base64')
    import binascii
    raw = binascii.a2b_base64(seed.encode('ascii'))
    if not CLONE_SEED_MIN <= len(raw) <= CLONE_SEED_MAX:
        raise RequestError('post_clone: seed must hold %d to %d bytes, got %d'
                           % (CLONE_SEED_MIN, CLONE_SEED_MAX, len(raw)))
    when = params.get('time')
    if isinstance(when, bool) or not isinstance(when, (int, float)) or not 1e9 <= when <= 1e10:
        raise RequestError('post_clone: time must be seconds since the epoch, got %r' % (when,))
    tags = params.get('mounts')
    if tags is None:
        tags = []
    if not isinstance(tags, list) or len(tags) > len(CLONE_SHARES) or len(set(map(repr, tags))) != len(tags):
        raise RequestError('post_clone: mounts must be a list of distinct share tags')
    for tag in tags:
        if not isinstance(tag, str) or tag not in CLONE_SHARES:
            raise RequestError('post_clone: unknown share tag %r (known: %s)'
                               % (tag if not isinstance(tag, str) else tag[:64], ', '.join(sorted(CLONE_SHARES))))
    mac = params.get('mac')
    if mac is not None and (not isinstance(mac, str) or not MAC_RE.match(mac) or int(mac[:2], 16) & 1):
        raise RequestError('post_clone: mac must be a unicast aa:bb:cc:dd:ee:ff in lower case, got %r'
                           % (mac[:64] if isinstance(mac, str) else mac,))
    return raw, float(when), list(tags), mac


def net_mode(cmdline):
    """The network the host gave the guest (NET_PARAM on the kernel command line): NET_STATIC_USER,
    NET_DHCP, or None (no NIC to set up)."""
    for word in cmdline.split():
        if word.startswith(NET_PARAM + '='):
            value = word[len(NET_PARAM) + 1:]
            return value if value in (NET_STATIC_USER, NET_DHCP) else None
    return None


# The udhcpc script (bridge and libvirt networks): busybox udhcpc runs it with the lease in its
# environment ($ip, $mask as prefix bits, $router, $dns, all space separated lists).
UDHCPC_SCRIPT = r'''#!/bin/busybox sh
case "$1" in
    deconfig) ip -4 addr flush dev "$interface"; ip link set "$interface" up ;;
    bound|renew)
        ip -4 addr flush dev "$interface"
        ip addr add "$ip/${mask:-24}" dev "$interface"
        for r in $router; do ip route replace default via "$r" dev "$interface"; break; done
        : > @RESOLV@.new
        for d in $dns; do echo "nameserver $d" >> @RESOLV@.new; done
        cat @RESOLV@.new > @RESOLV@
        echo "kata-net: $interface $ip/${mask:-24} via ${router:-none}" ;;
esac
exit 0
'''


def net_script(mode):
    """The busybox sh script that brings up lo and NET_IFACE for ``mode`` and makes
    NET_RESOLV_CONF, a read-only view of the guest's resolv.conf."""
    resolv = NET_DIR + '/resolv.conf'
    lines = ['set -u', 'ip link set lo up', 'mkdir -p %s %s' % (NET_DIR, os.path.dirname(NET_RESOLV_CONF)),
             ': > %s' % resolv, ': > %s' % NET_RESOLV_CONF,
             'mount --bind %s %s && mount -o remount,bind,ro %s' % (resolv, NET_RESOLV_CONF, NET_RESOLV_CONF)]
    if mode == NET_STATIC_USER:
        lines += ['ip addr add %s dev %s' % (USER_NET_ADDRESS, NET_IFACE),
                  'ip link set %s up' % NET_IFACE,
                  'ip route add default via %s dev %s' % (USER_NET_GATEWAY, NET_IFACE),
                  'echo "nameserver %s" > %s' % (USER_NET_DNS, resolv)]
    else:
        script = NET_DIR + '/udhcpc.sh'
        lines += ["cat > %s <<'KATA_EOF'\n%sKATA_EOF" % (script, UDHCPC_SCRIPT.replace('@RESOLV@', resolv)),
                  'chmod 700 %s' % script,
                  'ip link set %s up' % NET_IFACE,
                  # a lease within 3 tries a second apart (containers wait for them: a network
                  # without a DHCP server delays the first container ~3 s), then on in the
                  # background (-b), where it keeps trying and renews the lease
                  'udhcpc -i %s -s %s -b -t 3 -T 1 -A 3' % (NET_IFACE, script)]
    return '\n'.join(lines) + '\n'


# A container's mounts (create_container's ``mounts``), done by its init (exec_init.py) in its
# own mount namespace. The host sends guest paths: a bind's source is one of its shares.
MOUNT_TYPES = ('bind', 'tmpfs', 'proc', 'sysfs', 'devpts', 'mqueue')
MAX_MOUNTS = 64
MAX_PATH = 4096
# exec_init.py reads the mounts from the file next to its FIFO, ``<fifo>.mounts``: one
# mount a line, fields separated by NUL: type, source, destination, options (comma-joined),
# ``f`` (a file) or ``d``.
MOUNTS_SUFFIX = '.mounts'


def _mount_text(value, what, index):
    if not isinstance(value, str) or not value or len(value) > MAX_PATH or '\x00' in value or '\n' in value:
        raise RequestError('mounts[%d]: %s must be a non-empty string without NUL or newline' % (index, what))
    return value


def parse_mounts(value):
    """create_container's ``mounts``: a list of ``{type, source, destination, options, file}``."""
    if value is None:
        return []
    if not isinstance(value, list) or len(value) > MAX_MOUNTS:
        raise RequestError('mounts must be a list of at most %d mounts' % MAX_MOUNTS)
    out = []
    for index, item in enumerate(value):
        if not isinstance(item, dict):
            raise RequestError('mounts[%d] must be an object' % index)
        kind = item.get('type')
        if kind not in MOUNT_TYPES:
            raise RequestError('mounts[%d]: type %r is not one of %s' % (index, kind, ', '.join(MOUNT_TYPES)))
        source = _mount_text(item.get('source'), 'source', index)
        dest = _mount_text(item.get('destination'), 'destination', index)
        if not dest.startswith('/') or '..' in dest.split('/'):
            raise RequestError('mounts[%d]: destination %r must be absolute, without ".."' % (index, dest))
        if kind == 'bind' and (not any(source.startswith(top + '/') for top in (SHARED_MOUNT, VOLUMES_MOUNT))
                               or '..' in source.split('/')):
            raise RequestError('mounts[%d]: a bind source must be in a share, got %r' % (index, source))
        options = item.get('options') or []
        if not isinstance(options, list) or not all(isinstance(o, str) and o and ',' not in o and '\x00' not in o
                                                    and '\n' not in o for o in options):
            raise RequestError('mounts[%d]: options must be a list of single options' % index)
        is_file = item.get('file', False)
        if not isinstance(is_file, bool):
            raise RequestError('mounts[%d]: file must be true or false' % index)
        out.append([kind, source, dest, ','.join(options), 'f' if is_file else 'd'])
    return out


def reseed_rng(seed):
    """Mix ``seed`` into the kernel's input pool, credited, then make the crng reseed now (a
    write to /dev/urandom alone is neither credited nor used before the next timed reseed)."""
    fd = os.open('/dev/urandom', os.O_WRONLY)
    try:
        info = ((len(seed) * 8).to_bytes(4, sys.byteorder, signed=True)
                + len(seed).to_bytes(4, sys.byteorder, signed=True) + seed)
        fcntl.ioctl(fd, RNDADDENTROPY, info)
        fcntl.ioctl(fd, RNDRESEEDCRNG)
    finally:
        os.close(fd)


def spawn_busybox(busybox, args):
    """Start a busybox applet, stdin and stdout on /dev/null; its pid. posix_spawn (vfork):
    forking the agent, and importing subprocess, cost a lot more under TCG."""
    null = [(os.POSIX_SPAWN_OPEN, 0, '/dev/null', os.O_RDONLY, 0),
            (os.POSIX_SPAWN_OPEN, 1, '/dev/null', os.O_WRONLY, 0)]
    return os.posix_spawn(busybox, [busybox] + args, dict(os.environ), file_actions=null)


def wait_busybox(pid, args):
    code = exit_code_of(os.waitpid(pid, 0)[1])
    if code != 0:
        raise RequestError('busybox %s failed with exit code %s' % (' '.join(args), code))


# ---------------------------------------------------------------------------------------------
# Limits: each container's cgroup in the guest (cgroup v2, mounted by /init at CGROUP_ROOT)
# ---------------------------------------------------------------------------------------------

CGROUP_ROOT = '/sys/fs/cgroup'
LIMIT_VALUE_RE = re.compile(r'^[0-9a-z ,-]{0,64}$')
# cpuset first (a cgroup without CPUs refuses tasks), memory.max before memory.swap.max.
LIMIT_ORDER = ('cpuset.cpus', 'cpuset.mems', 'cpu.weight', 'cpu.max', 'cpu.max.burst', 'cpu.idle',
               'memory.low', 'memory.max', 'memory.swap.max', 'pids.max')
STAT_FILES = ('memory.current', 'memory.peak', 'pids.current')
STAT_KEYED = (('cpu.stat', ('usage_usec', 'user_usec', 'system_usec', 'nr_throttled', 'throttled_usec')),
              ('memory.events', ('oom', 'oom_kill')))
# exec_init's process settings: the extra argument it parses (see exec_init_extra)
MAX_CAP = 63
RLIMIT_MAX = 15
NAME_RE = re.compile(r'^[A-Za-z0-9.-]{1,64}$')


def parse_limits(value, what='limits'):
    """``{cgroup file: value}``: only LIMIT_FILES, short plain values (no path, no newline)."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise RequestError('%s must be an object of cgroup files, got %r' % (what, value))
    for key, val in value.items():
        if key not in LIMIT_FILES:
            raise RequestError('%s: %r is not a limit file (allowed: %s)' % (what, key, ', '.join(LIMIT_FILES)))
        if not isinstance(val, str) or not LIMIT_VALUE_RE.match(val):
            raise RequestError('%s: invalid value %r for %s' % (what, val, key))
    return dict(value)


def _write_file(path, value):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
    try:
        os.write(fd, (value or '\n').encode('ascii'))
    finally:
        os.close(fd)


def cgroup_enable(root):
    """Make <root>/CGROUP_PARENT with the controllers enabled for its children; return it.
    A controller the kernel lacks is left out (a limit that needs it then fails, naming it)."""
    try:
        with open(os.path.join(root, 'cgroup.controllers')) as fh:
            available = set(fh.read().split())
    except OSError:
        available = set(CGROUP_CONTROLLERS)  # not cgroupfs (host test modes): plain files
    wanted = [c for c in CGROUP_CONTROLLERS if c in available]
    parent = os.path.join(root, CGROUP_PARENT)
    for path in (root, parent):
        if path == parent:
            try:
                os.mkdir(parent, 0o755)
            except FileExistsError:
                pass
        for name in wanted:
            try:
                _write_file(os.path.join(path, 'cgroup.subtree_control'), '+' + name)
            except OSError as err:
                log('cannot enable the %s controller in %s: %s' % (name, path, err))
    return parent


def cgroup_write(path, limits):
    """Write limit files into the cgroup at ``path`` (LIMIT_ORDER); RequestError naming a file
    that cannot be written."""
    for name in LIMIT_ORDER:
        if name not in limits:
            continue
        try:
            _write_file(os.path.join(path, name), limits[name])
        except OSError as err:
            raise RequestError('cannot set %s to %r in the guest cgroup %s: %s'
                               % (name, limits[name], path, os.strerror(err.errno))) from None


def cgroup_create(root, cid, limits):
    """The container's own cgroup, limits written; its path (the container joins it first)."""
    path = os.path.join(cgroup_enable(root), cid)
    try:
        try:
            os.mkdir(path, 0o755)
        except FileExistsError:
            # left by an earlier container of this ID: a fresh one, so none of its limits stays
            if not cgroup_remove(path, tries=10):
                raise RequestError('the guest cgroup %s of an earlier container %s is still in use' % (path, cid)) from None
            os.mkdir(path, 0o755)
    except OSError as err:
        raise RequestError('cannot create the guest cgroup %s: %s' % (path, os.strerror(err.errno))) from None
    try:
        cgroup_write(path, limits)
    except RequestError:
        cgroup_remove(path)
        raise
    return path


def cgroup_remove(path, tries=20):
    """Remove a container's cgroup once its processes are gone (EBUSY while they exit)."""
    for _n in range(tries):
        try:
            os.rmdir(path)
            return True
        except FileNotFoundError:
            return True
        except OSError as err:
            if err.errno == errno.ENOTEMPTY and not os.path.exists(os.path.join(path, 'cgroup.controllers')):
                # host test modes (plain directory): the files written there
                for name in os.listdir(path):
                    os.unlink(os.path.join(path, name))
                continue
            if err.errno != errno.EBUSY:
                log('cannot remove cgroup %s: %s' % (path, err))
                return False
        time.sleep(0.05)
    log('cgroup %s still busy; left in place' % path)
    return False


def cgroup_read(path):
    """The limit and usage files of a cgroup as a flat {name: value} (strings; a missing
    file is left out)."""
    out = {}
    for name in LIMIT_FILES + STAT_FILES:
        try:
            with open(os.path.join(path, name)) as fh:
                out[name] = fh.read(256).strip()
        except OSError:
            pass
    for name, keys in STAT_KEYED:
        try:
            with open(os.path.join(path, name)) as fh:
                for line in fh.read(4096).splitlines():
                    key, _sep, value = line.partition(' ')
                    if key in keys:
                        out['%s.%s' % (name, key)] = value.strip()
        except OSError:
            pass
    return out


def parse_process(value):
    """The process settings exec_init applies (see exec_init_extra); RequestError if bad."""
    if value is None:
        value = {}
    if not isinstance(value, dict):
        raise RequestError('process must be an object, got %r' % (value,))
    out = {'no_new_privileges': value.get('no_new_privileges', False), 'capabilities': value.get('capabilities'),
           'rlimits': value.get('rlimits') or [], 'umask': value.get('umask'),
           'additional_gids': value.get('additional_gids') or [], 'oom_score_adj': value.get('oom_score_adj'),
           'domainname': value.get('domainname')}
    if not isinstance(out['no_new_privileges'], bool):
        raise RequestError('process.no_new_privileges must be true or false')
    caps = out['capabilities']
    if caps is not None:
        sets = ('ambient', 'bounding', 'effective', 'inheritable', 'permitted')
        if not isinstance(caps, dict) or sorted(caps) != list(sets):
            raise RequestError('process.capabilities must hold the five sets as bit masks')
        for key, mask in caps.items():
            if isinstance(mask, bool) or not isinstance(mask, int) or not 0 <= mask < 2 ** (MAX_CAP + 1):
                raise RequestError('process.capabilities.%s must be a bit mask, got %r' % (key, mask))
    if not isinstance(out['rlimits'], list) or len(out['rlimits']) > RLIMIT_MAX + 1:
        raise RequestError('process.rlimits must be a list of [resource, soft, hard]')
    for item in out['rlimits']:
        if (not isinstance(item, list) or len(item) != 3 or any(isinstance(v, bool) or not isinstance(v, int) for v in item)
                or not 0 <= item[0] <= RLIMIT_MAX or not all(-1 <= v < 2 ** 63 for v in item[1:])):
            raise RequestError('process.rlimits: invalid entry %r' % (item,))
    for key, low, high in (('umask', 0, 0o777), ('oom_score_adj', -1000, 1000)):
        val = out[key]
        if val is not None and (isinstance(val, bool) or not isinstance(val, int) or not low <= val <= high):
            raise RequestError('process.%s must be an integer from %d to %d, got %r' % (key, low, high, val))
    gids = out['additional_gids']
    if not isinstance(gids, list) or len(gids) > 64 or any(
            isinstance(g, bool) or not isinstance(g, int) or not 0 <= g < 2 ** 32 - 1 for g in gids):
        raise RequestError('process.additional_gids must be a list of at most 64 gids')
    name = out['domainname']
    if name is not None and (not isinstance(name, str) or not NAME_RE.match(name)):
        raise RequestError('invalid domainname %r' % (name,))
    return out


def exec_init_extra(process, cgroup):
    """exec_init's settings argument: ``key=value`` pairs joined by ``;`` (every value is a
    number, a list of numbers, or a name checked by parse_process / an agent-made path)."""
    items = []
    if cgroup:
        items.append('cg=' + cgroup)
    if process.get('domainname'):
        items.append('dn=' + process['domainname'])
    if process.get('oom_score_adj') is not None:
        items.append('oom=%d' % process['oom_score_adj'])
    if process.get('rlimits'):
        items.append('rl=' + ','.join('%d:%d:%d' % tuple(r) for r in process['rlimits']))
    if process.get('additional_gids'):
        items.append('gids=' + ','.join(str(g) for g in process['additional_gids']))
    caps = process.get('capabilities')
    if caps is not None:
        items.append('caps=' + ','.join('%x' % caps[k] for k in ('bounding', 'effective', 'permitted',
                                                                 'inheritable', 'ambient')))
    if process.get('umask') is not None:
        items.append('umask=%d' % process['umask'])
    if process.get('no_new_privileges'):
        items.append('nnp=1')
    return ';'.join(items)


class Agent:
    def __init__(self, transport, shared_dir=SHARED_MOUNT, poweroff=True, busybox=None,
                 run_dir=RUN_DIR, output_dir=OUTPUT_MOUNT, cgroup_root=''):
        self.transport = transport
        self.cgroup_root = cgroup_root
        self.run_dir = run_dir
        self._seq = 0
        self.shared_dir = shared_dir
        self.output_dir = output_dir
        self.poweroff = poweroff
        self.busybox = busybox or find_busybox()
        self.containers = {}
        self.by_wrapper = {}
        self.started = time.monotonic()
        self.inbuf = b''
        self.outbuf = b''
        self._rx_at = float('-inf')  # when bytes last came from the host (monotonic)
        self._held = False
        self.running = True
        self.exit_after_flush = False
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self.net_pid = None  # the network set-up (start_network), until it has finished
        self.resolv_conf = ''  # what containers get at /etc/resolv.conf ('' = nothing)

    # -- the network (contract NET_*) -----------------------------------------------------------

    def start_network(self, mode):
        """Set up the guest's network for ``mode`` (net_mode) in the background: the agent
        answers at once, and a container starts only once it is done (wait_network)."""
        if mode is None:
            return
        self.net_pid = os.posix_spawn(self.busybox, [self.busybox, 'sh', '-c', net_script(mode)], dict(os.environ),
                                      file_actions=[(os.POSIX_SPAWN_OPEN, 0, '/dev/null', os.O_RDONLY, 0)])
        self.resolv_conf = NET_RESOLV_CONF
        log('setting up the network (%s)' % mode)

    def wait_network(self):
        """Wait for the network set-up started by start_network to finish."""
        pid, self.net_pid = self.net_pid, None
        if pid is None:
            return
        try:
            status = os.waitpid(pid, 0)[1]
        except ChildProcessError:
            return  # reaped already (reap logged it)
        self._net_done(status)

    @staticmethod
    def _net_done(status):
        code = exit_code_of(status)
        if code:
            log('the network set-up failed with exit code %s' % code)
        else:
            log('network set up')

    # -- signals and reaping ------------------------------------------------------------------

    def install_signals(self):
        signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        signal.signal(signal.SIGCHLD, lambda signum, frame: None)
        # the port's "host connected" and "data here" (see DeviceTransport); the wake-up fd
        # carries it to the main loop
        signal.signal(signal.SIGIO, lambda signum, frame: None)
        if not self.poweroff:
            signal.signal(signal.SIGTERM, self._on_term)
            signal.signal(signal.SIGINT, self._on_term)
        else:
            # PID 1 of the guest must not be stopped by a stray signal.
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                signal.signal(sig, signal.SIG_IGN)
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)

    def _on_term(self, signum, frame):
        self.running = False

    def _drain_wakeup(self):
        try:
            while os.read(self._wake_r, 4096):
                pass
        except OSError:
            pass

    def reap(self):
        """Collect every exited child: containers get their exit code, orphans just vanish."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            except InterruptedError:
                continue
            if pid == 0:
                return
            ctr = self.by_wrapper.pop(pid, None)
            if ctr is not None:
                self._finish(ctr, status)
            elif pid == self.net_pid:
                self.net_pid = None
                self._net_done(status)

    def _finish(self, ctr, status):
        ctr.exit_code = exit_code_of(status)
        ctr.status = 'stopped'
        ctr.finished_at = time.time()
        if ctr.proc is not None:
            # Tell subprocess the child is gone so it never waits on a reused pid.
            ctr.proc.returncode = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else ctr.exit_code
        log('container %s exited with %s' % (ctr.id, ctr.exit_code))

    def _sleep(self, seconds):
        """Sleep up to ``seconds`` but wake (and reap) as soon as a child exits."""
        try:
            select.select([self._wake_r], [], [], max(0.0, seconds))
        except InterruptedError:
            pass
        self._drain_wakeup()
        self.reap()

    # -- main loop ----------------------------------------------------------------------------

    def serve(self):
        self.install_signals()
        log('agent %s (protocol %d) serving' % (AGENT_VERSION, PROTOCOL))
        while self.running:
            self.turn()
        self.stop_containers()

    def turn(self):
        self.reap()
        rfd = self.transport.fd()
        wfd = self.transport.data_fd() if self.outbuf else None
        rlist = [self._wake_r] + ([rfd] if rfd is not None else [])
        wlist = [wfd] if wfd is not None else []
        timeout = self.transport.timeout() if rfd is None else 1.0
        try:
            readable, writable = select.select(rlist, wlist, [], timeout)[:2]
        except InterruptedError:
            return
        except (OSError, ValueError) as err:
            log('select failed: %s' % err)
            self._disconnect()
            time.sleep(RETRY_DELAY)
            return
        if self._wake_r in readable:
            self._drain_wakeup()
            self.reap()
            wake = getattr(self.transport, 'wake', None)
            if wake is not None:
                wake()
        if wfd is not None and wfd in writable:
            self._flush_some()
        if rfd is not None and rfd in readable:
            data = self.transport.on_readable()
            if data == b'':
                if self._hung_up():
                    self._disconnect()
            elif data:
                self._received()
                self._receive(data)

    def _received(self):
        self._rx_at = time.monotonic()
        self._held = False

    def _hung_up(self):
        """The port read as "no host": a hang-up, unless the transport says such a read can
        come before the host's "port open" notice (a virtio port) and bytes arrived less than
        OPEN_GRACE seconds ago. Then the buffers are kept: whatever was received is answered
        once the port opens."""
        if getattr(self.transport, 'eof_is_final', True) or time.monotonic() - self._rx_at >= OPEN_GRACE:
            return True
        if not self._held and (self.outbuf or self.inbuf):
            self._held = True
            log('port reads as closed just after a request: holding %d unsent bytes until it opens'
                % len(self.outbuf))
        return False

    def _disconnect(self):
        if self.inbuf or self.outbuf:
            log('host went away; dropping %d unread and %d unsent bytes'
                % (len(self.inbuf), len(self.outbuf)))
        self.inbuf = b''
        self.outbuf = b''
        self.transport.drop()

    def _receive(self, data):
        self.inbuf += data
        while b'\n' in self.inbuf:
            line, self.inbuf = self.inbuf.split(b'\n', 1)
            line = line.strip()
            if line:
                self.handle_line(line)
                if not self.running:
                    return
        if len(self.inbuf) > MAX_LINE:
            self.inbuf = b''
            self.send({'id': None, 'error': 'request line longer than %d bytes dropped' % MAX_LINE})

    def handle_line(self, line):
        try:
            req = json.loads(line.decode('utf-8'))
        except ValueError as err:
            self.send({'id': None, 'error': 'malformed request (not a JSON line): %s' % err})
            return
        if not isinstance(req, dict):
            self.send({'id': None, 'error': 'malformed request: expected a JSON object'})
            return
        rid = req.get('id')
        method = req.get('method')
        params = req.get('params')
        if params is None:
            params = {}
        handler = getattr(self, 'm_' + method, None) if isinstance(method, str) else None
        if handler is None:
            self.send({'id': rid, 'error': 'unknown method %r' % (method,)})
            return
        if not isinstance(params, dict):
            self.send({'id': rid, 'error': 'params of %s must be an object' % method})
            return
        try:
            result = handler(params)
        except RequestError as err:
            self.send({'id': rid, 'error': str(err)})
            return
        except HostGone:
            log('host left during %s; reply dropped' % method)
            return
        except Exception as err:  # noqa: BLE001 - PID 1 must survive any request
            log('%s failed: %r' % (method, err))
            self.send({'id': rid, 'error': '%s failed: %s: %s' % (method, type(err).__name__, err)})
            return
        self.send({'id': rid, 'result': result})
        if method == 'shutdown':
            self.do_shutdown()

    # -- output -------------------------------------------------------------------------------

    def send(self, obj):
        self.outbuf += json.dumps(obj, separators=(',', ':')).encode('utf-8') + b'\n'
        self._flush_some()

    def _flush_some(self):
        while self.outbuf and self.transport.data_fd() is not None:
            try:
                sent = self.transport.write(self.outbuf)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as err:
                if err.errno == errno.EAGAIN:
                    return
                log('write failed: %s' % err)
                self._disconnect()
                return
            self.outbuf = self.outbuf[sent:]

    def flush(self, timeout):
        deadline = time.monotonic() + timeout
        while self.outbuf and self.transport.data_fd() is not None and time.monotonic() < deadline:
            try:
                select.select([], [self.transport.data_fd()], [], max(0.0, deadline - time.monotonic()))
            except InterruptedError:
                continue
            self._flush_some()

    # -- containers ---------------------------------------------------------------------------

    def _get(self, params):
        cid = params.get('id')
        if not isinstance(cid, str) or not ID_RE.match(cid):
            raise RequestError('invalid container id %r' % (cid,))
        ctr = self.containers.get(cid)
        if ctr is None:
            raise RequestError('container %s not found' % cid)
        return ctr

    def m_ping(self, params):
        return {
            'version': AGENT_VERSION,
            'protocol': PROTOCOL,
            'pid': os.getpid(),
            'uptime': round(time.monotonic() - self.started, 3),
        }

    def m_create_container(self, params):
        cid = params.get('id')
        if not isinstance(cid, str) or not ID_RE.match(cid):
            raise RequestError('invalid container id %r' % (cid,))
        if cid in self.containers:
            raise RequestError('container %s already exists (status %s)'
                               % (cid, self.containers[cid].status))
        base = os.path.join(self.shared_dir, cid)
        rootfs = params.get('rootfs') or os.path.join(base, 'rootfs')
        if not isinstance(rootfs, str) or not rootfs.startswith('/'):
            raise RequestError('rootfs must be an absolute guest path, got %r' % (rootfs,))
        if not os.path.isdir(rootfs):
            raise RequestError('rootfs %s of container %s is not a directory' % (rootfs, cid))
        args = _str_list(params.get('args'), 'args')
        if not args or not args[0]:
            raise RequestError('args of container %s must not be empty' % cid)
        env = params.get('env') or []
        if isinstance(env, dict):
            env = ['%s=%s' % (k, v) for k, v in env.items()]
        env = _str_list(env, 'env')
        for item in env:
            if '=' not in item or item.startswith('='):
                raise RequestError('env entry %r is not KEY=VALUE' % (item,))
        cwd = params.get('cwd') or '/'
        if not isinstance(cwd, str) or not cwd.startswith('/'):
            raise RequestError('cwd must be an absolute path, got %r' % (cwd,))
        hostname = params.get('hostname')
        if hostname is not None and (not isinstance(hostname, str) or len(hostname) > 64):
            raise RequestError('invalid hostname %r' % (hostname,))
        # The host shares every rootfs read-only. readonly=false: the container writes to an
        # overlay whose upper layer is a tmpfs in its own mount namespace (guest memory; gone
        # with the container). readonly=true: a read-only bind. Not given: the rootfs as it is.
        readonly = params.get('readonly')
        if readonly is not None and not isinstance(readonly, bool):
            raise RequestError('readonly must be true or false, got %r' % (readonly,))
        mode = {None: 'plain', True: 'readonly', False: 'overlay'}[readonly]
        streams = {}
        for key in ('stdout', 'stderr'):
            path = params.get(key) or os.path.join(self.output_dir, cid, key)
            if not isinstance(path, str) or not path.startswith('/'):
                raise RequestError('%s must be an absolute guest path, got %r' % (key, path))
            streams[key] = path
        process = parse_process(params.get('process'))
        limits = parse_limits(params.get('limits'))
        mounts = parse_mounts(params.get('mounts'))
        if (os.getpid() == 1 and any(m[1].startswith(VOLUMES_MOUNT + '/') for m in mounts)
                and not os.path.ismount(VOLUMES_MOUNT)):
            # a guest whose VM was defined before the volume share existed
            raise RequestError('container %s: this guest has no read-write volume share (%s is not mounted); '
                               'recreate the sandbox to give it one' % (cid, VOLUMES_MOUNT))
        spec = {
            'mounts': mounts,
            'id': cid, 'rootfs': rootfs, 'rootfs_mode': mode, 'args': args, 'env': env, 'cwd': cwd,
            'uid': _int_param(params, 'uid', 0), 'gid': _int_param(params, 'gid', 0),
            'hostname': hostname, 'stdout': streams['stdout'], 'stderr': streams['stderr'],
            'process': process,
        }
        # Its own cgroup, limits written, before anything of it runs: exec_init joins it first.
        # (No cgroup root: the host test modes, where no limit can be asked for.)
        if limits and not self.cgroup_root:
            raise RequestError('container %s: limits asked for, but this agent has no cgroup root' % cid)
        try:
            spec['cgroup'] = cgroup_create(self.cgroup_root, cid, limits) if self.cgroup_root else ''
        except RequestError as err:
            if limits:
                raise
            log('container %s runs without a cgroup of its own: %s' % (cid, err))
            spec['cgroup'] = ''
        ctr = Container(spec)
        self.containers[cid] = ctr
        log('created container %s' % cid)
        return ctr.state()

    def m_start_container(self, params):
        ctr = self._get(params)
        if ctr.status != 'created':
            raise RequestError('container %s cannot start: status is %s, not created'
                               % (ctr.id, ctr.status))
        spec = ctr.spec
        fds = []
        try:
            for key in ('stdout', 'stderr'):
                os.makedirs(os.path.dirname(spec[key]) or '/', exist_ok=True)
                fds.append(os.open(spec[key], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644))
        except OSError as err:
            for fd in fds:
                os.close(fd)
            raise RequestError('container %s: cannot open output file: %s' % (ctr.id, err)) from None
        # The container's init reports setup errors through a FIFO it opens close-on-exec:
        # EOF means the container process has exec'd. (A pipe would also stay open in the
        # unshare wrapper, which never closes what it inherits.)
        self._seq += 1
        fifo = os.path.join(self.run_dir, 'exec-%s-%d' % (ctr.id, self._seq))
        scratch = os.path.join(self.run_dir, 'rootfs-%s-%d' % (ctr.id, self._seq))
        try:
            os.makedirs(self.run_dir, mode=0o700, exist_ok=True)
            # a read-only root with mounts gets a writable layer for their mount points too
            layered = spec['rootfs_mode'] == 'overlay' or (spec['rootfs_mode'] == 'readonly' and spec.get('mounts'))
            if layered:
                os.mkdir(scratch, 0o700)
            for path in (fifo, fifo + MOUNTS_SUFFIX):
                if os.path.lexists(path):
                    os.unlink(path)
            if spec.get('mounts'):
                fd = os.open(fifo + MOUNTS_SUFFIX, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
                with os.fdopen(fd, 'w', encoding='utf-8', errors='surrogateescape') as fh:
                    fh.write(''.join('\x00'.join(m) + '\n' for m in spec['mounts']))
            os.mkfifo(fifo, 0o600)
            status_r = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
        except OSError as err:
            for fd in fds:
                os.close(fd)
            raise RequestError('container %s: cannot create %s: %s' % (ctr.id, fifo, err)) from None
        python = sys.executable or '/usr/bin/python3'
        self.wait_network()  # the container shares the guest's network: it starts with it up
        argv = ([self.busybox, 'unshare', '-p', '-m', '-u', '-i', '-f', '--']
                + exec_init_argv(python, spec, fifo, self.busybox, scratch, self.resolv_conf))
        import subprocess
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=fds[0], stderr=fds[1],
                                    start_new_session=True, close_fds=True)
        except OSError as err:
            os.close(status_r)
            os.unlink(fifo)
            raise RequestError('container %s: cannot run %s: %s' % (ctr.id, argv[0], err)) from None
        finally:
            for fd in fds:
                os.close(fd)
        ctr.proc = proc
        ctr.scratch = scratch if layered else None
        ctr.wrapper_pid = proc.pid
        ctr.started_at = time.time()
        ctr.status = 'running'
        self.by_wrapper[proc.pid] = ctr
        try:
            message = self._read_exec_status(ctr, status_r)
        finally:
            os.close(status_r)
            for path in (fifo, fifo + MOUNTS_SUFFIX):
                try:
                    os.unlink(path)
                except OSError:
                    pass
        ctr.pid = self._find_child(ctr)
        if message:
            # The process never ran: make sure it is gone and report why.
            self._wait_stopped(ctr, 5.0)
            raise RequestError('container %s failed to start: %s' % (ctr.id, message))
        log('started container %s as pid %s' % (ctr.id, ctr.pid))
        return {'id': ctr.id, 'pid': ctr.pid, 'status': ctr.status,
                'started_at': iso_time(ctr.started_at)}

    def _read_exec_status(self, ctr, fd):
        """Wait until the container process has exec'd (EOF on the close-on-exec pipe)."""
        chunks = []
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if time.monotonic() >= deadline:
                return 'timed out after %ds waiting for the container process to exec' % START_TIMEOUT
            try:
                ready = select.select([fd, self._wake_r], [], [], 0.5)[0]
            except InterruptedError:
                continue
            if fd in ready:
                try:
                    data = os.read(fd, 65536)
                except BlockingIOError:
                    continue
                if not data:
                    break
                chunks.append(data)
                continue
            if self._wake_r in ready:
                self._drain_wakeup()
                self.reap()
                if ctr.status == 'stopped':
                    # Died before it even opened the FIFO (unshare or python failed).
                    try:
                        chunks.append(os.read(fd, 65536))
                    except OSError:
                        pass
                    if not b''.join(chunks).strip():
                        return ('the container init exited with code %s before exec; see %s'
                                % (ctr.exit_code, ctr.spec['stderr']))
                    break
        return b''.join(chunks).decode('utf-8', 'replace').strip()

    def _find_child(self, ctr):
        """The pid of the container process: the one child of the unshare wrapper."""
        wpid = ctr.wrapper_pid
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline:
            try:
                with open('/proc/%d/task/%d/children' % (wpid, wpid)) as fh:
                    pids = fh.read().split()
                if pids:
                    return int(pids[0])
            except OSError:
                pid = self._find_child_by_scan(wpid)
                if pid:
                    return pid
            if ctr.status == 'stopped':
                return None
            self._sleep(0.005)
        return None

    @staticmethod
    def _find_child_by_scan(wpid):
        try:
            entries = os.listdir('/proc')
        except OSError:
            return None
        for entry in entries:
            if not entry.isdigit():
                continue
            try:
                with open('/proc/%s/stat' % entry) as fh:
                    fields = fh.read().rsplit(')', 1)[1].split()
            except (OSError, IndexError):
                continue
            if fields and int(fields[1]) == wpid:
                return int(entry)
        return None

    def _wait_stopped(self, ctr, timeout):
        deadline = time.monotonic() + timeout
        self.reap()
        while ctr.status == 'running' and time.monotonic() < deadline:
            self._sleep(min(0.2, deadline - time.monotonic()))

    def _kill(self, ctr, num):
        """Deliver a signal to the container process; True when it was sent.

        Only the container process (PID 1 of its pid namespace) is signalled: the unshare
        wrapper does not forward signals, and killing it would orphan the namespace.
        """
        pid = ctr.pid or ctr.wrapper_pid
        try:
            os.kill(pid, num)
        except ProcessLookupError:
            return False
        return True

    def m_signal_container(self, params):
        ctr = self._get(params)
        num = parse_signal(params.get('signal', 'SIGTERM'))
        self.reap()
        signaled = False
        if ctr.status == 'running':
            signaled = self._kill(ctr, num)
        elif ctr.status == 'created' and signal_is_fatal(num):
            # Like killing an OCI init still waiting for "start": it ends before it ran.
            ctr.status = 'stopped'
            ctr.exit_code = 128 + num
            ctr.finished_at = time.time()
            signaled = True
        return {'id': ctr.id, 'signal': num, 'signaled': signaled, 'status': ctr.status}

    def m_wait_container(self, params):
        ctr = self._get(params)
        timeout = min(_number_param(params, 'timeout', 0.0), MAX_WAIT)
        if ctr.status == 'running' and not self._wait_or_hangup(ctr, timeout):
            raise HostGone()
        return {'id': ctr.id, 'status': ctr.status, 'exit_code': ctr.exit_code}

    def _wait_or_hangup(self, ctr, timeout):
        """Wait for ``ctr`` to stop; False as soon as the host hangs up (it no longer waits,
        and the next client must not queue behind a wait nobody reads)."""
        deadline = time.monotonic() + timeout
        self.reap()
        while ctr.status == 'running' and time.monotonic() < deadline:
            rfd = self.transport.fd()
            rlist = [self._wake_r] + ([rfd] if rfd is not None else [])
            try:
                ready = select.select(rlist, [], [], min(1.0, max(0.0, deadline - time.monotonic())))[0]
            except InterruptedError:
                continue
            self._drain_wakeup()
            self.reap()
            if rfd is not None and rfd in ready:
                data = self.transport.on_readable()
                if data == b'':
                    if self._hung_up():
                        self._disconnect()
                        return False
                elif data:
                    self._received()
                    self.inbuf += data  # handled once this request is answered
        return True

    def m_container_state(self, params):
        ctr = self._get(params)
        self.reap()
        return ctr.state()

    def m_remove_container(self, params):
        cid = params.get('id')
        if not isinstance(cid, str) or not ID_RE.match(cid):
            raise RequestError('invalid container id %r' % (cid,))
        self.reap()
        ctr = self.containers.get(cid)
        if ctr is None:
            return {'id': cid, 'removed': False}
        if ctr.status == 'running':
            raise RequestError('container %s is still running (pid %s): stop it before removing'
                               % (cid, ctr.pid))
        del self.containers[cid]
        if ctr.spec.get('cgroup'):
            cgroup_remove(ctr.spec['cgroup'])
        if ctr.scratch:
            try:
                os.rmdir(ctr.scratch)
            except OSError:
                pass
        return {'id': cid, 'removed': True}

    def m_update_container(self, params):
        """Write new limits into a container's cgroup, in place (no restart); returns what
        its cgroup holds afterwards."""
        ctr = self._get(params)
        limits = parse_limits(params.get('limits'))
        if not ctr.spec.get('cgroup'):
            raise RequestError('container %s has no cgroup in the guest' % ctr.id)
        cgroup_write(ctr.spec['cgroup'], limits)
        log('updated limits of container %s: %s' % (ctr.id, ', '.join(sorted(limits))))
        return {'id': ctr.id, 'cgroup': cgroup_read(ctr.spec['cgroup'])}

    def m_container_stats(self, params):
        """A container's cgroup in the guest: its limits and usage (cpu.stat, memory, pids)."""
        ctr = self._get(params)
        return {'id': ctr.id, 'cgroup': cgroup_read(ctr.spec['cgroup']) if ctr.spec.get('cgroup') else {}}

    def m_list_containers(self, params):
        self.reap()
        return [self.containers[cid].state() for cid in sorted(self.containers)]

    def m_kill_all(self, params):
        num = parse_signal(params.get('signal', 'SIGKILL'))
        self.reap()
        count = 0
        for ctr in list(self.containers.values()):
            if ctr.status == 'running' and self._kill(ctr, num):
                count += 1
        return {'signal': num, 'count': count}

    def m_shutdown(self, params):
        return {'poweroff': self.poweroff}

    def m_post_clone(self, params):
        """A clone of a VM template just resumed: mix the host's random bytes into the RNG and
        reseed it (every clone starts from the same RNG state), set the clock (it stopped when
        the template was saved), mount the 9p shares the template guest left unmounted.

        Outside a guest (the agent is not PID 1: host test modes) the request is checked and
        answered but nothing is changed: the host's clock and RNG are not ours to touch.
        """
        seed, when, tags, mac = parse_post_clone(params)
        real = os.getpid() == 1
        mounted = []
        if real:
            t0 = time.monotonic()
            reseed_rng(seed)
            time.clock_settime(time.CLOCK_REALTIME, when)
            t1 = time.monotonic()
            started = []  # the mounts run side by side
            for tag in tags:
                path, options = CLONE_SHARES[tag]
                if not os.path.ismount(path):
                    os.makedirs(path, exist_ok=True)
                    args = ['mount', '-t', '9p', '-o', NINEP_OPTIONS + ',' + options, tag, path]
                    started.append((spawn_busybox(self.busybox, args), args))
            if mac is not None:
                # the template's MAC came back with the NIC's device state: this clone has its own
                self.wait_network()
                args = ['ip', 'link', 'set', NET_IFACE, 'address', mac]
                started.append((spawn_busybox(self.busybox, args), args))
            failed = None
            for pid, args in started:
                try:
                    wait_busybox(pid, args)
                except RequestError as err:
                    failed = failed or err
            if failed is not None:
                raise failed
            mounted = list(tags)
            log('clone ready: RNG reseeded and clock set in %.3fs; mounted %s in %.3fs'
                % (t1 - t0, ', '.join(tags) or 'nothing', time.monotonic() - t1))
        return {'seeded': len(seed) if real else 0, 'clock_set': real, 'mounted': mounted}

    # -- shutdown -----------------------------------------------------------------------------

    def stop_containers(self, timeout=3.0):
        running = [c for c in self.containers.values() if c.status == 'running']
        for ctr in running:
            self._kill(ctr, signal.SIGKILL)
        deadline = time.monotonic() + timeout
        while any(c.status == 'running' for c in running) and time.monotonic() < deadline:
            self._sleep(0.05)

    def do_shutdown(self):
        self.flush(2.0)
        log('shutting down')
        self.stop_containers()
        try:
            os.sync()
        except OSError:
            pass
        self.running = False
        if self.poweroff:
            import subprocess
            try:
                subprocess.run([self.busybox, 'poweroff', '-f'], check=False)
            except OSError as err:
                log('poweroff failed: %s' % err)
            while True:  # PID 1 must never return; the machine is going down.
                time.sleep(1)


# ---------------------------------------------------------------------------------------------
# the container's init: guest/exec_init.py, PID 1 of the container's new namespaces
# ---------------------------------------------------------------------------------------------


# The container's init (guest/exec_init.py), run as ``python3 -I -S EXEC_INIT_PATH ...`` right
# after ``busybox unshare``. It sits next to this file: in the initrd (/opt/kata) and in the
# collection, where the host test modes run the agent from.
EXEC_INIT_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'exec_init.py')


def exec_init_argv(python, spec, fifo, busybox, scratch='', resolv=''):
    """The command line that turns into the container process after ``busybox unshare``."""
    extra = exec_init_extra(spec.get('process') or {}, spec.get('cgroup'))
    return ([python, '-I', '-S', EXEC_INIT_PATH, fifo, busybox, spec['rootfs'],
             spec.get('rootfs_mode', 'plain'), scratch, resolv, spec['hostname'] or '', spec['cwd'], str(spec['uid']), str(spec['gid']),
             DEFAULT_PATH, extra, str(len(spec['env']))] + list(spec['env']) + list(spec['args']))


# ---------------------------------------------------------------------------------------------


def parse_args(argv):
    opts = {'listen': None, 'connect': None, 'device': None, 'poweroff': True,
            'shared_dir': SHARED_MOUNT, 'run_dir': RUN_DIR, 'output_dir': OUTPUT_MOUNT,
            'cgroup_root': None}
    it = iter(argv)
    for arg in it:
        if arg in ('--listen', '--connect', '--device', '--shared-dir', '--run-dir', '--output-dir', '--cgroup-root'):
            try:
                opts[arg[2:].replace('-', '_')] = next(it)
            except StopIteration:
                raise SystemExit('kata-agent: %s needs a value' % arg) from None
        elif arg == '--no-poweroff':
            opts['poweroff'] = False
        else:
            raise SystemExit('kata-agent: unknown argument %r' % arg)
    return opts


def main(argv=None):
    opts = parse_args(sys.argv[1:] if argv is None else argv)
    if opts['listen']:
        transport = ListenTransport(opts['listen'])
    elif opts['connect']:
        transport = ConnectTransport(opts['connect'])
    else:
        device = opts['device'] or os.environ.get('KATA_AGENT_DEVICE') or wait_for_virtio_port()
        transport = transport_for(device)
    agent = Agent(transport, shared_dir=opts['shared_dir'], poweroff=opts['poweroff'],
                  run_dir=opts['run_dir'], output_dir=opts['output_dir'],
                  # the guest's cgroupfs only as PID 1 of a guest, never a host's
                  cgroup_root=CGROUP_ROOT if opts['cgroup_root'] is None and os.getpid() == 1 else opts['cgroup_root'] or '')
    if os.getpid() == 1:  # the guest's network is the guest's alone: never in the host test modes
        try:
            with open('/proc/cmdline') as f:
                agent.start_network(net_mode(f.read()))
        except OSError as err:
            log('cannot set up the network: %s' % err)
    while True:
        try:
            agent.serve()
            break
        except Exception as err:  # noqa: BLE001 - as PID 1 the agent keeps serving
            if not agent.poweroff:
                raise
            log('agent loop failed: %r; restarting it' % (err,))
            agent._disconnect()
            time.sleep(1.0)
    transport.close()


if __name__ == '__main__':
    main()
