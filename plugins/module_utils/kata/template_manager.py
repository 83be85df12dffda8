# Copyright: kata.runtime contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""kata_template's manager: the VM template of one shape built or removed (the module is its docs).

The options are ``options.TEMPLATE_OPTIONS``: the shape options are the request.
"""

from __future__ import annotations

import os

from ansible_collections.kata.runtime.plugins.module_utils.kata import sandbox as sbx
from ansible_collections.kata.runtime.plugins.module_utils.kata import template
from ansible_collections.kata.runtime.plugins.module_utils.kata.common import StateManager
from ansible_collections.kata.runtime.plugins.module_utils.kata.errors import CorruptRecord
from ansible_collections.kata.runtime.plugins.module_utils.kata.options import TEMPLATE_OPTIONS as OPTIONS


class TemplateManager(StateManager):
    """Plans and applies one kata_template call; the plan is the same in check mode."""

    def run(self):
        sbx.check_timeout('timeout', self.p['timeout'])
        settings = sbx.settings_from(self.config, OPTIONS.request(self.p))
        self.spec, self.accel_reason = sbx.template_spec(self.rt, settings)
        root = self.rt.store.root
        self.tdir = template.templates_dir(root)
        self.shape = template.shape_of(self.rt.hv, template.probe_spec(self.spec))
        self.key = template.key_of(self.shape)
        try:
            current = template.load(self.tdir, self.key)
            broken = None
        except CorruptRecord as err:
            current, broken = None, str(err)
        self.diff['before'] = self.summary(current, broken is not None or os.path.lexists(os.path.join(self.tdir, self.key)))
        if self.p['state'] == 'absent':
            if current is not None or broken is not None:
                self.act('remove template %s' % self.key, self.remove)
            self.diff['after'] = {'state': 'absent'}
            self.finish(template={})
            return
        if current is None or self.p['force']:
            why = ('rebuild template %s' % self.key if current is not None
                   else 'build template %s%s' % (self.key, ' (replacing a broken one: %s)' % broken if broken else ''))
            self.act(why, self.build)
        after = template.load(self.tdir, self.key) if not self.check else current
        if after is None:  # check mode, still to be built
            info = {'key': self.key, 'shape': dict(self.shape), 'path': os.path.join(self.tdir, self.key),
                    'size_bytes': None, 'created_at': None, 'image_digest': self.shape['image_digest']}
        else:
            info = after.info()
        self.diff['after'] = {'state': 'present', 'key': self.key, 'created_at': info['created_at']}
        if self.p['force'] and self.check:
            self.diff['after']['created_at'] = None
        self.finish(template=info)

    def summary(self, tpl, exists):
        if tpl is None:
            return {'state': 'broken' if exists else 'absent'}
        return {'state': 'present', 'key': tpl.key, 'created_at': tpl.record['created_at']}

    def build(self, trace):
        limit = self.p['timeout'] or self.config.agent_timeout
        tpl, changed, timings = template.build_locked(
            self.rt.hv, self.rt.store.root, self.config.template_tmpfs_mb, self.spec, force=self.p['force'],
            agent_timeout=limit, progress=trace.progress)
        self.changed = changed
        if changed:
            trace.step('built template %s in %.1fs (agent after %.1fs, state saved in %.2fs; accel %s: %s)'
                       % (tpl.key, timings.get('build_s', 0), timings.get('boot_to_agent_s', 0),
                          timings.get('save_s', 0), self.spec['accel'], self.accel_reason))
        else:
            trace.step('template %s was built meanwhile by another run' % tpl.key)
        return tpl

    def remove(self, trace):
        if template.remove_locked(self.rt.store.root, self.key):
            trace.step('removed template %s' % self.key)
