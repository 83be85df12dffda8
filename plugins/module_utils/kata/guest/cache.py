# Copyright: kata.runtime contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The image cache's index: one small JSON record per built output under ``<dest>/cache``.

A record is named after the digest of the output's inputs: ``kernel-<sha>.json`` after the
vmlinuz it was extracted from, ``initrd-<sha>.json`` after the digest of everything that goes
into the initrd. The build and its plan (check mode) look a record up the same way: it counts
only when it holds what the build wrote and the output it names is there (and, with
``verify``, still has its size and checksum). Anything else means "build it again".
"""

from __future__ import annotations

import glob
import json
import os

from ansible_collections.kata.runtime.plugins.module_utils.kata.guest.buildutil import sha256_file, write_atomic

# What a record of each kind must hold to be used.
FIELDS = {
    'kernel': ('name', 'sha256', 'size', 'extracted', 'method'),
    'initrd': ('name', 'sha256', 'size', 'modules', 'compress'),
}


def record_path(dest, kind, key):
    """Where the record of the ``kind`` output built from inputs ``key`` (a hex digest) lives."""
    return os.path.join(dest, 'cache', '%s-%s.json' % (kind, key[:32]))


def lookup(dest, kind, key, verify=False):
    """The record of an earlier build of ``kind`` from inputs ``key`` whose output is still in
    ``dest`` (and intact, with ``verify``), or None."""
    try:
        with open(record_path(dest, kind, key), encoding='utf-8') as handle:
            rec = json.load(handle)
    except (OSError, ValueError):
        return None
    if not isinstance(rec, dict) or not isinstance(rec.get('name'), str) or any(f not in rec for f in FIELDS[kind]):
        return None
    path = os.path.join(dest, rec['name'])
    if not os.path.isfile(path):
        return None
    if verify and not (os.path.getsize(path) == rec['size'] and sha256_file(path) == rec['sha256']):
        return None
    return rec


def save(dest, kind, key, rec):
    """Record that the ``kind`` output ``rec['name']`` was built from inputs ``key``."""
    write_atomic(record_path(dest, kind, key), json.dumps(rec, sort_keys=True).encode('utf-8'))


def forget_build_records(dest):
    """Drop the cache's records of earlier builds so the builder re-derives and verifies every output.

    Only the small JSON records go; downloaded kernel packages stay.
    """
    cache = os.path.join(dest, 'cache')
    for pattern in ('%s-*.json' % kind for kind in FIELDS):
        for path in glob.glob(os.path.join(cache, pattern)):
            os.unlink(path)
