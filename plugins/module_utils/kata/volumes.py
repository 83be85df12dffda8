# Copyright: kata.runtime contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A container's mounts: OCI ``mounts`` and kata_container's ``volumes``, checked once, shared
with the guest and undone (docs/volumes.md; threat model: docs/security.md).

- ``parse_mounts(mounts, bundle)`` and ``parse_volumes(volumes)`` turn config.json's list and
  the inline form into one normalised list (the record's ``mounts``): dicts ``type``,
  ``source``, ``destination``, ``options``. Every refusal names the entry and the bad value.
- ``check_sources(rt, mounts)``: what only the host can say (the state root, user xattrs for a
  read-write volume); nothing is touched, so check mode and a recreate consult it first.
- ``guest_plan(cid, mounts)``: the ``mounts`` param of the agent's create_container (guest
  paths) and the warnings of what is not mounted.
- ``bind(rt, srec, rec, trace)`` / ``unbind(rt, srec, rec, trace)``: the host side of bind
  mounts. A read-only volume is bound read-only, nosuid, nodev at
  ``shared/<cid>/volumes/<n>`` (the read-only export, like the rootfs); a read-write one
  nosuid, nodev at ``volumes/<cid>@<n>`` (the volume export, 9p ``mapped`` mode). Both inside
  the VMM's mount namespace, so a volume reaches a running guest without a restart.
"""

from __future__ import annotations

import errno
import os
import stat as stat_mod

from ansible_collections.kata.runtime.plugins.module_utils.kata import mountinfo, share
from ansible_collections.kata.runtime.plugins.module_utils.kata.errors import InvalidArgument, KataError
from ansible_collections.kata.runtime.plugins.module_utils.kata.guest import contract
from ansible_collections.kata.runtime.plugins.module_utils.kata.model import VmState

BIND = 'bind'
# Types mounted in the guest, in the container's own mount namespace.
GUEST_TYPES = ('tmpfs', 'proc', 'sysfs', 'devpts', 'mqueue')
# Types accepted and not mounted, with a warning: the guest has cgroup v2 of its own, and a
# container seeing the guest's hierarchy would see its siblings'.
WARNED_TYPES = ('cgroup', 'cgroup2')
# What the container's init always mounts itself (guest/exec_init.py): such entries of the
# runtime-spec default are satisfied as they are.
BUILTIN = (('proc', '/proc'), ('tmpfs', '/dev'))

# Mount flags every type takes (mount(8) names); they become MS_* flags in the guest.
FLAGS = ('ro', 'rw', 'nosuid', 'suid', 'nodev', 'dev', 'noexec', 'exec', 'relatime', 'norelatime',
         'noatime', 'atime', 'strictatime', 'nostrictatime', 'nodiratime', 'diratime', 'sync', 'async',
         'dirsync', 'lazytime', 'nolazytime', 'silent', 'loud', 'nosymfollow', 'symfollow')
# Propagation and recursion: accepted for a bind; each container has a private mount
# namespace of its own, so propagation has nothing to act on.
PROPAGATION = ('private', 'rprivate', 'shared', 'rshared', 'slave', 'rslave', 'unbindable',
               'runbindable')
# file-system data options each guest type takes (name before '=', or the whole word)
DATA = {
    'tmpfs': ('size', 'mode', 'nr_inodes', 'nr_blocks', 'uid', 'gid', 'huge', 'mpol'),
    'proc': ('hidepid', 'subset', 'gid'),
    'sysfs': (),
    'devpts': ('newinstance', 'ptmxmode', 'mode', 'gid', 'uid', 'max'),
    'mqueue': (),
    'cgroup': None,  # not mounted: anything goes
    'cgroup2': None,
}
MAX_MOUNTS = 64
MAX_LEN = 4096


def _bad(index, what, value, why):
    return InvalidArgument('mounts[%d]: %s %r %s' % (index, what, value, why))


def _text(index, what, value):
    if not isinstance(value, str) or not value:
        raise _bad(index, what, value, 'must be a non-empty string')
    if len(value) > MAX_LEN or any(ord(c) < 32 or c == '\x7f' for c in value):
        raise _bad(index, what, value[:80], 'must be at most %d characters without control characters' % MAX_LEN)
    return value


def normalise_destination(index, value):
    """An absolute path inside the container, without ``..``; ``//`` and ``.`` removed."""
    _text(index, 'destination', value)
    if not value.startswith('/'):
        raise _bad(index, 'destination', value, 'must be an absolute path inside the container')
    parts = [p for p in value.split('/') if p not in ('', '.')]
    if '..' in parts:
        raise _bad(index, 'destination', value, 'must not contain ".." (it would leave the container root)')
    if not parts:
        raise _bad(index, 'destination', value, 'is the container root: a mount cannot replace it')
    return '/' + '/'.join(parts)


