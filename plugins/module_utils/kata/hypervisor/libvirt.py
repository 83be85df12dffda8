# Copyright: kata.runtime contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The libvirt backend: domain XML, define/start/shutdown/destroy/suspend/resume, state, pid.

Every sandbox is one persistent libvirt domain named ``<prefix><sandbox id>`` and marked as
ours by a ``<kata:sandbox id=...>`` element in its ``<metadata>``. Nothing that lacks the
prefix, the marker, or whose marker names another ID is ever touched: such a name gets a
HypervisorError and nothing is done.

Domains are persistent (define, then start) so a crashed or rebooted host leaves a definition
that prune can find; stopping a sandbox keeps its definition, ``undefine`` forgets it.

libvirt-python is imported on first use only, so the rest of the core works without it.
"""

from __future__ import annotations

import os
import re
import signal
import threading
import time
import xml.etree.ElementTree as ET
from urllib.parse import urlsplit

from ansible_collections.kata.runtime.plugins.module_utils.kata.errors import (
    Conflict,
    HypervisorError,
    InvalidArgument,
)
from ansible_collections.kata.runtime.plugins.module_utils.kata.guest import contract
from ansible_collections.kata.runtime.plugins.module_utils.kata.hypervisor.base import (
    CRASHED,
    MISSING,
    PAUSED,
    RUNNING,
    SHUTOFF,
    Hypervisor,
)
from ansible_collections.kata.runtime.plugins.module_utils.kata.ids import validate_id

METADATA_NS = 'https://kata.runtime/xmlns/sandbox/1.0'
METADATA_PREFIX = 'kata'
# 9p access modes for the writable share (libvirt's names): QEMU's mapped-xattr keeps the
# guest's modes and owners in xattrs; squash (security_model=none) refuses non-user xattrs
# such as security.capability and ignores ownership changes on create.
OUTPUT_ACCESSMODES = ('mapped', 'squash')

# Domain names are <prefix><sandbox id>: at most 32 + 128 characters of [A-Za-z0-9_.+-].
# libvirt 9.0 + qemu 7.2 define and boot such names unchanged (measured with the longest
# prefix and ID), so no shortening is needed and the name maps back to the ID directly.
PREFIX_PATTERN = r'[A-Za-z0-9][A-Za-z0-9_.+-]{0,31}'

# Seconds libvirt gets to stop the VMM with SIGTERM before we SIGKILL it ourselves (libvirt
# would wait 10 s before escalating).
DESTROY_GRACE = 1.0

# XML 1.0 forbids most control characters; refuse them before libvirt sees the document.
_BAD_XML_CHARS = re.compile('[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]')

_DAEMON_HINT = ('is libvirtd running? start virtlogd and libvirtd (systemctl start libvirtd, or '
                'apply the kata.runtime.kata_host role, which starts them on a host without '
                'systemd), then run the operation again')

_libvirt_mod = None
_import_lock = threading.Lock()


def _ignore_libvirt_error(_ctx, _err):
    """libvirt prints every error to stderr by default; we raise them as exceptions instead."""


def _libvirt():
    """Import libvirt-python on first use; a clear HypervisorError when it is missing."""
    global _libvirt_mod
    with _import_lock:
        if _libvirt_mod is None:
            try:
                import libvirt
            except ImportError as err:
                raise HypervisorError(
                    'libvirt-python is not installed on this host: %s; install it (Debian/Ubuntu: '
                    'apt-get install python3-libvirt, RHEL: dnf install python3-libvirt, or pip '
                    'install libvirt-python) or run the kata.runtime.kata_host role' % err)
            libvirt.registerErrorHandler(_ignore_libvirt_error, None)
            _libvirt_mod = libvirt
    return _libvirt_mod


def _check_text(key, value):
    if not isinstance(value, str) or not value:
        raise InvalidArgument('vm %s must be a non-empty string, got %r' % (key, value))
    if _BAD_XML_CHARS.search(value):
        raise InvalidArgument('vm %s %r contains control characters' % (key, value))
    return value


def _check_path(key, value):
    _check_text(key, value)
    if not os.path.isabs(value) or '\n' in value:
        raise InvalidArgument('vm %s must be an absolute path, got %r' % (key, value))
    return value


def _check_int(key, value, minimum):
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InvalidArgument('vm %s must be an integer >= %d, got %r' % (key, minimum, value))
    return value


def _sub(parent, tag, text=None, **attrs):
    el = ET.SubElement(parent, tag, {k.rstrip('_'): v for k, v in attrs.items()})
    if text is not None:
        el.text = text
    return el


def tap_name(domain):
    """The host tap of our domain ``domain``'s NIC on a bridge or libvirt network: ``kt`` and 13
    hex digits of the name's sha256 (15 characters, the most a Linux interface name holds), so
    ``ip link`` shows it as ours; libvirt makes it when the VM starts and deletes it when it
    stops."""
    import hashlib
    return 'kt' + hashlib.sha256(domain.encode('utf-8')).hexdigest()[:13]


def _add_nic(devices, net, domain):
    """The sandbox's virtio NIC (network.vm_network): user-mode, on a bridge or on a libvirt
    network, with the MAC the host chose and, off user mode, a tap named as ours (tap_name);
    nothing for None."""
    if net is None:
        return
    if not isinstance(net, dict) or net.get('mode') not in ('user', 'bridge', 'network'):
        raise InvalidArgument('vm network must be None or a dict with mode user, bridge or network, got %r' % (net,))
    mode = net['mode']
    iface = _sub(devices, 'interface', type=mode)
    mac = net.get('mac')
    if mac is not None:
        if not isinstance(mac, str) or not re.fullmatch(r'[0-9a-f]{2}(:[0-9a-f]{2}){5}', mac):
            raise InvalidArgument('vm network mac must be aa:bb:cc:dd:ee:ff in lower case, got %r' % (mac,))
        _sub(iface, 'mac', address=mac)
    if mode == 'bridge':
        _sub(iface, 'source', bridge=_check_text('network source', net.get('source')))
    elif mode == 'network':
        _sub(iface, 'source', network=_check_text('network source', net.get('source')))
    if mode != 'user':
        _sub(iface, 'target', dev=tap_name(domain))
    _sub(iface, 'model', type='virtio')
    # no option ROM: the guest boots from -kernel, and under TCG every ROM costs boot time
    _sub(iface, 'rom', enabled='no')


def _proc_args(pid):
    try:
        with open('/proc/%d/cmdline' % pid, 'rb') as f:
            raw = f.read()
    except OSError:
        return None
    return raw.decode('utf-8', 'replace').split('\0')


def _runs_domain(pid, uuid):
    """True when process ``pid`` is a VMM started with ``-uuid <uuid>`` (guards stale pids)."""
    args = _proc_args(pid)
    if not args:
        return False
    for i, arg in enumerate(args[:-1]):
        if arg == '-uuid' and args[i + 1].lower() == uuid.lower():
            return True
    return False


class LibvirtHypervisor(Hypervisor):
    """Sandboxes as libvirt domains on ``uri`` named ``<prefix><sandbox id>``.

    Methods that change something return True when they acted and False when there was
    nothing to do (already in the wanted state), so callers can report honest actions.
    """

    def __init__(self, uri='qemu:///system', prefix='kata-', machine='pc', arch='x86_64',
                 destroy_grace=DESTROY_GRACE):
        if not isinstance(prefix, str) or not re.fullmatch(PREFIX_PATTERN, prefix, re.ASCII):
            raise InvalidArgument(
                'invalid domain prefix %r: 1-32 characters of letters, digits, "_", ".", "+", "-", '
                'starting with a letter or digit' % (prefix,))
        self.uri = uri
        self.prefix = prefix
        self.machine = machine
        self.arch = arch
        self.destroy_grace = destroy_grace
        self._conn = None
        self._conn_lock = threading.Lock()

    # -- connection -----------------------------------------------------------------------

    def conn(self):
        """The libvirt connection, opened on first use and reopened if it died."""
        libvirt = _libvirt()
        with self._conn_lock:
            if self._conn is not None:
                # isAlive() keeps saying yes after libvirtd restarted (until a call fails with
                # a broken pipe): one small call proves the connection still answers
                try:
                    self._conn.getLibVersion()
                    return self._conn
                except libvirt.libvirtError:
                    pass
                try:
                    self._conn.close()
                except libvirt.libvirtError:
                    pass
                self._conn = None
            try:
                self._conn = libvirt.open(self.uri)
            except libvirt.libvirtError as err:
                raise HypervisorError('cannot connect to libvirt at %s: %s; %s'
                                      % (self.uri, err.get_error_message(), _DAEMON_HINT))
            return self._conn

    def close(self):
        """Close the connection (reopened on next use)."""
        with self._conn_lock:
            if self._conn is not None:
                try:
                    self._conn.close()
                except _libvirt().libvirtError:
                    pass  # closing a dead connection must not fail
                self._conn = None

    def _error(self, what, name, err):
        libvirt = _libvirt()
        hint = ''
        if err.get_error_code() in (libvirt.VIR_ERR_SYSTEM_ERROR, libvirt.VIR_ERR_RPC):
            hint = '; ' + _DAEMON_HINT  # the connection broke: libvirtd stopped or restarted
        return HypervisorError('%s domain %s failed (libvirt %s): %s%s'
                               % (what, name, self.uri, err.get_error_message(), hint))

    # -- names and ownership --------------------------------------------------------------

    def domain_name(self, sandbox_id):
        """``<prefix><sandbox_id>`` for a valid sandbox ID (InvalidArgument otherwise)."""
        return self.prefix + validate_id(sandbox_id, 'sandbox')

    def _marker_of(self, dom):
        """``(sandbox id, state root)`` from ``dom``'s metadata; (None, None) without a marker of
        ours, the root None for a domain defined before domains carried it."""
        libvirt = _libvirt()
        try:
            raw = dom.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, METADATA_NS, 0)
        except libvirt.libvirtError as err:
            if err.get_error_code() in (libvirt.VIR_ERR_NO_DOMAIN_METADATA, libvirt.VIR_ERR_NO_DOMAIN):
                return None, None
            raise
        try:
            el = ET.fromstring(raw)
        except ET.ParseError:
            return None, None
        return el.get('id') or None, el.get('root') or None

    def _owned(self, dom, name, with_root=False):
        """The sandbox ID when ``dom`` is ours: our prefix, our marker, and the marker's ID
        is the one the name was made from (a copied marker does not make a domain ours).
        ``with_root``: ``(sandbox id, state root)`` instead."""
        sid, root = (None, None)
        if name.startswith(self.prefix):
            sid, root = self._marker_of(dom)
            if sid is None or self.prefix + sid != name:
                sid, root = None, None
        return (sid, root) if with_root else sid

    def _lookup(self, name):
        """Our domain called ``name``, or None when missing; HypervisorError when not ours."""
        libvirt = _libvirt()
        conn = self.conn()
        try:
            dom = conn.lookupByName(name)
        except libvirt.libvirtError as err:
            if err.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                return None
            raise self._error('looking up', name, err)
        try:
            owned = self._owned(dom, name)
        except libvirt.libvirtError as err:
            if err.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                return None
            raise self._error('reading metadata of', name, err)
        if owned is None:
            raise HypervisorError(
                'domain %s is not managed by kata.runtime (no %s prefix or no kata:sandbox '
                'metadata for that name); nothing done' % (name, self.prefix))
        return dom

    def _require(self, name, what):
        dom = self._lookup(name)
        if dom is None:
            raise HypervisorError('cannot %s domain %s: it does not exist (libvirt %s)'
                                  % (what, name, self.uri))
        return dom

    def state_root(self, name):
        """The state root recorded in our domain ``name``; None when missing or not recorded."""
        dom = self._lookup(name)
        if dom is None:
            return None
        libvirt = _libvirt()
        try:
            return self._owned(dom, name, with_root=True)[1]
        except libvirt.libvirtError as err:
            if err.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                return None
            raise self._error('reading metadata of', name, err)

    def is_ours(self, name):
        """True when domain ``name`` exists, has our prefix and our metadata for that name."""
        libvirt = _libvirt()
        try:
            dom = self.conn().lookupByName(name)
            return self._owned(dom, name) is not None
        except libvirt.libvirtError:
            return False

    # -- XML ------------------------------------------------------------------------------

    def build_xml(self, vm):
        """The domain XML for ``vm`` (see Hypervisor), values escaped by ElementTree.

        Only the devices a sandbox needs: under TCG every emulated device costs boot time.
        ``console_log``, ``agent_socket``, ``shared_dir``, ``output_dir`` and ``volumes_dir``
        may be None (or absent) to leave that device out. ``volumes_dir`` is exported read-write
        in ``mapped`` mode (the read-write volume binds). ``shared_dir`` is exported read-only (the rootfs binds);
        ``output_dir`` read-write with ``output_accessmode`` (``squash`` unless given).
        """
        if not isinstance(vm, dict):
            raise InvalidArgument('vm must be a dict, got %r' % (vm,))
        sid = _check_text('sandbox_id', vm.get('sandbox_id'))
        name = _check_text('name', vm.get('name'))
        if name != self.domain_name(sid):
            raise InvalidArgument('vm name %r does not match sandbox %r (expected %r)'
                                  % (name, sid, self.domain_name(sid)))
        vcpus = _check_int('vcpus', vm.get('vcpus'), 1)
        memory_mb = _check_int('memory_mb', vm.get('memory_mb'), 16)
        accel = vm.get('accel')
        if accel not in ('kvm', 'tcg'):
            raise InvalidArgument("vm accel must be 'kvm' or 'tcg', got %r" % (accel,))
        kernel = _check_path('kernel', vm.get('kernel'))
        initrd = vm.get('initrd')
        cmdline = vm.get('cmdline') or ''
        if not isinstance(cmdline, str) or _BAD_XML_CHARS.search(cmdline):
            raise InvalidArgument('vm cmdline must be a string without control characters, got %r'
                                  % (cmdline,))

        dom = ET.Element('domain', type='kvm' if accel == 'kvm' else 'qemu')
        _sub(dom, 'name', name)
        meta = _sub(dom, 'metadata')
        marker = {'id': sid, 'xmlns:%s' % METADATA_PREFIX: METADATA_NS}
        if vm.get('state_root') is not None:
            marker['root'] = _check_text('state_root', vm['state_root'])
        _sub(meta, '%s:sandbox' % METADATA_PREFIX, **marker)
        _sub(dom, 'memory', str(memory_mb), unit='MiB')
        _sub(dom, 'vcpu', str(vcpus), placement='static')
        os_el = _sub(dom, 'os')
        _sub(os_el, 'type', 'hvm', arch=self.arch, machine=self.machine)
        _sub(os_el, 'kernel', kernel)
        if initrd is not None:
            _sub(os_el, 'initrd', _check_path('initrd', initrd))
        if cmdline:
            _sub(os_el, 'cmdline', cmdline)
        features = _sub(dom, 'features')
        _sub(features, 'acpi')  # without it the guest's poweroff only halts
        tb_cache_mb = vm.get('tb_cache_mb') or 0
        if accel == 'tcg' and tb_cache_mb:
            # the most QEMU may use for translated code; without it QEMU 7.2 lets it grow to
            # 1 GiB, backed by huge pages (~64 MiB after one boot of our guest)
            _sub(_sub(features, 'tcg'), 'tb-cache', str(_check_int('tb_cache_mb', tb_cache_mb, 1)), unit='MiB')
        if accel == 'kvm':
            _sub(dom, 'cpu', mode='host-passthrough')
        _sub(dom, 'clock', offset='utc')
        for event in ('on_poweroff', 'on_reboot', 'on_crash'):
            _sub(dom, event, 'destroy')

        devices = _sub(dom, 'devices')
        _sub(devices, 'controller', type='usb', model='none')
        console_log = vm.get('console_log')
        if console_log is not None:
            serial = _sub(devices, 'serial', type='file')
            _sub(serial, 'source', path=_check_path('console_log', console_log))
            _sub(serial, 'target', port='0')
        agent_socket = vm.get('agent_socket')
        if agent_socket is not None:
            channel = _sub(devices, 'channel', type='unix')
            _sub(channel, 'source', mode='bind', path=_check_path('agent_socket', agent_socket))
            _sub(channel, 'target', type='virtio', name=contract.AGENT_PORT_NAME)
        shared_dir = vm.get('shared_dir')
        if shared_dir is not None:
            # passthrough keeps the rootfs' own owners and modes visible; read-only, so the
            # guest can change none of them (the binds inside are read-only too)
            fs = _sub(devices, 'filesystem', type='mount', accessmode='passthrough')
            _sub(fs, 'source', dir=_check_path('shared_dir', shared_dir))
            _sub(fs, 'target', dir=contract.SHARED_TAG)
            _sub(fs, 'readonly')
        output_dir = vm.get('output_dir')
        if output_dir is not None:
            mode = vm.get('output_accessmode') or 'squash'
            if mode not in OUTPUT_ACCESSMODES:
                raise InvalidArgument('vm output_accessmode must be one of %s, got %r'
                                      % (', '.join(OUTPUT_ACCESSMODES), mode))
            fs = _sub(devices, 'filesystem', type='mount', accessmode=mode)
            _sub(fs, 'source', dir=_check_path('output_dir', output_dir))
            _sub(fs, 'target', dir=contract.OUTPUT_TAG)
        volumes_dir = vm.get('volumes_dir')
        if volumes_dir is not None:
            # read-write volumes are bound in here; ``mapped``: whatever the guest makes there
            # (modes, owners, device nodes, symlinks) lands on the host as xattrs on plain
            # root-owned 0600 files, never as a setuid file, a device or a link
            fs = _sub(devices, 'filesystem', type='mount', accessmode='mapped')
            _sub(fs, 'source', dir=_check_path('volumes_dir', volumes_dir))
            _sub(fs, 'target', dir=contract.VOLUMES_TAG)
        _add_nic(devices, vm.get('network'), name)
        if vm.get('free_page_reporting'):
            # the guest hands pages it freed back to the host (virtio-balloon free page
            # reporting; the balloon itself is never inflated). Never for a VM whose RAM is a
            # private mapping of a file others map too: QEMU 7.2 punches holes in that file.
            _sub(devices, 'memballoon', model='virtio', freePageReporting='on')
        else:
            _sub(devices, 'memballoon', model='none')

        # qemu runs as root: the state dirs it opens (socket, console, share) are root-only 0700
        seclabel = _sub(dom, 'seclabel', type='static', model='dac', relabel='no')
        _sub(seclabel, 'label', '+0:+0')
        return ET.tostring(dom, encoding='unicode')

    # -- networking (network.py) ------------------------------------------------------------

    def check_network(self, net):
        """Refuse a NIC whose bridge or libvirt network is not there (a clear InvalidArgument
        before anything is made); user mode and no NIC need nothing."""
        if not net or net.get('mode') not in ('bridge', 'network'):
            return
        source = net.get('source')
        if net['mode'] == 'network':
            libvirt = _libvirt()
            try:
                lnet = self.conn().networkLookupByName(source)
                active = lnet.isActive()
            except libvirt.libvirtError as err:
                if err.get_error_code() == libvirt.VIR_ERR_NO_NETWORK:
                    raise InvalidArgument('network network:%s: libvirt %s has no network %s (virsh net-list --all)'
                                          % (source, self.uri, source))
                raise HypervisorError('looking up libvirt network %s failed (libvirt %s): %s'
                                      % (source, self.uri, err.get_error_message()))
            if not active:
                raise InvalidArgument('network network:%s: the libvirt network %s is not active (virsh net-start %s)'
                                      % (source, source, source))
        elif self._local_qemu_dirs() is not None and not os.path.isdir('/sys/class/net/%s/bridge' % source):
            raise InvalidArgument('network bridge:%s: there is no bridge %s on this host' % (source, source))

    def add_forwards(self, name, rules):
        """Add QEMU user-mode ``hostfwd`` rules (``tcp:127.0.0.1:8080-10.0.2.15:80``) to our
        running domain ``name`` through its monitor, replacing the same host side's rule if the
        VMM has it already; HypervisorError names a rule QEMU refused (a host port taken)."""
        netdev = self.user_netdev(name)
        for rule in rules:
            # a rule this VMM already has (a create finished after an interruption) is replaced:
            # the same listener again, never a second one; QEMU answers a missing rule with a
            # message, which is fine here
            hmp(self, name, 'hostfwd_remove %s %s' % (netdev, rule.split('-', 1)[0]))
            out = hmp(self, name, 'hostfwd_add %s %s' % (netdev, rule))
            if out.strip():
                raise HypervisorError('forwarding %s to domain %s failed: %s (is the host port free?)'
                                      % (rule, name, out.strip()[:300]))
        return True

    def user_netdev(self, name):
        """The QEMU netdev ID of the user-mode NIC of our running domain ``name``: ``host`` and
        the device alias libvirt gave it (``hostnet0``), read from the live XML."""
        libvirt = _libvirt()
        dom = self._require(name, 'read the network of')
        try:
            root = ET.fromstring(dom.XMLDesc(0))
        except libvirt.libvirtError as err:
            raise self._error('reading the XML of', name, err)
        for iface in root.findall('devices/interface'):
            alias = iface.find('alias')
            if iface.get('type') == 'user' and alias is not None and alias.get('name'):
                return 'host' + alias.get('name')
        raise HypervisorError('domain %s has no running user-mode NIC to forward ports to' % name)

    # -- lifecycle ------------------------------------------------------------------------

    def create(self, vm):
        """Define ``vm`` persistently and start it. If the start fails the definition is
        removed again and HypervisorError carries libvirt's message and where to look."""
        create_from_xml(self, vm, self.build_xml(vm))
        return True

    # -- VM templates (the functions below the class do the work) ---------------------------

    def vmm_version(self):
        return qemu_version(self)

    def create_template_vm(self, vm, ram_path):
        """Define and boot ``vm`` with its RAM in ``ram_path``, mapped shared (a template being
        built); nothing stays defined when the start fails."""
        create_from_xml(self, vm, with_ram_file(self.build_xml(vm), ram_path, vm.get('memory_mb'), share=True))
        return True

    def save_state(self, name, path):
        return save_state(self, name, path)

    def create_clone(self, vm, ram_path, state_path):
        """Define ``vm`` on a private mapping of ``ram_path`` with ``-incoming defer``, start it
        paused and load ``state_path``; it stays paused. On failure it is destroyed and
        undefined again."""
        xml = with_ram_file(self.build_xml(vm), ram_path, vm.get('memory_mb'), share=False, incoming=True)
        name = vm['name']
        create_from_xml(self, vm, xml, paused=True)
        try:
            load_state(self, name, state_path)
        except BaseException:
            try:
                self.destroy(name)
            finally:
                self.undefine(name)
            raise
        return True

    def _log_hint(self, name, console_log=None):
        hints = []
        if console_log:
            hints.append('the guest console log %s' % console_log)
        if self._local_qemu_dirs():
            hints.append('the VMM log /var/log/libvirt/qemu/%s.log' % name
                         if self._is_system() else 'the libvirt qemu log of %s' % name)
        return '; see %s' % ' and '.join(hints) if hints else ''

    def start(self, name):
        """Boot a defined, stopped domain; False when it already runs (or is paused)."""
        libvirt = _libvirt()
        dom = self._require(name, 'start')
        try:
            if dom.isActive():
                return False
            dom.create()
        except libvirt.libvirtError as err:
            if err.get_error_code() == libvirt.VIR_ERR_OPERATION_INVALID and dom.isActive():
                return False
            raise HypervisorError('starting domain %s failed (libvirt %s): %s%s'
                                  % (name, self.uri, err.get_error_message(), self._log_hint(name)))
        return True

    def shutdown(self, name, timeout):
        """ACPI power-off, then wait up to ``timeout`` seconds for the domain to stop.

        True when it is off (or already was, or is missing); False when it still runs after
        ``timeout`` - the caller then calls destroy(). A paused domain is resumed first,
        since a paused guest cannot see the power button.
        """
        libvirt = _libvirt()
        dom = self._lookup(name)
        if dom is None:
            return True
        deadline = time.monotonic() + max(0, timeout)
        try:
            st = self._state_of(dom)
            if st not in (RUNNING, PAUSED):
                return True
            if st == PAUSED:
                dom.resume()
            dom.shutdown()
        except libvirt.libvirtError as err:
            if err.get_error_code() in (libvirt.VIR_ERR_NO_DOMAIN, libvirt.VIR_ERR_OPERATION_INVALID):
                return self.state(name) not in (RUNNING, PAUSED)
            raise self._error('shutting down', name, err)
        while True:
            if self.state(name) not in (RUNNING, PAUSED):
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.1)

    def destroy(self, name):
        """Stop the domain at once; False when it was not running or is missing.

        libvirt's destroy sends SIGTERM and waits up to 10 s before SIGKILL; a VMM that
        ignores SIGTERM gets SIGKILL from us after ``destroy_grace`` seconds instead.
        The definition is kept (see undefine).
        """
        libvirt = _libvirt()
        dom = self._lookup(name)
        if dom is None:
            return False
        try:
            if not dom.isActive():
                return False
        except libvirt.libvirtError as err:
            if err.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                return False
            raise self._error('destroying', name, err)
        pid = self._vmm_pid(dom)
        timer = None
        if pid is not None and self.destroy_grace is not None:
            timer = threading.Timer(self.destroy_grace, self._kill_vmm, (pid, dom.UUIDString()))
            timer.daemon = True
            timer.start()
        try:
            dom.destroy()
        except libvirt.libvirtError as err:
            code = err.get_error_code()
            if code in (libvirt.VIR_ERR_NO_DOMAIN, libvirt.VIR_ERR_OPERATION_INVALID):
                return False  # stopped (or vanished) on its own meanwhile
            raise self._error('destroying', name, err)
        finally:
            if timer is not None:
                timer.cancel()
        return True

    @staticmethod
    def _kill_vmm(pid, uuid):
        if _runs_domain(pid, uuid):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass

    def suspend(self, name):
        """Pause the domain's vCPUs; False when already paused."""
        return self._pause_or_resume(name, 'suspend', PAUSED, RUNNING, 'pause', 'pausing')

    def resume(self, name):
        """Resume a paused domain; False when it already runs."""
        return self._pause_or_resume(name, 'resume', RUNNING, PAUSED, 'resume', 'resuming')

    def _pause_or_resume(self, name, call, want, need, verb, doing):
        """``dom.<call>()`` from state ``need`` to ``want``; False when already ``want``."""
        libvirt = _libvirt()
        dom = self._require(name, call)
        st = self._state_of(dom)
        if st == want:
            return False
        if st != need:
            raise HypervisorError('cannot %s domain %s: it is %s, not %s' % (verb, name, st, need))
        try:
            getattr(dom, call)()
        except libvirt.libvirtError as err:
            raise self._error(doing, name, err)
        return True

    def undefine(self, name):
        """Forget a stopped domain (and any managed save image / nvram); False when missing.

        A running domain is refused: destroy it first.
        """
        libvirt = _libvirt()
        dom = self._lookup(name)
        if dom is None:
            return False
        try:
            if dom.isActive():
                raise Conflict('cannot undefine domain %s: it is still running; destroy it first'
                               % name)
        except libvirt.libvirtError as err:
            if err.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                return False
            raise self._error('undefining', name, err)
        full = (libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE | libvirt.VIR_DOMAIN_UNDEFINE_NVRAM
                | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA)
        # not every driver knows every flag (the test driver has no nvram): fall back
        for flags in (full, libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE, 0):
            try:
                dom.undefineFlags(flags)
                return True
            except libvirt.libvirtError as err:
                code = err.get_error_code()
                if code == libvirt.VIR_ERR_NO_DOMAIN:
                    return False
                if code in (libvirt.VIR_ERR_INVALID_ARG, libvirt.VIR_ERR_NO_SUPPORT) and flags:
                    continue
                raise self._error('undefining', name, err)
        return True

    # -- observation ----------------------------------------------------------------------

    def _state_of(self, dom):
        libvirt = _libvirt()
        try:
            st, reason = dom.state()
        except libvirt.libvirtError as err:
            if err.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                return MISSING
            raise
        if st in (libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_BLOCKED,
                  libvirt.VIR_DOMAIN_SHUTDOWN, libvirt.VIR_DOMAIN_NOSTATE):
            return RUNNING
        if st == libvirt.VIR_DOMAIN_PAUSED and reason == libvirt.VIR_DOMAIN_PAUSED_STARTING_UP:
            return RUNNING  # libvirt starts QEMU paused and resumes it at once: a boot, not a pause
        if st in (libvirt.VIR_DOMAIN_PAUSED, libvirt.VIR_DOMAIN_PMSUSPENDED):
            return PAUSED
        if st == libvirt.VIR_DOMAIN_CRASHED:
            return CRASHED
        if st == libvirt.VIR_DOMAIN_SHUTOFF and reason == libvirt.VIR_DOMAIN_SHUTOFF_CRASHED:
            return CRASHED  # the VMM died without being asked to (killed, OOM, ...)
        return SHUTOFF

    def state(self, name):
        """'running' | 'paused' | 'shutoff' | 'crashed' | 'missing'."""
        libvirt = _libvirt()
        dom = self._lookup(name)
        if dom is None:
            return MISSING
        try:
            return self._state_of(dom)
        except libvirt.libvirtError as err:
            raise self._error('reading state of', name, err)

    def pid(self, name):
        """The VMM (qemu) pid on this host, or None when the domain does not run here."""
        libvirt = _libvirt()
        dom = self._lookup(name)
        if dom is None:
            return None
        try:
            if not dom.isActive():
                return None
        except libvirt.libvirtError:
            return None
        return self._vmm_pid(dom)

    def _is_system(self):
        return urlsplit(self.uri).path.rstrip('/') == '/system'

    def _local_qemu_dirs(self):
        """The run dirs holding ``<name>.pid`` for a local qemu URI, else None."""
        parts = urlsplit(self.uri)
        if parts.scheme not in ('qemu', 'qemu+unix') or parts.netloc:
            return None  # remote or not qemu: the VMM is not a process on this host
        path = parts.path.rstrip('/')
        if path == '/system':
            return ['/run/libvirt/qemu', '/var/run/libvirt/qemu']
        if path == '/session':
            runtime = os.environ.get('XDG_RUNTIME_DIR') or '/run/user/%d' % os.getuid()
            return [os.path.join(runtime, 'libvirt', 'qemu', 'run')]
        return None

    def _vmm_pid(self, dom):
        """Find the qemu process of an active ``dom``: its pid file, checked against the
        process's ``-uuid`` argument; else a scan of /proc for that argument."""
        dirs = self._local_qemu_dirs()
        if dirs is None:
            return None
        libvirt = _libvirt()
        try:
            name = dom.name()
            uuid = dom.UUIDString()
        except libvirt.libvirtError:
            return None
        for d in dirs:
            try:
                with open(os.path.join(d, name + '.pid')) as f:
                    pid = int(f.read().strip())
            except (OSError, ValueError):
                continue
            if _runs_domain(pid, uuid):
                return pid
        try:
            entries = os.listdir('/proc')
        except OSError:
            return None
        for entry in entries:
            if entry.isdigit() and _runs_domain(int(entry), uuid):
                return int(entry)
        return None

    def list_ours(self):
        """All domains (running or not) carrying our prefix and marker:
        ``[{'name', 'sandbox_id', 'state', 'state_root'}]`` sorted by name."""
        libvirt = _libvirt()
        try:
            doms = self.conn().listAllDomains(0)
        except libvirt.libvirtError as err:
            raise HypervisorError('listing domains failed (libvirt %s): %s'
                                  % (self.uri, err.get_error_message()))
        out = []
        for dom in doms:
            try:
                name = dom.name()
                sid, root = self._owned(dom, name, with_root=True)
                if sid is None:
                    continue
                st = self._state_of(dom)
            except libvirt.libvirtError as err:
                if err.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                    continue  # vanished while we looked
                raise HypervisorError('listing domains failed (libvirt %s): %s'
                                      % (self.uri, err.get_error_message()))
            if st != MISSING:
                out.append({'name': name, 'sandbox_id': sid, 'state': st, 'state_root': root})
        return sorted(out, key=lambda d: d['name'])


