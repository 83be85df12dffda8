# Copyright: kata.runtime contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The image cache's index, which the build and its plan (check mode) both consult: a record
counts only when it is whole and the output it names is there (and intact, when verified)."""

from __future__ import annotations

import hashlib
import json
import os

import pytest
from ansible_collections.kata.runtime.plugins.module_utils.kata.guest import cache

KEY = hashlib.sha256(b'inputs').hexdigest()
DATA = b'\x7fELF' + b'k' * 100


def _built(dest, kind='kernel', **extra):
    """An output in ``dest`` and its record, as the build leaves them."""
    os.makedirs(os.path.join(dest, 'cache'), exist_ok=True)
    name = 'out-%s' % kind
    with open(os.path.join(dest, name), 'wb') as f:
        f.write(DATA)
    rec = {'name': name, 'sha256': hashlib.sha256(DATA).hexdigest(), 'size': len(DATA),
           'extracted': True, 'method': 'xz@1', 'modules': ['9p'], 'compress': 'none'}
    rec.update(extra)
    cache.save(dest, kind, KEY, rec)
    return rec


@pytest.mark.parametrize('kind', sorted(cache.FIELDS))
def test_a_saved_record_is_found_by_its_inputs_and_kind(tmp_path, kind):
    rec = _built(str(tmp_path), kind)
    assert os.path.basename(cache.record_path(str(tmp_path), kind, KEY)) == '%s-%s.json' % (kind, KEY[:32])
    assert cache.lookup(str(tmp_path), kind, KEY) == rec
    assert cache.lookup(str(tmp_path), kind, KEY, verify=True) == rec
    assert cache.lookup(str(tmp_path), kind, hashlib.sha256(b'other').hexdigest()) is None
    other = 'initrd' if kind == 'kernel' else 'kernel'
    assert cache.lookup(str(tmp_path), other, KEY) is None


def test_a_record_whose_output_is_gone_or_changed_does_not_count(tmp_path):
    rec = _built(str(tmp_path))
    out = tmp_path / rec['name']
    out.write_bytes(DATA[:-1] + b'X')            # same size, other bytes: seen only when verifying
    assert cache.lookup(str(tmp_path), 'kernel', KEY) == rec
    assert cache.lookup(str(tmp_path), 'kernel', KEY, verify=True) is None
    out.write_bytes(DATA + b'more')
    assert cache.lookup(str(tmp_path), 'kernel', KEY, verify=True) is None
    out.unlink()
    assert cache.lookup(str(tmp_path), 'kernel', KEY) is None


@pytest.mark.parametrize('text', ['', '{', '[]', '"x"', '{"name": 5}', json.dumps({'name': 'out-kernel'}),
                                  json.dumps({'name': 'out-kernel', 'sha256': 'x', 'size': 1, 'extracted': True})])
def test_a_torn_or_partial_record_does_not_count(tmp_path, text):
    _built(str(tmp_path))
    with open(cache.record_path(str(tmp_path), 'kernel', KEY), 'w') as f:
        f.write(text)
    assert cache.lookup(str(tmp_path), 'kernel', KEY) is None


def test_forget_drops_the_records_and_keeps_the_rest(tmp_path):
    _built(str(tmp_path), 'kernel')
    _built(str(tmp_path), 'initrd')
    (tmp_path / 'cache' / 'linux-image-x_1_amd64.deb').write_bytes(b'deb')
    cache.forget_build_records(str(tmp_path))
    assert sorted(os.listdir(tmp_path / 'cache')) == ['linux-image-x_1_amd64.deb']
    assert (tmp_path / 'out-kernel').exists() and (tmp_path / 'out-initrd').exists()
    assert cache.lookup(str(tmp_path), 'kernel', KEY) is None
