# Copyright: kata.runtime contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Shared pieces of the benchmarks: a private runtime, timed traces, a bare QEMU boot,
a busybox rootfs, VMM memory, statistics, output, and the cleanup every benchmark ends with.

Benchmarks drive the core directly (no Ansible), each with its own state root, domain prefix
and cgroup parent, so they never touch sandboxes they did not make and can run next to a
real installation.
"""

from __future__ import annotations

import argparse
import json
import os
import selectors
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

from ansible_collections.kata.runtime.benchmarks._probe import qemu_argv
from ansible_collections.kata.runtime.plugins.module_utils.kata import sandbox as sbx
from ansible_collections.kata.runtime.plugins.module_utils.kata import template
from ansible_collections.kata.runtime.plugins.module_utils.kata.config import Config, load_config
from ansible_collections.kata.runtime.plugins.module_utils.kata.guest import contract
from ansible_collections.kata.runtime.plugins.module_utils.kata.runtime import Runtime, Trace


def parser(description, runs):
    p = argparse.ArgumentParser(description=description)
    p.add_argument('--runs', type=int, default=runs, help='measured runs per variant (default %(default)s)')
    p.add_argument('--json', action='store_true', help='print one JSON document instead of tables')
    p.add_argument('--config', default=None, help='host config file (default: built-in defaults '
                   'and /etc/kata-runtime/config.yaml when present)')
    p.add_argument('--image-dir', default=None, help='guest image dir holding vmlinux and '
                   'kata-initrd.img (default: the config\'s image_dir)')
    return p


def die_on_signals():
    """SIGTERM/SIGHUP unwind like Ctrl-C, so every `finally` cleanup still runs."""
    def handler(signum, _frame):
        raise KeyboardInterrupt('signal %d' % signum)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, handler)


def log(msg):
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# a runtime of our own

class Bench:
    """A Runtime confined to ``/run/kata-bench-<name>``, prefix ``kata-bench-<name>-`` and the
    cgroup parent ``kata-bench-<name>``; ``cleanup()`` removes all of it and checks it did."""

    def __init__(self, name, args):
        self.name = name
        self.state_root = '/run/kata-bench-%s' % name
        self.prefix = 'kata-bench-%s-' % name
        self.cgroup_parent = 'kata-bench-%s' % name
        overrides = {'state_root': self.state_root, 'domain_prefix': self.prefix,
                     'cgroup_parent': self.cgroup_parent}
        if args.image_dir:
            overrides['image_dir'] = os.path.abspath(args.image_dir)
        config = load_config(args.config, overrides=overrides)
        self.tmp = tempfile.mkdtemp(prefix='kata-bench-%s-' % name)
        # A private copy of the image: a rebuild of the image dir during the run (its links
        # move) must not change what is measured half-way.
        self.image = {}
        for key in ('kernel', 'initrd'):
            src = os.path.realpath(getattr(config, key))
            dst = os.path.join(self.tmp, os.path.basename(src))
            shutil.copyfile(src, dst)
            overrides[key] = dst
            self.image[key] = os.path.basename(src)
        self.config = load_config(args.config, overrides=overrides)
        self.rt = Runtime(self.config)

    def settings(self, **opts):
        return sbx.settings_from(self.config, opts)

    def runtime_with(self, **overrides):
        """A Runtime in the same world (state root, prefix, image copy) with some config keys
        changed, such as the lean-VMM levers turned off for a baseline."""
        values = self.config.as_dict()
        values.update(overrides)
        return Runtime(Config(values))

    def ours(self):
        """Names of the domains with our prefix that libvirt still knows."""
        return sorted(d.name() for d in self.rt.hv.conn().listAllDomains(0)
                      if d.name().startswith(self.prefix))

    def cleanup(self):
        """Force-delete every sandbox we recorded, then make sure nothing of ours is left.

        Returns a list of problems (empty when clean). Leftover domains (a crash between
        define and record) are destroyed and undefined through the hypervisor, which only
        touches domains that carry our metadata.
        """
        problems = []
        store = self.rt.store
        try:
            records, corrupt = store.list_sandboxes()
        except Exception as err:  # noqa: BLE001 - cleanup must go on
            records, corrupt = [], []
            problems.append('listing sandboxes: %s' % err)
        for sid in [r.id for r in records] + [c['id'] for c in corrupt]:
            try:
                sbx.delete(self.rt, sid, force=True)
            except Exception as err:  # noqa: BLE001
                problems.append('deleting sandbox %s: %s' % (sid, err))
        for name in self.ours():
            problems.append('domain %s was left behind; removing it' % name)
            try:
                self.rt.hv.destroy(name)
                self.rt.hv.undefine(name)
            except Exception as err:  # noqa: BLE001
                problems.append('removing domain %s: %s' % (name, err))
        left = self.ours()
        if left:
            problems.append('domains still present: %s' % ', '.join(left))
        try:
            for tpl in template.list_templates(template.templates_dir(self.state_root))[0]:
                template.remove_locked(self.state_root, tpl.key)
            template.release_if_empty(self.state_root)
        except Exception as err:  # noqa: BLE001
            problems.append('removing templates: %s' % err)
        for ctl in _cgroup_mounts(self.config.cgroup_root):
            path = os.path.join(ctl, self.cgroup_parent)
            if os.path.isdir(path):
                try:
                    os.rmdir(path)
                except OSError as err:
                    problems.append('cgroup %s left: %s' % (path, err))
        if os.path.isdir(self.state_root):
            leftovers = [os.path.join(dp, n) for dp, dns, fns in os.walk(self.state_root)
                         for n in fns if not n.endswith('.lock')]
            if leftovers:
                problems.append('state left under %s: %s' % (self.state_root, ', '.join(leftovers[:5])))
            else:
                shutil.rmtree(self.state_root, ignore_errors=True)
        shutil.rmtree(self.tmp, ignore_errors=True)
        self.rt.hv.close()
        return problems


def cleaned(bench, res):
    """Force-delete what the run made; True when nothing had to be removed by hand."""
    problems = bench.cleanup()
    res['cleanup_problems'] = problems
    if problems:
        log('cleanup problems: %s' % '; '.join(problems))
    return not problems


def report(res, args, print_report, rc):
    """Print the result as JSON or as the script's tables; return the exit status."""
    if args.json:
        json.dump(res, sys.stdout, indent=1, sort_keys=True)
        print()
    else:
        print_report(res)
    return rc


