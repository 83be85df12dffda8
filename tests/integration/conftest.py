# Copyright: kata.runtime contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Shared fixtures for the integration tests: real libvirtd, real guests, real ansible runs.

- ``guest_image`` (session): the guest kernel and initrd, built once into
  ``$KATA_TEST_IMAGE_DIR`` (default ``/var/lib/kata-runtime/image-test``); a rebuild is a no-op.
- ``busybox_rootfs`` (session): a container rootfs holding a static busybox and its applets.
- ``kata_envs`` (session): makes ``KataEnv`` objects; each is its own world: a host config file
  with a unique state root under /run (short: agent sockets must fit in sun_path), a unique
  libvirt domain prefix and a unique cgroup parent. ``KataEnv.playbook()`` runs tasks with
  ansible-playbook against localhost and returns every task's registered result.
- ``kata`` (function): a fresh ``KataEnv`` for one test. Its finalizer (run even when the test
  failed) deletes everything with ``kata_prune all=true force=true`` and asserts that nothing
  is left: no domain with the prefix, no cgroup directory under the parent, no file in the
  state root. Whatever the prune missed is then removed by hand, so a failing run does not
  pollute the host, and the test errors with the list.
- ``kata_session`` (session): the same for things several tests share.

Set ``KATA_TEST_KEEP=1`` to keep each run's playbook, results and output (under /tmp).
"""

from __future__ import annotations

import copy
import glob
import json
import os
import secrets
import shutil
import stat
import subprocess
import sys
import tempfile
import textwrap
import threading
import time

import pytest
import yaml

IMAGE_DIR = os.environ.get('KATA_TEST_IMAGE_DIR', '/var/lib/kata-runtime/image-test')
LIBVIRT_URI = 'qemu:///system'
CGROUP_ROOT = '/sys/fs/cgroup'
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN_DIR = os.path.dirname(sys.executable)
PLAYBOOK_TIMEOUT = 600


def _tool(name):
    local = os.path.join(BIN_DIR, name)
    return local if os.access(local, os.X_OK) else shutil.which(name)


def ansible_env(extra=None):
    """The environment ansible runs with: this checkout's collection, plain output."""
    env = dict(os.environ)
    collections = os.path.join(REPO, '.collections')
    # ansible runs in a scratch directory: relative entries would resolve against it
    for key in ('ANSIBLE_COLLECTIONS_PATH', 'PYTHONPATH'):
        paths = [os.path.abspath(p) for p in env.get(key, '').split(os.pathsep) if p]
        env[key] = os.pathsep.join(paths or [collections])
    env.update({
        'ANSIBLE_NOCOLOR': '1',
        'ANSIBLE_FORCE_COLOR': '0',
        'ANSIBLE_RETRY_FILES_ENABLED': '0',
        'ANSIBLE_LOCALHOST_WARNING': '0',
        'ANSIBLE_INVENTORY_UNPARSED_WARNING': '0',
        'ANSIBLE_DEPRECATION_WARNINGS': '0',
        'ANSIBLE_STDOUT_CALLBACK': 'default',
        'ANSIBLE_GATHERING': 'explicit',
        'PATH': BIN_DIR + os.pathsep + env.get('PATH', ''),
    })
    env.update(extra or {})
    return env


def virsh(*args, check=True):
    proc = subprocess.run(['virsh', '-c', LIBVIRT_URI] + list(args), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, check=False, timeout=120)
    if check and proc.returncode != 0:
        raise AssertionError('virsh %s failed: %s' % (' '.join(args), proc.stderr.strip()))
    return proc


def libvirt_problem():
    """None when libvirtd answers, else why it does not."""
    if not shutil.which('virsh'):
        return 'virsh is not installed'
    try:
        proc = virsh('version', check=False)
    except (OSError, subprocess.TimeoutExpired) as err:
        return str(err)
    return None if proc.returncode == 0 else proc.stderr.strip()