def _host_source(index, value, bundle):
    _text(index, 'source', value)
    if not os.path.isabs(value):
        if bundle is None:
            raise _bad(index, 'source', value, 'must be an absolute host path')
        value = os.path.join(bundle, value)
    real = os.path.realpath(value)
    try:
        st = os.stat(real)
    except OSError as err:
        raise _bad(index, 'source', value, 'cannot be shared: %s' % (err.strerror or err)) from None
    if not (stat_mod.S_ISDIR(st.st_mode) or stat_mod.S_ISREG(st.st_mode)):
        raise _bad(index, 'source', value, 'is neither a directory nor a regular file')
    return real


def _options(index, kind, options):
    if options is None:
        return []
    if not isinstance(options, list):
        raise _bad(index, 'options', options, 'must be a list of strings')
    out = []
    for opt in options:
        _text(index, 'option', opt)
        if ',' in opt:
            raise _bad(index, 'option', opt, 'must be one option (no comma)')
        name = opt.split('=', 1)[0]
        if kind == BIND:
            if opt not in FLAGS + PROPAGATION + (BIND, 'rbind', 'defaults'):
                raise _bad(index, 'option', opt, 'is not a bind mount option this runtime supports '
                           '(%s)' % ', '.join(FLAGS[:8] + ('bind', 'rbind', '...')))
        elif DATA.get(kind) is not None and opt not in FLAGS + ('defaults',) and name not in DATA[kind]:
            raise _bad(index, 'option', opt, 'is not an option of a %s mount this runtime supports' % kind)
        out.append(opt)
    return out


def read_only(options):
    """The last of ro/rw wins, as with mount(8); rw by default."""
    ro = False
    for opt in options:
        if opt in ('ro', 'rw'):
            ro = opt == 'ro'
    return ro


def parse_mounts(mounts, bundle=None, field='mounts'):
    """config.json's ``mounts`` (None or a list) -> the normalised list; InvalidArgument names
    the entry. A bind's source is resolved (relative to the bundle, links followed) and must
    exist; ``rbind`` is kept in the options and done as a plain bind (see guest_plan)."""
    if mounts is None:
        return []
    if not isinstance(mounts, list):
        raise InvalidArgument('%s must be a list of mounts, got %r' % (field, mounts))
    if len(mounts) > MAX_MOUNTS:
        raise InvalidArgument('%s has %d entries; at most %d are supported' % (field, len(mounts), MAX_MOUNTS))
    out = []
    for index, entry in enumerate(mounts):
        if not isinstance(entry, dict):
            raise _bad(index, 'entry', entry, 'must be an object with destination, type, source, options')
        known = ('destination', 'type', 'source', 'options', 'uidMappings', 'gidMappings')
        unknown = sorted(k for k in entry if k not in known)
        if unknown:
            raise _bad(index, 'field', unknown[0], 'is not a field of a mount')
        if entry.get('uidMappings') or entry.get('gidMappings'):
            raise _bad(index, 'uidMappings/gidMappings', entry.get('uidMappings') or entry.get('gidMappings'),
                       'are not supported (idmapped mounts)')
        raw = entry.get('options')
        options = raw if isinstance(raw, list) else None
        kind = entry.get('type')
        if kind in (None, '', 'none', BIND) and options and any(o in (BIND, 'rbind') for o in options):
            kind = BIND
        elif kind == BIND:
            pass
        elif kind is None or kind == 'none':
            raise _bad(index, 'type', kind, 'needs the options bind or rbind (other mounts need a type)')
        elif not isinstance(kind, str) or kind not in GUEST_TYPES + WARNED_TYPES:
            raise _bad(index, 'type', kind, 'is not supported: this runtime mounts bind, %s (and ignores %s with '
                       'a warning)' % (', '.join(GUEST_TYPES), ', '.join(WARNED_TYPES)))
        destination = normalise_destination(index, entry.get('destination'))
        options = _options(index, kind, raw)
        if kind == BIND:
            source = _host_source(index, entry.get('source'), bundle)
        else:
            source = entry.get('source') or kind
            _text(index, 'source', source)
        out.append({'type': kind, 'source': source, 'destination': destination, 'options': options})
    _no_duplicates(out)
    return out


