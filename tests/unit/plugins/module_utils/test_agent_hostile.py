# Copyright: kata.runtime contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A hostile guest agent against the host: every reply is refused as an AgentError, and
nothing it sends stops a forced delete, a prune or the info modules.

The guest side is a stand-in serving the sandbox's agent socket from a thread and answering
each request with whatever bytes a test scripts. The lifecycle half runs the real core against
libvirt's own ``test:///default`` driver (a running domain, no VMM process) with a temp state
root, like tests/unit/plugins/modules/test_lifecycle_modules.py; libvirt is never mocked.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
import threading

import pytest
from ansible_collections.kata.runtime.plugins.module_utils.kata import container as ctr
from ansible_collections.kata.runtime.plugins.module_utils.kata import prune
from ansible_collections.kata.runtime.plugins.module_utils.kata import sandbox as sbx
from ansible_collections.kata.runtime.plugins.module_utils.kata.agent import AgentClient
from ansible_collections.kata.runtime.plugins.module_utils.kata.config import load_config
from ansible_collections.kata.runtime.plugins.module_utils.kata.errors import AgentError, Conflict, KataError
from ansible_collections.kata.runtime.plugins.module_utils.kata.guest import contract
from ansible_collections.kata.runtime.plugins.module_utils.kata.model import ContainerRecord, SandboxRecord
from ansible_collections.kata.runtime.plugins.module_utils.kata.runtime import Runtime

MiB = 1024 * 1024


class StandIn:
    """A stand-in guest agent on a unix socket: ``script(request)`` says what goes back.

    ``script`` returns bytes, an iterable of byte chunks (sent one by one, so a huge line is
    never built in memory) or None (no answer). Connections are served one after the other
    until ``close()``; ``methods`` lists the requests seen, ``sent`` the bytes sent, and
    ``hung_up`` is set each time a connection ends.
    """

    def __init__(self, path, script):
        self.path = path
        self.script = script
        self.methods = []
        self.connections = 0
        self.sent = 0
        self.hung_up = threading.Event()
        self._stop = threading.Event()
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(path)
        self.server.listen(4)
        self.server.settimeout(0.1)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while not self._stop.is_set():
            try:
                conn, dummy = self.server.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            self.connections += 1
            self.hung_up.clear()
            with conn:
                try:
                    self._talk(conn)
                except OSError:
                    pass  # the client hung up mid-reply: what it should do with a refused line
            self.hung_up.set()

    def _talk(self, conn):
        buf = b''
        while not self._stop.is_set():
            conn.settimeout(0.1)
            try:
                chunk = conn.recv(65536)
            except socket.timeout:
                continue
            if not chunk:
                return
            buf += chunk
            while b'\n' in buf:
                line, buf = buf.split(b'\n', 1)
                if not line.strip():
                    continue
                req = json.loads(line)
                self.methods.append(req['method'])
                out = self.script(req)
                if out is None:
                    continue
                conn.settimeout(None)  # a client busy reading a long line is not a hang-up
                for piece in [out] if isinstance(out, bytes) else out:
                    conn.sendall(piece)
                    self.sent += len(piece)

    def close(self):
        self._stop.set()
        self.thread.join(10)
        self.server.close()


def reply(req, **fields):
    """One reply line to ``req``: its id plus ``fields``."""
    return json.dumps(dict({'id': req['id']}, **fields)).encode() + b'\n'


def state(cid, status='running', **over):
    """A container state as the real guest agent sends it (guest/agent.py Container.state)."""
    out = {'id': cid, 'status': status, 'pid': 7, 'exit_code': None,
           'created_at': '2026-01-01T00:00:00.000000Z', 'started_at': '2026-01-01T00:00:01.000000Z',
           'finished_at': None, 'rootfs': '/run/kata-containers/shared/%s/rootfs' % cid, 'args': ['sh'],
           'stdout': '/run/kata-containers/shared/%s/stdout' % cid, 'stderr': '/run/kata-containers/shared/%s/stderr' % cid}
    out.update(over)
    return out


def sixty_four_mib_unterminated(req):
    return (b'x' * MiB for dummy in range(64))


