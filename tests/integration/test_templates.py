# Copyright: kata.runtime contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""VM templates (template.py) against the real libvirtd with the real guest image.

One template is built on a tmpfs of its own; two clones start from it, both agents answer,
their RNG output differs, their clocks are the host's, a container runs in each (its rootfs on
the clone's 9p share, mounted after resume), deleting a clone leaves the template intact, and
the end leaves nothing behind: no domain with the test prefix, no mount, no file.

Run with ``-s`` to see the figures: build time, clone ready time, idle PSS per clone's VMM.
"""

from __future__ import annotations

import os
import secrets
import shutil
import statistics
import subprocess
import time

import pytest
from ansible_collections.kata.runtime.plugins.module_utils.kata import mountinfo, template
from ansible_collections.kata.runtime.plugins.module_utils.kata.agent import AgentClient
from ansible_collections.kata.runtime.plugins.module_utils.kata.errors import AgentError
from ansible_collections.kata.runtime.plugins.module_utils.kata.guest import contract, image
from ansible_collections.kata.runtime.plugins.module_utils.kata.hypervisor.accel import choose_accel
from ansible_collections.kata.runtime.plugins.module_utils.kata.hypervisor.libvirt import LibvirtHypervisor
from conftest import vmm_processes

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
        'accel': w['accel'], 'cmdline': image.DEFAULT_KERNEL_PARAMS, 'state_root': w['root'],
    }


def _sandbox_vm(w, sid, rootfs):
    """A sandbox's VM spec as sandbox.py makes it, its share holding a container rootfs."""
    hv = w['hv']
    base = os.path.join(w['root'], 'sandboxes', sid)
    shared, output = os.path.join(base, 'shared'), os.path.join(base, 'output')
    os.makedirs(shared, mode=0o700)
    os.makedirs(output, mode=0o700)
    shutil.copytree(rootfs, os.path.join(shared, 'c1', 'rootfs'), symlinks=True)
    os.mkdir(os.path.join(shared, 'c1', 'rootfs', 'dev'), 0o755)  # the agent mounts a /dev with urandom
    os.makedirs(os.path.join(w['root'], 'sock'), mode=0o700, exist_ok=True)
    return dict(_spec(w), name=hv.domain_name(sid), sandbox_id=sid,
                console_log=os.path.join(base, 'console.log'),
                agent_socket=os.path.join(w['root'], 'sock', '%s.sock' % sid),
                shared_dir=shared, output_dir=output, output_accessmode='squash')


def _run_container(vm, args, cid='c1'):
    with AgentClient(vm['agent_socket'], timeout=60) as client:
        client.create_container(cid, args, rootfs=contract.SHARED_MOUNT + '/c1/rootfs')
        client.start_container(cid)
        state = client.wait_container(cid, timeout=60)
        assert state['status'] == 'stopped' and state['exit_code'] == 0, state
    with open(os.path.join(vm['output_dir'], cid, 'stdout')) as f:
        return f.read()