def _no_duplicates(mounts):
    seen = {}
    for index, m in enumerate(mounts):
        if m['destination'] in seen and m['type'] == BIND:
            raise _bad(index, 'destination', m['destination'], 'is also the destination of mounts[%d]'
                       % seen[m['destination']])
        seen.setdefault(m['destination'], index)


def parse_volumes(volumes):
    """kata_container's ``volumes``: ``HOST:CONTAINER[:ro|:rw]`` strings or dicts ``source``,
    ``destination``, ``read_only`` -> bind mounts in the normalised form."""
    if volumes is None:
        return []
    if not isinstance(volumes, list):
        raise InvalidArgument('volumes must be a list, got %r' % (volumes,))
    entries = []
    for index, vol in enumerate(volumes):
        if isinstance(vol, str):
            parts = vol.split(':')
            if len(parts) == 3 and parts[2] in ('ro', 'rw'):
                source, destination, ro = parts[0], parts[1], parts[2] == 'ro'
            elif len(parts) == 2:
                source, destination, ro = parts[0], parts[1], False
            else:
                raise InvalidArgument('volumes[%d]: %r is not HOST:CONTAINER[:ro] (a path with ":" needs the '
                                      'dict form source/destination/read_only)' % (index, vol))
        elif isinstance(vol, dict):
            unknown = sorted(k for k in vol if k not in ('source', 'destination', 'read_only'))
            if unknown:
                raise InvalidArgument('volumes[%d]: unknown key %r (known: source, destination, read_only)'
                                      % (index, unknown[0]))
            source, destination = vol.get('source'), vol.get('destination')
            ro = vol.get('read_only', False)
            if ro is None:
                ro = False
            if not isinstance(ro, bool):
                raise InvalidArgument('volumes[%d]: read_only must be true or false, got %r' % (index, ro))
        else:
            raise InvalidArgument('volumes[%d]: %r must be a HOST:CONTAINER[:ro] string or a dict' % (index, vol))
        if not isinstance(source, str) or not os.path.isabs(source):
            raise InvalidArgument('volumes[%d]: source %r must be an absolute host path' % (index, source))
        entries.append({'type': BIND, 'source': source, 'destination': destination,
                        'options': ['bind', 'ro' if ro else 'rw']})
    try:
        return parse_mounts(entries, field='volumes')
    except InvalidArgument as err:
        raise InvalidArgument(str(err).replace('mounts[', 'volumes[')) from None


# ---------------------------------------------------------------------------------------------
# host checks

def _inside(path, top):
    top = top.rstrip('/') or '/'
    return path == top or path.startswith(top.rstrip('/') + '/')


def user_xattrs_supported(path):
    """True when the file system of ``path`` keeps user.* xattrs, asked without writing: a
    missing attribute (ENODATA) says it does, EOPNOTSUPP that it does not."""
    try:
        os.getxattr(path, 'user.kata.probe', follow_symlinks=False)
    except OSError as err:
        return err.errno != errno.EOPNOTSUPP
    return True


def check_sources(rt, mounts):
    """Refuse, touching nothing, a bind source that is (in, or holds) the state root, and a
    read-write one on a file system without user xattrs (9p ``mapped`` mode needs them)."""
    root = os.path.realpath(rt.store.root)
    for index, m in enumerate(mounts):
        if m['type'] != BIND:
            continue
        src = m['source']
        if _inside(src, root) or _inside(root, src):
            raise _bad(index, 'source', src, 'is %s the runtime state root %s: never shared with a guest'
                       % ('inside' if _inside(src, root) else 'a parent of', root))
        if not os.path.exists(src):
            raise _bad(index, 'source', src, 'does not exist any more')
        if not read_only(m['options']) and not user_xattrs_supported(src):
            raise _bad(index, 'source', src, 'is on a file system without user xattrs (tmpfs before Linux 6.6?): '
                       'a read-write volume keeps what the guest sets (owners, modes) in them; share it '
                       'read-only or from another file system')


# ---------------------------------------------------------------------------------------------
# the guest's part

def guest_source(cid, index, ro):
    """Where the guest finds bind ``index`` of container ``cid``."""
    if ro:
        return '%s/%s/volumes/%d' % (contract.SHARED_MOUNT, cid, index)
    return '%s/%s@%d' % (contract.VOLUMES_MOUNT, cid, index)