# Each hostile reply, the call it answers and what the refusal must say.
HOSTILE = {
    'deep_nesting': (lambda req: b'[' * 200000 + b'\n', 'list_containers', {}, 'nested deeper than'),
    'deep_but_decodable': (lambda req: b'[' * 100 + b']' * 100 + b'\n', 'ping', {}, 'nested deeper than'),
    'deep_objects': (lambda req: b'{"a":' * 50000 + b'\n', 'kill_all', {'signal': 9}, 'nested deeper than'),
    'id_is_a_list': (lambda req: b'{"id": [1, 2], "result": []}\n', 'list_containers', {}, 'id must be an integer'),
    'id_is_an_object': (lambda req: b'{"id": {"a": 1}, "result": []}\n', 'list_containers', {},
                        'id must be an integer'),
    'id_is_a_bool': (lambda req: b'{"id": true, "result": []}\n', 'list_containers', {}, 'id must be an integer'),
    'not_an_object': (lambda req: b'[1, 2, 3]\n', 'list_containers', {}, 'expected a JSON object, got list'),
    'a_bare_number': (lambda req: b'42\n', 'ping', {}, 'expected a JSON object, got int'),
    'error_is_an_object': (lambda req: reply(req, error={'why': 'no'}), 'list_containers', {},
                           'error must be a string or null, got dict'),
    'list_is_a_dict': (lambda req: reply(req, result={'c1': state('c1')}), 'list_containers', {},
                       'expected a list of container states, got dict'),
    'list_is_a_number': (lambda req: reply(req, result=3), 'list_containers', {},
                         'expected a list of container states, got int'),
    'list_of_strings': (lambda req: reply(req, result=['c1', 'c2']), 'list_containers', {},
                        'item 0: expected a container state (an object), got str'),
    'list_item_bad_status': (lambda req: reply(req, result=[state('c1', status='zombie')]), 'list_containers', {},
                             'item 0: status must be one of creating, created, running, stopped'),
    'list_item_bad_id': (lambda req: reply(req, result=[state('../etc')]), 'list_containers', {},
                         'id must be a container ID'),
    'pid_is_a_string': (lambda req: reply(req, result=state('c1', pid='7')), 'container_state', {'id': 'c1'},
                        'pid must be null or a process id'),
    'exit_code_is_a_bool': (lambda req: reply(req, result=state('c1', exit_code=True)), 'wait_container',
                            {'id': 'c1'}, 'exit_code must be null or an exit code'),
    'state_of_another_container': (lambda req: reply(req, result=state('c2')), 'start_container', {'id': 'c1'},
                                   'the state is of container c2, not c1'),
    'time_is_huge': (lambda req: reply(req, result=state('c1', finished_at='9' * 100000)), 'container_state',
                     {'id': 'c1'}, 'finished_at must be null or a short string'),
    'ping_is_a_list': (lambda req: reply(req, result=[]), 'ping', {}, 'expected an object, got list'),
    'kill_all_count_missing': (lambda req: reply(req, result={'signal': 9}), 'kill_all', {'signal': 9},
                               'count missing'),
    'kill_all_is_a_string': (lambda req: reply(req, result='done'), 'kill_all', {'signal': 9},
                             'expected an object, got str'),
    'removed_is_a_string': (lambda req: reply(req, result={'id': 'c1', 'removed': 'yes'}), 'remove_container',
                            {'id': 'c1'}, 'removed must be a boolean'),
    'signaled_missing': (lambda req: reply(req, result={'id': 'c1', 'signal': 15, 'status': 'running'}),
                         'signal_container', {'id': 'c1', 'signal': 15}, 'signaled missing'),
    'shutdown_is_null': (lambda req: reply(req, result=None), 'shutdown', {}, 'expected an object, got null'),
    'no_result_at_all': (reply, 'wait_container', {'id': 'c1'},
                         'expected a container state (an object), got null'),
}


@pytest.fixture
def short_dir():
    """A short directory: sun_path holds only 108 bytes, pytest's tmp_path can be longer."""
    path = tempfile.mkdtemp(prefix='kah-', dir='/tmp')
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def stand_in(short_dir):
    """``stand_in(script)`` serves ``<short_dir>/agent.sock``; every one is closed at the end."""
    made = []

    def make(script, path=None):
        made.append(StandIn(path or os.path.join(short_dir, 'agent.sock'), script))
        return made[-1]

    yield make
    for s in made:
        s.close()


# ---------------------------------------------------------------------------------------------
# the client: every malformed reply is an AgentError naming the sandbox, the socket and the call

