# -*- coding: utf-8 -*-

# Copyright: kata.runtime contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Documentation shared by the kata.runtime modules.

How to use each fragment (list them under ``extends_documentation_fragment``):

``kata.runtime.kata``
    The options every module has: ``config`` and ``runtime_root``. Pair it with
    ``COMMON_ARGS`` from ``module_utils/kata/common.py`` in the argument spec.
``kata.runtime.kata.force``
    The ``force`` option with the delete semantics of kata_sandbox, kata_container and
    kata_prune (kill what still runs instead of refusing). Modules whose ``force`` means
    something else (kata_guest_image: rebuild) document their own.
``kata.runtime.kata.attributes``
    The descriptions of the ``check_mode``, ``diff_mode`` and ``idempotent`` attributes.
    Every module uses it and states ``support`` (and ``details`` where useful) itself under
    ``attributes:``.
``kata.runtime.kata.attributes_info_module``
    With ``attributes``, for modules that never change anything (the ``*_info`` modules and
    kata_check): check_mode full, diff_mode N/A, idempotent full.
``kata.runtime.kata.actiongroup_kata``
    Every module: membership of the ``kata`` action group, so
    ``module_defaults: {group/kata.runtime.kata: {...}}`` applies to it.

A state-changing module therefore reads::

    extends_documentation_fragment:
      - kata.runtime.kata
      - kata.runtime.kata.force
      - kata.runtime.kata.attributes
      - kata.runtime.kata.actiongroup_kata
    attributes:
      check_mode:
        support: full
      diff_mode:
        support: full
      idempotent:
        support: full
"""

from __future__ import annotations


class ModuleDocFragment(object):

    # The options every module shares (argument spec: common.COMMON_ARGS).
    DOCUMENTATION = r'''
options:
  config:
    description:
      - Path of the host config file (YAML) that holds the runtime's defaults on the target
        (libvirt URI, accel, guest kernel and initrd, vCPUs, memory, state root, cgroup parent,
        timeouts, domain name prefix).
      - A missing file at the default path means the built-in defaults; a missing file at any
        other path is an error.
      - Module options override the values in this file.
    type: path
    default: /etc/kata-runtime/config.yaml
  runtime_root:
    description:
      - Directory that holds the runtime state (sandbox and container records, agent sockets,
        locks, ID mappings).
      - Overrides O(config)'s C(state_root), whose default is C(/run/kata-runtime).
      - Every module that works on the same sandboxes must use the same value.
    type: path
requirements:
  - python >= 3.9
  - libvirt-python (on the target)
notes:
  - The modules run on the host that runs the sandboxes and need root there
    (libvirt C(qemu:///system), cgroupfs, the state root).
'''

    # force with the delete semantics of the lifecycle modules.
    FORCE = r'''
options:
  force:
    description:
      - Act even when containers are still running instead of refusing. Running containers
        are killed first; their poststop hooks still run and their cgroup paths and ID
        mappings are still removed.
      - Without it, an operation that would have to kill a running container fails, names
        the container and changes nothing.
    type: bool
    default: false
'''

    # Descriptions of the attributes; each module states its own support level.
    ATTRIBUTES = r'''
options: {}
attributes:
  check_mode:
    description: Can run in C(check_mode) and return changed status prediction without modifying target.
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in C(check_mode)), when in diff mode.
  idempotent:
    description:
      - When run twice in a row outside check mode, with the same arguments, the second invocation indicates no change.
      - This assumes that the system controlled/queried by the module has not changed in a relevant way.
'''

    # Use together with ATTRIBUTES for modules that only look.
    ATTRIBUTES_INFO_MODULE = r'''
options: {}
attributes:
  check_mode:
    support: full
    details:
      - This action does not modify state.
  diff_mode:
    support: N/A
    details:
      - This action does not modify state.
  idempotent:
    support: full
    details:
      - This action does not modify state.
'''

    ACTIONGROUP_KATA = r'''
options: {}
attributes:
  action_group:
    description: Use C(group/kata.runtime.kata) in C(module_defaults) to set defaults for this module.
    support: full
    membership:
      - kata.runtime.kata
'''
