# Copyright: kata.runtime contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Small helpers every step of the guest image build uses: hashing, reading and atomically
writing files, running a tool, telling the caller about slow steps."""

from __future__ import annotations

import hashlib
import os
import subprocess
import tempfile

from ansible_collections.kata.runtime.plugins.module_utils.kata.errors import ImageError


def sha256(data):
    return hashlib.sha256(data).hexdigest()


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(1 << 20), b''):
            h.update(chunk)
    return h.hexdigest()


def read_file(path):
    with open(path, 'rb') as f:
        return f.read()


def run(argv, cwd=None, what=None):
    try:
        proc = subprocess.run(argv, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              check=False)
    except OSError as err:
        raise ImageError('cannot run %s: %s' % (argv[0], err))
    if proc.returncode != 0:
        raise ImageError('%s failed (exit %d): %s' % (
            what or ' '.join(argv), proc.returncode,
            proc.stderr.decode('utf-8', 'replace').strip()[-2000:]))
    return proc.stdout.decode('utf-8', 'replace')


def write_atomic(path, data):
    d = os.path.dirname(path)
    fd, tmp = tempfile.mkstemp(dir=d, prefix='.tmp-')
    try:
        with os.fdopen(fd, 'wb') as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def symlink_atomic(target, link):
    """Point ``link`` at ``target`` (relative name); return True when it changed."""
    try:
        if os.readlink(link) == target:
            return False
    except OSError:
        pass
    tmp = '%s.tmp-%d' % (link, os.getpid())
    if os.path.lexists(tmp):
        os.unlink(tmp)
    os.symlink(target, tmp)
    os.replace(tmp, link)
    return True


def report(progress, msg):
    if progress is not None:
        progress(msg)
