#!/usr/bin/python
# -*- coding: utf-8 -*-

# Copyright: kata.runtime contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r'''
module: kata_guest_image
short_description: Build the guest kernel and initrd that sandboxes boot
version_added: 0.1.0
description:
  - Builds the boot files of kata.runtime guests from host packages, the way Kata Containers'
    osbuilder does, without any container engine.
  - The kernel is an uncompressed, PVH-bootable C(vmlinux) extracted from the distribution's
    C(vmlinuz) when possible (this saves seconds of decompression at every boot under software
    emulation); otherwise the C(vmlinuz) itself is used.
  - The initrd holds a static busybox, the kernel modules the guest needs (with their
    dependencies from C(modules.dep)), a minimal Python runtime and the agent, started by C(/init).
  - The build is content-addressed and idempotent. Files are named after their checksum, and
    the stable links C(vmlinux) and C(kata-initrd.img) in O(dest) point at the current ones.
    A run whose inputs did not change reports no change.
  - When the host has no C(/boot/vmlinuz-*) and O(kernel) is not given, the distribution's
    kernel package is downloaded with C(apt-get download) and unpacked under O(dest)C(/cache)
    (it is not installed on the host).
author:
  - kata.runtime contributors (@kata)
options:
  dest:
    description:
      - Directory the kernel, the initrd and their build cache are written to.
      - Defaults to O(config)'s C(image_dir) (C(/var/lib/kata-runtime/image)), where sandboxes
        look for C(vmlinux) and C(kata-initrd.img) unless the config names other files.
    type: path
  kernel:
    description:
      - A kernel image (C(vmlinuz) or C(vmlinux)) to use instead of the host's newest C(/boot/vmlinuz-*).
      - Its version is read from the image; give O(modules_dir) when it cannot be.
    type: path
  modules_dir:
    description:
      - The kernel modules directory matching the kernel (C(/lib/modules/<version>)).
      - Derived from the kernel's version when not given.
    type: path
  busybox:
    description:
      - A statically linked busybox (Debian package C(busybox-static)).
    type: path
    default: /bin/busybox
  python:
    description:
      - The Python interpreter the guest runs the agent with; it, its shared libraries and
        the part of its standard library the agent needs are copied into the initrd.
      - Defaults to the target's C(/usr/bin/python3) (with symlinks resolved).
    type: path
  force:
    description:
      - Rebuild and verify everything instead of trusting the build cache's records of earlier
        builds.
      - The result still reports a change only when a file in O(dest) had to be written, so this
        also repairs damaged or deleted outputs without rebuilding identical ones.
    type: bool
    default: false
extends_documentation_fragment:
  - kata.runtime.kata
  - kata.runtime.kata.attributes
  - kata.runtime.kata.actiongroup_kata
attributes:
  check_mode:
    support: full
    details:
      - Inspects the inputs (kernel, modules, busybox, Python) and the existing build without
        downloading or writing anything, and reports whether a build would change O(dest).
  diff_mode:
    support: full
    details:
      - Shows the files the stable links C(vmlinux) and C(kata-initrd.img) point at before and after.
  idempotent:
    support: full
notes:
  - O(runtime_root) has no effect on this module; it is accepted so that C(module_defaults) for
    the C(kata.runtime.kata) group apply to every module.
seealso:
  - module: kata.runtime.kata_check
  - module: kata.runtime.kata_sandbox
'''

EXAMPLES = r'''
- name: Build the guest image where sandboxes look for it
  kata.runtime.kata_guest_image:

- name: Build from a given kernel into another directory
  kata.runtime.kata_guest_image:
    dest: /srv/kata/image
    kernel: /boot/vmlinuz-6.1.0-27-amd64
    modules_dir: /lib/modules/6.1.0-27-amd64

- name: Rebuild and verify everything
  kata.runtime.kata_guest_image:
    force: true
  register: image

- name: Show what the guests boot
  ansible.builtin.debug:
    msg: "{{ image.image.kernel_version }}: {{ image.image.kernel }} + {{ image.image.initrd }}"
'''

RETURN = r'''
image:
  description:
    - The guest boot files.
    - In check mode, values that only a build would tell are null.
  returned: success
  type: dict
  contains:
    kernel:
      description: The kernel file (named after its checksum).
      type: str
      sample: /var/lib/kata-runtime/image/vmlinux-c3718796ffdb206c
    initrd:
      description: The initrd file (named after its checksum).
      type: str
      sample: /var/lib/kata-runtime/image/kata-initrd-5f9c623264907891.img
    kernel_link:
      description: The stable link to RV(image.kernel) that sandboxes boot.
      type: str
      sample: /var/lib/kata-runtime/image/vmlinux
    initrd_link:
      description: The stable link to RV(image.initrd) that sandboxes boot.
      type: str
      sample: /var/lib/kata-runtime/image/kata-initrd.img
    kernel_version:
      description: The kernel release.
      type: str
      sample: 6.1.0-27-amd64
    kernel_source:
      description: Where the kernel came from, V(host) (C(/boot)), V(package) (downloaded) or V(given) (O(kernel)).
      type: str
      sample: host
    vmlinux_extracted:
      description: Whether the kernel is an uncompressed vmlinux extracted from the vmlinuz.
      type: bool
      sample: true
    kernel_method:
      description: How the kernel was obtained (the compression and its offset, or why extraction failed).
      type: str
      sample: xz@21196
    kernel_sha256:
      description: SHA-256 of the kernel file.
      type: str
      sample: c3718796ffdb206cc149543cf925b868d9cd0cb504ba554539a01303179505aa
    initrd_sha256:
      description: SHA-256 of the initrd file.
      type: str
      sample: 5f9c623264907891bf11541e772f47f3549833c0dd58214bafd1eb328d6b998b
    kernel_size:
      description: Size of the kernel file in bytes.
      type: int
      sample: 65906612
    initrd_size:
      description: Size of the initrd file in bytes.
      type: int
      sample: 19141996
    modules:
      description: The kernel modules the guest loads, in load order.
      type: list
      elements: str
      sample: [virtio_ring, virtio, virtio_pci, virtio_console, 9pnet, 9pnet_virtio, netfs, fscache, 9p]
