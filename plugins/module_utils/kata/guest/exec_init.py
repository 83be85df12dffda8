# Copyright: kata.runtime contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The container's init: run by the guest agent as ``python3 -I -S exec_init.py ARGS`` right
after ``busybox unshare``, it becomes the container process.

PID 1 of the container's new namespaces, it mounts proc and a small /dev, then the container's
own mounts (volumes, tmpfs, sysfs, ...: the agent lists them in ``<fifo>.mounts``), sets the
hostname, enters the rootfs (read-only, or under a writable overlay), drops to the container's uid/gid,
resets every signal to its default and execs the command. It reports a setup error on the FIFO
it opens close-on-exec: EOF without a message there means the command was exec'd.

It imports only os and sys (frozen into the interpreter; ``_signal`` is built in), so it starts
in a fraction of the agent's own start-up time, which counts under software emulation. It lives
next to the agent (``/opt/kata/exec_init.py`` in the initrd) and, like it, imports nothing from
the collection and does nothing on import.

ARGS (``exec_init_argv`` in guest/agent.py writes them): fifo busybox rootfs mode scratch
resolv hostname cwd uid gid default_path extra N env[N] args..., where mode is plain, readonly
or overlay (scratch: the directory the overlay's writable layer is mounted at), resolv is the
guest file bound at the rootfs' /etc/resolv.conf ('' for none), default_path is the PATH used
when env sets none and extra holds ``key=value`` settings joined by ``;``
(``exec_init_extra`` in guest/agent.py): cg (the cgroup to join, first of all), dn
(domainname), oom (oom_score_adj), rl (rlimits ``res:soft:hard,...``), gids (additional
groups), caps (bounding,effective,permitted,inheritable,ambient as hex masks), umask, nnp.

Capabilities and no_new_privs need prctl and capset, so ``ctypes`` (and ``resource`` for the
rlimits) is imported, before the chroot, only when a container asks for them. The order is
runc's: join the cgroup, rlimits (still privileged), drop the bounding set, keep the
permitted set over setuid, set effective/permitted/inheritable, raise ambient, umask,
no_new_privs, exec.
"""

# No ``from __future__ import annotations`` here: it would load __future__ at every container start.
import os
import sys

# <linux/prctl.h>, <linux/capability.h>
PR_SET_KEEPCAPS = 8
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_RAISE = 2
LINUX_CAPABILITY_VERSION_3 = 0x20080522


def parse_extra(extra):
    out = {}
    for item in extra.split(';') if extra else ():
        key, _sep, value = item.partition('=')
        out[key] = value
    return out


def resolve_in(root, path, fail):
    """``path`` inside ``root`` with every symlink on the way resolved as if ``root`` were ``/``
    (a link in the image cannot point a mount outside the container's root)."""
    parts = [p for p in path.split('/') if p]
    cur, links = '', 0
    while parts:
        name = parts.pop(0)
        if name == '.':
            continue
        if name == '..':
            cur = cur.rsplit('/', 1)[0]
            continue
        full = root + cur + '/' + name
        if os.path.islink(full):
            links += 1
            if links > 40:
                fail(1, 'mount destination %s: too many levels of symbolic links' % path)
            target = os.readlink(full)
            if target.startswith('/'):
                cur = ''
            parts = [p for p in target.split('/') if p] + parts
            continue
        cur = cur + '/' + name
    return root + cur


def do_mounts(listing, rootfs, mount, fail):
    """The container's mounts, in order, from the agent's listing (agent.py parse_mounts): one
    a line, NUL-separated type, source, destination, options and f/d (a file or a directory).
    A missing mount point is made (a read-only rootfs cannot: that fails with its name)."""
    try:
        with open(listing, 'rb') as fh:
            data = fh.read().decode('utf-8', 'surrogateescape')
    except OSError:
        return
    for line in data.split('\n'):
        if not line:
            continue
        kind, source, dest, options, what = line.split('\x00')
        target = resolve_in(rootfs, dest, fail)
        try:
            if not os.path.lexists(target):
                if what == 'f':
                    os.makedirs(os.path.dirname(target), 0o755, exist_ok=True)
                    os.close(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644))
                else:
                    os.makedirs(target, 0o755)
        except OSError as err:
            fail(1, 'cannot make mount point %s for the %s mount: %s' % (dest, kind, err.strerror))
        if kind == 'bind':
            if not (mount('--bind', source, target) and mount('-o', 'remount,bind,' + options, target)):
                fail(1, 'cannot bind volume %s at %s (%s)' % (source, dest, options))
        elif not mount('-t', kind, *((['-o', options] if options else []) + [source, target])):
            fail(1, 'cannot mount %s at %s (options %s)' % (kind, dest, options or 'none'))


def main(argv):
    fifo, busybox, rootfs, mode, scratch, resolv, hostname, cwd, uid, gid, default_path, extra, nenv = argv[:13]
    env = argv[13:13 + int(nenv)]
    args = argv[13 + int(nenv):]
    extra = parse_extra(extra)
    try:
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        os.set_blocking(fd, True)
    except OSError:
        fd = 2  # the agent gave up waiting: stderr is the best place left

    def fail(code, message):
        try:
            os.write(fd, message.encode('utf-8', 'replace'))
        except OSError:
            pass
        os._exit(code)

    def mount(*argv):
        pid = os.fork()
        if pid == 0:
            try:
                null = os.open('/dev/null', os.O_RDWR)
                os.dup2(null, 1)
                os.dup2(null, 2)
                os.execv(busybox, [busybox, 'mount'] + list(argv))
            finally:
                os._exit(127)
        return os.waitpid(pid, 0)[1] == 0

    if extra.get('cg'):
        # Into the container's own cgroup (its limits are written) before anything else runs:
        # "0" moves the writer itself, and every process it starts is born in there.
        try:
            with open(extra['cg'] + '/cgroup.procs', 'w') as fh:
                fh.write('0')
        except OSError as err:
            fail(1, 'cannot join cgroup %s: %s' % (extra['cg'], err.strerror))
    if extra.get('oom'):
        try:
            with open('/proc/self/oom_score_adj', 'w') as fh:
                fh.write(extra['oom'])
        except OSError as err:
            fail(1, 'cannot set oom_score_adj %s: %s' % (extra['oom'], err.strerror))
    libc = None
    last_cap = -1
    if 'caps' in extra or 'nnp' in extra:
        # here, before the chroot: the container's rootfs has no Python library
        import ctypes
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            with open('/proc/sys/kernel/cap_last_cap') as fh:
                last_cap = int(fh.read())
        except (OSError, ValueError) as err:
            fail(1, 'cannot prepare to set capabilities: %s' % err)
    if 'rl' in extra:
        import resource
    # The mounts below live in this new mount namespace only: they vanish with the container.
    listing = fifo + '.mounts'
    seal = False
    if mode == 'readonly' and scratch and os.path.isdir(scratch) and os.path.exists(listing):
        # A read-only root with mounts of its own: like runc, make their mount points first (in
        # a writable layer in memory), then make the root read-only.
        mode, seal = 'overlay', True
    try:
        if mode == 'overlay':
            if not mount('-t', 'tmpfs', '-o', 'mode=0700', 'kata-rw', scratch):
                fail(1, 'cannot mount the writable layer at %s' % scratch)
            for name in ('upper', 'work', 'root'):
                os.mkdir(os.path.join(scratch, name), 0o755)
            layers = 'lowerdir=%s,upperdir=%s/upper,workdir=%s/work' % (rootfs, scratch, scratch)
            if not mount('-t', 'overlay', '-o', layers, 'overlay', scratch + '/root'):
                fail(1, 'cannot mount an overlay over rootfs %s' % rootfs)
            rootfs = scratch + '/root'
            for name in ('proc', 'dev'):  # writable: give it the mount points it lacks
                if not os.path.lexists(os.path.join(rootfs, name)):
                    os.mkdir(os.path.join(rootfs, name), 0o755)
        elif mode == 'readonly':
            if not (mount('--bind', rootfs, rootfs) and mount('-o', 'remount,bind,ro', rootfs)):
                fail(1, 'cannot make rootfs %s read-only' % rootfs)
        proc = os.path.join(rootfs, 'proc')
        if os.path.isdir(proc):
            mount('-t', 'proc', '-o', 'nosuid,nodev,noexec', 'proc', proc)
        dev = os.path.join(rootfs, 'dev')
        if os.path.isdir(dev) and mount('-t', 'tmpfs', '-o', 'nosuid,noexec,mode=755,size=65536k',
                                        'tmpfs', dev):
            # A private /dev with the usual nodes, as runtimes give OCI containers.
            for name, major, minor in (('null', 1, 3), ('zero', 1, 5), ('full', 1, 7),
                                       ('random', 1, 8), ('urandom', 1, 9), ('tty', 5, 0)):
                node = os.path.join(dev, name)
                try:
                    os.mknod(node, 0o020666, os.makedev(major, minor))
                    os.chmod(node, 0o666)
                except OSError:
                    pass
            for name, target in (('fd', '/proc/self/fd'), ('stdin', '/proc/self/fd/0'),
                                 ('stdout', '/proc/self/fd/1'), ('stderr', '/proc/self/fd/2'),
                                 ('ptmx', 'pts/ptmx')):
                os.symlink(target, os.path.join(dev, name))
            for name in ('pts', 'shm'):
                os.mkdir(os.path.join(dev, name))
            os.chmod(os.path.join(dev, 'shm'), 0o1777)
        do_mounts(listing, rootfs, mount, fail)
        if resolv:
            # the sandbox's DNS servers, read-only (the guest's file is a read-only view): where
            # the rootfs has an /etc/resolv.conf to cover, or can get one (a writable overlay)
            etc = os.path.join(rootfs, 'etc')
            target = os.path.join(etc, 'resolv.conf')
            if mode == 'overlay' and not os.path.lexists(target):
                if not os.path.lexists(etc):
                    os.mkdir(etc, 0o755)
                if os.path.isdir(etc) and not os.path.islink(etc):
                    os.close(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644))
            if not os.path.islink(etc) and not os.path.islink(target) and os.path.isfile(target):
                mount('--bind', resolv, target)
        if seal and not mount('-o', 'remount,bind,ro', rootfs):
            fail(1, 'cannot make rootfs %s read-only' % rootfs)
        if hostname:
            with open('/proc/sys/kernel/hostname', 'w') as fh:
                fh.write(hostname)
        if extra.get('dn'):
            with open('/proc/sys/kernel/domainname', 'w') as fh:
                fh.write(extra['dn'])
        os.chroot(rootfs)
        os.chdir('/')
    except OSError as err:
        fail(1, 'cannot enter rootfs %s: %s' % (rootfs, err))
    try:
        os.chdir(cwd)
    except OSError as err:
        fail(1, 'cannot change to cwd %s: %s' % (cwd, err.strerror))
    environ = {}
    for item in env:
        key, _sep, value = item.partition('=')
        environ[key] = value
    environ.setdefault('PATH', default_path)
    path = args[0]
    if '/' not in path:
        for directory in environ['PATH'].split(':'):
            candidate = os.path.join(directory or '.', args[0])
            if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
                path = candidate
                break
        else:
            fail(127, 'exec %s: executable file not found in $PATH' % args[0])
    if 'rl' in extra:
        for item in extra['rl'].split(','):
            res, soft, hard = (int(v) for v in item.split(':'))
            try:
                resource.setrlimit(res, (soft, hard))
            except (OSError, ValueError) as err:
                fail(1, 'cannot set rlimit %d to %d/%d: %s' % (res, soft, hard, err))
    caps = [int(v, 16) for v in extra['caps'].split(',')] if 'caps' in extra else None

    def prctl(what, *values):
        words = [ctypes.c_ulong(v) for v in list(values) + [0] * (4 - len(values))]
        if libc.prctl(ctypes.c_int(what), *words) != 0:
            fail(1, 'prctl %d%r failed: %s' % (what, values, os.strerror(ctypes.get_errno())))

    if caps is not None:
        for cap in range(last_cap + 1):
            if not caps[0] >> cap & 1:
                prctl(PR_CAPBSET_DROP, cap)
        prctl(PR_SET_KEEPCAPS, 1)  # the permitted set outlives setuid; capset sets it below
    try:
        os.setgroups([int(g) for g in extra['gids'].split(',')] if extra.get('gids') else [])
        os.setgid(int(gid))
        os.setuid(int(uid))
    except OSError as err:
        fail(1, 'cannot switch to uid %s gid %s: %s' % (uid, gid, err.strerror))
    if caps is not None:
        prctl(PR_SET_KEEPCAPS, 0)
        header = (ctypes.c_uint32 * 2)(LINUX_CAPABILITY_VERSION_3, 0)
        data = (ctypes.c_uint32 * 6)()
        for index, mask in enumerate((caps[1], caps[2], caps[3])):  # effective, permitted, inheritable
            data[index] = mask & 0xffffffff
            data[index + 3] = mask >> 32
        if libc.capset(header, data) != 0:
            fail(1, 'cannot set capabilities (capset): %s' % os.strerror(ctypes.get_errno()))
        for cap in range(last_cap + 1):
            if caps[4] >> cap & 1:
                prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, cap)
    if 'umask' in extra:
        os.umask(int(extra['umask']))
    if 'nnp' in extra:
        prctl(PR_SET_NO_NEW_PRIVS, 1)
    # Ignored signals survive exec: the agent (PID 1 of the guest) ignores HUP/INT/TERM and
    # Python ignores PIPE/XFSZ, so the container would start deaf to a graceful stop and
    # unable to trap TERM. Like other runtimes, every signal gets its default disposition.
    import _signal
    for signum in range(1, _signal.NSIG):
        try:
            _signal.signal(signum, _signal.SIG_DFL)
        except (OSError, ValueError):
            pass  # SIGKILL, SIGSTOP and the numbers that are no signal
    try:
        os.execve(path, args, environ)
    except OSError as err:
        fail(126 if err.errno in (13, 8) else 127, 'exec %s: %s' % (args[0], err.strerror))


if __name__ == '__main__':
    main(sys.argv[1:])