def _bind_flags(options):
    """The per-mount flags a bind gets in the guest (``remount,bind,<flags>``)."""
    flags = ['ro' if read_only(options) else 'rw']
    flags += [o for o in options if o in FLAGS and o not in ('ro', 'rw')]
    return flags


def binds(mounts):
    """[(bind index, mount)] of the bind mounts, in order."""
    return list(enumerate(m for m in mounts if m['type'] == BIND))


def guest_plan(cid, mounts):
    """(the agent's ``mounts`` param, warnings). Each entry: ``type``, ``source``,
    ``destination``, ``options``; a bind's source is its guest path, its options the flags of
    its remount, and ``file`` says whether it is a file."""
    out, warnings = [], []
    n = 0
    for m in mounts:
        if (m['type'], m['destination']) in BUILTIN:
            continue  # the container's init mounts it (guest/exec_init.py)
        if m['type'] in WARNED_TYPES:
            warnings.append('container %s: mount of type %s at %s is not made: the guest does not give containers '
                            'a cgroup file system' % (cid, m['type'], m['destination']))
            continue
        if m['type'] == BIND:
            if 'rbind' in m['options']:
                warnings.append('container %s: rbind of %s is done as a bind: file systems mounted below it are '
                                'not shared' % (cid, m['source']))
            out.append({'type': BIND, 'source': guest_source(cid, n, read_only(m['options'])),
                        'destination': m['destination'], 'options': _bind_flags(m['options']),
                        'file': not os.path.isdir(m['source'])})
            n += 1
        else:
            opts = [o for o in m['options'] if o != 'defaults']
            out.append({'type': m['type'], 'source': m['source'], 'destination': m['destination'],
                        'options': opts, 'file': False})
    return out, warnings


# ---------------------------------------------------------------------------------------------
# the host's part: bind mounts where the VMM's 9p server sees them

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _open_dir_at(fd, name, path, cid):
    try:
        os.mkdir(name, 0o700, dir_fd=fd)
    except FileExistsError:
        pass
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=fd)
    except OSError as err:
        what = 'a symlink' if os.path.islink(path) else 'not a directory (%s)' % err.strerror
        raise KataError('cannot share the volumes of container %s: %s is %s; refusing to mount over it'
                        % (cid, path, what)) from None


def _make_point(fd, name, path, is_dir, cid):
    """A mount point ``name`` under directory ``fd``, by descriptor, never through a link."""
    try:
        if is_dir:
            os.mkdir(name, 0o700, dir_fd=fd)
        else:
            os.close(os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                             dir_fd=fd))
    except FileExistsError:
        pass
    st = os.stat(name, dir_fd=fd, follow_symlinks=False)
    if (is_dir and not stat_mod.S_ISDIR(st.st_mode)) or (not is_dir and not stat_mod.S_ISREG(st.st_mode)):
        raise KataError('cannot share a volume of container %s: %s is not a %s of ours; refusing to mount '
                        'over it' % (cid, path, 'directory' if is_dir else 'file'))


def mount_point(rt, sid, cid, index, ro, is_dir):
    """Create the host mount point of bind ``index`` and return its path."""
    store = rt.store
    if ro:
        base = share.shared_dir(store, sid)
        fd = os.open(base, _DIR_FLAGS)
        path = base
        try:
            for name in (cid, 'volumes'):
                path = os.path.join(path, name)
                child = _open_dir_at(fd, name, path, cid)
                os.close(fd)
                fd = child
            name = str(index)
            _make_point(fd, name, os.path.join(path, name), is_dir, cid)
        finally:
            os.close(fd)
        return os.path.join(path, name)
    base = share.volumes_dir(store, sid)
    name = '%s@%d' % (cid, index)
    fd = os.open(base, _DIR_FLAGS)
    try:
        _make_point(fd, name, os.path.join(base, name), is_dir, cid)
    finally:
        os.close(fd)
    return os.path.join(base, name)


def _ns_path(ns, path):
    return path if ns == 'self' else '/proc/%d/root%s' % (ns, path)


