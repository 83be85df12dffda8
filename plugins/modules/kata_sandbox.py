#!/usr/bin/python
# -*- coding: utf-8 -*-

# Copyright: kata.runtime contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r'''
---
module: kata_sandbox
short_description: Manage one VM-isolated sandbox (a guest booted through libvirt with an agent inside)
description:
  - Declares the state of one sandbox. A sandbox is a guest VM booted through libvirt (KVM, or
    software emulation where KVM cannot run a stock guest kernel) with an agent inside; OCI
    containers run inside it (see M(kata.runtime.kata_container)).
  - The sandbox is also its own container of type C(pod_sandbox), whose container ID is the
    sandbox ID, as in Kata Containers.
  - O(state=running) boots a missing sandbox and waits for its agent, boots a stopped one
    again and resumes a paused one. O(state=stopped) shuts the VM down and keeps the record.
    O(state=paused) suspends the VM. O(state=absent) deletes everything the sandbox owns.
  - A changed immutable setting (O(vcpus), O(memory_mb), O(kernel), O(initrd),
    O(kernel_params), O(accel), O(cgroups_path), O(hooks), O(network), O(ports)) on an existing sandbox fails with
    a message naming the fields, unless O(recreate=true). Only settings given explicitly are
    compared. O(labels) and O(annotations) are updated in place.
version_added: 0.1.0
author:
  - kata.runtime contributors (@kata)
extends_documentation_fragment:
  - kata.runtime.kata
  - kata.runtime.kata.force
  - kata.runtime.kata.attributes
  - kata.runtime.kata.actiongroup_kata
attributes:
  check_mode:
    support: full
    details:
      - Plans and reports what would be done without touching libvirt, cgroupfs or the state root.
  diff_mode:
    support: full
  idempotent:
    support: full
