# Copyright: kata.runtime contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""guest/contract.py, the one host-side home of what the host and the guest agree on, and the
in-guest agent's copy of it (the agent runs alone in the initrd and cannot import it)."""

from __future__ import annotations

import ast
import inspect

from ansible_collections.kata.runtime.plugins.module_utils.kata import network, oci, sandbox
from ansible_collections.kata.runtime.plugins.module_utils.kata.guest import agent as guest_agent
from ansible_collections.kata.runtime.plugins.module_utils.kata.guest import contract, image

# Names of the contract the guest agent has no use for: the host passes the kernel command line
# and reads the marker off the console; the image builder writes the marker into /init.
HOST_ONLY = {'KERNEL_PARAMS', 'INIT_MARKER', 'GUEST_NAMES'}
COPY_START = '# -- the guest\'s copy of guest/contract.py'
COPY_END = '# -- end of the copy'


def _contract_names():
    return {n for n in vars(contract) if n.isupper()}


def _assigned(source):
    return [t.id for node in ast.parse(source).body if isinstance(node, ast.Assign)
            for t in node.targets if isinstance(t, ast.Name)]


def test_the_agents_copy_equals_the_contract():
    for name in contract.GUEST_NAMES:
        assert getattr(guest_agent, name) == getattr(contract, name), name


def test_every_contract_name_is_copied_or_host_only():
    """A name added to the contract is either in GUEST_NAMES (and so checked against the
    agent's copy) or named host-only here: nothing new drifts unnoticed."""
    assert _contract_names() == set(contract.GUEST_NAMES) | HOST_ONLY
    assert not set(contract.GUEST_NAMES) & HOST_ONLY


def test_the_agents_copy_block_is_exactly_the_guest_names():
    """The block between the markers in guest/agent.py holds the copied names and nothing else,
    in the contract's order."""
    source = inspect.getsource(guest_agent)
    start = source.index(COPY_START)
    end = source.index(COPY_END, start)
    assert _assigned(source[start:end]) == list(contract.GUEST_NAMES)
    assert source.count(COPY_START) == 1 and source.count(COPY_END) == 1


def test_the_contract_imports_nothing():
    """Constants only: whatever ships contract.py ships nothing else with it."""
    tree = ast.parse(inspect.getsource(contract))
    imports = [node for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))]
    assert [(i.module, [a.name for a in i.names]) for i in imports] == [('__future__', ['annotations'])]
    assert all(isinstance(getattr(contract, n), (str, int, tuple)) for n in _contract_names())


def test_init_is_rendered_from_the_contract():
    """/init mounts each share where and how the agent's post_clone would, skips them on a
    template boot and prints the marker the host waits for."""
    init = image.render_init(['9p'])
    assert 'mount -t 9p -o "%s,$3"' % contract.NINEP_OPTIONS in init
    assert 'mount_share %s %s %s' % (contract.SHARED_TAG, contract.SHARED_MOUNT, contract.SHARED_OPTIONS) in init
    assert 'mount_share %s %s %s' % (contract.OUTPUT_TAG, contract.OUTPUT_MOUNT, contract.OUTPUT_OPTIONS) in init
    assert '*" %s "*) kata_template=1' % contract.TEMPLATE_FLAG in init
    assert 'echo "%s"\n' % contract.INIT_MARKER in init
    assert '@' not in init   # no placeholder left


def test_the_host_side_takes_the_contracts_values():
    none = network.record('none', [])
    assert sandbox._cmdline('quiet=1', none) == contract.KERNEL_PARAMS + ' quiet=1'
    assert sandbox._cmdline('', none) == contract.KERNEL_PARAMS
    user = network.record('user', [])
    assert sandbox._cmdline('quiet=1', user) == '%s %s=%s quiet=1' % (
        contract.KERNEL_PARAMS, contract.NET_PARAM, contract.NET_STATIC_USER)
    assert sandbox._cmdline('', network.record('bridge:br0', [])).endswith(
        ' %s=%s' % (contract.NET_PARAM, contract.NET_DHCP))
    assert oci.DEFAULT_PATH_ENV == 'PATH=' + contract.DEFAULT_PATH
