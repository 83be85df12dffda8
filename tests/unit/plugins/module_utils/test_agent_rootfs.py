# Copyright: kata.runtime contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""How the guest agent gives a container its root filesystem (the real agent on the host).

The host shares every rootfs read-only; the agent gives a container that may write an overlay
whose upper layer is a tmpfs in the container's own mount namespace, and a read-only one a
read-only bind. Both vanish with the container: nothing is left mounted in the agent's view.
"""

from __future__ import annotations

import os

from ansible_collections.kata.runtime.plugins.module_utils.kata.guest import agent as guest_agent
from ansible_collections.kata.runtime.plugins.module_utils.kata.guest import contract, image
from test_agent import agent, client, needs_ns, rootfs, short_dir  # noqa: F401 - fixtures

SCRIPT = 'echo data > /work/new; cat /work/new; chmod 4755 /bin/busybox; echo chmod=$?'


def _run(client, cid, rootfs, readonly):  # noqa: F811 - fixture names
    params = {'id': cid, 'args': ['sh', '-c', SCRIPT], 'rootfs': rootfs}
    if readonly is not None:
        params['readonly'] = readonly
    client.request('create_container', params)
    client.start_container(cid)
    assert client.wait_container(cid, 10)['status'] == 'stopped'
    client.remove_container(cid)


def _mounts():
    with open('/proc/self/mountinfo') as f:
        return f.read()


def _mode(path):
    return os.lstat(path).st_mode & 0o7777


@needs_ns
def test_writable_rootfs_is_an_overlay_that_leaves_the_shared_one_alone(client, agent, rootfs):  # noqa: F811
    before, mounts = _mode(os.path.join(rootfs, 'bin', 'busybox')), _mounts()
    _run(client, 'ovl', rootfs, readonly=False)
    with open(os.path.join(agent.shared, 'ovl', 'stdout')) as f:
        assert f.read() == 'data\nchmod=0\n'
    assert not os.path.exists(os.path.join(rootfs, 'work', 'new'))
    assert _mode(os.path.join(rootfs, 'bin', 'busybox')) == before
    assert _mounts() == mounts
    assert not [n for n in os.listdir(os.path.join(agent.base, 'run')) if n.startswith('rootfs-')]


@needs_ns
def test_readonly_rootfs_refuses_writes(client, agent, rootfs):  # noqa: F811
    before = _mode(os.path.join(rootfs, 'bin', 'busybox'))
    _run(client, 'ro', rootfs, readonly=True)
    with open(os.path.join(agent.shared, 'ro', 'stdout')) as f:
        assert f.read() == 'chmod=1\n'
    with open(os.path.join(agent.shared, 'ro', 'stderr')) as f:
        assert 'Read-only file system' in f.read()
    assert not os.path.exists(os.path.join(rootfs, 'work', 'new'))
    assert _mode(os.path.join(rootfs, 'bin', 'busybox')) == before


def test_readonly_must_be_a_bool(client, rootfs):  # noqa: F811
    import pytest
    from ansible_collections.kata.runtime.plugins.module_utils.kata.errors import AgentError
    with pytest.raises(AgentError, match='readonly must be true or false'):
        client.request('create_container', {'id': 'x', 'args': ['true'], 'rootfs': rootfs, 'readonly': 'yes'})


def test_guest_agent_and_image_agree_with_the_contract():
    """The in-guest agent keeps its own copy of the contract: it must match the host's."""
    assert guest_agent.SHARED_DIR == contract.SHARED_MOUNT
    assert guest_agent.OUTPUT_DIR == contract.OUTPUT_MOUNT
    assert guest_agent.PORT_NAME == contract.AGENT_PORT_NAME
    init = image.render_init(['9p'])
    assert 'mount_share %s %s ro,nodev' % (contract.SHARED_TAG, contract.SHARED_MOUNT) in init
    assert 'mount_share %s %s nosuid,nodev,noexec' % (contract.OUTPUT_TAG, contract.OUTPUT_MOUNT) in init
    assert 'overlay' in image.DEFAULT_MODULES
