#!/usr/bin/python
# -*- coding: utf-8 -*-

# Copyright: kata.runtime contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r'''
---
module: kata_container_info
short_description: List containers with their live OCI status
description:
  - Returns the containers on the host (the pod_sandbox container of each sandbox and the
    pod_containers inside it), their OCI status observed live (libvirt for the VM, the agent
    for the process), filtered by name, sandbox, labels, status, and a JMESPath query.
  - A container whose VM has died is reported as V(stopped), never as running.
  - A container whose VM runs but whose agent cannot be asked (unreachable, or a reply that is
    not what the call returns) is reported as V(unknown), with the reason in its
    RV(kata.runtime.kata_container#module:container.error).
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
      - Only these containers. Glob patterns are allowed.
    type: list
    elements: str
  sandbox:
    description:
      - Only containers of these sandboxes.
    type: list
    elements: str
  labels:
    description:
      - Only containers that carry all of these labels with these values.
    type: dict
  status:
    description:
      - Only containers in one of these OCI statuses, or V(unknown) (the agent could not say).
    type: list
    elements: str
    choices: [creating, created, running, stopped, unknown]
  type:
    description:
      - Only containers of this type.
    type: str
    choices: [pod_sandbox, pod_container]
  query:
    description:
      - A JMESPath expression applied to the filtered list; its result becomes RV(containers).
    type: str
seealso:
  - module: kata.runtime.kata_container
  - module: kata.runtime.kata_sandbox_info
'''

EXAMPLES = r'''
- name: Containers of sandbox web-1 that have stopped, with their exit codes
  kata.runtime.kata_container_info:
    sandbox: [web-1]
    type: pod_container
    status: [stopped]
  register: done

- name: Exit code of one container
  kata.runtime.kata_container_info:
    name: [web-1-job]
    query: "[0].exit_code"

- name: Containers whose sandbox agent could not say how they are, and why
  kata.runtime.kata_container_info:
    status: [unknown]
    query: "[].{id: id, sandbox: sandbox, error: error}"
'''

RETURN = r'''
containers:
  description:
    - The selected containers, each as RV(kata.runtime.kata_container#module:container) returns it,
      or whatever O(query) made of the list.
  returned: always
  type: list
  elements: raw
  sample: [{id: web-1-app, sandbox: web-1, type: pod_container, status: running, pid: 7},
           {id: web-2-app, sandbox: web-2, type: pod_container, status: unknown, pid: null,
            error: "agent call 'list_containers' on socket /run/kata-runtime/sock/0a1b2c3d4e5f6a7b.sock timed out after 5s"}]
corrupt:
  description: Records that could not be read, with the reason.
  returned: always
  type: list
  elements: dict
'''

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.kata.runtime.plugins.module_utils.kata import container as ctr
from ansible_collections.kata.runtime.plugins.module_utils.kata import select
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
        sandbox=dict(type='list', elements='str'),
        labels=dict(type='dict'),
        status=dict(type='list', elements='str', choices=['creating', 'created', 'running', 'stopped', 'unknown']),
        type=dict(type='str', choices=['pod_sandbox', 'pod_container']),
        query=dict(type='str'),
    )
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    with fail_on_kata_error(module):
        rt = Runtime(require_state_root_dir(load_module_config(module)))
        labels = coerce_str_dict(module.params['labels'], 'labels')
        items, corrupt = ctr.list_all(rt, module.params['sandbox'])
        items = select.filter_items(items, module.params['name'], labels, module.params['status'], 'status')
        if module.params['type']:
            items = [i for i in items if i['type'] == module.params['type']]
        items = select.query(items, module.params['query'])
    module.exit_json(changed=False, containers=items, corrupt=corrupt)


if __name__ == '__main__':
    main()
