# Copyright: kata.runtime contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""VM templates: Kata's VM factory, done through libvirt.

A template is a guest booted once to an answering agent, paused, and saved: its RAM stays in a
file on a tmpfs (mapped shared while it ran), its device state goes to a file through QEMU's
``x-ignore-shared`` migration. A clone is a new VMM mapping that RAM file private
(copy-on-write) that loads the device state and resumes: a sandbox in well under a second
instead of a cold boot, sharing the template's pages until it writes them.

Layout (``templates_dir`` is ``<state_root>/templates`` in production, a tmpfs of its own,
see ``ensure_tmpfs``)::

    <templates_dir>/<key>/ram            the guest RAM (memory_mb MiB)
    <templates_dir>/<key>/state          the device state (a few hundred KB)
    <templates_dir>/<key>/template.json  shape, created_at, sizes, image digest
    <templates_dir>/.build-<key>-<rand>/ a build in progress (renamed to <key> when complete)

The key is a digest of the template's *shape*: everything a clone must share with it (image
digest, vCPUs, memory, accel, machine, QEMU version, kernel command line, device set). A
changed image or setting gives another key, so a stale template is never used; a sandbox
whose shape has no template boots cold.

Every clone differs from its template and from the other clones where it matters: before it
is ready, the agent reseeds the guest RNG from host random bytes, sets the clock from the
host's and mounts the 9p shares (the template guest booted with ``contract.TEMPLATE_FLAG`` and
mounted none: QEMU cannot migrate a mounted 9p share).

The template directory is the host's, but template.json is parsed strictly all the same (a
size cap, exact keys and types, the key recomputed from the shape), as is anything the
guest's agent answers (through AgentClient).

Domains are the backend's usual ones: a clone is named and marked like a cold-booted sandbox
(destroy, undefine, list_ours, prune all work); a template being built is a domain of its own
(sandbox ID ``template-<key>-<rand>``), destroyed and undefined once saved. libvirt marks
these domains tainted (custom-argv, custom-monitor).
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import errno
import fcntl
import hashlib
import json
import os
import re
import secrets
import shutil
import stat
import subprocess
import time

from ansible_collections.kata.runtime.plugins.module_utils.kata import agent as agent_mod
from ansible_collections.kata.runtime.plugins.module_utils.kata import mountinfo, share
from ansible_collections.kata.runtime.plugins.module_utils.kata.errors import (
    AgentError,
    CorruptRecord,
    InvalidArgument,
    KataError,
    LockTimeout,
    StateWriteError,
)
from ansible_collections.kata.runtime.plugins.module_utils.kata.guest import contract
from ansible_collections.kata.runtime.plugins.module_utils.kata.hypervisor import libvirt as lv
from ansible_collections.kata.runtime.plugins.module_utils.kata.store import Store, hold_if_current

# 2: the shape holds the NIC's network mode
TEMPLATE_VERSION = 2
TEMPLATE_FILE = 'template.json'
RAM_FILE = 'ram'
STATE_FILE = 'state'
BUILD_PREFIX = '.build-'
KEY_LENGTH = 16
KEY_RE = re.compile(r'^[0-9a-f]{%d}$' % KEY_LENGTH)
DIGEST_RE = re.compile(r'^[0-9a-f]{64}$')
CREATED_RE = re.compile(r'^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,6})?Z$')
VERSION_RE = re.compile(r'^\d{1,4}\.\d{1,4}\.\d{1,4}$')
# template.json is a few hundred bytes; anything larger is not one of ours.
MAX_RECORD_BYTES = 64 * 1024
# Saved device state measured ~360 KB; a file far beyond that is not a state we wrote.
MAX_STATE_BYTES = 256 * 1024 * 1024
MAX_CMDLINE = 4096
DEVICES = ('console', 'agent', 'shared', 'output', 'volumes')
SHARE_TAGS = {'shared': contract.SHARED_TAG, 'output': contract.OUTPUT_TAG, 'volumes': contract.VOLUMES_TAG}
# The tmpfs source name: labels the mount in /proc/self/mountinfo and findmnt.
TMPFS_SOURCE = 'kata-templates'
TMPFS_FLAGS = 'nosuid,nodev,noexec,mode=0700,uid=0,gid=0'
# Seconds the template guest runs on after the host's last agent connection closed, before it
# is paused and saved.
SAVE_SETTLE = 0.5
# Host random bytes each clone's RNG is reseeded with (the agent takes 32 to 512).
SEED_BYTES = 64
_SHAPE_KEYS = ('version', 'image_digest', 'vcpus', 'memory_mb', 'accel', 'machine', 'arch', 'qemu',
               'cmdline', 'devices', 'network')
