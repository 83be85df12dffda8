#!/usr/bin/python
# -*- coding: utf-8 -*-

# Copyright: kata.runtime contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r'''
---
module: kata_container
short_description: Manage one OCI container inside a sandbox's guest
description:
  - Declares the state of one OCI container (type C(pod_container)) that runs inside the guest
    of a sandbox managed by M(kata.runtime.kata_sandbox).
  - The container is given either as an OCI bundle (O(bundle), a directory with
    C(config.json)) or inline (O(rootfs), O(command), O(env), O(cwd), O(user), ...).
  - O(state=running) creates and starts a missing container, starts a created one, and
    recreates a stopped one. O(state=created) creates without starting. O(state=stopped)
    sends O(signal), waits O(stop_timeout) seconds, then SIGKILL.
  - O(state=absent) follows the Kata delete semantics. A running container without
    O(force) fails with a message saying it is still running and nothing changes; with
    O(force) it is killed first. A container of type C(pod_sandbox) (its ID is a sandbox ID)
    deletes the whole sandbox. Then the poststop hooks run (a failure is a warning), the
    cgroup paths are removed and the container-to-sandbox mapping is removed.
  - A changed immutable setting fails with a message naming the fields, unless O(recreate=true).
    A changed limit (O(memory_mb), O(cpus), O(pids_limit), or C(linux.resources) of a bundle)
    is applied in place to the container's cgroup in the guest, without a restart.
  - Every field of a bundle's C(config.json) is honoured, refused (the create fails naming the
    field) or ignored with a warning naming it; the collection's C(docs/oci.md) lists them.
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
      - Plans and reports what would be done without touching the guest, cgroupfs or the state root.
  diff_mode:
    support: full
  idempotent:
    support: full
    details:
      - O(state=running) on a container whose process has exited recreates it, as a container
        engine would; use O(state=created) or O(state=stopped) for run-to-completion containers.