def _cgroup_mounts(root):
    """The directories a cgroup parent may have been created in (v1 controllers, v2, unified)."""
    out = [root]
    try:
        names = os.listdir(root)
    except OSError:
        return out
    for n in names:
        p = os.path.join(root, n)
        if os.path.isdir(p) and not os.path.islink(p) and (
                os.path.exists(os.path.join(p, 'cgroup.procs')) or n == 'unified'):
            out.append(p)
    return out


class TimedTrace(Trace):
    """A Trace that also records when each step was reported (perf_counter seconds)."""

    def __init__(self, progress=None):
        super().__init__(progress)
        self.t0 = time.perf_counter()
        self.times = []

    def step(self, msg):
        self.times.append((time.perf_counter(), msg))
        super().step(msg)

    def durations(self, end=None):
        """[(msg, seconds since the previous step or the start)]."""
        out, prev = [], self.t0
        for t, msg in self.times:
            out.append((msg, t - prev))
            prev = t
        if end is not None:
            out.append(('(after the last step)', end - prev))
        return out


class timed_method:
    """Wrap ``obj.name`` so each call's duration is appended to ``self.calls``; restores on exit."""

    def __init__(self, obj, name):
        self.obj, self.name, self.calls = obj, name, []

    def __enter__(self):
        self._own = self.name in vars(self.obj)
        orig = self._orig = getattr(self.obj, self.name)

        def wrapper(*a, **kw):
            t = time.perf_counter()
            try:
                return orig(*a, **kw)
            finally:
                self.calls.append((t, time.perf_counter()))
        setattr(self.obj, self.name, wrapper)
        return self

    def __exit__(self, *exc):
        if self._own:
            setattr(self.obj, self.name, self._orig)  # a module function, or an instance's own
        else:
            delattr(self.obj, self.name)  # back to the class attribute

    def total(self):
        return sum(b - a for a, b in self.calls)


