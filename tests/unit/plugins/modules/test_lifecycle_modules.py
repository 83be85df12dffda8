# Copyright: kata.runtime contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""kata_sandbox, kata_container, the info modules and kata_prune through AnsibleModule.

No VM boots here (tests/integration does that): the modules run against the real core with a
temp state root, a temp directory as a cgroup v2 mount, real hook scripts, and libvirt's own
``test:///default`` driver, where a sandbox's domain does not exist -- exactly what a host sees
after a VM crashed or the host rebooted. Records are planted the way sandbox.create and
container.create write them.
"""

from __future__ import annotations

import json
import os

import pytest
from ansible.module_utils.testing import patch_module_args
from ansible_collections.kata.runtime.plugins.module_utils.kata import container as ctr
from ansible_collections.kata.runtime.plugins.module_utils.kata import oci
from ansible_collections.kata.runtime.plugins.module_utils.kata import sandbox as sbx
from ansible_collections.kata.runtime.plugins.module_utils.kata.config import load_config
from ansible_collections.kata.runtime.plugins.module_utils.kata.errors import Conflict
from ansible_collections.kata.runtime.plugins.module_utils.kata.model import ContainerRecord, SandboxRecord
from ansible_collections.kata.runtime.plugins.module_utils.kata.runtime import Runtime
from ansible_collections.kata.runtime.plugins.modules import (
    kata_container,
    kata_container_info,
    kata_prune,
    kata_sandbox,
    kata_sandbox_info,
)

pytest.importorskip('libvirt')

BAD_IDS = ['../x', 'a/b', '.hidden', '', 'a' * 129, 'caf\u00e9', 'x\n']


def run(capsys, module, args, check_mode=False, diff=False):
    args = dict(args)
    if check_mode:
        args['_ansible_check_mode'] = True
    if diff:
        args['_ansible_diff'] = True
    with patch_module_args(args):
        with pytest.raises(SystemExit):
            module.main()
    return json.loads(capsys.readouterr().out)


class Host:
    """A temp host: config file, state root, cgroup v2 mount, boot files, hooks."""

    def __init__(self, tmp_path):
        self.tmp = tmp_path
        self.cgroup = tmp_path / 'cgroup'
        self.cgroup.mkdir()
        (self.cgroup / 'cgroup.controllers').write_text('cpu memory pids\n')
        self.image = tmp_path / 'image'
        self.image.mkdir()
        (self.image / 'vmlinux').write_bytes(b'kernel')
        (self.image / 'kata-initrd.img').write_bytes(b'initrd')
        self.state_root = tmp_path / 'run'
        self.config = tmp_path / 'config.yaml'
        self.config.write_text(json.dumps({
            'libvirt_uri': 'test:///default',
            'image_dir': str(self.image),
            'state_root': str(self.state_root),
            'cgroup_root': str(self.cgroup),
            'cgroup_parent': 'kata-unit',
            'domain_prefix': 'kata-unit-',
        }))
        self.rootfs = tmp_path / 'rootfs'
        (self.rootfs / 'bin').mkdir(parents=True)
        self.cfg = load_config(str(self.config))
        self.rt = Runtime(self.cfg)

    def args(self, **kw):
        kw['config'] = str(self.config)
        return kw

    def hook(self, name, body):
        path = self.tmp / name
        path.write_text('#!/bin/sh\n' + body + '\n')
        path.chmod(0o755)
        return str(path)

    def plant_sandbox(self, sid, state='running', hooks=None, **opts):
        """A sandbox record as sandbox.create leaves it, whose VM is gone."""
        settings = sbx.settings_from(self.cfg, dict(opts, hooks=hooks))
        rec = SandboxRecord.new(sid, sbx.record_settings(settings, 'tcg'), state=state, domain=self.rt.hv.domain_name(sid),
                                accel_requested=settings['accel'], accel_reason='unit test',
                                created_at='2026-01-01T00:00:00Z', libvirt_uri='test:///default')
        self.rt.store.ensure()
        rec.cgroups_paths = self.rt.create_cgroups('', sid, sid)
        self.rt.store.save_sandbox(rec)
        self.rt.store.set_mapping(sid, sid)
        return rec

    def plant_container(self, sid, cid, status='running', hooks=None):
        settings = ctr.settings_from({'rootfs': str(self.rootfs), 'command': ['/bin/sh'], 'hooks': hooks})
        rec = ContainerRecord.new(sid, cid, settings, status=status, created_at='2026-01-01T00:00:00Z', pid=7)
        rec.cgroups_paths = self.rt.create_cgroups('', cid, sid)
        self.rt.store.save_container(rec)
        self.rt.store.set_mapping(cid, sid)
        return rec

    def files(self):
        """Every file under the state root (directories alone do not count)."""
        out = []
        for dirpath, _dirnames, filenames in os.walk(self.state_root):
            out.extend(os.path.join(dirpath, f) for f in filenames)
        return sorted(out)

    def cgroup_dirs(self):
        out = []
        for dirpath, dirnames, _filenames in os.walk(self.cgroup):
            out.extend(os.path.join(dirpath, d) for d in dirnames)
        return sorted(out)


@pytest.fixture
def host(tmp_path):
    return Host(tmp_path)


# ---------------------------------------------------------------------------------------------
# bad input: a clear error naming the value, changed false, nothing written

@pytest.mark.parametrize('bad', BAD_IDS)
def test_sandbox_refuses_bad_ids_and_writes_nothing(capsys, host, bad):
    out = run(capsys, kata_sandbox, host.args(name=bad))
    assert out['failed'] and out['changed'] is False
    assert repr(bad) in out['msg']
    assert not host.state_root.exists()
    assert host.cgroup_dirs() == []


@pytest.mark.parametrize('bad', BAD_IDS)
def test_container_refuses_bad_ids_and_writes_nothing(capsys, host, bad):
    out = run(capsys, kata_container, host.args(name=bad, sandbox='sb', rootfs=str(host.rootfs), command=['x']))
    assert out['failed'] and out['changed'] is False
    assert repr(bad) in out['msg']
    assert not host.state_root.exists()


def test_sandbox_refuses_bad_cgroups_path_before_touching_anything(capsys, host):
    out = run(capsys, kata_sandbox, host.args(name='sb', cgroups_path='../../etc'))
    assert out['failed'] and '../../etc' in out['msg']
    assert not host.state_root.exists() and host.cgroup_dirs() == []


def test_sandbox_refuses_relative_hook(capsys, host):
    out = run(capsys, kata_sandbox, host.args(name='sb', hooks={'poststop': [{'path': 'relative/hook'}]}))
    assert out['failed'] and 'relative/hook' in out['msg']
    assert not host.state_root.exists()


def test_container_refuses_bundle_that_is_not_json(capsys, host):
    bundle = host.tmp / 'bundle'
    bundle.mkdir()
    (bundle / 'config.json').write_text('{not json')
    host.plant_sandbox('sb')
    before = host.files()
    out = run(capsys, kata_container, host.args(name='c1', sandbox='sb', bundle=str(bundle)))
    assert out['failed'] and 'config.json' in out['msg']
    assert host.files() == before


# ---------------------------------------------------------------------------------------------
# check mode and no-ops

def test_sandbox_check_mode_plans_and_touches_nothing(capsys, host):
    out = run(capsys, kata_sandbox, host.args(name='sb', labels={'tier': 1}), check_mode=True, diff=True)
    assert out['changed'] is True
    assert out['actions'] == ['would create sandbox sb']
    assert out['sandbox']['id'] == 'sb' and out['sandbox']['labels'] == {'tier': '1'}
    assert out['diff']['before'] == {'state': 'absent'}
    assert out['diff']['after']['state'] == 'running'
    assert not host.state_root.exists() and host.cgroup_dirs() == []


def test_absent_on_missing_is_unchanged(capsys, host):
    for module, args in ((kata_sandbox, dict(name='nope', state='absent')),
                         (kata_sandbox, dict(name='nope', state='absent', force=True)),
                         (kata_container, dict(name='nope', state='absent')),
                         (kata_container, dict(name='nope', state='absent', force=True))):
        out = run(capsys, module, host.args(**args))
        assert out['changed'] is False and not out.get('failed'), out
    assert not host.state_root.exists()


def test_missing_boot_files_say_what_to_do(capsys, host):
    os.unlink(host.image / 'vmlinux')
    out = run(capsys, kata_sandbox, host.args(name='sb'))
    assert out['failed'] and 'vmlinux' in out['msg'] and 'kata_guest_image' in out['msg']
    assert host.files() == [] and host.cgroup_dirs() == []


# ---------------------------------------------------------------------------------------------
# a sandbox whose VM died: reported truthfully, deleted with the seed's semantics

def test_dead_vm_is_reported_dead_never_running(capsys, host):
    host.plant_sandbox('sb', labels={'tenant': 'acme'})
    host.plant_container('sb', 'c1')
    out = run(capsys, kata_sandbox_info, host.args(labels={'tenant': 'acme'}))
    assert [s['id'] for s in out['sandboxes']] == ['sb']
    assert out['sandboxes'][0]['state'] == 'dead' and out['sandboxes'][0]['vm_state'] == 'missing'
    assert out['sandboxes'][0]['containers'] == ['c1']
    out = run(capsys, kata_container_info, host.args(sandbox=['sb']))
    status = {c['id']: (c['type'], c['status']) for c in out['containers']}
    assert status == {'sb': ('pod_sandbox', 'stopped'), 'c1': ('pod_container', 'stopped')}
    out = run(capsys, kata_sandbox_info, host.args(state=['running']))
    assert out['sandboxes'] == []


def test_info_filters_and_query(capsys, host):
    host.plant_sandbox('web-1', labels={'tenant': 'acme'}, vcpus=2)
    host.plant_sandbox('web-2', labels={'tenant': 'other'})
    host.plant_sandbox('db-1', labels={'tenant': 'acme'})
    out = run(capsys, kata_sandbox_info, host.args(name=['web-*']))
    assert sorted(s['id'] for s in out['sandboxes']) == ['web-1', 'web-2']
    out = run(capsys, kata_sandbox_info, host.args(labels={'tenant': 'acme'}, query='[?vcpus > `1`].id'))
    assert out['sandboxes'] == ['web-1']
    out = run(capsys, kata_sandbox_info, host.args(query='[?'))
    assert out['failed'] and '[?' in out['msg']


def test_corrupt_record_is_listed_not_hidden(capsys, host):
    host.plant_sandbox('good')
    host.plant_sandbox('bad')
    with open(os.path.join(host.rt.store.sandbox_dir('bad'), 'sandbox.json'), 'w') as f:
        f.write('{"id": "bad", "trunc')
    out = run(capsys, kata_sandbox_info, host.args())
    assert [s['id'] for s in out['sandboxes']] == ['good']
    assert [c['id'] for c in out['corrupt']] == ['bad']


def test_container_absent_follows_the_seed(capsys, host):
    log = host.tmp / 'poststop.json'
    hooks = {'poststop': [{'path': host.hook('record.sh', 'cat > %s' % log)},
                          {'path': host.hook('fail.sh', 'echo boom >&2; exit 3')},
                          {'path': host.hook('after.sh', 'touch %s.after' % log)}]}
    host.plant_sandbox('sb')
    rec = host.plant_container('sb', 'c1', hooks=hooks)
    host.plant_container('sb', 'c2')
    out = run(capsys, kata_container, host.args(name='c1', state='absent'))
    assert out['changed'] is True, out
    # poststop hooks: state JSON on stdin; a failure is a warning and the next hook still runs
    state = json.loads(log.read_text())
    assert state['id'] == 'c1' and state['status'] == 'stopped'
    assert os.path.exists('%s.after' % log)
    assert "fail.sh" in json.dumps(out.get("warnings")), out
    # cgroup paths and mapping gone, the other container untouched
    assert not any(os.path.exists(p) for p in rec.cgroups_paths)
    assert host.rt.store.get_mapping('c1') is None and host.rt.store.load_container('sb', 'c1') is None
    assert host.rt.store.get_mapping('c2') == 'sb'
    out = run(capsys, kata_container, host.args(name='c1', state='absent'))
    assert out['changed'] is False


def test_pod_sandbox_container_deletes_the_whole_sandbox(capsys, host):
    log = host.tmp / 'sandbox-poststop.json'
    host.plant_sandbox('sb', hooks={'poststop': [{'path': host.hook('rec.sh', 'cat > %s' % log)}]})
    host.plant_container('sb', 'c1')
    out = run(capsys, kata_container, host.args(name='sb', state='absent', force=True))
    assert out['changed'] is True
    state = json.loads(log.read_text())
    assert state['id'] == 'sb'
    assert state['annotations']['io.katacontainers.pkg.oci.container_type'] == 'pod_sandbox'
    assert host.files() == []
    assert host.cgroup_dirs() == []


def test_changed_immutable_setting_fails_naming_it_and_changes_nothing(capsys, host):
    host.plant_sandbox('sb', state='stopped', vcpus=1)
    before = {p: open(p, 'rb').read() for p in host.files()}
    out = run(capsys, kata_sandbox, host.args(name='sb', state='stopped', vcpus=2, memory_mb=512))
    assert out['failed'] and out['changed'] is False
    assert 'vcpus' in out['msg'] and 'memory_mb' in out['msg'] and 'recreate' in out['msg']
    assert {p: open(p, 'rb').read() for p in host.files()} == before


def test_network_and_ports_are_planned_checked_and_immutable(capsys, host):
    udp = {'host_port': 53, 'container_port': 53, 'protocol': 'udp'}
    out = run(capsys, kata_sandbox, host.args(name='sb', ports=['8080:80', udp]), check_mode=True, diff=True)
    assert out['changed'] is True and out['actions'] == ['would create sandbox sb']
    net = out['sandbox']['network']
    assert net['mode'] == 'user' and net['addresses'] == ['10.0.2.15/24'] and len(net['ports']) == 2
    assert out['diff']['after']['network'] == 'user'
    assert not host.state_root.exists() and host.cgroup_dirs() == []
    # refused before anything is made, naming the value
    for args, named in ((dict(network='bridge:br0', ports=['8080:80']), 'network bridge:br0'),
                        (dict(network='network:nope'), 'network:nope'), (dict(network='slirp'), "'slirp'"),
                        (dict(ports=['8080']), "'8080'")):
        out = run(capsys, kata_sandbox, host.args(name='sb', **args))
        assert out['failed'] and out['changed'] is False and named in out['msg'], (args, out['msg'])
        assert not host.state_root.exists() and host.cgroup_dirs() == []
    host.plant_sandbox('sb', state='stopped', ports=['8080:80'])
    before = {p: open(p, 'rb').read() for p in host.files()}
    out = run(capsys, kata_sandbox, host.args(name='sb', state='stopped', network='user', ports=['127.0.0.1:8080:80']))
    assert out['changed'] is False and out['sandbox']['network']['ports'][0]['host_port'] == 8080
    for args, named in ((dict(network='none', ports=[]), 'network'), (dict(ports=['8081:80']), 'ports')):
        out = run(capsys, kata_sandbox, host.args(name='sb', state='stopped', **args))
        assert out['failed'] and named in out['msg'] and 'recreate' in out['msg'], out['msg']
        assert {p: open(p, 'rb').read() for p in host.files()} == before


def test_labels_update_in_place_with_diff(capsys, host):
    host.plant_sandbox('sb', state='stopped', labels={'a': '1'})
    out = run(capsys, kata_sandbox, host.args(name='sb', state='stopped', labels={'a': '2'}), diff=True)
    assert out['changed'] is True
    assert out['diff']['before']['labels'] == {'a': '1'} and out['diff']['after']['labels'] == {'a': '2'}
    assert host.rt.store.load_sandbox('sb').labels == {'a': '2'}
    out = run(capsys, kata_sandbox, host.args(name='sb', state='stopped', labels={'a': '2'}))
    assert out['changed'] is False


# ---------------------------------------------------------------------------------------------
# kata_prune

def test_prune_refuses_without_selector(capsys, host):
    host.plant_sandbox('sb')
    out = run(capsys, kata_prune, host.args(force=True))
    assert out['failed'] and 'selector' in out['msg']
    assert host.rt.store.load_sandbox('sb') is not None


def test_prune_check_mode_lists_and_touches_nothing(capsys, host):
    host.plant_sandbox('sb', labels={'tenant': 'acme'})
    host.rt.store.set_mapping('ghost', 'nowhere')
    before = host.files()
    out = run(capsys, kata_prune, host.args(labels={'tenant': 'acme'}, force=True), check_mode=True, diff=True)
    assert out['changed'] is True and out['deleted'] == ['sb']
    assert out['diff'] == {'before': {'sandboxes': ['sb'], 'orphans': ['dangling_mapping ghost']},
                           'after': {'sandboxes': [], 'orphans': []}}
    assert {(o['kind'], o['id']) for o in out['orphans_removed']} == {('dangling_mapping', 'ghost')}
    assert host.files() == before


def test_prune_by_labels_deletes_only_the_selection_and_collects_orphans(capsys, host):
    host.plant_sandbox('acme-1', labels={'tenant': 'acme'})
    host.plant_sandbox('acme-2', labels={'tenant': 'acme'})
    keep = host.plant_sandbox('other', state='stopped', labels={'tenant': 'other'})
    host.plant_container('acme-1', 'c1')
    host.rt.store.set_mapping('ghost', 'nowhere')
    # what a create killed between its mkdir and its record leaves: a dir in the journal only
    stray = host.rt.create_cgroups('', 'leftover', 'gone')[-1]
    # a dir this state root never made (another root's, sharing the cgroup parent) stays
    foreign = host.cgroup / 'kata-unit' / 'other-roots'
    foreign.mkdir()
    out = run(capsys, kata_prune, host.args(labels={'tenant': 'acme'}, force=True))
    assert out['changed'] is True and not out['failed']
    assert sorted(out['deleted']) == ['acme-1', 'acme-2']
    kinds = {(o['kind'], o['id']) for o in out['orphans_removed']}
    assert ('dangling_mapping', 'ghost') in kinds
    # the deletes themselves collect the dirs of sandboxes that are gone (or prune does)
    assert not os.path.exists(stray) and foreign.is_dir()
    assert [r.id for r in host.rt.store.list_sandboxes()[0]] == ['other']
    assert all(os.path.isdir(p) for p in keep.cgroups_paths)
    out = run(capsys, kata_prune, host.args(labels={'tenant': 'acme'}, force=True))
    assert out['changed'] is False


def test_prune_all_removes_corrupt_records_too(capsys, host):
    host.plant_sandbox('sb')
    with open(os.path.join(host.rt.store.sandbox_dir('sb'), 'sandbox.json'), 'w') as f:
        f.write('not json')
    out = run(capsys, kata_prune, host.args(all=True, force=True))
    assert out['deleted'] == ['sb'], out
    assert host.rt.store.list_sandboxes() == ([], [])


def test_prune_removes_our_vm_without_record_and_leaves_others(capsys, host):
    """A host whose state root was lost (tmpfs after a reboot) keeps persistent domains: the
    ones carrying our metadata are orphans; a domain that is not ours is never touched."""
    hv = host.rt.hv
    spec = {'name': hv.domain_name('lost'), 'sandbox_id': 'lost', 'vcpus': 1, 'memory_mb': 128,
            'kernel': str(host.image / 'vmlinux'), 'initrd': str(host.image / 'kata-initrd.img'),
            'cmdline': 'console=ttyS0', 'accel': 'tcg'}
    hv.conn().defineXML(hv.build_xml(spec))
    stranger = hv.build_xml(dict(spec, name='kata-unit-stranger', sandbox_id='stranger'))
    stranger = stranger.replace('https://kata.runtime', 'https://not-kata.example')
    hv.conn().defineXML(stranger)
    try:
        out = run(capsys, kata_prune, host.args(names=[], force=True), check_mode=True)
        assert {(o['kind'], o['id']) for o in out['orphans_removed']} == {('vm_without_state', 'kata-unit-lost')}
        assert hv.state('kata-unit-lost') == 'shutoff'
        out = run(capsys, kata_prune, host.args(names=[], force=True))
        assert [(o['kind'], o['id']) for o in out['orphans_removed']] == [('vm_without_state', 'kata-unit-lost')]
        assert hv.state('kata-unit-lost') == 'missing'
        assert 'kata-unit-stranger' in hv.conn().listDefinedDomains()
    finally:
        for name in ('kata-unit-lost', 'kata-unit-stranger'):
            if name in hv.conn().listDefinedDomains():
                hv.conn().lookupByName(name).undefine()


def test_paused_sandbox_with_running_containers_is_not_deleted_without_force(capsys, host):
    """In a paused VM the agent cannot answer: the records say what runs, and the seed's rule
    holds -- no force, no delete, nothing changed (check mode refuses the same way)."""
    rec = host.plant_sandbox('sb')
    host.plant_container('sb', 'c1', status='running')
    hv = host.rt.hv
    hv.conn().createXML(hv.build_xml({
        'name': rec.domain, 'sandbox_id': 'sb', 'vcpus': 1, 'memory_mb': 128, 'cmdline': '',
        'kernel': str(host.image / 'vmlinux'), 'initrd': str(host.image / 'kata-initrd.img'), 'accel': 'tcg'}))
    try:
        hv.suspend(rec.domain)
        before = host.files()
        for check_mode in (True, False):
            out = run(capsys, kata_sandbox, host.args(name='sb', state='absent'), check_mode=check_mode)
            assert out['failed'] and out['changed'] is False
            assert 'c1' in out['msg'] and 'force' in out['msg']
        assert host.files() == before and hv.state(rec.domain) == 'paused'
        out = run(capsys, kata_sandbox, host.args(name='sb', state='absent', force=True))
        assert out['changed'] is True and hv.state(rec.domain) == 'missing'
        assert host.files() == []
    finally:
        if hv.state(rec.domain) != 'missing':
            hv.conn().lookupByName(rec.domain).destroy()


def test_container_record_from_before_readonly_rootfs_loads_with_no_diff(capsys, host):
    """Records written before readonly_rootfs existed mean false: no diff, no recreate (with a
    bundle, its whole config.json is compared, so a missing key would show)."""
    host.plant_sandbox('sb', state='stopped')
    bundle = host.tmp / 'bundle'
    bundle.mkdir()
    (bundle / 'config.json').write_text(json.dumps(oci.generate_spec(str(host.rootfs), ['/bin/sh'])))
    rec = ContainerRecord.new('sb', 'c1', ctr.settings_from({'bundle': str(bundle)}), status='stopped',
                              created_at='2026-01-01T00:00:00Z', exit_code=0)
    data = host.rt.store.save_container(rec)
    del data['readonly_rootfs']  # as written before the option existed
    path = os.path.join(host.rt.store.containers_dir('sb'), 'c1.json')
    with open(path, 'w') as f:
        json.dump(data, f)
    assert host.rt.store.load_container('sb', 'c1').readonly_rootfs is False
    host.rt.store.set_mapping('c1', 'sb')
    args = host.args(name='c1', sandbox='sb', state='stopped', bundle=str(bundle))
    out = run(capsys, kata_container, args, diff=True)
    assert out['changed'] is False and not out.get('failed'), out
    assert out['diff']['before'] == out['diff']['after']
    assert out['container']['readonly_rootfs'] is False
    before = {p: open(p, 'rb').read() for p in host.files()}
    out = run(capsys, kata_container, dict(args, readonly_rootfs=True))
    assert out['failed'] and out['changed'] is False and 'readonly_rootfs' in out['msg'], out
    assert {p: open(p, 'rb').read() for p in host.files()} == before


def test_create_drops_a_stale_vm_definition_and_refuses_a_running_one(host):
    """A reboot empties a state root under /run but libvirt keeps our shut-off definitions: a
    new sandbox of the same name must get a new definition, not boot the old one."""
    hv = host.rt.hv
    name = hv.domain_name('old')
    hv.create({'name': name, 'sandbox_id': 'old', 'vcpus': 2, 'memory_mb': 128,
               'kernel': str(host.image / 'vmlinux'), 'initrd': str(host.image / 'kata-initrd.img'),
               'cmdline': '', 'accel': 'tcg'})
    settings = sbx.settings_from(host.cfg, {})
    try:
        with pytest.raises(Conflict, match='another state root'):  # running: never destroyed
            sbx.create(host.rt, 'old', settings, boot=False)
        assert hv.state(name) == 'running' and host.rt.store.load_sandbox('old') is None
        hv.destroy(name)  # shut off, as after a reboot
        trace = host.rt.trace()
        sbx.create(host.rt, 'old', settings, boot=False, trace=trace)
        assert hv.state(name) == 'missing'
        assert any('stale definition of VM %s' % name in a for a in trace.actions), trace.actions
    finally:
        if hv.state(name) == 'running':
            hv.destroy(name)
        if hv.state(name) != 'missing':
            hv.undefine(name)
        sbx.delete(host.rt, 'old', force=True)


@pytest.mark.parametrize('module, args, named', [
    (kata_sandbox, {'name': 'sb', 'timeout': 10 ** 400}, 'timeout'),
    (kata_sandbox, {'name': 'sb', 'vcpus': 10 ** 400}, 'vcpus'),
    (kata_sandbox, {'name': 'sb', 'memory_mb': 10 ** 9}, 'memory_mb'),
    (kata_container, {'name': 'c1', 'sandbox': 'sb', 'rootfs': '/', 'command': ['true'], 'stop_timeout': 10 ** 400},
     'stop_timeout'),
])
def test_numbers_no_clock_or_machine_takes_are_refused_up_front(capsys, host, module, args, named):
    """A wait no clock can add (10**400 s) or a VM no machine can have is refused naming the
    option, before anything is created; it used to pass and fail later (an OverflowError in the
    wait, or a record that fails at every boot)."""
    before = host.files()
    out = run(capsys, module, host.args(**args))
    assert out['failed'] and named in out['msg'] and out['changed'] is False, out
    assert host.files() == before