class PlaybookRun:
    """The outcome of one ansible-playbook run: each task's registered result, in order."""

    def __init__(self, names, results, proc):
        self.names = names
        self.results = results
        self.by_name = dict(zip(names, results))
        self.rc = proc.returncode
        self.stdout = proc.stdout
        self.stderr = proc.stderr

    def __getitem__(self, name):
        return self.by_name[name]

    def ok(self, name):
        """The result of task ``name``, which must not have failed."""
        r = self.by_name[name]
        assert not r.get('failed'), 'task %r failed: %s\n%s' % (name, r.get('msg'), json.dumps(r, indent=1)[:4000])
        return r

    def failed(self, name):
        """The result of task ``name``, which must have failed."""
        r = self.by_name[name]
        assert r.get('failed'), 'task %r should have failed: %s' % (name, json.dumps(r, indent=1)[:4000])
        return r


class KataEnv:
    """One isolated runtime world: its config file, state root, domain prefix, cgroup parent."""

    def __init__(self, workdir, image_dir, tag='it'):
        hexid = secrets.token_hex(4)
        self.hexid = hexid
        self.workdir = workdir
        self.state_root = '/run/kata-%s-%s' % (tag, hexid)
        self.domain_prefix = 'kata-%s-%s-' % (tag, hexid)
        self.cgroup_parent = 'kata-%s-%s' % (tag, hexid)
        self.config_path = os.path.join(workdir, 'config.yaml')
        self.config = {
            'image_dir': image_dir,
            'state_root': self.state_root,
            'domain_prefix': self.domain_prefix,
            'cgroup_parent': self.cgroup_parent,
            'accel': 'auto',
            'agent_timeout': 120,
            'hook_timeout': 20,
        }
        with open(self.config_path, 'w') as f:
            yaml.safe_dump(self.config, f, default_flow_style=False)
        self._runs = 0
        self.torn_down = False

    # -- ansible --------------------------------------------------------------------------

    def playbook(self, tasks, check=False, diff=False, extra_args=(), timeout=PLAYBOOK_TIMEOUT):
        """Run ``tasks`` (a list of task dicts, or YAML text of one) on localhost.

        Every task needs a unique ``name``; each gets ``register`` (unless it names its own, for
        ``until``) and ``ignore_errors: true`` (unless it says otherwise), so a failing task is reported like any other and the next
        ones still run. A last task writes every registered result to a file (also under
        --check), which becomes ``PlaybookRun.results``. The kata modules get this env's config
        through ``module_defaults`` of the action group.
        """
        if isinstance(tasks, str):
            tasks = yaml.safe_load(textwrap.dedent(tasks))
        self._runs += 1
        run_dir = os.path.join(self.workdir, 'run%03d' % self._runs)
        os.makedirs(run_dir)
        out_file = os.path.join(run_dir, 'results.json')
        names, body = [], []
        for i, task in enumerate(tasks):
            task = dict(task)
            name = task.get('name')
            assert name and name not in names, 'every task needs a unique name: %r' % (name,)
            names.append(name)
            task.setdefault('register', '_kata_r%d' % i)  # keep a name the task uses in `until`
            task.setdefault('ignore_errors', True)
            body.append(task)
        collect = '[%s]' % ', '.join('%s | default({"skipped_by_playbook": true})' % t['register'] for t in body)
        body.append({
            'name': 'collect the registered results',
            'ansible.builtin.copy': {'content': '{{ %s | to_json }}' % collect, 'dest': out_file, 'mode': '0600'},
            'check_mode': False,
            'diff': False,
        })
        play = [{
            'name': 'kata integration',
            'hosts': 'localhost',
            'gather_facts': False,
            'module_defaults': {'group/kata.runtime.kata': {'config': self.config_path}},
            'tasks': body,
        }]
        path = os.path.join(run_dir, 'playbook.yml')
        with open(path, 'w') as f:
            yaml.safe_dump(play, f, default_flow_style=False, sort_keys=False)
        cmd = [_tool('ansible-playbook'), '-i', 'localhost,', '-c', 'local',
               '-e', 'ansible_python_interpreter=%s' % sys.executable, path]
        if check:
            cmd.append('--check')
        if diff:
            cmd.append('--diff')
        cmd.extend(extra_args)
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=ansible_env(), cwd=run_dir, timeout=timeout, check=False)
        with open(os.path.join(run_dir, 'output.txt'), 'w') as f:
            f.write(proc.stdout + '\n--- stderr ---\n' + proc.stderr)
        if not os.path.exists(out_file):
            raise AssertionError('ansible-playbook (rc %d) wrote no results:\n%s\n%s'
                                 % (proc.returncode, proc.stdout[-6000:], proc.stderr[-3000:]))
        with open(out_file) as f:
            results = json.load(f)
        return PlaybookRun(names, results, proc)

    def adhoc(self, module, args, check=False, timeout=PLAYBOOK_TIMEOUT):
        """``ansible localhost -m <module> -a <args>``: (returncode, parsed result, stdout, stderr)."""
        cmd = [_tool('ansible'), 'localhost', '-i', 'localhost,', '-c', 'local',
               '-e', 'ansible_python_interpreter=%s' % sys.executable, '-m', module, '-a', args]
        if check:
            cmd.append('--check')
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=ansible_env(), cwd=self.workdir, timeout=timeout, check=False)
        start = proc.stdout.find('{')
        try:
            result = json.loads(proc.stdout[start:]) if start >= 0 else None
        except ValueError:
            result = None
        return proc.returncode, result, proc.stdout, proc.stderr

    # -- what exists on the host ------------------------------------------------------------

    def domains(self):
        """Names of every libvirt domain (any state) carrying this env's prefix."""
        out = virsh('list', '--all', '--name').stdout.split()
        return sorted(d for d in out if d.startswith(self.domain_prefix))

    def domain_state(self, name):
        proc = virsh('domstate', name, check=False)
        return proc.stdout.strip() if proc.returncode == 0 else 'missing'

    def cgroup_dirs(self):
        """Our cgroup parent (and everything below it) in every hierarchy."""
        found = []
        for top in glob.glob(os.path.join(CGROUP_ROOT, self.cgroup_parent)) + \
                glob.glob(os.path.join(CGROUP_ROOT, '*', self.cgroup_parent)):
            for dirpath, _dirs, _files in os.walk(top):
                found.append(dirpath)
        return sorted(found)

    def state_files(self):
        """Every non-directory entry under the state root (files, sockets, symlinks)."""
        out = []
        for dirpath, dirs, files in os.walk(self.state_root):
            out.extend(os.path.join(dirpath, n) for n in files)
            out.extend(os.path.join(dirpath, d) for d in dirs if os.path.islink(os.path.join(dirpath, d)))
        return sorted(out)

    def state_dirs(self):
        return sorted(dirpath for dirpath, _d, _f in os.walk(self.state_root))

    def sandbox_dir(self, sid):
        return os.path.join(self.state_root, 'sandboxes', sid)

    def mapping(self, cid):
        path = os.path.join(self.state_root, 'mappings', cid)
        try:
            with open(path) as f:
                return f.read().strip()
        except FileNotFoundError:
            return None

    def mounts(self):
        """Mount points (in our namespace) under the state root."""
        with open('/proc/self/mounts') as f:
            points = [line.split()[1] for line in f]
        return [p for p in points if p == self.state_root or p.startswith(self.state_root + '/')]

    def leftovers(self):
        return {
            'domains': self.domains(),
            'cgroups': self.cgroup_dirs(),
            'state_files': self.state_files(),
            'mounts': self.mounts(),
        }

    # -- cleanup ----------------------------------------------------------------------------

    def prune_all(self):
        """kata_prune all=true force=true, the ad hoc way an operator runs it."""
        return self.adhoc('kata.runtime.kata_prune', 'all=true force=true config=%s' % self.config_path)

    def teardown(self):
        """Prune everything; return (what the prune left, skeleton dirs, prune output).

        Whatever is left is then removed by hand (only things carrying this env's names),
        so the host stays clean even when the runtime misbehaves.
        """
        self.torn_down = True
        rc, result, stdout, stderr = self.prune_all()
        left = {k: v for k, v in self.leftovers().items() if v}
        skeleton = self.state_dirs()
        self._force_clean()
        return left, skeleton, (rc, result, stdout, stderr)

    def _force_clean(self):
        for name in self.domains():
            virsh('destroy', name, check=False)
            virsh('undefine', name, '--nvram', check=False)
            virsh('undefine', name, check=False)
        for point in sorted(self.mounts(), reverse=True):
            subprocess.run(['umount', '-l', point], check=False)
        for d in sorted(self.cgroup_dirs(), key=len, reverse=True):
            for _attempt in range(20):
                try:
                    os.rmdir(d)
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.1)
        if os.path.isdir(self.state_root) and not self.mounts():
            shutil.rmtree(self.state_root, ignore_errors=True)


