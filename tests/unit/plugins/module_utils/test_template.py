# Copyright: kata.runtime contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""VM templates without a VM: the shape and its key, template.json written and parsed
strictly, the domain XML of templates and clones, and the agent's post_clone request (the
real guest agent, run as a host process)."""

from __future__ import annotations

import base64
import json
import os
import shutil
import tempfile
import time
import xml.etree.ElementTree as ET

import pytest
from ansible_collections.kata.runtime.plugins.module_utils.kata import agent as agent_mod
from ansible_collections.kata.runtime.plugins.module_utils.kata import template
from ansible_collections.kata.runtime.plugins.module_utils.kata.agent import AgentClient
from ansible_collections.kata.runtime.plugins.module_utils.kata.errors import (
    AgentError,
    CorruptRecord,
    InvalidArgument,
)
from ansible_collections.kata.runtime.plugins.module_utils.kata.guest import agent as guest_agent
from ansible_collections.kata.runtime.plugins.module_utils.kata.guest import contract, image
from ansible_collections.kata.runtime.plugins.module_utils.kata.hypervisor import libvirt as lv
from ansible_collections.kata.runtime.tests.unit.plugins.module_utils.test_agent import AgentProc

QEMU = '7.2.0'
QEMU_NS = '{%s}' % lv.QEMU_NS


class FakeHv:
    machine = 'pc'
    arch = 'x86_64'


@pytest.fixture
def boot_files(tmp_path):
    (tmp_path / 'img').mkdir()
    kernel, initrd = tmp_path / 'img' / 'vmlinux', tmp_path / 'img' / 'initrd.img'
    kernel.write_bytes(b'\x7fELF kernel')
    initrd.write_bytes(b'070701 initrd')
    return str(kernel), str(initrd)


def vm_spec(boot_files, **over):
    kernel, initrd = boot_files
    vm = {'name': 'kata-sb1', 'sandbox_id': 'sb1', 'vcpus': 1, 'memory_mb': 128, 'kernel': kernel, 'initrd': initrd,
          'accel': 'tcg', 'cmdline': 'console=ttyS0 quiet', 'console_log': '/run/k/sandboxes/sb1/console.log',
          'agent_socket': '/run/k/sock/a.sock', 'shared_dir': '/run/k/sandboxes/sb1/shared',
          'output_dir': '/run/k/sandboxes/sb1/output', 'output_accessmode': 'squash', 'state_root': '/run/k'}
    vm.update(over)
    return vm


# -- shape and key ----------------------------------------------------------------------------

def test_shape_and_key(boot_files):
    vm = vm_spec(boot_files)
    shape = template.shape_of(FakeHv(), vm, qemu=QEMU)
    assert shape['image_digest'] == template.image_digest(*boot_files)
    assert len(shape['image_digest']) == 64
    assert (shape['vcpus'], shape['memory_mb'], shape['accel'], shape['machine'], shape['qemu']) == (1, 128, 'tcg', 'pc', QEMU)
    assert shape['devices'] == ['console', 'agent', 'shared', 'output']
    key = template.key_of(shape)
    assert template.KEY_RE.match(key)
    # paths and names of the sandbox are not part of the shape: every sandbox shares the key
    other = vm_spec(boot_files, name='kata-sb2', sandbox_id='sb2', agent_socket='/elsewhere.sock')
    assert template.key_of(template.shape_of(FakeHv(), other, qemu=QEMU)) == key
    # everything that is, changes it
    for change in ({'vcpus': 2}, {'memory_mb': 256}, {'accel': 'kvm'}, {'cmdline': 'console=ttyS0'},
                   {'output_dir': None}):
        assert template.key_of(template.shape_of(FakeHv(), vm_spec(boot_files, **change), qemu=QEMU)) != key, change
    assert template.key_of(template.shape_of(FakeHv(), vm, qemu='8.0.0')) != key
    with open(boot_files[1], 'ab') as f:
        f.write(b'changed')
    assert template.key_of(template.shape_of(FakeHv(), vm, qemu=QEMU)) != key  # a new image


def test_image_digest_separates_the_files(tmp_path):
    for name, data in (('a1', b'ab'), ('b1', b'c'), ('a2', b'a'), ('b2', b'bc')):
        (tmp_path / name).write_bytes(data)
    assert template.image_digest(str(tmp_path / 'a1'), str(tmp_path / 'b1')) != \
        template.image_digest(str(tmp_path / 'a2'), str(tmp_path / 'b2'))


@pytest.mark.parametrize('over, words', [
    ({'cmdline': 'quiet %s' % contract.TEMPLATE_FLAG}, 'templates add it'),
    ({'vcpus': 0}, 'vcpus'),
    ({'memory_mb': True}, 'memory_mb'),
    ({'accel': 'hvf'}, 'accel'),
    ({'initrd': None}, 'initrd'),
    ({'kernel': 'relative'}, 'absolute'),
    ({'kernel': '/nonexistent/vmlinux'}, 'cannot read'),
])
def test_shape_refuses_bad_specs(boot_files, over, words):
    with pytest.raises(InvalidArgument, match=words):
        template.shape_of(FakeHv(), vm_spec(boot_files, **over), qemu=QEMU)


# -- template.json ----------------------------------------------------------------------------

@pytest.fixture
def shape(boot_files):
    return template.shape_of(FakeHv(), vm_spec(boot_files), qemu=QEMU)


def _record(shape, **over):
    rec = template.record_for(shape, 128 * 2 ** 20, 400000, '/img/vmlinux', '/img/initrd.img')
    rec.update(over)
    return rec


def _make_template(tdir, rec, ram=None, state=None):
    path = os.path.join(str(tdir), rec['key'])
    os.mkdir(path)
    with open(os.path.join(path, 'template.json'), 'wb') as f:
        f.write(json.dumps(rec).encode())
    with open(os.path.join(path, 'ram'), 'wb') as f:
        f.truncate(rec['sizes']['ram'] if ram is None else ram)
    with open(os.path.join(path, 'state'), 'wb') as f:
        f.write(b'S' * (rec['sizes']['state'] if state is None else state))
    return path


def test_template_json_round_trip(tmp_path, shape):
    rec = _record(shape)
    assert template.parse_record(json.dumps(rec).encode()) == rec
    path = _make_template(tmp_path, rec)
    tpl = template.load(str(tmp_path), rec['key'])
    assert tpl.record == rec and tpl.path == path and tpl.shape == shape
    assert tpl.ram == os.path.join(path, 'ram') and tpl.state == os.path.join(path, 'state')
    info = tpl.info()
    assert info['size_bytes'] == 128 * 2 ** 20 + 400000 and info['image_digest'] == shape['image_digest']
    assert template.load(str(tmp_path), '0' * 16) is None
    found, problems = template.list_templates(str(tmp_path))
    assert [t.key for t in found] == [rec['key']] and [p for p, why in problems] == [str(tmp_path / 'img')]
    assert template.remove(str(tmp_path), rec['key']) is True
    assert template.remove(str(tmp_path), rec['key']) is False
    assert os.listdir(str(tmp_path)) == ['img']


def test_find_uses_only_a_template_of_the_same_shape(tmp_path, boot_files, shape):
    rec = _record(shape)
    _make_template(tmp_path, rec)
    assert template.find(FakeHv(), str(tmp_path), vm_spec(boot_files), qemu=QEMU).key == rec['key']
    assert template.find(FakeHv(), str(tmp_path), vm_spec(boot_files, vcpus=2), qemu=QEMU) is None
    with open(boot_files[0], 'ab') as f:
        f.write(b'new kernel')
    assert template.find(FakeHv(), str(tmp_path), vm_spec(boot_files), qemu=QEMU) is None


def _bad_records(shape):
    good = _record(shape)
    yield 'not json', b'{"version": 1,'
    yield 'a list', b'[1, 2]'
    yield 'deep nesting', b'[' * 30000 + b']' * 30000
    yield 'too large', b' ' * (template.MAX_RECORD_BYTES + 1)
    yield 'extra key', json.dumps(dict(good, extra=1)).encode()
    yield 'missing key', json.dumps({k: v for k, v in good.items() if k != 'sizes'}).encode()
    yield 'other version', json.dumps(dict(good, version=template.TEMPLATE_VERSION + 1)).encode()
    yield 'version 1 (no network in its shape)', json.dumps(dict(good, version=1)).encode()
    yield 'key not of the shape', json.dumps(dict(good, key='0' * 16)).encode()
    yield 'shape edited', json.dumps(dict(good, shape=dict(shape, vcpus=2))).encode()
    for key, value in (('vcpus', '1'), ('vcpus', True), ('memory_mb', 1), ('accel', 'xen'), ('machine', 'pc;rm'),
                       ('qemu', '7.2'), ('cmdline', 'a\x01b'), ('devices', ['console', 'console']),
                       ('devices', ['disk']), ('image_digest', 'X' * 64), ('network', 'bridge'),
                       ('network', None)):
        bad = dict(shape, **{key: value})
        yield 'shape %s=%r' % (key, value), json.dumps(dict(good, shape=bad, key=template.key_of(bad))).encode()
    yield 'extra shape key', json.dumps(dict(good, shape=dict(shape, more=1))).encode()
    yield 'digest differs', json.dumps(dict(good, image_digest='0' * 64)).encode()
    yield 'ram size', json.dumps(dict(good, sizes={'ram': 1, 'state': 10})).encode()
    yield 'state size', json.dumps(dict(good, sizes={'ram': 128 * 2 ** 20, 'state': 0})).encode()
    yield 'state huge', json.dumps(dict(good, sizes={'ram': 128 * 2 ** 20, 'state': 2 ** 40})).encode()
    yield 'created_at', json.dumps(dict(good, created_at='yesterday')).encode()
    yield 'kernel path', json.dumps(dict(good, kernel='vmlinux')).encode()
    yield 'not utf-8', b'\xff\xfe'


def test_hostile_template_json_is_refused(shape):
    for what, data in _bad_records(shape):
        with pytest.raises(CorruptRecord):
            template.parse_record(data)
            pytest.fail('accepted: %s' % what)


def test_load_refuses_a_template_that_is_not_whole(tmp_path, shape):
    rec = _record(shape)
    key = rec['key']
    path = _make_template(tmp_path, rec, ram=4096)
    with pytest.raises(CorruptRecord, match='RAM file'):
        template.load(str(tmp_path), key)
    shutil.rmtree(path)
    path = _make_template(tmp_path, rec, state=10)
    with pytest.raises(CorruptRecord, match='state file'):
        template.load(str(tmp_path), key)
    # links are not followed: neither template.json nor the RAM file
    os.unlink(os.path.join(path, 'state'))
    os.symlink('/etc/passwd', os.path.join(path, 'state'))
    with pytest.raises(CorruptRecord, match='not a regular file'):
        template.load(str(tmp_path), key)
    os.unlink(os.path.join(path, 'template.json'))
    os.symlink('/etc/passwd', os.path.join(path, 'template.json'))
    with pytest.raises(CorruptRecord, match='template.json'):
        template.load(str(tmp_path), key)
    shutil.rmtree(path)
    # a directory under another key than its shape's
    other = '1' * 16
    os.mkdir(os.path.join(str(tmp_path), other))
    with open(os.path.join(str(tmp_path), other, 'template.json'), 'w') as f:
        json.dump(rec, f)
    with pytest.raises(CorruptRecord, match='does not match'):
        template.load(str(tmp_path), other)
    found, problems = template.list_templates(str(tmp_path))
    assert found == [] and [p for p, why in problems] == [os.path.join(str(tmp_path), n) for n in (other, 'img')]
    with pytest.raises(InvalidArgument):
        template.load(str(tmp_path), '../etc')


# -- domain XML --------------------------------------------------------------------------------

@pytest.fixture
def hv():
    return lv.LibvirtHypervisor('test:///default', prefix='kata-')


def _args(xml):
    root = ET.fromstring(xml)
    cmd = root.find(QEMU_NS + 'commandline')
    return [a.get('value') for a in cmd.findall(QEMU_NS + 'arg')]


def test_template_and_clone_xml(hv, boot_files):
    vm = vm_spec(boot_files)
    base = hv.build_xml(vm)
    tpl = lv.with_ram_file(base, '/run/k/templates/0123456789abcdef/ram', 128, share=True)
    assert _args(tpl) == ['-object', 'memory-backend-file,id=kata-template-ram,mem-path=/run/k/templates/0123456789abcdef/ram,'
                          'size=128M,share=on', '-machine', 'memory-backend=kata-template-ram']
    clone = lv.with_ram_file(base, '/run/k/templates/0123456789abcdef/ram', 128, share=False, incoming=True)
    assert _args(clone)[1].endswith('share=off') and _args(clone)[4:] == ['-incoming', 'defer']
    # everything build_xml wrote is still there, unchanged: the clone stays ours
    for xml in (tpl, clone):
        root = ET.fromstring(xml)
        assert xml.startswith('<domain xmlns:qemu="%s" ' % lv.QEMU_NS)
        orig = ET.fromstring(base)
        root.remove(root.find(QEMU_NS + 'commandline'))
        assert ET.tostring(root) == ET.tostring(orig)
        marker = root.find('metadata/{%s}sandbox' % lv.METADATA_NS)
        assert marker.get('id') == 'sb1' and marker.get('root') == '/run/k'


def test_clone_xml_defines_an_owned_domain(hv, boot_files):
    libvirt = pytest.importorskip('libvirt')
    vm = vm_spec(boot_files)
    xml = lv.with_ram_file(hv.build_xml(vm), '/run/k/templates/x/ram', 128, share=False, incoming=True)
    dom = hv.conn().defineXML(xml)
    try:
        assert hv.is_ours('kata-sb1')
        assert [d['sandbox_id'] for d in hv.list_ours()] == ['sb1']
    finally:
        dom.undefine()
        hv.close()
    assert libvirt is not None


@pytest.mark.parametrize('path, size, words', [
    ('relative/ram', 128, 'absolute'),
    ('/run/k/ra,m', 128, 'must not contain'),
    ('/run/k/ram=x', 128, 'must not contain'),
    ('/run/k/ram', 256, 'differs'),
    ('/run/k/ram', 8, 'memory_mb'),
])
def test_ram_file_refusals(hv, boot_files, path, size, words):
    with pytest.raises(InvalidArgument, match=words):
        lv.with_ram_file(hv.build_xml(vm_spec(boot_files)), path, size, share=True)


def test_clone_refuses_another_shape(hv, boot_files, tmp_path, shape):
    rec = _record(shape)
    _make_template(tmp_path, rec)
    tpl = template.load(str(tmp_path), rec['key'])
    with pytest.raises(InvalidArgument, match='differs in vcpus'):
        template.clone(hv, tpl, vm_spec(boot_files, vcpus=2))


# -- the guest side: contract, /init, post_clone ----------------------------------------------

def test_agent_and_init_agree_with_the_contract():
    assert guest_agent.TEMPLATE_FLAG == contract.TEMPLATE_FLAG
    assert guest_agent.CLONE_SHARES == {contract.SHARED_TAG: (contract.SHARED_MOUNT, contract.SHARED_OPTIONS),
                                        contract.OUTPUT_TAG: (contract.OUTPUT_MOUNT, contract.OUTPUT_OPTIONS),
                                        contract.VOLUMES_TAG: (contract.VOLUMES_MOUNT, contract.VOLUMES_OPTIONS)}
    init = image.render_init(['9p'])
    for tag, (path, opts) in guest_agent.CLONE_SHARES.items():
        assert 'mount_share %s %s %s' % (tag, path, opts) in init  # the same options as a cold boot
    assert '*" %s "*) kata_template=1' % contract.TEMPLATE_FLAG in init
    assert template.SEED_BYTES <= guest_agent.CLONE_SEED_MAX


def _params(**over):
    p = {'seed': base64.b64encode(b'k' * 64).decode(), 'time': time.time(), 'mounts': ['kataShared']}
    p.update(over)
    return p


def test_post_clone_params_are_checked():
    seed, when, tags, mac = guest_agent.parse_post_clone(_params())
    assert seed == b'k' * 64 and isinstance(when, float) and tags == ['kataShared'] and mac is None
    assert guest_agent.parse_post_clone(_params(mounts=None))[2] == []
    assert guest_agent.parse_post_clone(_params(mac='52:54:00:0a:0b:0c'))[3] == '52:54:00:0a:0b:0c'
    bad = [
        _params(extra=1), _params(seed=None), _params(seed=1), _params(seed='***'), _params(seed='abc'),
        _params(seed=base64.b64encode(b'k' * 8).decode()),
        _params(seed=base64.b64encode(b'k' * (guest_agent.CLONE_SEED_MAX + 1)).decode()),
        _params(seed='A' * 10 ** 6), _params(seed='\u00e9' * 64),
        _params(time=None), _params(time=True), _params(time='now'), _params(time=0), _params(time=1e300),
        _params(time=float('nan')), _params(time=float('inf')),
        _params(mounts='kataShared'), _params(mounts=['kataShared', 'kataShared']), _params(mounts=['root']),
        _params(mounts=[{'tag': 'x'}]), _params(mounts=['kataShared', 'kataOutput', 'x']), _params(mounts=[['a']]),
        _params(mac='52:54:00:0A:0B:0C'), _params(mac='01:00:5e:00:00:01'), _params(mac='eth0 up'), _params(mac=1),
        _params(mac='52:54:00:0a:0b:0c; reboot'),
    ]
    for params in bad:
        with pytest.raises(guest_agent.RequestError):
            guest_agent.parse_post_clone(params)
            pytest.fail('accepted %r' % (params,))


@pytest.fixture
def agent_client():
    base = tempfile.mkdtemp(prefix='ktpl-', dir='/tmp')
    proc = AgentProc(base).start()
    client = AgentClient(proc.sock, timeout=10)
    yield proc, client
    client.close()
    proc.stop()
    shutil.rmtree(base, ignore_errors=True)


def test_post_clone_through_the_agent(agent_client):
    proc, client = agent_client
    # a host process is no guest: the request is checked and answered, nothing is changed
    before = time.time()
    answer = template.post_clone(client, ['kataShared', 'kataOutput'], when=before - 3600)
    assert answer == {'seeded': 0, 'clock_set': False, 'mounted': []}
    assert time.time() >= before
    with pytest.raises(AgentError, match='unknown share tag'):
        client.request('post_clone', _params(mounts=['/etc']))
    with pytest.raises(AgentError, match='seed must hold'):
        client.request('post_clone', _params(seed=''))
    with pytest.raises(AgentError, match='unknown params'):
        client.request('post_clone', _params(path='/'))
    assert client.ping()['protocol'] == 1 and proc.proc.poll() is None


def test_post_clone_reply_is_checked():
    check = agent_mod._RESULTS['post_clone']
    params = {'mounts': ['kataShared']}
    assert check({'seeded': 64, 'clock_set': True, 'mounted': ['kataShared'], 'x': 1}, params) == \
        {'seeded': 64, 'clock_set': True, 'mounted': ['kataShared']}
    for bad in (None, [], {'seeded': -1, 'clock_set': True, 'mounted': []},
                {'seeded': 1, 'clock_set': 'yes', 'mounted': []},
                {'seeded': 1, 'clock_set': True, 'mounted': ['kataOutput']},
                {'seeded': 1, 'clock_set': True, 'mounted': ['kataShared'] * 5},
                {'seeded': 10 ** 9, 'clock_set': True, 'mounted': []}):
        with pytest.raises(Exception) as info:
            check(bad, params)
        assert type(info.value).__name__ == '_Invalid', bad


def test_ensure_tmpfs_refusals(tmp_path):
    with pytest.raises(InvalidArgument):
        template.ensure_tmpfs('relative', 64)
    with pytest.raises(InvalidArgument):
        template.ensure_tmpfs(str(tmp_path), 1)
    with pytest.raises(InvalidArgument):
        template.ensure_tmpfs(str(tmp_path), True)


def test_ensure_tmpfs_mounts_once(tmp_path):
    if os.geteuid() != 0:
        pytest.skip('needs root')
    tdir = str(tmp_path / 'templates')
    try:
        assert template.ensure_tmpfs(tdir, 64) is True
        assert template.ensure_tmpfs(tdir, 64) is False
        from ansible_collections.kata.runtime.plugins.module_utils.kata import mountinfo
        assert [m for m in mountinfo.mounts() if m[0] == tdir][0][2:] == ('tmpfs', template.TMPFS_SOURCE)
    finally:
        assert template.release_tmpfs(tdir) is True
    assert template.release_tmpfs(tdir) is False


def test_no_free_page_reporting_balloon_on_a_ram_file(hv, boot_files):
    """QEMU 7.2 punches holes in a file-backed RAM for reported pages, even mapped private:
    the XML of a template or clone refuses the balloon outright."""
    xml = hv.build_xml(vm_spec(boot_files, free_page_reporting=True))
    for share in (True, False):
        with pytest.raises(InvalidArgument, match='free-page-reporting'):
            lv.with_ram_file(xml, '/run/k/templates/x/ram', 128, share=share)


def test_a_clone_that_cannot_load_its_state_leaves_nothing_defined(hv, boot_files, tmp_path):
    """test:///default defines the clone but cannot start it paused (nor has it a QEMU
    monitor to load the state through): create_clone leaves nothing defined."""
    pytest.importorskip('libvirt')
    ram, state = tmp_path / 'ram', tmp_path / 'state'
    with open(str(ram), 'wb') as f:
        f.truncate(128 * 2 ** 20)
    state.write_bytes(b'S' * 64)
    from ansible_collections.kata.runtime.plugins.module_utils.kata.errors import HypervisorError
    try:
        with pytest.raises(HypervisorError, match='starting domain kata-sb1 failed|QMP'):
            hv.create_clone(vm_spec(boot_files), str(ram), str(state))
        assert hv.list_ours() == [] and hv.state('kata-sb1') == 'missing'
    finally:
        hv.close()