def bind(rt, srec, rec, trace, save=None):
    """Bind each volume of ``rec`` where the guest sees it; ``rec.volume_mounts`` lists
    each target before its mount is made (``save()`` persists that), so a delete finds it.

    Checked after each mount: read-only when asked, and the very file or directory the
    operator named (a file system mounted on the host after the VMM started is not in its
    mount namespace: then the bind is removed again and the error says so).
    """
    sid, cid = srec.id, rec.id
    for index, m in binds(rec.mounts):
        ro = read_only(m['options'])
        src = m['source']
        try:
            want = os.stat(src)
        except OSError as err:
            raise KataError('volume %s of container %s cannot be shared: %s' % (src, cid, err.strerror)) from None
        is_dir = stat_mod.S_ISDIR(want.st_mode)
        if not ro and not mountinfo.is_mounted(share.volumes_dir(rt.store, sid)):
            raise KataError('sandbox %s was started without the read-write volume share (it predates it): '
                            'recreate the sandbox to share %s read-write' % (sid, src))
        target = mount_point(rt, sid, cid, index, ro, is_dir)
        flags = 'ro,nosuid,nodev' if ro else 'nosuid,nodev'
        cmd, ns = share._vmm_mount_cmd(rt, srec, ['mount', '--bind', '-o', flags, src, target])
        rec.volume_mounts.append({'target': target, 'host': ns == 'self'})
        if save is not None:
            save()
        share._run(cmd, 'sharing volume %s with the guest' % src)
        opts = [x[1] for x in mountinfo.mounts(ns) if x[0] == target]
        problem = None
        if not opts:
            problem = 'it is not mounted'
        elif ro and 'ro' not in opts[-1].split(','):
            problem = 'it is not read-only (%s)' % opts[-1]
        else:
            try:
                got = os.stat(_ns_path(ns, target))
                if (got.st_dev, got.st_ino) != (want.st_dev, want.st_ino):
                    problem = ('the VMM sees another file there: %s is not in its mount namespace (a file system '
                               'mounted after the sandbox started?)' % src)
            except OSError as err:
                problem = 'it cannot be checked (%s)' % err.strerror
        if problem:
            unbind(rt, srec, rec, trace)
            raise KataError('the bind of volume %s of container %s at %s failed its check: %s; removed it'
                            % (src, cid, target, problem))
        trace.step('shared volume %s %s with the guest' % (src, 'read-only' if ro else 'read-write'))


def points_of(rt, sid, cid, ns='self'):
    """The volume mount points of container ``cid`` in mount namespace ``ns``, deepest first."""
    own = os.path.join(share.shared_dir(rt.store, sid), cid, 'volumes')
    found = list(mountinfo.under(own, ns))
    vdir = share.volumes_dir(rt.store, sid)
    prefix = os.path.join(os.path.realpath(vdir), cid + '@')
    found += sorted(p for p in mountinfo.points(ns) if p.startswith(prefix) and '/' not in p[len(prefix):])
    return found


def unbind(rt, srec, rec, trace):
    """Unmount every volume of the container, in the VMM's namespace (a running or paused VM)
    and in ours, found by name as well as by the record (what an interrupted create left), then
    remove the read-write mount points. Idempotent; lazy, so a busy volume cannot block a delete."""
    sid, cid = srec.id, rec.id
    done = 0
    if rt.hv.state(srec.domain) in VmState.LIVE:
        cmd, ns = share._vmm_mount_cmd(rt, srec, ['true'])
        if ns != 'self':
            for point in points_of(rt, sid, cid, ns):
                share._run(cmd[:-1] + ['umount', '-l', point], 'unmounting %s' % point)
                done += 1
    for point in points_of(rt, sid, cid):
        share._run(['umount', '-l', point], 'unmounting %s' % point)
        done += 1
    _remove_points(rt, sid, cid)
    if done:
        trace.step('unshared %d volume(s) of container %s' % (done, cid))
    if rec.volume_mounts:
        rec.volume_mounts = []


def _remove_points(rt, sid, cid):
    """The read-write mount points ``volumes/<cid>@<n>``: unlinked or rmdir'd by descriptor
    (``shared/<cid>`` goes with share.remove_container_dirs)."""
    base = share.volumes_dir(rt.store, sid)
    try:
        fd = os.open(base, _DIR_FLAGS)
    except OSError:
        return
    try:
        for name in os.listdir(fd):
            if not name.startswith(cid + '@') or not name[len(cid) + 1:].isdigit():
                continue
            if mountinfo.is_mounted(os.path.join(base, name)):
                continue
            try:
                os.rmdir(name, dir_fd=fd)
            except NotADirectoryError:
                os.unlink(name, dir_fd=fd)
            except OSError:
                pass
    finally:
        os.close(fd)