def assert_clean_teardown(env):
    left, skeleton, (rc, result, stdout, stderr) = env.teardown()
    assert rc == 0, 'kata_prune all=true force=true failed (rc %d):\n%s\n%s' % (rc, stdout[-4000:], stderr[-2000:])
    assert not left, 'kata_prune all=true force=true left behind: %s\n%s' % (json.dumps(left, indent=1), stdout[-3000:])
    return skeleton


# ---------------------------------------------------------------------------------------------
# fixtures

@pytest.fixture(scope='session')
def guest_image():
    """The guest kernel and initrd (built once, reused across runs)."""
    why = libvirt_problem()
    if why:
        pytest.skip('libvirtd is not reachable: %s' % why)
    if not shutil.which('qemu-system-x86_64'):
        pytest.skip('qemu-system-x86_64 is not installed')
    from ansible_collections.kata.runtime.plugins.module_utils.kata.errors import ImageError
    from ansible_collections.kata.runtime.plugins.module_utils.kata.guest import image
    try:
        return image.build_image(IMAGE_DIR)
    except ImageError as err:
        if 'no apt-get/dpkg-deb' in str(err):
            pytest.skip(str(err))
        raise


@pytest.fixture(scope='session')
def busybox_rootfs(tmp_path_factory):
    """A container rootfs: bin/busybox (static) and a symlink per applet, proc/ and tmp/."""
    busybox = shutil.which('busybox')
    if busybox is None:
        pytest.skip('busybox (busybox-static) is not installed')
    root = tmp_path_factory.mktemp('rootfs')
    for d in ('bin', 'proc', 'tmp'):
        (root / d).mkdir()
    shutil.copy2(busybox, str(root / 'bin' / 'busybox'))
    applets = subprocess.run([busybox, '--list'], stdout=subprocess.PIPE, text=True, check=True).stdout.split()
    for applet in applets:
        if applet != 'busybox' and '/' not in applet:
            os.symlink('busybox', str(root / 'bin' / applet))
    return str(root)