def test_two_clones_of_one_template(world, busybox_rootfs):
    w, hv = world, world['hv']
    spec = _spec(w)

    tpl, changed, timings = template.build(hv, w['templates'], spec, agent_timeout=AGENT_TIMEOUT)
    assert changed is True and hv.list_ours() == []  # the template domain is gone
    print('\ntemplate %s built in %.2fs (boot to agent %.2fs, save %.3fs); ram %d MiB, state %d KiB'
          % (tpl.key, timings['build_s'], timings['boot_to_agent_s'], timings['save_s'],
             tpl.record['sizes']['ram'] // 2 ** 20, tpl.record['sizes']['state'] // 1024))
    assert sorted(os.listdir(tpl.path)) == ['ram', 'state', 'template.json']
    again, changed, dummy = template.build(hv, w['templates'], spec)
    assert changed is False and again.key == tpl.key
    assert template.list_templates(w['templates']) == ([again], []) or \
        [t.key for t in template.list_templates(w['templates'])[0]] == [tpl.key]

    vms, results = [], []
    for n in (1, 2):
        vm = _sandbox_vm(w, 'clone%d' % n, busybox_rootfs)
        assert template.find(hv, w['templates'], vm).key == tpl.key
        t0 = time.monotonic()
        timings, answer = template.clone(hv, tpl, vm)
        results.append((time.monotonic() - t0, timings))
        assert answer['clock_set'] is True and answer['seeded'] == template.SEED_BYTES
        assert sorted(answer['mounted']) == ['kataOutput', 'kataShared']
        vms.append(vm)

    # both are ours like any sandbox domain, both agents answer
    assert [(d['sandbox_id'], d['state'], d['state_root']) for d in hv.list_ours()] == \
        [('clone1', 'running', w['root']), ('clone2', 'running', w['root'])]
    for vm in vms:
        with AgentClient(vm['agent_socket'], timeout=30) as client:
            assert client.ping()['protocol'] == 1

    # a container in each: RNG output differs, the clock is the host's
    outs = [_run_container(vm, ['sh', '-c', 'echo rng=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d " \\n"); '
                                'echo clock=$(date +%s); echo boot_id=$(cat /proc/sys/kernel/random/boot_id)'])
            for vm in vms]
    fields = [dict(line.split('=', 1) for line in o.splitlines() if '=' in line) for o in outs]
    rng = [f['rng'] for f in fields]
    clocks = [int(f['clock']) for f in fields]
    boot_ids = [f['boot_id'] for f in fields]
    assert len(rng[0]) == 32 and rng[0] != rng[1], rng
    assert all(abs(c - time.time()) < 30 for c in clocks), clocks
    # the kernel makes boot_id from its RNG on the first read: nothing reads it before the
    # template is saved, so each clone draws its own after the reseed
    assert boot_ids[0] != boot_ids[1], boot_ids
    print('clone RNG: %s vs %s; boot_id %s vs %s' % (rng[0], rng[1], boot_ids[0], boot_ids[1]))

    time.sleep(3)  # settle before measuring idle memory
    pss = [template.vmm_pss_kib(hv.pid(vm['name'])) for vm in vms]
    for (total, t), kib in zip(results, pss):
        print('clone ready %.3fs (libvirt start paused %.3fs, state loaded %.3fs, resumed %.3fs, '
              'agent answered %.3fs, reseeded+clock+mounted %.3fs); VMM PSS %.1f MiB'
              % (total, t['started'], t['loaded'], t['resumed'], t['answered'], t['ready'], kib / 1024.0))
    print('median clone ready %.3fs' % statistics.median(r[0] for r in results))

    # deleting a clone leaves the template (and the other clone) intact
    hv.destroy(vms[0]['name'])
    hv.undefine(vms[0]['name'])
    assert template.load(w['templates'], tpl.key).record == tpl.record
    with AgentClient(vms[1]['agent_socket'], timeout=30) as client:
        assert client.ping()['protocol'] == 1

    # a third clone after the delete still works; removing the template leaves the running
    # clones running (their private mapping keeps the pages)
    vm3 = _sandbox_vm(w, 'clone3', busybox_rootfs)
    template.clone(hv, tpl, vm3)
    assert template.remove(w['templates'], tpl.key) is True
    assert os.listdir(w['templates']) == []
    assert template.find(hv, w['templates'], vm3) is None
    for vm in (vms[1], vm3):
        assert _run_container(vm, ['sh', '-c', 'echo alive'], cid='c2').strip() == 'alive'
    for vm in (vms[1], vm3):
        hv.destroy(vm['name'])
        hv.undefine(vm['name'])
    assert hv.list_ours() == [] and vmm_processes(hv.prefix) == []


def test_a_failed_build_leaves_nothing(world):
    w, hv = world, world['hv']
    with pytest.raises(AgentError):
        template.build(hv, w['templates'], _spec(w), agent_timeout=0.5)
    assert hv.list_ours() == [] and os.listdir(w['templates']) == []


@pytest.mark.xfail(reason='known, intermittent: a clone may not answer the first reconnect that comes ~4 s after '
                          'the first hang-up since its resume (the guest reads the request, its reply never leaves); '
                          'cold-booted guests do not show it', strict=False)
def test_clones_answer_a_reconnect_after_the_first_hang_up(world, busybox_rootfs):
    w, hv = world, world['hv']
    tpl = template.build(hv, w['templates'], _spec(w), agent_timeout=AGENT_TIMEOUT)[0]
    vms = [_sandbox_vm(w, 'clone%d' % n, busybox_rootfs) for n in range(3)]
    for vm in vms:
        template.clone(hv, tpl, vm)
    time.sleep(4)
    for vm in vms:
        with AgentClient(vm['agent_socket'], timeout=12) as client:
            assert client.ping()['protocol'] == 1
