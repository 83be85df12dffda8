# Copyright: kata.runtime contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The guest is hostile: what it does through its shares and console never reaches the host.

Real guests through libvirtd. A container running as guest root tries what a breakout would
(setuid bits, device nodes, ownership changes, link swaps, a stdout flood), and a test-only
initrd -- the real image builder with a prelude prepended to the real agent, so nothing
test-only ships -- plants links, special files and a deep tree in the writable share and floods
the console before the agent starts. After each: the host rootfs and a canary directory are
unchanged (modes, owners, contents), nothing is mounted outside the sandbox's tree, the
sandbox's usage stayed under its caps, and a forced delete leaves nothing.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import stat
import textwrap
import xml.etree.ElementTree as ET

import pytest
import yaml
from ansible_collections.kata.runtime.plugins.module_utils.kata import container as ctr
from ansible_collections.kata.runtime.plugins.module_utils.kata import mountinfo, share
from ansible_collections.kata.runtime.plugins.module_utils.kata import sandbox as sbx
from ansible_collections.kata.runtime.plugins.module_utils.kata.config import load_config
from ansible_collections.kata.runtime.plugins.module_utils.kata.errors import KataError
from ansible_collections.kata.runtime.plugins.module_utils.kata.guest import image
from ansible_collections.kata.runtime.plugins.module_utils.kata.guest.kernel import prepare_kernel
from ansible_collections.kata.runtime.plugins.module_utils.kata.runtime import Runtime
from conftest import IMAGE_DIR, snapshot, virsh

WRITE_LIMIT_MB = 4
CONSOLE_LIMIT_KB = 64


@pytest.fixture
def env(kata_envs):
    e = kata_envs('hg')
    e.config.update({'guest_write_limit_mb': WRITE_LIMIT_MB, 'console_log_limit_kb': CONSOLE_LIMIT_KB})
    with open(e.config_path, 'w') as f:
        yaml.safe_dump(e.config, f, default_flow_style=False)
    yield e
    left, skeleton, prune = e.teardown()
    assert not left, 'left behind: %s\n%s' % (json.dumps(left, indent=1), prune[2][-3000:])


@pytest.fixture
def canary(tmp_path):
    path = tmp_path / 'canary'
    path.mkdir()
    (path / 'secret').write_text('host secret\n')
    os.chmod(str(path / 'secret'), 0o600)
    return str(path)


def walk_iteratively(top):
    """Every path under ``top`` without following links (os.walk recurses: the guest's tree
    is deeper than Python's recursion limit)."""
    stack = [top]
    while stack:
        for entry in os.scandir(stack.pop()):
            yield entry.path
            if entry.is_dir(follow_symlinks=False):
                stack.append(entry.path)


def mount_points():
    return {m[0] for m in mountinfo.mounts()}


def assert_confined(rt, sid, mounts_before):
    """Nothing new is mounted outside the sandbox's own tree; its usage is within the caps;
    the writable share's mount flags keep whatever the guest made there inert."""
    sdir = os.path.realpath(rt.store.sandbox_dir(sid))
    new = {p for p in mount_points() - mounts_before if not p.startswith(sdir + '/')}
    assert not new, 'mounted outside the sandbox: %s' % sorted(new)
    out = share.output_dir(rt.store, sid)
    assert share.usage(out) <= WRITE_LIMIT_MB * 1024 * 1024
    console = share.console_log(rt.store, sid)
    assert os.path.getsize(console) <= CONSOLE_LIMIT_KB * 1024
    opts = {m[0]: m[1] for m in mountinfo.mounts()}[os.path.realpath(out)].split(',')
    assert {'nosuid', 'nodev', 'noexec', 'nosymfollow'} <= set(opts), opts


def output_accessmode(domain):
    root = ET.fromstring(virsh('dumpxml', domain).stdout)
    for fs in root.iter('filesystem'):
        if fs.find('target').get('dir') == 'kataOutput':
            return fs.get('accessmode')
    return None