@pytest.fixture(scope='session')
def kata_envs(guest_image):
    """A factory of KataEnv objects; every env it made is torn down at the end of the session."""
    made = []
    base = tempfile.mkdtemp(prefix='kata-it-')

    def make(tag='it'):
        workdir = tempfile.mkdtemp(dir=base)
        env = KataEnv(workdir, IMAGE_DIR, tag=tag)
        made.append(env)
        return env

    yield make
    for env in made:
        if not env.torn_down:
            env.teardown()
    if os.environ.get('KATA_TEST_KEEP'):
        print('\nplaybooks, results and outputs kept in %s' % base)
    else:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope='session')
def kata_session(kata_envs):
    """One env shared by the tests that can share a sandbox; checked clean at the end."""
    env = kata_envs('is')
    yield env
    assert_clean_teardown(env)


@pytest.fixture
def kata(kata_envs):
    """A fresh env for one test, checked clean afterwards (even when the test failed)."""
    env = kata_envs()
    yield env
    assert_clean_teardown(env)


# ---------------------------------------------------------------------------------------------
# helpers of the fault and race tests (test_faults.py, test_races.py)

class Background(threading.Thread):
    """``func(*args, **kwargs)`` in a thread; ``get()`` joins it and returns or raises its result."""

    def __init__(self, func, *args, **kwargs):
        super().__init__(daemon=True)
        self._call = (func, args, kwargs)
        self._result = None
        self._error = None
        self.start()

    def run(self):
        func, args, kwargs = self._call
        try:
            self._result = func(*args, **kwargs)
        except BaseException as err:  # noqa: BLE001 - handed to get()
            self._error = err

    def get(self, timeout=PLAYBOOK_TIMEOUT):
        self.join(timeout)
        assert not self.is_alive(), 'background call still running after %ss' % timeout
        if self._error is not None:
            raise self._error
        return self._result


