# Copyright: kata.runtime contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The small interface the lifecycle code uses to drive a VMM, whatever the backend.

Lifecycle code (``sandbox.py``) talks to this interface only, so a second backend (e.g. a
direct QEMU or Cloud Hypervisor driver) can be added without touching it.
"""

from __future__ import annotations

from ansible_collections.kata.runtime.plugins.module_utils.kata.model import VmState

# Values of Hypervisor.state() (model.VmState, named here for the backends)
RUNNING = VmState.RUNNING
PAUSED = VmState.PAUSED
SHUTOFF = VmState.SHUTOFF
CRASHED = VmState.CRASHED
MISSING = VmState.MISSING
STATES = VmState.ALL


class Hypervisor:
    """A VMM backend. Every method taking ``name`` refuses a VM this runtime did not create.

    ``vm`` (for ``create``) is a dict with ``name, sandbox_id, vcpus, memory_mb, kernel,
    initrd, cmdline, accel ('kvm'|'tcg'), console_log, agent_socket, shared_dir`` (exported
    read-only), ``output_dir``, ``output_accessmode`` (the writable share) and
    ``state_root``: the state root whose record owns the VM, kept with the VM so that two
    state roots sharing a domain prefix never take each other's VMs for orphans; optional
    ``tb_cache_mb``: under TCG, the most memory QEMU may use for translated code (0 or absent:
    QEMU's default); optional ``free_page_reporting``: the guest returns the pages it frees;
    optional ``network`` (network.vm_network): None for no NIC, else ``mode`` (user, bridge,
    network), ``source`` (the bridge or libvirt network) and ``mac``.
    """

    # The machine type and architecture of every VM: part of a VM template's shape.
    machine = 'pc'
    arch = 'x86_64'

    def domain_name(self, sandbox_id):
        """The VM name this backend uses for a sandbox ID."""
        raise NotImplementedError

    # -- VM templates (template.py) ---------------------------------------------------------
    #
    # A template is a VM booted with its RAM in a file of ours mapped shared, paused, its device
    # state saved; a clone maps that file private (copy-on-write) and loads the state. Neither
    # may have a free-page-reporting balloon: it punches holes in the shared RAM file.

    def vmm_version(self):
        """The VMM's version ('major.minor.micro'): part of a template's shape."""
        raise NotImplementedError

    def create_template_vm(self, vm, ram_path):
        """Define and boot ``vm`` with its RAM in the new file ``ram_path`` (mapped shared);
        on failure nothing is left defined."""
        raise NotImplementedError

    def save_state(self, name, path):
        """Save the device state of the paused VM ``name`` (not its RAM) into the new file
        ``path``; the VM stays paused. Returns the file's size in bytes."""
        raise NotImplementedError

    def create_clone(self, vm, ram_path, state_path):
        """Define and start ``vm`` paused on a private mapping of the template RAM file
        ``ram_path`` and load the device state ``state_path`` into it; it stays paused (resume
        it). On failure nothing is left defined."""
        raise NotImplementedError

    # -- networking (network.py) --------------------------------------------------------------

    def check_network(self, net):
        """Refuse (InvalidArgument) a NIC spec whose bridge or network is not there."""

    def add_forwards(self, name, rules):
        """Add user-mode port forwards (``tcp:127.0.0.1:8080-10.0.2.15:80``) to the running VM
        ``name``; they last as long as its VMM. A rule of the same host address, port and
        protocol that VM has already is replaced (so adding them again is harmless)."""
        raise NotImplementedError

    def create(self, vm):
        """Define the VM persistently and boot it; on failure nothing is left defined."""
        raise NotImplementedError

    def start(self, name):
        """Boot a defined, stopped VM (no-op when already running)."""
        raise NotImplementedError

    def shutdown(self, name, timeout):
        """Ask the guest to power off; True when it is off within ``timeout`` seconds."""
        raise NotImplementedError

    def destroy(self, name):
        """Stop the VM at once (no guest cooperation); no-op when stopped or missing."""
        raise NotImplementedError

    def suspend(self, name):
        """Pause the VM's vCPUs."""
        raise NotImplementedError

    def resume(self, name):
        """Resume a paused VM."""
        raise NotImplementedError

    def state(self, name):
        """One of STATES."""
        raise NotImplementedError

    def pid(self, name):
        """The VMM process ID on the host, or None when not running."""
        raise NotImplementedError

    def undefine(self, name):
        """Forget a stopped VM's definition; no-op when missing."""
        raise NotImplementedError

    def list_ours(self):
        """Every VM this runtime owns: ``[{'name', 'sandbox_id', 'state', 'state_root'}]``
        (``state_root`` None for a VM defined before VMs carried it)."""
        raise NotImplementedError

    def state_root(self, name):
        """The state root recorded with VM ``name``; None when missing or not recorded."""
        raise NotImplementedError

    def is_ours(self, name):
        """True when ``name`` exists and was created by this runtime."""
        raise NotImplementedError