def test_container_as_guest_root_cannot_change_host_files(env, busybox_rootfs, canary, tmp_path):
    rt = Runtime(load_config(env.config_path))
    trace = rt.trace()
    before_root, before_canary = snapshot(busybox_rootfs), snapshot(canary)
    mounts_before = mount_points()
    sbx.create(rt, 'sb', sbx.settings_from(rt.config, {}), trace=trace)
    # The VMM runs as root (docs/security.md says why) but inside QEMU's seccomp sandbox.
    with open('/proc/%d/status' % sbx.info(rt, rt.store.load_sandbox('sb'))['pid']) as f:
        status = dict(line.split(':', 1) for line in f.read().splitlines() if ':' in line)
    assert status['Seccomp'].strip() == '2' and status['NoNewPrivs'].strip() == '1', status

    script = textwrap.dedent('''\
        chown 1234:1234 /bin/busybox; echo chown=$?
        chmod 4755 /bin/busybox; echo chmod=$?
        mknod /blk b 8 0; echo mknod=$?
        rm -f /bin/sh.new; ln -s %s /bin/sh.new && mv -f /bin/sh.new /bin/yes; echo swap=$?
        ln -s /proc/1/root /bin/escape; echo link=$?
        echo written > /bin/new-file; cat /bin/new-file
        ls -l /bin/busybox /blk
        s=A; for i in 1 2 3 4 5 6 7 8 9 10; do s=$s$s; done
        n=0; while echo "$s"; do n=$((n+1)); [ $n -lt 16384 ] || break; done; echo flood=$n >&2
        ''' % canary)
    settings = ctr.settings_from({'rootfs': busybox_rootfs, 'command': ['/bin/busybox', 'sh', '-c', script]})
    ctr.create(rt, 'sb', 'evil', settings, trace=trace)
    ctr.start(rt, 'evil', trace=trace)
    done = ctr.wait_for(rt, 'evil', 120)
    assert done['status'] == 'stopped', done
    with open(done['stdout_path'], 'rb') as f:
        head = f.read(4096).decode('utf-8', 'replace')
    # Inside its own world every operation worked, on the overlay in guest memory...
    for line in ('chown=0', 'chmod=0', 'mknod=0', 'swap=0', 'link=0', 'written'):
        assert line in head, head
    assert '-rwsr-xr-x' in head and '1234' in head, head
    # ...and none of it reached the host.
    assert snapshot(busybox_rootfs) == before_root
    assert snapshot(canary) == before_canary
    # The flood stopped at the cap: the guest got ENOSPC, the host kept going.
    size = os.path.getsize(done['stdout_path'])
    with open(done['stderr_path'], errors='replace') as f:
        err = f.read()
    assert WRITE_LIMIT_MB * 1024 * 1024 >= size > 1024 * 1024, (size, err)
    assert_confined(rt, 'sb', mounts_before)
    # Deleting the container gives its share of the cap back.
    assert ctr.delete(rt, 'evil', trace=trace)
    assert share.usage(share.output_dir(rt.store, 'sb')) < 1024 * 1024

    # A read-only rootfs is read-only inside the guest too.
    seen = tmp_path / 'hook'
    seen.mkdir()
    hook = {'path': '/bin/sh', 'args': ['sh', '-c', 'pwd > %s/cwd; cat > %s/state' % (seen, seen)]}
    settings = ctr.settings_from({'rootfs': busybox_rootfs, 'readonly_rootfs': True,
                                  'hooks': {'prestart': [hook]},
                                  'command': ['/bin/sh', '-c', 'touch /made-here; echo touch=$?']})
    ctr.create(rt, 'sb', 'ro', settings, trace=trace)
    ctr.start(rt, 'ro', trace=trace)
    done = ctr.wait_for(rt, 'ro', 60)
    with open(done['stdout_path']) as f:
        assert f.read().strip() == 'touch=1'
    with open(done['stderr_path']) as f:
        assert 'Read-only file system' in f.read()
    assert rt.store.load_container('sb', 'ro').readonly_rootfs is True

    # Hooks get a host-owned bundle with the generated config.json, not the rootfs.
    bundle = rt.store.load_container('sb', 'ro').bundle_dir
    assert bundle == share.bundle_dir(rt.store, 'sb', 'ro')
    with open(os.path.join(bundle, 'config.json')) as f:
        assert json.load(f)['root'] == {'path': os.path.realpath(busybox_rootfs), 'readonly': True}
    assert stat.S_IMODE(os.stat(bundle).st_mode) == 0o700
    assert (seen / 'cwd').read_text().strip() == bundle
    assert json.loads((seen / 'state').read_text())['bundle'] == bundle

    assert sbx.delete(rt, 'sb', force=True, trace=trace)
    assert snapshot(busybox_rootfs) == before_root
    assert not os.path.exists(rt.store.sandbox_dir('sb'))


