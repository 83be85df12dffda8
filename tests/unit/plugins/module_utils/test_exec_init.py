# Copyright: kata.runtime contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The containers' init (guest/exec_init.py) on its own: run the way the agent runs it, with the
command line ``exec_init_argv`` writes, into a rootfs without proc or dev (so it mounts nothing
and needs no namespaces). How it behaves inside the namespaces, through the agent, is
test_agent.py's; that the initrd's Python runs it, test_image.py's."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
from ansible_collections.kata.runtime.plugins.module_utils.kata.guest import agent as guest_agent
from ansible_collections.kata.runtime.plugins.module_utils.kata.guest import exec_init, image

BUSYBOX = shutil.which('busybox') or '/bin/busybox'
needs_root = pytest.mark.skipif(os.geteuid() != 0 or not os.access(BUSYBOX, os.X_OK),
                                reason='needs root (chroot) and a static busybox')


def test_the_agent_runs_the_init_next_to_itself_in_the_collection_and_in_the_initrd():
    assert guest_agent.EXEC_INIT_PATH == os.path.abspath(exec_init.__file__)
    assert os.path.dirname(image.EXEC_INIT_PATH) == os.path.dirname(image.AGENT_PATH)
    assert os.path.basename(image.EXEC_INIT_PATH) == os.path.basename(guest_agent.EXEC_INIT_PATH)
    with open(exec_init.__file__, 'rb') as fh:
        assert image.exec_init_source() == fh.read()


def test_importing_it_does_nothing():
    # A fresh interpreter: importing the module must neither run main() nor need arguments.
    proc = subprocess.run([sys.executable, '-I', '-S', '-c', 'import runpy; runpy.run_path(%r, run_name="x")'
                           % exec_init.__file__], stdout=subprocess.PIPE, stderr=subprocess.PIPE, check=False)
    assert proc.returncode == 0 and proc.stdout == b'' and proc.stderr == b''


@pytest.fixture
def rootfs(tmp_path):
    root = tmp_path / 'rootfs'
    (root / 'bin').mkdir(parents=True)
    (root / 'work').mkdir()
    shutil.copy2(BUSYBOX, root / 'bin' / 'busybox')
    for applet in ('sh', 'echo', 'id'):
        os.symlink('busybox', root / 'bin' / applet)
    return root


def run_init(tmp_path, rootfs, args, env=(), cwd='/', uid=0, gid=0):
    """Run exec_init.py as the agent would (minus ``busybox unshare``); returns
    (exit code, stdout, what it wrote on the FIFO)."""
    fifo = str(tmp_path / 'status')
    os.mkfifo(fifo, 0o600)
    status_r = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    spec = {'rootfs': str(rootfs), 'hostname': None, 'cwd': cwd, 'uid': uid, 'gid': gid,
            'env': list(env), 'args': list(args)}
    try:
        argv = guest_agent.exec_init_argv(sys.executable, spec, fifo, BUSYBOX)
        proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=30, check=False)
        os.set_blocking(status_r, True)
        status = b''
        while True:
            chunk = os.read(status_r, 4096)
            if not chunk:
                break
            status += chunk
    finally:
        os.close(status_r)
    return proc.returncode, proc.stdout.decode(), status.decode()


@needs_root
def test_execs_the_command_in_the_rootfs_with_its_env_cwd_and_ids(tmp_path, rootfs):
    code, out, status = run_init(tmp_path, rootfs, ['sh', '-c', 'echo "$FOO $(pwd) $(id -u):$(id -g) $PATH"'],
                                 env=['FOO=bar'], cwd='/work', uid=1234, gid=4321)
    assert (code, status) == (0, '')
    assert out == 'bar /work 1234:4321 %s\n' % guest_agent.DEFAULT_PATH


@needs_root
def test_the_env_path_wins_over_the_default(tmp_path, rootfs):
    code, out, status = run_init(tmp_path, rootfs, ['/bin/sh', '-c', 'echo $PATH'], env=['PATH=/bin'])
    assert (code, out, status) == (0, '/bin\n', '')


@needs_root
@pytest.mark.parametrize('args, cwd, code, message', [
    (['no-such-binary'], '/', 127, 'exec no-such-binary: executable file not found in $PATH'),
    (['/bin/busybox', 'true'], '/no/such/dir', 1, 'cannot change to cwd /no/such/dir: No such file or directory'),
])
def test_setup_errors_go_to_the_fifo(tmp_path, rootfs, args, cwd, code, message):
    assert run_init(tmp_path, rootfs, args, cwd=cwd) == (code, '', message)