# The network modes a template can have: a clone of a guest that took a DHCP lease (bridge or
# libvirt network) would come up with the template's address, so those sandboxes boot cold.
NETWORK_MODES = ('user', 'none')
_RECORD_KEYS = ('version', 'key', 'shape', 'created_at', 'sizes', 'image_digest', 'kernel', 'initrd')
_MIB = 1024 * 1024
TEMPLATES_DIR = 'templates'
# <state_root>/locks/<LOCKS_DIR>/: the sandbox locks' directory holds only <id>.lock files
# (store.list_lock_ids), so a sub-directory is never taken for a sandbox's lock.
LOCKS_DIR = 'templates'
# How long a build waits for another build of the same template (a cold boot under TCG on a
# busy host, plus the save).
LOCK_TIMEOUT = 600
# Room the device state and template.json take next to the RAM file (~0.4 MiB measured).
STATE_ROOM = 4 * _MIB


# ---------------------------------------------------------------------------------------------
# the shape and its key

def image_digest(kernel, initrd):
    """sha256 over the kernel and the initrd (each length-prefixed): the image a template holds."""
    h = hashlib.sha256()
    for path in (kernel, initrd):
        if not isinstance(path, str) or not os.path.isabs(path):
            raise InvalidArgument('template kernel and initrd must be absolute paths, got %r' % (path,))
        try:
            with open(path, 'rb') as f:
                size = os.fstat(f.fileno()).st_size
                h.update(b'%d\0' % size)
                for chunk in iter(lambda: f.read(1 << 20), b''):
                    h.update(chunk)
        except OSError as err:
            raise InvalidArgument('cannot read %s for the template image digest: %s' % (path, err.strerror)) from None
    return h.hexdigest()


def devices_of(vm):
    """The device set of a VM spec (which of DEVICES it has), in DEVICES order."""
    keys = {'console': 'console_log', 'agent': 'agent_socket', 'shared': 'shared_dir', 'output': 'output_dir',
            'volumes': 'volumes_dir'}
    return [d for d in DEVICES if vm.get(keys[d]) is not None]


def shape_of(hv, vm, qemu=None, digest=None):
    """The shape of a VM spec (as LibvirtHypervisor.create takes it): what a template and its
    clones must share. ``qemu`` (version) and ``digest`` (of the image) are looked up when not
    given."""
    if not isinstance(vm, dict):
        raise InvalidArgument('vm must be a dict, got %r' % (vm,))
    cmdline = vm.get('cmdline') or ''
    if not isinstance(cmdline, str) or len(cmdline) > MAX_CMDLINE:
        raise InvalidArgument('vm cmdline must be a string of at most %d characters' % MAX_CMDLINE)
    if contract.TEMPLATE_FLAG in cmdline.split():
        raise InvalidArgument('vm cmdline must not hold %s: templates add it themselves' % contract.TEMPLATE_FLAG)
    for key in ('vcpus', 'memory_mb'):
        value = vm.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InvalidArgument('vm %s must be a positive integer, got %r' % (key, value))
    if vm.get('accel') not in ('kvm', 'tcg'):
        raise InvalidArgument("vm accel must be 'kvm' or 'tcg', got %r" % (vm.get('accel'),))
    if vm.get('initrd') is None:
        raise InvalidArgument('a template needs an initrd (the agent lives there)')
    return {
        'version': TEMPLATE_VERSION,
        'image_digest': digest or image_digest(vm.get('kernel'), vm.get('initrd')),
        'vcpus': vm['vcpus'],
        'memory_mb': vm['memory_mb'],
        'accel': vm['accel'],
        'machine': hv.machine,
        'arch': hv.arch,
        'qemu': qemu or hv.vmm_version(),
        'cmdline': cmdline,
        'devices': devices_of(vm),
        'network': network_of(vm),
    }


def network_of(vm):
    """The network mode of a VM spec's NIC (``none`` without one): part of the shape; a clone
    gets the same NIC model on the same mode, with its own MAC."""
    net = vm.get('network')
    if net is None:
        return 'none'
    if not isinstance(net, dict) or net.get('mode') not in NETWORK_MODES:
        raise InvalidArgument('VM templates support network user or none, got %r' % (net,))
    return net['mode']


def key_of(shape):
    """The template key of a shape: the first KEY_LENGTH hex digits of its canonical digest."""
    text = json.dumps(shape, sort_keys=True, separators=(',', ':'), ensure_ascii=True)
    return hashlib.sha256(text.encode('ascii')).hexdigest()[:KEY_LENGTH]


def _template_cmdline(cmdline):
    return ' '.join(p for p in (cmdline, contract.TEMPLATE_FLAG) if p)


# ---------------------------------------------------------------------------------------------
# template.json

def _utc_now():
    return datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%dT%H:%M:%S.%fZ')


def _is_int(value, low, high):
    return not isinstance(value, bool) and isinstance(value, int) and low <= value <= high