# -- VM templates (used by template.py) ---------------------------------------------------------
#
# Guest RAM in a file of our choosing is only possible through <qemu:commandline>: an extra
# memory-backend-file plus ``-machine memory-backend=<id>``, which wins over libvirt's own
# (libvirt's pc.ram stays allocated but untouched). The template maps the file shared and saves
# the device state with x-ignore-shared migration to a file descriptor (``fd:``; ``exec:`` would
# need a spawn, which libvirt's -sandbox forbids); each clone maps the same file private
# (copy-on-write) and loads that state with ``-incoming defer``. libvirt marks such domains
# tainted (custom-argv, custom-monitor); destroy, undefine and the metadata work as usual.

QEMU_NS = 'http://libvirt.org/schemas/domain/qemu/1.0'
TEMPLATE_RAM_ID = 'kata-template-ram'
# How long a save or load of the device state may take (~0.02 s measured; TCG on a busy host)
MIGRATION_TIMEOUT = 60.0


def _libvirt_qemu():
    _libvirt()
    try:
        import libvirt_qemu
    except ImportError as err:
        raise HypervisorError('libvirt-python is installed without libvirt_qemu (%s): VM templates need it' % err)
    return libvirt_qemu


def with_ram_file(xml, ram_path, memory_mb, share, incoming=False):
    """``xml`` (build_xml's output) with the guest RAM in ``ram_path``: mapped shared (a template
    being built) or private (a clone), and for a clone ``-incoming defer``."""
    _check_path('ram_path', ram_path)
    if ',' in ram_path or '=' in ram_path:
        raise InvalidArgument('vm ram_path %r must not contain "," or "=" (QEMU option syntax)' % (ram_path,))
    _check_int('memory_mb', memory_mb, 16)
    root = ET.fromstring(xml)
    if root.tag != 'domain' or root.find('memory') is None:
        raise InvalidArgument('not a domain XML of build_xml')
    balloon = root.find('devices/memballoon')
    if balloon is not None and balloon.get('freePageReporting') == 'on':
        # QEMU 7.2 discards a reported page of file-backed RAM by punching a hole in the file,
        # even where it is mapped private: it would take the template's page from every clone
        raise InvalidArgument('a VM whose RAM is a template file must not have a free-page-reporting balloon')
    if root.find('memory').text != str(memory_mb) or root.find('memory').get('unit') != 'MiB':
        raise InvalidArgument('the RAM file size %d MiB differs from the domain memory %s %s'
                              % (memory_mb, root.find('memory').text, root.find('memory').get('unit')))
    args = ['-object', 'memory-backend-file,id=%s,mem-path=%s,size=%dM,share=%s'
            % (TEMPLATE_RAM_ID, ram_path, memory_mb, 'on' if share else 'off'),
            '-machine', 'memory-backend=%s' % TEMPLATE_RAM_ID]
    if incoming:
        args += ['-incoming', 'defer']
    cmd = ET.Element('qemu:commandline')
    for arg in args:
        _sub(cmd, 'qemu:arg', value=arg)
    body = xml.rstrip()
    head, sep, rest = body.partition('<domain ')
    if head or not sep or not body.endswith('</domain>'):
        raise InvalidArgument('not a domain XML of build_xml')
    return ('<domain xmlns:qemu="%s" %s' % (QEMU_NS, rest[:-len('</domain>')])
            + ET.tostring(cmd, encoding='unicode') + '</domain>')