actions:
  description: What was done (or, in check mode, what would be done), in order.
  returned: always
  type: list
  elements: str
  sample: ["writing vmlinux-c3718796ffdb206c (xz@21196)", "writing kata-initrd-5f9c623264907891.img (19141996 bytes)"]
'''

import os

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.kata.runtime.plugins.module_utils.kata import common, options
from ansible_collections.kata.runtime.plugins.module_utils.kata.errors import InvalidArgument
from ansible_collections.kata.runtime.plugins.module_utils.kata.guest import image as builder
from ansible_collections.kata.runtime.plugins.module_utils.kata.guest.cache import forget_build_records

KERNEL_LINK = builder.KERNEL_LINK
INITRD_LINK = builder.INITRD_LINK
SYSTEM_PYTHON = '/usr/bin/python3'

IMAGE_KEYS = builder.IMAGE_KEYS


def default_python():
    if os.path.exists(SYSTEM_PYTHON):
        return os.path.realpath(SYSTEM_PYTHON)
    return None


def run(module, params, progress):
    """Check the options, then plan (check mode) or build; returns what main() reports."""
    config = common.load_module_config(module)
    dest = params['dest'] or config.image_dir
    for name, value in (('kernel', params['kernel']), ('modules_dir', params['modules_dir']),
                        ('busybox', params['busybox']), ('python', params['python']), ('dest', dest)):
        if value is not None and ('\x00' in value or not os.path.isabs(value)):
            raise InvalidArgument('invalid %s %r: must be an absolute path without NUL bytes' % (name, value))
    if params['python'] is None:
        params['python'] = default_python()
        if params['python'] is None:
            raise InvalidArgument('no %s on the target: give the python option' % SYSTEM_PYTHON)
    # Refuse missing inputs before the builder writes anything.
    for name, isfile in (('kernel', True), ('busybox', True), ('python', True), ('modules_dir', False)):
        value = params[name]
        if value is not None and not (os.path.isfile(value) if isfile else os.path.isdir(value)):
            raise InvalidArgument('%s %s does not exist%s' % (
                name, value, '' if isfile else ' or is not a directory'))
    dest = os.path.normpath(dest)
    before = {'kernel': builder.readlink_or_none(os.path.join(dest, KERNEL_LINK)),
              'initrd': builder.readlink_or_none(os.path.join(dest, INITRD_LINK))}

    if module.check_mode:
        changed, image, actions, after = builder.plan_image(
            dest, kernel=params['kernel'], modules_dir=params['modules_dir'], busybox=params['busybox'],
            python=params['python'], verify=params['force'])
        return changed, image, actions, before, after

    if params['force']:
        progress('forgetting earlier build records in %s' % os.path.join(dest, 'cache'))
        forget_build_records(dest)
    result = builder.build_image(
        dest, kernel=params['kernel'], modules_dir=params['modules_dir'],
        busybox=params['busybox'], python=params['python'], progress=progress)
    changed = bool(result['changed'])
    image = {key: result.get(key) for key in IMAGE_KEYS}
    after = {'kernel': builder.readlink_or_none(image['kernel_link']), 'initrd': builder.readlink_or_none(image['initrd_link'])}
    actions = progress.messages() if changed else []
    for key, link in (('kernel', KERNEL_LINK), ('initrd', INITRD_LINK)):
        if after[key] != before[key]:
            actions.append('pointed %s at %s' % (link, after[key]))
    return changed, image, actions, before, after


def main():
    module = AnsibleModule(
        argument_spec=common.common_argument_spec(
            dest=dict(type='path'),
            kernel=dict(type='path'),
            modules_dir=dict(type='path'),
            busybox=dict(type='path', default='/bin/busybox'),
            python=dict(type='path'),
            force=dict(type='bool', default=False),
        ),
        supports_check_mode=True,
    )
    params = dict(module.params)
    progress = common.Progress(module, tag='kata_guest_image')

    outcome = None
    with common.fail_on_kata_error(module, progress=progress.lines):
        try:
            outcome = run(module, params, progress)
        except OSError as err:
            module.fail_json(msg='building the guest image failed: %s' % err, changed=False,
                             progress=progress.lines)
    changed, image, actions, before, after = outcome

    differences = options.Differences()
    for key in ('kernel', 'initrd'):
        differences.compare(key, after[key], before[key])
    out = dict(changed=changed, image=image, actions=actions)
    if module._diff:
        diff_before, diff_after = differences.get_before_after()
        out['diff'] = dict(before=diff_before, after=diff_after)
    module.exit_json(**out)


if __name__ == '__main__':
    main()
