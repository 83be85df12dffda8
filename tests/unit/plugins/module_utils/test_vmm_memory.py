# Copyright: kata.runtime contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Paging a process's file mappings out of it: on this very process, with a real file."""

from __future__ import annotations

import mmap
import os
import subprocess
import sys

import pytest
from ansible_collections.kata.runtime.plugins.module_utils.kata import vmm_memory

SIZE = 4 << 20


def _on_tmpfs(path):
    with open('/proc/self/mountinfo', encoding='utf-8') as handle:
        best = ('', '')
        for line in handle:
            fields = line.split()
            mount, fstype = fields[4], fields[fields.index('-') + 1]
            if path.startswith(mount.rstrip('/') + '/') and len(mount) > len(best[0]):
                best = (mount, fstype)
    return best[1] in ('tmpfs', 'ramfs')


@pytest.fixture
def mapped(tmp_path):
    path = tmp_path / 'vmlinux'
    path.write_bytes(os.urandom(SIZE))
    with open(path, 'rb') as handle:
        os.fsync(handle.fileno())
        view = mmap.mmap(handle.fileno(), SIZE, prot=mmap.PROT_READ)
    sum(view[i] for i in range(0, SIZE, mmap.PAGESIZE))  # touch every page
    yield str(path), view
    view.close()


def test_file_mappings_finds_the_mapping_and_what_is_resident(mapped):
    path, dummy = mapped
    (start, length, rss), = vmm_memory.file_mappings(os.getpid(), [path])
    assert length == SIZE and start % mmap.PAGESIZE == 0
    assert rss == SIZE
    assert vmm_memory.file_mappings(os.getpid(), [path + '.other']) == []


def test_release_pages_the_mapping_out_and_keeps_its_content(mapped):
    path, view = mapped
    released, why = vmm_memory.release_file_pages(os.getpid(), [path])
    assert why is None and released == SIZE
    (dummy, dummy2, rss), = vmm_memory.file_mappings(os.getpid(), [path])
    if not _on_tmpfs(path):  # tmpfs pages without swap have nowhere to go
        assert rss < SIZE // 2
    with open(path, 'rb') as handle:
        assert view[:] == handle.read()  # read back from the file, unchanged


def test_release_follows_links_to_the_file_the_process_opened(mapped, tmp_path):
    path, dummy = mapped
    link = tmp_path / 'vmlinux-link'
    link.symlink_to(path)
    released, why = vmm_memory.release_file_pages(os.getpid(), [str(link)])
    assert why is None and released == SIZE


def test_nothing_to_release_is_a_reason_not_an_error(tmp_path):
    released, why = vmm_memory.release_file_pages(os.getpid(), [str(tmp_path / 'absent')])
    assert released == 0 and 'no resident pages' in why
    gone = subprocess.run([sys.executable, '-c', 'import os; print(os.getpid())'],
                          capture_output=True, text=True, check=True)
    released, why = vmm_memory.release_file_pages(int(gone.stdout), ['/bin/sh'])
    assert released == 0 and 'cannot read the mappings of process' in why
