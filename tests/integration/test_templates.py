# Copyright: kata.runtime contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""VM templates against the real libvirtd with the real guest image.

Through the modules, as an operator runs them (``kata_template``, then ``kata_sandbox`` with
``template: true``): two clones of one template are both ready with ``boot: template``, their
agents answer, their RNG output and boot IDs differ, their clocks are the host's, a container
runs in each (its rootfs on the clone's 9p share, mounted after resume); deleting a clone leaves
the template and the other clone; a template whose image changed is not used (cold boot),
is listed stale and is removed by kata_prune. Each real guest boots once.

Run with ``-s`` to see the figures: build time, clone ready time, idle PSS per clone's VMM.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import subprocess
import time

import pytest
from ansible_collections.kata.runtime.plugins.module_utils.kata import mountinfo, template
from ansible_collections.kata.runtime.plugins.module_utils.kata.errors import AgentError
from ansible_collections.kata.runtime.plugins.module_utils.kata.guest import contract
from ansible_collections.kata.runtime.plugins.module_utils.kata.hypervisor.accel import choose_accel
from ansible_collections.kata.runtime.plugins.module_utils.kata.hypervisor.libvirt import LibvirtHypervisor

libvirt = pytest.importorskip('libvirt', reason='libvirt-python is not installed')

URI = 'qemu:///system'
MEMORY_MB = 128
AGENT_TIMEOUT = 180  # a cold boot under TCG on a busy 2-core host


@pytest.fixture
def world(guest_image):
    """A prefix, a state root with the templates tmpfs, and a hypervisor; cleaned up after,
    and checked clean."""
    hexid = secrets.token_hex(4)
    root = '/run/kata-ttpl-%s' % hexid
    os.makedirs(root, mode=0o700)
    hv = LibvirtHypervisor(URI, prefix='kata-ttpl-%s-' % hexid)
    tdir = os.path.join(root, 'templates')
    assert template.ensure_tmpfs(tdir, 512) is True
    assert template.ensure_tmpfs(tdir, 512) is False  # already a mount point
    w = {'root': root, 'hv': hv, 'templates': tdir, 'image': guest_image, 'accel': choose_accel('auto')[0]}
    yield w
    for d in hv.list_ours():
        hv.destroy(d['name'])
        hv.undefine(d['name'])
    left_domains = [d['name'] for d in hv.list_ours()]
    hv.close()
    template.release_tmpfs(tdir)
    left_mounts = [p for p in mountinfo.points() if p == root or p.startswith(root + '/')]
    for p in sorted(left_mounts, reverse=True):
        subprocess.run(['umount', '-l', p], check=False)
    shutil.rmtree(root, ignore_errors=True)
    assert not left_domains and not left_mounts, (left_domains, left_mounts)


def _spec(w):
    return {
        'kernel': w['image']['kernel'], 'initrd': w['image']['initrd'], 'vcpus': 1, 'memory_mb': MEMORY_MB,
        'accel': w['accel'], 'cmdline': contract.KERNEL_PARAMS, 'state_root': w['root'],
    }


# One line per clone: its RNG output, boot ID, clock and NIC's MAC, read inside a container.
PROBE = ('echo rng=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d " \\n"); '
         'echo boot_id=$(cat /proc/sys/kernel/random/boot_id); echo clock=$(date +%s); '
         'echo mac=$(ip -o link show eth0 | sed -n "s/.*link.ether \\([0-9a-f:]*\\).*/\\1/p")')


def _probe(path):
    with open(path) as f:
        return dict(line.split('=', 1) for line in f.read().splitlines() if '=' in line)


def test_templates_through_the_modules(kata, busybox_rootfs, guest_image):
    # an image of this test's own, so that changing it later touches no other test
    img = os.path.join(kata.workdir, 'image')
    os.makedirs(img)
    kernel, initrd = os.path.join(img, 'vmlinux'), os.path.join(img, 'kata-initrd.img')
    shutil.copyfile(guest_image['kernel'], kernel)
    shutil.copyfile(guest_image['initrd'], initrd)
    shape = {'memory_mb': MEMORY_MB, 'kernel': kernel, 'initrd': initrd}
    sandbox = dict(shape, template=True)

    t0 = time.monotonic()
    run = kata.playbook([
        {'name': 'planned', 'kata.runtime.kata_template': shape, 'check_mode': True},
        {'name': 'template', 'kata.runtime.kata_template': dict(shape, timeout=AGENT_TIMEOUT)},
        {'name': 'template again', 'kata.runtime.kata_template': shape},
    ], diff=True)
    build_s = time.monotonic() - t0
    planned, built, again = run.ok('planned'), run.ok('template'), run.ok('template again')
    tpl = built['template']
    assert planned['changed'] is True and planned['template']['key'] == tpl['key'], planned
    assert built['changed'] is True and again['changed'] is False and again['template'] == tpl
    assert tpl['path'] == os.path.join(kata.state_root, 'templates', tpl['key'])
    assert tpl['size_bytes'] > MEMORY_MB * 2 ** 20 and tpl['shape']['memory_mb'] == MEMORY_MB
    assert sorted(os.listdir(tpl['path'])) == ['ram', 'state', 'template.json']
    assert kata.domains() == [], 'the template VM is gone once saved'
    print('\ntemplate %s: %s (playbook of 3 tasks %.1fs)' % (tpl['key'], built['actions'], build_s))

    run = kata.playbook([{'name': 'clone%d' % n, 'kata.runtime.kata_sandbox': dict(sandbox, name='clone%d' % n)}
                         for n in (1, 2)])
    clones = [run.ok('clone%d' % n) for n in (1, 2)]
    ready = []
    for c in clones:
        assert c['changed'] is True and c['sandbox']['boot'] == 'template', c['actions']
        assert c['sandbox']['state'] == 'running' and c['sandbox']['pid']
        line = [a for a in c['actions'] if 'after the clone started' in a]
        assert line and tpl['key'] in line[0], c['actions']
        ready.append(float(re.search(r'ready ([0-9.]+)s after', line[0]).group(1)))

    run = kata.playbook(
        [{'name': 'probe%d' % n, 'kata.runtime.kata_container': {
            'name': 'probe%d' % n, 'sandbox': 'clone%d' % n, 'rootfs': busybox_rootfs,
            'command': ['/bin/sh', '-c', PROBE]}} for n in (1, 2)]
        + [{'name': 'probe%d done' % n, 'kata.runtime.kata_container_info': {'name': ['probe%d' % n]},
            'register': 'probe%d_info' % n, 'until': "probe%d_info.containers[0].status == 'stopped'" % n,
            'retries': 60, 'delay': 1} for n in (1, 2)]
        + [{'name': 'info', 'kata.runtime.kata_sandbox_info': {}}])
    probes = []
    for n in (1, 2):
        done = run.ok('probe%d done' % n)['containers'][0]
        assert done['exit_code'] == 0, done
        probes.append(_probe(done['stdout_path']))
    assert len(probes[0]['rng']) == 32 and probes[0]['rng'] != probes[1]['rng'], probes
    assert probes[0]['boot_id'] != probes[1]['boot_id'], probes
    assert all(abs(int(p['clock']) - time.time()) < 60 for p in probes), probes
    # the same NIC as the template, each with the MAC its host chose (not the template's)
    macs = [c['sandbox']['network']['mac'] for c in clones]
    assert [p['mac'] for p in probes] == macs and macs[0] != macs[1], (probes, macs)
    assert tpl['shape']['network'] == 'user' and all(c['sandbox']['network']['mode'] == 'user' for c in clones)
    info = run.ok('info')
    assert sorted((s['id'], s['boot']) for s in info['sandboxes']) == [('clone1', 'template'), ('clone2', 'template')]
    assert [(t['key'], t['stale']) for t in info['templates']] == [(tpl['key'], None)]

    pss = [template.vmm_pss_kib(c['sandbox']['pid']) for c in clones]
    for n, (r, kib) in enumerate(zip(ready, pss), 1):
        print('clone%d: ready %.2fs after the clone started; VMM PSS %.1f MiB' % (n, r, (kib or 0) / 1024.0))

    # deleting a clone leaves the template and the other clone
    run = kata.playbook([
        {'name': 'delete clone1', 'kata.runtime.kata_sandbox': {'name': 'clone1', 'state': 'absent', 'force': True}},
        {'name': 'template kept', 'kata.runtime.kata_template': shape, 'check_mode': True},
        {'name': 'clone2 answers', 'kata.runtime.kata_container': {
            'name': 'alive', 'sandbox': 'clone2', 'rootfs': busybox_rootfs, 'command': ['/bin/sh', '-c', 'echo alive']}},
        {'name': 'alive done', 'kata.runtime.kata_container_info': {'name': ['alive']}, 'register': 'alive_info',
         'until': "alive_info.containers[0].status == 'stopped'", 'retries': 60, 'delay': 1},
    ])
    assert run.ok('delete clone1')['changed'] is True
    kept = run.ok('template kept')
    assert kept['changed'] is False and kept['template'] == tpl
    with open(run.ok('alive done')['containers'][0]['stdout_path']) as f:
        assert f.read() == 'alive\n'

    # a template whose image changed is not used: the sandbox boots cold; it is listed stale
    # and kata_prune removes it (and the tmpfs it leaves empty)
    with open(initrd, 'ab') as f:
        f.write(b'\0' * 512)  # NUL padding after an initramfs is skipped by the kernel
    run = kata.playbook([
        {'name': 'stale info', 'kata.runtime.kata_sandbox_info': {}},
        {'name': 'cold', 'kata.runtime.kata_sandbox': dict(sandbox, name='cold')},
        {'name': 'prune planned', 'kata.runtime.kata_prune': {'names': []}, 'check_mode': True},
        {'name': 'prune', 'kata.runtime.kata_prune': {'names': []}},
        {'name': 'after prune', 'kata.runtime.kata_sandbox_info': {}},
    ])
    stale = run.ok('stale info')['templates']
    assert [t['key'] for t in stale] == [tpl['key']] and 'image changed' in stale[0]['stale'], stale
    cold = run.ok('cold')
    assert cold['sandbox']['boot'] == 'cold' and cold['sandbox']['state'] == 'running', cold['actions']
    assert any('no current template' in a for a in cold['actions']), cold['actions']
    assert [o['id'] for o in run.ok('prune planned')['orphans_removed']] == [tpl['key']]
    pruned = run.ok('prune')
    assert [(o['kind'], o['id']) for o in pruned['orphans_removed']] == [('stale_template', tpl['key'])], pruned
    assert run.ok('after prune')['templates'] == []
    assert not os.path.exists(tpl['path']) and not mountinfo.is_mounted(os.path.join(kata.state_root, 'templates'))
    assert sorted(s['id'] for s in run.ok('after prune')['sandboxes']) == ['clone2', 'cold']


def test_a_failed_build_leaves_nothing(world):
    w, hv = world, world['hv']
    with pytest.raises(AgentError):
        template.build(hv, w['templates'], _spec(w), agent_timeout=0.5)
    assert hv.list_ours() == [] and os.listdir(w['templates']) == []
