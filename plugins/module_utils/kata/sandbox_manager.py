# Copyright: kata.runtime contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""kata_sandbox's manager: one sandbox brought to the state asked for (the module is its docs).

The options are ``options.SANDBOX_OPTIONS``; the compare step is ``StateManager.compare``.
"""

from __future__ import annotations

from ansible_collections.kata.runtime.plugins.module_utils.kata import network
from ansible_collections.kata.runtime.plugins.module_utils.kata import sandbox as sbx
from ansible_collections.kata.runtime.plugins.module_utils.kata.common import StateManager
from ansible_collections.kata.runtime.plugins.module_utils.kata.errors import CorruptRecord
from ansible_collections.kata.runtime.plugins.module_utils.kata.ids import validate_id
from ansible_collections.kata.runtime.plugins.module_utils.kata.model import SandboxRecord, SandboxState
from ansible_collections.kata.runtime.plugins.module_utils.kata.options import SANDBOX_OPTIONS as OPTIONS


class SandboxManager(StateManager):
    """Plans and applies one kata_sandbox call; the plan is the same in check mode."""

    def __init__(self, module):
        super(SandboxManager, self).__init__(module)
        self.sid = validate_id(self.p['name'], 'sandbox')

    def current(self):
        try:
            rec = sbx.load(self.rt, self.sid)
        except CorruptRecord:
            if self.p['state'] == 'absent' and self.p['force']:
                return SandboxRecord.by_name(self.sid, self.rt.hv.domain_name(self.sid)), SandboxState.DEAD
            raise
        if rec is None:
            return None, 'absent'
        self.observed_vm = sbx.vm_state(self.rt, rec)
        return rec, sbx.state_of(rec, self.observed_vm)

    observed_vm = None

    def run(self):
        sbx.check_timeout('timeout', self.p['timeout'])
        rec, state = self.current()
        self.observed = rec
        self.diff['before'] = {'state': state}
        if self.p['state'] == 'absent':
            self.absent(rec, state)
        else:
            self.present(rec, state)
        self.finish(sandbox=self.result_sandbox())

    observed = None

    def result_sandbox(self):
        if not self.changed and self.observed is not None and self.observed_vm is not None:
            # nothing was done: what run() observed is still the answer (an idempotent rerun
            # across a fleet pays for one look at libvirt, not two)
            return sbx.info(self.rt, self.observed, vm=self.observed_vm)
        rec = None if (self.check and self.changed) else sbx.load(self.rt, self.sid)
        if rec is not None:
            return sbx.info(self.rt, rec)
        if self.p['state'] == 'absent' or not self.check:
            return {}
        planned = dict(self.planned or {})
        planned.update({'id': self.sid, 'state': self.p['state']})
        return planned

    planned = None

    def absent(self, rec, state):
        self.diff['after'] = {'state': 'absent'}
        if rec is None:
            return
        if not self.p['force']:
            sbx.refuse_running(self.rt, self.sid, state)  # check mode refuses exactly as a run would
        self.act('delete sandbox %s' % self.sid, sbx.delete, self.rt, self.sid, force=self.p['force'])

    def present(self, rec, state):
        settings = sbx.settings_from(self.config, OPTIONS.request(self.p))
        want = self.p['state']
        timeout = self.p['timeout']
        if rec is not None:
            diffs, immutable = self.compare('sandbox', self.sid, OPTIONS, rec, settings, given=OPTIONS.given(self.p))
            if immutable:
                sbx.check_create(self.rt, self.sid, settings, replacing=True)  # refuse before deleting anything
                self.act('delete sandbox %s to recreate it' % self.sid, sbx.delete, self.rt, self.sid,
                         force=self.p['force'])
                rec, state = None, 'absent'
            else:
                mutable = diffs.get_before_after()[1]  # no immutable difference: each one changes in place
                if mutable:
                    self.act('update %s of sandbox %s' % (', '.join(sorted(mutable)), self.sid),
                             sbx.update, self.rt, self.sid, mutable)
        self.diff['after']['state'] = want
        if rec is None:
            sbx.check_create(self.rt, self.sid, settings)  # check mode refuses what a run would
            self.planned = dict(settings, id=self.sid)
            self.planned['network'] = network.info({'network': network.record(settings['network'],
                                                                              self.planned.pop('ports'))})
            self.diff['after'].update({k: settings[k] for k in ('vcpus', 'memory_mb', 'accel', 'labels', 'network',
                                                                'ports')})
            self.act('create sandbox %s' % self.sid, sbx.create, self.rt, self.sid, settings, timeout=timeout,
                     boot=(want != 'stopped'))
            state = SandboxState.STOPPED if want == SandboxState.STOPPED else SandboxState.RUNNING
        if want == SandboxState.RUNNING and state == SandboxState.PAUSED:
            self.act('resume sandbox %s' % self.sid, sbx.resume, self.rt, self.sid)
        elif want == SandboxState.RUNNING and state != SandboxState.RUNNING:
            self.act('start sandbox %s (it is %s)' % (self.sid, state), sbx.start, self.rt, self.sid,
                     timeout=timeout, use_template=self.p['template'])
        elif want == SandboxState.STOPPED and state in (SandboxState.RUNNING, SandboxState.PAUSED, SandboxState.DEAD):
            self.act('stop sandbox %s (it is %s)' % (self.sid, state), sbx.stop, self.rt, self.sid,
                     force=self.p['force'])
        elif want == SandboxState.PAUSED and state != SandboxState.PAUSED:
            if state != SandboxState.RUNNING:
                self.act('start sandbox %s (it is %s)' % (self.sid, state), sbx.start, self.rt, self.sid,
                         timeout=timeout, use_template=self.p['template'])
            self.act('pause sandbox %s' % self.sid, sbx.pause, self.rt, self.sid)