options:
  name:
    description:
      - The container ID. It must match C(^[A-Za-z0-9][A-Za-z0-9_.+-]{0,127}$).
    type: str
    required: true
    aliases: [id]
  sandbox:
    description:
      - The sandbox the container runs in. Required to create a container; otherwise it is
        found through the container-to-sandbox mapping.
    type: str
  state:
    description:
      - The state the container should be in (OCI statuses, plus V(absent)).
    type: str
    choices: [running, created, stopped, absent]
    default: running
  bundle:
    description:
      - Path of an OCI bundle (a directory holding C(config.json) and usually the rootfs).
      - Mutually exclusive with O(rootfs), O(command), O(env), O(cwd) and O(user).
    type: path
  rootfs:
    description:
      - Root filesystem of the container on the host (a directory). It is shared with the guest
        read-only; what the container writes goes to a layer in guest memory (see
        O(readonly_rootfs)) and never reaches this directory.
    type: path
  readonly_rootfs:
    description:
      - Mount the container's root filesystem read-only inside the guest too (C(root.readonly)
        of the OCI config). With V(false) the container gets a writable overlay whose upper layer
        lives in guest memory and is dropped with the container.
      - Next to O(bundle), overrides its C(root.readonly). Default V(false) (or the bundle's value).
    type: bool
  command:
    description:
      - The process to run, as a list (C(args) of the OCI process).
    type: list
    elements: str
  env:
    description:
      - Environment of the process.
    type: dict
  cwd:
    description:
      - Working directory of the process inside the rootfs.
    type: str
    default: /
  user:
    description:
      - C(uid[:gid]) the process runs as, numeric.
    type: str
  volumes:
    description:
      - Host files or directories shared with the container (bind mounts), each a string
        C(HOST:CONTAINER[:ro]) or a dict with C(source), C(destination) and C(read_only) (default V(false)).
      - C(HOST) must be an absolute path that exists, outside the runtime's state root; C(CONTAINER)
        an absolute path inside the container without C(..). A read-write volume needs a host file
        system with user xattrs, where what the guest sets (owners, modes, links) is kept; nothing
        the guest does there reaches the host as a setuid file, a device or a link.
      - With O(bundle), added after the C(mounts) of its C(config.json). A change needs O(recreate).
      - See C(docs/volumes.md) in the collection.
    type: list
    elements: raw
  hooks:
    description:
      - OCI hooks (runtime-spec 1.3) keyed by kind, each a list of C({path, args, env, timeout}).
        They run on the host with the container state JSON on stdin.
      - With O(bundle), replaces the hooks of its C(config.json).
    type: dict
  cgroups_path:
    description:
      - Cgroup path of the container on the host. Absolute paths are relative to each cgroup
        mount; relative ones go under the config file's C(cgroup_parent). Empty means
        C(<cgroup_parent>/<name>).
    type: str
  annotations:
    description:
      - OCI annotations. C(io.katacontainers.pkg.oci.container_type) or
        C(io.kubernetes.cri.container-type) set the container type.
    type: dict
  labels:
    description:
      - Labels for selecting containers with M(kata.runtime.kata_container_info). Updated in place.
    type: dict
  memory_mb:
    description:
      - Memory limit of the container in MiB (C(memory.max) of its cgroup inside the guest); the
        container is OOM-killed beyond it, the sandbox and its other containers keep running.
      - Next to O(bundle), overrides C(linux.resources.memory.limit). More than the sandbox's
        C(memory_mb) fails.
      - A change on an existing container is applied in place (no restart).
    type: int
  cpus:
    description:
      - CPU limit of the container as a number of CPUs (V(0.5) is half a CPU), written to C(cpu.max) of its
        cgroup inside the guest, over a 100 ms period.
      - Next to O(bundle), overrides C(linux.resources.cpu.quota)/C(period). More than the
        sandbox's C(vcpus) fails. A change is applied in place.
    type: float
  pids_limit:
    description:
      - Most processes (and threads) the container may have at once (C(pids.max) in the guest).
      - Next to O(bundle), overrides C(linux.resources.pids.limit). A change is applied in place.
    type: int
  signal:
    description:
      - Signal that stops the container (name or number).
    type: str
    default: SIGTERM
  stop_timeout:
    description:
      - Seconds to wait after O(signal) before SIGKILL.
    type: int
    default: 10
  recreate:
    description:
      - Delete and create the container again when an immutable setting differs.
    type: bool
    default: false
seealso:
  - module: kata.runtime.kata_sandbox
  - module: kata.runtime.kata_container_info
'''

EXAMPLES = r'''
- name: Run a long-lived container in sandbox web-1
  kata.runtime.kata_container:
    name: web-1-app
    sandbox: web-1
    rootfs: /srv/rootfs/busybox
    command: [/bin/sh, -c, 'while true; do date; sleep 5; done']
    env:
      GREETING: hello

- name: Serve a host directory read-only and keep a writable data directory
  kata.runtime.kata_container:
    name: web-1-www
    sandbox: web-1
    rootfs: /srv/rootfs/busybox
    command: [httpd, -f, -h, /www]
    volumes:
      - /srv/www:/www:ro
      - source: /srv/data/web-1
        destination: /data
        read_only: false

- name: Run from an OCI bundle, without starting it
  kata.runtime.kata_container:
    name: web-1-job
    sandbox: web-1
    bundle: /srv/bundles/job
    state: created

- name: Delete it even if it still runs (poststop hooks run)
  kata.runtime.kata_container:
    name: web-1-app
    state: absent
    force: true
'''

RETURN = r'''
container:
  description: The container as it is after the module ran (in check mode, as it would be). Empty when absent.
  returned: always
  type: dict
  contains:
    id:
      description: Container ID.
      type: str
      sample: web-1-app
    sandbox:
      description: ID of the sandbox it runs in.
      type: str
      sample: web-1
    type:
      description: V(pod_container), or V(pod_sandbox) for the sandbox itself.
      type: str
      sample: pod_container
    status:
      description:
        - OCI status (V(creating), V(created), V(running), V(stopped)), observed live.
        - V(unknown) when the VM runs but its agent could not be asked (unreachable, or a reply
          that is not what the call returns); RV(container.error) says why.
      type: str
      sample: running
    pid:
      description: PID of the process inside the guest, while created or running.
      type: int
      sample: 7
    exit_code:
      description: Exit code once stopped (128+N when killed by signal N).
      type: int
      sample: 0
    bundle:
      description:
        - The OCI bundle directory - the one given, or for an inline container the host-owned
          C(bundles/<name>) under the sandbox's state directory holding its generated C(config.json).
      type: str
    rootfs:
      description: Root filesystem on the host.
      type: str
    readonly_rootfs:
      description: Whether the root filesystem is read-only inside the container.
      type: bool
    args:
      description: The process arguments.
      type: list
      elements: str
    annotations:
      description: Annotations.
      type: dict
    labels:
      description: Labels.
      type: dict
    cgroups_path:
      description: The requested cgroup path.
      type: str
    cgroups_paths:
      description: The cgroup directories created for the container on the host.
      type: list
      elements: str
    limits:
      description:
        - The limits of the container's cgroup inside the guest, as cgroup v2 file names and
          values (C(memory.max), C(cpu.max), C(cpu.weight), C(cpuset.cpus), C(pids.max), ...).
      type: dict
      sample: {"memory.max": "67108864", "cpu.max": "50000 100000", "pids.max": "64"}
    stdout_path:
      description: Host path of the process's standard output.
      type: str
    stderr_path:
      description: Host path of the process's standard error.
      type: str
    created_at:
      description: Creation time (RFC 3339, UTC).
      type: str
    started_at:
      description: Start time (RFC 3339, UTC).
      type: str
    finished_at:
      description: When the process ended (RFC 3339, UTC).
      type: str
    error:
      description: Why the status is V(unknown) (what went wrong asking the sandbox's agent).
      returned: when RV(container.status) is V(unknown)
      type: str
      sample: "agent call 'list_containers' on socket /run/kata-runtime/sock/0a1b2c3d4e5f6a7b.sock timed out after 5s"
actions:
  description: What was done (or, in check mode, would be done), in order.
  returned: always
  type: list
  elements: str
  sample: ["recorded container web-1-app in sandbox web-1", "started container web-1-app (guest pid 7)"]
'''

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.kata.runtime.plugins.module_utils.kata.common import module_args, run_manager
from ansible_collections.kata.runtime.plugins.module_utils.kata.container_manager import ContainerManager
from ansible_collections.kata.runtime.plugins.module_utils.kata.options import CONTAINER_OPTIONS


def main():
    run_manager(AnsibleModule(**module_args(CONTAINER_OPTIONS)), ContainerManager)


if __name__ == '__main__':
    main()
