# Copyright: kata.runtime contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The small interface the lifecycle code uses to drive a VMM, whatever the backend.

Lifecycle code (``sandbox.py``) talks to this interface only, so a second backend (e.g. a
direct QEMU or Cloud Hypervisor driver) can be added without touching it.
"""

from __future__ import annotations

# Values of Hypervisor.state()
RUNNING = 'running'
PAUSED = 'paused'
SHUTOFF = 'shutoff'
CRASHED = 'crashed'
MISSING = 'missing'
STATES = (RUNNING, PAUSED, SHUTOFF, CRASHED, MISSING)


class Hypervisor:
    """A VMM backend. Every method taking ``name`` refuses a VM this runtime did not create.

    ``vm`` (for ``create``) is a dict with ``name, sandbox_id, vcpus, memory_mb, kernel,
    initrd, cmdline, accel ('kvm'|'tcg'), console_log, agent_socket, shared_dir`` (exported
    read-only), ``output_dir``, ``output_accessmode`` (the writable share) and
    ``state_root``: the state root whose record owns the VM, kept with the VM so that two
    state roots sharing a domain prefix never take each other's VMs for orphans; optional
    ``tb_cache_mb``: under TCG, the most memory QEMU may use for translated code (0 or absent:
    QEMU's default); optional ``free_page_reporting``: the guest returns the pages it frees.
    """

    def domain_name(self, sandbox_id):
        """The VM name this backend uses for a sandbox ID."""
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