def check_shape(shape):
    """``shape`` when it is exactly a shape this version writes, else CorruptRecord."""
    if not isinstance(shape, dict) or sorted(shape) != sorted(_SHAPE_KEYS):
        raise CorruptRecord('template shape must have exactly the keys %s' % ', '.join(_SHAPE_KEYS))
    checks = (
        ('version', lambda v: v == TEMPLATE_VERSION),
        ('image_digest', lambda v: isinstance(v, str) and DIGEST_RE.match(v)),
        ('vcpus', lambda v: _is_int(v, 1, 255)),
        ('memory_mb', lambda v: _is_int(v, 16, 4 * 1024 * 1024)),
        ('accel', lambda v: v in ('kvm', 'tcg')),
        ('machine', lambda v: isinstance(v, str) and re.match(r'^[A-Za-z0-9_.-]{1,64}$', v)),
        ('arch', lambda v: isinstance(v, str) and re.match(r'^[A-Za-z0-9_]{1,32}$', v)),
        ('qemu', lambda v: isinstance(v, str) and VERSION_RE.match(v)),
        ('cmdline', lambda v: isinstance(v, str) and len(v) <= MAX_CMDLINE and not lv._BAD_XML_CHARS.search(v)),
        ('devices', lambda v: isinstance(v, list) and len(set(v)) == len(v)
         and all(isinstance(d, str) and d in DEVICES for d in v)),
        ('network', lambda v: v in NETWORK_MODES),
    )
    for key, ok in checks:
        if not ok(shape[key]):
            raise CorruptRecord('template shape: invalid %s %s' % (key, _short(shape[key])))
    return shape


def _short(value):
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + '...'


def record_for(shape, ram_size, state_size, kernel, initrd, created_at=None):
    return {
        'version': TEMPLATE_VERSION,
        'key': key_of(shape),
        'shape': shape,
        'created_at': created_at or _utc_now(),
        'sizes': {'ram': ram_size, 'state': state_size},
        'image_digest': shape['image_digest'],
        'kernel': kernel,
        'initrd': initrd,
    }


def parse_record(data, key=None):
    """A template.json (bytes) as a checked dict, or CorruptRecord naming what is wrong.

    Exact keys and types; the key is recomputed from the shape and must be the one given
    (the directory's name); the RAM size must be the shape's memory."""
    if not isinstance(data, bytes) or len(data) > MAX_RECORD_BYTES:
        raise CorruptRecord('template.json is larger than %d bytes' % MAX_RECORD_BYTES)
    try:
        rec = json.loads(data.decode('utf-8'))
    except (ValueError, RecursionError) as err:
        raise CorruptRecord('template.json is not JSON: %s' % _short(str(err))) from None
    if not isinstance(rec, dict) or sorted(rec) != sorted(_RECORD_KEYS):
        raise CorruptRecord('template.json must be an object with exactly the keys %s' % ', '.join(_RECORD_KEYS))
    if rec['version'] != TEMPLATE_VERSION:
        raise CorruptRecord('template.json version %s is not %d' % (_short(rec['version']), TEMPLATE_VERSION))
    shape = check_shape(rec['shape'])
    want = key_of(shape)
    if rec['key'] != want or (key is not None and key != want):
        raise CorruptRecord('template.json key %s does not match its shape (%s)' % (_short(rec['key']), want))
    if rec['image_digest'] != shape['image_digest']:
        raise CorruptRecord('template.json image digest differs from its shape')
    if not isinstance(rec['created_at'], str) or not CREATED_RE.match(rec['created_at']):
        raise CorruptRecord('template.json created_at %s is not a UTC time' % _short(rec['created_at']))
    sizes = rec['sizes']
    if not isinstance(sizes, dict) or sorted(sizes) != ['ram', 'state'] \
            or sizes['ram'] != shape['memory_mb'] * _MIB or not _is_int(sizes['state'], 1, MAX_STATE_BYTES):
        raise CorruptRecord('template.json sizes %s are not {ram: memory_mb MiB, state: 1..%d}'
                            % (_short(sizes), MAX_STATE_BYTES))
    for name in ('kernel', 'initrd'):
        path = rec[name]
        if not isinstance(path, str) or not os.path.isabs(path) or len(path) > 4096 or '\0' in path:
            raise CorruptRecord('template.json %s %s is not an absolute path' % (name, _short(path)))
    return rec


def _write_atomic(path, data):
    tmp = '%s.tmp-%s' % (path, secrets.token_hex(4))
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as err:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise StateWriteError('cannot write %s: %s' % (path, err.strerror)) from None
    _fsync_dir(os.path.dirname(path))


def _fsync_dir(path):
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------------------------
# templates on disk

