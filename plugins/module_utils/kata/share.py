# Copyright: kata.runtime contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Everything a guest can reach on the host, and the limits on it (docs/security.md).

Under ``<state_root>/sandboxes/<sid>/``::

    shared/               9p tag kataShared, exported READ-ONLY. Host-private: only the host
      <cid>/rootfs        creates directories here; each container's rootfs is bound at
                          <cid>/rootfs read-only, nosuid, nodev, inside the VMM's mount
                          namespace. The guest cannot write, chmod, mknod or plant a link here.
    output/               9p tag kataOutput, read-write: a tmpfs of its own capped at
      <cid>/stdout|stderr guest_write_limit_mb (and an inode count), mounted nosuid, nodev,
                          noexec, nosymfollow. Container output lands here.
    volumes/              9p tag kataVolumes, read-write in ``mapped`` mode: a small tmpfs of
      <cid>@<n>           its own (VOLUMES_KB, VOLUMES_INODES), where each read-write volume
                          of a container is bound inside the VMM's mount namespace
                          (volumes.py, docs/volumes.md).
    console/console.log   the serial console, on a tmpfs capped at console_log_limit_kb.
    bundles/<cid>/        host-owned bundle of an inline container (config.json): what hooks
                          get as the OCI state's ``bundle`` and their working directory.