@pytest.mark.parametrize('case', sorted(HOSTILE))
def test_hostile_reply_is_an_agent_error_naming_the_call(stand_in, case):
    script, method, params, why = HOSTILE[case]
    fake = stand_in(script)
    with AgentClient(fake.path, timeout=10, sandbox_id='sb1') as cli, pytest.raises(AgentError) as info:
        cli.request(method, params)
    assert isinstance(info.value, KataError)
    msg = str(info.value)
    assert method in msg and 'sb1' in msg and fake.path in msg, msg
    assert why in msg, msg
    assert len(msg) < 1000, msg  # never megabytes of guest data
    assert fake.methods == [method]


def test_unterminated_64_mib_line_is_refused_at_the_line_cap(stand_in):
    """The client stops reading at contract.MAX_LINE instead of waiting for the line to end."""
    fake = stand_in(sixty_four_mib_unterminated)
    with AgentClient(fake.path, timeout=30, sandbox_id='sb1') as cli, pytest.raises(AgentError) as info:
        cli.call('list_containers')
    msg = str(info.value)
    assert 'longer than %d bytes' % contract.MAX_LINE in msg and 'list_containers' in msg, msg
    assert contract.MAX_LINE <= 8 * MiB
    # The client hung up on the rest: far less than the 64 MiB was ever taken off the socket.
    assert fake.hung_up.wait(30)
    assert fake.sent < 16 * MiB, fake.sent


def test_a_complete_line_over_the_cap_is_refused(stand_in):
    big = contract.MAX_LINE + 10
    fake = stand_in(lambda req: reply(req, result={'pad': 'x' * big}))
    with AgentClient(fake.path, timeout=30) as cli, pytest.raises(AgentError, match="longer than .* to ping"):
        cli.ping()


def test_guest_error_text_is_bounded_and_stripped_of_controls(stand_in):
    fake = stand_in(lambda req: reply(req, error='\x1b[2J\r\nfake: ok\u202e' + 'y' * MiB))
    with AgentClient(fake.path, timeout=10) as cli, pytest.raises(AgentError) as info:
        cli.call('container_state', id='c1')
    msg = str(info.value)
    assert msg.startswith("agent call 'container_state' to the agent on socket %s failed: ?[2J??fake: ok?yyy"
                          % fake.path)
    assert len(msg) < 1000 and 'more characters' in msg
    assert not any(ch in msg for ch in '\x1b\r\n\u202e')


def test_brackets_inside_strings_do_not_count_as_nesting(stand_in):
    deep_text = '[' * 1000 + '{"' * 1000 + '\\"]]]'
    fake = stand_in(lambda req: reply(req, result=[state('c1', args=[deep_text], rootfs=deep_text)]))
    with AgentClient(fake.path, timeout=10) as cli:
        assert cli.list_containers() == [{
            'id': 'c1', 'status': 'running', 'pid': 7, 'exit_code': None,
            'created_at': '2026-01-01T00:00:00.000000Z', 'started_at': '2026-01-01T00:00:01.000000Z',
            'finished_at': None}]  # only the checked fields the host uses are kept


def test_honest_replies_pass_in_their_checked_shape(stand_in):
    results = {
        'ping': {'version': '1.0.0', 'protocol': 1, 'pid': 1, 'uptime': 0.25},
        'start_container': {'id': 'c1', 'pid': 9, 'status': 'running', 'started_at': '2026-01-01T00:00:01Z'},
        'wait_container': {'id': 'c1', 'status': 'stopped', 'exit_code': 137},
        'signal_container': {'id': 'c1', 'signal': 15, 'signaled': True, 'status': 'running'},
        'remove_container': {'id': 'c1', 'removed': False},
        'kill_all': {'signal': 9, 'count': 2},
        'shutdown': {'poweroff': True},
        'list_containers': [],
    }
    fake = stand_in(lambda req: reply(req, result=results[req['method']]))
    with AgentClient(fake.path, timeout=10) as cli:
        assert cli.ping() == results['ping']
        assert cli.start_container('c1') == results['start_container']
        assert cli.wait_container('c1', 1) == results['wait_container']
        assert cli.signal_container('c1', 15) == results['signal_container']
        assert cli.remove_container('c1') == results['remove_container']
        assert cli.kill_all() == results['kill_all']
        assert cli.list_containers() == []
        assert cli.shutdown() == results['shutdown']


