# Copyright: kata.runtime contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Fixtures of the lifecycle fault tests (test_*_lifecycle.py), on the fakes of lifecycle_fakes."""

from __future__ import annotations

import pytest
from ansible_collections.kata.runtime.plugins.module_utils.kata import hooks as hooks_mod
from ansible_collections.kata.runtime.tests.unit.plugins.module_utils.lifecycle_fakes import (
    Env,
    cleanup_mounts,
    mount_tmpfs,
)


@pytest.fixture
def tmp_host(tmp_path):
    """tmp_path on a tmpfs of its own (as /run is), everything mounted there lazily unmounted
    at the end, pass or fail."""
    mount_tmpfs(tmp_path)
    yield tmp_path
    cleanup_mounts(tmp_path)


@pytest.fixture
def quick_hooks(monkeypatch):
    """The hook runner polls a finished hook every 50 ms; 5 ms keeps the fault runs fast."""
    monkeypatch.setattr(hooks_mod, '_POLL', 0.005)


@pytest.fixture
def env(tmp_host):
    """A temp host (state root, cgroup mount, boot files) on the fakes."""
    return Env(tmp_host)
