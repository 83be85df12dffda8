# Copyright: kata.runtime contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Fixtures shared by the module tests and the module_utils tests."""

from __future__ import annotations

import os

import pytest
from ansible_collections.kata.runtime.plugins.module_utils.kata import caps_cache


@pytest.fixture
def fake_kvm(tmp_path):
    """A temp file standing in for /dev/kvm (mode set by the test), owned by this process."""
    path = tmp_path / 'kvm'
    path.write_text('')
    os.chmod(str(path), 0o600)
    return str(path)


@pytest.fixture
def working_kvm(monkeypatch):
    """The probe gets KVM from any device (as libvirt's probe does from a real /dev/kvm)."""
    monkeypatch.setattr(caps_cache, 'probe_gets_kvm', lambda dev: True)