def create_from_xml(hv, vm, xml, paused=False):
    """Like LibvirtHypervisor.create with a ready XML (``with_ram_file``): define, then start,
    paused when asked; nothing stays defined when the start fails."""
    libvirt = _libvirt()
    name = vm['name']
    conn = hv.conn()
    try:
        conn.lookupByName(name)
    except libvirt.libvirtError as err:
        if err.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
            raise hv._error('looking up', name, err)
    else:
        raise Conflict('cannot create domain %s: a domain with that name already exists (libvirt %s)'
                       % (name, hv.uri))
    try:
        dom = conn.defineXML(xml)
    except libvirt.libvirtError as err:
        raise hv._error('defining', name, err)
    try:
        dom.createWithFlags(libvirt.VIR_DOMAIN_START_PAUSED if paused else 0)
    except libvirt.libvirtError as err:
        try:
            dom.undefine()
        except libvirt.libvirtError:
            pass
        raise HypervisorError('starting domain %s failed (libvirt %s): %s%s'
                              % (name, hv.uri, err.get_error_message(), hv._log_hint(name, vm.get('console_log'))))
    return dom


def hmp(hv, name, command):
    """Run one human monitor command on our domain ``name`` (libvirt's monitor passthrough);
    its output text (empty when a command such as hostfwd_add succeeded)."""
    libvirt = _libvirt()
    libvirt_qemu = _libvirt_qemu()
    dom = hv._require(name, 'send %s to' % command.split()[0])
    try:
        return libvirt_qemu.qemuMonitorCommand(dom, command, libvirt_qemu.VIR_DOMAIN_QEMU_MONITOR_COMMAND_HMP) or ''
    except libvirt.libvirtError as err:
        raise hv._error('monitor command %s on' % command.split()[0], name, err)