def test_after_a_refused_reply_the_next_call_starts_a_fresh_connection(stand_in):
    """Whatever followed a refused line is never read as the answer to a later call."""
    answers = iter([b'{"id": [1]}\n' + b'{"id": 0, "result": {}}\n', None])

    def script(req):
        out = next(answers, None)
        return out if out is not None else reply(req, result={'version': 'v', 'protocol': 1, 'pid': 1, 'uptime': 1})

    fake = stand_in(script)
    cli = AgentClient(fake.path, timeout=10)
    try:
        with pytest.raises(AgentError, match='id must be an integer'):
            cli.ping()
        assert cli.ping()['version'] == 'v'
        assert fake.connections == 2
    finally:
        cli.close()


def test_wait_ready_refuses_a_hostile_ping(stand_in):
    fake = stand_in(lambda req: b'[' * 200000 + b'\n')
    with pytest.raises(AgentError, match='invalid reply to ping: nested deeper'):
        AgentClient(fake.path).wait_ready(10)


def test_a_method_without_a_known_result_shape_is_never_sent(stand_in):
    fake = stand_in(lambda req: reply(req, result={}))
    with AgentClient(fake.path, timeout=5) as cli, pytest.raises(AgentError, match="'echo' has no known result"):
        cli.call('echo', x=1)
    assert fake.methods == []


# ---------------------------------------------------------------------------------------------
# the lifecycle core: a sandbox whose running VM has a hostile agent

class Host:
    """A temp host (short state root: the agent socket lives under it) on test:///default."""

    def __init__(self, base):
        self.base = base
        self.cgroup = os.path.join(base, 'cgroup')
        os.makedirs(self.cgroup)
        with open(os.path.join(self.cgroup, 'cgroup.controllers'), 'w') as fh:
            fh.write('cpu memory pids\n')
        self.image = os.path.join(base, 'image')
        os.makedirs(self.image)
        for name in ('vmlinux', 'kata-initrd.img'):
            with open(os.path.join(self.image, name), 'wb') as fh:
                fh.write(b'boot file')
        self.rootfs = os.path.join(base, 'rootfs')
        os.makedirs(os.path.join(self.rootfs, 'bin'))
        self.state_root = os.path.join(base, 'run')
        self.config = os.path.join(base, 'config.yaml')
        with open(self.config, 'w') as fh:
            json.dump({'libvirt_uri': 'test:///default', 'image_dir': self.image, 'state_root': self.state_root,
                       'cgroup_root': self.cgroup, 'cgroup_parent': 'kata-unit', 'domain_prefix': 'kata-unit-'}, fh)
        self.cfg = load_config(self.config)
        self.rt = Runtime(self.cfg)
        self.domains = []

    def plant_sandbox(self, sid, vm='running', **opts):
        """A sandbox record as sandbox.create leaves it, and its domain in state ``vm``."""
        hv = self.rt.hv
        settings = sbx.settings_from(self.cfg, opts)
        rec = SandboxRecord.new(sid, sbx.record_settings(settings, 'tcg'), state='running', domain=hv.domain_name(sid),
                                accel_requested=settings['accel'], accel_reason='unit test',
                                created_at='2026-01-01T00:00:00Z', libvirt_uri='test:///default')
        self.rt.store.ensure()
        rec.cgroups_paths = self.rt.cgroups.create('', sid)
        self.rt.store.save_sandbox(rec)
        self.rt.store.set_mapping(sid, sid)
        if vm in ('running', 'paused'):
            hv.conn().createXML(hv.build_xml({
                'name': rec.domain, 'sandbox_id': sid, 'vcpus': 1, 'memory_mb': 128, 'cmdline': '',
                'kernel': rec.kernel, 'initrd': rec.initrd, 'accel': 'tcg'}))
            self.domains.append(rec.domain)
            if vm == 'paused':
                hv.suspend(rec.domain)
        return rec

    def plant_container(self, sid, cid, status='running'):
        settings = ctr.settings_from({'rootfs': self.rootfs, 'command': ['/bin/sh']})
        rec = ContainerRecord.new(sid, cid, settings, status=status, created_at='2026-01-01T00:00:00Z', pid=7)
        rec.cgroups_paths = self.rt.cgroups.create('', cid)
        self.rt.store.save_container(rec)
        self.rt.store.set_mapping(cid, sid)
        return rec

    def gone(self, sid, cids=()):
        """Nothing of sandbox ``sid`` is left: no domain, record, mapping or sandbox directory."""
        store = self.rt.store
        return (self.rt.hv.state(self.rt.hv.domain_name(sid)) == 'missing'
                and store.load_sandbox(sid) is None
                and store.get_mapping(sid) is None
                and not any(store.get_mapping(c) for c in cids)
                and not os.path.lexists(store.sandbox_dir(sid))
                and not os.path.lexists(store.agent_socket(sid)))

    def cleanup(self):
        hv = self.rt.hv
        for name in self.domains:
            if hv.state(name) in ('running', 'paused'):
                hv.destroy(name)
            if hv.state(name) != 'missing':
                hv.undefine(name)