class Template:
    """One complete template directory: ``key``, ``path``, ``record`` (checked template.json)."""

    def __init__(self, path, record):
        self.path = path
        self.record = record
        self.key = record['key']
        self.shape = record['shape']

    @property
    def ram(self):
        return os.path.join(self.path, RAM_FILE)

    @property
    def state(self):
        return os.path.join(self.path, STATE_FILE)

    def info(self):
        """What kata_template returns: shape, path, size_bytes, created_at, image_digest."""
        return {
            'key': self.key,
            'shape': dict(self.shape),
            'path': self.path,
            'size_bytes': self.record['sizes']['ram'] + self.record['sizes']['state'],
            'created_at': self.record['created_at'],
            'image_digest': self.record['image_digest'],
        }


def _check_key(key):
    if not isinstance(key, str) or not KEY_RE.match(key):
        raise InvalidArgument('invalid template key %r: %d lowercase hex digits' % (key, KEY_LENGTH))
    return key


def _regular(path, what, size=None):
    """lstat ``path``: a regular file (not a link) of ``size`` bytes when given."""
    try:
        st = os.lstat(path)
    except OSError as err:
        raise CorruptRecord('template %s %s is missing (%s)' % (what, path, err.strerror)) from None
    if not stat.S_ISREG(st.st_mode):
        raise CorruptRecord('template %s %s is not a regular file' % (what, path))
    if size is not None and st.st_size != size:
        raise CorruptRecord('template %s %s has %d bytes, template.json says %d' % (what, path, st.st_size, size))
    return st


def load(templates_dir, key):
    """The complete template ``key`` under ``templates_dir``; None when there is none, and
    CorruptRecord when its directory is there but not a whole, valid template."""
    path = os.path.join(templates_dir, _check_key(key))
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    except OSError as err:
        raise CorruptRecord('template %s: %s' % (path, err.strerror)) from None
    if not stat.S_ISDIR(st.st_mode):
        raise CorruptRecord('template %s is not a directory' % path)
    try:
        fd = os.open(os.path.join(path, TEMPLATE_FILE), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as err:
        raise CorruptRecord('template %s has no readable %s (%s)' % (path, TEMPLATE_FILE, err.strerror)) from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise CorruptRecord('template %s: %s is not a regular file' % (path, TEMPLATE_FILE))
        data = os.read(fd, MAX_RECORD_BYTES + 1)
    finally:
        os.close(fd)
    try:
        rec = parse_record(data, key)
    except CorruptRecord as err:
        raise CorruptRecord('template %s: %s' % (path, err)) from None
    _regular(os.path.join(path, RAM_FILE), 'RAM file', rec['sizes']['ram'])
    _regular(os.path.join(path, STATE_FILE), 'state file', rec['sizes']['state'])
    return Template(path, rec)


def find(hv, templates_dir, vm, qemu=None):
    """The template a sandbox of spec ``vm`` can start from, or None (it boots cold). A
    template whose image or settings differ has another key, so it is never found here."""
    try:
        return load(templates_dir, key_of(shape_of(hv, vm, qemu=qemu)))
    except CorruptRecord:
        return None


def list_templates(templates_dir):
    """``(templates, problems)``: every complete template, and ``(path, why)`` for each directory
    that is not one (an unfinished build, a corrupt record)."""
    found, problems = [], []
    try:
        names = sorted(os.listdir(templates_dir))
    except FileNotFoundError:
        return found, problems
    for name in names:
        path = os.path.join(templates_dir, name)
        if not KEY_RE.match(name):
            problems.append((path, 'not a template (an unfinished build or a foreign file)'))
            continue
        try:
            tpl = load(templates_dir, name)
        except CorruptRecord as err:
            problems.append((path, str(err)))
            continue
        if tpl is not None:
            found.append(tpl)
    return found, problems


def remove(templates_dir, key):
    """Remove template ``key``; False when there was none. Clones already started from it keep
    running: their private mapping keeps the RAM file's pages."""
    path = os.path.join(templates_dir, _check_key(key))
    if not os.path.lexists(path):
        return False
    _remove_tree(templates_dir, path)
    return True


def _remove_tree(templates_dir, path):
    top = os.path.realpath(templates_dir)
    if os.path.dirname(os.path.realpath(path)) != top or os.path.islink(path):
        raise InvalidArgument('refusing to remove %s: not directly under %s' % (path, templates_dir))
    if os.path.isdir(path):
        shutil.rmtree(path)
    else:
        os.unlink(path)


# ---------------------------------------------------------------------------------------------
# the tmpfs

def ensure_tmpfs(templates_dir, size_mb):
    """Mount a tmpfs of ``size_mb`` MiB at ``templates_dir``, or resize the one there to it;
    True when it mounted or resized one; something else mounted there is refused. Must
    happen before any VMM that maps a template starts (libvirt gives each VMM a copy of the
    host's mount namespace at start)."""
    if isinstance(size_mb, bool) or not isinstance(size_mb, int) or size_mb < 16:
        raise InvalidArgument('templates tmpfs size must be an integer of at least 16 MiB, got %r' % (size_mb,))
    if not isinstance(templates_dir, str) or not os.path.isabs(templates_dir):
        raise InvalidArgument('templates_dir must be an absolute path, got %r' % (templates_dir,))
    os.makedirs(templates_dir, mode=0o700, exist_ok=True)
    if os.path.islink(templates_dir) or not os.path.isdir(templates_dir):
        raise KataError('%s is not a directory of ours; refusing to mount over it' % templates_dir)
    found = [m for m in mountinfo.mounts() if m[0] == os.path.realpath(templates_dir)]
    if found:
        dummy, dummy, fstype, source = found[-1]
        if (fstype, source) != ('tmpfs', TMPFS_SOURCE):
            raise KataError('%s is a mount point of %s (%s), not the templates tmpfs; refusing to put templates there'
                            % (templates_dir, source, fstype))
        st = os.statvfs(templates_dir)
        if st.f_blocks * st.f_frsize == size_mb * _MIB:
            return False
        # template_tmpfs_mb changed: tmpfs resizes in place (a size below what is used fails)
        _run(['mount', '-o', 'remount,size=%dm' % size_mb, templates_dir],
             'resizing the templates tmpfs %s to %d MiB' % (templates_dir, size_mb))
        return True
    opts = 'size=%dm,nr_inodes=4096,%s' % (size_mb, TMPFS_FLAGS)
    _run(['mount', '-t', 'tmpfs', '-o', opts, TMPFS_SOURCE, templates_dir], 'mounting the templates tmpfs %s' % templates_dir)
    return True


def release_tmpfs(templates_dir):
    """Unmount the templates tmpfs (lazily: clones keep their mappings); False when none."""
    if not mountinfo.is_mounted(templates_dir):
        return False
    _run(['umount', '-l', templates_dir], 'unmounting the templates tmpfs %s' % templates_dir)
    return True


def _run(argv, what):
    proc = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, check=False)
    if proc.returncode != 0:
        raise KataError('%s failed: %s (%s)' % (what, proc.stderr.decode('utf-8', 'replace').strip()
                                                or 'exit %d' % proc.returncode, ' '.join(argv)))


