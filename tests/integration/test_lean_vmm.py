# Copyright: kata.runtime contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The lean-VMM levers on a real guest: each takes effect where the host config asks for it,
and nothing of them is there where it does not. How much memory and CPU they save is
benchmarks/boot.py's to report (docs/benchmarks.md), never asserted here.

- ``tcg_tb_cache_mb``: libvirt passes the cap to QEMU (``-accel tcg,tb-size=``).
- ``release_boot_files``: after create, QEMU's mappings of the kernel and initrd hold (almost)
  nothing resident, and the actions say how much was paged out.
- ``free_page_reporting``: the domain has a reporting balloon, and the guest's /init lowered
  the reporting order (read inside the guest).
- the agent idles without polling and still answers at once: a host that connects after the
  agent has idled longer than its fallback wake-up gets a reply within a second
  (without SIGIO it would wait for the fallback, up to 5 s).
"""

from __future__ import annotations

import json
import os
import time
import xml.etree.ElementTree as ET

import pytest
import yaml
from ansible_collections.kata.runtime.plugins.module_utils.kata import container as ctr
from ansible_collections.kata.runtime.plugins.module_utils.kata import sandbox as sbx
from ansible_collections.kata.runtime.plugins.module_utils.kata import vmm_memory
from ansible_collections.kata.runtime.plugins.module_utils.kata.agent import AgentClient
from ansible_collections.kata.runtime.plugins.module_utils.kata.config import load_config
from ansible_collections.kata.runtime.plugins.module_utils.kata.guest import agent as guest_agent
from ansible_collections.kata.runtime.plugins.module_utils.kata.guest import image
from ansible_collections.kata.runtime.plugins.module_utils.kata.runtime import Runtime
from conftest import privileged_bundle, virsh

READ_ORDER = ('mkdir -p /tmp/sys && mount -t sysfs sysfs /tmp/sys && '
              'cat /tmp/sys/module/page_reporting/parameters/page_reporting_order')


def make(kata_envs, tag, **config):
    env = kata_envs(tag)
    env.config.update(config)
    with open(env.config_path, 'w') as f:
        yaml.safe_dump(env.config, f, default_flow_style=False)
    return env


@pytest.fixture
def envs(kata_envs):
    made = []

    def factory(tag, **config):
        made.append(make(kata_envs, tag, **config))
        return made[-1]

    yield factory
    for env in made:
        left, skeleton, prune = env.teardown()
        assert not left, 'left behind: %s\n%s' % (json.dumps(left, indent=1), prune[2][-3000:])


def boot(env):
    rt = Runtime(load_config(env.config_path))
    trace = rt.trace()
    rec = sbx.create(rt, 'lean', sbx.settings_from(rt.config, {'memory_mb': 128}), trace=trace)
    pid = sbx.info(rt, rec)['pid']
    root = ET.fromstring(virsh('dumpxml', rec.domain).stdout)
    with open('/proc/%d/cmdline' % pid, 'rb') as f:
        cmdline = f.read().replace(b'\0', b' ').decode()
    return rt, trace, rec, pid, root, cmdline


def resident_boot_files(pid, rec):
    files = [os.path.realpath(rec.kernel), os.path.realpath(rec.initrd)]
    maps = vmm_memory.file_mappings(pid, files)
    assert len(maps) >= 2, 'QEMU should map both boot files: %s' % maps
    return sum(m[2] for m in maps)


def run(rt, cid, script, busybox_rootfs):
    # mounting sysfs needs CAP_SYS_ADMIN, which the inline form's default set leaves out
    settings = ctr.settings_from({'bundle': privileged_bundle(busybox_rootfs, ['/bin/sh', '-c', script])})
    ctr.create(rt, 'lean', cid, settings)
    ctr.start(rt, cid)
    done = ctr.wait_for(rt, cid, 120)
    assert done['status'] == 'stopped' and done['exit_code'] == 0, done
    with open(os.path.join(rt.store.root, 'sandboxes', 'lean', 'output', cid, 'stdout')) as f:
        return f.read().strip()


def test_levers_on_take_effect_and_the_idle_agent_answers_at_once(envs, busybox_rootfs):
    env = envs('lean', accel='tcg', tcg_tb_cache_mb=24, release_boot_files=True, free_page_reporting=True)
    rt, trace, rec, pid, root, cmdline = boot(env)

    assert root.find('features/tcg/tb-cache').text == str(24 * 1024)
    assert 'tb-size=24' in cmdline, cmdline
    balloon = root.find('devices/memballoon')
    assert balloon.get('model') == 'virtio' and balloon.get('freePageReporting') == 'on'

    paged = [a for a in trace.actions if a.startswith('paged ')]
    assert len(paged) == 1 and 'out of VMM pid %d' % pid in paged[0], trace.actions
    assert int(paged[0].split()[1]) >= 10, paged  # MiB: the kernel alone is tens of MiB
    assert resident_boot_files(pid, rec) < 8 << 20

    assert run(rt, 'order', READ_ORDER, busybox_rootfs) == str(image.PAGE_REPORTING_ORDER)

    # idle past the agent's fallback wake-up, then connect: SIGIO wakes it, not the fallback
    waits = []
    for _dummy in range(3):
        time.sleep(guest_agent.IDLE_RETRY + 1)
        start = time.monotonic()
        with AgentClient(rt.store.agent_socket('lean'), timeout=30, sandbox_id='lean') as client:
            assert client.ping()['protocol'] == 1
        waits.append(time.monotonic() - start)
    print('agent ping after idling: %s s' % ', '.join('%.3f' % w for w in waits))
    assert sorted(waits)[1] < 1.0, waits  # with only the fallback: up to 5 s, 2.5 s typical

    assert sbx.delete(rt, 'lean', force=True)


def test_levers_off_leave_qemu_as_it_was(envs, busybox_rootfs):
    env = envs('full', accel='tcg', tcg_tb_cache_mb=0, release_boot_files=False, free_page_reporting=False)
    rt, trace, rec, pid, root, cmdline = boot(env)
    assert root.find('features/tcg') is None and 'tb-size' not in cmdline
    assert root.find('devices/memballoon').get('model') == 'none'
    assert not [a for a in trace.actions if a.startswith('paged ') or 'kernel and initrd' in a], trace.actions
    assert resident_boot_files(pid, rec) > 16 << 20
    # the image sets the order all the same; with no reporting device nothing reports
    assert run(rt, 'order', READ_ORDER, busybox_rootfs) == str(image.PAGE_REPORTING_ORDER)
    assert sbx.delete(rt, 'lean', force=True)
