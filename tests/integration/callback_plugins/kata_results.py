# Copyright: kata.runtime contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A callback for the integration tests: every task result, by task and host, and the recap,
written as JSON to $KATA_RESULTS_FILE when the run ends (ad hoc runs included).

ansible-core has no JSON callback of its own (ansible.posix.json is another collection), and
the tests want the results of playbooks they do not own next to the human-readable output.
Enable it with ANSIBLE_CALLBACK_PLUGINS=<this directory>, ANSIBLE_CALLBACKS_ENABLED=kata_results
and, for ad hoc runs, ANSIBLE_LOAD_CALLBACK_PLUGINS=1.
"""

from __future__ import annotations

import json
import os

from ansible.plugins.callback import CallbackBase

DOCUMENTATION = '''
name: kata_results
type: aggregate
short_description: task results and recap as JSON, for the kata.runtime integration tests
description:
  - Writes every task result (by task name and host) and the per-host recap to the file
    named by the environment variable E(KATA_RESULTS_FILE).
'''


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = 'aggregate'
    CALLBACK_NAME = 'kata_results'
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.tasks = {}

    def _record(self, result, **flags):
        data = dict(result.result)  # native types (ansible-core 2.19's callback API)
        data.update(flags)
        self.tasks.setdefault(result.task_name, {})[result.host.get_name()] = data

    def v2_runner_on_ok(self, result):
        self._record(result)

    def v2_runner_on_failed(self, result, ignore_errors=False):
        self._record(result, failed=True)

    def v2_runner_on_unreachable(self, result):
        self._record(result, unreachable=True)

    def v2_runner_on_skipped(self, result):
        self._record(result, skipped=True)

    def v2_playbook_on_stats(self, stats):
        path = os.environ.get('KATA_RESULTS_FILE')
        if not path:
            return
        recap = {host: stats.summarize(host) for host in sorted(stats.processed)}
        with open(path, 'w') as f:
            json.dump({'tasks': self.tasks, 'stats': recap}, f, indent=1, default=repr)