# ---------------------------------------------------------------------------------------------
# the agent's post_clone request (its reply is checked where every reply is: agent.py _RESULTS)

def post_clone(client, tags, seed=None, when=None, timeout=None, mac=None):
    """Ask a clone's agent to reseed its RNG, set its clock, mount ``tags`` and give its NIC
    the clone's own ``mac`` (the template's comes back with the device state); its answer."""
    seed = os.urandom(SEED_BYTES) if seed is None else seed
    params = {'seed': base64.b64encode(seed).decode('ascii'), 'time': time.time() if when is None else when,
              'mounts': list(tags)}
    if mac is not None:
        params['mac'] = mac
    return client.request('post_clone', params, timeout=timeout)


# ---------------------------------------------------------------------------------------------
# where templates live, and their locks

def templates_dir(state_root):
    """``<state_root>/templates``: the tmpfs every template of this state root lives on."""
    return os.path.join(state_root, TEMPLATES_DIR)


@contextlib.contextmanager
def lock(state_root, name, timeout=LOCK_TIMEOUT):
    """Hold ``<state_root>/locks/templates/<name>.lock``: ``name`` is a template key (its build
    or removal) or ``tmpfs`` (mounting the templates tmpfs). Two builds of one shape then
    never collide: the second waits and finds the first one's template. LockTimeout after
    ``timeout`` seconds.

    The file is unlinked while still held when the lock is released, so no lock file outlives
    its operation; a waiter that then holds the unlinked inode sees it is no longer the file
    at the path and tries again (as the store's sandbox locks do)."""
    if name != 'tmpfs':
        _check_key(name)
    path = os.path.join(state_root, 'locks', LOCKS_DIR, name + '.lock')
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    deadline = time.monotonic() + timeout

    def timed_out(_fd):
        return LockTimeout('template %s is locked by another build or removal; gave up after %ss' % (name, timeout))

    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except OSError as err:
            raise KataError('cannot open template lock %s: %s' % (path, err.strerror)) from None
        if hold_if_current(fd, path, deadline, timed_out, poll=0.1):
            break
    try:
        yield
    finally:
        try:
            os.unlink(path)
        except OSError:
            pass
        os.close(fd)  # releases the flock


@contextlib.contextmanager
def try_lock(state_root, name):
    """Yields True holding the lock of ``name``, or False when another operation holds it."""
    stack = contextlib.ExitStack()
    try:
        stack.enter_context(lock(state_root, name, timeout=0))
    except LockTimeout:
        yield False
        return
    with stack:
        yield True