def side(env):
    """The same world as ``env`` with a run directory of its own: for playbooks run at the same
    time as others of that env (KataEnv numbers its runs, so two threads could pick one dir)."""
    clone = copy.copy(env)
    clone.workdir = tempfile.mkdtemp(dir=env.workdir)
    clone._runs = 0
    return clone


# What a module crash looks like in a task result, as opposed to an error the module reported.
CRASH_MARKERS = ('Traceback (most recent call last)', 'Module failed', 'MODULE FAILURE',
                 'Unexpected failure during module execution')


def crash_of(result):
    """The text showing that a task result is a crash (unhandled exception, traceback, killed
    module), or None for a success or a failure the module reported itself."""
    texts = [str(result.get(k) or '') for k in ('msg', 'module_stderr', 'module_stdout', 'stderr')]
    for text in texts:
        for marker in CRASH_MARKERS:
            if marker in text:
                return text[-3000:]
    return None


def assert_clear_error(result, *words):
    """``result`` failed with a message of its own (no crash) that names every one of ``words``."""
    assert result.get('failed'), 'should have failed: %s' % json.dumps(result, indent=1)[:3000]
    crash = crash_of(result)
    assert crash is None, 'a crash, not a clear error: %s' % crash
    msg = str(result.get('msg') or '')
    assert msg.strip(), 'failed without a message: %s' % json.dumps(result, indent=1)[:3000]
    missing = [w for w in words if w not in msg]
    assert not missing, 'the error does not name %s: %s' % (missing, msg)
    return msg


def vmm_processes(prefix):
    """Pids of live qemu processes whose guest name starts with ``prefix``."""
    out = []
    for entry in os.listdir('/proc'):
        if not entry.isdigit():
            continue
        try:
            with open('/proc/%s/cmdline' % entry, 'rb') as f:
                args = f.read().decode('utf-8', 'replace').split('\0')
        except OSError:
            continue
        if any(a.startswith('guest=' + prefix) for a in args):
            out.append(int(entry))
    return sorted(out)


def residue(env):
    """Everything of ``env`` still on the host: ``leftovers()`` (domains, cgroup dirs, files,
    sockets and links under the state root, mounts) plus sandbox directories (an empty share
    is a directory, not a file) and VMM processes. {} when nothing is left."""
    left = {k: v for k, v in env.leftovers().items() if v}
    sandboxes = os.path.join(env.state_root, 'sandboxes')
    if os.path.isdir(sandboxes) and os.listdir(sandboxes):
        left['sandbox_dirs'] = sorted(os.listdir(sandboxes))
    vmms = vmm_processes(env.domain_prefix)
    if vmms:
        left['vmm_processes'] = vmms
    return left


def wait_until(predicate, timeout, what, interval=0.1):
    """Poll ``predicate`` until it returns something true; that value, or AssertionError."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError('timed out after %ss waiting for %s' % (timeout, what))
        time.sleep(interval)


def privileged_bundle(rootfs, command):
    """A bundle (in a new temp directory) running ``command`` in ``rootfs`` with every
    capability: for tests whose container must do what only a privileged one can (mount,
    sysrq). The inline form gets the default capability set, without CAP_SYS_ADMIN."""
    from ansible_collections.kata.runtime.plugins.module_utils.kata import oci_support
    bundle = tempfile.mkdtemp(prefix='bundle-', dir=os.path.dirname(rootfs))  # pytest's own temp tree
    caps = list(oci_support.CAPABILITIES)
    with open(os.path.join(bundle, 'config.json'), 'w') as f:
        json.dump({'ociVersion': '1.0.2', 'root': {'path': rootfs},
                   'process': {'args': list(command), 'cwd': '/', 'env': ['PATH=/usr/sbin:/usr/bin:/sbin:/bin'],
                               'capabilities': {k: caps for k in ('bounding', 'effective', 'permitted')}}}, f)
    return bundle


def snapshot(top):
    """{relative path: (type and mode bits, uid, gid, size, content or link target)}."""
    out = {}
    for dirpath, dirs, files in os.walk(top):
        for name in dirs + files:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode):
                body = os.readlink(path)
            elif stat.S_ISREG(st.st_mode):
                with open(path, 'rb') as f:
                    body = f.read()
            else:
                body = None
            out[os.path.relpath(path, top)] = (st.st_mode, st.st_uid, st.st_gid, st.st_size, body)
    return out
