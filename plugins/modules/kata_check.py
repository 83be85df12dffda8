#!/usr/bin/python
# -*- coding: utf-8 -*-

# Copyright: kata.runtime contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r'''
module: kata_check
short_description: Check whether a host is ready to run kata.runtime sandboxes
version_added: 0.1.0
description:
  - Reports what a sandbox needs on this host, the way C(kata-runtime check) and
    C(kata-runtime env) do in Kata Containers.
  - Whether KVM can run a standard guest kernel (and why not when it cannot - absent, no
    permission, or a paravirtual-only KVM that cannot boot a stock kernel), and the accelerator
    that O(config)'s C(accel) resolves to.
  - The QEMU binary and its version, whether libvirt answers at the configured URI and its
    versions, the cgroup layout (v1, v2 or hybrid), the guest kernel and initrd with their
    SHA-256 checksums, and whether the state root is writable.
  - Whether libvirt keeps its QEMU capabilities cache from one domain start to the next. Where
    C(/dev/kvm) exists but the user libvirt runs QEMU as cannot open it read-write (a fresh
    host on which udev never set it to C(root:kvm 0660)), libvirt discards the cache and probes
    QEMU again on every domain start, seconds per sandbox; this is reported in
    RV(kata_host.warnings) with the command that fixes it.
  - Never changes anything.
author:
  - kata.runtime contributors (@kata)
options:
  strict:
    description:
      - Fail when the host cannot run sandboxes, listing every problem found.
      - When V(false), problems are only reported in RV(kata_host.problems).
    type: bool
    default: false
extends_documentation_fragment:
  - kata.runtime.kata
  - kata.runtime.kata.attributes
  - kata.runtime.kata.attributes_info_module
  - kata.runtime.kata.actiongroup_kata
notes:
  - KVM being unusable is not a problem by itself when O(config)'s C(accel) is C(auto), since
    sandboxes then run under TCG (software emulation), which is slower. It is a problem
    when C(accel) is C(kvm).
  - A capabilities cache that libvirt discards on every start is a warning, not a problem;
    sandboxes start and run correctly, only seconds slower each, so O(strict) does not fail on
    it. That holds with C(accel=kvm) too, since sandbox VMMs run as root and open C(/dev/kvm)
    whatever its group.
  - To read libvirt's user for QEMU the module asks libvirt for its host capabilities; on a
    host whose cache is discarded on every use, that request itself re-probes QEMU (seconds),
    and RV(kata_host.qemu_caps_cache.reprobed) says so.
  - The state root is checked without creating it; when it does not exist yet, the nearest
    existing parent directory must be writable.
seealso:
  - module: kata.runtime.kata_guest_image
  - module: kata.runtime.kata_sandbox
'''

EXAMPLES = r'''
- name: Report whether this host can run sandboxes
  kata.runtime.kata_check:
  register: check

- name: Show the problems, if any
  ansible.builtin.debug:
    var: check.kata_host.problems

- name: Stop here unless the host is ready
  kata.runtime.kata_check:
    strict: true

- name: Check against another config file and state root
  kata.runtime.kata_check:
    config: /etc/kata-runtime/test.yaml
    runtime_root: /run/kata-test