def busy(state_root, name):
    """True when an operation holds the lock of ``name`` now. Only looks: no lock file is made
    (a holder makes it first), so check mode and listings write nothing."""
    path = os.path.join(state_root, 'locks', LOCKS_DIR, name + '.lock')
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def check_room(templates_dir, memory_mb):
    """KataError unless the templates tmpfs has room for a template of ``memory_mb`` MiB: a
    guest touching RAM the file system cannot back would kill its VMM (SIGBUS)."""
    st = os.statvfs(templates_dir)
    free = st.f_bavail * st.f_frsize
    need = memory_mb * _MIB + STATE_ROOM
    if free < need:
        raise KataError('the templates tmpfs %s has %d MiB free, a template of %d MiB needs %d MiB: raise the '
                        "config's template_tmpfs_mb (now %d MiB in all) or remove templates (kata_template "
                        'state=absent, kata_prune removes stale ones)'
                        % (templates_dir, free // _MIB, memory_mb, -(-need // _MIB), st.f_blocks * st.f_frsize // _MIB))


def is_stale(tpl):
    """Why ``tpl`` is stale (the kernel or initrd it was built from changed or went), or None."""
    try:
        digest = image_digest(tpl.record['kernel'], tpl.record['initrd'])
    except InvalidArgument as err:
        return str(err)
    if digest != tpl.record['image_digest']:
        return 'its image changed (%s or %s differs from the build)' % (tpl.record['kernel'], tpl.record['initrd'])
    return None


# ---------------------------------------------------------------------------------------------
# build and clone

def _destroy(hv, name):
    try:
        hv.destroy(name)
    finally:
        hv.undefine(name)


def probe_spec(spec):
    """``spec`` with every device a sandbox has (the paths are placeholders): a template's
    shape is that of the sandboxes that will start from it."""
    return dict(spec, console_log='/c', agent_socket='/a', shared_dir='/s', output_dir='/o', volumes_dir='/v')


def build(hv, templates_dir, spec, agent_timeout=120, force=False, progress=None, agent=None, settle=SAVE_SETTLE):
    """Build the template for ``spec`` (kernel, initrd, vcpus, memory_mb, accel, cmdline;
    optional state_root, tb_cache_mb) under ``templates_dir`` and return
    ``(Template, changed, timings)``; unchanged when a valid one exists (``force`` rebuilds).
    The caller holds the template's lock (``lock``) and mounted the tmpfs.

    Boots a guest with every sandbox device (console, agent channel, both 9p shares, left
    unmounted by the guest) and its RAM in a shared file, waits for the agent, pauses it,
    saves its device state, then destroys and undefines the domain. The directory appears
    under its key only when complete. ``agent(vm)`` returns a client of that guest's agent
    (default: one on its socket)."""
    report = progress or (lambda msg: None)
    timings = {}
    t0 = time.monotonic()
    memory_mb = spec.get('memory_mb')
    shape = shape_of(hv, probe_spec(spec))
    key = key_of(shape)
    final = os.path.join(templates_dir, key)
    if not force:
        try:
            existing = load(templates_dir, key)
        except CorruptRecord:
            existing = None
        if existing is not None:
            return existing, False, timings
    check_room(templates_dir, memory_mb)
    if spec.get('state_root'):
        Store(spec['state_root']).ensure()  # the agent socket goes in its sock/
    work = os.path.join(templates_dir, '%s%s-%s' % (BUILD_PREFIX, key, secrets.token_hex(4)))
    os.mkdir(work, 0o700)
    sid = 'template-%s-%s' % (key, secrets.token_hex(3))
    name = hv.domain_name(sid)
    vm = {
        'name': name, 'sandbox_id': sid, 'vcpus': spec['vcpus'], 'memory_mb': memory_mb,
        'kernel': spec['kernel'], 'initrd': spec['initrd'], 'accel': spec['accel'],
        'cmdline': _template_cmdline(shape['cmdline']),
        # the state root's socket directory keeps the path within sun_path's 108 bytes
        'console_log': os.path.join(work, 'console.log'),
        'agent_socket': (Store(spec['state_root']).agent_socket(sid) if spec.get('state_root')
                         else os.path.join(work, 'agent.sock')),
        'shared_dir': os.path.join(work, 'shared'), 'output_dir': os.path.join(work, 'output'),
        'volumes_dir': os.path.join(work, 'volumes'),
        'state_root': spec.get('state_root'), 'tb_cache_mb': spec.get('tb_cache_mb'),
        # never a free-page-reporting balloon: it would punch holes in the shared RAM file
        'free_page_reporting': False,
        # the same NIC as the sandboxes of this shape; libvirt picks the template's own MAC
        'network': dict(spec['network'], mac=None) if spec.get('network') else None,
    }
    for d in (vm['shared_dir'], vm['output_dir'], vm['volumes_dir']):
        os.mkdir(d, 0o700)
    # the 9p access mode a sandbox's output share gets on a tmpfs like this one (share.py)
    vm['output_accessmode'] = 'mapped' if share.user_xattrs_work(vm['output_dir']) else 'squash'
    ram = os.path.join(work, RAM_FILE)
    state = os.path.join(work, STATE_FILE)
    defined = False
    try:
        report('template %s: booting %s' % (key, name))
        hv.create_template_vm(vm, ram)
        defined = True
        t1 = time.monotonic()
        with (agent or (lambda v: client_factory(v, agent_timeout)()))(vm) as client:
            client.wait_ready(agent_timeout)
        timings['boot_to_agent_s'] = time.monotonic() - t1
        # let the guest take in the hang-up (a virtio-serial control message) before the
        # pause, so no clone starts with it still in flight
        time.sleep(settle)
        t2 = time.monotonic()
        hv.suspend(name)
        state_size = hv.save_state(name, state)
        timings['save_s'] = time.monotonic() - t2
        _destroy(hv, name)
        defined = False
        ram_size = _regular(ram, 'RAM file').st_size
        if ram_size != memory_mb * _MIB:
            raise KataError('template %s: the RAM file has %d bytes, not %d MiB' % (key, ram_size, memory_mb))
        for leftover in ('console.log', 'agent.sock', 'shared', 'output', 'volumes'):
            p = os.path.join(work, leftover)
            if os.path.isdir(p) and not os.path.islink(p):
                os.rmdir(p)
            elif os.path.lexists(p):
                os.unlink(p)
        rec = record_for(shape, ram_size, state_size, spec['kernel'], spec['initrd'])
        _write_atomic(os.path.join(work, TEMPLATE_FILE), json.dumps(rec, sort_keys=True, indent=1).encode('ascii'))
        _publish(templates_dir, work, final)
    except BaseException:
        if defined:
            try:
                _destroy(hv, name)
            except KataError:
                pass
        shutil.rmtree(work, ignore_errors=True)
        raise
    finally:
        if os.path.lexists(vm['agent_socket']) and stat.S_ISSOCK(os.lstat(vm['agent_socket']).st_mode):
            os.unlink(vm['agent_socket'])
    timings['build_s'] = time.monotonic() - t0
    tpl = load(templates_dir, key)
    report('template %s: built in %.2fs' % (key, timings['build_s']))
    return tpl, True, timings


def build_locked(hv, state_root, tmpfs_mb, spec, force=False, agent_timeout=120, progress=None, agent=None,
                 settle=SAVE_SETTLE):
    """``build`` as kata_template runs it: the templates tmpfs mounted (or resized) to
    ``tmpfs_mb`` MiB under its lock, then the build under the template's own lock, so two
    builds of one shape never collide (the second finds the first one's template)."""
    tdir = templates_dir(state_root)
    key = key_of(shape_of(hv, probe_spec(spec)))  # refuses a bad spec before anything is made
    Store(state_root).ensure()
    with lock(state_root, key):  # held first: remove_locked never unmounts under a build
        with lock(state_root, 'tmpfs'):
            ensure_tmpfs(tdir, tmpfs_mb)
        return build(hv, tdir, spec, agent_timeout=agent_timeout, force=force, progress=progress, agent=agent,
                     settle=settle)


def remove_locked(state_root, key):
    """``remove`` under the template's lock (never in the middle of its build); the tmpfs is
    released when that leaves it empty (clones keep the pages they map). True when a
    template was removed."""
    tdir = templates_dir(state_root)
    with lock(state_root, key):
        removed = remove(tdir, key)
    release_if_empty(state_root)
    return removed


def release_if_empty(state_root):
    """Release the templates tmpfs when no template is left in it and no build holds a
    template's lock; True when it was released."""
    tdir = templates_dir(state_root)
    if not os.path.isdir(tdir):
        return False
    with lock(state_root, 'tmpfs'):
        if not os.listdir(tdir) and not _building(state_root):
            return release_tmpfs(tdir)
    return False


def _building(state_root):
    """True while any template's lock is held (a build mounts the tmpfs under its own lock)."""
    try:
        names = os.listdir(os.path.join(state_root, 'locks', LOCKS_DIR))
    except OSError:
        return False
    return any(busy(state_root, n[:-len('.lock')]) for n in names
               if n.endswith('.lock') and KEY_RE.match(n[:-len('.lock')]))


def _publish(templates_dir, work, final):
    """Rename the finished build to its key; an older one with that key is replaced."""
    old = None
    if os.path.lexists(final):
        old = os.path.join(templates_dir, '%sold-%s' % (BUILD_PREFIX, secrets.token_hex(4)))
        os.rename(final, old)
    try:
        os.rename(work, final)
    except OSError as err:
        if err.errno not in (errno.EEXIST, errno.ENOTEMPTY):
            raise
        shutil.rmtree(work, ignore_errors=True)  # another build of the same shape won
    _fsync_dir(templates_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def clone(hv, template, vm, agent=None, agent_timeout=30, seed=None, progress=None):
    """Start sandbox VM ``vm`` (the spec Hypervisor.create takes) from ``template``:
    ``start_paused`` then ``activate`` (``agent()`` returns a client of the clone's agent;
    default: one on ``vm``'s agent socket).
    The domain is named and marked like a cold-booted one. Returns ``timings`` (seconds from
    the call: loaded, resumed, answered, ready) and the agent's post_clone answer. On failure
    the domain is destroyed and undefined again."""
    report = progress or (lambda msg: None)
    t0 = time.monotonic()
    timings = start_paused(hv, template, vm)
    try:
        more, answer = activate(hv, template, vm, agent, agent_timeout=agent_timeout, seed=seed)
    except BaseException:
        try:
            _destroy(hv, vm['name'])
        except KataError:
            pass
        raise
    base = timings['loaded']
    timings.update((k, base + v) for k, v in more.items())
    report('sandbox %s: started from template %s in %.2fs (%.2fs after the call)'
           % (vm.get('sandbox_id'), template.key, timings['ready'], time.monotonic() - t0))
    return timings, answer


def start_paused(hv, template, vm):
    """Define and start ``vm`` from ``template`` up to a loaded device state, still paused
    (what a pool of ready clones would hold). Returns timings (loaded); on failure nothing
    stays defined."""
    t0 = time.monotonic()
    shape = shape_of(hv, vm, qemu=template.shape['qemu'], digest=template.shape['image_digest'])
    if shape != template.shape:
        diff = sorted(k for k in shape if shape[k] != template.shape.get(k))
        raise InvalidArgument('sandbox %s does not match template %s (differs in %s): boot it cold'
                              % (vm.get('sandbox_id'), template.key, ', '.join(diff)))
    # the files may have gone since the template was loaded; refuse before anything is defined
    _regular(template.ram, 'RAM file', template.record['sizes']['ram'])
    _regular(template.state, 'state file', template.record['sizes']['state'])
    # never a free-page-reporting balloon: it would punch holes in the template's RAM file
    spec = dict(vm, cmdline=_template_cmdline(shape['cmdline']), free_page_reporting=False)
    hv.create_clone(spec, template.ram, template.state)
    return {'loaded': time.monotonic() - t0}


def activate(hv, template, vm, agent=None, agent_timeout=30, seed=None):
    """Resume a clone made by ``start_paused`` and make it ready: its agent (a client from
    ``agent()``) answers, reseeds the RNG from ``seed`` (host random bytes when None), sets
    the clock and mounts the shares of the device set. Returns timings from the call
    (resumed, answered, ready) and the agent's answer. The caller destroys the domain on
    failure."""
    t0 = time.monotonic()
    name = vm['name']
    seed = os.urandom(SEED_BYTES) if seed is None else seed
    timings = {}
    hv.resume(name)
    timings['resumed'] = time.monotonic() - t0
    tags = [SHARE_TAGS[d] for d in template.shape['devices'] if d in SHARE_TAGS]
    with (agent or client_factory(vm, agent_timeout))() as client:
        client.ping(timeout=agent_timeout)
        timings['answered'] = time.monotonic() - t0
        mac = (vm.get('network') or {}).get('mac')
        answer = post_clone(client, tags, seed=seed, timeout=agent_timeout, mac=mac)
    if sorted(answer['mounted']) != sorted(tags):
        raise AgentError('the agent of clone %s mounted %s, not %s' % (name, answer['mounted'], tags))
    if not answer['clock_set'] or answer['seeded'] != len(seed):
        raise AgentError('the agent of clone %s did not reseed its RNG and set its clock: %s' % (name, answer))
    timings['ready'] = time.monotonic() - t0
    return timings, answer


def client_factory(vm, timeout):
    """``agent()`` for clone/activate outside a Runtime: a client of ``vm``'s agent socket."""
    return lambda: agent_mod.AgentClient(vm['agent_socket'], timeout=timeout, console_log=vm.get('console_log'),
                                         sandbox_id=vm.get('sandbox_id'))


def vmm_pss_kib(pid):
    """Proportional set size of process ``pid`` in KiB (smaps_rollup), None when unreadable."""
    try:
        with open('/proc/%d/smaps_rollup' % pid) as f:
            for line in f:
                if line.startswith('Pss:'):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None