options:
  name:
    description:
      - The sandbox ID. It must match C(^[A-Za-z0-9][A-Za-z0-9_.+-]{0,127}$).
    type: str
    required: true
    aliases: [id]
  state:
    description:
      - The state the sandbox should be in.
      - V(absent) with running containers and without O(force) fails and changes nothing.
        With O(force) every container is killed, the VM destroyed, every container deleted
        (each one's poststop hooks run), the sandbox's poststop hooks run, and its cgroup
        paths, state and ID mappings removed.
    type: str
    choices: [running, stopped, paused, absent]
    default: running
  vcpus:
    description:
      - Number of virtual CPUs. Defaults to the config file's C(vcpus) (1).
    type: int
  memory_mb:
    description:
      - Guest memory in MiB. Defaults to the config file's C(memory_mb) (256).
    type: int
  kernel:
    description:
      - Guest kernel (an uncompressed vmlinux or a bzImage). Defaults to the config file's
        C(kernel), the image built by M(kata.runtime.kata_guest_image).
    type: path
  initrd:
    description:
      - Guest initrd holding the agent. Defaults to the config file's C(initrd).
    type: path
  kernel_params:
    description:
      - Extra guest kernel command-line parameters, appended to the ones the runtime needs.
    type: str
  accel:
    description:
      - How the guest CPU runs. V(kvm) needs a KVM that can run a stock guest kernel;
        V(tcg) is software emulation; V(auto) picks V(kvm) where it is usable, else V(tcg),
        and the reason is returned in RV(sandbox.accel_reason).
      - Defaults to the config file's C(accel), whose default is V(auto).
    type: str
    choices: [auto, kvm, tcg]
  labels:
    description:
      - Labels (string keys and values) for selecting sandboxes, for example with
        M(kata.runtime.kata_sandbox_info) or M(kata.runtime.kata_prune). Updated in place.
    type: dict
  annotations:
    description:
      - OCI annotations of the sandbox's own pod_sandbox container. Updated in place.
    type: dict
  hooks:
    description:
      - OCI hooks (runtime-spec 1.3) of the sandbox's own pod_sandbox container, keyed by
        kind (V(prestart), V(createRuntime), V(createContainer), V(startContainer),
        V(poststart), V(poststop)); each a list of C({path, args, env, timeout}).
      - Paths must be absolute and executable. The container state JSON is on the hook's stdin.
      - A failing hook before or during start fails the operation and removes what it made;
        a failing poststop hook is a warning and the delete goes on.
    type: dict
  cgroups_path:
    description:
      - Cgroup path of the sandbox. An absolute path is taken relative to each cgroup mount;
        a relative one goes under the config file's C(cgroup_parent). Empty means
        C(<cgroup_parent>/<name>).
    type: str
  recreate:
    description:
      - Delete and create the sandbox again when an immutable setting differs.
      - Running containers are killed only with O(force).
    type: bool
    default: false
  timeout:
    description:
      - Seconds to wait for the agent after the VM starts. Defaults to the config file's
        C(agent_timeout) (60).
    type: int
  template:
    description:
      - Start the VM from a VM template of its shape (see M(kata.runtime.kata_template)) when
        one exists and was built from the current guest image; otherwise, or when starting
        from it fails, boot it cold. RV(sandbox.boot) says which happened.
      - Sandboxes on a bridge or a libvirt network always boot cold (a clone would come up with
        the template's DHCP lease).
      - Applies whenever the VM is booted (create, and start after a stop); changing it never
        needs O(recreate).
      - Defaults to the config file's C(template), whose default is V(false) - clones share
        memory pages with their template, a cross-VM side channel.
    type: bool
  network:
    description:
      - The network of the sandbox's virtio NIC, shared by all its containers (one network
        namespace, a pod).
      - V(user) is QEMU user-mode networking inside the VMM - nothing is added to the host but
        the VMM's listening sockets of O(ports); the guest has C(10.0.2.15/24), gateway
        C(10.0.2.2) (which reaches the host's loopback) and DNS server C(10.0.2.3).
      - V(bridge:<name>) puts the NIC on an existing host bridge, V(network:<name>) on a libvirt
        network (it must exist and be active); the guest asks that network for an address by
        DHCP. libvirt makes the tap and removes it with the VM.
      - V(none) gives the guest no NIC (loopback only).
      - Defaults to the config file's C(network), whose default is V(user). Changing it needs
        O(recreate). See the collection's docs/networking.md.
    type: str
  ports:
    description:
      - Host ports forwarded to the sandbox's network namespace (any of its containers listening
        on the container port gets the connections). O(network=user) only; refused with other
        networks (this runtime adds no firewall or NAT rules to the host).
      - Each entry is a string C(HOST:CONTAINER[/tcp|udp]) (optionally C(HOST_IP:HOST:CONTAINER))
        or a dict with C(host_port), C(container_port), C(host_ip) (default C(127.0.0.1)) and
        C(protocol) (V(tcp), the default, or V(udp)).
      - The VMM listens on C(host_ip:host_port) from each boot of the VM until it stops; a host
        port already taken fails the boot. Changing the list needs O(recreate).
    type: list
    elements: raw
notes:
  - libvirt marks a VM started from a template as tainted (C(custom-argv), C(custom-monitor))
    because its RAM file and the loading of its saved state go through QEMU arguments and monitor
    commands libvirt does not model. Destroy, undefine and delete work as for any sandbox.
  - On hosts where KVM cannot run a stock guest kernel (no C(/dev/kvm), no permission, or
    paravirtual-only KVM), V(auto) falls back to software emulation, which boots in seconds.
seealso:
  - module: kata.runtime.kata_container
  - module: kata.runtime.kata_sandbox_info
  - module: kata.runtime.kata_prune
'''

EXAMPLES = r'''
- name: Boot a sandbox with 2 vCPUs
  kata.runtime.kata_sandbox:
    name: web-1
    vcpus: 2
    memory_mb: 512
    labels:
      tenant: acme

- name: Serve a container's port 8080 on the host's 127.0.0.1:8080
  kata.runtime.kata_sandbox:
    name: web-2
    ports:
      - "8080:8080"
      - host_port: 5353
        container_port: 53
        protocol: udp

- name: Put a sandbox on the libvirt network "default" (DHCP, no forwards)
  kata.runtime.kata_sandbox:
    name: web-3
    network: network:default

- name: Pause it
  kata.runtime.kata_sandbox:
    name: web-1
    state: paused

- name: Delete it, killing whatever still runs inside
  kata.runtime.kata_sandbox:
    name: web-1
    state: absent
    force: true
'''

RETURN = r'''
sandbox:
  description: The sandbox as it is after the module ran (in check mode, as it would be). Empty when absent.
  returned: always
  type: dict
  contains:
    id:
      description: Sandbox ID.
      type: str
      sample: web-1
    state:
      description:
        - V(running), V(paused), V(stopped), V(absent), or V(dead) when the record expects a VM
          and libvirt has none running (crashed VM, rebooted host).
      type: str
      sample: running
    vm_state:
      description: The VM state libvirt reports (V(running), V(paused), V(shutoff), V(crashed), V(missing)).
      type: str
      sample: running
    accel:
      description: The accelerator the VM runs with (V(kvm) or V(tcg)).
      type: str
      sample: tcg
    accel_reason:
      description: Why that accelerator was chosen.
      type: str
      sample: "paravirtual-only KVM (kvm_pvm): cannot run a stock guest kernel"
    vcpus:
      description: Virtual CPUs.
      type: int
      sample: 1
    memory_mb:
      description: Guest memory in MiB.
      type: int
      sample: 256
    kernel:
      description: Guest kernel path.
      type: str
    initrd:
      description: Guest initrd path.
      type: str
    kernel_params:
      description: Extra guest kernel parameters.
      type: str
    pid:
      description: PID of the VMM (qemu) on the host, when the VM runs.
      type: int
      sample: 4242
    domain:
      description: The libvirt domain name.
      type: str
      sample: kata-web-1
    containers:
      description: IDs of the sandbox's containers (pod_container).
      type: list
      elements: str
      sample: [app, sidecar]
    labels:
      description: Labels.
      type: dict
      sample: {tenant: acme}
    annotations:
      description: Annotations.
      type: dict
    cgroups_path:
      description: The requested cgroup path.
      type: str
    cgroups_paths:
      description: The cgroup directories created for the sandbox.
      type: list
      elements: str
    console_log:
      description: Path of the guest serial console log on the host.
      type: str
    created_at:
      description: When the sandbox was created (RFC 3339, UTC).
      type: str
      sample: '2026-01-01T12:00:00Z'
    boot:
      description:
        - How the VM last came up - V(cold) (booted its kernel) or V(template) (a clone of a
          VM template); null when it never booted.
      type: str
      sample: template
    network:
      description: The sandbox's network.
      type: dict
      contains:
        mode:
          description: V(user), V(bridge), V(network) or V(none).
          type: str
          sample: user
        source:
          description: The bridge or libvirt network name (null for V(user) and V(none)).
          type: str
        mac:
          description: The MAC address of the guest's NIC (null without one).
          type: str
          sample: '52:54:00:12:34:56'
        addresses:
          description:
            - The guest's addresses in CIDR form where the host chose them (V(user) mode); empty
              for a bridge or libvirt network, whose DHCP server assigns them.
          type: list
          elements: str
          sample: ['10.0.2.15/24']
        ports:
          description: The port forwards, each with C(host_ip), C(host_port), C(container_port), C(protocol).
          type: list
          elements: dict
          sample: [{host_ip: 127.0.0.1, host_port: 8080, container_port: 8080, protocol: tcp}]
actions:
  description: What was done (or, in check mode, would be done), in order.
  returned: always
  type: list
  elements: str
  sample: ["recorded sandbox web-1", "defined and started VM kata-web-1 (accel tcg)", "agent of sandbox web-1 is ready"]
'''

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.kata.runtime.plugins.module_utils.kata.common import module_args, run_manager
from ansible_collections.kata.runtime.plugins.module_utils.kata.options import SANDBOX_OPTIONS
from ansible_collections.kata.runtime.plugins.module_utils.kata.sandbox_manager import SandboxManager


def main():
    run_manager(AnsibleModule(**module_args(SANDBOX_OPTIONS)), SandboxManager)


if __name__ == '__main__':
    main()