'''

RETURN = r'''
kata_host:
  description: What was found on the host.
  returned: always
  type: dict
  contains:
    ready:
      description: Whether the host can run sandboxes (no problems found).
      type: bool
      sample: true
    problems:
      description: What keeps the host from running sandboxes, one sentence each.
      type: list
      elements: str
      sample: ["guest kernel /var/lib/kata-runtime/image/vmlinux is missing (build it with kata.runtime.kata_guest_image)"]
    warnings:
      description:
        - What makes sandboxes slower or may surprise, one sentence each with what to do. The
          host can still run sandboxes, so these never make RV(kata_host.ready) false nor
          O(strict) fail. Each is also shown as an Ansible warning.
      type: list
      elements: str
      sample:
        - "libvirt discards its QEMU capabilities cache and probes QEMU again on every domain start (...);
          fix with: chgrp kvm /dev/kvm && chmod 0660 /dev/kvm (...)"
    config:
      description: The settings in effect (the config file plus O(runtime_root)).
      type: dict
      contains:
        path:
          description: The config file that was read (it may not exist).
          type: str
          sample: /etc/kata-runtime/config.yaml
        exists:
          description: Whether that file exists.
          type: bool
          sample: true
        settings:
          description: Every setting with its resolved value.
          type: dict
          sample: {"libvirt_uri": "qemu:///system", "accel": "auto", "state_root": "/run/kata-runtime"}
    kvm:
      description: Whether KVM can run a standard guest kernel.
      type: dict
      contains:
        present:
          description: Whether C(/dev/kvm) exists.
          type: bool
          sample: true
        usable:
          description: Whether KVM can boot a stock guest kernel here.
          type: bool
          sample: false
        reason:
          description: Why KVM is or is not usable.
          type: str
          sample: "paravirtual-only KVM (kvm_pvm): cannot run a stock guest kernel"
    accel:
      description: The accelerator sandboxes get with the configured C(accel).
      type: dict
      contains:
        requested:
          description: The configured C(accel) (V(auto), V(kvm) or V(tcg)).
          type: str
          sample: auto
        chosen:
          description: V(kvm) or V(tcg); null when V(kvm) was requested and cannot be used.
          type: str
          sample: tcg
        reason:
          description: Why this accelerator.
          type: str
          sample: "KVM not usable, using tcg (software emulation): /dev/kvm is absent"
    qemu:
      description: The QEMU system emulator.
      type: dict
      contains:
        path:
          description: Path of the binary; null when none was found.
          type: str
          sample: /usr/bin/qemu-system-x86_64
        version:
          description: Its version; null when unknown.
          type: str
          sample: 7.2.22
    libvirt:
      description: The libvirt daemon at the configured URI.
      type: dict
      contains:
        uri:
          description: The libvirt URI from the config.
          type: str
          sample: qemu:///system
        reachable:
          description: Whether a read-only connection succeeded.
          type: bool
          sample: true
        version:
          description: The libvirt version the daemon reports; null when unreachable.
          type: str
          sample: 9.0.0
        hypervisor_version:
          description: The hypervisor version libvirt reports for the URI's driver; null when unknown.
          type: str
          sample: 7.2.22
        client_version:
          description:
            - The version of the libvirt client library that libvirt-python uses on the target;
              null when libvirt-python is not installed.
          type: str
          sample: 9.0.0
        error:
          description: Why the connection failed; null when it succeeded.
          type: str
          sample: "Failed to connect socket to '/var/run/libvirt/libvirt-sock': No such file or directory"
    cgroups:
      description: The cgroup file systems under the config's C(cgroup_root).
      type: dict
      contains:
        root:
          description: The cgroup mount root.
          type: str
          sample: /sys/fs/cgroup
        layout:
          description: V(v1), V(v2), V(hybrid), or V(none) when no cgroup file system was found.
          type: str
          sample: hybrid
    image:
      description: The guest boot files named by the config.
      type: dict
      contains:
        kernel:
          description: The guest kernel.
          type: dict
          contains:
            path:
              description: Its path.
              type: str
              sample: /var/lib/kata-runtime/image/vmlinux
            present:
              description: Whether it is a readable regular file (symlinks are followed).
              type: bool
              sample: true
            sha256:
              description: SHA-256 of its contents; null when absent.
              type: str
              sample: 5e3c0f1b9a2d4c6e8f0a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f6a
        initrd:
          description: The guest initrd.
          type: dict
          contains:
            path:
              description: Its path.
              type: str
              sample: /var/lib/kata-runtime/image/kata-initrd.img
            present:
              description: Whether it is a readable regular file (symlinks are followed).
              type: bool
              sample: true
            sha256:
              description: SHA-256 of its contents; null when absent.
              type: str
              sample: 0a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f5e3c0f1b9a2d4c6e8f0b
    qemu_caps_cache:
      description:
        - Whether libvirt keeps its QEMU capabilities cache from one domain start to the next,
          and the inputs of that verdict. Only checked for a local C(qemu://) URI that answers;
          otherwise RV(kata_host.qemu_caps_cache.reason) says so, RV(kata_host.qemu_caps_cache.qemu_groups)
          is empty and every other value is null.
      type: dict
      contains:
        stable:
          description:
            - V(true) when the cached probe stays valid; V(false) when libvirt discards it and
              probes QEMU again on every domain start (seconds per sandbox); null when it could
              not be told (not root, libvirt unreachable, not a local QEMU driver).
          type: bool
          sample: false
        reason:
          description: Why, in one sentence.
          type: str
          sample: "/dev/kvm (crw-rw---- root:kvm) is readable and writable by the user libvirt runs QEMU as (...):
            the cached probe stays valid"
        fix:
          description: The command that makes the cache stay valid; null when nothing is to be done.
          type: str
          sample: chgrp kvm /dev/kvm && chmod 0660 /dev/kvm
        kvm_usable_by_qemu:
          description:
            - Whether the user and groups libvirt runs QEMU as may open C(/dev/kvm) read-write
              (its mode bits, or its access ACL), the check libvirt makes before every start.
          type: bool
          sample: false
        qemu_uid:
          description: The user id libvirt runs QEMU as (its DAC security model).
          type: int
          sample: 64055
        qemu_gid:
          description: The group id libvirt runs QEMU as.
          type: int
          sample: 64055
        qemu_user:
          description: The name of that user.
          type: str
          sample: libvirt-qemu
        qemu_groups:
          description: The groups QEMU gets (the user's groups in the user database, and that group).
          type: list
          elements: str
          sample: [kvm, libvirt-qemu]
        kvm_device:
          description: C(/dev/kvm) as it is.
          type: dict
          contains:
            path:
              description: The device path.
              type: str
              sample: /dev/kvm
            present:
              description: Whether it exists.
              type: bool
              sample: true
            mode:
              description: Its type and permissions as C(ls -l) shows them; null when absent.
              type: str
              sample: crw-------
            owner:
              description: Its owner; null when absent.
              type: str
              sample: root
            group:
              description: Its group; null when absent.
              type: str
              sample: root
        cache_file:
          description: libvirt's cached probe of the QEMU binary sandboxes use; null when none or unreadable.
          type: str
          sample: /var/cache/libvirt/qemu/capabilities/926803a9278e445ec919c2b6cbd8c1c449c75b26dcb1686b774314180376c725.xml
        cache_kvm:
          description: Whether that cached probe got KVM; null when there is none or it cannot be read.
          type: bool
          sample: true
        reprobed:
          description:
            - Whether libvirt rewrote a cache file while the module fetched its capabilities,
              that is probed QEMU again; null when the cache directory cannot be read.
          type: bool
          sample: false
    state_root:
      description: The state root.
      type: dict
      contains:
        path:
          description: Its path.
          type: str
          sample: /run/kata-runtime
        exists:
          description: Whether it exists.
          type: bool
          sample: false
        writable:
          description:
            - Whether it can be written; when it does not exist yet, whether its nearest
              existing parent directory can be written (so it can be created).
          type: bool
          sample: true
'''

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.kata.runtime.plugins.module_utils.kata.common import (
    common_argument_spec,
    fail_on_kata_error,
    load_module_config,
)
from ansible_collections.kata.runtime.plugins.module_utils.kata.hostcheck import check_host


def main():
    module = AnsibleModule(
        argument_spec=common_argument_spec(
            strict=dict(type='bool', default=False),
        ),
        supports_check_mode=True,
    )
    with fail_on_kata_error(module):
        config = load_module_config(module)
        host = check_host(module, config)
    for warning in host['warnings']:
        module.warn(warning)
    if module.params['strict'] and not host['ready']:
        module.fail_json(
            msg='host is not ready to run sandboxes: %s' % '; '.join(host['problems']),
            kata_host=host, changed=False)
    module.exit_json(changed=False, kata_host=host)


if __name__ == '__main__':
    main()