def qmp(hv, name, command, arguments=None, fds=()):
    """Run one QMP command on our domain ``name`` through libvirt's monitor passthrough, passing
    ``fds`` along; its ``return`` value, or HypervisorError with QEMU's error."""
    import json
    libvirt = _libvirt()
    libvirt_qemu = _libvirt_qemu()
    dom = hv._require(name, 'send %s to' % command)
    cmd = {'execute': command}
    if arguments:
        cmd['arguments'] = arguments
    try:
        if fds:
            raw, files = libvirt_qemu.qemuMonitorCommandWithFiles(dom, json.dumps(cmd), list(fds), 0)
            for f in files or ():
                f.close()
        else:
            raw = libvirt_qemu.qemuMonitorCommand(dom, json.dumps(cmd), 0)
    except libvirt.libvirtError as err:
        raise hv._error('QMP %s on' % command, name, err)
    try:
        reply = json.loads(raw)
    except ValueError:
        raise HypervisorError('QMP %s on domain %s: unreadable reply %r' % (command, name, raw[:200]))
    if not isinstance(reply, dict) or 'error' in reply:
        err = reply.get('error') if isinstance(reply, dict) else reply
        desc = err.get('desc') if isinstance(err, dict) else err
        raise HypervisorError('QMP %s on domain %s failed: %s' % (command, name, desc))
    return reply.get('return')