A guest that fills its share or its console gets ENOSPC (its writes stop; the host's do not).
Whatever it creates in ``output/`` cannot be executed, opened as a device or followed as a
symlink through that mount; where the host kernel keeps user xattrs on tmpfs (Linux 6.6+) the
share is exported in 9p's ``mapped`` mode, so modes, owners, device nodes and symlinks the
guest makes only exist as xattrs and plain files on the host.

Removing a sandbox unmounts these file systems first (everything the guest wrote goes with
them, however deep or strange), so tree removal never has to walk what the guest made.
"""

from __future__ import annotations

import os
import subprocess

from ansible_collections.kata.runtime.plugins.module_utils.kata import mountinfo
from ansible_collections.kata.runtime.plugins.module_utils.kata.errors import KataError

SHARED = 'shared'
OUTPUT = 'output'
CONSOLE = 'console'
CONSOLE_LOG = 'console.log'
BUNDLES = 'bundles'
VOLUMES = 'volumes'

# tmpfs "source" names: they label our mounts in /proc/self/mountinfo and `findmnt`.
OUTPUT_SOURCE = 'kata-output'
CONSOLE_SOURCE = 'kata-console'
VOLUMES_SOURCE = 'kata-volumes'
# The volume share holds only mount points (one inode each); what the guest could make beside
# them, where the host's tmpfs keeps the user xattrs that mapped mode needs, stays this small.
VOLUMES_KB = 1024
VOLUMES_INODES = 4096

# Inodes allowed per MiB of the output cap: a guest making millions of empty files would cost
# host kernel memory that the byte cap does not count.
INODES_PER_MB = 1024
CONSOLE_INODES = 16

_TMPFS_FLAGS = 'nosuid,nodev,noexec,nosymfollow,mode=0700,uid=0,gid=0'
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


# ---------------------------------------------------------------------------------------------
# paths

def shared_dir(store, sid):
    return os.path.join(store.sandbox_dir(sid), SHARED)


def output_dir(store, sid):
    return os.path.join(store.sandbox_dir(sid), OUTPUT)


def volumes_dir(store, sid):
    return os.path.join(store.sandbox_dir(sid), VOLUMES)


def console_log(store, sid):
    return os.path.join(store.sandbox_dir(sid), CONSOLE, CONSOLE_LOG)


def bundle_dir(store, sid, cid):
    return os.path.join(store.sandbox_dir(sid), BUNDLES, cid)


def output_paths(store, sid, cid):
    """(stdout, stderr) of a container on the host. Guest-written: read them with O_NOFOLLOW
    (the output mount is nosymfollow, so a planted link fails with ELOOP anyway)."""
    base = os.path.join(output_dir(store, sid), cid)
    return os.path.join(base, 'stdout'), os.path.join(base, 'stderr')


# ---------------------------------------------------------------------------------------------
# mounts

def _run(argv, what):
    proc = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, check=False)
    if proc.returncode != 0:
        raise KataError('%s failed: %s (%s)' % (what, proc.stderr.decode('utf-8', 'replace').strip()
                                                or 'exit %d' % proc.returncode, ' '.join(argv)))


def _private_dir(store, path):
    """mkdir 0700 inside the state root; refuses a symlink or a file in its place."""
    store._check_inside(os.path.dirname(path))
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    try:
        fd = os.open(path, _DIR_FLAGS)
    except OSError as err:
        raise KataError('%s is not a directory of ours (%s); refusing to use it'
                        % (path, err.strerror)) from None
    try:
        os.fchmod(fd, 0o700)
    finally:
        os.close(fd)


def _mount_tmpfs(path, source, size_kb, inodes):
    if mountinfo.is_mounted(path):
        return False
    opts = 'size=%dk,nr_inodes=%d,%s' % (size_kb, inodes, _TMPFS_FLAGS)
    _run(['mount', '-t', 'tmpfs', '-o', opts, source, path], 'mounting the capped tmpfs %s' % path)
    return True


def user_xattrs_work(path):
    """True when files under ``path`` keep user.* xattrs (tmpfs: Linux 6.6 and later)."""
    name = 'user.kata.probe'
    try:
        os.setxattr(path, name, b'1')
        os.removexattr(path, name)
    except OSError:
        return False
    return True


def prepare(rt, sid):
    """Make the sandbox's shares and console ready before its VM starts; idempotent.

    Returns the 9p access mode for the output share: ``mapped`` where the host keeps user
    xattrs there, else ``squash`` (both never let the guest change a host file's owner).
    """
    store, config = rt.store, rt.config
    store.ensure_sandbox(sid)
    sdir = store.sandbox_dir(sid)
    for name in (SHARED, OUTPUT, CONSOLE, BUNDLES, VOLUMES):
        _private_dir(store, os.path.join(sdir, name))
    out = output_dir(store, sid)
    _mount_tmpfs(out, OUTPUT_SOURCE, config.guest_write_limit_mb * 1024,
                 max(1024, config.guest_write_limit_mb * INODES_PER_MB))
    _mount_tmpfs(os.path.dirname(console_log(store, sid)), CONSOLE_SOURCE,
                 config.console_log_limit_kb, CONSOLE_INODES)
    _mount_tmpfs(volumes_dir(store, sid), VOLUMES_SOURCE, VOLUMES_KB, VOLUMES_INODES)
    return 'mapped' if user_xattrs_work(out) else 'squash'


def release(rt, sid, trace=None):
    """Unmount everything mounted at or under the sandbox's directory (host namespace).

    Everything there is ours: the capped tmpfs file systems and, when the VMM shares our
    mount namespace, rootfs binds. Lazy unmounts, deepest first, so a busy one cannot block a
    forced delete; what the guest wrote in a tmpfs is gone with it.
    """
    sdir = rt.store.sandbox_dir(sid)
    done = []
    for point in mountinfo.under(sdir):
        _run(['umount', '-l', point], 'unmounting %s' % point)
        done.append(point)
    if done and trace is not None:
        trace.step('unmounted %d file system(s) of sandbox %s' % (len(done), sid))
    return done


def usage(path):
    """Bytes in use on the file system at ``path`` (for the caps' tests and status)."""
    st = os.statvfs(path)
    return (st.f_blocks - st.f_bfree) * st.f_frsize


# ---------------------------------------------------------------------------------------------
# container rootfs

def _vmm_mount_cmd(rt, srec, args):
    """``args`` (mount/umount) run where the VMM's 9p server sees it: its own mount namespace.

    libvirt starts qemu in a private mount namespace, so a bind mount made on the host after
    the VM started would not be visible to the 9p server; entering the VMM's namespace puts
    the mount exactly where it is needed and it vanishes with the VM. Returns (argv, pid of
    the namespace to check or 'self').
    """
    pid = rt.hv.pid(srec.domain)
    if pid and os.path.exists('/proc/%d/ns/mnt' % pid):
        if os.readlink('/proc/%d/ns/mnt' % pid) != os.readlink('/proc/self/ns/mnt'):
            return ['nsenter', '-t', str(pid), '-m', '--'] + args, pid
    return args, 'self'


def _mount_point(rt, sid, cid):
    """Create ``shared/<cid>/rootfs`` by file descriptor, never following a link: a symlink or
    a file in the way fails this one container with a clear error and touches nothing."""
    base = shared_dir(rt.store, sid)
    path = base
    fd = os.open(base, _DIR_FLAGS)
    try:
        for name in (cid, 'rootfs'):
            path = os.path.join(path, name)
            try:
                os.mkdir(name, 0o755, dir_fd=fd)
            except FileExistsError:
                pass
            try:
                child = os.open(name, _DIR_FLAGS, dir_fd=fd)
            except OSError as err:
                # O_NOFOLLOW|O_DIRECTORY on a link fails with ELOOP or ENOTDIR
                what = 'a symlink' if os.path.islink(path) else 'not a directory (%s)' % err.strerror
                raise KataError('cannot share the rootfs of container %s: %s is %s; refusing '
                                'to mount over it' % (cid, path, what)) from None
            os.close(fd)
            fd = child
    finally:
        os.close(fd)
    return os.path.join(base, cid, 'rootfs')


def bind_rootfs(rt, srec, rec, trace, before_mount=None):
    """Bind the container's rootfs read-only (nosuid, nodev) at ``shared/<cid>/rootfs``.

    Read-only on the host side whatever the container asked: a writable rootfs gets an
    overlay with a tmpfs upper layer inside the guest, so no write of the guest ever reaches
    the operator's directory through the share. ``before_mount()`` runs once ``rec`` names the
    mount point and before the mount is made.
    """
    target = _mount_point(rt, srec.id, rec.id)
    cmd, ns = _vmm_mount_cmd(rt, srec, ['mount', '--bind', '-o', 'ro,nosuid,nodev', rec.rootfs, target])
    rec.rootfs_mount = {'target': target, 'host': ns == 'self'}
    if before_mount is not None:
        before_mount()  # e.g. save the record: a process killed after the mount leaves a trace
    _run(cmd, 'sharing rootfs %s with the guest' % rec.rootfs)
    opts = [m[1] for m in mountinfo.mounts(ns) if m[0] == target]
    if not opts or 'ro' not in opts[-1].split(','):
        unbind_rootfs(rt, srec, rec, trace)
        raise KataError('the rootfs bind of container %s at %s is not read-only (%s); removed it'
                        % (rec.id, target, opts[-1] if opts else 'not mounted'))
    trace.step('shared rootfs %s read-only with the guest' % rec.rootfs)


def mounted_on_host(path):
    """True when something is mounted at ``path`` in our own mount namespace."""
    return mountinfo.is_mounted(path)


def unbind_rootfs(rt, srec, rec, trace):
    mount = rec.rootfs_mount
    if not mount:
        return
    target = mount['target']
    if mount.get('host'):
        if mountinfo.is_mounted(target):
            _run(['umount', '-l', target], 'unmounting %s' % target)
            trace.step('unshared rootfs of container %s' % rec.id)
    elif rt.hv.state(srec.domain) in ('running', 'paused'):
        cmd, ns = _vmm_mount_cmd(rt, srec, ['umount', '-l', target])
        if mountinfo.is_mounted(target, ns):
            _run(cmd, 'unmounting %s' % target)
            trace.step('unshared rootfs of container %s' % rec.id)
    rec.rootfs_mount = None


def remove_container_dirs(rt, sid, cid):
    """Remove ``shared/<cid>`` (an empty mount point), ``output/<cid>`` and ``bundles/<cid>``
    by descriptor: never through a link, never into a mount."""
    sdir = rt.store.sandbox_dir(sid)
    for parent in (SHARED, OUTPUT, BUNDLES):
        path = os.path.join(sdir, parent, cid)
        if mountinfo.under(path):
            continue  # still mounted (a VMM that lingers): delete or prune gets it later
        try:
            pfd = os.open(os.path.join(sdir, parent), _DIR_FLAGS)
        except OSError:
            continue
        try:
            rt.store.remove_tree_at(pfd, cid, path)
        finally:
            os.close(pfd)