class FileMarker:
    """Watch a file (a console log) from a thread; ``at`` is the perf_counter time the marker
    first appeared in it (checked every ``interval`` seconds, so late by at most that)."""

    def __init__(self, path, marker, interval=0.01):
        self.path, self.marker, self.interval = path, marker.encode('ascii'), interval
        self.at = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        pos, tail = 0, b''
        while not self._stop.is_set():
            try:
                with open(self.path, 'rb') as f:
                    f.seek(pos)
                    data = f.read()
            except OSError:
                data = b''
            if data:
                pos += len(data)
                if self.marker in tail + data:
                    self.at = time.perf_counter()
                    return
                tail = (tail + data)[-len(self.marker):]
            self._stop.wait(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


# ---------------------------------------------------------------------------------------------
# a container rootfs

def busybox_rootfs(parent):
    """A rootfs dir: bin/busybox (a copy of the host's static one) and every applet linked to it."""
    busybox = shutil.which('busybox') or '/bin/busybox'
    root = os.path.join(parent, 'rootfs')
    os.makedirs(os.path.join(root, 'bin'), exist_ok=True)
    shutil.copy2(busybox, os.path.join(root, 'bin', 'busybox'))
    applets = subprocess.run([busybox, '--list'], stdout=subprocess.PIPE, check=True).stdout.decode().split()
    for name in applets:
        if name != 'busybox':
            os.symlink('busybox', os.path.join(root, 'bin', name))
    for d in ('proc', 'sys', 'dev', 'tmp', 'etc'):
        os.makedirs(os.path.join(root, d), exist_ok=True)
    return root


# ---------------------------------------------------------------------------------------------
# bare QEMU: the floor our sandboxes are compared with

class BareVM:
    """``qemu-system-x86_64`` booting a kernel + initrd directly (_probe.qemu_argv: serial console,
    the agent's virtio-serial port, the 9p share) with timestamps of the init marker and of
    the agent's first ping reply, measured from just before the process is spawned."""

    def __init__(self, kernel, initrd, cmdline, accel, memory_mb, vcpus, workdir):
        self.work = tempfile.mkdtemp(prefix='bare-', dir=workdir)
        self.sock_path = os.path.join(self.work, 'agent.sock')
        self.shared = os.path.join(self.work, 'shared')
        os.mkdir(self.shared, 0o700)
        self.argv = qemu_argv(kernel, initrd, cmdline, accel=accel, memory_mb=memory_mb, vcpus=vcpus,
                              agent_socket=self.sock_path, shared_dir=self.shared)
        if accel == 'kvm':
            self.argv[1:1] = ['-cpu', 'host']  # what the libvirt domain uses under KVM
        self.proc = None
        self.console = bytearray()
        self.init_s = None
        self.agent_s = None
        self.agent_cpu_s = None

    def boot(self, timeout=120):
        """Start QEMU and return once the agent answered a ping (init_s, agent_s are set)."""
        marker = contract.INIT_MARKER.encode('ascii')
        t0 = time.perf_counter()
        self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT)
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ, 'console')
        conn, rbuf = None, b''
        deadline = t0 + timeout
        try:
            while self.agent_s is None or self.init_s is None:
                if time.perf_counter() > deadline:
                    raise RuntimeError('bare qemu: guest not ready within %ss (init %s)\n%s'
                                       % (timeout, self.init_s, self.console_tail()))
                if self.proc.poll() is not None:
                    raise RuntimeError('bare qemu exited (status %s) before the agent answered\n%s'
                                       % (self.proc.returncode, self.console_tail()))
                if conn is None and os.path.exists(self.sock_path):
                    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                    try:
                        conn.connect(self.sock_path)
                        conn.sendall(b'\n{"id": 1, "method": "ping", "params": {}}\n')
                    except OSError:
                        conn.close()
                        conn = None
                    else:
                        sel.register(conn, selectors.EVENT_READ, 'agent')
                for key, _dummy in sel.select(0.02):
                    if key.data == 'console':
                        chunk = os.read(self.proc.stdout.fileno(), 65536)
                        if not chunk:
                            sel.unregister(self.proc.stdout)
                            continue
                        self.console += chunk
                        if self.init_s is None and marker in self.console:
                            self.init_s = time.perf_counter() - t0
                        continue
                    try:
                        chunk = conn.recv(65536)
                    except OSError:
                        chunk = b''
                    if not chunk:
                        sel.unregister(conn)
                        conn.close()
                        conn, rbuf = None, b''
                        continue
                    rbuf += chunk
                    for line in rbuf.split(b'\n')[:-1]:
                        try:
                            msg = json.loads(line)
                        except ValueError:
                            continue
                        if isinstance(msg, dict) and msg.get('id') == 1 and 'result' in msg:
                            self.agent_s = time.perf_counter() - t0
                            self.agent_cpu_s = cpu_seconds(self.proc.pid)
                    rbuf = rbuf.rsplit(b'\n', 1)[-1]
        finally:
            if conn is not None:
                conn.close()
            sel.close()
        return self

    def console_tail(self):
        return self.console.decode('utf-8', 'replace')[-2000:]

    @property
    def pid(self):
        return self.proc.pid if self.proc else None

    def stop(self):
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait()
            self.proc.stdout.close()
        shutil.rmtree(self.work, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# CPU, memory and statistics

_TICK = os.sysconf('SC_CLK_TCK')


def cpu_seconds(pid):
    """User + system CPU seconds used so far by every thread of process ``pid``.

    Under TCG a boot is CPU-bound, so this is far less sensitive to other load on the machine
    than wall time: equal CPU with unequal wall time means waiting, not work."""
    try:
        with open('/proc/%d/stat' % pid) as f:
            fields = f.read().rsplit(')', 1)[1].split()
    except (OSError, TypeError):
        return None
    return (int(fields[11]) + int(fields[12])) / _TICK


def process_start(pid):
    """When process ``pid`` started, on the perf_counter clock (10 ms resolution)."""
    try:
        with open('/proc/%d/stat' % pid) as f:
            ticks = int(f.read().rsplit(')', 1)[1].split()[19])
    except (OSError, TypeError, IndexError, ValueError):
        return None
    offset = time.clock_gettime(time.CLOCK_BOOTTIME) - time.perf_counter()
    return ticks / _TICK - offset


def idle_cpu(pid, seconds):
    """Percent of one core process ``pid`` used over the next ``seconds``."""
    c0, t0 = cpu_seconds(pid), time.perf_counter()
    time.sleep(seconds)
    c1, t1 = cpu_seconds(pid), time.perf_counter()
    if c0 is None or c1 is None:
        return None
    return 100.0 * (c1 - c0) / (t1 - t0)


def smaps_rollup(pid):
    """{field: KiB} from /proc/<pid>/smaps_rollup (Rss, Pss, Pss_Anon, Pss_File, ...)."""
    out = {}
    with open('/proc/%d/smaps_rollup' % pid) as f:
        for line in f:
            parts = line.split()
            if len(parts) == 3 and parts[2] == 'kB':
                out[parts[0].rstrip(':')] = int(parts[1])
    return out


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def summary(values):
    values = [v for v in values if v is not None]
    if not values:
        return {'median': None, 'min': None, 'max': None, 'n': 0}
    return {'median': statistics.median(values), 'min': min(values), 'max': max(values), 'n': len(values)}


def ratio(a, b):
    return a / b if a is not None and b else None


def fmt_s(v):
    return '-' if v is None else '%.3f' % v


def fmt_x(v):
    return '-' if v is None else '%.2fx' % v


def table(headers, rows):
    """Plain text table: every column as wide as its widest cell."""
    cells = [[str(c) for c in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = []
    for n, r in enumerate(cells):
        lines.append('  '.join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))
        if n == 0:
            lines.append('  '.join('-' * w for w in widths))
    return '\n'.join(lines)


def machine():
    """The machine shape the figures belong to."""
    info = {'cpus': os.cpu_count(), 'kernel': os.uname().release}
    try:
        with open('/proc/meminfo') as f:
            info['mem_mib'] = int(f.readline().split()[1]) // 1024
        with open('/proc/loadavg') as f:
            info['loadavg_at_start'] = [float(x) for x in f.read().split()[:3]]
    except OSError:
        pass
    try:
        out = subprocess.run(['qemu-system-x86_64', '--version'], stdout=subprocess.PIPE, check=False)
        info['qemu'] = out.stdout.decode().splitlines()[0]
    except (OSError, IndexError):
        pass
    info['date'] = time.strftime('%Y-%m-%d', time.gmtime())
    return info