def _poll(hv, name, command, key, done, timeout, what):
    deadline = time.monotonic() + timeout
    delay = 0.002
    while True:
        ret = qmp(hv, name, command)
        status = ret.get(key) if isinstance(ret, dict) else None
        if status in done:
            return status, ret
        if status == 'failed':
            raise HypervisorError('%s of domain %s failed: %s' % (what, name, ret.get('error-desc') or ret))
        if time.monotonic() >= deadline:
            raise HypervisorError('%s of domain %s did not finish in %ss (status %s)' % (what, name, timeout, status))
        time.sleep(delay)
        delay = min(0.05, delay * 2)


def save_state(hv, name, path, timeout=MIGRATION_TIMEOUT):
    """Save the device state of our paused domain ``name`` into a new file ``path`` (RAM in a
    shared file is left out: x-ignore-shared). The VMM stays paused. Returns the file's size."""
    qmp(hv, name, 'migrate-set-capabilities',
        {'capabilities': [{'capability': 'x-ignore-shared', 'state': True}]})
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        qmp(hv, name, 'getfd', {'fdname': 'kata-state'}, fds=[fd])
    finally:
        os.close(fd)
    qmp(hv, name, 'migrate', {'uri': 'fd:kata-state'})
    _poll(hv, name, 'query-migrate', 'status', ('completed',), timeout, 'saving the device state')
    return os.stat(path).st_size