@pytest.fixture
def host(short_dir):
    pytest.importorskip('libvirt', reason='libvirt-python is not installed')
    h = Host(short_dir)
    yield h
    h.cleanup()


# The hostile replies the lifecycle runs into: to kill_all (delete) and list_containers (info).
LIFECYCLE_HOSTILE = ['deep_nesting', 'id_is_a_list', 'id_is_an_object', 'not_an_object', 'error_is_an_object',
                     'list_is_a_dict', 'list_is_a_number', 'list_of_strings']


def hostile_agent_of(host, stand_in, sid, case):
    script = HOSTILE[case][0]
    return stand_in(script, path=host.rt.store.agent_socket(sid))


@pytest.mark.parametrize('case', LIFECYCLE_HOSTILE)
def test_forced_sandbox_delete_destroys_the_vm_whatever_the_agent_sends(host, stand_in, case):
    host.plant_sandbox('sb')
    host.plant_container('sb', 'c1', status='running')
    fake = hostile_agent_of(host, stand_in, 'sb', case)
    trace = host.rt.trace()
    assert sbx.delete(host.rt, 'sb', force=True, trace=trace) is True
    assert fake.methods == ['kill_all']  # the agent was asked, and its answer refused
    assert any('destroyed VM kata-unit-sb' in a for a in trace.actions), trace.actions
    assert host.gone('sb', ['c1'])


@pytest.mark.parametrize('case', ['deep_nesting', 'id_is_a_list', 'list_of_strings', 'error_is_an_object'])
def test_forced_container_delete_removes_the_container_whatever_the_agent_sends(host, stand_in, case):
    host.plant_sandbox('sb')
    host.plant_container('sb', 'c1', status='running')
    host.plant_container('sb', 'c2', status='running')
    hostile_agent_of(host, stand_in, 'sb', case)
    trace = host.rt.trace()
    assert ctr.delete(host.rt, 'c1', force=True, trace=trace) is True
    assert any('could not kill it through the agent' in w for w in trace.warnings), trace.warnings
    store = host.rt.store
    assert store.load_container('sb', 'c1') is None and store.get_mapping('c1') is None
    # only c1 went: its sandbox and sibling are untouched
    assert store.load_container('sb', 'c2') is not None and store.load_sandbox('sb') is not None
    assert host.rt.hv.state(host.rt.hv.domain_name('sb')) == 'running'


@pytest.mark.parametrize('case', ['deep_nesting', 'id_is_a_list', 'list_is_a_dict', 'list_of_strings'])
def test_unforced_sandbox_delete_refuses_on_the_records_and_changes_nothing(host, stand_in, case):
    """The agent cannot say what runs: the records can, and the seed's refusal holds."""
    rec = host.plant_sandbox('sb')
    host.plant_container('sb', 'c1', status='running')
    hostile_agent_of(host, stand_in, 'sb', case)
    with pytest.raises(Conflict, match='c1'):
        sbx.delete(host.rt, 'sb')
    assert host.rt.hv.state(rec.domain) == 'running'
    assert host.rt.store.load_sandbox('sb') is not None and host.rt.store.get_mapping('c1') == 'sb'


@pytest.mark.parametrize('case', ['deep_nesting', 'id_is_an_object', 'list_of_strings'])
def test_prune_deletes_a_sandbox_whatever_its_agent_sends(host, stand_in, case):
    host.plant_sandbox('sb', labels={'tenant': 'acme'})
    host.plant_container('sb', 'c1')
    hostile_agent_of(host, stand_in, 'sb', case)
    ids = prune.selected_ids(host.rt, labels={'tenant': 'acme'})
    assert ids == ['sb']
    result = prune.prune(host.rt, ids, force=True)
    assert result['failed'] == [] and result['deleted'] == ['sb'], result
    assert host.gone('sb', ['c1'])


