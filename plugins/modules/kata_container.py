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
from ansible_collections.kata.runtime.plugins.module_utils.kata import container as ctr
from ansible_collections.kata.runtime.plugins.module_utils.kata import sandbox as sbx
from ansible_collections.kata.runtime.plugins.module_utils.kata.common import (
    StateManager,
    common_argument_spec,
    run_manager,
)
from ansible_collections.kata.runtime.plugins.module_utils.kata.errors import (
    Conflict,
    InvalidArgument,
    NotFound,
)
from ansible_collections.kata.runtime.plugins.module_utils.kata.ids import validate_id
from ansible_collections.kata.runtime.plugins.module_utils.kata.options import Differences
from ansible_collections.kata.runtime.plugins.module_utils.kata.runtime import coerce_str_dict

SETTING_OPTIONS = ('bundle', 'rootfs', 'readonly_rootfs', 'command', 'env', 'cwd', 'user', 'hooks', 'cgroups_path',
                   'annotations', 'labels')


class ContainerManager(StateManager):
    """Plans and applies one kata_container call; the plan is the same in check mode."""

    def __init__(self, module):
        super(ContainerManager, self).__init__(module)
        self.cid = validate_id(self.p['name'], 'container')
        if self.p['sandbox'] is not None:
            validate_id(self.p['sandbox'], 'sandbox')
        self.planned = None

    def observe(self):
        """(sandbox id, record, public dict) of the container now; (None, None, None) if missing."""
        sid, rec = ctr.find(self.rt, self.cid)
        if sid is None:
            return None, None, None
        if sid == self.cid:
            srec = self.rt.store.load_sandbox(sid)
            if srec is None:
                return None, None, None
            return sid, None, ctr.sandbox_as_container(self.rt, srec, sbx.vm_state(self.rt, srec))
        if rec is None:
            return sid, None, None
        return sid, rec, ctr.info(self.rt, rec)

    def run(self):
        sbx.check_timeout('stop_timeout', self.p['stop_timeout'])
        sid, rec, cur = self.observe()
        if self.p['sandbox'] and sid and sid != self.p['sandbox'] and self.p['state'] != 'absent':
            raise Conflict('container %s belongs to sandbox %s, not %s' % (self.cid, sid, self.p['sandbox']))
        self.diff['before'] = {'status': cur['status'] if cur else 'absent'}
        self.observed = cur
        if self.p['state'] == 'absent':
            self.absent(sid, cur)
        else:
            if cur is not None and cur['type'] == 'pod_sandbox':
                raise InvalidArgument('%s is a sandbox (pod_sandbox): manage it with kata.runtime.kata_sandbox'
                                      % self.cid)
            self.present(sid, rec, cur)
        self.finish(container=self.result_container())

    observed = None

    def result_container(self):
        if not self.changed and self.observed is not None:
            return self.observed  # nothing was done: no second look at libvirt and the agent
        if self.check and self.changed:
            if self.p['state'] == 'absent':
                return {}
            out = dict(self.planned or {})
            out.update({'id': self.cid, 'status': self.p['state']})
            return out
        dummy, dummy2, cur = self.observe()
        return cur or {}

    def absent(self, sid, cur):
        self.diff['after'] = {'status': 'absent'}
        if sid is None:
            return
        if cur is not None and cur['status'] == 'running' and not self.p['force']:
            if cur['type'] == 'pod_sandbox':
                srec = self.rt.store.load_sandbox(sid)
                sbx.refuse_running(self.rt, sid, sbx.vm_state(self.rt, srec))
            else:
                raise Conflict('container %s is still running: stop it first or use force=true' % self.cid)
        self.act('delete container %s' % self.cid, ctr.delete, self.rt, self.cid, force=self.p['force'])

    def present(self, sid, rec, cur):
        opts = {k: self.p[k] for k in SETTING_OPTIONS}
        if opts['env'] is not None:
            opts['env'] = coerce_str_dict(opts['env'], 'env')  # oci.generate_spec makes the K=V list
        for key in ('labels', 'annotations'):
            opts[key] = coerce_str_dict(opts[key], key)
        if opts['bundle']:
            opts['cwd'] = None if self.p['cwd'] == '/' else self.p['cwd']
        if rec is not None and not (opts['bundle'] or opts['rootfs'] or opts['command']):
            # Addressed by name only: the recorded settings are the request (labels aside).
            settings = {k: ctr.recorded_setting(rec, k) for k in ctr.IMMUTABLE + ctr.MUTABLE + ('type',)}
            if opts['labels'] is not None:
                settings['labels'] = opts['labels']
        else:
            settings = ctr.settings_from(opts)
        want = self.p['state']
        status = cur['status'] if cur else 'absent'
        replacing = False
        if rec is not None:
            diffs = Differences()
            given = [k for k in SETTING_OPTIONS if self.p[k] is not None]
            for key, current, desired in ctr.differences(rec, settings):
                # With a bundle its whole config.json is the request; inline, only what is given.
                if self.p['bundle'] or {'args': 'command'}.get(key, key) in given:
                    diffs.add(key, parameter=desired, active=current)
            before, after = diffs.get_before_after()
            self.diff['before'].update(before)
            self.diff['after'].update(after)
            immutable = [n for n in diffs.names() if n in ctr.IMMUTABLE]
            if immutable and not self.p['recreate']:
                raise InvalidArgument(
                    'container %s exists with different %s (%s); set recreate=true to delete and create it again'
                    % (self.cid, ', '.join(immutable),
                       '; '.join('%s: %r -> %r' % (n, before[n], after[n]) for n in immutable)))
            if immutable or (want == 'running' and status == 'stopped'):
                why = 'its settings changed' if immutable else 'it has stopped'
                if status == 'running' and not self.p['force']:
                    raise Conflict('container %s is still running: recreating it needs force=true' % self.cid)
                # refuse before deleting anything what the create after the delete would refuse
                ctr.check_create(self.rt, sid, self.cid, settings, replacing=True)
                replacing = True
                self.act('delete container %s to recreate it (%s)' % (self.cid, why), ctr.delete, self.rt,
                         self.cid, force=True)
                status = 'absent'
            elif 'labels' in diffs.names():
                self.act('update labels of container %s' % self.cid, self.update_labels, sid, settings['labels'])
        self.diff['after']['status'] = want
        if status == 'absent':
            sandbox = self.p['sandbox'] or sid
            if not sandbox:
                raise InvalidArgument('container %s does not exist: give sandbox to create it' % self.cid)
            if self.rt.store.load_sandbox(sandbox) is None:
                raise NotFound('sandbox %s does not exist: create it with kata.runtime.kata_sandbox first'
                               % sandbox)
            ctr.check_create(self.rt, sandbox, self.cid, settings, replacing=replacing and self.check)
            self.planned = {k: settings[k] for k in ('bundle', 'rootfs', 'args', 'labels', 'annotations')}
            self.planned['sandbox'] = sandbox
            self.act('create container %s in sandbox %s' % (self.cid, sandbox), ctr.create, self.rt, sandbox,
                     self.cid, settings)
            status = 'created'
        if want == 'running' and status == 'created':
            self.act('start container %s' % self.cid, ctr.start, self.rt, self.cid)
        elif want == 'stopped' and status in ('created', 'running'):
            self.act('stop container %s' % self.cid, ctr.stop, self.rt, self.cid, sig=self.p['signal'],
                     timeout=self.p['stop_timeout'])
        elif want == 'created' and status == 'running':
            raise Conflict('container %s is running: it cannot go back to created (use recreate or state=stopped)'
                           % self.cid)

    def update_labels(self, sid, labels, trace):
        with self.rt.store.lock(sid):
            rec = self.rt.store.load_container(sid, self.cid)
            rec['labels'] = labels
            self.rt.store.save_container(rec)
            trace.step('updated labels of container %s' % self.cid)


def main():
    argument_spec = common_argument_spec(
        name=dict(type='str', required=True, aliases=['id']),
        sandbox=dict(type='str'),
        state=dict(type='str', default='running', choices=['running', 'created', 'stopped', 'absent']),
        force=dict(type='bool', default=False),
        bundle=dict(type='path'),
        rootfs=dict(type='path'),
        readonly_rootfs=dict(type='bool'),
        command=dict(type='list', elements='str'),
        env=dict(type='dict'),
        cwd=dict(type='str', default='/'),
        user=dict(type='str'),
        hooks=dict(type='dict'),
        cgroups_path=dict(type='str'),
        annotations=dict(type='dict'),
        labels=dict(type='dict'),
        signal=dict(type='str', default='SIGTERM'),
        stop_timeout=dict(type='int', default=10),
        recreate=dict(type='bool', default=False),
    )
    module = AnsibleModule(
        argument_spec=argument_spec,
        supports_check_mode=True,
        mutually_exclusive=[('bundle', 'rootfs'), ('bundle', 'command'), ('bundle', 'env'), ('bundle', 'user')],
    )
    run_manager(module, ContainerManager)


if __name__ == '__main__':
    main()
