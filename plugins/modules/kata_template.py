#!/usr/bin/python
# -*- coding: utf-8 -*-

# Copyright: kata.runtime contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r'''
---
module: kata_template
short_description: Manage a VM template sandboxes of its shape start from (Kata's VM factory)
description:
  - A VM template is a guest booted once to an answering agent, paused, and saved - its RAM
    in a file on a tmpfs at C(<state_root>/templates), its device state beside it. A sandbox
    of the same shape (see M(kata.runtime.kata_sandbox) option C(template)) then starts as a
    copy-on-write clone of it in well under a second instead of booting its kernel.
  - The shape is everything a clone must share with its template - the guest image (a digest
    of the kernel and initrd), O(vcpus), O(memory_mb), O(accel), the kernel command line, the
    machine type, the device set and the QEMU version. A changed image gives another shape, so
    a stale template is never used; M(kata.runtime.kata_prune) removes stale ones.
  - O(state=present) builds the template unless one of that shape exists (O(force) rebuilds
    it). O(state=absent) removes it; sandboxes already started from it keep running.
  - The templates tmpfs is mounted (or resized) to the config file's C(template_tmpfs_mb) when
    a template is built. Two builds of one shape never collide - the second waits for the
    first and finds its template.
version_added: 0.2.0
author:
  - kata.runtime contributors (@kata)
extends_documentation_fragment:
  - kata.runtime.kata
  - kata.runtime.kata.attributes
  - kata.runtime.kata.actiongroup_kata
attributes:
  check_mode:
    support: full
    details:
      - Reports whether the template would be built or removed; boots nothing, mounts
        nothing and writes nothing.
  diff_mode:
    support: full
  idempotent:
    support: full
options:
  state:
    description:
      - V(present) - the template of this shape exists. V(absent) - it does not.
    type: str
    choices: [present, absent]
    default: present
  vcpus:
    description:
      - Virtual CPUs of the template's guest. Defaults to the config file's C(vcpus).
    type: int
  memory_mb:
    description:
      - Guest memory in MiB. Defaults to the config file's C(memory_mb). The template holds
        this much of the templates tmpfs.
    type: int
  accel:
    description:
      - How the guest CPU runs; V(auto) picks V(kvm) where it can run a stock guest kernel,
        else V(tcg), as for sandboxes. Defaults to the config file's C(accel).
    type: str
    choices: [auto, kvm, tcg]
  kernel:
    description:
      - Guest kernel. Defaults to the config file's C(kernel).
    type: path
  initrd:
    description:
      - Guest initrd holding the agent. Defaults to the config file's C(initrd).
    type: path
  network:
    description:
      - The network mode of the NIC of the sandboxes that start from the template (see
        M(kata.runtime.kata_sandbox)'s O(kata.runtime.kata_sandbox#module:network)); part of the
        shape. Each clone gets the same NIC model with its own MAC address.
      - Only V(user) and V(none); sandboxes on a bridge or a libvirt network boot cold.
      - Defaults to the config file's C(network), whose default is V(user).
    type: str
  force:
    description:
      - With O(state=present), build the template again even when one of this shape exists.
    type: bool
    default: false
  timeout:
    description:
      - Seconds to wait for the template guest's agent. Defaults to the config file's
        C(agent_timeout).
    type: int
notes:
  - Templates are off by default for sandboxes (config key C(template)) because clones share
    memory pages with their template and with each other, a cross-VM side channel; see the
    project's docs/security.md.
  - libvirt marks the template's domain and every clone as tainted (C(custom-argv),
    C(custom-monitor)) - the RAM file and the saving and loading of the device state go
    through QEMU arguments and monitor commands libvirt does not model.
  - The kernel command line of the template is the runtime's own plus the config file's
    C(kernel_params); a sandbox with its own C(kernel_params) has another shape and boots cold.
seealso:
  - module: kata.runtime.kata_sandbox
  - module: kata.runtime.kata_sandbox_info
  - module: kata.runtime.kata_prune
'''

EXAMPLES = r'''
- name: A template for the default sandbox shape
  kata.runtime.kata_template:
  register: tpl

- name: Sandboxes of that shape start from it
  kata.runtime.kata_sandbox:
    name: web-1
    template: true

- name: A template for 2-vCPU, 512 MiB sandboxes
  kata.runtime.kata_template:
    vcpus: 2
    memory_mb: 512

- name: Remove it (clones already running keep running)
  kata.runtime.kata_template:
    vcpus: 2
    memory_mb: 512
    state: absent
'''

RETURN = r'''
template:
  description:
    - The template of the shape asked for, as it is after the module ran (in check mode, as it
      would be; RV(template.size_bytes) and RV(template.created_at) are then null for a
      template still to be built). Empty when absent.
  returned: always
  type: dict
  contains:
    key:
      description: The template's key, a digest of its shape; the name of its directory.
      type: str
      sample: 3f9c2a41d07be815
    shape:
      description:
        - What a sandbox must share with the template to start from it - C(image_digest),
          C(vcpus), C(memory_mb), C(accel), C(machine), C(arch), C(qemu) (version),
          C(cmdline), C(devices), C(version) (of the template format).
      type: dict
      sample: {vcpus: 1, memory_mb: 256, accel: tcg, machine: pc, qemu: 7.2.0}
    path:
      description: The template's directory (its RAM file, device state and template.json).
      type: str
      sample: /run/kata-runtime/templates/3f9c2a41d07be815
    size_bytes:
      description: Bytes the template holds in the templates tmpfs (RAM file and device state).
      type: int
      sample: 268800000
    created_at:
      description: When the template was built (RFC 3339, UTC).
      type: str
      sample: '2026-01-01T12:00:00.000000Z'
    image_digest:
      description: sha256 of the guest kernel and initrd the template was built from.
      type: str
actions:
  description: What was done (or, in check mode, would be done), in order.
  returned: always
  type: list
  elements: str
  sample: ["mounted the templates tmpfs and built template 3f9c2a41d07be815 in 6.1s"]
'''

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.kata.runtime.plugins.module_utils.kata.common import module_args, run_manager
from ansible_collections.kata.runtime.plugins.module_utils.kata.options import TEMPLATE_OPTIONS
from ansible_collections.kata.runtime.plugins.module_utils.kata.template_manager import TemplateManager


def main():
    run_manager(AnsibleModule(**module_args(TEMPLATE_OPTIONS)), TemplateManager)


if __name__ == '__main__':
    main()
