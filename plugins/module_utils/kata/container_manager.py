# Copyright: kata.runtime contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""kata_container's manager: one container brought to the status asked for (the module is its docs).

The options are ``options.CONTAINER_OPTIONS``; the compare step is ``StateManager.compare``.
"""

from __future__ import annotations

from ansible_collections.kata.runtime.plugins.module_utils.kata import container as ctr
from ansible_collections.kata.runtime.plugins.module_utils.kata import limits, options
from ansible_collections.kata.runtime.plugins.module_utils.kata import sandbox as sbx
from ansible_collections.kata.runtime.plugins.module_utils.kata.common import StateManager
from ansible_collections.kata.runtime.plugins.module_utils.kata.errors import (
    Conflict,
    InvalidArgument,
    NotFound,
)
from ansible_collections.kata.runtime.plugins.module_utils.kata.ids import validate_id

OPTIONS = options.CONTAINER_OPTIONS
# Every setting a container record holds (what a request by name alone takes from it).
SETTING_KEYS = OPTIONS.keys(options.IMMUTABLE) + OPTIONS.keys(options.MUTABLE) + limits.GUEST_KEYS


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
        opts = OPTIONS.request(self.p)
        if opts['bundle']:
            opts['cwd'] = None if self.p['cwd'] == '/' else self.p['cwd']
        if rec is not None and not (opts['bundle'] or opts['rootfs'] or opts['command']):
            # Addressed by name only: the recorded settings are the request (labels aside).
            settings = {k: getattr(rec, k) for k in SETTING_KEYS + ('type',)}
            if opts['labels'] is not None:
                settings['labels'] = opts['labels']
        else:
            settings = ctr.settings_from(opts)
        if rec is not None and not opts['bundle']:
            settings = limits.keep_recorded(settings, rec, self.p)
        want = self.p['state']
        status = cur['status'] if cur else 'absent'
        replacing = False
        if rec is not None:
            # With a bundle its whole config.json is the request; inline, only what is given.
            given = None if self.p['bundle'] else OPTIONS.given(self.p)
            diffs, immutable = self.compare('container', self.cid, OPTIONS, rec, settings, given=given)
            if opts['bundle']:
                immutable = list(immutable) + self.compare_guest(rec, settings)
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
            else:
                if 'labels' in diffs.names():
                    self.act('update labels of container %s' % self.cid, self.update_labels, sid, settings['labels'])
                self.update_limits(sid, rec, settings, status)
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

    def compare_guest(self, rec, settings):
        """A bundle's hostname, domainname or process settings changed: like an immutable
        option, they need recreate (named, with before and after in --diff)."""
        changed = limits.immutable_changes(rec, settings)
        for key in changed:
            self.diff['before'][key] = getattr(rec, key)
            self.diff['after'][key] = settings.get(key)
        if changed and not self.p['recreate']:
            raise InvalidArgument('container %s exists with different %s (from the bundle\'s config.json); set '
                                  'recreate=true to delete and create it again' % (self.cid, ', '.join(changed)))
        return changed

    def update_limits(self, sid, rec, settings, status):
        """A changed limit is applied in place: the cgroup in the guest, then the record."""
        writes = limits.changes(rec, settings)
        options_changed = any(getattr(rec, k) != settings.get(k) for k in limits.LIMIT_OPTIONS)
        if not writes and not options_changed:
            return
        srec = self.rt.store.load_sandbox(sid)
        if srec is not None:  # check mode refuses what the run would; a sandbox gone: the run says so
            limits.check_fits(settings, srec)
        if writes:
            self.diff['before']['limits'] = dict(rec.limits)
            self.diff['after']['limits'] = dict(settings.get('limits') or {})
        live = status in ('created', 'running')
        self.act('update limits of container %s%s' % (self.cid, ' in place' if live and writes else ''),
                 ctr.update_limits, self.rt, sid, self.cid, settings, live and bool(writes))

    def update_labels(self, sid, labels, trace):
        with self.rt.store.lock(sid, owner='update container %s' % self.cid):
            rec = self.rt.store.load_container(sid, self.cid)
            rec.labels = labels
            self.rt.store.save_container(rec)
            trace.step('updated labels of container %s' % self.cid)
