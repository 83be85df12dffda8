# Copyright: kata.runtime contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""LibvirtHypervisor against libvirt's own in-process test driver (test:///default).

The test driver really defines, starts, pauses, stops and undefines domains from arbitrary
XML; it has no VMM process, so pid() is None there (the integration tests cover pids).
It ships a domain called 'test' that is not ours: every call on it must be refused.
"""

from __future__ import annotations

import os
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest
from ansible_collections.kata.runtime.plugins.module_utils.kata.errors import (
    Conflict,
    HypervisorError,
    InvalidArgument,
)
from ansible_collections.kata.runtime.plugins.module_utils.kata.hypervisor.base import Hypervisor
from ansible_collections.kata.runtime.plugins.module_utils.kata.hypervisor.libvirt import (
    METADATA_NS,
    LibvirtHypervisor,
)

libvirt = pytest.importorskip('libvirt', reason='libvirt-python is not installed')

URI = 'test:///default'
ODD_ID = 'a+b.c_d-e'
LONG_ID = 'L' + 'x+y.z_w-' * 15 + 'abcdefg'  # 128 characters, every allowed punctuation


@pytest.fixture
def hv():
    h = LibvirtHypervisor(URI, prefix='kata-')
    yield h
    # the test driver's state lives as long as a connection is open: leave nothing behind
    for d in h.list_ours():
        h.destroy(d['name'])
        h.undefine(d['name'])
    h.close()


ROOT = '/run/kata-runtime'


def make_vm(h, sid='sb1', **over):
    vm = {
        'name': h.domain_name(sid), 'sandbox_id': sid, 'vcpus': 2, 'memory_mb': 300,
        'kernel': '/var/lib/kata-runtime/image/vmlinux',
        'initrd': '/var/lib/kata-runtime/image/kata-initrd.img',
        'cmdline': 'console=ttyS0 quiet kata.marker="<&>"',
        'accel': 'tcg', 'console_log': '/run/kata-runtime/sandboxes/%s/console.log' % sid,
        'agent_socket': '/run/kata-runtime/sock/0123456789abcdef.sock',
        'shared_dir': '/run/kata-runtime/sandboxes/%s/shared' % sid,
        'output_dir': '/run/kata-runtime/sandboxes/%s/output' % sid,
        'output_accessmode': 'mapped',
        'state_root': ROOT,
    }
    vm.update(over)
    return vm


def test_is_a_hypervisor():
    assert isinstance(LibvirtHypervisor(URI), Hypervisor)


# -- names ------------------------------------------------------------------------------

def test_domain_name_is_prefix_plus_id(hv):
    assert hv.domain_name('sb1') == 'kata-sb1'
    assert hv.domain_name(ODD_ID) == 'kata-a+b.c_d-e'


def test_domain_name_for_a_128_char_id(hv):
    assert len(LONG_ID) == 128
    name = hv.domain_name(LONG_ID)
    assert name == 'kata-' + LONG_ID
    hv.create(make_vm(hv, LONG_ID))
    assert hv.list_ours() == [{'name': name, 'sandbox_id': LONG_ID, 'state': 'running', 'state_root': ROOT}]


@pytest.mark.parametrize('bad', ['', '-x', 'a/b', 'a b', 'x' * 129, 'é', 'a\n'])
def test_domain_name_refuses_invalid_ids(hv, bad):
    with pytest.raises(InvalidArgument):
        hv.domain_name(bad)


@pytest.mark.parametrize('prefix', ['', '-kata', 'ka/ta', 'k' * 33, 'kata '])
def test_invalid_prefix_is_refused(prefix):
    with pytest.raises(InvalidArgument, match='domain prefix'):
        LibvirtHypervisor(URI, prefix=prefix)


# -- XML --------------------------------------------------------------------------------

def test_build_xml_content(hv):
    vm = make_vm(hv)
    root = ET.fromstring(hv.build_xml(vm))
    assert root.tag == 'domain' and root.get('type') == 'qemu'
    assert root.findtext('name') == 'kata-sb1'
    assert root.findtext('vcpu') == '2'
    assert root.find('memory').get('unit') == 'MiB' and root.findtext('memory') == '300'
    os_el = root.find('os')
    assert os_el.find('type').get('machine') == 'pc' and os_el.findtext('type') == 'hvm'
    assert os_el.findtext('kernel') == vm['kernel']
    assert os_el.findtext('initrd') == vm['initrd']
    assert os_el.findtext('cmdline') == vm['cmdline']  # round-trips through escaping
    assert root.find('features/acpi') is not None
    for event in ('on_poweroff', 'on_reboot', 'on_crash'):
        assert root.findtext(event) == 'destroy'
    marker = root.find('metadata/{%s}sandbox' % METADATA_NS)
    assert marker is not None and marker.get('id') == 'sb1'

    dev = root.find('devices')
    serial = dev.find('serial')
    assert serial.get('type') == 'file' and serial.find('source').get('path') == vm['console_log']
    channel = dev.find('channel')
    assert channel.get('type') == 'unix'
    assert channel.find('source').attrib == {'mode': 'bind', 'path': vm['agent_socket']}
    assert channel.find('target').attrib == {'type': 'virtio', 'name': 'agent.0'}
    # The rootfs share is read-only; the writable one never passes the guest's modes and
    # owners through (mapped keeps them in xattrs).
    fs, out = dev.findall('filesystem')
    assert fs.attrib == {'type': 'mount', 'accessmode': 'passthrough'}
    assert fs.find('source').get('dir') == vm['shared_dir']
    assert fs.find('target').get('dir') == 'kataShared'
    assert fs.find('readonly') is not None
    assert out.attrib == {'type': 'mount', 'accessmode': 'mapped'}
    assert out.find('source').get('dir') == vm['output_dir']
    assert out.find('target').get('dir') == 'kataOutput'
    assert out.find('readonly') is None
    assert dev.find('memballoon').get('model') == 'none'  # free page reporting is asked for
    assert dev.find("controller[@type='usb']").get('model') == 'none'
    for absent in ('graphics', 'video', 'interface', 'disk', 'sound', 'input'):
        assert dev.find(absent) is None, absent

    sec = root.find('seclabel')
    assert sec.attrib == {'type': 'static', 'model': 'dac', 'relabel': 'no'}
    assert sec.findtext('label') == '+0:+0'


def test_build_xml_kvm(hv):
    root = ET.fromstring(hv.build_xml(make_vm(hv, accel='kvm')))
    assert root.get('type') == 'kvm'
    assert root.find('cpu').get('mode') == 'host-passthrough'


def test_build_xml_tb_cache_only_under_tcg(hv):
    root = ET.fromstring(hv.build_xml(make_vm(hv, tb_cache_mb=32)))
    tb = root.find('features/tcg/tb-cache')
    assert tb.text == '32' and tb.get('unit') == 'MiB'
    # libvirt's test driver keeps it (its schema knows the element), in KiB
    hv.create(make_vm(hv, tb_cache_mb=32))
    live = ET.fromstring(hv.conn().lookupByName('kata-sb1').XMLDesc()).find('features/tcg/tb-cache')
    assert (live.text, live.get('unit')) == ('32768', 'KiB')
    for vm in (make_vm(hv, tb_cache_mb=0), make_vm(hv), make_vm(hv, accel='kvm', tb_cache_mb=32)):
        assert ET.fromstring(hv.build_xml(vm)).find('features/tcg') is None
    with pytest.raises(InvalidArgument, match='tb_cache_mb'):
        hv.build_xml(make_vm(hv, tb_cache_mb='32'))


def test_build_xml_free_page_reporting_balloon(hv):
    balloon = ET.fromstring(hv.build_xml(make_vm(hv, free_page_reporting=True))).find('devices/memballoon')
    assert balloon.attrib == {'model': 'virtio', 'freePageReporting': 'on'}
    hv.create(make_vm(hv, free_page_reporting=True))
    live = ET.fromstring(hv.conn().lookupByName('kata-sb1').XMLDesc()).find('devices/memballoon')
    assert live.get('model') == 'virtio' and live.get('freePageReporting') == 'on'
    assert ET.fromstring(hv.build_xml(make_vm(hv, free_page_reporting=False))).find(
        'devices/memballoon').attrib == {'model': 'none'}


def test_build_xml_output_share_defaults_to_squash_and_refuses_passthrough(hv):
    root = ET.fromstring(hv.build_xml(make_vm(hv, output_accessmode=None)))
    assert root.findall('devices/filesystem')[1].get('accessmode') == 'squash'
    with pytest.raises(InvalidArgument, match="output_accessmode.*'passthrough'"):
        hv.build_xml(make_vm(hv, output_accessmode='passthrough'))


def test_build_xml_volume_share_is_read_write_and_mapped(hv):
    vm = make_vm(hv, volumes_dir='/run/kata-runtime/sandboxes/sb1/volumes')
    fss = ET.fromstring(hv.build_xml(vm)).findall('devices/filesystem')
    assert [(f.find('target').get('dir'), f.get('accessmode'), f.find('readonly') is not None) for f in fss] == [
        ('kataShared', 'passthrough', True), ('kataOutput', 'mapped', False), ('kataVolumes', 'mapped', False)]
    assert fss[2].find('source').get('dir') == vm['volumes_dir']
    hv.create(vm)  # libvirt takes it
    assert len(ET.fromstring(hv.build_xml(make_vm(hv))).findall('devices/filesystem')) == 2


def test_build_xml_optional_devices(hv):
    root = ET.fromstring(hv.build_xml(make_vm(hv, console_log=None, agent_socket=None,
                                              shared_dir=None, output_dir=None, initrd=None,
                                              cmdline='')))
    dev = root.find('devices')
    assert dev.find('serial') is None and dev.find('channel') is None
    assert dev.find('filesystem') is None
    assert root.find('os/initrd') is None and root.find('os/cmdline') is None


def test_build_xml_escapes_odd_values(hv):
    vm = make_vm(hv, ODD_ID, cmdline='a="b & c" <d> \'e\'',
                 shared_dir="/run/kata-runtime/sandboxes/a+b.c_d-e/sh'a\"r<e>&d")
    text = hv.build_xml(vm)
    root = ET.fromstring(text)
    assert root.findtext('name') == 'kata-a+b.c_d-e'
    assert root.find('metadata/{%s}sandbox' % METADATA_NS).get('id') == ODD_ID
    assert root.findtext('os/cmdline') == vm['cmdline']
    assert root.find('devices/filesystem/source').get('dir') == vm['shared_dir']
    # and libvirt reads back the same values
    hv.create(vm)
    live = ET.fromstring(hv.conn().lookupByName('kata-a+b.c_d-e').XMLDesc())
    assert live.findtext('os/cmdline') == vm['cmdline']
    assert live.find('devices/filesystem/source').get('dir') == vm['shared_dir']
    assert live.find('devices/filesystem/readonly') is not None
    assert live.find('metadata/{%s}sandbox' % METADATA_NS).get('id') == ODD_ID


@pytest.mark.parametrize('over, field', [
    ({'vcpus': 0}, 'vcpus'), ({'vcpus': '2'}, 'vcpus'), ({'vcpus': True}, 'vcpus'),
    ({'memory_mb': 8}, 'memory_mb'), ({'accel': 'auto'}, 'accel'),
    ({'kernel': 'vmlinux'}, 'kernel'), ({'kernel': None}, 'kernel'),
    ({'initrd': 'rel/initrd'}, 'initrd'), ({'cmdline': 'a\x01b'}, 'cmdline'),
    ({'console_log': '/tmp/a\x00b'}, 'console_log'), ({'name': 'kata-other'}, 'name'),
])
def test_build_xml_refuses_bad_values(hv, over, field):
    with pytest.raises(InvalidArgument, match=field):
        hv.build_xml(make_vm(hv, **over))


# -- ownership --------------------------------------------------------------------------

def test_builtin_test_domain_is_not_ours(hv):
    assert hv.is_ours('test') is False
    dom = hv.conn().lookupByName('test')
    before = dom.state()
    for call in (hv.state, hv.pid, hv.destroy, hv.undefine, hv.suspend, hv.resume, hv.start,
                 lambda n: hv.shutdown(n, 1)):
        with pytest.raises(HypervisorError, match='not managed by kata.runtime'):
            call('test')
    assert dom.state() == before and dom.isActive()
    assert hv.list_ours() == []


def test_prefixed_domain_without_our_metadata_is_not_ours(hv):
    conn = hv.conn()
    xml = ("<domain type='test'><name>kata-foreign</name><memory>65536</memory>"
           "<os><type>hvm</type></os></domain>")
    conn.defineXML(xml).create()
    try:
        assert hv.is_ours('kata-foreign') is False
        with pytest.raises(HypervisorError, match='not managed by kata.runtime'):
            hv.destroy('kata-foreign')
        assert conn.lookupByName('kata-foreign').isActive()
        assert hv.list_ours() == []
    finally:
        dom = conn.lookupByName('kata-foreign')
        dom.destroy()
        dom.undefine()


def test_copied_marker_under_another_name_is_not_ours(hv):
    """Our marker for sandbox 'x' on a domain named kata-y does not make kata-y ours."""
    xml = hv.build_xml(make_vm(hv, 'x')).replace('<name>kata-x</name>', '<name>kata-y</name>')
    hv.conn().defineXML(xml)
    try:
        assert hv.is_ours('kata-y') is False
        with pytest.raises(HypervisorError, match='not managed'):
            hv.undefine('kata-y')
    finally:
        hv.conn().lookupByName('kata-y').undefine()


def test_other_prefix_is_not_ours(hv):
    other = LibvirtHypervisor(URI, prefix='other-')
    try:
        other.create(make_vm(other, 'sb1'))
        assert hv.list_ours() == []
        with pytest.raises(HypervisorError, match='not managed'):
            hv.destroy('other-sb1')
        assert other.state('other-sb1') == 'running'
    finally:
        other.destroy('other-sb1')
        other.undefine('other-sb1')
        other.close()


# -- lifecycle --------------------------------------------------------------------------

def test_create_is_persistent_and_listed(hv):
    vm = make_vm(hv)
    assert hv.create(vm) is True
    assert hv.is_ours('kata-sb1')
    assert hv.conn().lookupByName('kata-sb1').isPersistent()
    assert hv.list_ours() == [{'name': 'kata-sb1', 'sandbox_id': 'sb1', 'state': 'running', 'state_root': ROOT}]
    with pytest.raises(Conflict, match='already exists'):
        hv.create(vm)


def test_state_transitions(hv):
    name = hv.domain_name('sb1')
    assert hv.state(name) == 'missing'
    hv.create(make_vm(hv))
    assert hv.state(name) == 'running'
    assert hv.pid(name) is None  # the test driver has no VMM process
    assert hv.start(name) is False
    assert hv.suspend(name) is True and hv.state(name) == 'paused'
    assert hv.suspend(name) is False
    assert hv.resume(name) is True and hv.state(name) == 'running'
    assert hv.resume(name) is False
    assert hv.destroy(name) is True and hv.state(name) == 'shutoff'
    with pytest.raises(HypervisorError, match='not running'):
        hv.suspend(name)
    with pytest.raises(HypervisorError, match='not paused'):
        hv.resume(name)
    # stopped sandboxes keep their definition and boot again
    assert hv.list_ours() == [{'name': name, 'sandbox_id': 'sb1', 'state': 'shutoff', 'state_root': ROOT}]
    assert hv.start(name) is True and hv.state(name) == 'running'


def test_shutdown(hv):
    name = hv.domain_name('sb1')
    hv.create(make_vm(hv))
    assert hv.shutdown(name, 5) is True
    assert hv.state(name) == 'shutoff'
    assert hv.shutdown(name, 5) is True  # already off
    assert hv.shutdown('kata-nothere', 5) is True  # missing


def test_shutdown_resumes_a_paused_domain(hv):
    name = hv.domain_name('sb1')
    hv.create(make_vm(hv))
    hv.suspend(name)
    assert hv.shutdown(name, 5) is True
    assert hv.state(name) == 'shutoff'


def test_destroy_and_undefine_are_idempotent(hv):
    name = hv.domain_name('sb1')
    hv.create(make_vm(hv))
    with pytest.raises(Conflict, match='still running'):
        hv.undefine(name)
    assert hv.destroy(name) is True
    assert hv.destroy(name) is False
    assert hv.undefine(name) is True
    assert hv.undefine(name) is False
    assert hv.destroy(name) is False
    assert hv.state(name) == 'missing'
    assert hv.pid(name) is None
    assert hv.list_ours() == []


def test_start_missing_is_an_error(hv):
    with pytest.raises(HypervisorError, match='does not exist'):
        hv.start('kata-nothere')
    with pytest.raises(HypervisorError, match='does not exist'):
        hv.suspend('kata-nothere')


def test_list_ours_mixes_states_and_skips_others(hv):
    for sid in ('b', 'a', ODD_ID):
        hv.create(make_vm(hv, sid))
    hv.destroy('kata-b')
    hv.suspend('kata-a')
    assert hv.list_ours() == [
        {'name': 'kata-a', 'sandbox_id': 'a', 'state': 'paused', 'state_root': ROOT},
        {'name': 'kata-a+b.c_d-e', 'sandbox_id': ODD_ID, 'state': 'running', 'state_root': ROOT},
        {'name': 'kata-b', 'sandbox_id': 'b', 'state': 'shutoff', 'state_root': ROOT},
    ]


# -- connection -------------------------------------------------------------------------

def test_unreachable_uri_names_it_and_hints():
    h = LibvirtHypervisor('qemu+unix:///system?socket=/nonexistent/libvirt-sock')
    with pytest.raises(HypervisorError) as exc:
        h.list_ours()
    msg = str(exc.value)
    assert 'qemu+unix:///system?socket=/nonexistent/libvirt-sock' in msg
    assert 'libvirtd' in msg and 'virtlogd' in msg


def test_connection_is_lazy_and_reopened(hv):
    assert hv._conn is None
    hv.list_ours()
    first = hv.conn()
    hv.close()
    assert hv._conn is None
    assert hv.conn() is not first


def test_without_libvirt_python_xml_works_and_calls_explain(tmp_path):
    """libvirt-python is imported lazily: building XML needs no libvirt, a call that does gets
    a HypervisorError saying what to install."""
    script = tmp_path / 'nolibvirt.py'
    script.write_text(
        'import sys\n'
        "sys.modules['libvirt'] = None  # makes 'import libvirt' raise ImportError\n"
        'from ansible_collections.kata.runtime.plugins.module_utils.kata.errors import HypervisorError\n'
        'from ansible_collections.kata.runtime.plugins.module_utils.kata.hypervisor.libvirt import (\n'
        '    LibvirtHypervisor)\n'
        "h = LibvirtHypervisor('test:///default')\n"
        "h.build_xml({'name': 'kata-a', 'sandbox_id': 'a', 'vcpus': 1, 'memory_mb': 64,\n"
        "             'kernel': '/k', 'initrd': None, 'cmdline': '', 'accel': 'tcg'})\n"
        'try:\n'
        "    h.state('kata-a')\n"
        'except HypervisorError as err:\n'
        '    print(err)\n')
    out = subprocess.run([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)), check=True)
    msg = out.stdout.decode()
    assert msg.startswith('libvirt-python is not installed on this host')
    assert 'python3-libvirt' in msg


def test_one_instance_serves_parallel_callers(hv):
    """prune deletes in parallel through one LibvirtHypervisor: the shared connection copes."""
    from concurrent.futures import ThreadPoolExecutor

    sids = ['p%d' % i for i in range(12)]

    def cycle(sid):
        name = hv.domain_name(sid)
        hv.create(make_vm(hv, sid))
        hv.suspend(name)
        hv.destroy(name)
        return hv.undefine(name)

    with ThreadPoolExecutor(max_workers=6) as pool:
        assert list(pool.map(cycle, sids)) == [True] * len(sids)
    assert hv.list_ours() == []


def test_the_vm_carries_its_state_root_and_older_vms_read_as_none():
    """Prune tells its own orphans from another state root's VMs by the root each VM carries;
    a VM defined before VMs carried it reads as None (prune then leaves it alone if it runs)."""
    hv = LibvirtHypervisor(URI)
    hv.create(make_vm(hv, 'rooted', state_root='/run/other-root'))
    hv.create(make_vm(hv, 'legacy', state_root=None))
    assert hv.state_root('kata-rooted') == '/run/other-root'
    assert hv.state_root('kata-legacy') is None
    assert hv.state_root('kata-missing') is None
    assert {d['sandbox_id']: d['state_root'] for d in hv.list_ours()} == {'rooted': '/run/other-root', 'legacy': None}
    with pytest.raises(InvalidArgument, match='state_root'):
        hv.build_xml(make_vm(hv, 'bad', state_root='/run/x\x01y'))
