#!/usr/bin/python
# -*- coding: utf-8 -*-

# Copyright: kata.runtime contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r'''
---
module: kata_prune
short_description: Delete many sandboxes at once and collect what crashed VMs and interrupted runs left behind
description:
  - Deletes the sandboxes picked by O(names) (glob patterns allowed), O(labels), a JMESPath
    O(query) or O(all), in parallel, with the delete semantics of M(kata.runtime.kata_sandbox).
    Without any selector it refuses to act.
  - Also removes orphans, whatever the selector - records whose VM is gone (crashed VM,
    rebooted host), VMs of this state root with no record, ID mappings pointing nowhere,
    empty cgroup directories this state root created, VM templates whose image is stale (the
    kernel or initrd they were built from changed; see M(kata.runtime.kata_template)) and what
    an interrupted template build left. Sandboxes started from a removed template keep running.
  - Only this state root's things are collected - each VM names the state root that owns it,
    and cgroup directories are noted in the state root before they are made - and never what
    an operation in progress holds (its sandbox is locked), so a prune during a create does not
    take the new sandbox.
  - One failure does not stop the others; each is reported in RV(failed) with its reason.
  - Meant for incidents, for example
    C(ansible all -m kata.runtime.kata_prune -a 'labels=tenant=acme force=true').
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
      - Lists what would be deleted and which orphans would be removed, and touches nothing.
  diff_mode:
    support: full
    details:
      - Before and after lists of the sandbox IDs on the host and of the orphans.
  idempotent:
    support: full
options:
  names:
    description:
      - Sandbox IDs or glob patterns (C(web-*)).
    type: list
    elements: str
  labels:
    description:
      - Sandboxes that carry all of these labels with these values.
      - On the command line, C(labels=tenant=acme) gives one label.
    type: dict
  query:
    description:
      - A JMESPath expression over the list of sandboxes (as M(kata.runtime.kata_sandbox_info)
        returns them) that yields the sandboxes, or their IDs, to delete.
    type: str
  all:
    description:
      - Select every sandbox on the host.
    type: bool
    default: false
  orphans:
    description:
      - Also remove orphans (see the description).
    type: bool
    default: true
  workers:
    description:
      - How many sandboxes are deleted at the same time.
    type: int
    default: 4
notes:
  - The runtime's cgroup parent (C(cgroup_parent) in the config file) must be dedicated to
    kata.runtime; empty directories under it are collected.
seealso:
  - module: kata.runtime.kata_sandbox
  - module: kata.runtime.kata_sandbox_info
'''

EXAMPLES = r'''
- name: Delete every sandbox of tenant acme, running containers included
  kata.runtime.kata_prune:
    labels:
      tenant: acme
    force: true

- name: What would a full cleanup remove?
  kata.runtime.kata_prune:
    all: true
    force: true
  check_mode: true

- name: Only collect orphans left by crashed VMs
  kata.runtime.kata_prune:
    names: []
    query: "[?state == 'dead']"
'''

RETURN = r'''
deleted:
  description: IDs of the sandboxes deleted (in check mode, that would be deleted).
  returned: always
  type: list
  elements: str
  sample: [web-1, web-2]
orphans_removed:
  description: Orphans removed (in check mode, that would be removed).
  returned: always
  type: list
  elements: dict
  contains:
    kind:
      description:
        - V(sandbox_without_vm), V(vm_without_state), V(dangling_mapping), V(empty_cgroup) or
          V(stale_template).
      type: str
    id:
      description:
        - The sandbox ID, domain name, container ID, cgroup directory, or template key (the
          name of an unfinished build's directory).
      type: str
    detail:
      description: Why it is an orphan.
      type: str
failed:
  description:
    - What could not be deleted, each with the reason. Empty when everything went.
    - When it is not empty the task fails, and Ansible replaces this key with V(true) in the
      task result; the same list is in RV(failures).
  returned: always
  type: list
  elements: dict
  sample: [{id: web-3, reason: "sandbox web-3 still has running containers (app): stop them first or use force=true"}]
failures:
  description: The same list as RV(failed), kept under a name Ansible does not overwrite.
  returned: always
  type: list
  elements: dict
  sample: [{id: web-3, reason: "sandbox web-3 still has running containers (app): stop them first or use force=true"}]
actions:
  description: What was done, in order.
  returned: always
  type: list
  elements: str
'''

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.kata.runtime.plugins.module_utils.kata import prune
from ansible_collections.kata.runtime.plugins.module_utils.kata.common import (
    Progress,
    common_argument_spec,
    fail_on_kata_error,
    load_module_config,
    require_state_root_dir,
)
from ansible_collections.kata.runtime.plugins.module_utils.kata.errors import InvalidArgument
from ansible_collections.kata.runtime.plugins.module_utils.kata.runtime import Runtime, coerce_str_dict


def main():
    argument_spec = common_argument_spec(
        names=dict(type='list', elements='str'),
        labels=dict(type='dict'),
        query=dict(type='str'),
        all=dict(type='bool', default=False),
        force=dict(type='bool', default=False),
        orphans=dict(type='bool', default=True),
        workers=dict(type='int', default=4),
    )
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    p = module.params
    with fail_on_kata_error(module, deleted=[], orphans_removed=[], failures=[], actions=[]):
        if p['workers'] < 1:
            raise InvalidArgument('workers must be at least 1, got %d' % p['workers'])
        rt = Runtime(require_state_root_dir(load_module_config(module)), progress=Progress(module))
        labels = coerce_str_dict(p['labels'], 'labels')
        listing = rt.store.list_sandboxes()
        present = sorted([r.id for r in listing[0]] + [c['id'] for c in listing[1]])
        if p['names'] == [] and not (labels or p['query'] or p['all']):
            ids = []  # explicit empty selection: orphans only
        else:
            ids = prune.selected_ids(rt, p['names'], labels, p['query'], p['all'], listing=listing)
        result = prune.prune(rt, ids, force=p['force'], check_mode=module.check_mode, workers=p['workers'],
                             orphans=p['orphans'])
    for w in result.pop('warnings'):
        module.warn(w)
    result['failures'] = list(result['failed'])
    changed = bool(result['deleted'] or result['orphans_removed'])
    if module._diff:
        orphans = ['%s %s' % (o['kind'], o['id']) for o in result['orphans_removed']]
        left = ['%s %s' % (f['kind'], f['id']) for f in result['failed'] if 'kind' in f]
        result['diff'] = {
            'before': {'sandboxes': present, 'orphans': sorted(orphans + left)},
            'after': {'sandboxes': [i for i in present if i not in result['deleted']], 'orphans': sorted(left)},
        }
    if result['failed']:
        module.fail_json(msg='%d item(s) could not be removed: %s' % (
            len(result['failed']), '; '.join('%s: %s' % (f['id'], f['reason']) for f in result['failed'])),
            changed=changed, **result)
    module.exit_json(changed=changed, **result)


if __name__ == '__main__':
    main()