@pytest.mark.parametrize('case', LIFECYCLE_HOSTILE)
def test_list_all_reports_unknown_with_the_reason_and_the_other_sandboxes_as_usual(host, stand_in, case):
    host.plant_sandbox('bad')
    host.plant_container('bad', 'c1', status='running')
    host.plant_container('bad', 'c2', status='created')
    host.plant_container('bad', 'c3', status='stopped')
    host.plant_sandbox('good')
    host.plant_container('good', 'g1', status='running')
    host.plant_sandbox('dead', vm='missing')
    host.plant_container('dead', 'd1', status='running')
    hostile_agent_of(host, stand_in, 'bad', case)
    stand_in(lambda req: reply(req, result=[state('g1')]), path=host.rt.store.agent_socket('good'))
    items, corrupt = ctr.list_all(host.rt)
    assert corrupt == []
    got = {c['id']: c for c in items}
    for cid in ('c1', 'c2'):
        assert got[cid]['status'] == 'unknown' and got[cid]['pid'] is None, got[cid]
        assert 'list_containers' in got[cid]['error'] and 'sandbox bad' in got[cid]['error'], got[cid]
    assert got['c3']['status'] == 'stopped' and 'error' not in got['c3']  # the host stopped it: known
    assert got['bad']['status'] == 'running'  # the sandbox itself: its VM runs
    assert got['g1']['status'] == 'running' and got['g1']['pid'] == 7 and 'error' not in got['g1']
    assert got['d1']['status'] == 'stopped' and 'error' not in got['d1']


def test_info_of_one_container_is_unknown_with_the_reason(host, stand_in):
    host.plant_sandbox('sb')
    rec = host.plant_container('sb', 'c1')
    hostile_agent_of(host, stand_in, 'sb', 'list_is_a_dict')
    out = ctr.info(host.rt, rec)
    assert out['status'] == 'unknown'
    assert out['error'].startswith('the agent of sandbox sb (socket %s) sent an invalid reply to list_containers'
                                   % host.rt.store.agent_socket('sb')), out['error']


def test_paused_vm_reports_the_records_without_asking_the_agent(host, stand_in):
    host.plant_sandbox('sb', vm='paused')
    host.plant_container('sb', 'c1', status='running')
    fake = hostile_agent_of(host, stand_in, 'sb', 'deep_nesting')
    items, dummy = ctr.list_all(host.rt)
    got = {c['id']: c for c in items}
    assert got['c1']['status'] == 'running' and 'error' not in got['c1']
    assert fake.methods == []


def test_container_info_module_lists_every_sandbox_despite_one_hostile_guest(host, stand_in, capsys):
    from ansible.module_utils.testing import patch_module_args
    from ansible_collections.kata.runtime.plugins.modules import kata_container_info

    host.plant_sandbox('bad')
    host.plant_container('bad', 'c1')
    host.plant_sandbox('good', vm='missing')
    host.plant_container('good', 'g1', status='stopped')
    hostile_agent_of(host, stand_in, 'bad', 'deep_nesting')
    with patch_module_args({'config': host.config, 'status': ['unknown', 'stopped'], 'type': 'pod_container'}):
        with pytest.raises(SystemExit):
            kata_container_info.main()
    out = json.loads(capsys.readouterr().out)
    assert not out.get('failed'), out
    got = {c['id']: c for c in out['containers']}
    assert sorted(got) == ['c1', 'g1']
    assert got['c1']['status'] == 'unknown' and 'nested deeper than' in got['c1']['error']
    assert got['g1']['status'] == 'stopped'


def test_sandbox_module_forced_absent_removes_everything_despite_the_agent(host, stand_in, capsys):
    from ansible.module_utils.testing import patch_module_args
    from ansible_collections.kata.runtime.plugins.modules import kata_sandbox

    host.plant_sandbox('sb')
    host.plant_container('sb', 'c1')
    fake = hostile_agent_of(host, stand_in, 'sb', 'deep_nesting')
    with patch_module_args({'config': host.config, 'name': 'sb', 'state': 'absent', 'force': True}):
        with pytest.raises(SystemExit):
            kata_sandbox.main()
    out = json.loads(capsys.readouterr().out)
    assert out['changed'] is True and not out.get('failed'), out
    assert fake.methods == ['kill_all']
    assert host.gone('sb', ['c1'])
