#!/usr/bin/python
# -*- coding: utf-8 -*-

# Copyright: kata.runtime contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r'''
---
module: kata_sandbox_info
short_description: List sandboxes with their live state
description:
  - Returns the sandboxes on the host, their state observed live (libvirt for the VM), and
    lets you filter them by name, labels, state, and a JMESPath query.
  - A sandbox whose VM has died (crashed, host rebooted) is reported as V(dead), never as running.
  - Records that cannot be read are listed in RV(corrupt), never hidden.
  - Also lists the VM templates of the state root (see M(kata.runtime.kata_template)) in
    RV(templates), whatever the filters.
version_added: 0.1.0
author:
  - kata.runtime contributors (@kata)
extends_documentation_fragment:
  - kata.runtime.kata
  - kata.runtime.kata.attributes
  - kata.runtime.kata.attributes_info_module
  - kata.runtime.kata.actiongroup_kata
options:
  name:
    description:
      - Only these sandboxes. Glob patterns (C(web-*)) are allowed.
    type: list
    elements: str
  labels:
    description:
      - Only sandboxes that carry all of these labels with these values.
    type: dict
  state:
    description:
      - Only sandboxes in one of these states.
    type: list
    elements: str
    choices: [running, paused, stopped, dead]
  query:
    description:
      - A JMESPath expression applied to the filtered list; its result becomes RV(sandboxes).
      - Needs the jmespath Python library on the target.
    type: str
seealso:
  - module: kata.runtime.kata_sandbox
  - module: kata.runtime.kata_container_info
'''

EXAMPLES = r'''
- name: All sandboxes of tenant acme
  kata.runtime.kata_sandbox_info:
    labels:
      tenant: acme
  register: acme

- name: IDs of sandboxes with more than one vCPU
  kata.runtime.kata_sandbox_info:
    query: "[?vcpus > `1`].id"
'''

RETURN = r'''
sandboxes:
  description:
    - The selected sandboxes, each as RV(kata.runtime.kata_sandbox#module:sandbox) returns it,
      or whatever O(query) made of the list.
  returned: always
  type: list
  elements: raw
  sample: [{id: web-1, state: running, vcpus: 1, memory_mb: 256, containers: [app],
            network: {mode: user, addresses: [10.0.2.15/24], mac: '52:54:00:12:34:56', source: null,
                      ports: [{host_ip: 127.0.0.1, host_port: 8080, container_port: 80, protocol: tcp}]}}]
templates:
  description:
    - The VM templates of this state root, each as M(kata.runtime.kata_template) returns it,
      plus C(stale) - why it is stale (the kernel or initrd it was built from
      changed or went), or null. Stale templates are never used; M(kata.runtime.kata_prune)
      removes them.
  returned: always
  type: list
  elements: dict
  sample: [{key: 3f9c2a41d07be815, path: /run/kata-runtime/templates/3f9c2a41d07be815, size_bytes: 268800000,
            created_at: '2026-01-01T12:00:00.000000Z', image_digest: 9b1e..., stale: null,
            shape: {vcpus: 1, memory_mb: 256, accel: tcg}}]
corrupt:
  description: Sandbox records that could not be read, with the reason.
  returned: always
  type: list
  elements: dict
  sample: [{id: web-2, path: /run/kata-runtime/sandboxes/web-2/sandbox.json, error: not JSON}]
'''

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.kata.runtime.plugins.module_utils.kata import sandbox as sbx
from ansible_collections.kata.runtime.plugins.module_utils.kata import select, template
from ansible_collections.kata.runtime.plugins.module_utils.kata.common import (
    common_argument_spec,
    fail_on_kata_error,
    load_module_config,
    require_state_root_dir,
)
from ansible_collections.kata.runtime.plugins.module_utils.kata.runtime import Runtime, coerce_str_dict


def main():
    argument_spec = common_argument_spec(
        name=dict(type='list', elements='str'),
        labels=dict(type='dict'),
        state=dict(type='list', elements='str', choices=['running', 'paused', 'stopped', 'dead']),
        query=dict(type='str'),
    )
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    with fail_on_kata_error(module):
        rt = Runtime(require_state_root_dir(load_module_config(module)))
        labels = coerce_str_dict(module.params['labels'], 'labels')
        items, corrupt = sbx.list_all(rt)
        items = select.filter_items(items, module.params['name'], labels, module.params['state'])
        items = select.query(items, module.params['query'])
        found, dummy = template.list_templates(template.templates_dir(rt.store.root))
        templates = [dict(t.info(), stale=template.is_stale(t)) for t in found]
    module.exit_json(changed=False, sandboxes=items, corrupt=corrupt, templates=templates)


if __name__ == '__main__':
    main()