# The prelude runs in the guest before the real agent's main(), with the shares already mounted: it does
# what a guest whose kernel was taken over can do to its shares and its console.
PRELUDE = r'''
import os as _os


def _kata_test_plant(canary):
    out, shared = '/run/kata-containers/output', '/run/kata-containers/shared'
    said = []
    for what, call in (
            ('symlink in shared', lambda: _os.symlink('/etc', shared + '/victim')),
            ('mkdir in shared', lambda: _os.mkdir(shared + '/victim')),
            ('output dir symlink', lambda: _os.symlink(canary, out + '/victim')),
            ('stdout symlink', lambda: (_os.mkdir(out + '/c2'),
                                        _os.symlink(canary + '/secret', out + '/c2/stdout'))),
            ('device node', lambda: _os.mknod(out + '/sda', 0o60600, _os.makedev(8, 0))),
            ('setuid file', lambda: (open(out + '/suid', 'w').close(), _os.chmod(out + '/suid', 0o4755))),
            ('chown file', lambda: _os.chown(out + '/suid', 1234, 1234)),
            ('fifo', lambda: _os.mkfifo(out + '/fifo'))):
        try:
            call()
            said.append('%s: done' % what)
        except OSError as err:
            said.append('%s: %s' % (what, err.strerror))
    fd = _os.open(out, _os.O_RDONLY | _os.O_DIRECTORY)
    depth = 0
    try:
        for depth in range(1, 1501):
            _os.mkdir('d', dir_fd=fd)
            nfd = _os.open('d', _os.O_RDONLY | _os.O_DIRECTORY, dir_fd=fd)
            _os.close(fd)
            fd = nfd
    except OSError as err:
        said.append('deep tree stopped at %d: %s' % (depth, err.strerror))
    _os.close(fd)
    said.append('deep tree: %d levels' % depth)
    with open('/dev/console', 'w') as console:
        for line in said:
            console.write('kata-test: %s\n' % line)
        console.flush()
        block = 'F' * 1023 + '\n'
        for _i in range(512):
            console.write(block)


_kata_test_plant(@CANARY@)
'''


@pytest.fixture
def hostile_initrd(guest_image, tmp_path, canary):
    """The real initrd with the prelude prepended to the real agent."""
    vmlinuz, mdir, ver, source = prepare_kernel(IMAGE_DIR, None, None, None)
    main = b"\nif __name__ == '__main__':"
    source = image.agent_source()
    assert source.count(main) == 1
    agent = source.replace(main, PRELUDE.replace('@CANARY@', repr(canary)).encode('utf-8') + main)
    out = str(tmp_path / 'hostile-image')
    rec = image.build_initrd(out, mdir, ver, agent=agent)
    yield os.path.join(out, rec['name'])
    shutil.rmtree(out, ignore_errors=True)


def test_planted_share_and_console_flood_stay_in_the_sandbox(env, busybox_rootfs, canary, hostile_initrd):
    rt = Runtime(load_config(env.config_path))
    trace = rt.trace()
    before_root, before_canary = snapshot(busybox_rootfs), snapshot(canary)
    mounts_before = mount_points()
    rec = sbx.create(rt, 'sb', sbx.settings_from(rt.config, {'initrd': hostile_initrd}), trace=trace)
    with open(share.console_log(rt.store, 'sb'), errors='replace') as f:
        console = f.read()
    # The read-only share refused everything; the console log was cut at its cap.
    assert 'kata-test: symlink in shared: Read-only file system' in console, console[-3000:]
    assert 'kata-test: mkdir in shared: Read-only file system' in console, console[-3000:]
    assert 'deep tree: 1500 levels' in console
    assert_confined(rt, 'sb', mounts_before)

    # On the host: nothing the guest made is a link, a device, a fifo or setuid -- or, where
    # the kernel cannot keep user xattrs on tmpfs (squash mode), the mount makes them inert.
    out = share.output_dir(rt.store, 'sb')
    mode = output_accessmode(rec.domain)
    assert mode in ('mapped', 'squash')
    if mode == 'mapped':
        for path in walk_iteratively(out):
            st = os.lstat(path)
            assert stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode), (path, oct(st.st_mode))
            assert not st.st_mode & (stat.S_ISUID | stat.S_ISGID), (path, oct(st.st_mode))
            assert (st.st_uid, st.st_gid) == (0, 0), path
    # A planted link is never followed by a host reader: a plain file holding the link's
    # text (mapped) or ELOOP (nosymfollow).
    try:
        with open(os.path.join(out, 'c2', 'stdout')) as f:
            data = f.read()
    except OSError as err:
        assert err.errno == errno.ELOOP, err
    else:
        assert 'host secret' not in data and data == canary + '/secret', data

    # A container whose output dir the guest planted fails alone, with a clear error.
    settings = ctr.settings_from({'rootfs': busybox_rootfs, 'command': ['/bin/true']})
    ctr.create(rt, 'sb', 'victim', settings, trace=trace)
    try:
        ctr.start(rt, 'victim', trace=trace)
    except KataError as err:
        assert 'victim' in str(err)
    ok = ctr.settings_from({'rootfs': busybox_rootfs, 'command': ['/bin/sh', '-c', 'echo fine']})
    ctr.create(rt, 'sb', 'ok', ok, trace=trace)
    ctr.start(rt, 'ok', trace=trace)
    done = ctr.wait_for(rt, 'ok', 60)
    with open(done['stdout_path']) as f:
        assert f.read() == 'fine\n'

    assert snapshot(canary) == before_canary
    assert snapshot(busybox_rootfs) == before_root
    assert sbx.delete(rt, 'sb', force=True, trace=trace)
    assert not os.path.exists(rt.store.sandbox_dir('sb'))
    assert not [p for p in mount_points() if p.startswith(os.path.realpath(env.state_root))]