def load_state(hv, name, path, timeout=MIGRATION_TIMEOUT):
    """Load a saved device state from ``path`` into our domain ``name``, started paused with
    ``-incoming defer``; it stays paused (resume it)."""
    qmp(hv, name, 'migrate-set-capabilities',
        {'capabilities': [{'capability': 'x-ignore-shared', 'state': True}]})
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        qmp(hv, name, 'getfd', {'fdname': 'kata-state'}, fds=[fd])
    finally:
        os.close(fd)
    qmp(hv, name, 'migrate-incoming', {'uri': 'fd:kata-state'})
    deadline = time.monotonic() + timeout
    delay = 0.002
    while True:
        ret = qmp(hv, name, 'query-status')
        status = ret.get('status') if isinstance(ret, dict) else None
        if status != 'inmigrate':
            break
        if time.monotonic() >= deadline:
            raise HypervisorError('loading the device state into domain %s did not finish in %ss' % (name, timeout))
        time.sleep(delay)
        delay = min(0.05, delay * 2)
    if status != 'paused':
        raise HypervisorError('loading the device state into domain %s failed: QEMU is %s, not paused%s'
                              % (name, status, hv._log_hint(name)))


def qemu_version(hv):
    """The QEMU version libvirt drives, as 'major.minor.micro'."""
    libvirt = _libvirt()
    try:
        ver = hv.conn().getVersion()
    except libvirt.libvirtError as err:
        raise HypervisorError('reading the hypervisor version (libvirt %s) failed: %s' % (hv.uri, err.get_error_message()))
    return '%d.%d.%d' % (ver // 1000000, ver // 1000 % 1000, ver % 1000)
